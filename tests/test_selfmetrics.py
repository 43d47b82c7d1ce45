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
