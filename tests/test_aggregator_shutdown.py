"""SIGTERM stops an aggregator cleanly (nothing half-applied), and dead consumers are removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.snapshot import read_families
from producer.keys import Keys
from producer.wire import encode_entry, encode_event
from tests.events import positional, success_event
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[1]
GROUP = "aggregators"


def success(i: int) -> bytes:
    ev = success_event(
        t=time.time(), hashed_api_key=f"{i % 7:064x}", model="m", model_group="m",
        api_provider="openai", response_cost=0.5, total_tokens=3, prompt_tokens=1, completion_tokens=2,
    )  # fmt: skip
    return encode_event(positional(ev))


def fill(client: redis.Redis, keys: Keys, entries: int, per_entry: int) -> None:
    pipe = client.pipeline(transaction=False)
    for seq in range(1, entries + 1):
        events = [success(seq * per_entry + j) for j in range(per_entry)]
        pipe.xadd(keys.stream(0), encode_entry("p-shutdown", seq, events, time.time()))  # type: ignore[arg-type]
    pipe.execute()


def start(redis_url: str, namespace: str, name: str, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LSM_REDIS_URL": redis_url,
        "LSM_NAMESPACE": namespace,
        "LSM_CONSUMER_NAME": name,
        "LSM_READ_COUNT": "5",
        "LSM_BLOCK_SECONDS": "0.2",
        "LSM_HTTP_PORT": "0",
        "LSM_METRICS_BEARER_TOKEN": "test-token",
        **extra,
    }
    return subprocess.Popen([sys.executable, "-m", "aggregator", "run"], env=env, stderr=subprocess.PIPE)


def requests_total(client: redis.Redis, keys: Keys) -> float:
    fams = read_families(client, keys, Engine(MetricsConfig.from_litellm_settings({})).schema)
    return sum(v for _n, _l, v in fams["litellm_requests_metric"].samples(0))


def applied(client: redis.Redis, keys: Keys) -> int:
    return int(client.hget(keys.shard_stats(0), "events_applied") or 0)


def test_sigterm_leaves_nothing_half_applied(redis_url: str, namespace: str, redis_client: redis.Redis) -> None:
    keys = Keys(namespace)
    fill(redis_client, keys, entries=400, per_entry=50)  # 20,000 events
    first = start(redis_url, namespace, "first")
    wait_for(lambda: applied(redis_client, keys) > 0, timeout=60)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=30)
    assert first.returncode == 0, err.decode()[-2000:]
    assert b"finishing the batch in hand" in err
    # Whatever was applied was applied whole: totals match the entries acknowledged.
    done = applied(redis_client, keys)
    assert done % 50 == 0 and requests_total(redis_client, keys) == done
    assert done < 20_000, "stopped before the end, or the test proves nothing"
    # A second aggregator finishes the job: exactly 20,000, nothing twice.
    second = start(redis_url, namespace, "first")  # the same name resumes its own pending entries
    try:
        wait_for(lambda: applied(redis_client, keys) >= 20_000, timeout=120)
        time.sleep(0.5)
        assert applied(redis_client, keys) == 20_000
        assert requests_total(redis_client, keys) == 20_000
        assert redis_client.xpending(keys.stream(0), GROUP)["pending"] == 0
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)


def test_dead_consumers_are_removed(redis_url: str, namespace: str, redis_client: redis.Redis) -> None:
    keys = Keys(namespace)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    redis_client.xgroup_createconsumer(keys.stream(0), GROUP, "gone-pod")
    agg = start(redis_url, namespace, "alive", LSM_DEAD_CONSUMER_IDLE="1", LSM_HOUSEKEEPING_INTERVAL="0.5")
    try:

        def names() -> set[str]:
            return {c["name"].decode() for c in redis_client.xinfo_consumers(keys.stream(0), GROUP)}

        wait_for(lambda: names() == {"alive"}, timeout=30)
    finally:
        agg.send_signal(signal.SIGTERM)
        agg.communicate(timeout=30)
