"""``python -m aggregator status``: run as a user runs it, against a real aggregator process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aggregator.local_server import free_port
from producer.emitter import Emitter
from producer.keys import Keys
from tests.support import settings_for, wait_for

ROOT = Path(__file__).resolve().parents[1]


def _env(redis_url: str, namespace: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LSM_REDIS_URL": redis_url,
        "LSM_NAMESPACE": namespace,
        "LSM_METRICS_BEARER_TOKEN": "status-test",
        "LSM_HTTP_HOST": "127.0.0.1",
        "LSM_HTTP_PORT": str(free_port()),
        "LSM_BLOCK_SECONDS": "0.2",
        "LSM_CONSUMER_NAME": "status-pod",
        **extra,
    }


def status(redis_url: str, namespace: str, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "aggregator", "status", *args],
        env=_env(redis_url, namespace),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def aggregator(redis_url: str, namespace: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(tmp_path / "aggregator.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run"], env=_env(redis_url, namespace), stdout=log, stderr=log
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def test_status_of_a_healthy_then_stopped_pipeline(
    aggregator: subprocess.Popen[bytes], redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    em = Emitter(settings_for(redis_url, namespace))
    for i in range(50):
        em.offer(b'{"kind":"callback_failure","t":%d,"callback_name":"cb"}' % (1_700_000_000 + i))
    assert em.close(timeout=5)
    keys = Keys(namespace)
    wait_for(lambda: int(redis_client.hget(keys.shard_stats(0), "events_applied") or 0) == 50, timeout=30)
    wait_for(lambda: redis_client.get(keys.lease("exporter")) is not None, timeout=30)

    code, out, err = status(redis_url, namespace, "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["problems"] == [] and report["exporter"] == "status-pod"
    (shard,) = report["shards"]
    assert shard["stats"]["events_applied"] == 50 and shard["consumers"] == 1 and shard["group_exists"]
    (producer,) = report["producers"]
    assert producer["producer"] == em.producer_id and producer["events_sent"] == producer["events_applied"] == 50
    assert producer["closed"] is True

    code, out, _ = status(redis_url, namespace)
    assert code == 0 and out.strip().endswith("no problems")
    assert "exporter: status-pod" in out and f"  {em.producer_id}  sent 50  applied 50" in out

    # Every aggregator stopped while entries keep arriving: the report says what is wrong, exit 1.
    aggregator.send_signal(signal.SIGTERM)
    aggregator.wait(20)
    late = Emitter(settings_for(redis_url, namespace))
    late.offer(b'{"kind":"callback_failure","t":1700000100,"callback_name":"late"}')
    assert late.close(timeout=5)
    time.sleep(1.2)
    code, out, _ = status(redis_url, namespace, "--max-age", "1")
    assert code == 1, out
    assert "PROBLEM: no aggregator holds the exporter lease" in out
    assert "PROBLEM: shard 0: entries wait" in out


def test_status_without_redis_exits_2_and_hides_the_password(namespace: str) -> None:
    url = f"redis://user:hunter2-secret@127.0.0.1:{free_port()}/0"
    code, out, err = status(url, namespace)
    assert code == 2
    assert "cannot reach Redis" in err and "hunter2-secret" not in out + err and "user:***@" in err
