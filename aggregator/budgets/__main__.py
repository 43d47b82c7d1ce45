"""``python -m aggregator.budgets run`` runs only the budget refresh job until SIGTERM/SIGINT
(tests start several of these, kill and freeze them); ``once`` runs one refresh and prints what
it did (operations, benchmarks).

Settings are the aggregator's (``LSM_*``, ``DATABASE_URL``, ``--config`` for the proxy's
``config.yaml``). ``--metrics-port`` serves this process's ``lsm_budget_*`` metrics on
127.0.0.1 (plain prometheus_client text, no auth: for tests and local debugging).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from prometheus_client import CollectorRegistry, start_http_server

from aggregator.budgets.jobs import BudgetJobs
from aggregator.connections import open_async
from aggregator.litellm_config import ConfigError, MetricsConfig
from aggregator.schema import MetricSchema
from aggregator.settings import AggregatorConfigError, AggregatorSettings
from producer.urls import safe_url


def _jobs(settings: AggregatorSettings, registry: CollectorRegistry) -> BudgetJobs:
    if settings.litellm_config:
        config = MetricsConfig.from_config_file(settings.litellm_config)
    else:
        config = MetricsConfig.from_litellm_settings({})
    return BudgetJobs(settings, MetricSchema(config, settings.max_label_value_length), registry)


async def _run(settings: AggregatorSettings, metrics_port: int | None) -> None:
    registry = CollectorRegistry()
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    jobs = _jobs(settings, registry)
    if not jobs.enabled:
        raise AggregatorConfigError("no budget source configured: set LSM_DATABASE_URL (or DATABASE_URL) or the API")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await jobs.start()
    try:
        await stop.wait()
    finally:
        await jobs.stop()


async def _once(settings: AggregatorSettings) -> int:
    jobs = _jobs(settings, CollectorRegistry())
    if not jobs.enabled:
        raise AggregatorConfigError("no budget source configured: set LSM_DATABASE_URL (or DATABASE_URL) or the API")
    jobs.client = open_async(settings)
    try:
        report = await jobs.tick()
    finally:
        await jobs.client.aclose()
    print(
        json.dumps(
            {
                "outcome": report.outcome,
                "epoch": report.epoch,
                "rows": report.rows,
                "errors": report.errors,
                "written": report.writes.written,
                "removed": report.writes.removed,
                "duration_s": round(report.duration, 3),
            }
        )
    )
    return 0 if report.outcome in ("success", "not_leader", "skipped_fresh") else 1


def main(argv: list[str] | None = None, prog: str = "python -m aggregator.budgets") -> int:
    p = argparse.ArgumentParser(prog=prog, description="budget refresh job")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the scheduled refresh until SIGTERM")
    run.add_argument("--config", help="the LiteLLM proxy config.yaml; or LSM_LITELLM_CONFIG")
    run.add_argument("--metrics-port", type=int, help="serve this process's lsm_budget_* metrics on 127.0.0.1")
    once = sub.add_parser("once", help="run one refresh now (under the lease) and print a JSON summary")
    once.add_argument("--config", help="the LiteLLM proxy config.yaml; or LSM_LITELLM_CONFIG")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LSM_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    env = dict(os.environ)
    if args.config:
        env["LSM_LITELLM_CONFIG"] = args.config
    try:
        settings = AggregatorSettings.load(env)
        if args.command == "once":
            return asyncio.run(_once(settings))
        asyncio.run(_run(settings, args.metrics_port))
        return 0
    except (ConfigError, AggregatorConfigError) as exc:
        print(f"configuration error: {safe_url(str(exc))}", file=sys.stderr)
        return 2


def console_main() -> int:
    """The ``lsm-budgets`` command: the same as ``python -m aggregator.budgets``."""
    return main(prog="lsm-budgets")


if __name__ == "__main__":
    sys.exit(main())
