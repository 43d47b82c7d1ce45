#!/usr/bin/env python
"""Taking a shard over after a crash: from the SIGKILL of its owner to the first checkpoint of
the spare that takes it over, with 10k, 100k and 1M series in the shard's state.

For each size: one private Redis server; the shard's state written into LiteLLM's metric hashes
(bench/exposition_bench.py's series: caller identities with counters, histograms and gauges);
two real ``python -m aggregator run`` processes with ``LSM_INGEST=owner`` (the first owns the
one shard, the second is a spare), a lease of ``--lease`` seconds. The owner is SIGKILLed while
a producer keeps writing; measured: the time until the checkpoint record shows a commit by the
spare (a new fencing epoch), and what the spare's log says its state load took.

The time is about the lease (the spare may take the shard only once the lease has expired) plus
the load, plus up to one ownership round.

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/owner_takeover_bench.py [--series 10000,100000,1000000] [--lease 5]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import redis  # noqa: E402
from exposition_bench import identities_for, write  # noqa: E402

from aggregator.engine import Engine  # noqa: E402
from aggregator.litellm_config import MetricsConfig  # noqa: E402
from aggregator.local_server import LocalServer, free_port  # noqa: E402
from producer.keys import Keys  # noqa: E402
from producer.wire import encode_entry, encode_event  # noqa: E402

NAMESPACE = "lsmbench-takeover"


def start(url: str, name: str, lease: float, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        LSM_REDIS_URL=url,
        LSM_NAMESPACE=NAMESPACE,
        LSM_INGEST="owner",
        LSM_OWNER_LEASE_SECONDS=str(lease),
        LSM_CONSUMER_NAME=name,
        LSM_HTTP_HOST="127.0.0.1",
        LSM_HTTP_PORT=str(free_port()),
        LSM_METRICS_ALLOW_UNAUTHENTICATED="true",
        LSM_BUDGET_SOURCE="none",
        LSM_LOG_LEVEL="INFO",
    )
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout} s")
        time.sleep(0.01)


def one(series: int, lease: float, logdir: Path) -> dict[str, Any]:
    server = LocalServer().start()
    client = redis.Redis.from_url(server.url)
    keys = Keys(NAMESPACE)
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    seq = 0

    def write_entry() -> None:
        nonlocal seq
        seq += 1
        fields = encode_entry("bench-producer", seq, [encode_event({"kind": "x", "t": time.time()})], time.time())
        client.xadd(keys.stream(0), dict(fields))  # type: ignore[arg-type]

    procs: list[subprocess.Popen[bytes]] = []
    try:
        fields = write(client, keys, engine, identities_for(series), time.time())
        print(f"[{series:,} series] {fields:,} fields written; starting the owner ...", file=sys.stderr)
        procs.append(start(server.url, "first", lease, logdir / f"first-{series}.log"))
        write_entry()
        wait(lambda: client.hget(keys.checkpoint(0), "position") is not None, 600, "the owner's first checkpoint")
        procs.append(start(server.url, "spare", lease, logdir / f"spare-{series}.log"))
        wait(lambda: client.zscore(keys.owner_registry(), "spare") is not None, 60, "the spare registered")
        epoch = int(client.hget(keys.checkpoint(0), "epoch") or 0)
        procs[0].send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        procs[0].wait(10)

        def taken_over() -> bool:
            write_entry()
            return int(client.hget(keys.checkpoint(0), "epoch") or 0) > epoch

        wait(taken_over, 600, "the spare's first checkpoint")
        elapsed = time.perf_counter() - killed
        log = (logdir / f"spare-{series}.log").read_text(errors="replace")
        found = re.findall(r"taken over at checkpoint \d+ \(position \S+, (\d+) fields loaded in ([\d.]+) s\)", log)
        loaded, load_s = (int(found[-1][0]), float(found[-1][1])) if found else (0, float("nan"))
        return {"series": series, "fields": fields, "takeover_s": elapsed, "loaded": loaded, "load_s": load_s}
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        client.close()
        server.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", default="10000,100000,1000000")
    p.add_argument("--lease", type=float, default=5.0, help="LSM_OWNER_LEASE_SECONDS (default 5)")
    p.add_argument("--logdir", default="/tmp", help="where the aggregators' logs go")
    a = p.parse_args()
    rows = [one(int(n), a.lease, Path(a.logdir)) for n in a.series.split(",")]
    head = f"SIGKILL -> spare's first checkpoint (lease {a.lease:g} s)"
    print(f"| series | hash fields | {head} | state load (spare's log) |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['series']:,} | {r['fields']:,} | {r['takeover_s']:.2f} s | "
            f"{r['loaded']:,} fields in {r['load_s']:.2f} s |"
        )
    print(f"\nMachine: {os.cpu_count()} cores; load average at the end: {os.getloadavg()[0]:.2f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
