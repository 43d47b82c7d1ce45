"""Exactly-once apply (DESIGN invariants 1 and 2) and stream hygiene, against real Redis."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from aggregator.apply import DeadEntry, PendingEntry, ShardApplier
from aggregator.connections import open_async
from aggregator.consumer import ShardConsumer
from aggregator.gc_pause import GC_PAUSE
from aggregator.housekeeping import Housekeeper
from aggregator.local_server import LocalServer
from aggregator.settings import AggregatorSettings
from aggregator.state import Delta
from producer.keys import Keys
from producer.wire import decode_entry, encode_entry, encode_event
from tests.events import entry_fields
from tests.support import ReplyLosingProxy

GROUP = "aggregators"


def count_events(entries: Sequence[PendingEntry]) -> Delta:
    """A minimal delta: one counter per producer, incremented by each event's ``n``."""
    d = Delta()
    for e in entries:
        for ev in e.events:
            d.inc("events:0", f'["{e.producer_id}"]', float(ev["n"]))
    return d


def totals(client: redis.Redis, keys: Keys) -> dict[str, float]:
    raw = client.hgetall(keys.metric(0, "c", "events:0"))
    return {k.decode(): float(v) for k, v in raw.items()}


def xadd(client: redis.Redis, keys: Keys, producer: str, seq: int, ns: Sequence[int]) -> str:
    fields = encode_entry(producer, seq, [encode_event({"kind": "x", "t": 0, "n": n}) for n in ns], time.time())
    return client.xadd(keys.stream(0), fields).decode()  # type: ignore[arg-type]


def settings(redis_url: str, namespace: str, consumer: str = "c1", **kw: object) -> AggregatorSettings:
    return AggregatorSettings(redis_url=redis_url, namespace=namespace, consumer_name=consumer, **kw)  # type: ignore[arg-type]


async def read(aclient: aioredis.Redis, keys: Keys, consumer: str, count: int = 100) -> list[PendingEntry]:
    raw = await aclient.xreadgroup(GROUP, consumer, {keys.stream(0): ">"}, count=count)
    out = []
    for entry_id, fields in raw[0][1] if raw else []:
        e = decode_entry(fields)
        out.append(PendingEntry(entry_id.decode(), e.producer_id, e.seq, e.events))
    return out


