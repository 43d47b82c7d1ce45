"""Fenced gauge writes of the budget refresh (``fenced_write.lua``) and the sweep that removes
the series of entities that are gone from the source.

All writes go to shard 0's gauge hashes, in scripts that first check the refresh lease and its
fencing epoch (on shard 0's hash tag, so one slot on Redis Cluster). Values use the event
path's rule, last write wins by time, with the time at which the rows were read.

With several shards, events of one key may have written its gauges in another shard; the
snapshot takes the newest value over the shards, so a series the refresh removes must go from
every shard. Shards other than 0 cannot be checked against the lease in the same script (other
slot); there the sweep only removes series older than the run's start whose entity the run has
just proved to be without a value (shard 0 holds no value written at or after the run's
start). That removal is true whoever performs it, so it needs no fence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis

from aggregator.budgets.gauges import Op
from aggregator.lease import FENCE_LUA, Lease, LeaseLost
from producer.keys import Keys

_SCRIPT = FENCE_LUA + resources.files("aggregator.budgets").joinpath("fenced_write.lua").read_text()

# Other shards: KEYS 1 g, 2 gt; ARGV 1 time, then fields. Remove each field whose stored time is
# older than the time (or absent), recording the removal time.
_SHARD_SWEEP = """
local t = tonumber(ARGV[1])
local removed = 0
for i = 2, #ARGV do
  local current = redis.call("HGET", KEYS[2], ARGV[i])
  if (current == false or tonumber(current) < t) and redis.call("HDEL", KEYS[1], ARGV[i]) == 1 then
    redis.call("HSET", KEYS[2], ARGV[i], ARGV[1])
    removed = removed + 1
  end
end
return removed
"""

# Operations per script call: keeps each call (which blocks Redis) to a few milliseconds.
CHUNK = 4000
SCAN_COUNT = 1000


class Fenced(LeaseLost):
    """Redis refused a write: the lease or its epoch changed (a newer holder exists)."""


@dataclass
class WriteStats:
    written: int = 0
    removed: int = 0
    stale: int = 0
    forgotten: int = 0

    def add(self, other: WriteStats) -> None:
        self.written += other.written
        self.removed += other.removed
        self.stale += other.stale
        self.forgotten += other.forgotten


class FencedWriter:
    def __init__(self, client: aioredis.Redis, keys: Keys, owner: str) -> None:
        self.client = client
        self.keys = keys
        self.owner = owner
        self._script = client.register_script(_SCRIPT)
        self._shard_sweep = client.register_script(_SHARD_SWEEP)

    def _gauge_keys(self, mkey: str) -> tuple[str, str]:
        return self.keys.metric(0, "g", mkey), self.keys.metric(0, "gt", mkey)

    async def _call(
        self,
        lease: Lease,
        kind: str,
        t: float,
        ops: Sequence[Op] = (),
        sweep: Sequence[tuple[str, str]] = (),
        gc_before: float | None = None,
        status: Sequence[str] = (),
        audit: bool = True,
    ) -> WriteStats:
        fence_keys, fence_args = lease.fence()
        keys = [*fence_keys, self.keys.budget_writes(), self.keys.budget_status()]
        index: dict[str, int] = {}

        def idx(key: str) -> int:
            i = index.get(key)
            if i is None:
                keys.append(key)
                i = index[key] = len(keys)
            return i

        sets: list[object] = []
        dels: list[object] = []
        for mkey, field, value in ops:
            g, gt = self._gauge_keys(mkey)
            if value is None:
                dels += [idx(g), idx(gt), field]
            else:
                sets += [idx(g), idx(gt), field, value]
        sweeps: list[object] = []
        for mkey, field in sweep:
            g, gt = self._gauge_keys(mkey)
            sweeps += [idx(g), idx(gt), field]
        doc = {
            "t": repr(t),
            "owner": self.owner,
            "kind": kind,
            "audit": 1 if audit else 0,
            "set": sets,
            "del": dels,
            "sweep": sweeps,
            "gc": repr(gc_before) if gc_before is not None else "-1e300",
            "status": list(status),
        }
        reply = await self._script(keys=keys, args=[*fence_args, orjson.dumps(doc)])
        head = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if head == "fenced":
            raise Fenced(f"write refused: lease {lease.key} epoch {fence_args[1]} is no longer current")
        return WriteStats(int(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]))

    async def write(self, lease: Lease, kind: str, t: float, ops: Sequence[Op]) -> WriteStats:
        """Set/remove gauges as of time ``t``; raises :class:`Fenced` when the lease is gone."""
        total = WriteStats()
        for i in range(0, max(len(ops), 1), CHUNK):
            total.add(await self._call(lease, kind, t, ops[i : i + CHUNK]))
        return total

    async def set_status(self, lease: Lease, kind: str, t: float, status: Sequence[str]) -> None:
        await self._call(lease, kind, t, status=status, audit=False)

    async def sweep(
        self, lease: Lease, kind: str, mkeys: Sequence[str], since: float, gc_before: float, shards: int
    ) -> WriteStats:
        """Remove the series of ``mkeys`` that this run did not write (stored time older than
        ``since``, the time of the run's first read), in every shard."""
        total = WriteStats()
        for mkey in mkeys:
            _, gt = self._gauge_keys(mkey)
            async for batch in hscan(self.client, gt):
                old = [(mkey, _text(f)) for f, v in batch if float(v) < since]
                if old:
                    total.add(await self._call(lease, kind, since, sweep=old, gc_before=gc_before, audit=False))
            for shard in range(1, shards):
                total.removed += await self._sweep_shard(mkey, shard, since)
        return total

    async def _sweep_shard(self, mkey: str, shard: int, since: float) -> int:
        g0, gt0 = self._gauge_keys(mkey)
        gk, gtk = self.keys.metric(shard, "g", mkey), self.keys.metric(shard, "gt", mkey)
        removed = 0
        async for batch in hscan(self.client, gk):
            fields = [_text(f) for f, _ in batch]
            values = await self.client.hmget(g0, fields)
            times = await self.client.hmget(gt0, fields)
            gone = [
                f for f, v, t in zip(fields, values, times, strict=True) if v is None or t is None or float(t) < since
            ]
            if gone:
                removed += int(await self._shard_sweep(keys=[gk, gtk], args=[repr(since), *gone]))
        return removed


async def hscan(client: aioredis.Redis, key: str) -> AsyncIterator[list[tuple[Any, Any]]]:
    """HSCAN ``key`` in batches of (field, value) pairs."""
    cursor = 0
    while True:
        cursor, chunk = await client.hscan(key, cursor, count=SCAN_COUNT)
        if isinstance(chunk, dict) and chunk:
            yield list(chunk.items())
        if cursor == 0:
            return


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
