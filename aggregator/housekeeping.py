"""Stream hygiene for one shard: trim what every group has processed, forget dead consumers,
and detect entries that were removed from the stream before being applied."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from aggregator.scripts import script
from aggregator.selfmetrics import reported
from aggregator.series_limits import MetricLimits, retire_idle
from aggregator.settings import AggregatorSettings
from producer.keys import PRODUCER_STATS_TTL_SECONDS, Keys

log = logging.getLogger("litellm_stream_metrics.aggregator")

_GAPS = script("gaps.lua")
_FORGET = script("forget_removals.lua")
_ENDED = script("ended_producer.lua")
# A producer is silent for at least this many of its stats intervals before it counts as gone.
GONE_AFTER_STATS_INTERVALS = 3
# Removal records are looked through at most this often (a scan of every gauge's time hash).
FORGET_INTERVAL = 3600.0


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Housekeeper:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        shard: int,
        settings: AggregatorSettings,
        limits: Mapping[str, MetricLimits] | None = None,
        gauge_keys: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.keys = keys
        self.shard = shard
        self.settings = settings
        self.stream = keys.stream(shard)
        self._gaps = client.register_script(_GAPS)
        self.trimmed = 0
        self.lost = 0
        self.consumers_removed = 0
        self.retired = 0
        #: Series caps/TTLs (series_limits.py); empty: none.
        self.limits: dict[str, MetricLimits] = dict(limits or {})
        #: Metric keys of the gauges, whose old removal records are forgotten.
        self.gauge_keys: list[str] = list(gauge_keys)
        self.removals_forgotten = 0
        self._forget = client.register_script(_FORGET)
        self._next_forget = 0.0
        self._ended = client.register_script(_ENDED)
        self.unclean_exits = 0
        #: Rounds completed (what a caller waits on to know housekeeping has looked again).
        self.rounds = 0

    async def run_once(self) -> None:
        await self.trim()
        await self.remove_dead_consumers()
        await self.detect_lost()
        await self.record_ended_producers()
        if self.limits:
            self.retired += await retire_idle(self.client, self.keys, self.shard, self.limits)
        if self.gauge_keys and time.monotonic() >= self._next_forget:
            self._next_forget = time.monotonic() + FORGET_INTERVAL
            await self.forget_old_removals(time.time() - self.settings.gauge_removal_memory_seconds)
        self.rounds += 1

    async def forget_old_removals(self, cutoff: float) -> int:
        """Drop gauge removal records older than ``cutoff``: they only stop writes older than
        themselves from bringing a removed series back, and would otherwise pile up."""
        forgotten = 0
        for mkey in self.gauge_keys:
            gkey, tkey = self.keys.metric(self.shard, "g", mkey), self.keys.metric(self.shard, "gt", mkey)
            cursor: Any = 0
            while True:
                reply: Any = await self.client.hscan(tkey, cursor, count=1000)
                cursor, page = reply
                old = [f for f, t in page.items() if float(t) < cutoff]
                if old:
                    forgotten += int(await self._forget(keys=[gkey, tkey], args=[repr(cutoff), *old]))
                if int(cursor) == 0:
                    break
        self.removals_forgotten += forgotten
        return forgotten

    async def trim_bound(self) -> str | None:
        """The lowest entry id some group still needs: its oldest pending entry, else the entry
        after its last delivered one. Entries below the minimum over all groups are processed."""
        try:
            groups: list[dict[str, Any]] = await self.client.xinfo_groups(self.stream)
        except aioredis.ResponseError:
            return None  # no stream yet
        if not groups:
            return None
        bound: tuple[int, int] | None = None
        for g in groups:
            name = _text(g["name"])
            summary = await self.client.xpending(self.stream, name)
            if summary["pending"]:
                need = _id_tuple(_text(summary["min"]))
            else:
                last = _id_tuple(_text(g["last-delivered-id"]))
                need = (last[0], last[1] + 1)
            bound = need if bound is None or need < bound else bound
        return None if bound is None else f"{bound[0]}-{bound[1]}"

    async def trim(self) -> int:
        """XTRIM MINID: never removes an entry some group has not processed."""
        bound = await self.trim_bound()
        if bound is None or bound == "0-1":
            return 0
        removed = int(await self.client.xtrim(self.stream, minid=bound, approximate=False))
        self.trimmed += removed
        return removed

    async def remove_dead_consumers(self) -> int:
        """Remove consumers idle longer than ``dead_consumer_idle`` that hold no pending entries
        (their pending entries are claimed by live consumers first)."""
        try:
            consumers = await self.client.xinfo_consumers(self.stream, self.settings.group)
        except aioredis.ResponseError:
            return 0
        removed = 0
        limit_ms = self.settings.dead_consumer_idle * 1000
        for c in consumers:
            name = _text(c["name"])
            if name == self.settings.consumer_name or int(c["pending"]) or int(c["idle"]) < limit_ms:
                continue
            await self.client.xgroup_delconsumer(self.stream, self.settings.group, name)
            log.info("shard %s: removed dead consumer %s", self.shard, name)
            removed += 1
        self.consumers_removed += removed
        return removed

    async def detect_lost(self) -> int:
        """Count entries that were removed before being applied (gaps in producers' sequences)."""
        marks = await self.client.hkeys(self.keys.high_water_marks(self.shard))
        lost = 0
        for raw in marks:
            pid = _text(raw)
            zkey = self.keys.seen_above_mark(self.shard, pid)
            if not await self.client.zcard(zkey):
                continue
            n = int(
                await self._gaps(
                    keys=[
                        self.stream,
                        self.keys.high_water_marks(self.shard),
                        zkey,
                        self.keys.shard_stats(self.shard),
                        self.keys.lost_by_producer(self.shard),
                    ],
                    args=[self.settings.group, pid],
                )
            )
            if n:
                log.warning("shard %s: %d entries of producer %s were removed before being applied", self.shard, n, pid)
            lost += n
        self.lost += lost
        return lost

    async def record_ended_producers(self, now: float | None = None) -> int:
        """Find this shard's producers that stopped reporting; count, once each, the events an
        unclean exit left in its buffer (``events_lost_unclean_exit``). Also forgets producers
        whose counters have expired, so the registry stays bounded."""
        now = time.time() if now is None else now
        horizon = now - PRODUCER_STATS_TTL_SECONDS
        registry, ended = self.keys.producer_registry(), self.keys.ended_producers(self.shard)
        await self.client.zremrangebyscore(registry, "-inf", horizon)
        await self.client.zremrangebyscore(ended, "-inf", horizon)
        silent = [
            pid
            for pid in map(
                _text, await self.client.zrangebyscore(registry, horizon, now - self.settings.producer_gone_seconds)
            )
            if self.keys.shard_for_producer(pid) == self.shard
        ]
        if not silent:
            return 0
        known = await self.client.zmscore(ended, silent)
        unclean = 0
        for pid, seen in zip(silent, known, strict=True):
            if seen is not None:
                continue
            stats = {_text(k): _text(v) for k, v in (await self.client.hgetall(self.keys.producer_stats(pid))).items()}
            if not stats:
                continue
            interval = reported(stats, "stats_interval")
            if now - reported(stats, "updated_at") < GONE_AFTER_STATS_INTERVALS * interval:
                continue  # reports less often than the gone threshold assumes
            clean = "closed_at" in stats
            unsent = 0 if clean else int(reported(stats, "buffer_events"))
            if not await self._ended(
                keys=[ended, self.keys.shard_stats(self.shard)], args=[pid, now, int(clean), unsent]
            ):
                continue
            if not clean:
                unclean += 1
                log.warning(
                    "shard %s: producer %s stopped without a clean shutdown; its last report counted %d events "
                    "not yet sent (now lost: events_lost_unclean_exit)",
                    self.shard,
                    pid,
                    unsent,
                )
        self.unclean_exits += unclean
        return unclean
