"""Shard ownership (aggregator/ownership.py): one process per shard, about shards / live
processes each, a dead process's shards taken over once their leases expire, a paused one
refused, a joining one given its share. Real Redis; the last tests use real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from aggregator.lease import Lease
from aggregator.ownership import ShardOwnership
from producer.keys import Keys
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[1]
TTL = 1.0


class Recorder:
    """What the callbacks saw, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int | None]] = []

    async def acquired(self, shard: int, lease: Lease) -> None:
        self.events.append(("acquired", shard, lease.epoch))

    async def released(self, shard: int, lost: bool) -> None:
        self.events.append(("lost" if lost else "handed over", shard, None))


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[list[aioredis.Redis]]:
    made: list[aioredis.Redis] = []
    yield made
    for c in made:
        await c.aclose()


def owner(clients: list[aioredis.Redis], url: str, keys: Keys, name: str) -> tuple[ShardOwnership, Recorder]:
    client = aioredis.Redis.from_url(url)
    clients.append(client)
    rec = Recorder()
    return ShardOwnership(client, keys, name, TTL, rec.acquired, rec.released), rec


def assert_exclusive(owners: list[ShardOwnership], shards: int) -> None:
    held = [s for o in owners for s in o.owned()]
    assert len(held) == len(set(held)), [o.owned() for o in owners]
    assert set(held) <= set(range(shards))


async def settle(owners: list[ShardOwnership], rounds: int = 3) -> None:
    for _ in range(rounds):
        for o in owners:
            await o.step()


async def test_one_process_owns_every_shard(redis_url: str, namespace: str, clients: list[aioredis.Redis]) -> None:
    keys = Keys(namespace, 4)
    o, rec = owner(clients, redis_url, keys, "a")
    await o.step()
    assert o.owned() == {0: 1, 1: 1, 2: 1, 3: 1}
    assert sorted(e[1] for e in rec.events) == [0, 1, 2, 3] and {e[0] for e in rec.events} == {"acquired"}
    # Rounds renew, nothing changes hands.
    await o.step()
    assert o.owned() == {0: 1, 1: 1, 2: 1, 3: 1} and len(rec.events) == 4


async def test_shards_are_shared_and_never_owned_twice(
    redis_url: str, namespace: str, clients: list[aioredis.Redis]
) -> None:
    keys = Keys(namespace, 6)
    owners = [owner(clients, redis_url, keys, name)[0] for name in ("a", "b", "c")]
    # Each starts alone, as processes do: the first takes everything, the others join later.
    await owners[0].step()
    assert len(owners[0].owned()) == 6
    for _ in range(4):
        for o in owners:
            await o.step()
            assert_exclusive(owners, 6)
    assert sorted(len(o.owned()) for o in owners) == [2, 2, 2]
    assert {s for o in owners for s in o.owned()} == set(range(6))


async def test_a_joining_process_gets_its_share_after_a_handover(
    redis_url: str, namespace: str, clients: list[aioredis.Redis]
) -> None:
    keys = Keys(namespace, 4)
    a, rec_a = owner(clients, redis_url, keys, "a")
    await a.step()
    b, rec_b = owner(clients, redis_url, keys, "b")
    await b.step()  # joins: nothing free yet
    assert b.owned() == {}
    await a.step()  # a sees two live owners: hands two shards over, callback first
    handed = sorted(s for kind, s, _ in rec_a.events if kind == "handed over")
    assert len(handed) == 2 and set(handed).isdisjoint(a.owned())
    await b.step()
    assert sorted(b.owned()) == handed
    # Each handed-over shard's epoch went up: a write fenced with a's epoch is refused.
    assert all(epoch == 2 for epoch in b.owned().values())
    assert [e for e in rec_b.events if e[0] != "acquired"] == []


async def test_a_silent_process_loses_its_shards_when_their_leases_expire(
    redis_url: str, namespace: str, clients: list[aioredis.Redis]
) -> None:
    keys = Keys(namespace, 4)
    a, _ = owner(clients, redis_url, keys, "a")
    b, _ = owner(clients, redis_url, keys, "b")
    await settle([a, b])
    assert sorted(len(o.owned()) for o in (a, b)) == [2, 2]
    a_shards = set(a.owned())
    # a stops running rounds (frozen, or dead): until its leases expire, b cannot take them.
    await b.step()
    assert set(b.owned()).isdisjoint(a_shards)
    deadline = time.monotonic() + 5 * TTL
    while set(b.owned()) != set(range(4)):
        assert time.monotonic() < deadline, b.owned()
        await asyncio.sleep(TTL / 5)
        await b.step()
        # Never both: by its own clock a stops counting a shard as owned before Redis lets b take it.
        assert_exclusive([a, b], 4)
    assert a.owned() == {}
    # a wakes up: its next round finds the leases gone and reports them lost.
    lost: list[tuple[int, bool]] = []

    async def note(shard: int, was_lost: bool) -> None:
        lost.append((shard, was_lost))

    a.on_released = note
    await a.step()
    assert sorted(lost) == [(s, True) for s in sorted(a_shards)]
    assert a.owned() == {}


