"""The business series pushed as OTLP metrics (``LSM_OTLP_ENDPOINT``), for fleets that run an
OpenTelemetry Collector or a vendor's OTLP endpoint instead of scraping.

Every ``otlp_interval_seconds`` the process that holds the exporter lease (the one that serves
the business series on ``/metrics``) reads the same state ``/metrics`` reads (every shard,
merged) and sends it with OpenTelemetry's own OTLP/HTTP exporter: the same families, names,
label names and values, counters as monotonic cumulative sums, histograms as cumulative explicit
bucket histograms (the same bounds), gauges as gauges. Nothing is counted twice:

- the values are the durable totals, not deltas of this process: a push after a leader change
  carries on from where the last one stopped;
- every push has the same identity whichever pod sends it: the resource names the namespace
  (``service.instance.id``), never the pod, and every cumulative point starts at the namespace's
  start time (stored once in Redis: a new start time only when Redis lost the state, which is a
  real reset of every total);
- only the leader pushes, and a push read while leadership changed is dropped.

The standby processes push nothing. Per process self-metrics: ``lsm_otlp_pushes_total{outcome}``,
``lsm_otlp_last_success_timestamp_seconds``, ``lsm_otlp_push_duration_seconds``,
``lsm_otlp_points``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge

from aggregator.connections import open_sync
from aggregator.leadership import Leadership
from aggregator.schema import RESET_TIME_GAUGES, MetricSchema
from aggregator.settings import AggregatorConfigError, AggregatorSettings, parse_otlp_headers
from aggregator.snapshot import Family, read_families
from producer.keys import Keys

if TYPE_CHECKING:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import MetricsData

log = logging.getLogger("litellm_stream_metrics.otlp")

SERVICE_NAME = "litellm-stream-metrics"
#: Data points per OTLP request (a large state goes in several requests).
BATCH_POINTS = 10_000


class OtlpUnavailable(AggregatorConfigError):
    """LSM_OTLP_ENDPOINT is set but the OpenTelemetry packages are not installed."""


def start_time_ns(client: redis.Redis, keys: Keys, now_ns: int) -> int:
    """The namespace's start time: when its totals started (set once, kept in Redis)."""
    key = keys.otlp_start()
    client.set(key, str(now_ns), nx=True)
    stored = client.get(key)
    return int(stored) if stored is not None else now_ns


def metrics_data(families: Mapping[str, Family], namespace: str, start_ns: int, now_ns: int) -> MetricsData:
    """The families as one OTLP payload (OpenTelemetry SDK data model), stored series only."""
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Histogram,
        HistogramDataPoint,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    cumulative = AggregationTemporality.CUMULATIVE
    now = now_ns / 1e9
    metrics: list[Metric] = []
    for fam in families.values():
        m, names = fam.metric, fam.label_names
        data: Any
        if m.kind == "counter":
            if not fam.counters:
                continue
            points = [
                NumberDataPoint(dict(zip(names, values, strict=True)), start_ns, now_ns, v)
                for values, v in fam.counters.items()
            ]
            data = Sum(points, cumulative, is_monotonic=True)
        elif m.kind == "gauge":
            if not fam.gauges:
                continue
            hours = m.name in RESET_TIME_GAUGES  # stored as the reset time, exported in hours from now
            points = [
                NumberDataPoint(dict(zip(names, values, strict=True)), 0, now_ns, (v - now) / 3600 if hours else v)
                for values, (v, _t) in fam.gauges.items()
            ]
            data = Gauge(points)
        else:
            if not fam.histograms:
                continue
            bounds = list(fam.upper_bounds)
            hpoints = [
                HistogramDataPoint(
                    dict(zip(names, values, strict=True)),
                    start_ns,
                    now_ns,
                    count=int(count),
                    sum=total,
                    bucket_counts=[int(b) for b in buckets],
                    explicit_bounds=bounds,
                    # Not known (Prometheus histograms have none): left unset in the message.
                    min=None,  # type: ignore[arg-type]
                    max=None,  # type: ignore[arg-type]
                )
                for values, (buckets, total, count) in fam.histograms.items()
            ]
            data = Histogram(hpoints, cumulative)
        metrics.append(Metric(m.family, m.documentation, "", data))
    resource = Resource.create(
        {"service.name": SERVICE_NAME, "service.instance.id": f"{SERVICE_NAME}:{namespace}", "lsm.namespace": namespace}
    )
    scope = InstrumentationScope(SERVICE_NAME, _version())
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, metrics, "")], "")])


