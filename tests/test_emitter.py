"""The emitter in normal operation, against the shared test Redis: ordering, batching, sequence
numbers, counters in Redis, concurrent producers, shutdown flush and fork."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from producer.emitter import DROP_REASONS, Emitter
from producer.keys import PRODUCER_STATS_TTL_SECONDS, Keys
from producer.wire import CODEC_JSON, CODEC_ZLIB_JSON, F_CODEC, encode_event
from tests.support import producer_stats, read_entries, read_events, settings_for, wait_for

MakeEmitter = Callable[..., Emitter]


@pytest.fixture
def make_emitter(redis_url: str, namespace: str) -> Iterator[MakeEmitter]:
    """Build emitters against the test namespace; every one is closed after the test."""
    made: list[Emitter] = []

    def make(**overrides: Any) -> Emitter:
        em = Emitter(settings_for(redis_url, namespace, **overrides))
        made.append(em)
        return em

    yield make
    for em in made:
        em.close(timeout=2.0)


def ev(i: int, **extra: Any) -> bytes:
    return encode_event({"kind": "success", "t": 1700000000.0 + i, "i": i, **extra})


def sized_event(i: int, size: int) -> bytes:
    """An encoded event of exactly ``size`` bytes."""
    base = encode_event({"kind": "success", "t": 0, "i": i, "pad": ""})
    data = encode_event({"kind": "success", "t": 0, "i": i, "pad": "x" * (size - len(base))})
    assert len(data) == size
    return data


def assert_no_drops(em: Emitter) -> None:
    assert em.counters.dropped == dict.fromkeys(DROP_REASONS, 0)


def stream_keys(client: redis.Redis, namespace: str) -> list[bytes]:
    return sorted(k for k in client.scan_iter(match=f"{namespace}:*", count=1000) if client.type(k) == b"stream")


# -- delivery and ordering ---------------------------------------------------------------------


def test_events_arrive_in_order_in_one_stream(
    make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str
) -> None:
    em = make_emitter(batch_max_events=64)
    n = 1000
    for i in range(n):
        assert em.offer(ev(i)) is True
    assert em.close(timeout=5.0) is True

    keys = Keys(namespace)
    assert stream_keys(redis_client, namespace) == [keys.stream(0).encode()]
    assert em.stream == keys.stream(0)
    events = read_events(redis_client, namespace)
    assert [e["i"] for e in events] == list(range(n))
    assert events[0] == orjson.loads(ev(0))
    assert em.counters.accepted == em.counters.sent == n
    assert em.buffered() == 0
    assert_no_drops(em)
    entries = read_entries(redis_client, namespace)
    assert all(len(e.events) <= 64 for e in entries)
    assert {e.producer_id for e in entries} == {em.producer_id}
    # No retries happened, so no duplicate entries either.
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert em.counters.entries_sent == len(entries)


def test_batches_split_by_event_count(make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str) -> None:
    # A long flush interval: the writer only runs when a full batch is buffered (or at close).
    em = make_emitter(batch_max_events=50, flush_interval=5.0, stats_interval=10.0)
    events = [ev(i) for i in range(4 * 50 + 7)]
    for r in range(4):
        for data in events[r * 50 : (r + 1) * 50]:
            assert em.offer(data)
        wait_for(lambda r=r: em.counters.sent == (r + 1) * 50, timeout=5)
    for data in events[200:]:
        assert em.offer(data)
    assert em.close(timeout=5.0) is True

    entries = read_entries(redis_client, namespace)
    assert [len(e.events) for e in entries] == [50, 50, 50, 50, 7]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert [x["i"] for e in entries for x in e.events] == list(range(207))
    assert em.counters.entries_sent == 5


def test_batches_split_by_bytes(make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str) -> None:
    # The JSON array of a batch is at most batch_max_bytes: n events of 99 bytes take 100n+1
    # bytes (brackets and commas), so 9 fit in 1000 bytes and 10 do not.
    em = make_emitter(
        batch_max_bytes=1000,
        max_event_bytes=1000,
        batch_max_events=10_000,
        flush_interval=5.0,
        stats_interval=10.0,
        compress_min_bytes=0,
    )
    for i in range(95):
        assert em.offer(sized_event(i, 99))
    assert em.close(timeout=5.0) is True

    entries = read_entries(redis_client, namespace)
    assert [len(e.events) for e in entries] == [9] * 10 + [5]
    assert [e.seq for e in entries] == list(range(1, 12))
    raw = redis_client.xrange(f"{namespace}:{{s0}}:events")
    assert max(len(fields[b"d"]) for _id, fields in raw) == 901
    assert [x["i"] for e in entries for x in e.events] == list(range(95))
    raw = redis_client.xrange(Keys(namespace).stream(0))
    assert all(f[F_CODEC.encode()] == CODEC_JSON.encode() for _id, f in raw)


def test_one_event_larger_than_the_byte_budget_still_travels_alone(
    make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str
) -> None:
    em = make_emitter(batch_max_bytes=1000, max_event_bytes=1000, flush_interval=5.0, compress_min_bytes=0)
    sizes = [600, 600, 1000, 60, 60]
    for i, size in enumerate(sizes):
        assert em.offer(sized_event(i, size))
    assert em.close(timeout=5.0) is True
    entries = read_entries(redis_client, namespace)
    assert [[x["i"] for x in e.events] for e in entries] == [[0], [1], [2], [3, 4]]


def test_large_entries_are_compressed(make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str) -> None:
    em = make_emitter(compress_min_bytes=1024, batch_max_events=100, flush_interval=5.0)
    for i in range(100):
        em.offer(ev(i, model="gpt-4o-mini", team="team-alpha"))
    assert em.close(timeout=5.0)
    raw = redis_client.xrange(Keys(namespace).stream(0))
    assert len(raw) == 1
    assert raw[0][1][F_CODEC.encode()] == CODEC_ZLIB_JSON.encode()
    assert [e["i"] for e in read_events(redis_client, namespace)] == list(range(100))


def test_sharded_producer_writes_to_its_own_shard(
    make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str
) -> None:
    em = make_emitter(shards=4)
    keys = Keys(namespace, 4)
    shard = keys.shard_for_producer(em.producer_id)
    assert em.stream == keys.stream(shard)
    for i in range(30):
        em.offer(ev(i))
    assert em.close(timeout=5.0)
    assert stream_keys(redis_client, namespace) == [keys.stream(shard).encode()]
    assert [e["i"] for e in read_events(redis_client, namespace, shards=4)] == list(range(30))


# -- counters in Redis ---------------------------------------------------------------------------


def test_stats_hash_and_registry(make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str) -> None:
    em = make_emitter(batch_max_events=100)
    for i in range(750):
        em.offer(ev(i))
    em.count_skipped()
    em.count_dropped("extract_error")
    assert em.close(timeout=5.0)

    events = read_events(redis_client, namespace)
    entries = read_entries(redis_client, namespace)
    stats = producer_stats(redis_client, namespace, em.producer_id)
    assert int(stats["events_sent"]) == len(events) == 750
    assert int(stats["events_accepted"]) == 750
    assert int(stats["events_skipped"]) == 1
    assert int(stats["events_dropped_extract_error"]) == 1
    for reason in DROP_REASONS:
        if reason != "extract_error":
            assert int(stats[f"events_dropped_{reason}"]) == 0
    assert int(stats["entries_sent"]) == len(entries)
    assert int(stats["last_seq"]) == max(e.seq for e in entries)
    assert int(stats["buffer_events"]) == 0
    assert int(stats["buffer_bytes"]) == 0
    assert stats["producer_id"] == em.producer_id
    assert stats["stream"] == em.stream
    assert int(stats["pid"]) == os.getpid()
    assert int(stats["flush_errors"]) == 0

    key = Keys(namespace).producer_stats(em.producer_id)
    assert 0 < redis_client.ttl(key) <= PRODUCER_STATS_TTL_SECONDS
    score = redis_client.zscore(Keys(namespace).producer_registry(), em.producer_id)
    assert score is not None and abs(score - time.time()) < 60
    # The snapshot and the hash agree.
    snap = em.snapshot()
    assert snap["events_sent"] == 750 and snap["buffer_events"] == 0


def test_stats_are_reported_while_idle(make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str) -> None:
    em = make_emitter(stats_interval=0.1)
    em.offer(ev(0))
    wait_for(lambda: producer_stats(redis_client, namespace, em.producer_id).get("events_sent") == "1")
    first = float(producer_stats(redis_client, namespace, em.producer_id)["updated_at"])
    # No new events: the counters are still refreshed every stats interval.
    wait_for(lambda: float(producer_stats(redis_client, namespace, em.producer_id)["updated_at"]) > first, timeout=5)
    assert len(read_entries(redis_client, namespace)) == 1


# -- threads and event loops ---------------------------------------------------------------------


def test_concurrent_offers_from_many_threads(
    make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str
) -> None:
    threads_n, per_thread = 8, 5000
    em = make_emitter(batch_max_events=500)
    payloads = [[ev(i, th=k) for i in range(per_thread)] for k in range(threads_n)]
    barrier = threading.Barrier(threads_n)
    results: list[list[bool]] = [[] for _ in range(threads_n)]

    def feed(k: int) -> None:
        barrier.wait()
        out = results[k]
        for data in payloads[k]:
            out.append(em.offer(data))

    workers = [threading.Thread(target=feed, args=(k,)) for k in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(all(r) and len(r) == per_thread for r in results)
    assert em.close(timeout=10.0) is True

    total = threads_n * per_thread
    events = read_events(redis_client, namespace)
    assert em.counters.accepted == em.counters.sent == len(events) == total
    assert_no_drops(em)
    # Each thread's events arrive exactly once and in the order that thread offered them.
    for k in range(threads_n):
        assert [e["i"] for e in events if e["th"] == k] == list(range(per_thread))
    assert int(producer_stats(redis_client, namespace, em.producer_id)["events_sent"]) == total


def test_offer_from_a_thread_without_event_loop(redis_url: str, namespace: str, redis_client: redis.Redis) -> None:
    result: dict[str, Any] = {}

    def worker() -> None:
        try:
            asyncio.get_running_loop()
            result["loop"] = True
        except RuntimeError:
            result["loop"] = False
        # The emitter is created and used in a thread that has never had an event loop.
        em = Emitter(settings_for(redis_url, namespace))
        result["offers"] = [em.offer(ev(i)) for i in range(10)]
        result["closed"] = em.close(timeout=5.0)
        result["sent"] = em.counters.sent

    t = threading.Thread(target=worker)
    t.start()
    t.join(20)
    assert result == {"loop": False, "offers": [True] * 10, "closed": True, "sent": 10}
    assert [e["i"] for e in read_events(redis_client, namespace)] == list(range(10))


def test_offer_before_any_event_loop_then_inside_one(
    make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str
) -> None:
    em = make_emitter()
    # No loop has been created yet in this (sync) test.
    assert em.offer(ev(0))

    async def in_loop() -> list[bool]:
        return [em.offer(ev(i)) for i in range(1, 6)]

    assert asyncio.run(in_loop()) == [True] * 5
    # After the loop is gone, offers keep working.
    assert em.offer(ev(6))
    assert em.close(timeout=5.0)
    assert [e["i"] for e in read_events(redis_client, namespace)] == list(range(7))


async def test_offer_inside_running_loop_does_not_block_it(
    make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str
) -> None:
    em = make_emitter()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    for i in range(200):
        assert em.offer(ev(i))
        await asyncio.sleep(0)
    # Delivery happens in the background while the loop keeps running.
    deadline = time.monotonic() + 5
    while em.counters.sent < 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    task.cancel()
    assert em.counters.sent == 200
    assert ticks > 200
    assert len(read_events(redis_client, namespace)) == 200


# -- shutdown ------------------------------------------------------------------------------------


def test_close_flushes_everything_within_deadline(
    make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str
) -> None:
    em = make_emitter(batch_max_events=500, flush_interval=5.0, stats_interval=10.0)
    n = 20_000
    for i in range(n):
        assert em.offer(ev(i))
    assert em.buffered() > 0
    t0 = time.monotonic()
    assert em.close(timeout=5.0) is True
    elapsed = time.monotonic() - t0
    assert elapsed < 5.0
    assert em.counters.sent == n
    assert em.buffered() == 0
    assert_no_drops(em)
    assert [e["i"] for e in read_events(redis_client, namespace)] == list(range(n))
    assert int(producer_stats(redis_client, namespace, em.producer_id)["events_sent"]) == n

    # After close: offers are refused and counted, close is idempotent.
    assert em.offer(ev(n)) is False
    assert em.counters.dropped["closed"] == 1
    assert em.counters.dropped["shutdown"] == 0
    assert em.counters.accepted == n
    assert em.close(timeout=1.0) is True


def test_close_without_any_event(make_emitter: MakeEmitter) -> None:
    em = make_emitter()
    t0 = time.monotonic()
    assert em.close(timeout=5.0) is True
    assert time.monotonic() - t0 < 1.0
    assert em.counters.accepted == 0
    assert em.offer(ev(0)) is False
    assert em.counters.dropped["closed"] == 1


# -- fork ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_after_fork_is_a_new_producer(
    make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str
) -> None:
    em = make_emitter(flush_interval=5.0, batch_max_events=1000, stats_interval=10.0)
    # Buffered (not yet sent) in the parent at fork time: the child must not send them again.
    for i in range(30):
        assert em.offer(ev(i, who="parent"))
    assert em.counters.sent == 0
    parent_id = em.producer_id

    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            ok = em.producer_id != parent_id and em.buffered() == 0 and em.counters.accepted == 0
            ok = ok and all(em.offer(ev(i, who="child")) for i in range(20))
            ok = ok and em.close(timeout=5.0) and em.counters.sent == 20
            code = 0 if ok else 3
        except BaseException:
            code = 2
        finally:
            os._exit(code)

    deadline = time.monotonic() + 20
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("child did not finish within 20 s")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"

    assert em.close(timeout=5.0)
    assert em.producer_id == parent_id
    entries = read_entries(redis_client, namespace)
    by_producer: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_producer.setdefault(e.producer_id, []).extend(e.events)
    assert set(by_producer) == {parent_id, next(p for p in by_producer if p != parent_id)}
    child_id = next(p for p in by_producer if p != parent_id)
    assert f":{pid}:" in child_id
    assert [(e["who"], e["i"]) for e in by_producer[parent_id]] == [("parent", i) for i in range(30)]
    assert [(e["who"], e["i"]) for e in by_producer[child_id]] == [("child", i) for i in range(20)]
    assert min(e.seq for e in entries if e.producer_id == child_id) == 1
    assert int(producer_stats(redis_client, namespace, child_id)["pid"]) == pid


def test_backlog_is_written_without_waiting_for_the_flush_interval(
    make_emitter: MakeEmitter, redis_client: redis.Redis, namespace: str
) -> None:
    # A long flush interval: only "a full batch is waiting, write it now" can deliver 20k
    # events (200 batches) quickly; waiting the interval between rounds would take minutes.
    em = make_emitter(batch_max_events=100, flush_interval=30.0, stats_interval=30.0)
    for i in range(20_000):
        assert em.offer(sized_event(i, 60))
    wait_for(lambda: em.counters.sent == 20_000, timeout=20)
    assert em.buffered() == 0
