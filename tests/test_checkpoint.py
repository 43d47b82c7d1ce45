"""Fenced checkpoints (aggregator/checkpoint.py): a commit lands only while the writer holds the
shard's lease at its epoch and the stored checkpoint is the one it started from; otherwise
nothing is written. Real Redis, a real Redis Cluster, and a real process frozen past its lease."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from aggregator.checkpoint import MAX_FIELDS, START, Checkpoint, Fenced, GroupPosition, commit, load
from aggregator.lease import Lease
from aggregator.local_cluster import LocalCluster
from aggregator.shard_memory import Changes
from producer.keys import Keys
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[1]


def writes(keys: Keys, value: int) -> Changes:
    """A checkpoint's worth of changes: a counter's absolute value, a stat increment."""
    c = Changes()
    c.hset[keys.metric(0, "c", "m:0")] = {'["a"]': str(value)}
    c.hincrby[keys.shard_stats(0)] = {"entries_applied": 1}
    return c


@pytest.fixture
async def owner(aclient: aioredis.Redis, namespace: str) -> AsyncIterator[Lease]:
    lease = Lease(aclient, Keys(namespace).shard_owner(0), 10.0, "owner-a")
    assert await lease.acquire()
    yield lease


async def test_commit_then_load(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str, owner: Lease
) -> None:
    keys = Keys(namespace)
    assert await load(aclient, keys, 0) == Checkpoint()
    assert owner.token is not None and owner.epoch is not None
    first = await commit(aclient, keys, 0, owner.token, owner.epoch, Checkpoint(), "5-0", writes(keys, 7))
    assert (first.position, first.epoch, first.number) == ("5-0", owner.epoch, 1)
    assert await load(aclient, keys, 0) == first
    second = await commit(aclient, keys, 0, owner.token, owner.epoch, first, "9-0", writes(keys, 9))
    assert second.number == 2
    assert redis_client.hget(keys.metric(0, "c", "m:0"), '["a"]') == b"9"
    assert redis_client.hget(keys.shard_stats(0), "entries_applied") == b"2"


async def test_a_former_owner_is_refused_and_writes_nothing(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str, owner: Lease
) -> None:
    keys = Keys(namespace)
    assert owner.token is not None and owner.epoch is not None
    token, epoch = owner.token, owner.epoch
    # The lease passes to another process (here: released, then taken): a new epoch.
    await owner.release()
    successor = Lease(aclient, keys.shard_owner(0), 10.0, "owner-b")
    assert await successor.acquire()
    with pytest.raises(Fenced, match="no longer this owner"):
        await commit(aclient, keys, 0, token, epoch, Checkpoint(), "5-0", writes(keys, 7))
    assert redis_client.exists(keys.metric(0, "c", "m:0"), keys.shard_stats(0), keys.checkpoint(0)) == 0


async def test_a_commit_from_a_stale_checkpoint_is_refused(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str, owner: Lease
) -> None:
    keys = Keys(namespace)
    assert owner.token is not None and owner.epoch is not None
    first = await commit(aclient, keys, 0, owner.token, owner.epoch, Checkpoint(), "5-0", writes(keys, 7))
    with pytest.raises(Fenced, match="checkpoint moved"):
        await commit(aclient, keys, 0, owner.token, owner.epoch, Checkpoint(), "6-0", writes(keys, 8))
    assert await load(aclient, keys, 0) == first
    assert redis_client.hget(keys.metric(0, "c", "m:0"), '["a"]') == b"7"


async def test_a_takeover_during_the_commit_makes_it_do_nothing(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str, owner: Lease
) -> None:
    """The checks pass, then another process takes the lease before EXEC: the transaction is
    discarded (WATCH on the epoch), and only the successor's commit lands."""
    keys = Keys(namespace)
    assert owner.token is not None and owner.epoch is not None
    other = aioredis.Redis.from_url(redis_url)
    successor = Lease(other, keys.shard_owner(0), 10.0, "owner-b")

    async def take_over() -> None:
        redis_client.delete(keys.shard_owner(0))  # the lease expired meanwhile
        assert await successor.acquire()

    try:
        with pytest.raises(Fenced, match="during this commit"):
            await commit(
                aclient, keys, 0, owner.token, owner.epoch, Checkpoint(), "5-0", writes(keys, 7), before_exec=take_over
            )
        assert redis_client.exists(keys.metric(0, "c", "m:0"), keys.checkpoint(0)) == 0
        assert successor.token is not None and successor.epoch is not None
        done = await commit(other, keys, 0, successor.token, successor.epoch, Checkpoint(), "5-0", writes(keys, 3))
        assert done.epoch == owner.epoch + 1
        assert redis_client.hget(keys.metric(0, "c", "m:0"), '["a"]') == b"3"
    finally:
        await other.aclose()