def _version() -> str:
    try:
        return metadata.version("litellm-stream-metrics")
    except metadata.PackageNotFoundError:
        return "unknown"


def points_of(data: MetricsData) -> int:
    return sum(len(m.data.data_points) for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)


def create_exporter(settings: AggregatorSettings) -> OTLPMetricExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    except ImportError as exc:
        raise OtlpUnavailable(
            "LSM_OTLP_ENDPOINT needs the OpenTelemetry packages: pip install 'litellm-stream-metrics[otlp]'"
        ) from exc
    headers = parse_otlp_headers(settings.otlp_headers.get_secret_value() if settings.otlp_headers else None)
    return OTLPMetricExporter(
        endpoint=settings.otlp_endpoint,
        headers=headers or None,
        timeout=settings.otlp_timeout_seconds,
        max_export_batch_size=BATCH_POINTS,
    )


class OtlpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pushes = Counter(
            "lsm_otlp_pushes",
            "OTLP pushes of the business series by this process: success, failure (the endpoint refused "
            "or was unreachable), error (reading the state failed)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("success", "failure", "error"):
            self.pushes.labels(outcome)
        self.last_success = Gauge(
            "lsm_otlp_last_success_timestamp_seconds", "When this process last pushed successfully", registry=registry
        )
        self.duration = Gauge(
            "lsm_otlp_push_duration_seconds", "Duration of this process's last push (read + send)", registry=registry
        )
        self.points = Gauge("lsm_otlp_points", "Data points in this process's last push", registry=registry)


class OtlpPusher:
    """Pushes while this process leads; ``await run(stop)`` on the aggregator's loop."""

    def __init__(
        self,
        settings: AggregatorSettings,
        schema: MetricSchema,
        leadership: Leadership,
        registry: CollectorRegistry,
        exporter: OTLPMetricExporter | None = None,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.keys = settings.keys
        self.leadership = leadership
        self.exporter = exporter if exporter is not None else create_exporter(settings)
        self.metrics = OtlpMetrics(registry)
        self.client = open_sync(settings)
        self._failing = False

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.otlp_interval_seconds
        log.info("OTLP: pushing the business series to %s every %.1f s while leading", self.endpoint, interval)
        try:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
                if stop.is_set():
                    break
                if self.leadership.is_leader():
                    await asyncio.to_thread(self.push_once)
        finally:
            await asyncio.to_thread(self.close)

    @property
    def endpoint(self) -> str:
        return str(self.settings.otlp_endpoint)

    def push_once(self) -> str:
        """One push (only while leading); returns the outcome counted."""
        from opentelemetry.sdk.metrics.export import MetricExportResult

        epoch = self.leadership.epoch if self.leadership.is_leader() else None
        if epoch is None:
            return "not_leader"
        started = time.perf_counter()
        try:
            now_ns = time.time_ns()
            start_ns = start_time_ns(self.client, self.keys, now_ns)
            families = read_families(self.client, self.keys, self.schema)
            data = metrics_data(families, self.settings.namespace, start_ns, now_ns)
        except (redis.RedisError, OSError) as exc:
            self.metrics.pushes.labels("error").inc()
            log.warning("OTLP: reading the state failed: %s: %s", type(exc).__name__, exc)
            return "error"
        if not (self.leadership.is_leader() and self.leadership.epoch == epoch):
            return "not_leader"  # another process may export them now
        points = points_of(data)
        result = self.exporter.export(data, timeout_millis=self.settings.otlp_timeout_seconds * 1000)
        duration = time.perf_counter() - started
        self.metrics.duration.set(duration)
        self.metrics.points.set(points)
        if result is MetricExportResult.SUCCESS:
            self.metrics.pushes.labels("success").inc()
            self.metrics.last_success.set(time.time())
            if self._failing:
                log.info("OTLP: pushing to %s again", self.endpoint)
            self._failing = False
            return "success"
        self.metrics.pushes.labels("failure").inc()
        if not self._failing:
            log.warning("OTLP: the push of %d points to %s failed (the exporter logged why)", points, self.endpoint)
        self._failing = True
        return "failure"

    def close(self) -> None:
        self.exporter.shutdown()
        self.client.close()
