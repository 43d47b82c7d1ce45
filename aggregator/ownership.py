"""Which shards this process owns: one fenced lease per shard, about shards / live processes each.

Every process heartbeats into a registry of live owners (scores are Redis server time, so clock
differences between pods do not matter), works out its fair share (``ceil(shards / live)``),
and then, each round:

- renews the leases it holds; one it cannot renew is lost (its shard's work must stop: the
  lease's local clock says so before Redis lets anyone else take it, ``Lease.held``);
- holding more than its share (a process joined), it hands the extra shards over: the
  ``release`` callback runs first (a last checkpoint), then the lease is given up;
- holding fewer (a process left, or it just started), it takes free shards, trying them from an
  offset of its own so that starting processes do not all race for shard 0.

A process that dies keeps its shards until their leases expire (the lease's time to live): then
the others take them over, each acquisition incrementing the shard's fencing epoch, so writes of
a former owner that was only paused are refused (aggregator/lease.py).

This is the ownership model of the single-owner ingest (state kept in memory per shard and
committed in fenced checkpoints); the consumer-group path (consumer.py) does not use it yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from aggregator.lease import Lease
from producer.keys import Keys

log = logging.getLogger("litellm_stream_metrics.aggregator")

# KEYS: registry. ARGV: owner, ttl seconds, "1" to leave. Reply: live owners (this one included).
_HEARTBEAT = """
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - tonumber(ARGV[2]))
if ARGV[3] == "1" then
  redis.call("ZREM", KEYS[1], ARGV[1])
else
  redis.call("ZADD", KEYS[1], now, ARGV[1])
end
return redis.call("ZCARD", KEYS[1])
"""

#: Called when a shard is taken (with its lease: ``lease.epoch`` fences the shard's writes).
Acquired = Callable[[int, Lease], Awaitable[None]]
#: Called before a held shard is handed over (``lost=False``) or after it was lost (``lost=True``).
Released = Callable[[int, bool], Awaitable[None]]


async def _nothing(*_args: object) -> None:
    return None


class ShardOwnership:
    """One process's shards. Drive it with :meth:`run` (or :meth:`step` in tests)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        owner: str,
        ttl: float,
        on_acquired: Acquired = _nothing,
        on_released: Released = _nothing,
    ) -> None:
        self.client = client
        self.keys = keys
        self.owner = owner
        self.ttl = ttl
        self.on_acquired = on_acquired
        self.on_released = on_released
        #: shard -> its lease, for the shards this process holds.
        self.leases: dict[int, Lease] = {}
        #: Live owners at the last heartbeat, and the fair share worked out from it.
        self.live = 1
        self.share = keys.shards
        self.acquisitions = 0
        self.handovers = 0
        self.losses = 0
        #: Rounds completed, and the monotonic time of the last one (readiness and liveness).
        self.rounds = 0
        self.last_round: float | None = None
        #: Monotonic time of the last round that failed on Redis (unavailable: waiting helps).
        self.last_failure: float | None = None
        self.started = time.monotonic()
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._offset = zlib.crc32(owner.encode()) % keys.shards

    def owned(self) -> dict[int, int]:
        """shard -> fencing epoch, for the shards whose lease is certainly still held."""
        return {s: lease.epoch for s, lease in self.leases.items() if lease.held() and lease.epoch is not None}

    def stalled(self, timeout: float) -> str | None:
        """Why this process's ownership rounds made no progress for ``timeout`` seconds although
        Redis answered (a restart may help), or None."""
        last = self.last_round or self.started
        if time.monotonic() - last <= timeout or (self.last_failure is not None and self.last_failure > last):
            return None
        return f"no shard ownership round completed for {time.monotonic() - last:.0f} s"

    async def step(self) -> None:
        """One round: heartbeat, renew, hand over extra shards, take free ones up to the share."""
        self.live = max(
            1, int(await self._heartbeat(keys=[self.keys.owner_registry()], args=[self.owner, self.ttl, 0]))
        )
        self.share = math.ceil(self.keys.shards / self.live)
        for shard in sorted(self.leases):
            await self._renew(shard)
        for shard in sorted(self.leases, reverse=True)[: max(0, len(self.leases) - self.share)]:
            await self._hand_over(shard)
        if len(self.leases) < self.share:
            await self._take_free()
        self.rounds += 1
        self.last_round = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds every third of the lease's time to live until ``stop``; then hand every shard over."""
        try:
            while not stop.is_set():
                try:
                    await self.step()
                except (RedisError, OSError) as exc:
                    self.last_failure = time.monotonic()
                    log.warning("shard ownership: Redis error: %s", exc)
                    await self._drop_expired()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.ttl / 3)
        finally:
            await self.release_all()

    async def release_all(self) -> None:
        """Hand every shard over and leave the registry (a clean shutdown: others take over now,
        not after the leases expire)."""
        for shard in sorted(self.leases):
            try:
                await self._hand_over(shard)
            except (RedisError, OSError) as exc:
                log.warning("shard %d: could not release its lease (it expires by itself): %s", shard, exc)
        try:
            await self._heartbeat(keys=[self.keys.owner_registry()], args=[self.owner, self.ttl, 1])
        except (RedisError, OSError) as exc:
            log.warning("could not leave the owner registry (the entry expires by itself): %s", exc)

    async def _renew(self, shard: int) -> None:
        lease = self.leases[shard]
        try:
            ok = await lease.renew()
        except (RedisError, OSError):
            if lease.held():
                raise  # still ours by the local clock: try again next round
            ok = False
        if not ok or not lease.held():
            await self._lose(shard)

    async def _drop_expired(self) -> None:
        """After a failed round: shards whose lease ran out by the local clock are lost."""
        for shard in sorted(self.leases):
            if not self.leases[shard].held():
                await self._lose(shard)

    async def _lose(self, shard: int) -> None:
        del self.leases[shard]
        self.losses += 1
        log.warning("shard %d: lease lost; this process no longer owns it", shard)
        await self.on_released(shard, True)

    async def _hand_over(self, shard: int) -> None:
        lease = self.leases.pop(shard)
        await self.on_released(shard, False)
        await lease.release()
        self.handovers += 1
        log.info("shard %d: handed over (%d live owners, a share of %d)", shard, self.live, self.share)

    async def _take_free(self) -> None:
        n = self.keys.shards
        order = [(self._offset + i) % n for i in range(n)]
        candidates = [s for s in order if s not in self.leases]
        pipe = self.client.pipeline(transaction=False)
        for shard in candidates:
            pipe.exists(self.keys.shard_owner(shard))
        taken = await pipe.execute()
        for shard, exists in zip(candidates, taken, strict=True):
            if len(self.leases) >= self.share:
                return
            if exists:
                continue
            lease = Lease(self.client, self.keys.shard_owner(shard), self.ttl, self.owner)
            if await lease.acquire():
                self.leases[shard] = lease
                self.acquisitions += 1
                log.info("shard %d: now owned by this process (epoch %s)", shard, lease.epoch)
                await self.on_acquired(shard, lease)
