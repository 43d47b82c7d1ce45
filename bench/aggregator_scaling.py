#!/usr/bin/env python
"""Scaling out one shard: events/s of N aggregator processes sharing the consumer group.

For each N in ``--processes``: a fresh namespace, the consumer group created, a backlog of
``--events`` generated calls (``producer_bench.py``'s realistic mix) written through the real
producer while no aggregator runs; then N ``python -m aggregator run`` processes start at once
and apply the backlog. Measured from the first applied event to the last (so the processes'
start-up is left out): events/s, the aggregators' CPU (all N, from ``/proc``) and Redis's CPU
(server-wide) per event, and Redis's share of one core over that window, which is where one
shard stops scaling.

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/aggregator_scaling.py [--events 60000] [--processes 1,2,3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import producer_bench as pb  # noqa: E402
import redis  # noqa: E402
from aggregator_bench import _delete, _redis_cpu, produce  # noqa: E402

from producer.keys import Keys  # noqa: E402

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def run_one(url: str, calls: list[pb.Call], n: int, tag: str) -> dict[str, float]:
    namespace = f"lsmbench-scale-{tag}-{n}"
    keys = Keys(namespace)
    sync = redis.Redis.from_url(url)
    stats_key = keys.shard_stats(0)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sync.xgroup_create(keys.stream(0), "aggregators", id="0", mkstream=True)
        sent = produce(calls, url, namespace, end_users=False)
        env = dict(os.environ)
        env.update(
            LSM_REDIS_URL=url,
            LSM_NAMESPACE=namespace,
            LSM_HTTP_PORT="0",
            LSM_METRICS_ALLOW_UNAUTHENTICATED="true",
            LSM_BUDGET_SOURCE="none",
            LSM_LOG_LEVEL="WARNING",
        )
        print(f"[{n} process(es)] {sent:,} events in the stream; starting the aggregators ...", file=sys.stderr)
        for i in range(n):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "aggregator", "run"],
                    cwd=ROOT,
                    env={**env, "LSM_CONSUMER_NAME": f"scale-{i}"},
                    stdout=subprocess.DEVNULL,
                )
            )
        first: tuple[float, int, float, float] | None = None  # time, applied, aggregator CPU, Redis CPU
        deadline = time.monotonic() + 1800
        while True:
            applied = int(sync.hget(stats_key, "events_applied") or 0)
            now = time.perf_counter()
            if first is None and applied > 0:
                first = (now, applied, sum(_cpu_seconds(p.pid) for p in procs), _redis_cpu(sync))
            if applied >= sent:
                break
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"an aggregator exited with {[p.returncode for p in procs]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"not applied after 30 minutes: {applied:,}/{sent:,}")
            time.sleep(0.02)
        end = (time.perf_counter(), applied, sum(_cpu_seconds(p.pid) for p in procs), _redis_cpu(sync))
        assert first is not None
        events = end[1] - first[1]
        wall = end[0] - first[0]
        return {
            "processes": n,
            "events": events,
            "events_per_s": events / wall,
            "aggregator_cpu_us": (end[2] - first[2]) * 1e6 / events,
            "redis_cpu_us": (end[3] - first[3]) * 1e6 / events,
            "redis_core_share": (end[3] - first[3]) / wall,
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        _delete(sync, namespace)
        sync.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=60_000, help="calls in the backlog (default 60000)")
    p.add_argument("--processes", default="1,2,3", help="comma-separated process counts (default 1,2,3)")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    a = p.parse_args()
    counts = [int(x) for x in a.processes.split(",")]
    if a.events < 1 or not counts or min(counts) < 1:
        p.error("--events and every process count must be >= 1")
    n_fail = a.events // 11
    print(f"generating {a.events:,} calls ...", file=sys.stderr)
    calls = pb.build_calls(a.events - n_fail, n_fail)
    tag = uuid.uuid4().hex[:8]
    rows: list[dict[str, Any]] = [run_one(a.redis_url, calls, n, tag) for n in counts]
    base = rows[0]["events_per_s"]
    print(
        "| aggregator processes | events/s (one shard) | vs first row | aggregators' CPU µs/event | "
        "Redis CPU µs/event | Redis busy (share of one core) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['processes']} | {r['events_per_s']:,.0f} | {r['events_per_s'] / base:.2f}x | "
            f"{r['aggregator_cpu_us']:.1f} | {r['redis_cpu_us']:.1f} | {r['redis_core_share']:.0%} |"
        )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nMachine: {os.cpu_count()} cores; load average at the end: {load}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
