"""The quick start: Redis (embedded if none is given), the aggregator, and realistic LiteLLM
traffic through the real producer, with a progress line every few seconds.

    python -m aggregator.quickstart [--rate 20] [--seconds N]

Ctrl-C stops the traffic (its buffered events are flushed), lets the aggregator apply what is
left in the stream, prints a summary and stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import redis

from aggregator.daemon import Aggregator
from aggregator.local_server import default_redis
from aggregator.selfmetrics import producer_health, shard_health
from aggregator.settings import AggregatorSettings
from aggregator.snapshot import read_families
from producer.keys import Keys


def say(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


def _totals(client: redis.Redis, agg: Aggregator) -> tuple[float, float, float]:
    fams = read_families(client, Keys(agg.settings.namespace, agg.settings.shards), agg.engine)

    def total(name: str) -> float:
        fam = fams.get(name)
        return sum(v for _n, _l, v in fam.samples(0)) if fam else 0.0

    return (
        total("litellm_requests_metric"),
        total("litellm_spend_metric"),
        total("litellm_proxy_failed_requests_metric"),
    )


def _progress(client: redis.Redis, agg: Aggregator) -> str:
    keys = Keys(agg.settings.namespace, agg.settings.shards)
    sent = applied = 0
    for p in producer_health(client, keys):
        sent += p.events_sent
        applied += p.events_applied
    backlog = sum(shard_health(client, keys, s, agg.settings.group).stream_length for s in range(keys.shards))
    requests, spend, failed = _totals(client, agg)
    return (
        f"events sent {sent:,} applied {applied:,} | stream {backlog:,} entries | "
        f"litellm_requests_metric {requests:,.0f}, proxy failures {failed:,.0f}, spend ${spend:,.4f}"
    )


async def main_async(rate: float, seconds: float | None, interval: float) -> int:
    url, server = default_redis(say)
    namespace = os.environ.get("LSM_NAMESPACE", "lsm-quickstart")
    env = {**os.environ, "LSM_REDIS_URL": url, "LSM_NAMESPACE": namespace, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    settings = AggregatorSettings.load(env)
    agg = Aggregator(settings)
    client = redis.Redis.from_url(url)
    say(f"namespace {namespace}; starting the aggregator and the traffic generator ({rate:g} calls/s)")
    agg_task = asyncio.create_task(agg.run())
    cmd = [sys.executable, "-m", "producer.traffic", "--rate", str(rate), "--quiet"]
    traffic = subprocess.Popen(cmd, env=env, start_new_session=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    say("Ctrl-C stops everything cleanly. /metrics is not served yet (coming with the exposition work);")
    say(f"the durable totals live in Redis under {namespace}:*")
    started = time.monotonic()
    code = 0
    try:
        while not stop.is_set():
            if seconds is not None and time.monotonic() - started >= seconds:
                break
            if traffic.poll() is not None:
                say(f"the traffic generator exited with code {traffic.returncode}")
                code = 1
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            say(await asyncio.to_thread(_progress, client, agg))
    finally:
        say("stopping the traffic generator (it flushes its buffer)")
        if traffic.poll() is None:
            traffic.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(traffic.wait, 30)
            except subprocess.TimeoutExpired:
                traffic.kill()
        keys = Keys(namespace, settings.shards)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = await asyncio.to_thread(producer_health, client, keys)
            if all(p.events_applied >= p.events_sent for p in health):
                break
            await asyncio.sleep(0.5)
        agg.stop.set()
        await agg_task
        say("final: " + await asyncio.to_thread(_progress, client, agg))
        client.close()
        if server is not None:
            server.close()
            say("stopped the private Redis-compatible server")
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=20.0, help="LiteLLM calls per second (default 20)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--interval", type=float, default=3.0, help="seconds between progress lines")
    a = p.parse_args(argv)
    if a.rate <= 0 or a.interval <= 0:
        p.error("--rate and --interval must be positive")
    import logging

    logging.basicConfig(level=os.environ.get("LSM_LOG_LEVEL", "WARNING").upper())
    return asyncio.run(main_async(a.rate, a.seconds, a.interval))


if __name__ == "__main__":
    sys.exit(main())
