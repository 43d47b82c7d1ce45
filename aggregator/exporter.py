"""What ``/metrics`` returns: the business series (only while this process leads), the shared
health (leader only too) and this process's own self-metrics (always).

A scrape never fails as a whole because of the business series: when reading or rendering them
fails (Redis error, out of memory) the answer still carries the health (``lsm_*``), and families
that would exceed ``LSM_RENDER_MAX_FIELDS`` are left out whole (``lsm_render_incomplete``,
``lsm_render_errors_total``, ``lsm_render_omitted_fields``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import redis
from prometheus_client import CollectorRegistry

from aggregator.connections import open_sync
from aggregator.consumer import ShardConsumer
from aggregator.exposition import EOF, Exposition, choose_format, render_registry
from aggregator.http_server import RenderCache
from aggregator.leadership import Leadership
from aggregator.owner import Owners
from aggregator.schema import MetricSchema
from aggregator.selfexport import ProcessCollector, RenderStats, SharedCollector
from aggregator.settings import AggregatorSettings
from aggregator.textformat import Format
from producer.urls import passwords_in, safe_url

log = logging.getLogger("litellm_stream_metrics.aggregator")

NOT_READY_STARTING = "not ready: starting"


class Exporter:
    def __init__(
        self,
        settings: AggregatorSettings,
        schema: MetricSchema,
        consumers: Sequence[ShardConsumer],
        leadership: Leadership,
        owners: Owners | None = None,
    ) -> None:
        self.settings = settings
        self.keys = settings.keys
        # Its own synchronous client: the HTTP threads never touch the event loop's client.
        self.client = open_sync(settings)
        self.exposition = Exposition(self.client, self.keys, schema)
        self.leadership = leadership
        self.consumers = consumers
        #: With the "owner" ingest: the shards this process owns (no consumers then).
        self.owners = owners
        self.render_stats = RenderStats()
        #: This process's own self-metrics; other components (budget jobs) register here too.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ProcessCollector(consumers, leadership, self.render_stats, owners))
        self.shared_registry = CollectorRegistry(auto_describe=False)
        self.shared_registry.register(SharedCollector(self.client, self.keys, settings.group))
        self.cache: RenderCache[tuple[bytes, ...]] = RenderCache(settings.render_cache_seconds)
        self._readiness_lock = threading.Lock()
        self._readiness_detail: str | None = None
        self._omitted_logged: set[str] = set()
        self._liveness_detail: str | None = None

    def render(self, accept: str | None, names: frozenset[str] | None) -> tuple[list[bytes], str]:
        """The body, as parts to write one after the other (never joined: a large body is not
        held twice), and its content type."""
        fmt, content_type = choose_format(accept)
        parts: list[bytes] = []
        epoch = self.leadership.epoch if self.leadership.is_leader() else None
        if epoch is not None:
            hits = self.cache.hits
            leader_parts = self.cache.get_or_render((fmt, names, epoch), lambda: self._render_leader(fmt, names))
            self.render_stats.cache_hits += self.cache.hits - hits
            # Leadership may have ended while rendering: then the business series are not ours
            # to export any more (another process may already export them).
            if self.leadership.is_leader() and self.leadership.epoch == epoch:
                parts += leader_parts
        else:
            self.render_stats.standby()
        parts.append(render_registry(self.registry, fmt, names))
        if fmt == "openmetrics":
            parts.append(EOF)
        return parts, content_type

    def _render_leader(self, fmt: Format, names: frozenset[str] | None) -> tuple[bytes, ...]:
        """The business series and the shared health, each part on its own: a failure of one
        leaves the other (and the process's self-metrics) in the answer."""
        started = time.perf_counter()
        x = self.exposition
        limit = self.settings.render_max_fields or None
        parts: list[bytes] = []
        errors: list[str] = []
        try:
            parts = x.render_parts(fmt, names, max_fields=limit)
        except Exception as exc:  # Redis error, MemoryError...: serve the health anyway
            parts = []
            errors.append(type(exc).__name__)
            log.error("rendering the business series failed; serving the self-metrics only: %s", _describe(exc))
        else:
            if x.omitted and set(x.omitted) != self._omitted_logged:
                log.warning(
                    "/metrics left out %d famil%s over LSM_RENDER_MAX_FIELDS=%d (stored fields): %s",
                    len(x.omitted),
                    "y" if len(x.omitted) == 1 else "ies",
                    limit,
                    ", ".join(f"{name} ({n:,})" for name, n in sorted(x.omitted.items())),
                )
            self._omitted_logged = set(x.omitted)  # logged again when the set changes
        try:
            parts.append(render_registry(self.shared_registry, fmt, names))
        except Exception as exc:
            errors.append(type(exc).__name__)
            log.error("rendering the shared health failed: %s", _describe(exc))
        omitted = {} if errors else dict(x.omitted)
        self.render_stats.record(
            fmt, time.perf_counter() - started, sum(map(len, parts)), x.series_counts, x.skipped, omitted, bool(errors)
        )
        return tuple(parts)

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for the open ``/readyz``: a few words. What exactly is wrong (the Redis
        error, which stream) is logged, once per change, never served."""
        ready, reason, detail = self._check_readiness()
        with self._readiness_lock:
            changed, self._readiness_detail = detail != self._readiness_detail, detail
        if changed and detail is not None:
            # Starting is normal (info); anything else needs a look (warning).
            level = logging.INFO if reason == NOT_READY_STARTING else logging.WARNING
            log.log(level, "not ready: %s", safe_url(detail, passwords_in(self.settings.redis_url)))
        elif changed:
            log.info("ready again")
        return ready, reason

    def _check_readiness(self) -> tuple[bool, str, str | None]:
        """(ready, reason served, detail for the log or None when ready)."""
        try:
            self.client.ping()
            for c in self.consumers:
                groups = self.client.xinfo_groups(c.stream)
                if not any(_text(g["name"]) == self.settings.group for g in groups):
                    detail = f"consumer group {self.settings.group} missing on {c.stream}"
                    return False, "not ready: consumer group missing", detail
        except redis.RedisError as exc:
            return False, "not ready: Redis unreachable", f"Redis unreachable: {type(exc).__name__}: {exc}"
        if self.owners is not None and self.owners.ownership.rounds == 0:
            return False, NOT_READY_STARTING, "shard ownership: no round completed yet"
        not_started = [str(c.shard) for c in self.consumers if not c.ready]
        if not_started:
            detail = f"shard consumer(s) {', '.join(not_started)} not started yet"
            return False, NOT_READY_STARTING, detail
        role = "leader" if self.leadership.is_leader() else "standby"
        return True, f"ready ({role})", None

    def liveness(self) -> tuple[bool, str]:
        """Not alive when a shard consumer has made no progress for ``liveness_timeout`` seconds
        although Redis was available (see ``ShardConsumer.stalled``): restarting may help, and
        waiting has not. Process memory only: answering never waits on Redis."""
        stuck = [(c.shard, why) for c in self.consumers if (why := c.stalled(self.settings.liveness_timeout))]
        if self.owners is not None and (why := self.owners.ownership.stalled(self.settings.liveness_timeout)):
            stuck.append((-1, why))
        detail = "; ".join(why for _, why in stuck) or None
        with self._readiness_lock:
            changed, self._liveness_detail = detail != self._liveness_detail, detail
        if changed and detail is not None:
            # Served: the shard numbers only (the open endpoint shows no error text); logged: why.
            log.warning("not alive: %s", safe_url(detail, passwords_in(self.settings.redis_url)))
        if stuck:
            shards = [str(shard) for shard, _ in stuck if shard >= 0]
            parts = (["shard " + ", ".join(shards)] if shards else []) + [
                "shard ownership" for shard, _ in stuck if shard < 0
            ]
            return False, "stalled: " + "; ".join(parts)
        return True, "ok"

    def close(self) -> None:
        self.client.close()


def _describe(exc: BaseException) -> str:
    """An exception for the log, with any password in a URL masked."""
    return safe_url(f"{type(exc).__name__}: {exc}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
