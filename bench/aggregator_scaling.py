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

``--cluster``: shards over the masters of a private Redis Cluster (aggregator/local_cluster.py,
no replicas, so the machine's cores go to the masters and the aggregators) instead. For each
number of masters in ``--masters`` and of shards in ``--shards``: the shards spread evenly over
the masters (``spread-shards``'s plan), the same backlog of ``--events`` calls written into
every shard's stream, one aggregator process per shard (``--ingest group`` or ``owner``), and
measured as above over all shards: events/s, aggregators' CPU per event, Redis CPU per event
summed over the masters, and the busiest master's share of one core.

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/aggregator_scaling.py --cluster --masters 1,2,3 --shards 3,6
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class Measured:
    """From the first applied event to the last: events, seconds, the aggregators' CPU seconds
    and each Redis server's CPU seconds."""

    events: int
    wall: float
    aggregator_cpu: float
    redis_cpu: list[float]


def measure(
    procs: list[subprocess.Popen[bytes]],
    applied: Callable[[], int],
    total: int,
    redis_cpu: Callable[[], list[float]],
) -> Measured:
    """Poll until ``total`` events are applied; the window starts at the first applied event,
    so the processes' start-up is left out."""
    first: tuple[float, int, float, list[float]] | None = None
    deadline = time.monotonic() + 1800
    while True:
        done = applied()
        now = time.perf_counter()
        if first is None and done > 0:
            first = (now, done, sum(_cpu_seconds(p.pid) for p in procs), redis_cpu())
        if done >= total:
            break
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"an aggregator exited with {[p.returncode for p in procs]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"not applied after 30 minutes: {done:,}/{total:,}")
        time.sleep(0.02)
    assert first is not None
    if done == first[1]:
        raise SystemExit(f"all {done:,} events were applied in one step: too few to measure (raise --events)")
    cpu = sum(_cpu_seconds(p.pid) for p in procs)
    per_server = [b - a for a, b in zip(first[3], redis_cpu(), strict=True)]
    return Measured(done - first[1], time.perf_counter() - first[0], cpu - first[2], per_server)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


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
        m = measure(procs, lambda: int(sync.hget(stats_key, "events_applied") or 0), sent, lambda: [_redis_cpu(sync)])
        return {
            "processes": n,
            "events": m.events,
            "events_per_s": m.events / m.wall,
            "aggregator_cpu_us": m.aggregator_cpu * 1e6 / m.events,
            "redis_cpu_us": sum(m.redis_cpu) * 1e6 / m.events,
            "redis_core_share": sum(m.redis_cpu) / m.wall,
        }
    finally:
        stop_all(procs)
        _delete(sync, namespace)
        sync.close()


def write_backlog(url: str, calls: list[pb.Call], namespace: str, shards: int, cluster: bool) -> int:
    """The calls through the real producer into shard 0's stream, then the same entries copied
    into every other shard's stream (deduplication is per shard); returns events per shard."""
    from redis.cluster import RedisCluster

    staging = f"{namespace}-staging"
    sent = produce(calls, url, staging, end_users=False)
    client: Any = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    keys = Keys(namespace, shards)
    try:
        entries = client.xrange(Keys(staging, 1).stream(0))
        for shard in range(shards):
            client.xgroup_create(keys.stream(shard), "aggregators", id="0", mkstream=True)
            pipe = client.pipeline(transaction=False)
            for _id, fields in entries:
                pipe.xadd(keys.stream(shard), fields)
            pipe.execute()
        _delete_everywhere(client, staging)
    finally:
        client.close()
    return sent


def _delete_everywhere(client: Any, namespace: str) -> None:
    pipe = client.pipeline(transaction=False)
    for k in client.scan_iter(match=f"{namespace}:*", count=1000):
        pipe.unlink(k)
    pipe.execute()


def _masters_cpu(cluster: Any) -> list[float]:
    cpu = []
    for m in cluster.masters:
        info: Any = cluster.command(m, "INFO", "cpu")
        cpu.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return cpu


def run_cluster(masters: int, shards: int, calls: list[pb.Call], ingest: str) -> dict[str, float]:
    """One row of ``--cluster``: ``shards`` shards over ``masters`` masters, a process per shard."""
    from redis.cluster import RedisCluster

    from aggregator.cluster_slots import placement, plan, shard_slots, slot_owners
    from aggregator.local_cluster import LocalCluster

    namespace = f"lsmbench-cluster-{masters}m{shards}s"
    keys = Keys(namespace, shards)
    with LocalCluster(masters=masters, replicas=0) as cluster:
        names = [f"127.0.0.1:{m.port}" for m in cluster.masters]
        ranges = slot_owners(cluster.command(cluster.masters[0], "CLUSTER", "SLOTS"))
        where = placement(keys, ranges)
        slots = shard_slots(keys)
        for move in plan(slots, {slot: where[s[0]] for slot, s in slots.items()}, names):
            cluster.move_slot(move.slot, cluster.masters[names.index(move.target)])
        per_shard = write_backlog(cluster.url, calls, namespace, shards, cluster=True)
        total = per_shard * shards
        print(
            f"[{masters} master(s), {shards} shards] {total:,} events in the streams; starting {shards} "
            f"aggregator(s) ...",
            file=sys.stderr,
        )
        client: Any = RedisCluster.from_url(cluster.url)
        env = dict(os.environ)
        env.update(
            LSM_REDIS_URL=cluster.url,
            LSM_NAMESPACE=namespace,
            LSM_SHARDS=str(shards),
            LSM_INGEST=ingest,
            LSM_HTTP_PORT="0",
            LSM_METRICS_ALLOW_UNAUTHENTICATED="true",
            LSM_BUDGET_SOURCE="none",
            LSM_LOG_LEVEL="WARNING",
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "aggregator", "run"],
                cwd=ROOT,
                env={**env, "LSM_CONSUMER_NAME": f"scale-{i}"},
                stdout=subprocess.DEVNULL,
            )
            for i in range(shards)
        ]

        def applied() -> int:
            return sum(int(client.hget(keys.shard_stats(s), "events_applied") or 0) for s in range(shards))

        try:
            m = measure(procs, applied, total, lambda: _masters_cpu(cluster))
            return {
                "masters": masters,
                "shards": shards,
                "events": m.events,
                "events_per_s": m.events / m.wall,
                "aggregator_cpu_us": m.aggregator_cpu * 1e6 / m.events,
                "redis_cpu_us": sum(m.redis_cpu) * 1e6 / m.events,
                "busiest_master_share": max(m.redis_cpu) / m.wall,
            }
        finally:
            stop_all(procs)
            client.close()


