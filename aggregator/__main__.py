"""Command line: ``python -m aggregator run`` and ``python -m aggregator check-config``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from aggregator.daemon import describe, run_aggregator
from aggregator.litellm_config import ConfigError, MetricsConfig
from aggregator.settings import AggregatorConfigError, AggregatorSettings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aggregator", description="litellm-stream-metrics aggregator")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="consume the event stream and keep the metrics in Redis")
    run.add_argument("--config", help="the LiteLLM proxy config.yaml (litellm_settings); or LSM_LITELLM_CONFIG")
    check = sub.add_parser("check-config", help="validate a LiteLLM config.yaml and list the resulting metrics")
    check.add_argument("config", help="the LiteLLM proxy config.yaml")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LSM_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "check-config":
            config = MetricsConfig.from_config_file(args.config)
            for line in describe(config):
                print(line)
            for warning in config.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            return 0
        env = dict(os.environ)
        if args.config:
            env["LSM_LITELLM_CONFIG"] = args.config
        settings = AggregatorSettings.load(env)
        asyncio.run(run_aggregator(settings))
        return 0
    except (ConfigError, AggregatorConfigError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
