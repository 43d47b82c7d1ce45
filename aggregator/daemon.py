"""The aggregator process: one consumer per stream shard, stopped cleanly by SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Sequence

from aggregator.budgets import BudgetJobs
from aggregator.connections import open_async
from aggregator.consumer import ShardConsumer
from aggregator.engine import Engine
from aggregator.exporter import Exporter
from aggregator.http_server import MetricsServer
from aggregator.leadership import Leadership
from aggregator.litellm_config import MetricsConfig
from aggregator.otlp_push import OtlpPusher
from aggregator.owner import Owners, state_keys
from aggregator.series_limits import build_limits
from aggregator.settings import AggregatorSettings
from producer.urls import passwords_in, safe_url

log = logging.getLogger("litellm_stream_metrics.aggregator")

# Cyclic GC thresholds while the aggregator runs (Python's defaults: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 100)


def load_metrics_config(settings: AggregatorSettings) -> MetricsConfig:
    if settings.litellm_config:
        return MetricsConfig.from_config_file(settings.litellm_config)
    return MetricsConfig.from_litellm_settings({})


class Aggregator:
    """Runs the shard consumers, the exporter lease and (with ``serve_http``) the HTTP endpoints
    until ``stop`` is set."""

    def __init__(
        self, settings: AggregatorSettings, config: MetricsConfig | None = None, serve_http: bool = False
    ) -> None:
        self.settings = settings
        self.config = config or load_metrics_config(settings)
        self.engine = Engine(self.config, settings.max_label_value_length)
        #: What every reader of the state shares with the engine (no reader needs the engine).
        self.schema = schema = self.engine.schema
        self.client = open_async(settings, idempotent=True)
        schemas = {mkey: schema.labels[name] for name, mkey in schema.keys.items()}
        limits = build_limits(schema, settings.max_series_per_metric)
        gauge_keys = [k for m in self.config.metrics() if m.kind == "gauge" and (k := schema.metric_key(m.name))]
        #: The "group" ingest: a consumer per shard. The "owner" ingest: the shards this process owns.
        self.consumers: list[ShardConsumer] = []
        self.owners: Owners | None = None
        if settings.ingest == "owner":
            self.owners = Owners(
                self.client,
                settings,
                self.engine.build_delta,
                lambda shard: state_keys(schema, settings.keys, shard, limits),
                limits,
                settings.owner_lease_seconds,
                settings.checkpoint_interval,
                gauge_mkeys=gauge_keys,
                schemas=schemas,
            )
        else:
            self.consumers = [
                ShardConsumer(
                    self.client, settings, shard, self.engine.build_delta, schemas, limits=limits, gauge_keys=gauge_keys
                )
                for shard in range(settings.shards)
            ]
        self.stop = asyncio.Event()
        self.leadership = Leadership(self.client, settings.keys, settings.consumer_name, settings.leader_lease_seconds)
        self.exporter = Exporter(settings, schema, self.consumers, self.leadership, self.owners)
        self.budgets = BudgetJobs(settings, schema, self.exporter.registry)
        self.otlp: OtlpPusher | None = None
        if settings.otlp_endpoint:
            self.otlp = OtlpPusher(settings, schema, self.leadership, self.exporter.registry)
        # Bound now, so a taken port or missing credentials fail at start, not later.
        self.server = MetricsServer(settings, self.exporter) if serve_http else None

    async def run(self) -> None:
        log.info(
            "aggregator %s: namespace %s, %d shard(s), %s, redis %s",
            self.settings.consumer_name,
            self.settings.namespace,
            self.settings.shards,
            "one owner per shard (experimental)" if self.owners is not None else f"group {self.settings.group}",
            safe_url(self.settings.redis_url, passwords_in(self.settings.redis_url)),
        )
        if self.server is not None:
            self.server.start()  # logs where it listens
        leadership = asyncio.create_task(self.leadership.run(self.stop))
        otlp = asyncio.create_task(self.otlp.run(self.stop)) if self.otlp is not None else None
        try:
            await self.budgets.start()
            if self.owners is not None:
                await self.owners.run(self.stop)
            else:
                await asyncio.gather(*(c.run(self.stop) for c in self.consumers))
        finally:
            self.stop.set()
            await self.budgets.stop()
            if otlp is not None:
                await otlp
            await leadership
            if self.server is not None:
                self.server.close()
            self.exporter.close()
            await self.client.aclose()
        log.info("aggregator %s stopped", self.settings.consumer_name)

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s: finishing the batch in hand, then stopping", sig.name)
        self.stop.set()


def tune_gc() -> None:
    """For a process that runs the aggregator: what exists at start lives as long as the process,
    so keep the cyclic collector from walking it again and again, and let it run less often (the
    hot path makes little cyclic garbage; the defaults cost ~13 us per event)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run_aggregator(settings: AggregatorSettings, config: MetricsConfig | None = None) -> None:
    agg = Aggregator(settings, config, serve_http=True)
    tune_gc()
    agg.install_signal_handlers(asyncio.get_running_loop())
    await agg.run()


def describe(config: MetricsConfig) -> Sequence[str]:
    """One line per enabled metric: what ``check-config`` prints."""
    return [f"{m.kind:9} {m.name} [{', '.join(m.labels)}]" for m in config.metrics()]
