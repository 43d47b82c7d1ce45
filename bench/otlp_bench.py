#!/usr/bin/env python
"""OTLP push benchmark: what one push of the business series costs the leader, side by side with
one ``/metrics`` scrape of the same state.

For each size, the state of ``bench/exposition_bench.py``'s mix (LiteLLM's series per caller
identity) is written to Redis; then, in this process, ``--repeat`` times each:

* scrape: ``Exposition.render`` (text format), what a Prometheus scrape costs the leader;
* OTLP push: ``OtlpPusher.push_once`` (read the state, build OpenTelemetry's data model, encode
  the protobuf and send it with the OTLP/HTTP exporter) to a receiver in another process that
  reads the request and answers 200.

Reported: the median wall time and this process's CPU per operation, the data points and
bytes sent, and the peak RSS after the pushes.

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/otlp_bench.py --series 10000,100000
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
import redis.asyncio as aioredis
from exposition_bench import delete_namespace, identities_for, write
from prometheus_client import CollectorRegistry

from aggregator.engine import Engine
from aggregator.exposition import Exposition
from aggregator.leadership import Leadership
from aggregator.litellm_config import MetricsConfig
from aggregator.otlp_push import OtlpPusher
from aggregator.settings import AggregatorSettings
from producer.keys import Keys

RECEIVER = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(n)
            with open(sys.argv[1], "a") as f:
                f.write(f"{n}\\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *a):
            pass
    s = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(s.server_address[1], flush=True)
    s.serve_forever()
    """
)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: object, repeat: int) -> tuple[float, float]:
    """(median wall s, median process CPU s) of ``repeat`` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()  # type: ignore[operator]
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", default="10000,100000")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    a = p.parse_args()
    sizes_log = Path(f"/tmp/lsm-otlp-bench-{uuid.uuid4().hex[:8]}.log")
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(sizes_log)], stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    port = int(receiver.stdout.readline())
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    sync = redis.Redis.from_url(a.redis_url)
    print("| series (sample lines) | data points | scrape ms | scrape CPU ms | push ms | push CPU ms | bytes sent |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for size in (int(s) for s in a.series.split(",")):
            namespace = f"lsm-otlp-bench-{uuid.uuid4().hex[:8]}"
            keys = Keys(namespace)
            try:
                write(sync, keys, engine, identities_for(size), time.time())
                settings = AggregatorSettings(
                    redis_url=a.redis_url,
                    namespace=namespace,
                    consumer_name="bench",
                    otlp_endpoint=f"http://127.0.0.1:{port}/v1/metrics",
                    otlp_timeout_seconds=60,
                )
                aclient = aioredis.Redis.from_url(a.redis_url)
                leadership = Leadership(aclient, keys, "bench", 3600)
                asyncio.run(leadership.step())
                pusher = OtlpPusher(settings, engine.schema, leadership, CollectorRegistry())
                exposition = Exposition(sync, keys, engine.schema)
                lines = exposition.render("text").count(b"\n")
                scrape = timed(functools.partial(exposition.render, "text"), a.repeat)
                sizes_log.write_text("")
                push = timed(pusher.push_once, a.repeat)
                points = pusher.metrics.points._value.get()  # type: ignore[attr-defined]
                sent = [int(n) for n in sizes_log.read_text().split()]
                pusher.close()
                print(
                    f"| {lines:,} | {points:,.0f} | {scrape[0] * 1e3:,.0f} | {scrape[1] * 1e3:,.0f} "
                    f"| {push[0] * 1e3:,.0f} | {push[1] * 1e3:,.0f} | {sum(sent) // a.repeat:,} |",
                    flush=True,
                )
            finally:
                delete_namespace(sync, namespace)
    finally:
        receiver.terminate()
        sizes_log.unlink(missing_ok=True)
    print(f"peak RSS {peak_mib():.0f} MiB; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
