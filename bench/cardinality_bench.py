#!/usr/bin/env python
"""Hostile label values against a real aggregator process: what a scrape returns and what the
aggregator's memory becomes.

Scenarios (each in its own namespace, deleted afterwards):

- ``long-label``: one success event whose ``user_agent`` (or ``--label``) is ``--value-bytes``
  long (default 1 MiB); ``--label api_key_alias`` puts it on 40 metrics. Such an event does not
  pass the producer's default ``LSM_MAX_EVENT_BYTES`` (256 KiB), so it is written to the stream
  directly, as a producer with a raised limit (or any other writer) would.
- ``end-users``: ``--n`` success events (default 200,000), each from another end user, with
  LiteLLM's end-user tracking off (the default) or on (``--end-user-tracking``).
- ``user-agents``: ``--n`` success events, each with another ``user_agent`` (a label LiteLLM
  always exports, on 7 metrics).

Events are written in the producer's wire format (500 events per stream entry) before the
aggregator starts; then ``python -m aggregator run`` is started, the bench waits until every
event is applied, scrapes ``/metrics`` once (text format, no gzip) and reads the aggregator's
``VmRSS`` / ``VmHWM`` (peak) from ``/proc``. ``--address-space-mib`` limits the aggregator's
address space, so that running out of memory raises ``MemoryError`` (as under the probe that
found these cases) instead of waking the kernel's OOM killer.

    .venv/bin/python bench/cardinality_bench.py long-label
    .venv/bin/python bench/cardinality_bench.py end-users --n 200000
    .venv/bin/python bench/cardinality_bench.py end-users --n 200000 --end-user-tracking
    .venv/bin/python bench/cardinality_bench.py user-agents --n 200000
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from producer.keys import Keys
from producer.wire import SUCCESS_FIELDS, encode_entry, encode_event

ROOT = Path(__file__).resolve().parents[1]
_I = {name: i for i, name in enumerate(SUCCESS_FIELDS)}
T0 = 1_800_000_000.0
EVENTS_PER_ENTRY = 500


def success(i: int, **values: Any) -> list[Any]:
    """A success event of the wire format (positional), one of 20 keys x 4 models."""
    ev: list[Any] = [None] * len(SUCCESS_FIELDS)
    key, model = i % 20, i % 4
    ev[0] = "success"
    ev[_I["t"]] = T0 + i / 1000
    ev[_I["hashed_api_key"]] = f"{key:064x}"
    ev[_I["api_key_alias"]] = f"key-{key}"
    ev[_I["team"]] = f"team-{key % 5}"
    ev[_I["model_group"]] = f"group-{model}"
    ev[_I["model_id"]] = f"deployment-{model}"
    ev[_I["api_provider"]] = "openai"
    ev[_I["stream"]] = False
    ev[_I["response_cost"]] = 0.001
    ev[_I["total_tokens"]], ev[_I["prompt_tokens"]], ev[_I["completion_tokens"]] = 30, 10, 20
    ev[_I["model"]] = f"model-{model}"
    ev[_I["end_time"]] = "2027-01-15T08:00:01.500000"
    ev[_I["start_time"]] = "2027-01-15T08:00:00.000000"
    ev[_I["api_call_start_time"]] = "2027-01-15T08:00:00.200000"
    for name, value in values.items():
        ev[_I[name]] = value
    return ev


def events(scenario: str, n: int, value_bytes: int, label: str) -> Iterator[list[Any]]:
    if scenario == "long-label":
        yield success(0, **{label: "A" * (value_bytes - 8) + "-variant"})
        return
    for i in range(n):
        if scenario == "end-users":
            yield success(i, end_user=f"customer-{i:08d}")
        else:
            yield success(i, user_agent=f"bench-client/{i}.0 (scanner; +https://example.invalid/{i})")


def write(client: redis.Redis, keys: Keys, evs: Iterator[list[Any]]) -> int:
    seq = 0
    count = 0
    batch: list[bytes] = []
    pipe = client.pipeline(transaction=False)
    for ev in evs:
        batch.append(encode_event(ev))
        count += 1
        if len(batch) == EVENTS_PER_ENTRY:
            seq += 1
            pipe.xadd(keys.stream(0), encode_entry("bench", seq, batch, time.time()))  # type: ignore[arg-type]
            batch = []
            if seq % 20 == 0:
                pipe.execute()
    if batch:
        seq += 1
        pipe.xadd(keys.stream(0), encode_entry("bench", seq, batch, time.time()))  # type: ignore[arg-type]
    pipe.execute()
    return count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0])
    return out


def scrape(url: str) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=600) as r:
            return r.status, r.read(), time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.perf_counter() - t0


def summarize(body: bytes) -> dict[str, Any]:
    lines = body.count(b"\n")
    requests_series = sum(1 for line in body.splitlines() if line.startswith(b"litellm_requests_metric_total{"))
    longest = max((len(line) for line in body.splitlines()), default=0)
    return {
        "lines": lines,
        "litellm_requests_metric series": requests_series,
        "longest line (bytes)": longest,
        "lsm_leader served": b"\nlsm_leader " in body,
        "business samples served": sum(1 for line in body.splitlines() if line.startswith(b"litellm_")),
        "render state": b" ".join(
            line
            for line in body.splitlines()
            if line.startswith((b"lsm_render_incomplete ", b"lsm_render_errors_total", b"lsm_render_omitted_fields{"))
        ).decode(),
    }


def run(args: argparse.Namespace) -> None:
    ns = f"bench-card-{uuid.uuid4().hex[:8]}"
    keys = Keys(ns)
    client = redis.Redis.from_url(args.redis_url)
    tmp = Path(tempfile.mkdtemp(prefix="lsm-card-"))
    config = tmp / "config.yaml"
    if args.end_user_tracking:
        config.write_text("litellm_settings:\n  enable_end_user_cost_tracking_prometheus_only: true\n")
    else:
        config.write_text("litellm_settings: {}\n")
    port = free_port()
    proc: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.perf_counter()
        n = write(client, keys, events(args.scenario, args.n, args.value_bytes, args.label))
        stream_mib = client.memory_usage(keys.stream(0)) or 0
        print(f"wrote {n:,} events ({stream_mib / 2**20:.1f} MiB of stream) in {time.perf_counter() - t0:.1f} s")
        env = {
            **os.environ,
            "LSM_REDIS_URL": args.redis_url,
            "LSM_NAMESPACE": ns,
            "LSM_CONSUMER_NAME": "bench",
            "LSM_HTTP_HOST": "127.0.0.1",
            "LSM_HTTP_PORT": str(port),
            "LSM_METRICS_ALLOW_UNAUTHENTICATED": "true",
            "LSM_LITELLM_CONFIG": str(config),
            "LSM_LOG_LEVEL": "WARNING",
            **dict(kv.split("=", 1) for kv in args.env),
        }
        log = open(tmp / "aggregator.log", "wb")  # noqa: SIM115 - closed below
        limit = args.address_space_mib << 20

        def rlimit() -> None:
            if limit:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run"], cwd=ROOT, env=env, stdout=log, stderr=log, preexec_fn=rlimit
        )
        t0 = time.perf_counter()
        while int(client.hget(keys.shard_stats(0), "events_applied") or 0) < n:
            if proc.poll() is not None:
                raise SystemExit(f"aggregator exited: {(tmp / 'aggregator.log').read_text()[-3000:]}")
            time.sleep(0.2)
        applied_s = time.perf_counter() - t0
        mem_applied = proc_memory(proc.pid)
        url = f"http://127.0.0.1:{port}/metrics"
        # Wait for leadership (the business series are exported by the leader only).
        deadline = time.monotonic() + 30
        while b"\nlsm_leader 1.0" not in scrape(url + "?name[]=lsm_leader")[1]:
            if time.monotonic() > deadline:
                raise SystemExit("no leadership")
            time.sleep(0.2)
        status, body, seconds = scrape(url)
        mem = proc_memory(proc.pid)
        stats = {k.decode(): int(v) for k, v in client.hgetall(keys.shard_stats(0)).items()}
        print(f"applied in {applied_s:.1f} s; RSS after applying {mem_applied['VmRSS'] / 1024:.0f} MiB")
        print(f"scrape: HTTP {status}, {len(body):,} bytes ({len(body) / 2**20:.2f} MiB) in {seconds:.2f} s")
        for name, value in summarize(body).items():
            print(f"  {name}: {value}")
        rss, peak = mem["VmRSS"] / 1024, mem["VmHWM"] / 1024
        print(f"aggregator RSS after the scrape {rss:.0f} MiB, peak (VmHWM) {peak:.0f} MiB")
        interesting = {k: v for k, v in stats.items() if not k.startswith("events_applied_")}
        print(f"shard stats: {interesting}")
        if status != 200:
            print("body:", body[:300])
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for key in client.scan_iter(f"{ns}:*", count=1000):
            client.unlink(key)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=("long-label", "end-users", "user-agents"))
    p.add_argument("--n", type=int, default=200_000, help="events (end-users, user-agents)")
    p.add_argument("--value-bytes", type=int, default=1 << 20, help="label value length (long-label)")
    p.add_argument("--label", default="user_agent", help="the event field holding the long value (long-label)")
    p.add_argument("--end-user-tracking", action="store_true", help="enable_end_user_cost_tracking_prometheus_only")
    p.add_argument("--env", action="append", default=[], help="extra aggregator setting NAME=value (repeatable)")
    p.add_argument(
        "--address-space-mib",
        type=int,
        default=0,
        help="RLIMIT_AS of the aggregator process (a memory limit that raises MemoryError)",
    )
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = p.parse_args()
    print(f"Python {platform.python_version()}, {os.cpu_count()} cores; scenario {args.scenario}")
    run(args)


if __name__ == "__main__":
    main()
