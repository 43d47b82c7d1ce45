"""The budget refresh job: scheduled in every aggregator process, run by one at a time.

Every process schedules the refresh (APScheduler 3 ``AsyncIOScheduler``, in-memory job store):
at start, then every ``budget_refresh_interval_seconds`` with jitter, coalesced, one instance at
a time. A tick

1. reads the cluster-wide status (``<ns>:{s0}:budget:status``): when another process finished
   a refresh less than half an interval ago, there is nothing to do;
2. takes the refresh lease (:mod:`aggregator.lease`); when another process holds it, stops.
   A Redis error is an error (counted), never "someone else holds it";
3. keeps the lease renewed while it reads the source kind by kind (keys, teams, users, orgs,
   customers, then the user/team counts) and writes each page through the fenced script
   (:mod:`aggregator.budgets.writer`); a lost lease or a refused write stops the run at once;
4. after a kind was read completely, removes the series of entities that are gone (the sweep),
   and records the kind's success time in the status hash, from which every process exports
   ``lsm_budget_last_success_timestamp_seconds`` and ``lsm_budget_staleness_seconds``;
5. releases the lease.

A source failure for one kind is counted and the run goes on with the next kind (the
connection is re-opened once); the gauges keep their last values, and the staleness shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import redis.asyncio as aioredis
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError

from aggregator.budgets.gauges import GaugeBuilder
from aggregator.budgets.model import KINDS, BudgetSource, IncompleteListing, SourceError
from aggregator.budgets.reconcile import (
    SPEND_METRIC,
    SUMMARY_FIELD,
    ReconcileMetrics,
    Reconciler,
    Summary,
    events_spend,
)
from aggregator.budgets.writer import Fenced, FencedWriter, WriteStats
from aggregator.connections import open_async
from aggregator.lease import Lease, LeaseLost
from aggregator.schema import TRUNCATED_STAT, MetricSchema
from aggregator.settings import AggregatorSettings

log = logging.getLogger("litellm_stream_metrics.budgets")

LEASE_NAME = "budget"
JOB_ID = "lsm_budget_refresh"
OUTCOMES = ("success", "partial", "error", "lease_lost", "not_leader", "skipped_fresh")


class BudgetMetrics:
    """Self-metrics of the refresh in this process (``lsm_budget_*``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.lease_acquisitions = Counter(
            "lsm_budget_lease_acquisitions", "Refresh leases this process acquired", registry=r
        )
        self.lease_losses = Counter(
            "lsm_budget_lease_losses", "Refresh leases lost while a refresh ran (expired or taken over)", registry=r
        )
        self.lease_held = Gauge("lsm_budget_lease_held", "1 while this process holds the refresh lease", registry=r)
        self.runs = Counter(
            "lsm_budget_runs",
            "Refresh ticks by outcome: success, partial (some kinds failed or were incomplete), error, "
            "lease_lost, not_leader (another process runs it), skipped_fresh (another process just did)",
            ["outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "lsm_budget_run_duration_seconds",
            "Duration of the refreshes this process ran",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.rows = Counter("lsm_budget_rows_read", "Rows read from the budget source", ["kind"], registry=r)
        self.source_errors = Counter(
            "lsm_budget_source_errors", "Failed reads of the budget source (database or API)", ["kind"], registry=r
        )
        self.redis_errors = Counter("lsm_budget_redis_errors", "Redis errors of the refresh job", registry=r)
        self.fenced = Counter(
            "lsm_budget_fenced_writes_rejected",
            "Writes Redis refused because a newer lease holder exists (fencing epoch)",
            registry=r,
        )
        self.removed = Counter(
            "lsm_budget_series_removed", "Gauge series removed (entity gone or value unknown)", ["kind"], registry=r
        )
        self.last_success = Gauge(
            "lsm_budget_last_success_timestamp_seconds",
            "When the last complete refresh of this kind read the source (any process; from Redis)",
            ["kind"],
            registry=r,
        )
        self.staleness = Gauge(
            "lsm_budget_staleness_seconds",
            "Age of the budget gauges of this kind: now minus the last complete refresh (+Inf: none yet)",
            ["kind"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.runs.labels(outcome)


@dataclass
class RunReport:
    """What one tick did."""

    outcome: str
    epoch: int | None = None
    rows: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    writes: WriteStats = field(default_factory=WriteStats)
    duration: float = 0.0


def create_source(settings: AggregatorSettings, default_customer_budget_id: str | None = None) -> BudgetSource | None:
    """The configured source, or None (``budget_source`` resolves to "none")."""
    source = settings.effective_budget_source
    if source == "database":
        assert settings.database_url is not None
        from aggregator.budgets.source_db import DatabaseSource

        return DatabaseSource(
            settings.database_url.get_secret_value(),
            page_size=settings.budget_page_size,
            statement_timeout=settings.budget_source_timeout,
            connect_timeout=settings.budget_connect_timeout,
            default_customer_budget_id=default_customer_budget_id,
        )
    if source == "api":
        assert settings.litellm_api_base is not None and settings.litellm_master_key is not None
        from aggregator.budgets.source_api import ApiSource

        return ApiSource(
            settings.litellm_api_base,
            settings.litellm_master_key.get_secret_value(),
            page_size=settings.budget_page_size,
            timeout=settings.budget_source_timeout,
        )
    return None


def default_customer_budget_id(settings: AggregatorSettings) -> str | None:
    """``litellm_settings.max_end_user_budget_id`` of the proxy config (LiteLLM's default budget
    for customers without one of their own)."""
    if not settings.litellm_config:
        return None
    from aggregator.litellm_config import load_litellm_settings

    value = load_litellm_settings(settings.litellm_config).get("max_end_user_budget_id")
    return value if isinstance(value, str) and value else None


class BudgetJobs:
    """The refresh job of one aggregator process: ``await start()`` on the running loop,
    ``await stop()`` at shutdown (cancels a refresh in progress and releases the lease)."""

    def __init__(
        self,
        settings: AggregatorSettings,
        schema: MetricSchema,
        registry: CollectorRegistry,
        *,
        source: BudgetSource | None = None,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.keys = settings.keys
        self.owner = f"{settings.consumer_name}:{os.getpid()}"
        self.registry = registry
        self.metrics = BudgetMetrics(registry)
        self.builder = GaugeBuilder(schema)
        self.source = source if source is not None else create_source(settings, default_customer_budget_id(settings))
        self._own_client = client is None
        self.client: aioredis.Redis | None = client
        self.scheduler: AsyncIOScheduler | None = None
        self._running: asyncio.Task[RunReport] | None = None
        self._stopping = False
        self._last_success: dict[str, float] = {}
        #: Whether each refresh reconciles the keys' spend with the events' (needs the spend metric).
        self.reconciling = settings.reconcile_spend and schema.metric_key(SPEND_METRIC) is not None
        # Reconciling reads the keys even when their budget gauges are off (nothing is written then).
        self.kinds = [k for k in KINDS if self.builder.enabled(k) or (k == "keys" and self.reconciling)]
        self.reconcile_metrics = ReconcileMetrics(registry) if self.reconciling else None
        #: The last reconciliation's summary (any process's, read from Redis).
        self.reconciled: Summary | None = None
        self.status_kinds = self.kinds + (["counts"] if self.builder.counts_enabled() else [])
        for kind in self.status_kinds:
            self.metrics.staleness.labels(kind).set_function(lambda k=kind: self._staleness(k))
            self.metrics.last_success.labels(kind).set_function(lambda k=kind: self._last_success.get(k, math.nan))

    @property
    def enabled(self) -> bool:
        return self.source is not None and bool(self.status_kinds)

    @property
    def interval(self) -> float:
        return self.settings.budget_refresh_interval_seconds

    @property
    def jitter(self) -> float:
        j = self.settings.budget_jitter_seconds
        return min(self.interval / 10, 30.0) if j is None else j

    def _staleness(self, kind: str) -> float:
        last = self._last_success.get(kind)
        return math.inf if last is None else max(0.0, time.time() - last)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Schedule the refresh on the running loop (first run now). Does nothing when no source
        is configured (``budget_source`` "none")."""
        if not self.enabled:
            log.info("budget refresh: no source configured (budget_source=%s)", self.settings.budget_source)
            return
        if self.client is None:
            self.client = open_async(self.settings)
        self.scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        self.scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.interval,
            jitter=self.jitter or None,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
            next_run_time=datetime.now(timezone.utc),
            id=JOB_ID,
            replace_existing=True,
        )
        self.scheduler.start()
        assert self.source is not None
        log.info(
            "budget refresh: source %s, every %.1f s (jitter %.1f s), lease %.1f s, owner %s",
            self.source.name,
            self.interval,
            self.jitter,
            self.settings.budget_lease_seconds,
            self.owner,
        )

    async def stop(self) -> None:
        """Stop scheduling, cancel a refresh in progress (its lease is released), close Redis."""
        self._stopping = True
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        task = self._running
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.client is not None and self._own_client:
            await self.client.aclose()
            self.client = None

    # -- one tick ---------------------------------------------------------------------------

    async def tick(self) -> RunReport:
        """One scheduled attempt (also callable directly, e.g. by tests or ``once``)."""
        if self._stopping:
            return RunReport("skipped_fresh")
        self._running = asyncio.create_task(self._tick())
        try:
            return await asyncio.shield(self._running)
        finally:
            self._running = None

    async def _tick(self) -> RunReport:
        assert self.client is not None and self.source is not None
        started = time.monotonic()
        report = RunReport("error")
        try:
            status = await self._read_status()
            finished = status.get("run:finished")
            if finished is not None and time.time() - finished < self.interval / 2:
                report.outcome = "skipped_fresh"
                return report
            lease = Lease(self.client, self.keys.lease(LEASE_NAME), self.settings.budget_lease_seconds, self.owner)
            if not await lease.acquire():
                report.outcome = "not_leader"
                return report
        except RedisError as exc:
            self.metrics.redis_errors.inc()
            report.errors["redis"] = str(exc)
            log.warning("budget refresh: Redis error before the run: %s", exc)
            self._finish(report, started)
            return report
        except asyncio.CancelledError:
            raise
        self.metrics.lease_acquisitions.inc()
        self.metrics.lease_held.set(1)
        report.epoch = lease.epoch
        log.info("budget refresh: lease epoch %s acquired by %s", lease.epoch, self.owner)
        try:
            await self._run(lease, report)
        except (LeaseLost, Fenced) as exc:
            if isinstance(exc, Fenced):
                self.metrics.fenced.inc()
            self.metrics.lease_losses.inc()
            report.outcome = "lease_lost"
            report.errors["lease"] = str(exc)
            log.warning("budget refresh (epoch %s) stopped: %s", report.epoch, exc)
        except RedisError as exc:
            self.metrics.redis_errors.inc()
            report.outcome = "error"
            report.errors["redis"] = str(exc)
            log.warning("budget refresh (epoch %s) stopped by a Redis error: %s", report.epoch, exc)
        finally:
            self.metrics.lease_held.set(0)
            with contextlib.suppress(RedisError, OSError, asyncio.CancelledError):
                await asyncio.shield(lease.release())
            with contextlib.suppress(Exception):
                await self.source.close()
            self._finish(report, started, ran=True)
            with contextlib.suppress(RedisError, OSError):
                await self._read_status()
        return report

    def _finish(self, report: RunReport, started: float, ran: bool = False) -> None:
        report.duration = time.monotonic() - started
        self.metrics.runs.labels(report.outcome).inc()
        if ran:
            self.metrics.duration.observe(report.duration)
            log.info(
                "budget refresh epoch %s: %s in %.2f s, rows %s%s",
                report.epoch,
                report.outcome,
                report.duration,
                report.rows,
                f", errors {report.errors}" if report.errors else "",
            )

    async def _read_status(self) -> dict[str, float]:
        assert self.client is not None
        raw = await self.client.hgetall(self.keys.budget_status())
        status: dict[str, float] = {}
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else k
            if name == SUMMARY_FIELD:
                self._reconciled(Summary.decode(v))
                continue
            with contextlib.suppress(ValueError):
                status[name] = float(v)
        for kind in self.status_kinds:
            t = status.get(f"{kind}:last_success")
            if t is not None:
                self._last_success[kind] = t
        return status

    def _reconciled(self, summary: Summary | None) -> None:
        if summary is not None and self.reconcile_metrics is not None:
            self.reconciled = summary
            self.reconcile_metrics.update(summary)

    async def _reconciler(self) -> Reconciler | None:
        """A reconciliation for this run, the events' spend summed now (None: not reconciling)."""
        if not self.reconciling:
            return None
        events = await events_spend(self._client(), self.keys, self.schema, self.settings.shards)
        if events is None:
            return None
        s = self.settings
        reconciler = Reconciler(
            self._client(),
            self.keys,
            tolerance=s.reconcile_tolerance_usd,
            flush_delay=s.reconcile_flush_delay_seconds,
            max_keys=s.reconcile_max_keys,
        )
        await reconciler.start(events, await self._read_status(), time.time())
        return reconciler

    async def _run(self, lease: Lease, report: RunReport) -> None:
        assert self.source is not None
        source = self.source
        run_started = time.time()
        writer = FencedWriter(self._client(), self.keys, self.owner)
        reconciler = await self._reconciler()
        async with lease.keep_renewed(on_lost=lambda: self.metrics.lease_held.set(0)) as lost:

            def check() -> None:
                if lost.is_set() or not lease.held():
                    raise LeaseLost(f"lease {lease.key} (epoch {report.epoch}) lost or expired")

            try:
                await source.open()
            except SourceError as exc:
                for kind in self.status_kinds:
                    self.metrics.source_errors.labels(kind).inc()
                report.errors["source"] = str(exc)
                report.outcome = "error"
                log.warning("budget refresh: %s", exc)
                return
            failed = 0
            for kind in self.kinds:
                check()
                try:
                    await self._refresh_kind(kind, source, writer, lease, report, check, reconciler)
                except IncompleteListing as exc:
                    failed += 1
                    report.errors[kind] = str(exc)
                    log.info("budget refresh: %s", exc)
                except SourceError as exc:
                    failed += 1
                    self.metrics.source_errors.labels(kind).inc()
                    report.errors[kind] = str(exc)
                    log.warning("budget refresh of %s failed: %s", kind, exc)
            if "counts" in self.status_kinds:
                check()
                try:
                    counts = await source.counts()
                    stats = await writer.write(lease, "counts", counts.read_at, self.builder.count_ops(counts))
                    report.writes.add(stats)
                    await writer.set_status(
                        lease, "counts", counts.read_at, ["counts:last_success", repr(counts.read_at)]
                    )
                except SourceError as exc:
                    failed += 1
                    self.metrics.source_errors.labels("counts").inc()
                    report.errors["counts"] = str(exc)
                    log.warning("budget refresh of the counts failed: %s", exc)
            check()
            report.outcome = "success" if failed == 0 else ("error" if failed == len(self.status_kinds) else "partial")
            status = ["run:started", repr(run_started), "run:epoch", str(report.epoch), "run:owner", self.owner]
            if report.outcome != "error":
                status += ["run:finished", repr(time.time())]
            await writer.set_status(lease, "run", time.time(), status)

    def _client(self) -> aioredis.Redis:
        assert self.client is not None
        return self.client

    async def _count_truncations(self) -> None:
        """Rows with a label value longer than LSM_MAX_LABEL_VALUE_LENGTH, counted where the
        event path counts its own (shard 0's stats: ``lsm_label_values_truncated_total``)."""
        truncated = self.builder.take_truncated()
        if truncated:
            pipe = self._client().pipeline(transaction=False)
            for label, n in truncated.items():
                pipe.hincrby(self.keys.shard_stats(0), TRUNCATED_STAT + label, n)
            await pipe.execute()

    async def _refresh_kind(
        self,
        kind: str,
        source: BudgetSource,
        writer: FencedWriter,
        lease: Lease,
        report: RunReport,
        check: Callable[[], None],
        reconciler: Reconciler | None = None,
    ) -> None:
        """Read one kind page by page, write its gauges, sweep what is gone (for the keys, also
        reconcile their spend when ``reconciler`` is given)."""
        reconciler = reconciler if kind == "keys" else None
        since: float | None = None
        rows = 0
        try:
            async for page in source.pages(kind):
                check()
                since = page.read_at if since is None else since
                stats = await writer.write(lease, kind, page.read_at, self.builder.row_ops(kind, page.rows))
                report.writes.add(stats)
                await self._count_truncations()
                if reconciler is not None:
                    await reconciler.page(page.rows, page.read_at)
                rows += len(page.rows)
                self.metrics.rows.labels(kind).inc(len(page.rows))
                if stats.removed:
                    self.metrics.removed.labels(kind).inc(stats.removed)
        finally:
            report.rows[kind] = rows
        if since is None:  # a source that yields no page at all: nothing proven
            raise IncompleteListing(f"{kind}: the source returned no page")
        check()
        swept = await writer.sweep(
            lease,
            kind,
            self.builder.metric_keys(kind),
            since,
            since - self.settings.budget_tombstone_seconds,
            self.settings.shards,
        )
        report.writes.add(swept)
        if swept.removed:
            self.metrics.removed.labels(kind).inc(swept.removed)
        await writer.set_status(lease, kind, since, [f"{kind}:last_success", repr(since), f"{kind}:rows", str(rows)])
        if reconciler is not None:
            check()
            await writer.set_status(lease, "reconcile", since, await reconciler.finish(time.time()))
            self._reconciled(reconciler.summary)
            summary = reconciler.summary
            log.info(
                "spend reconciliation: %d keys, %d drifted; missing in the database %.4f USD, in events %.4f USD",
                summary.keys,
                summary.drifted,
                summary.missing_in_database_usd,
                summary.missing_in_events_usd,
            )