def main_cluster(a: argparse.Namespace, calls: list[pb.Call]) -> int:
    rows = [
        run_cluster(m, s, calls, a.ingest)
        for m in [int(x) for x in a.masters.split(",")]
        for s in [int(x) for x in a.shards.split(",")]
    ]
    print(
        f"| masters | shards (= {a.ingest} aggregator processes) | events/s | aggregators' CPU µs/event | "
        "Redis CPU µs/event (all masters) | busiest master (share of one core) | events per CPU-second |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        per_cpu_second = 1e6 / (r["aggregator_cpu_us"] + r["redis_cpu_us"])
        print(
            f"| {r['masters']} | {r['shards']} | {r['events_per_s']:,.0f} | {r['aggregator_cpu_us']:.1f} | "
            f"{r['redis_cpu_us']:.1f} | {r['busiest_master_share']:.0%} | {per_cpu_second:,.0f} |"
        )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nMachine: {os.cpu_count()} cores; load average at the end: {load}.")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=60_000, help="calls in the backlog (default 60000)")
    p.add_argument("--processes", default="1,2,3", help="comma-separated process counts (default 1,2,3)")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--cluster", action="store_true", help="shards over a private Redis Cluster's masters")
    p.add_argument("--masters", default="1,2,3", help="with --cluster: comma-separated master counts")
    p.add_argument("--shards", default="3,6", help="with --cluster: comma-separated shard counts")
    p.add_argument("--ingest", choices=["group", "owner"], default="group", help="with --cluster: LSM_INGEST")
    a = p.parse_args()
    counts = [int(x) for x in a.processes.split(",")]
    if a.events < 1 or not counts or min(counts) < 1:
        p.error("--events and every process count must be >= 1")
    n_fail = a.events // 11
    print(f"generating {a.events:,} calls ...", file=sys.stderr)
    calls = pb.build_calls(a.events - n_fail, n_fail)
    if a.cluster:
        return main_cluster(a, calls)
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
