"""The fenced Redis lease (aggregator/lease.py) against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from aggregator.lease import FENCE_LUA, Lease, LeaseLost
from aggregator.local_server import LocalServer
from producer.keys import Keys


def lease_key(namespace: str) -> str:
    return Keys(namespace).lease("test")


async def test_one_holder_at_a_time_and_epochs_increase(aclient: aioredis.Redis, namespace: str) -> None:
    a = Lease(aclient, lease_key(namespace), 5, "a")
    b = Lease(aclient, lease_key(namespace), 5, "b")
    assert await a.acquire()
    assert a.held() and a.epoch == 1
    assert (await aclient.get(a.key)).decode().startswith("a:")
    assert not await b.acquire()
    assert not b.held() and b.epoch is None
    # Acquiring again while holding keeps the holding (same epoch).
    assert await a.acquire() and a.epoch == 1
    await a.release()
    assert not a.held() and await aclient.get(a.key) is None
    assert await b.acquire() and b.epoch == 2
    await b.release()
    assert await a.acquire() and a.epoch == 3


async def test_keys_share_shard_zero_hash_tag(namespace: str) -> None:
    keys = Keys(namespace, shards=4)
    tag = keys.shard_tag(0)
    for key in (keys.lease("budget"), keys.lease("budget") + ":epoch", keys.budget_status(), keys.budget_writes()):
        assert f":{tag}:" in key
    assert keys.metric(0, "g", "x").split(":")[1] == tag


async def test_renew_fails_after_takeover_and_release_spares_the_new_holder(
    aclient: aioredis.Redis, namespace: str
) -> None:
    a = Lease(aclient, lease_key(namespace), 5, "a")
    assert await a.acquire() and await a.renew()
    # The lease vanishes from Redis (expiry, failover to a replica that lost it) and b takes it.
    await aclient.delete(a.key)
    b = Lease(aclient, lease_key(namespace), 5, "b")
    assert await b.acquire()
    assert not await a.renew()
    assert not a.held() and a.epoch is None
    await a.release()
    assert (await aclient.get(b.key)).decode().startswith("b:")


async def test_held_trusts_only_the_local_clock(aclient: aioredis.Redis, namespace: str) -> None:
    now = [1000.0]
    a = Lease(aclient, lease_key(namespace), 10, "a", safety_margin=1, clock=lambda: now[0])
    assert await a.acquire()
    now[0] += 8.9
    assert a.held()
    now[0] += 0.2  # acquire start + ttl - margin passed: Redis may still have it, we do not trust it
    assert not a.held()
    assert await aclient.get(a.key) is not None
    assert await a.renew()  # renewal from the local start of the renew call
    assert a.held()


async def test_redis_errors_raise_instead_of_meaning_not_acquired() -> None:
    server = LocalServer().start()
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        lease = Lease(client, "t:{s0}:lease:x", 5, "a")
        server.close()
        with pytest.raises(RedisConnectionError):
            await lease.acquire()
        with pytest.raises(LeaseLost):
            lease.fence()
    finally:
        await client.aclose()
        server.close()


async def test_fenced_script_refuses_a_former_holder_that_still_believes(
    aclient: aioredis.Redis, namespace: str
) -> None:
    script = aclient.register_script(FENCE_LUA + 'redis.call("SET", KEYS[3], ARGV[3]) return {"ok"}')
    target = Keys(namespace).metric(0, "g", "fenced-test")
    a = Lease(aclient, lease_key(namespace), 30, "a")
    assert await a.acquire()
    keys, args = a.fence()
    assert (await script(keys=[*keys, target], args=[*args, "from-a"]))[0] == b"ok"
    await aclient.delete(a.key)
    b = Lease(aclient, lease_key(namespace), 30, "b")
    assert await b.acquire()
    keys_b, args_b = b.fence()
    assert (await script(keys=[*keys_b, target], args=[*args_b, "from-b"]))[0] == b"ok"
    assert a.held()  # a's clock says its lease cannot have expired; Redis knows better
    assert (await script(keys=[*keys, target], args=[*args, "late-a"]))[0] == b"fenced"
    assert await aclient.get(target) == b"from-b"
    # Same token but an older epoch (a lease re-created with a stale token) is refused too.
    await aclient.set(a.key, args[0])
    assert (await script(keys=[*keys, target], args=[*args, "late-a"]))[0] == b"fenced"
    assert await aclient.get(target) == b"from-b"


async def test_keep_renewed_holds_past_the_ttl_and_signals_loss(aclient: aioredis.Redis, namespace: str) -> None:
    # A TTL long enough that a renewal every third of it survives a loaded machine.
    a = Lease(aclient, lease_key(namespace), 1.5, "a")
    assert await a.acquire()
    calls: list[bool] = []
    async with a.keep_renewed(on_lost=lambda: calls.append(True)) as lost:
        await asyncio.sleep(3.75)  # 2.5 ttls
        assert not lost.is_set() and a.held()
        assert (await aclient.pttl(a.key)) > 0
        await aclient.delete(a.key)
        b = Lease(aclient, lease_key(namespace), 5, "b")
        assert await b.acquire()
        await asyncio.wait_for(lost.wait(), 2.0)  # noticed at the next renewal (ttl/3)
    assert calls == [True]
    assert not a.held()
    assert (await aclient.get(b.key)).decode().startswith("b:")


async def test_keep_renewed_loses_the_lease_when_redis_is_gone(private_server: LocalServer) -> None:
    client = aioredis.Redis.from_url(private_server.url, socket_connect_timeout=0.2, socket_timeout=0.2)
    a = Lease(client, "t:{s0}:lease:x", 1.0, "a")
    try:
        assert await a.acquire()
        loop = asyncio.get_running_loop()
        async with a.keep_renewed() as lost:
            private_server.close()
            killed = loop.time()
            await asyncio.wait_for(lost.wait(), 3.0)
            # Not before the local clock says the lease may have expired; not much after.
            elapsed = loop.time() - killed
            assert 0.5 < elapsed < 2.0
        assert not a.held()
    finally:
        await client.aclose()
