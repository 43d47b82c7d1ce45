"""A Redis lease with a fencing epoch: which process runs a singleton job (the budget refresh,
leadership of the business series).

Why not a plain ``SET NX PX`` lock: a holder can be paused (GC, SIGSTOP, a slow VM) or cut off
past its time to live while it still believes it holds the lock, and then overwrite what a newer
holder wrote. Here

- every acquisition increments a fencing *epoch* (``<key>:epoch``) in the same atomic step and
  the holder keeps it; writes protected by the lease run in a script that first checks that the
  lease key still holds the holder's token **and** the epoch is still the holder's
  (:data:`FENCE_LUA`), so a former holder's writes are refused atomically, whatever it believes;
- the lease is renewed while the job runs (:meth:`Lease.keep_renewed`, every third of the time
  to live) and a lost lease is signalled, so the job stops;
- :meth:`Lease.held` trusts only the local monotonic clock: the lease counts as held until the
  start of the last successful acquire/renew plus the time to live minus a safety margin;
- Redis errors raise: an unreachable Redis is an error, never "someone else holds it".

The lease key and its epoch key share one hash tag (callers pass a key from
``producer.keys.Keys.lease``, on shard 0's tag), so a fenced script can check them together with
shard 0's state on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("litellm_stream_metrics.lease")

# KEYS: lease, epoch. ARGV: token, ttl ms. Reply: the new epoch, or 0 when another token holds it.
_ACQUIRE = """
local current = redis.call("GET", KEYS[1])
if current == ARGV[1] then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  return tonumber(redis.call("GET", KEYS[2]) or "0")
end
if current then return 0 end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return redis.call("INCR", KEYS[2])
"""

# KEYS: lease. ARGV: token, ttl ms. Reply: 1 renewed, 0 not ours (lost).
_RENEW = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: token. Reply: 1 released, 0 not ours.
_RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
  redis.call("DEL", KEYS[1])
  return 1
end
return 0
"""

#: Prelude for fenced scripts: ``KEYS[1]`` the lease key, ``KEYS[2]`` its epoch key, ``ARGV[1]``
#: the holder's token, ``ARGV[2]`` its epoch. Returns ``{"fenced"}`` (writing nothing) unless the
#: lease is still held with that token and the epoch is unchanged.
FENCE_LUA = """
if redis.call("GET", KEYS[1]) ~= ARGV[1] or redis.call("GET", KEYS[2]) ~= ARGV[2] then
  return {"fenced"}
end
"""


class LeaseLost(RuntimeError):
    """The lease expired or was taken over while the job ran."""


class Lease:
    """One process's handle on a named lease. Not safe for concurrent use by several jobs."""

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        ttl: float,
        owner: str,
        *,
        safety_margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        self.client = client
        self.key = key
        self.epoch_key = f"{key}:epoch"
        self.ttl = ttl
        self.owner = owner
        # Covers the time between the server applying PX and our clock reading, and clock rate
        # differences; a tenth of the ttl, at most one second.
        self.safety_margin = min(ttl / 10, 1.0) if safety_margin is None else safety_margin
        self._clock = clock
        self._token: str | None = None
        self._epoch: int | None = None
        self._valid_until: float | None = None
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    @property
    def token(self) -> str | None:
        """The token stored in the lease key while held (``<owner>:<random>``)."""
        return self._token

    @property
    def epoch(self) -> int | None:
        """The fencing epoch of the current holding, or None when not held."""
        return self._epoch

    def held(self) -> bool:
        """True only while the local clock proves the lease cannot have expired in Redis."""
        return self._valid_until is not None and self._clock() < self._valid_until

    def remaining(self) -> float:
        """Seconds the lease is certainly still ours (0 when not held)."""
        return 0.0 if self._valid_until is None else max(0.0, self._valid_until - self._clock())

    async def acquire(self) -> bool:
        """Take the lease if it is free (or already ours). Raises on Redis errors."""
        token = self._token or f"{self.owner}:{uuid.uuid4().hex}"
        started = self._clock()
        epoch = int(await self._acquire(keys=[self.key, self.epoch_key], args=[token, self.ttl_ms]))
        if epoch == 0:
            self._forget()
            return False
        self._token, self._epoch = token, epoch
        self._valid_until = started + self.ttl - self.safety_margin
        return True

    async def renew(self) -> bool:
        """Extend the lease if it is still ours; False means it is lost. Raises on Redis errors."""
        if self._token is None:
            return False
        started = self._clock()
        if int(await self._renew(keys=[self.key], args=[self._token, self.ttl_ms])) == 1:
            self._valid_until = started + self.ttl - self.safety_margin
            return True
        self._forget()
        return False

    async def release(self) -> None:
        """Give the lease up if it is still ours (best effort: it expires anyway)."""
        token = self._token
        self._forget()
        if token is not None:
            await self._release(keys=[self.key], args=[token])

    def fence(self) -> tuple[list[str], list[str]]:
        """KEYS and ARGV heads for a script that starts with :data:`FENCE_LUA`."""
        if self._token is None or self._epoch is None:
            raise LeaseLost(f"lease {self.key} is not held")
        return [self.key, self.epoch_key], [self._token, str(self._epoch)]

    def _forget(self) -> None:
        self._token = None
        self._epoch = None
        self._valid_until = None

    @contextlib.asynccontextmanager
    async def keep_renewed(self, on_lost: Callable[[], None] | None = None) -> AsyncIterator[asyncio.Event]:
        """Renew every third of the ttl while the block runs; the yielded event is set when the
        lease is lost (renewal refused, or renewals failing until the local clock runs out)."""
        lost = asyncio.Event()

        async def loop() -> None:
            while True:
                interval = self.ttl / 3
                await asyncio.sleep(interval)
                while True:
                    try:
                        ok = await self.renew()
                    except (RedisError, OSError) as exc:
                        log.warning("renewing lease %s failed: %s", self.key, exc)
                        if self.held():
                            await asyncio.sleep(min(interval / 4, max(self.remaining() / 2, 0.01)))
                            continue
                        ok = False
                    break
                if not ok or not self.held():
                    log.warning("lease %s lost (epoch %s)", self.key, self._epoch)
                    self._forget()
                    lost.set()
                    if on_lost is not None:
                        on_lost()
                    return

        task = asyncio.create_task(loop(), name=f"renew {self.key}")
        try:
            yield lost
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
