#!/usr/bin/env python
"""What waiting for replicas (``LSM_WAIT_REPLICAS``) costs the producer's writer.

A private Redis Cluster of one master and one replica (aggregator/local_cluster.py) on this
machine. For each setting (no wait, ``WAIT 1``): a real producer (``Emitter``) is offered
``--events`` small events at ``--rate`` events/s from one thread (what LiteLLM's hooks do), and
then as fast as it takes them. Reported: the writer's round trip per write (mean and max,
``flush_seconds``), events/s it drains when offered everything at once, and the events counted
unreplicated (0 expected while the replica runs). The hook itself (``offer``) does not change
with the setting: the wait happens in the writer thread.

    python bench/replication_bench.py [--events 50000] [--rate 5000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator.local_cluster import LocalCluster
from producer.emitter import Emitter
from producer.settings import ProducerSettings
from producer.wire import encode_event

EVENT = encode_event({"kind": "x", "t": 0.0, "model": "gpt-4o", "key": "0" * 64, "cost": 0.00123, "tokens": 321})


def run(url: str, wait: int, events: int, rate: float | None) -> dict[str, Any]:
    settings = ProducerSettings(
        redis_url=url,
        redis_cluster=True,
        namespace=f"lsmbench-wait-{uuid.uuid4().hex[:6]}",
        wait_replicas=wait,
        wait_timeout=1.0,
        buffer_max_events=events + 1,
    )
    emitter = Emitter(settings)
    started = time.perf_counter()
    for i in range(events):
        emitter.offer(EVENT)
        if rate and i % 100 == 0:
            ahead = i / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
    offered = time.perf_counter() - started
    assert emitter.close(120)
    drained = time.perf_counter() - started
    c = emitter.counters
    return {
        "wait": wait,
        "rate": rate,
        "writes": c.flushes,
        "write_ms_mean": c.flush_seconds_sum / max(1, c.flushes) * 1000,
        "write_ms_max": c.flush_seconds_max * 1000,
        "events_per_s": events / drained if not rate else events / offered,
        "unreplicated": c.unreplicated,
        "sent": c.sent,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--rate", type=float, default=5000.0, help="events/s of the paced run")
    a = p.parse_args()
    rows = []
    with LocalCluster(masters=1, replicas=1) as cluster:
        for rate in (a.rate, None):
            for wait in (0, 1):
                rows.append(run(cluster.url, wait, a.events, rate))
    print("| offered | LSM_WAIT_REPLICAS | writes | write round trip mean / max | events/s | unreplicated |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        offered = f"{r['rate']:,.0f} events/s" if r["rate"] else "all at once"
        print(
            f"| {offered} | {r['wait']} | {r['writes']:,} | {r['write_ms_mean']:.2f} / {r['write_ms_max']:.1f} ms | "
            f"{r['events_per_s']:,.0f} | {r['unreplicated']:,} |"
        )
    print(f"\nMachine: {os.cpu_count()} cores; {a.events:,} events per run; one master, one replica, both local.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
