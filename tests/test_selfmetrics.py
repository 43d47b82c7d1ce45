"""Self-metrics read back from Redis: backlog, pending age, producers' sent against applied."""

from __future__ import annotations

import time

import redis

from aggregator.apply import PendingEntry, ShardApplier
from aggregator.selfmetrics import producer_health, shard_health
from aggregator.state import Delta
from producer.emitter import Emitter
from producer.keys import Keys
from producer.wire import decode_entry, encode_event
from tests.support import settings_for, wait_for


def nothing(entries: object) -> Delta:
    return Delta()


async def test_sent_against_applied_and_backlog(redis_url: str, namespace: str, redis_client: redis.Redis) -> None:
    import redis.asyncio as aioredis

    keys = Keys(namespace)
    em = Emitter(settings_for(redis_url, namespace, batch_max_events=10))
    for i in range(30):
        em.offer(encode_event({"kind": "callback_failure", "t": time.time(), "callback_name": f"x{i}"}))
    assert em.close()
    redis_client.xgroup_create(keys.stream(0), "aggregators", id="0")
    # Usually 3 entries of 10; more when the writer woke before all 30 were buffered.
    entries = int(redis_client.xlen(keys.stream(0)))
    assert entries >= 3
    shard = shard_health(redis_client, keys, 0, "aggregators")
    assert (shard.stream_length, shard.lag, shard.pending) == (entries, entries, 0)

    aclient = aioredis.Redis.from_url(redis_url)
    raw = await aclient.xreadgroup("aggregators", "c1", {keys.stream(0): ">"}, count=entries)
    batch = [PendingEntry(i.decode(), e.producer_id, e.seq, e.events) for i, f in raw[0][1] for e in [decode_entry(f)]]
    await ShardApplier(aclient, keys, 0, "aggregators", "c1").apply(batch[:-1], [], nothing, time.time())
    await aclient.aclose()
    held = len(batch[-1].events)  # read, not applied
    shard = shard_health(redis_client, keys, 0, "aggregators", now=time.time() + 60)
    assert (shard.lag, shard.pending) == (0, 1)
    assert shard.oldest_pending_age >= 59
    assert shard.stats["events_applied"] == 30 - held
    wait_for(lambda: producer_health(redis_client, keys))
    (p,) = producer_health(redis_client, keys)
    assert (p.producer_id, p.events_sent, p.events_applied, p.in_flight) == (em.producer_id, 30, 30 - held, held)


def test_group_lag_is_zero_when_every_entry_was_delivered(namespace: str, redis_client: redis.Redis) -> None:
    """Redis computes the lag from the group's entries-read counter; after a restart (or a group
    recreated after one) that counter can be behind, and Redis reports a lag although every entry
    was delivered and nothing is pending. The exported lag says 0 then; a real backlog stays."""
    keys = Keys(namespace)
    stream = keys.stream(0)
    redis_client.xgroup_create(stream, "aggregators", id="0", mkstream=True)
    for i in range(5):
        redis_client.xadd(stream, {"n": str(i)})
    read = redis_client.xreadgroup("aggregators", "c1", {stream: ">"}, count=10)
    redis_client.xack(stream, "aggregators", *[entry_id for entry_id, _ in read[0][1]])  # type: ignore[index]
    # The counter left behind, as a restart can leave it (XGROUP SETID restores it so).
    redis_client.execute_command("XGROUP", "SETID", stream, "aggregators", "$", "ENTRIESREAD", "1")
    raw = redis_client.xinfo_groups(stream)[0]  # type: ignore[index]
    assert raw["pending"] == 0 and raw["lag"] == 4  # what Redis says
    assert shard_health(redis_client, keys, 0, "aggregators").lag == 0
    # Undelivered entries: the lag Redis reports stands (never 0 while entries wait).
    redis_client.xadd(stream, {"n": "5"})
    redis_client.xadd(stream, {"n": "6"})
    lag = shard_health(redis_client, keys, 0, "aggregators").lag
    assert lag is not None and lag > 0
    read = redis_client.xreadgroup("aggregators", "c1", {stream: ">"}, count=10)
    redis_client.xack(stream, "aggregators", *[entry_id for entry_id, _ in read[0][1]])  # type: ignore[index]
    assert shard_health(redis_client, keys, 0, "aggregators").lag == 0