async def test_a_clean_stop_hands_over_at_once(redis_url: str, namespace: str, clients: list[aioredis.Redis]) -> None:
    keys = Keys(namespace, 4)
    a, rec_a = owner(clients, redis_url, keys, "a")
    b, _ = owner(clients, redis_url, keys, "b")
    await settle([a, b])
    stop = asyncio.Event()
    stop.set()
    await a.run(stop)  # stops at once: hands everything over and leaves the registry
    assert a.owned() == {} and a.leases == {}
    # Every shard it took (all four, alone at first) was handed over: two to b, two at the stop.
    assert sorted(s for kind, s, _ in rec_a.events if kind == "handed over") == [0, 1, 2, 3]
    started = time.monotonic()
    await b.step()
    assert set(b.owned()) == set(range(4))  # no wait for an expiry
    assert time.monotonic() - started < TTL
    assert b.live == 1


# -- real processes --------------------------------------------------------------------------------

OWNER_PROCESS = """
import asyncio, json, sys, time
import redis.asyncio as aioredis
from aggregator.ownership import ShardOwnership
from producer.keys import Keys

url, namespace, shards, name, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])

async def main():
    client = aioredis.Redis.from_url(url)
    own = ShardOwnership(client, Keys(namespace, shards), name, ttl)
    stop = asyncio.Event()
    async def report():
        while True:
            print(json.dumps({"t": time.time(), "owned": own.owned(), "losses": own.losses}), flush=True)
            await asyncio.sleep(0.05)
    task = asyncio.create_task(report())
    await own.run(stop)

asyncio.run(main())
"""


class OwnerProcess:
    def __init__(self, url: str, namespace: str, shards: int, name: str, log: Path) -> None:
        self.log_path = log
        self.out = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OWNER_PROCESS, url, namespace, str(shards), name, str(TTL)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def reports(self) -> list[dict[str, object]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def owned(self) -> set[int]:
        r = self.reports()
        return {int(s) for s in r[-1]["owned"]} if r else set()  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.out.close()


def test_processes_share_shards_and_take_over_from_a_killed_or_frozen_one(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    procs = [OwnerProcess(redis_url, namespace, 6, name, tmp_path / f"{name}.log") for name in ("a", "b", "c")]
    client = redis.Redis.from_url(redis_url)
    keys = Keys(namespace, 6)
    try:
        wait_for(lambda: sorted(len(p.owned()) for p in procs) == [2, 2, 2], 15, what="two shards each")
        # SIGKILL: the others take its shards once the leases expire.
        killed = procs[0]
        killed_shards = killed.owned()
        killed.proc.kill()
        t0 = time.monotonic()
        wait_for(lambda: procs[1].owned() | procs[2].owned() == set(range(6)), 10, what="takeover after SIGKILL")
        takeover = time.monotonic() - t0
        assert takeover < 3 * TTL, takeover
        assert not procs[1].owned() & procs[2].owned()
        for shard in killed_shards:
            assert int(client.get(keys.shard_owner(shard) + ":epoch") or 0) >= 2
        # SIGSTOP past the lease: the other takes everything; resumed, the frozen one owns nothing
        # (its own clock ran out before Redis let the lease go) and reports its shards lost.
        frozen, other = procs[1], procs[2]
        frozen_shards = frozen.owned()
        frozen.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: other.owned() == set(range(6)), 10, what="takeover from the frozen process")
        frozen.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: len(frozen.reports()) > 0 and frozen.reports()[-1]["losses"] == len(frozen_shards), 5)
        after = [r for r in frozen.reports() if float(r["t"]) > time.time() - 0.5]  # type: ignore[arg-type]
        assert after and all(r["owned"] == {} for r in after)
        # Once running again, it gets its share back by handover.
        wait_for(lambda: sorted(len(p.owned()) for p in (frozen, other)) == [3, 3], 10, what="rebalanced")
    finally:
        for p in procs:
            p.stop()
        client.close()
