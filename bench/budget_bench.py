#!/usr/bin/env python
"""Budget refresh benchmark: time and peak memory of one refresh from PostgreSQL.

Builds a database with LiteLLM's schema (the migrations of ``litellm-proxy-extras``) on the
given server, fills it server-side (``generate_series``: the rows never pass through this
process) with ``--keys`` keys (every key with a budget and a reset time: three gauges each)
and ``--teams`` teams, then runs refreshes in this process (``BudgetJobs.tick``: lease, keyset
pages, fenced writes, sweep) against a private Redis server:

1. ``first``: empty Redis, every series is new;
2. ``steady``: the same rows again (every value rewritten, nothing removed);
3. ``deleted``: after deleting 10% of the keys (the sweep removes their series).

Peak memory: this process's peak RSS (``ru_maxrss``) over the refresh, minus the RSS before.

Each run is made twice, side by side in two namespaces of the same Redis: without and with the
spend reconciliation (``LSM_RECONCILE_SPEND``; aggregator/budgets/reconcile.py). For it, the spend
counter holds what events of every key would have written: ``--series-per-key`` series per key
(one per model), written into shard 0's counter hash as the apply path writes them.

    python bench/budget_bench.py --keys 10000 --teams 10000
    python bench/budget_bench.py --keys 1000000 --teams 10000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from aggregator.budgets.jobs import BudgetJobs
from aggregator.budgets.reconcile import SPEND_METRIC
from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.local_server import LocalServer
from aggregator.settings import AggregatorSettings


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def migrations() -> list[Path]:
    from importlib import resources

    root = Path(str(resources.files("litellm_proxy_extras") / "migrations"))
    return [
        d / "migration.sql" for d in sorted(root.iterdir(), key=lambda p: p.name) if (d / "migration.sql").is_file()
    ]


def create_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, query = admin_url.partition("?")
    url = base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
    with psycopg.connect(url, autocommit=True) as conn:
        for f in migrations():
            conn.execute(f.read_bytes())
    return url


def fill(url: str, keys: int, teams: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO "LiteLLM_TeamTable" (team_id, team_alias, spend, max_budget, budget_reset_at)
               SELECT 'team-' || i, 'Team ' || i, i %% 100, 1000, now() + interval '7 days'
               FROM generate_series(1, %s) i""",
            (teams,),
        )
        conn.execute(
            """INSERT INTO "LiteLLM_VerificationToken" (token, key_alias, team_id, spend, max_budget, budget_reset_at)
               SELECT encode(sha256(('sk-' || i)::bytea), 'hex'), 'key-' || i,
                      CASE WHEN i %% 4 = 0 THEN NULL ELSE 'team-' || (i %% %s + 1) END,
                      (i %% 1000) / 10.0, 100, now() + interval '30 days'
               FROM generate_series(1, %s) i""",
            (teams, keys),
        )
        conn.execute('ANALYZE "LiteLLM_VerificationToken"')


def fill_events(url: str, namespace: str, schema: Any, keys: int, series_per_key: int) -> None:
    """Spend counter series for every key, as the apply path stores them (shard 0)."""
    import hashlib

    from producer.keys import Keys

    client = redis.Redis.from_url(url)
    target = Keys(namespace).metric(0, "c", schema.metric_key(SPEND_METRIC))
    batch: dict[str, float] = {}
    for i in range(1, keys + 1):
        token = hashlib.sha256(f"sk-{i}".encode()).hexdigest()
        for m in range(series_per_key):
            labels = {"hashed_api_key": token, "api_key_alias": f"key-{i}", "model": f"model-{m}"}
            batch[schema.series(SPEND_METRIC, labels)] = (i % 1000) / 10.0 / series_per_key
        if len(batch) >= 10_000:
            client.hset(target, mapping=batch)  # type: ignore[arg-type]
            batch = {}
    if batch:
        client.hset(target, mapping=batch)  # type: ignore[arg-type]
    client.close()


async def refresh(jobs: BudgetJobs) -> tuple[Any, float, float]:
    gc.collect()
    before = rss_mib()
    report = await jobs.tick()
    return report, before, peak_rss_mib()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--teams", type=int, default=10_000)
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument("--series-per-key", type=int, default=3, help="spend counter series per key (default 3)")
    p.add_argument(
        "--admin-url", default=os.environ.get("LSM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    args = p.parse_args()

    name = f"lsm_bench_{uuid.uuid4().hex[:8]}"
    server = LocalServer().start()
    client = aioredis.Redis.from_url(server.url, socket_timeout=60)
    try:
        t = time.perf_counter()
        url = create_database(args.admin_url, name)
        fill(url, args.keys, args.teams)
        print(f"database: {args.keys:,} keys, {args.teams:,} teams in {time.perf_counter() - t:.1f} s", flush=True)
        schema = Engine(MetricsConfig.from_litellm_settings({})).schema
        runs: dict[str, BudgetJobs] = {}
        for reconcile in (False, True):
            namespace = f"bench-{'reconcile' if reconcile else 'plain'}"
            settings = AggregatorSettings(
                redis_url=server.url,
                namespace=namespace,
                consumer_name="bench",
                database_url=url,  # type: ignore[arg-type]
                budget_page_size=args.page_size,
                budget_refresh_interval_seconds=0.1,
                budget_lease_seconds=60,
                budget_source_timeout=300,
                reconcile_spend=reconcile,
            )
            fill_events(server.url, namespace, schema, args.keys, args.series_per_key)
            runs["on" if reconcile else "off"] = BudgetJobs(settings, schema, CollectorRegistry(), client=client)
        print(
            f"spend counter: {args.keys * args.series_per_key:,} series "
            f"({args.series_per_key} per key) in each namespace"
        )
        print("| run | reconciliation | rows read | gauge writes | series removed | refresh s | rows/s ", end="")
        print("| RSS before MiB | peak RSS MiB | Redis used MiB |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label in ("first", "steady", "deleted"):
            if label == "deleted":
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute('DELETE FROM "LiteLLM_VerificationToken" WHERE random() < 0.1')
            for mode, jobs in runs.items():
                await asyncio.sleep(0.06)
                report, before, peak = await refresh(jobs)
                assert report.outcome == "success", report
                rows = sum(report.rows.values())
                used = redis.Redis.from_url(server.url).info("memory")["used_memory"] / 2**20
                print(
                    f"| {label} | {mode} | {rows:,} | {report.writes.written:,} | {report.writes.removed:,} "
                    f"| {report.duration:.1f} | {rows / report.duration:,.0f} | {before:.0f} | {peak:.0f} "
                    f"| {used:.0f} |",
                    flush=True,
                )
        sync = redis.Redis.from_url(server.url)
        records = runs["on"].keys.budget_reconcile()
        usage = sync.memory_usage(records, samples=0) or 0
        print(f"reconciliation records: {sync.hlen(records):,} keys, {usage / 2**20:.1f} MiB in Redis")
        sync.close()
    finally:
        await client.aclose()
        server.close()
        with psycopg.connect(args.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(
        f"Machine: {os.cpu_count()} cores; load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}."
    )


if __name__ == "__main__":
    asyncio.run(main())