async def test_dead_letters_and_the_group_move_with_the_checkpoint(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str, owner: Lease
) -> None:
    keys = Keys(namespace)
    assert owner.token is not None and owner.epoch is not None
    ids = [redis_client.xadd(keys.stream(0), {"n": str(i)}).decode() for i in range(5)]
    redis_client.xgroup_create(keys.stream(0), "aggregators", id="0")
    letter = {"dead_entry_id": ids[1], "dead_reason": "undecodable"}
    await commit(
        aclient,
        keys,
        0,
        owner.token,
        owner.epoch,
        Checkpoint(),
        ids[2],
        Changes(),
        dead_letters=[letter],
        group=GroupPosition("aggregators", 3),
    )
    (group,) = redis_client.xinfo_groups(keys.stream(0))
    assert group["last-delivered-id"].decode() == ids[2] and group["lag"] == 2
    assert [f[b"dead_reason"] for _, f in redis_client.xrange(keys.dead_letters(0))] == [b"undecodable"]


async def test_a_checkpoint_above_the_bound_is_refused_before_anything_is_sent(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str, owner: Lease
) -> None:
    keys = Keys(namespace)
    assert owner.token is not None and owner.epoch is not None
    big = Changes()
    big.hset[keys.metric(0, "c", "m:0")] = {f"s{i}": "1" for i in range(MAX_FIELDS + 1)}
    with pytest.raises(ValueError, match="checkpoint earlier"):
        await commit(aclient, keys, 0, owner.token, owner.epoch, Checkpoint(), "5-0", big)
    assert redis_client.exists(keys.metric(0, "c", "m:0"), keys.checkpoint(0)) == 0


async def test_on_a_redis_cluster() -> None:
    """Every key of a commit is in the shard's slot: the cluster client runs it as one
    transaction on the shard's master."""
    with LocalCluster(masters=2, replicas=0) as cluster:
        client = AsyncRedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
        keys = Keys("lsmtest-checkpoint", 3)
        try:
            for shard in range(3):
                lease = Lease(client, keys.shard_owner(shard), 10.0, "owner")  # type: ignore[arg-type]
                assert await lease.acquire()
                assert lease.token is not None and lease.epoch is not None
                c = Changes()
                c.hset[keys.metric(shard, "c", "m:0")] = {'["a"]': "4"}
                done = await commit(client, keys, shard, lease.token, lease.epoch, Checkpoint(), "1-0", c)  # type: ignore[arg-type]
                assert await load(client, keys, shard) == done  # type: ignore[arg-type]
        finally:
            await client.aclose()


FROZEN_OWNER = """
import asyncio, json, sys
import redis.asyncio as aioredis
from aggregator.checkpoint import Checkpoint, Fenced, commit
from aggregator.lease import Lease
from aggregator.shard_memory import Changes
from producer.keys import Keys

url, namespace = sys.argv[1], sys.argv[2]

async def main():
    client = aioredis.Redis.from_url(url)
    keys = Keys(namespace)
    lease = Lease(client, keys.shard_owner(0), 1.0, "frozen")
    assert await lease.acquire()
    print(json.dumps({"epoch": lease.epoch}), flush=True)
    sys.stdin.readline()  # the test freezes this process here, then wakes it and writes a line
    c = Changes()
    c.hset[keys.metric(0, "c", "m:0")] = {'["a"]': "666"}
    try:
        await commit(client, keys, 0, lease.token, lease.epoch, Checkpoint(), "9-0", c)
        print(json.dumps({"committed": True}), flush=True)
    except Fenced as exc:
        print(json.dumps({"committed": False, "why": str(exc)}), flush=True)

asyncio.run(main())
"""


async def test_a_frozen_owner_resumes_and_is_refused(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    keys = Keys(namespace)
    proc = subprocess.Popen(
        [sys.executable, "-c", FROZEN_OWNER, redis_url, namespace],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        frozen_epoch = json.loads(proc.stdout.readline())["epoch"]
        proc.send_signal(signal.SIGSTOP)
        # Past its lease: a successor takes the shard and commits.
        successor = Lease(aclient, keys.shard_owner(0), 10.0, "successor")
        await asyncio.to_thread(wait_for, lambda: not redis_client.exists(keys.shard_owner(0)), 5, what="expiry")
        assert await successor.acquire() and successor.epoch == frozen_epoch + 1
        assert successor.token is not None
        c = Changes()
        c.hset[keys.metric(0, "c", "m:0")] = {'["a"]': "5"}
        done = await commit(aclient, keys, 0, successor.token, successor.epoch, Checkpoint(), "5-0", c)
        # The frozen one wakes up and tries to commit what it had: refused, nothing written.
        proc.send_signal(signal.SIGCONT)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline())
        assert reply["committed"] is False, reply
        assert redis_client.hget(keys.metric(0, "c", "m:0"), '["a"]') == b"5"
        assert await load(aclient, keys, 0) == done
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(10)


def test_the_start_is_before_every_entry() -> None:
    assert START == "0-0" and Checkpoint().position == START
