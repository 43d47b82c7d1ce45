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
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import redis

from aggregator.connections import open_sync
from aggregator.daemon import Aggregator
from aggregator.local_server import default_redis
from aggregator.selfmetrics import producer_health, shard_health
from aggregator.settings import AggregatorConfigError, AggregatorSettings
from aggregator.snapshot import read_families


def say(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


def _totals(client: redis.Redis, agg: Aggregator) -> tuple[float, float, float]:
    fams = read_families(client, agg.settings.keys, agg.schema)

    def total(name: str) -> float:
        fam = fams.get(name)
        return sum(v for _n, _l, v in fam.samples(0)) if fam else 0.0

    return (
        total("litellm_requests_metric"),
        total("litellm_spend_metric"),
        total("litellm_proxy_failed_requests_metric"),
    )


def _progress(client: redis.Redis, agg: Aggregator) -> str:
    keys = agg.settings.keys
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


def _scrape(agg: Aggregator) -> str:
    """One scrape of our own /metrics, as Prometheus would do it."""
    assert agg.server is not None
    url = agg.server.address.metrics_url
    token = agg.settings.metrics_bearer_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    context = ssl._create_unverified_context() if url.startswith("https") else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10, context=context) as r:
            body = r.read()
    except (OSError, urllib.error.HTTPError) as exc:
        return f"GET {url}: {exc}"
    lines = [ln for ln in body.splitlines() if ln and not ln.startswith(b"#")]
    business = sum(1 for ln in lines if ln.startswith(b"litellm_"))
    return f"GET {url}: {len(body):,} bytes, {business:,} litellm_* samples, {len(lines) - business:,} lsm_* samples"


DEFAULT_NAMESPACE = "lsm-quickstart"
# What a person can read in a terminal: a few totals, not the 20-40k samples of a demo.
READABLE_FAMILIES = (
    "litellm_proxy_total_requests_metric_total",
    "litellm_proxy_failed_requests_metric_total",
    "litellm_spend_metric_total",
)


def _delete_namespace(client: redis.Redis, namespace: str) -> int:
    """One key per command (on a Redis Cluster a namespace's keys live in many slots)."""
    deleted = 0
    pipe = client.pipeline(transaction=False)
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        pipe.unlink(key)
        deleted += 1
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()
    return deleted


def _choose_namespace(client: redis.Redis, fresh: bool, clean: bool) -> str:
    if fresh:
        return f"{DEFAULT_NAMESPACE}-{secrets.token_hex(4)}"
    namespace = os.environ.get("LSM_NAMESPACE", DEFAULT_NAMESPACE)
    if clean:
        say(f"--clean: deleted {_delete_namespace(client, namespace):,} keys of namespace {namespace}")
    elif next(client.scan_iter(match=f"{namespace}:*", count=1000), None) is not None:
        say(
            f"namespace {namespace} holds an earlier run's totals: this run adds to them "
            "(--fresh: a throwaway namespace for this run; --clean: delete them first)"
        )
    return namespace


async def main_async(
    rate: float, seconds: float | None, interval: float, fresh: bool = False, clean: bool = False
) -> int:
    url, server = default_redis(say)
    # A client as the aggregator opens one (a Redis Cluster's URL gets a cluster client).
    client = open_sync(AggregatorSettings.load({**os.environ, "LSM_REDIS_URL": url}))
    namespace = _choose_namespace(client, fresh, clean)
    env = {**os.environ, "LSM_REDIS_URL": url, "LSM_NAMESPACE": namespace, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    # Credentials for /metrics: the user's, else a fresh random token for this run.
    has_credentials = env.get("LSM_METRICS_BEARER_TOKEN") or env.get("LSM_METRICS_BASIC_AUTH_USERNAME")
    if not has_credentials and env.get("LSM_METRICS_ALLOW_UNAUTHENTICATED", "").lower() not in ("1", "true", "yes"):
        env["LSM_METRICS_BEARER_TOKEN"] = secrets.token_urlsafe(24)
    env.setdefault("LSM_HTTP_HOST", "127.0.0.1")
    settings = AggregatorSettings.load(env)
    try:
        agg = Aggregator(settings, serve_http=True)
    except AggregatorConfigError as exc:
        if "cannot listen" not in str(exc) or "LSM_HTTP_PORT" in os.environ:
            raise
        say(f"port {settings.http_port} is taken; serving /metrics on a free port instead")
        settings = settings.model_copy(update={"http_port": 0})
        agg = Aggregator(settings, serve_http=True)
    assert agg.server is not None
    say(f"namespace {namespace}; starting the aggregator and the traffic generator ({rate:g} calls/s)")
    agg_task = asyncio.create_task(agg.run())
    cmd = [sys.executable, "-m", "producer.traffic", "--rate", str(rate), "--quiet"]
    traffic = subprocess.Popen(cmd, env=env, start_new_session=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    metrics_url = agg.server.address.metrics_url
    say(f"/metrics: {metrics_url}  (also /healthz and /readyz)")
    token = settings.metrics_bearer_token
    if token is not None:
        say(f"credentials: bearer token {token.get_secret_value()}")
        query = "&".join(f"name[]={name}" for name in READABLE_FAMILIES)
        say(
            f"  a few totals: curl -s -H 'Authorization: Bearer {token.get_secret_value()}' "
            f"'{metrics_url}?{query}' | awk '/^[a-z]/ {{t[substr($0, 1, index($0, \"{{\") - 1)] += $NF}} "
            'END {for (m in t) printf "%s %.4f\\n", m, t[m]}\''
        )
    elif settings.metrics_basic_auth_username is not None:
        say(f"credentials: basic auth user {settings.metrics_basic_auth_username} (password from your environment)")
    say(
        f"the durable totals live in Redis under {namespace}:* (delete them with --clean next time); "
        "Ctrl-C stops everything cleanly"
    )
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
        keys = settings.keys
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = await asyncio.to_thread(producer_health, client, keys)
            if all(p.events_applied >= p.events_sent for p in health):
                break
            await asyncio.sleep(0.5)
        say("final: " + await asyncio.to_thread(_progress, client, agg))
        say(await asyncio.to_thread(_scrape, agg))
        agg.stop.set()
        await agg_task
        if fresh:
            say(f"--fresh: deleted {_delete_namespace(client, namespace):,} keys of this run's namespace {namespace}")
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
    p.add_argument("--fresh", action="store_true", help=f"a new namespace for this run ({DEFAULT_NAMESPACE}-<random>)")
    p.add_argument("--clean", action="store_true", help="delete the namespace's keys (an earlier run's totals) first")
    a = p.parse_args(argv)
    if a.fresh and a.clean:
        p.error("--fresh and --clean exclude each other")
    if a.rate <= 0 or a.interval <= 0:
        p.error("--rate and --interval must be positive")
    import logging

    logging.basicConfig(level=os.environ.get("LSM_LOG_LEVEL", "WARNING").upper())
    return asyncio.run(main_async(a.rate, a.seconds, a.interval, fresh=a.fresh, clean=a.clean))


if __name__ == "__main__":
    sys.exit(main())
