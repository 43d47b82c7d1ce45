"""The single-owner ingest (aggregator/owner.py) under kill -9: owner processes are killed at
random while real producers write; the survivors and new processes take the shards over from
the last fenced checkpoint, and every counter ends exactly at what was produced."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from aggregator.connections import open_async
from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.owner import Owners, state_keys
from aggregator.series_limits import build_limits
from aggregator.settings import AggregatorSettings
from aggregator.snapshot import read_families
from producer.emitter import Emitter
from producer.keys import Keys
from producer.wire import encode_event
from tests.events import entry_fields
from tests.support import producer_stats, settings_for, wait_for
from tests.test_aggregator_crash import CHECKED, expected_totals, synthetic_event
from tests.test_producer_exit import _start_holding_producer
from tests.test_state_reset import AggregatorProcess

pytestmark = [pytest.mark.fault, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 2

OWNER_PROCESS = """
import asyncio, logging, signal, sys
from aggregator.connections import open_async
from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.owner import Owners, state_keys
from aggregator.series_limits import build_limits
from aggregator.settings import AggregatorSettings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

async def main():
    settings = AggregatorSettings.load()
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    limits = build_limits(engine.schema, settings.max_series_per_metric)
    client = open_async(settings)
    owners = Owners(
        client, settings, engine.build_delta,
        lambda shard: state_keys(engine.schema, settings.keys, shard, limits),
        limits, lease_seconds=1.0, checkpoint_interval=0.1,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await owners.run(stop)

asyncio.run(main())
"""


class OwnerProcess:
    def __init__(self, url: str, namespace: str, name: str, logdir: Path) -> None:
        self.log_path = logdir / f"{name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LSM_REDIS_URL": url,
            "LSM_NAMESPACE": namespace,
            "LSM_SHARDS": str(SHARDS),
            "LSM_CONSUMER_NAME": name,
            "LSM_BLOCK_SECONDS": "0.1",
        }
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", OWNER_PROCESS], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def test_owners_killed_at_random_leave_every_total_exact(redis_url: str, namespace: str, tmp_path: Path) -> None:
    """20,000 events by default (LSM_OWNER_CHAOS_EVENTS for a longer run), written at about
    4,000/s, an owner killed every 0.3-0.9 s and a new one started."""
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        result = run_chaos(
            redis_url, client, namespace, tmp_path, int(os.environ.get("LSM_OWNER_CHAOS_EVENTS", "20000"))
        )
        assert result.unreplicated == 0
    finally:
        client.close()


@dataclass
class ChaosResult:
    produced: int
    applied: int
    unreplicated: int


def run_chaos(
    url: str,
    client: redis.Redis,
    namespace: str,
    tmp_path: Path,
    n: int,
    midway: Callable[[], None] | None = None,
    **producer_settings: Any,
) -> ChaosResult:
    """Two producers write ``n`` events at about 4,000/s over two shards while owner processes
    are SIGKILLed every 0.3-0.9 s and replaced; ``midway`` runs once, halfway through the
    traffic. Then every CHECKED counter must equal what was produced (or, when the producers
    report events their replicas did not confirm, ``applied`` may fall short by at most those)."""
    keys = Keys(namespace, SHARDS)
    rnd = random.Random(5)
    procs: list[OwnerProcess] = []
    started = 0

    def start() -> None:
        nonlocal started
        procs.append(OwnerProcess(url, namespace, f"owner-{started}", tmp_path))
        started += 1

    start()
    start()

    def new_emitter() -> Emitter:
        return Emitter(settings_for(url, namespace, shards=SHARDS, **producer_settings))

    # Two producers (on both shards, as their ids fall), the events split between them.
    emitters = [new_emitter() for _ in range(2)]
    while len({keys.shard_for_producer(em.producer_id) for em in emitters}) < SHARDS:
        emitters[1].close(1)
        emitters[1] = new_emitter()
    halfway = threading.Event()

    def produce() -> None:
        t0 = time.monotonic()
        for i in range(n):
            assert emitters[i % 2].offer(encode_event(synthetic_event(i)))
            if i == n // 2:
                halfway.set()
            if i % 200 == 0:
                ahead = i / 4000 - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)

    producer = threading.Thread(target=produce)
    producer.start()
    kills = 0
    try:
        while producer.is_alive() or kills < 6:
            time.sleep(rnd.uniform(0.3, 0.9))
            if midway is not None and halfway.is_set():
                midway()
                midway = None
            live = [p for p in procs if p.proc.poll() is None]
            victim = rnd.choice(live)
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
            kills += 1
            start()
        producer.join()
        assert midway is None, "the traffic ended before its middle was seen"
        for em in emitters:
            assert em.close(30)
            assert em.counters.sent == em.counters.accepted and sum(em.counters.dropped.values()) == 0
        unreplicated = sum(em.counters.unreplicated for em in emitters)

        def caught_up() -> bool:
            for shard in range(SHARDS):
                last = client.xinfo_stream(keys.stream(shard))["last-generated-id"]  # type: ignore[index]
                if client.hget(keys.checkpoint(shard), "position") != last:
                    return False
            return True

        wait_for(caught_up, 90, what="every shard checkpointed up to its last entry")
        stats = [{k.decode(): int(v) for k, v in client.hgetall(keys.shard_stats(s)).items()} for s in range(SHARDS)]
        applied = sum(s.get("events_applied", 0) for s in stats)
        assert not [k for s in stats for k in s if k.startswith(("dead_", "events_rejected_"))], stats
        assert n - unreplicated <= applied <= n, (applied, n, unreplicated)
        if applied == n:
            engine = Engine(MetricsConfig.from_litellm_settings({}))
            families = read_families(client, keys, engine.schema)
            expected = expected_totals(n, engine)
            for metric in CHECKED:
                assert families[metric].counters == expected[metric], metric
        # The kills did force takeovers: the shards' fencing epochs went up.
        epochs = [int(client.get(keys.shard_owner(s) + ":epoch") or 0) for s in range(SHARDS)]
        assert sum(epochs) > SHARDS, epochs
        assert kills >= 6
        return ChaosResult(n, applied, unreplicated)
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(10)
        for em in emitters:
            em.close(1)


def test_the_aggregator_process_runs_the_owner_ingest(redis_url: str, namespace: str, tmp_path: Path) -> None:
    """``python -m aggregator run`` with ``LSM_INGEST=owner``: two processes share two shards,
    are ready, export exactly what was produced and their ownership; one killed with SIGKILL,
    the other takes its shard over and the totals stay exact."""
    keys = Keys(namespace, SHARDS)
    env = {
        "LSM_SHARDS": str(SHARDS),
        "LSM_INGEST": "owner",
        "LSM_OWNER_LEASE_SECONDS": "3",
        "LSM_CHECKPOINT_INTERVAL": "0.1",
    }
    procs = [AggregatorProcess(redis_url, namespace, f"agg-{i}", tmp_path, **env) for i in range(2)]
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    emitters = [Emitter(settings_for(redis_url, namespace, shards=SHARDS)) for _ in range(4)]
    try:
        for p in procs:
            wait_for(lambda p=p: p.get("/readyz")[0] == 200, 30, what=f"{p.log_path.name} ready")

        def produce(start: int, stop: int) -> None:
            for i in range(start, stop):
                assert emitters[i % len(emitters)].offer(encode_event(synthetic_event(i)))

        def exported() -> dict[str, float]:
            for p in procs:
                if p.process.poll() is not None:
                    continue
                code, body = p.get("/metrics", token=True)
                if code == 200 and "litellm_requests_metric" in body:
                    out: dict[str, float] = {}
                    for family in text_string_to_metric_families(body):
                        for s in family.samples:
                            if family.name == "litellm_requests_metric" and s.name.endswith("_total"):
                                out["requests"] = out.get("requests", 0.0) + s.value
                            if family.name == "lsm_shard_owner":
                                out["owned"] = out.get("owned", 0.0) + s.value
                    return out
            return {}

        produce(0, 4000)
        wait_for(lambda: exported().get("requests") == 4000, 30, what="4,000 requests exported")
        # Every shard has one owner, across the two processes.
        owned = sum(
            float(s.value)
            for p in procs
            for family in text_string_to_metric_families(p.get("/metrics", token=True)[1])
            if family.name == "lsm_shard_owner"
            for s in family.samples
        )
        assert owned == SHARDS
        procs[0].process.send_signal(signal.SIGKILL)
        procs[0].process.wait(10)
        produce(4000, 8000)
        for em in emitters:
            assert em.close(10)
        wait_for(lambda: exported().get("requests") == 8000, 60, what="8,000 requests exported after the kill")
        assert procs[1].get("/healthz")[0] == 200
        stats = [{k.decode(): int(v) for k, v in client.hgetall(keys.shard_stats(s)).items()} for s in range(SHARDS)]
        assert sum(s.get("events_applied", 0) for s in stats) == 8000, stats
        assert "Traceback" not in procs[1].log(), procs[1].log()[-3000:]
    finally:
        for p in procs:
            p.stop()
        for em in emitters:
            em.close(1)
        client.close()


@pytest.mark.parametrize("max_fields", [3000, 1000])
async def test_a_backlog_read_at_once_is_committed_in_bounded_checkpoints(
    redis_url: str, namespace: str, max_fields: int
) -> None:
    """A backlog waits before the owner starts: 50 entries of one caller identity (the owner
    learns that an event changes few fields), then 100 entries of 100 events of new
    identities (~1,300 changed fields each), all returned by one read. The owner applies the
    read in parts and checkpoints between them; when a part changes more fields than its
    projection said, it starts again from the last checkpoint with smaller parts. With a
    bound of 3,000 fields no checkpoint exceeds it; with 1,000, below what one entry changes,
    each checkpoint holds one entry (an entry cannot be split). Every total is exact."""
    keys = Keys(namespace, 1)
    sync = redis.Redis.from_url(redis_url)
    one_identity = [4000 * k for k in range(5000)]  # combo(i) == (0, 0) for all of them
    many = list(range(10_000))
    seq = 0
    for numbers, size in ((one_identity, 100), (many, 100)):
        for start in range(0, len(numbers), size):
            seq += 1
            events = [synthetic_event(i) for i in numbers[start : start + size]]
            sync.xadd(keys.stream(0), entry_fields("backlog", seq, events))  # type: ignore[arg-type]
    settings = AggregatorSettings(redis_url=redis_url, namespace=namespace, consumer_name="backlog", read_count=200)
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    limits = build_limits(engine.schema, settings.max_series_per_metric)
    client = open_async(settings)
    owners = Owners(
        client,
        settings,
        engine.build_delta,
        lambda shard: state_keys(engine.schema, keys, shard, limits),
        limits,
        lease_seconds=5.0,
        checkpoint_interval=0.1,
        max_fields=max_fields,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(owners.run(stop))
    try:
        last = sync.xinfo_stream(keys.stream(0))["last-generated-id"]  # type: ignore[index]
        deadline = time.monotonic() + 120
        while sync.hget(keys.checkpoint(0), "position") != last:
            assert time.monotonic() < deadline, "the backlog was not checkpointed within 120 s"
            assert not task.done(), task
            await asyncio.sleep(0.1)
        counters = owners.owners[0].counters
        assert counters.entries_read >= seq
        assert counters.overfull >= 1, counters  # the projection from the one-identity entries was wrong once
        if max_fields == 3000:
            assert 0 < counters.checkpoint_fields_max <= max_fields, counters
        else:
            assert max_fields < counters.checkpoint_fields_max <= 1500, counters  # one entry each
            assert counters.checkpoints >= 100
    finally:
        stop.set()
        await task
        await client.aclose()
    families = read_families(sync, keys, engine.schema)
    expected = expected_totals(one_identity + many, engine)
    for metric in CHECKED:
        assert families[metric].counters == expected[metric], metric
    assert int(sync.hget(keys.shard_stats(0), "events_applied") or 0) == len(one_identity) + len(many)
    sync.close()


def test_the_owner_process_counts_lost_entries_and_a_killed_producers_events(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """``aggregator run`` with ``LSM_INGEST=owner`` keeps house as the group ingest does: a
    producer's sequence numbers that never reached the stream are counted lost (in the shard's
    stats and per producer), and a producer SIGKILLed with events in its buffer has them
    counted once as lost at an unclean exit."""
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    proc, killed = _start_holding_producer(redis_url, namespace, 30)
    agg = AggregatorProcess(
        redis_url,
        namespace,
        "owner-keeper",
        tmp_path,
        LSM_INGEST="owner",
        LSM_OWNER_LEASE_SECONDS="3",
        LSM_PRODUCER_GONE_SECONDS="1",
    )
    try:
        wait_for(lambda: producer_stats(client, namespace, killed).get("events_accepted") == "30", 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for seq in (1, 2, 3, 6, 7):  # 4 and 5 never reach the stream
            client.xadd(keys.stream(0), entry_fields("gappy", seq, [synthetic_event(seq)]))  # type: ignore[arg-type]

        def stats() -> dict[str, int]:
            return {k.decode(): int(v) for k, v in client.hgetall(keys.shard_stats(0)).items()}

        wait_for(lambda: stats().get("lost_entries") == 2, 30, what=f"lost entries counted ({agg.log()[-1500:]})")
        assert client.hget(keys.lost_by_producer(0), "gappy") == b"2"
        assert client.hget(keys.high_water_marks(0), "gappy") == b"7"
        wait_for(lambda: stats().get("events_lost_unclean_exit") == 30, 30, what=f"unclean exit ({agg.log()[-1500:]})")
        assert stats()["producer_exits_unclean"] == 1 and stats()["events_applied"] == 5
        assert "Traceback" not in agg.log()
        # The consumer group follows the checkpoints: no lag, and status reads as for the group ingest.
        (group,) = client.xinfo_groups(keys.stream(0))
        assert group["last-delivered-id"] == client.xinfo_stream(keys.stream(0))["last-generated-id"]
        env = {**os.environ, "LSM_REDIS_URL": redis_url, "LSM_NAMESPACE": namespace, "LSM_INGEST": "owner"}
        command = [sys.executable, "-m", "aggregator", "status"]
        report = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert "shard 0: stream" in report.stdout and "owner owner-keeper, last checkpoint" in report.stdout
        assert "no problems" in report.stdout and report.returncode == 0, report.stdout
        assert "lost_entries = 2" in report.stdout, report.stdout  # a warning, not a problem
        agg.stop()
        report = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert "shard 0: no aggregator owns the shard" in report.stdout and report.returncode == 1, report.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
        agg.stop()
        client.close()
