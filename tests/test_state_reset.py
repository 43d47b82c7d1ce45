"""Redis restarted empty (no persistence, or a new instance) under running aggregators.

Everything a shard held is gone: the consumer group, the totals, the producers' sequence
bookkeeping (high-water marks, seen sets), the leases. The producer recovers by itself and its
sequence numbers go on where they were (e.g. at 500, even beyond LSM_MAX_SEQ_JUMP). The
aggregators must recreate the group and the shard's state while running, apply every event
written after the restart exactly once, count the reset once (``state_resets``), and neither
declare the producer's earlier sequence numbers lost nor take its later ones for duplicates.

Also /healthz (liveness): it fails when a consumer is stuck for a reason a restart may fix, and
never because Redis is down.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from aggregator.apply import PendingEntry
from aggregator.consumer import ShardConsumer
from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.local_server import LocalServer, free_port
from aggregator.settings import AggregatorSettings
from aggregator.snapshot import read_families
from aggregator.state import Delta
from producer.emitter import Emitter
from producer.keys import Keys
from producer.wire import encode_event
from tests.events import entry_fields
from tests.support import settings_for, wait_for
from tests.test_aggregator_crash import synthetic_event

pytestmark = [pytest.mark.fault]

ROOT = Path(__file__).resolve().parent.parent
GROUP = "aggregators"
TOKEN = "reset-test-token"


# -- real aggregator processes -------------------------------------------------------------------


class AggregatorProcess:
    """``python -m aggregator run`` with its own HTTP port and log file."""

    def __init__(self, url: str, namespace: str, name: str, logdir: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = logdir / f"{name}.log"
        full = dict(os.environ)
        full.update(
            LSM_REDIS_URL=url,
            LSM_NAMESPACE=namespace,
            LSM_CONSUMER_NAME=name,
            LSM_HTTP_HOST="127.0.0.1",
            LSM_HTTP_PORT=str(self.port),
            LSM_METRICS_BEARER_TOKEN=TOKEN,
            LSM_BLOCK_SECONDS="0.2",
            LSM_SOCKET_TIMEOUT="2",
            LSM_CONNECT_TIMEOUT="0.5",
            LSM_HOUSEKEEPING_INTERVAL="0.5",
            LSM_CLAIM_INTERVAL="0.5",
            LSM_CLAIM_MIN_IDLE="3",
            LSM_LEADER_LEASE_SECONDS="2",
            LSM_RENDER_CACHE_SECONDS="0",
            LSM_LOG_LEVEL="INFO",
        )
        full.update(env)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aggregator", "run"],
                cwd=ROOT,
                env=full,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def get(self, path: str, token: bool = False) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:  # not listening yet
            return 0, str(e)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[list[AggregatorProcess]]:
    procs: list[AggregatorProcess] = []
    yield procs
    for p in procs:
        p.stop()


def shard_stat(families: Any, stat: str) -> float | None:
    for fam in families:
        if fam.name == "lsm_shard_stat":
            for s in fam.samples:
                if s.labels.get("stat") == stat and s.name == "lsm_shard_stat_total":
                    return float(s.value)
    return None


def group_of(client: redis.Redis, stream: str) -> dict[str, Any] | None:
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    return next((dict(g) for g in groups if g["name"] == GROUP.encode()), None)


def drained(client: redis.Redis, stream: str) -> bool:
    g = group_of(client, stream)
    if g is None:
        return False
    last = client.xinfo_stream(stream)["last-generated-id"]  # type: ignore[index]
    return int(g["pending"]) == 0 and g["last-delivered-id"] == last


class Traffic:
    """A real producer (``Emitter``) fed synthetic success events from a thread."""

    def __init__(self, url: str, namespace: str) -> None:
        self.emitter = Emitter(settings_for(url, namespace, flush_interval=0.01, socket_timeout=0.3))
        self.offered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(5):
                assert self.emitter.offer(encode_event(synthetic_event(self.offered)))
                self.offered += 1
            time.sleep(0.005)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert self.emitter.close(), self.emitter.counters


@pytest.mark.parametrize("ingest", ["group", "owner"])
def test_aggregators_recover_from_redis_restarted_empty(
    private_server: LocalServer, fleet: list[AggregatorProcess], tmp_path: Path, ingest: str
) -> None:
    """With either ingest (``owner``: one process owns the shard, the other is a spare)."""
    namespace = "lsmreset"
    keys = Keys(namespace)
    stream = keys.stream(0)
    client = redis.Redis.from_url(private_server.url, socket_timeout=5)
    for name in ("agg-a", "agg-b"):
        # A jump limit below the producer's sequence at the restart: going on there is not suspect.
        env = {"LSM_MAX_SEQ_JUMP": "50", "LSM_INGEST": ingest, "LSM_OWNER_LEASE_SECONDS": "2"}
        fleet.append(AggregatorProcess(private_server.url, namespace, name, tmp_path, **env))
    traffic = Traffic(private_server.url, namespace)
    em = traffic.emitter
    try:
        traffic.start()
        # Before: a few hundred entries applied, so that the producer's sequence is well past 1.
        wait_for(lambda: int(client.hget(keys.shard_stats(0), "entries_applied") or 0) >= 300, 60, what="traffic")
        assert all(p.get("/healthz")[0] == 200 for p in fleet)

        private_server.kill()
        errors = em.counters.flush_errors
        # Once the writer has failed against the dead server, every write it confirmed went to
        # the old Redis (and is gone with it); what it had not confirmed it writes again later.
        wait_for(lambda: em.counters.flush_errors > errors, 10, what="the producer noticed the outage")
        sent_before, entries_before = em.counters.sent, em.counters.entries_sent
        time.sleep(0.5)
        private_server.start()  # no persistence: empty

        wait_for(lambda: int(client.hget(keys.shard_stats(0), "events_applied") or 0) > 0, 30, what="applying again")
        time.sleep(1.0)
        traffic.stop()
        sent = em.counters.sent
        sent_after = sent - sent_before
        assert sent_after > 0 and sum(em.counters.dropped.values()) == 0
        wait_for(lambda: drained(client, stream), 30, what="drained")
        # The producer's own report (absolute counters) against what the new state applied.
        pstats = {k.decode(): v.decode() for k, v in client.hgetall(keys.producer_stats(em.producer_id)).items()}
        assert int(pstats["events_sent"]) == sent
        stats = {k.decode(): int(float(v)) for k, v in client.hgetall(keys.shard_stats(0)).items()}
        assert int(client.hget(keys.applied_by_producer(0), em.producer_id) or 0) == sent_after, stats
        assert stats["events_applied"] == sent_after, stats
        engine = Engine(MetricsConfig.from_litellm_settings({}))
        families = read_families(client, keys, engine.schema)
        assert sum(families["litellm_requests_metric"].counters.values()) == sent_after
        # Counted once, though both aggregators saw it; nothing declared lost or duplicate: the
        # sequence numbers the producer wrote before the restart are accounted as such.
        assert stats["state_resets"] == 1, stats
        assert stats.get("entries_before_reset") == entries_before, (stats, entries_before)
        assert not {k: v for k, v in stats.items() if k.startswith(("lost_", "dead_"))}, stats
        assert stats.get("duplicate_entries", 0) == 0, stats
        assert client.hget(keys.lost_by_producer(0), em.producer_id) is None
        assert int(client.hget(keys.high_water_marks(0), em.producer_id) or 0) == em.counters.entries_sent

        # Every process is ready and alive again; the reset is logged once, at WARNING.
        for p in fleet:
            wait_for(lambda p=p: p.get("/readyz")[0] == 200, 20, what=f"{p.log_path.name} ready")
            assert p.get("/healthz")[0] == 200
        warnings = [line for p in fleet for line in p.log().splitlines() if "WARNING" in line and "was reset" in line]
        assert len(warnings) == 1, [p.log()[-3000:] for p in fleet]
        assert sum(p.log().count("NOGROUP") for p in fleet) <= 2 * len(fleet)
        # The leader exports the reset, and a group lag of 0 (everything delivered).
        leader_metrics: list[Any] = []

        def exported() -> bool:
            for p in fleet:
                code, body = p.get("/metrics", token=True)
                if code == 200 and "lsm_shard_stat_total" in body:
                    leader_metrics[:] = list(text_string_to_metric_families(body))
                    return True
            return False

        wait_for(exported, 20, what="a leader exporting the shared metrics")
        assert shard_stat(leader_metrics, "state_resets") == 1.0
        lag = [s.value for f in leader_metrics if f.name == "lsm_group_lag" for s in f.samples]
        assert lag == [0.0]
    finally:
        traffic._stop.set()
        client.close()


# -- the sequence bookkeeping across a reset, step by step ----------------------------------------


def count_events(entries: Sequence[PendingEntry]) -> Delta:
    d = Delta()
    for e in entries:
        for ev in e.events:
            d.inc("events:0", f'["{e.producer_id}"]', float(ev["n"]))
    return d


def xadd(client: redis.Redis, keys: Keys, producer: str, seq: int) -> str:
    fields = entry_fields(producer, seq, [{"kind": "x", "t": 0, "n": 1}])
    return client.xadd(keys.stream(0), fields).decode()  # type: ignore[arg-type]


async def test_sequences_after_a_reset_are_neither_lost_nor_duplicates(private_server: LocalServer) -> None:
    namespace = "lsmseq"
    keys = Keys(namespace)
    client = redis.Redis.from_url(private_server.url, socket_timeout=5)
    aclient = aioredis.Redis.from_url(private_server.url, socket_timeout=5)
    settings = AggregatorSettings(
        redis_url=private_server.url,
        namespace=namespace,
        consumer_name="c1",
        block_seconds=0.1,
        housekeeping_interval=0.1,
        socket_timeout=2,
        connect_timeout=0.5,
        max_seq_jump=100,  # p1 goes on at 500 after the reset: that must not be suspect
    )
    consumer = ShardConsumer(aclient, settings, 0, count_events)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    def applied() -> int:
        return int(client.hget(keys.shard_stats(0), "entries_applied") or 0)

    try:
        await asyncio.to_thread(wait_for, lambda: consumer.ready, 10)
        for seq in range(1, 4):
            xadd(client, keys, "p1", seq)
        await asyncio.to_thread(wait_for, lambda: applied() == 3, 10)
        assert client.hget(keys.high_water_marks(0), "p1") == b"3"

        private_server.restart()  # empty: no group, no marks, no stats
        # p1 goes on at 500 (its entries 4..499 were written before the restart); p2 is new.
        first = xadd(client, keys, "p1", 500)
        xadd(client, keys, "p1", 501)
        xadd(client, keys, "p2", 1)
        xadd(client, keys, "p1", 501)  # a retry whose reply was lost: a duplicate
        xadd(client, keys, "p2", 2)
        await asyncio.to_thread(wait_for, lambda: applied() == 4, 15, what="applied after the reset")
        await asyncio.to_thread(
            wait_for, lambda: client.hget(keys.high_water_marks(0), "p1") == b"501", 10, what="p1's mark"
        )
        stats = {k.decode(): int(float(v)) for k, v in client.hgetall(keys.shard_stats(0)).items()}
        assert "lost_entries" not in stats and client.hgetall(keys.lost_by_producer(0)) == {}, stats
        assert stats["state_resets"] == 1
        assert stats["entries_before_reset"] == 499
        assert stats["duplicate_entries"] == 1
        assert client.hget(keys.high_water_marks(0), "p2") == b"2"
        assert client.hgetall(keys.metric(0, "c", "events:0")) == {b'["p1"]': b"2", b'["p2"]': b"2"}
        assert consumer.counters.state_resets == 1
        assert first  # the new stream's entries were read from its start

        # A real loss after the reset is still a loss: p1's 502 removed before being read.
        fields = entry_fields("p1", 502, [{"kind": "x", "t": 0, "n": 1}])
        add_and_delete = "return redis.call('XDEL', KEYS[1], redis.call('XADD', KEYS[1], '*', unpack(ARGV)))"
        assert client.eval(add_and_delete, 1, keys.stream(0), *[x for kv in fields.items() for x in kv]) == 1
        xadd(client, keys, "p1", 503)
        await asyncio.to_thread(
            wait_for, lambda: client.hget(keys.high_water_marks(0), "p1") == b"503", 10, what="gap resolved"
        )
        assert client.hget(keys.shard_stats(0), "lost_entries") == b"1"
        assert client.hget(keys.lost_by_producer(0), "p1") == b"1"
        assert client.hget(keys.shard_stats(0), "entries_before_reset") == b"499"

        # Once p1 has a mark in the new state, the jump limit holds again.
        forged = xadd(client, keys, "p1", 503 + 101)
        xadd(client, keys, "p1", 504)
        await asyncio.to_thread(
            wait_for, lambda: client.hget(keys.high_water_marks(0), "p1") == b"504", 10, what="p1 goes on"
        )
        dead = client.xrange(keys.dead_letters(0))
        assert [(f[b"dead_entry_id"].decode(), f[b"dead_reason"]) for _, f in dead] == [(forged, b"suspect_sequence")]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await aclient.aclose()
        client.close()


async def test_first_start_is_not_a_reset(private_server: LocalServer) -> None:
    """A producer that ran before any aggregator and lost its first entries (a MAXLEN cap) is
    not a reset: those entries are lost, and state_resets stays 0."""
    namespace = "lsmfirst"
    keys = Keys(namespace)
    client = redis.Redis.from_url(private_server.url, socket_timeout=5)
    aclient = aioredis.Redis.from_url(private_server.url, socket_timeout=5)
    settings = AggregatorSettings(redis_url=private_server.url, namespace=namespace, consumer_name="c1")
    ids = [xadd(client, keys, "p1", seq) for seq in range(1, 6)]
    client.xdel(keys.stream(0), *ids[:2])
    consumer = ShardConsumer(aclient, settings, 0, count_events)
    try:
        await consumer.ensure_group()
        raw: Any = await aclient.xreadgroup(GROUP, "c1", {keys.stream(0): ">"}, count=10)
        await consumer.process(raw[0][1])
        assert await consumer.housekeeper.detect_lost() == 2
        stats = {k.decode(): int(float(v)) for k, v in client.hgetall(keys.shard_stats(0)).items()}
        assert stats["state_resets"] == 0 and stats["lost_entries"] == 2
        assert "entries_before_reset" not in stats
        # Checking again finds the same state: nothing counted.
        await consumer.ensure_group()
        assert client.hget(keys.shard_stats(0), "state_resets") == b"0"
    finally:
        await aclient.aclose()
        client.close()


# -- liveness ---------------------------------------------------------------------------------------


def test_healthz_fails_when_stuck_not_when_redis_is_down(
    private_server: LocalServer, fleet: list[AggregatorProcess], tmp_path: Path
) -> None:
    namespace = "lsmlive"
    keys = Keys(namespace)
    client = redis.Redis.from_url(private_server.url, socket_timeout=5)
    agg = AggregatorProcess(
        private_server.url, namespace, "live", tmp_path, LSM_LIVENESS_TIMEOUT="3", LSM_SOCKET_TIMEOUT="0.5"
    )
    fleet.append(agg)
    try:
        wait_for(lambda: agg.get("/readyz")[0] == 200, 20, what="ready")
        # A Redis outage longer than the liveness timeout: not ready, but alive throughout.
        private_server.kill()
        down_until = time.monotonic() + 6
        codes = set()
        while time.monotonic() < down_until:
            codes.add(agg.get("/healthz")[0])
            time.sleep(0.2)
        assert wait_for(lambda: agg.get("/readyz")[0] == 503, 5)
        assert codes == {200}, codes
        private_server.start()
        wait_for(lambda: agg.get("/readyz")[0] == 200, 20, what="ready after the outage")
        assert agg.get("/healthz")[0] == 200

        # Redis answers, but the consumer cannot make progress (its stream key holds a string):
        # after the liveness timeout /healthz says why, and recovers once the cause is gone.
        client.delete(keys.stream(0))
        client.set(keys.stream(0), "not a stream")
        _status, body = wait_for(lambda: (r := agg.get("/healthz"))[0] == 503 and r, 20, what="healthz failing")
        # The open endpoint names the shard only; the log says why.
        assert body.strip() == "stalled: shard 0", body
        assert wait_for(lambda: "not alive: shard 0" in agg.log(), 10)
        assert "WRONGTYPE" in agg.log() or "NOGROUP" in agg.log()
        client.delete(keys.stream(0))
        wait_for(lambda: agg.get("/healthz")[0] == 200, 20, what="healthz recovering")
        assert agg.process.poll() is None
    finally:
        client.close()
