"""How a producer's end shows in Redis: counters reported ahead of the events, a final report
on a clean close, and the aggregator's count of what an unclean exit left unsent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from aggregator.housekeeping import Housekeeper
from aggregator.settings import AggregatorSettings
from producer import lifecycle
from producer.callback import StreamMetricsLogger
from producer.emitter import Emitter
from producer.keys import PRODUCER_STATS_TTL_SECONDS, Keys
from tests.support import producer_stats, settings_for, wait_for

ROOT = Path(__file__).resolve().parents[1]

HOLDING_PRODUCER = textwrap.dedent(
    """
    import sys, time
    from producer.callback import StreamMetricsLogger

    logger = StreamMetricsLogger()
    for i in range(int(sys.argv[1])):
        logger.increment_callback_logging_failure(callback_name=f"cb-{i}")
    print(logger.emitter.producer_id, flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def emitters(namespace: str) -> Iterator[list[Emitter]]:
    """Emitters closed after the test, before its namespace is cleaned up (a close writes a
    final report: closed later, it would leave the namespace's keys behind)."""
    made: list[Emitter] = []
    yield made
    for em in made:
        em.close(timeout=2)


def _emitter(made: list[Emitter], redis_url: str, namespace: str, **overrides: object) -> Emitter:
    em = Emitter(settings_for(redis_url, namespace, **overrides))
    made.append(em)
    return em


def _housekeeper(client: aioredis.Redis, namespace: str, gone: float = 0.5) -> Housekeeper:
    settings = AggregatorSettings(namespace=namespace, producer_gone_seconds=gone, consumer_name="hk")
    return Housekeeper(client, Keys(namespace), 0, settings)


def _shard_stats(client: redis.Redis, namespace: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(Keys(namespace).shard_stats(0)).items()}


def test_counters_are_reported_while_a_partial_batch_waits(
    emitters: list[Emitter], redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    em = _emitter(emitters, redis_url, namespace, flush_interval=600.0, stats_interval=0.2)
    for i in range(10):
        assert em.offer(b'{"i":%d}' % i)
    stats = wait_for(
        lambda: (s := producer_stats(redis_client, namespace, em.producer_id)).get("events_accepted") == "10" and s,
        timeout=5,
    )
    assert stats["events_sent"] == "0" and stats["buffer_events"] == "10" and int(stats["buffer_bytes"]) > 0
    assert "closed_at" not in stats


def test_a_clean_close_writes_a_final_report(
    emitters: list[Emitter], redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    em = _emitter(emitters, redis_url, namespace, flush_interval=600.0, stats_interval=600.0)
    for i in range(25):
        em.offer(b'{"i":%d}' % i)
    assert em.close(timeout=5)
    stats = producer_stats(redis_client, namespace, em.producer_id)
    assert stats["events_sent"] == "25" and stats["buffer_events"] == "0" and stats["buffer_bytes"] == "0"
    assert float(stats["closed_at"]) >= float(stats["started_at"])


def _start_holding_producer(redis_url: str, namespace: str, events: int) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LSM_REDIS_URL": redis_url,
        "LSM_NAMESPACE": namespace,
        "LSM_FLUSH_INTERVAL": "600",
        "LSM_STATS_INTERVAL": "0.1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDING_PRODUCER, str(events)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


async def test_events_left_by_a_killed_producer_are_counted_once(
    redis_url: str, namespace: str, redis_client: redis.Redis, aclient: aioredis.Redis
) -> None:
    proc, pid = _start_holding_producer(redis_url, namespace, 40)
    try:
        await asyncio.to_thread(
            wait_for, lambda: producer_stats(redis_client, namespace, pid).get("events_accepted") == "40", 10
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    first, second = _housekeeper(aclient, namespace), _housekeeper(aclient, namespace)
    # Not yet silent long enough: nothing is decided.
    assert await first.record_ended_producers() == 0
    assert "events_lost_unclean_exit" not in _shard_stats(redis_client, namespace)
    await asyncio.sleep(0.7)
    # Two aggregators of the shard find it at once: it is counted once.
    found = await asyncio.gather(first.record_ended_producers(), second.record_ended_producers())
    assert sorted(found) == [0, 1]
    assert await first.record_ended_producers() == 0
    stats = _shard_stats(redis_client, namespace)
    assert stats["events_lost_unclean_exit"] == 40 and stats["producer_exits_unclean"] == 1
    assert "producer_exits_clean" not in stats


async def test_a_cleanly_closed_or_live_producer_loses_nothing(
    emitters: list[Emitter], redis_url: str, namespace: str, redis_client: redis.Redis, aclient: aioredis.Redis
) -> None:
    closed = _emitter(emitters, redis_url, namespace, flush_interval=600.0)
    live = _emitter(emitters, redis_url, namespace, flush_interval=600.0, stats_interval=0.1)
    for em in (closed, live):
        for i in range(5):
            em.offer(b'{"i":%d}' % i)
    assert closed.close(timeout=5)
    await asyncio.to_thread(
        wait_for, lambda: producer_stats(redis_client, namespace, live.producer_id).get("buffer_events") == "5", 5
    )
    await asyncio.sleep(0.7)
    hk = _housekeeper(aclient, namespace)
    await hk.record_ended_producers()
    stats = _shard_stats(redis_client, namespace)
    assert stats.get("producer_exits_clean") == 1
    assert "events_lost_unclean_exit" not in stats and "producer_exits_unclean" not in stats


async def test_producers_are_forgotten_when_their_counters_expire(
    redis_url: str, namespace: str, redis_client: redis.Redis, aclient: aioredis.Redis
) -> None:
    keys = Keys(namespace)
    now = time.time()
    redis_client.zadd(
        keys.producer_registry(), {"old:1:aaaa": now - PRODUCER_STATS_TTL_SECONDS - 10, "new:1:bbbb": now}
    )
    redis_client.zadd(keys.ended_producers(0), {"old:1:aaaa": now - PRODUCER_STATS_TTL_SECONDS - 5})
    await _housekeeper(aclient, namespace).record_ended_producers(now)
    assert [m.decode() for m in redis_client.zrange(keys.producer_registry(), 0, -1)] == ["new:1:bbbb"]
    assert redis_client.zcard(keys.ended_producers(0)) == 0


async def test_forged_producer_counters_do_not_stop_housekeeping(
    redis_url: str, namespace: str, redis_client: redis.Redis, aclient: aioredis.Redis
) -> None:
    """Anyone who can write a producer's counters can write anything there: values that are not
    finite non-negative numbers count as 0, and the other producers are still recorded."""
    keys = Keys(namespace)
    now = time.time()
    forged = {"nan:1:aaaa": "nan", "inf:1:bbbb": "inf", "neg:1:cccc": "-5", "word:1:dddd": "many"}
    honest = "honest:1:eeee"
    for pid, value in {**forged, honest: "7"}.items():
        redis_client.zadd(keys.producer_registry(), {pid: now - 60})
        updated = value if pid in forged else now - 60
        redis_client.hset(
            keys.producer_stats(pid), mapping={"buffer_events": value, "stats_interval": value, "updated_at": updated}
        )
    # One shard: every producer is the housekeeper's. Each is recorded as ended uncleanly.
    assert await _housekeeper(aclient, namespace).record_ended_producers(now) == len(forged) + 1
    assert _shard_stats(redis_client, namespace)["events_lost_unclean_exit"] == 7


# -- the proxy's shutdown path ---------------------------------------------------------------------


async def test_the_proxy_shutdown_path_flushes_first(
    redis_url: str, namespace: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With LiteLLM's real proxy module loaded, creating the callback wraps its shutdown event."""
    from litellm.proxy import proxy_server

    # LiteLLM's own function (an earlier logger in this process may have wrapped it already).
    original = getattr(proxy_server.proxy_shutdown_event, "__wrapped__", proxy_server.proxy_shutdown_event)
    monkeypatch.setattr(proxy_server, "proxy_shutdown_event", original)  # restored after the test
    logger = StreamMetricsLogger(settings=settings_for(redis_url, namespace, flush_interval=600.0))
    try:
        wrapped = proxy_server.proxy_shutdown_event
        assert wrapped is not original and wrapped.__wrapped__ is original  # type: ignore[attr-defined]
        StreamMetricsLogger(emitter=logger.emitter)  # a second instance does not wrap twice
        assert proxy_server.proxy_shutdown_event is wrapped
        for i in range(7):
            logger.increment_callback_logging_failure(callback_name=f"cb-{i}")
        await wrapped()
        stats = producer_stats(redis_client, namespace, logger.emitter.producer_id)
        assert stats["events_sent"] == "7" and "closed_at" in stats
    finally:
        logger.close(timeout=2)


def test_a_proxy_without_the_shutdown_event_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    changed = types.ModuleType(lifecycle.PROXY_MODULE)  # a LiteLLM whose proxy changed shape
    monkeypatch.setitem(sys.modules, lifecycle.PROXY_MODULE, changed)
    assert lifecycle.install_proxy_shutdown_hook(lambda: None) is False
    assert "events still buffered when the proxy is stopped with SIGTERM may be lost" in caplog.text
    monkeypatch.delitem(sys.modules, lifecycle.PROXY_MODULE)
    assert lifecycle.install_proxy_shutdown_hook(lambda: None) is False  # not in a proxy: nothing to do