async def test_batch_applied_once_and_acknowledged(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    for seq in range(1, 4):
        xadd(redis_client, keys, "p1", seq, [1, 2])
    applier = ShardApplier(aclient, keys, 0, GROUP, "c1")
    batch = await read(aclient, keys, "c1")
    result = await applier.apply(batch, [], count_events, time.time())
    assert (result.applied_entries, result.applied_events, result.duplicate_entries) == (3, 6, 0)
    assert totals(redis_client, keys) == {'["p1"]': 9.0}
    assert redis_client.xpending(keys.stream(0), GROUP)["pending"] == 0
    # Applying the same (now acknowledged) entries again changes nothing.
    again = await applier.apply(batch, [], count_events, time.time())
    assert again.applied_entries == 0 and len(again.not_owned) == 3
    assert totals(redis_client, keys) == {'["p1"]': 9.0}
    stats = redis_client.hgetall(keys.shard_stats(0))
    assert stats[b"events_applied"] == b"6" and stats[b"entries_applied"] == b"3"
    assert redis_client.hget(keys.applied_by_producer(0), "p1") == b"6"


async def test_retried_producer_write_is_not_counted_twice(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    xadd(redis_client, keys, "p1", 1, [5])
    xadd(redis_client, keys, "p1", 2, [7])
    xadd(redis_client, keys, "p1", 1, [5])  # the retried copy of seq 1, in the same batch
    applier = ShardApplier(aclient, keys, 0, GROUP, "c1")
    r1 = await applier.apply(await read(aclient, keys, "c1"), [], count_events, time.time())
    assert (r1.applied_entries, r1.duplicate_entries) == (2, 1)
    xadd(redis_client, keys, "p1", 2, [7])  # a copy arriving in a later batch
    r2 = await applier.apply(await read(aclient, keys, "c1"), [], count_events, time.time())
    assert (r2.applied_entries, r2.duplicate_entries, r2.attempts) == (0, 1, 2)
    assert totals(redis_client, keys) == {'["p1"]': 12.0}
    assert redis_client.hget(keys.high_water_marks(0), "p1") == b"2"
    assert redis_client.xpending(keys.stream(0), GROUP)["pending"] == 0


async def test_out_of_order_sequences_across_consumers(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    for seq in range(1, 7):
        xadd(redis_client, keys, "p1", seq, [1])
    a = ShardApplier(aclient, keys, 0, GROUP, "a")
    b = ShardApplier(aclient, keys, 0, GROUP, "b")
    first = await read(aclient, keys, "a", count=3)
    second = await read(aclient, keys, "b", count=3)
    await b.apply(second, [], count_events, time.time())  # seqs 4-6 before 1-3
    assert redis_client.hget(keys.high_water_marks(0), "p1") == b"0"
    assert redis_client.zcard(keys.seen_above_mark(0, "p1")) == 3
    await a.apply(first, [], count_events, time.time())
    assert totals(redis_client, keys) == {'["p1"]': 6.0}
    assert redis_client.hget(keys.high_water_marks(0), "p1") == b"6"
    assert redis_client.zcard(keys.seen_above_mark(0, "p1")) == 0


async def test_entry_claimed_away_from_a_slow_consumer_is_applied_once(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    ids = [xadd(redis_client, keys, "p1", seq, [1]) for seq in (1, 2)]
    slow = ShardApplier(aclient, keys, 0, GROUP, "slow")
    fast = ShardApplier(aclient, keys, 0, GROUP, "fast")
    batch = await read(aclient, keys, "slow")
    # The fast consumer claims one entry while the slow one still holds the batch.
    claimed = redis_client.xclaim(keys.stream(0), GROUP, "fast", 0, [ids[0]])
    assert len(claimed) == 1
    r_fast = await fast.apply([batch[0]], [], count_events, time.time())
    r_slow = await slow.apply(batch, [], count_events, time.time())
    assert r_fast.applied_entries == 1
    assert r_slow.applied_entries == 1 and r_slow.not_owned == (ids[0],)
    assert totals(redis_client, keys) == {'["p1"]': 2.0}


async def test_lost_apply_replies_are_not_counted_twice(private_server: LocalServer) -> None:
    """The aggregator's connection loses the reply of many scripts (the apply script above all)
    after Redis has run them: the client resends, or the entries are claimed again later; either
    way each entry counts once and nothing stays pending."""
    rng = random.Random(7)
    proxy = ReplyLosingProxy(private_server.port, lambda: rng.random() < 0.4, trigger=b"EVALSHA")
    keys = Keys("lsmlostapply")
    direct = redis.Redis.from_url(private_server.url)
    cfg = AggregatorSettings(
        redis_url=proxy.url,
        namespace="lsmlostapply",
        consumer_name="c1",
        read_count=3,
        block_seconds=0.05,
        claim_min_idle=0.3,
        claim_interval=0.1,
        housekeeping_interval=0.2,
        socket_timeout=2,
    )
    consumer = ShardConsumer(open_async(cfg, idempotent=True), cfg, 0, count_events)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    expected = 0.0
    try:
        for seq in range(1, 61):
            ns = [seq, 1000 * seq]
            xadd(direct, keys, "p1", seq, ns)
            expected += sum(ns)
            if seq % 10 == 0:
                await asyncio.sleep(0.05)
        last = direct.xinfo_stream(keys.stream(0))["last-generated-id"]  # type: ignore[index]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            g: Any = direct.xinfo_groups(keys.stream(0))
            if g and g[0]["pending"] == 0 and g[0]["last-delivered-id"] == last:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"not drained: {direct.xinfo_groups(keys.stream(0))}")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await consumer.client.aclose()
        proxy.close()
    c = consumer.counters
    print(f"replies lost {proxy.dropped_replies}; consumer {c}")
    assert proxy.dropped_replies > 0
    # The resent scripts found their entries applied (not this consumer's any more): the path
    # this test is about was taken.
    assert c.not_owned_entries > 0
    assert totals(direct, keys) == {'["p1"]': expected}
    stats = direct.hgetall(keys.shard_stats(0))
    assert stats[b"events_applied"] == b"120" and stats[b"entries_applied"] == b"60"
    assert direct.hget(keys.applied_by_producer(0), "p1") == b"120"
    assert direct.hget(keys.high_water_marks(0), "p1") == b"60"
    direct.close()
    # Failed applies raised with their batch on the stack, and the logged exceptions (kept by
    # pytest's log capture) still reference it: the collector's pause ended with the apply anyway.
    assert GC_PAUSE.holders == 0 and gc.isenabled()


async def test_undecodable_entries_are_dead_lettered(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    keys = Keys(namespace)
    s = settings(redis_url, namespace)
    consumer = ShardConsumer(aclient, s, 0, count_events)
    await consumer.ensure_group()
    good = xadd(redis_client, keys, "p1", 1, [3])
    bad_version = redis_client.xadd(keys.stream(0), {"v": "9.0", "p": "p1", "s": "2", "n": "0", "c": "json", "d": "[]"})
    garbage = redis_client.xadd(keys.stream(0), {"v": "1.0", "p": "p1", "s": "3", "n": "1", "c": "json", "d": "{nope"})
    raw = await aclient.xreadgroup(GROUP, "c1", {keys.stream(0): ">"}, count=10)
    result = await consumer.process(raw[0][1])
    assert (result.applied_entries, result.dead_entries) == (1, 2)
    assert totals(redis_client, keys) == {'["p1"]': 3.0}
    dead = redis_client.xrange(keys.dead_letters(0))
    reasons = {f[b"dead_entry_id"].decode(): f[b"dead_reason"].decode() for _, f in dead}
    assert reasons == {bad_version.decode(): "unknown_major", garbage.decode(): "undecodable"}
    assert all(f[b"orig_p"] == b"p1" for _, f in dead)
    assert redis_client.xpending(keys.stream(0), GROUP)["pending"] == 0
    stats = redis_client.hgetall(keys.shard_stats(0))
    assert stats[b"dead_unknown_major"] == b"1" and stats[b"dead_undecodable"] == b"1"
    assert good


async def test_an_apply_script_gets_about_apply_max_events(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    """Large entries: fewer are read at once, so no script holds Redis for a huge batch."""
    keys = Keys(namespace)
    built: list[int] = []

    def recording(entries: Sequence[PendingEntry]) -> Delta:
        built.append(sum(len(e.events) for e in entries))
        return count_events(entries)

    s = settings(redis_url, namespace, read_count=50, apply_max_events=250, block_seconds=0.05)
    consumer = ShardConsumer(aclient, s, 0, recording)
    for seq in range(1, 21):
        xadd(redis_client, keys, "p1", seq, [1] * 100)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    for _ in range(1000):
        if totals(redis_client, keys).get('["p1"]') == 2000.0:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await task
    assert totals(redis_client, keys) == {'["p1"]': 2000.0}
    assert max(built) <= 250, built  # 2 entries of 100 events per batch, not 20
    assert len(built) >= 10


async def test_trim_removes_only_processed_entries(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    keys = Keys(namespace)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    for seq in range(1, 11):
        xadd(redis_client, keys, "p1", seq, [1])
    applier = ShardApplier(aclient, keys, 0, GROUP, "c1")
    batch = await read(aclient, keys, "c1", count=6)
    await applier.apply(batch[:4], [], count_events, time.time())  # 5 and 6 stay pending
    hk = Housekeeper(aclient, keys, 0, settings(redis_url, namespace))
    removed = await hk.trim()
    assert removed == 4
    remaining = [e for _, e in redis_client.xrange(keys.stream(0))]
    assert [decode_entry(f).seq for f in remaining] == [5, 6, 7, 8, 9, 10]


async def test_entries_removed_before_being_read_are_counted_lost(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    keys = Keys(namespace)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    ids = [xadd(redis_client, keys, "p1", seq, [1]) for seq in range(1, 6)]
    redis_client.xdel(keys.stream(0), ids[1], ids[2])  # seqs 2 and 3 vanish (e.g. a MAXLEN cap)
    applier = ShardApplier(aclient, keys, 0, GROUP, "c1")
    await applier.apply(await read(aclient, keys, "c1"), [], count_events, time.time())
    assert redis_client.hget(keys.high_water_marks(0), "p1") == b"1"
    hk = Housekeeper(aclient, keys, 0, settings(redis_url, namespace))
    assert await hk.detect_lost() == 2
    assert redis_client.hget(keys.high_water_marks(0), "p1") == b"5"
    assert redis_client.hget(keys.shard_stats(0), "lost_entries") == b"2"
    assert redis_client.hget(keys.lost_by_producer(0), "p1") == b"2"
    assert await hk.detect_lost() == 0


async def test_gap_still_in_flight_is_not_declared_lost(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    keys = Keys(namespace)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    for seq in range(1, 4):
        xadd(redis_client, keys, "p1", seq, [1])
    slow = await read(aclient, keys, "slow", count=1)  # seq 1 pending at a slow consumer
    rest = await read(aclient, keys, "fast")
    await ShardApplier(aclient, keys, 0, GROUP, "fast").apply(rest, [], count_events, time.time())
    hk = Housekeeper(aclient, keys, 0, settings(redis_url, namespace))
    assert await hk.detect_lost() == 0
    await ShardApplier(aclient, keys, 0, GROUP, "slow").apply(slow, [], count_events, time.time())
    assert totals(redis_client, keys) == {'["p1"]': 3.0}
    assert redis_client.hget(keys.high_water_marks(0), "p1") == b"3"


async def test_dead_letter_needs_ownership(aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    entry = redis_client.xadd(keys.stream(0), {"v": "1.0"}).decode()
    applier = ShardApplier(aclient, keys, 0, GROUP, "c1")
    result = await applier.apply([], [DeadEntry(entry, "missing_field", "x")], count_events, time.time())
    assert result.dead_entries == 0 and result.not_owned == (entry,)
    assert redis_client.xlen(keys.dead_letters(0)) == 0


async def test_dead_lettered_entries_with_a_readable_header_are_not_counted_lost(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    keys = Keys(namespace)
    s = settings(redis_url, namespace)
    consumer = ShardConsumer(aclient, s, 0, count_events)
    await consumer.ensure_group()
    xadd(redis_client, keys, "p1", 1, [1])
    # seq 2: a readable header but an undecodable payload
    redis_client.xadd(keys.stream(0), {"v": "1.0", "p": "p1", "s": "2", "n": "1", "c": "json", "d": "{nope"})
    xadd(redis_client, keys, "p1", 3, [1])
    raw = await aclient.xreadgroup(GROUP, "c1", {keys.stream(0): ">"}, count=10)
    result = await consumer.process(raw[0][1])
    assert (result.applied_entries, result.dead_entries) == (2, 1)
    assert redis_client.hget(keys.high_water_marks(0), "p1") == b"3"
    assert await consumer.housekeeper.detect_lost() == 0
    assert redis_client.hget(keys.shard_stats(0), "lost_entries") is None


async def test_removing_a_gauge_series_that_never_existed_writes_nothing(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    xadd(redis_client, keys, "p1", 1, [1])
    xadd(redis_client, keys, "p1", 2, [1])

    def gauges(entries: Sequence[PendingEntry]) -> Delta:
        d = Delta()
        for e in entries:
            if e.seq == 1:
                d.set_gauge("g:0", '["exists"]', 10.0, 5.0)
            d.set_gauge("g:0", '["never"]', 20.0, None)  # removal of a series nobody set
            if e.seq == 2:
                d.set_gauge("g:0", '["exists"]', 30.0, None)  # removal of an existing one
        return d

    applier = ShardApplier(aclient, keys, 0, GROUP, "c1")
    for entry in await read(aclient, keys, "c1", count=1):
        await applier.apply([entry], [], gauges, time.time())
    for entry in await read(aclient, keys, "c1", count=1):
        await applier.apply([entry], [], gauges, time.time())
    assert redis_client.hgetall(keys.metric(0, "g", "g:0")) == {}
    # Only the removed series keeps its removal time (so an older write cannot resurrect it).
    assert redis_client.hgetall(keys.metric(0, "gt", "g:0")) == {b'["exists"]': b"30.0"}


async def test_delivery_counts_of_a_large_redelivered_batch(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    """Delivery counts come from one paged XPENDING range: every entry still pending here gets
    its count, more than a page of them too; entries claimed away by another consumer get none."""
    keys = Keys(namespace)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    pipe = redis_client.pipeline()
    for seq in range(1, 1201):
        pipe.xadd(keys.stream(0), entry_fields("p1", seq, [{"kind": "x", "t": 0, "n": 1}], 0.0))
    ids = [i.decode() for i in pipe.execute()]
    redis_client.xreadgroup(GROUP, "c1", {keys.stream(0): ">"}, count=2000)
    redis_client.xclaim(keys.stream(0), GROUP, "c1", 0, ids[::7])  # a second delivery for some
    redis_client.xclaim(keys.stream(0), GROUP, "other", 0, ids[5::100])  # no longer c1's
    consumer = ShardConsumer(aclient, settings(redis_url, namespace), 0, count_events)
    counts = await consumer._delivery_counts(ids)
    away = set(ids[5::100])
    assert counts == {i: (2 if n % 7 == 0 else 1) for n, i in enumerate(ids) if i not in away}
