"""Command line: ``python -m aggregator run``, ``check-config``, ``dead-letters``, ``status``
and ``spread-shards``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import cast

import redis
from redis.cluster import RedisCluster

from aggregator import dead_letters, status
from aggregator.cluster_slots import ClusterView, Move, migrate_slot, placement, plan, shard_slots
from aggregator.connections import is_cluster, open_sync
from aggregator.daemon import describe, run_aggregator
from aggregator.litellm_config import ConfigError, MetricsConfig
from aggregator.settings import AggregatorConfigError, AggregatorSettings
from producer.urls import passwords_in, safe_url


def main(argv: list[str] | None = None, prog: str = "python -m aggregator") -> int:
    p = argparse.ArgumentParser(prog=prog, description="litellm-stream-metrics aggregator")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="consume the event stream and keep the metrics in Redis")
    run.add_argument("--config", help="the LiteLLM proxy config.yaml (litellm_settings); or LSM_LITELLM_CONFIG")
    check = sub.add_parser("check-config", help="validate a LiteLLM config.yaml and list the resulting metrics")
    check.add_argument("config", help="the LiteLLM proxy config.yaml")
    dead = sub.add_parser("dead-letters", help="list or replay entries that could not be applied (LSM_* settings)")
    actions = dead.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="print the dead letters, oldest first")
    replaying = actions.add_parser(
        "replay", help="write dead letters' original entries back to the stream (once their cause is fixed)"
    )
    replaying.add_argument("--all", action="store_true", help="every dead letter")
    replaying.add_argument("--dry-run", action="store_true", help="only print what would be replayed")
    for action in (listing, replaying):
        action.add_argument("ids", nargs="*", help="only these dead letter ids or original entry ids")
        action.add_argument("--shard", type=int, help="only this shard (default: every shard)")
        action.add_argument("--reason", action="append", default=[], help="only this reason (repeatable)")
    status_parser = sub.add_parser(
        "status", help="the pipeline's health at a glance (exit 1 when something is wrong now; LSM_* settings)"
    )
    status_parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    status_parser.add_argument(
        "--max-age",
        type=float,
        default=120.0,
        help="seconds an entry may wait to be read or stay pending before it is a problem (default 120)",
    )
    spread = sub.add_parser(
        "spread-shards",
        help="on a Redis Cluster, move shards' slots so every master serves about as many shards (LSM_* settings)",
    )
    spread.add_argument("--dry-run", action="store_true", help="only print the moves")
    args = p.parse_args(argv)
    if args.command == "dead-letters" and args.action == "replay" and not (args.all or args.ids or args.reason):
        p.error("dead-letters replay: name dead letters (ids), --reason REASON, or --all")
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
        if args.command == "dead-letters":
            return dead_letters_command(AggregatorSettings.load(), args)
        if args.command == "status":
            return status_command(AggregatorSettings.load(), args)
        if args.command == "spread-shards":
            return spread_shards_command(AggregatorSettings.load(), args)
        env = dict(os.environ)
        if args.config:
            env["LSM_LITELLM_CONFIG"] = args.config
        settings = AggregatorSettings.load(env)
        asyncio.run(run_aggregator(settings))
        return 0
    except (ConfigError, AggregatorConfigError) as exc:
        print(f"configuration error: {safe_url(str(exc))}", file=sys.stderr)
        return 2


def dead_letters_command(settings: AggregatorSettings, args: argparse.Namespace) -> int:
    """``dead-letters list`` / ``dead-letters replay``: one line per dead letter, then a count."""
    keys = settings.keys
    shards = range(settings.shards) if args.shard is None else [args.shard]
    if not all(0 <= s < settings.shards for s in shards):
        print(f"--shard must be between 0 and {settings.shards - 1} (LSM_SHARDS={settings.shards})", file=sys.stderr)
        return 2
    client = open_sync(settings)
    try:
        found = replayed = 0
        for shard in shards:
            letters = list(
                dead_letters.select(dead_letters.iter_dead_letters(client, keys, shard), args.reason, args.ids)
            )
            found += len(letters)
            for letter in letters:
                print(f"shard {shard}  {letter.line()}")
            if args.action != "replay" or args.dry_run or not letters:
                continue

            def progress(done: int, total: int, shard: int = shard) -> None:
                if done % 100 == 0 or done == total:
                    print(f"shard {shard}: replayed {done:,}/{total:,}", file=sys.stderr)

            result = dead_letters.replay(client, keys, shard, letters, progress)
            replayed += sum(1 for new_id in result.values() if new_id is not None)
        if args.action == "list":
            print(f"{found:,} dead letters")
        elif args.dry_run:
            print(f"{found:,} dead letters would be replayed (dry run: nothing written)")
        else:
            skipped = found - replayed
            print(
                f"{replayed:,} dead letters replayed as producer {dead_letters.REPLAY_PRODUCER!r}"
                + (f"; {skipped:,} skipped (replayed meanwhile, or no payload)" if skipped else "")
            )
        return 0
    except redis.RedisError as exc:
        return _failed(settings, f"cannot reach Redis at {settings.redis_url}: {exc}", 1)
    finally:
        client.close()


def _failed(settings: AggregatorSettings, message: str, code: int) -> int:
    """Print ``message`` (the Redis URL's password masked) to stderr; return ``code``."""
    print(safe_url(message, passwords_in(settings.redis_url)), file=sys.stderr)
    return code


def status_command(settings: AggregatorSettings, args: argparse.Namespace) -> int:
    """``status``: the report; exit 1 when it found problems, 2 when Redis cannot be read."""
    client = open_sync(settings)
    try:
        report = status.collect(client, settings, max_age=args.max_age)
    except redis.RedisError as exc:
        return _failed(settings, f"cannot reach Redis at {settings.redis_url}: {exc}", 2)
    finally:
        client.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(status.render(report, settings))
    return 1 if report.problems else 0


def spread_shards_command(settings: AggregatorSettings, args: argparse.Namespace) -> int:
    """``spread-shards``: plan the slot moves, print them, and (unless ``--dry-run``) make them."""
    if not is_cluster(settings):
        print("spread-shards: Redis is not a cluster (LSM_REDIS_CLUSTER / INFO cluster): nothing to spread")
        return 0
    client = cast(RedisCluster, open_sync(settings))
    try:
        view = ClusterView(client)
        where = placement(settings.keys, view.ranges)
        slots = shard_slots(settings.keys)
        moves = plan(slots, {slot: where[shards[0]] for slot, shards in slots.items()}, view.masters)
        for master in view.masters:
            held = [str(s) for s, m in sorted(where.items()) if m == master]
            print(f"{master}: shards {', '.join(held) or 'none'}")
        if not moves:
            print(f"{settings.shards} shard(s) over {len(view.masters)} master(s): already spread evenly")
            return 0
        for move in moves:
            print(("would move " if args.dry_run else "moving ") + move.line())
            if args.dry_run:
                continue

            def progress(moved: int, move: Move = move) -> None:
                if moved % 10_000 < 100:
                    print(f"  slot {move.slot}: {moved:,} keys moved", file=sys.stderr)

            moved = migrate_slot(view.run, move, view.masters, auth=view.auth, progress=progress)
            print(f"  done: {moved:,} keys moved")
        if args.dry_run:
            print(f"{len(moves)} move(s) planned (dry run: nothing moved)")
        else:
            print(f"{len(moves)} shard slot(s) moved; producers and aggregators follow the new slot map by themselves")
        return 0
    except (redis.RedisError, LookupError) as exc:
        return _failed(settings, f"spread-shards failed on {settings.redis_url}: {exc}", 1)
    finally:
        client.close()


def console_main() -> int:
    """The ``lsm-aggregator`` command: the same as ``python -m aggregator``."""
    return main(prog="lsm-aggregator")


if __name__ == "__main__":
    sys.exit(main())
