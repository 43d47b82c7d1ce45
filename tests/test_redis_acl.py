"""deploy/redis/users.acl on a real server: the proxies' user can append events and write its
counters and nothing else; the aggregators' user runs the whole pipeline (apply, housekeeping,
export, status) without a permission error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aggregator.daemon import Aggregator
from aggregator.local_server import LocalServer
from aggregator.settings import AggregatorSettings
from aggregator.snapshot import read_families
from producer import wire
from producer.emitter import Emitter
from producer.settings import ProducerSettings
from tests.support import wait_until
from tests.test_engine import success

ROOT = Path(__file__).resolve().parents[1]
PROXY_PASSWORD = "proxy-test-password-7f3a"
AGGREGATOR_PASSWORD = "aggregator-test-password-91c2"


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[LocalServer]:
    text = (ROOT / "deploy" / "redis" / "users.acl").read_text()
    text = text.replace(">CHANGE-ME-proxy-password", f">{PROXY_PASSWORD}")
    text = text.replace(">CHANGE-ME-aggregator-password", f">{AGGREGATOR_PASSWORD}")
    acl = tmp_path / "users.acl"
    acl.write_text(text)
    server = LocalServer(extra_args=["--aclfile", str(acl)]).start()
    try:
        yield server
    finally:
        server.close()


def url(server: LocalServer, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def test_the_pipeline_runs_with_the_shipped_users(acl_server: LocalServer) -> None:
    proxy_url = url(acl_server, "lsm-proxy", PROXY_PASSWORD)
    aggregator_url = url(acl_server, "lsm-aggregator", AGGREGATOR_PASSWORD)

    # Nobody gets in without a user.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_server.port).ping()

    # The producer as lsm-proxy: every event sent, its counters written.
    emitter = Emitter(ProducerSettings(redis_url=proxy_url, namespace="lsm", flush_interval=0.02))
    for i in range(20):
        assert emitter.offer(wire.encode_event(success(t=time.time(), hashed_api_key=f"key-{i % 3}")))
    assert emitter.close(10.0)
    assert emitter.counters.sent == 20 and emitter.counters.flush_errors == 0

    # The aggregator as lsm-aggregator: applies them, keeps house, leads the export.
    settings = AggregatorSettings(
        redis_url=aggregator_url, namespace="lsm", block_seconds=0.1, housekeeping_interval=0.2, claim_interval=0.2
    )

    async def run_until_applied() -> Aggregator:
        agg = Aggregator(settings)
        task = asyncio.create_task(agg.run())
        try:
            deadline = time.monotonic() + 20
            while agg.consumers[0].counters.events_applied < 20:
                assert time.monotonic() < deadline, "the aggregator did not apply the events"
                assert agg.consumers[0].counters.errors == 0
                await asyncio.sleep(0.05)
            # Housekeeping rounds and the export lease, under the ACL.
            await wait_until(lambda: agg.consumers[0].housekeeper.rounds >= 2 and agg.leadership.is_leader())
            assert agg.consumers[0].counters.errors == 0
            assert agg.leadership.is_leader()
        finally:
            agg.stop.set()
            await asyncio.wait_for(task, 10)
        return agg

    agg = asyncio.run(run_until_applied())
    reader = redis.Redis.from_url(aggregator_url)
    families = read_families(reader, settings.keys, agg.schema)
    assert sum(families["litellm_requests_metric"].counters.values()) == 20

    # The status command as lsm-aggregator reads everything it reports (exit 2: Redis unreadable).
    env = {**os.environ, "LSM_REDIS_URL": aggregator_url, "LSM_NAMESPACE": "lsm"}
    status = subprocess.run(
        [sys.executable, "-m", "aggregator", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode in (0, 1), status.stderr
    assert "NOPERM" not in status.stdout + status.stderr


def test_the_proxy_user_can_do_nothing_else(acl_server: LocalServer) -> None:
    proxy = redis.Redis.from_url(url(acl_server, "lsm-proxy", PROXY_PASSWORD))
    assert proxy.ping()
    proxy.xadd("lsm:{s0}:events", {"x": "1"})  # allowed: what the producer does
    forbidden = [
        lambda: proxy.xrange("lsm:{s0}:events"),  # reading the events
        lambda: proxy.xack("lsm:{s0}:events", "aggregators", "0-1"),
        lambda: proxy.hset("lsm:{s0}:stats", "events_applied", 0),  # the aggregator's state
        lambda: proxy.hgetall("lsm:producer:x"),
        lambda: proxy.delete("lsm:{s0}:events"),
        lambda: proxy.set("lsm:anything", "1"),
        lambda: proxy.xadd("other:{s0}:events", {"x": "1"}),  # another namespace
        lambda: proxy.flushall(),
        lambda: proxy.keys("*"),
        lambda: proxy.config_get("*"),
        lambda: proxy.eval("return 1", 0),
    ]
    for command in forbidden:
        with pytest.raises(redis.exceptions.NoPermissionError):
            command()
    aggregator = redis.Redis.from_url(url(acl_server, "lsm-aggregator", AGGREGATOR_PASSWORD))
    for command in (lambda: aggregator.flushall(), lambda: aggregator.set("other:key", "1")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            command()
