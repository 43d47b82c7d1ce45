"""Which aggregator process exports the business series: the holder of a Redis lease.

Every process tries to take the lease and the holder renews it every third of its time to live.
A holder exports only while its local clock says the lease cannot have expired (``Lease.held``),
and another process can take it only after it expired in Redis, so two processes never export
at the same time (clock rates permitting). A Redis error is counted and logged as an error: it
never makes a process believe another one leads, and a holder that cannot renew stops
exporting when its lease runs out by its own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from aggregator.lease import Lease
from producer.keys import Keys

log = logging.getLogger("litellm_stream_metrics.aggregator")


def exporter_lease_key(keys: Keys) -> str:
    return keys.lease("exporter")


class Leadership:
    def __init__(self, client: aioredis.Redis, keys: Keys, owner: str, ttl: float) -> None:
        self.lease = Lease(client, exporter_lease_key(keys), ttl, owner)
        self.ttl = ttl
        self.acquisitions = 0
        self.losses = 0
        self.errors = 0
        self.last_error: str | None = None
        self._was_leader = False

    def is_leader(self) -> bool:
        return self.lease.held()

    @property
    def epoch(self) -> int | None:
        return self.lease.epoch

    async def step(self) -> None:
        """One round: renew the lease if held, else try to take it."""
        try:
            if self._was_leader:
                if not await self.lease.renew():
                    self._lost("another process took the lease")
            elif await self.lease.acquire():
                self.acquisitions += 1
                self._was_leader = True
                log.info("this process now exports the business series (lease epoch %s)", self.lease.epoch)
        except RedisError as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("exporter lease: Redis error: %s", self.last_error)
        except Exception as exc:  # never let the lease loop die: count, log, try again next round
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("exporter lease: unexpected error")
        if self._was_leader and not self.lease.held():
            self._lost("the lease ran out before it could be renewed")

    def _lost(self, why: str) -> None:
        self.losses += 1
        self._was_leader = False
        log.warning("this process stopped exporting the business series: %s", why)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the lease (or keep trying to get it) until ``stop``; release it on the way out."""
        try:
            while not stop.is_set():
                await self.step()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.ttl / 3)
        finally:
            if self._was_leader:
                try:
                    await self.lease.release()
                    log.info("released the exporter lease")
                except RedisError as exc:
                    log.warning("could not release the exporter lease (it expires by itself): %s", exc)
                self._was_leader = False
