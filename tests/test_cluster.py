"""A real Redis Cluster (3 masters, 3 replicas) started by the test harness
(aggregator/local_cluster.py): it forms, a killed master's replica takes over, and a shard's
batch is applied exactly once by the apply script through redis-py's cluster client (every key
of the script in the shard's slot: the client refuses a script whose keys span slots)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot

from aggregator.apply import PendingEntry, ShardApplier
from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.local_cluster import LocalCluster
from aggregator.snapshot import read_families
from aggregator.state import Delta
from producer.emitter import Emitter
from producer.keys import Keys
from producer.wire import decode_entry, encode_event
from tests.events import entry_fields
from tests.support import settings_for, wait_for
from tests.test_aggregator_crash import synthetic_event
from tests.test_owner import run_chaos
from tests.test_state_reset import ROOT, AggregatorProcess

GROUP = "aggregators"

pytestmark = [pytest.mark.fault, pytest.mark.slow]  # a six-node cluster, real processes


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1, node_timeout_ms=1000) as c:
        yield c


def count_events(entries: Sequence[PendingEntry]) -> Delta:
    d = Delta()
    for e in entries:
        for _ in e.events:
            d.inc("events:0", f'["{e.producer_id}"]', 1.0)
    return d


def test_the_cluster_serves_every_slot(cluster: LocalCluster) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
    try:
        for i in range(300):
            client.set(f"lsmtest-cluster:{i}", i)
        assert sum(int(client.get(f"lsmtest-cluster:{i}") or 0) for i in range(300)) == sum(range(300))
        # Three masters, each with a third of the slots, each with its replica in sync.
        assert len({cluster.master_of_slot(key_slot(f"lsmtest-cluster:{i}".encode())).port for i in range(300)}) == 3
        assert cluster.healthy()
    finally:
        client.close()


def test_a_shards_keys_share_one_slot() -> None:
    keys = Keys("lsm", 4)
    for shard in range(4):
        slot = key_slot(f"{{s{shard}}}".encode())
        shard_keys = [
            keys.stream(shard),
            keys.dead_letters(shard),
            keys.shard_stats(shard),
            keys.applied_by_producer(shard),
            keys.high_water_marks(shard),
            keys.seen_above_mark(shard, "p1"),
            keys.metric(shard, "c", "x:0"),
            keys.shard_state(shard),
            keys.shard_owner(shard),
            keys.shard_owner(shard) + ":epoch",
        ]
        assert {key_slot(k.encode()) for k in shard_keys} == {slot}, shard


async def test_the_apply_script_runs_on_the_cluster_and_survives_a_failover(cluster: LocalCluster) -> None:
    keys = Keys("lsmtest-cluster-apply")
    sync = RedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
    client = AsyncRedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
    stream = keys.stream(0)
    try:
        sync.xgroup_create(stream, GROUP, id="0", mkstream=True)
        applier = ShardApplier(client, keys, 0, GROUP, "c1")  # type: ignore[arg-type]

        def write(seqs: range) -> None:
            for seq in seqs:
                sync.xadd(stream, entry_fields("p1", seq, [{"kind": "x", "t": 0}] * 3))  # type: ignore[arg-type]

        async def apply_new() -> int:
            raw = await client.xreadgroup(GROUP, "c1", {stream: ">"}, count=100)
            batch = []
            for entry_id, fields in raw[0][1]:
                e = decode_entry(fields)
                batch.append(PendingEntry(entry_id.decode(), e.producer_id, e.seq, e.events))
            result = await applier.apply(batch, [], count_events, time.time())
            return result.applied_events

        write(range(1, 11))
        assert await apply_new() == 30
        total = sync.hget(keys.metric(0, "c", "events:0"), '["p1"]')
        assert total == b"30"
        # The shard's master dies; its replica takes over; the next batch goes to the new master.
        index = cluster.masters.index(cluster.master_of_slot(key_slot(b"{s0}")))
        new = cluster.kill_master(index)
        assert cluster.master_of_slot(key_slot(b"{s0}")) is new
        # Clients find the new master by themselves (MOVED, then a refreshed slot map).
        write(range(11, 21))
        assert await apply_new() == 30
        # Everything the killed master had written reached its replica before the kill
        # (kill_master waits for that), so the shard's total is exact: 60.
        assert sync.hget(keys.metric(0, "c", "events:0"), '["p1"]') == b"60"
        assert sync.hget(keys.high_water_marks(0), "p1") == b"20"
    finally:
        await client.aclose()
        sync.close()


def test_a_real_aggregator_runs_on_the_cluster(cluster: LocalCluster, tmp_path: Path) -> None:
    """``python -m aggregator run`` against one node of the cluster (cluster mode asked of the
    server): entries of three shards, spread over the masters, are applied exactly once and
    exported on /metrics; ``status`` reads the cluster too. (With LSM_REDIS_CLUSTER=false the
    same run fails: the shards on other nodes answer MOVED.)"""
    namespace = "lsmtest-cluster-run"
    keys = Keys(namespace, 3)
    writer = RedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
    agg = AggregatorProcess(cluster.url, namespace, "agg-cluster", tmp_path, LSM_SHARDS="3")
    try:
        expected = 0
        for shard in range(3):
            for seq in range(1, 6):
                events = [synthetic_event(shard * 1000 + seq * 10 + i) for i in range(4)]
                writer.xadd(keys.stream(shard), entry_fields(f"p{shard}", seq, events))  # type: ignore[arg-type]
                expected += 4
        assert len({cluster.master_of_slot(key_slot(f"{{s{s}}}".encode())).port for s in range(3)}) >= 2

        def applied() -> int:
            return sum(int(writer.hget(keys.shard_stats(s), "events_applied") or 0) for s in range(3))

        wait_for(lambda: applied() == expected, 30, what=f"{expected} events applied ({agg.log()[-2000:]})")

        def requests_exported() -> float | None:
            code, body = agg.get("/metrics", token=True)
            if code != 200:
                return None
            for family in text_string_to_metric_families(body):
                if family.name == "litellm_requests_metric":
                    return sum(s.value for s in family.samples if s.name.endswith("_total"))
            return None

        wait_for(lambda: requests_exported() == expected, 30, what="the leader exporting every request")
        env = {**os.environ, "LSM_REDIS_URL": cluster.url, "LSM_NAMESPACE": namespace, "LSM_SHARDS": "3"}
        command = [sys.executable, "-m", "aggregator", "status"]
        status = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in status.stderr, status.stderr
        assert status.stdout.count("applied 20 events in 5 entries") == 3, status.stdout
        # Which master serves each shard.
        for shard in range(3):
            master = cluster.master_of_slot(key_slot(f"{{s{shard}}}".encode()))
            assert f"shard {shard} on 127.0.0.1:{master.port}:" in status.stdout, status.stdout
        assert "no problems" in status.stdout and status.returncode == 0, status.stdout
        assert "MOVED" not in agg.log() and "CROSSSLOT" not in agg.log(), agg.log()
    finally:
        agg.stop()
        writer.close()


def test_producers_write_to_the_cluster_and_follow_a_failover(cluster: LocalCluster) -> None:
    """Real producers (``Emitter``) on three shards write through a 3-master cluster (cluster
    mode asked of the server): every event arrives once. Then the master serving one shard is
    killed; its producer's writes fail until the replica has taken over, then go on, and
    nothing is lost (the replicas were in sync at the kill) or counted twice."""
    namespace = "lsmtest-cluster-producers"
    reader = RedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
    emitters = [Emitter(settings_for(cluster.url, namespace, shards=3)) for _ in range(6)]
    keys = Keys(namespace, 3)
    try:
        shards = {keys.shard_for_producer(em.producer_id) for em in emitters}
        for i in range(50):
            for em in emitters:
                assert em.offer(encode_event({"kind": "x", "t": 0, "i": i}))
        wait_for(lambda: all(em.counters.sent == 50 for em in emitters), 20, what="first events sent")
        # One shard's master dies.
        victim = emitters[0]
        slot = key_slot(keys.stream(keys.shard_for_producer(victim.producer_id)).encode())
        cluster.kill_master(cluster.masters.index(cluster.master_of_slot(slot)))
        for i in range(50, 100):
            for em in emitters:
                assert em.offer(encode_event({"kind": "x", "t": 0, "i": i}))
        wait_for(lambda: all(em.counters.sent == 100 for em in emitters), 30, what="all events sent")
        assert victim.counters.flush_errors > 0  # it did write to the dead master first
        for em in emitters:
            assert em.close(5)
        got: dict[str, list[int]] = {em.producer_id: [] for em in emitters}
        seen: set[tuple[str, int]] = set()
        for shard in shards:
            for _id, fields in reader.xrange(keys.stream(shard)):
                entry = decode_entry(fields)
                if (entry.producer_id, entry.seq) not in seen:
                    seen.add((entry.producer_id, entry.seq))
                    got[entry.producer_id] += [e["i"] for e in entry.events]
        assert all(sorted(v) == list(range(100)) for v in got.values()), {k: len(v) for k, v in got.items()}
        # Each producer's counters and registry entry are on the cluster too.
        for em in emitters:
            assert reader.hget(keys.producer_stats(em.producer_id), "events_sent") == b"100"
        assert reader.zcard(keys.producer_registry()) == len(emitters)
    finally:
        for em in emitters:
            em.close(1)
        reader.close()


def test_spread_shards_moves_crowded_shards_apart_while_traffic_flows(cluster: LocalCluster, tmp_path: Path) -> None:
    """Six shards on three evenly split masters: four hash to one master. ``status`` says so;
    ``spread-shards --dry-run`` only prints the moves; ``spread-shards`` migrates the slots while
    entries are written and applied; afterwards every master serves two shards, ``status`` is
    quiet, and every event is applied exactly once."""
    namespace = "lsmtest-cluster-spread"
    keys = Keys(namespace, 6)
    writer = RedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
    agg = AggregatorProcess(cluster.url, namespace, "agg-spread", tmp_path, LSM_SHARDS="6")
    env = {**os.environ, "LSM_REDIS_URL": cluster.url, "LSM_NAMESPACE": namespace, "LSM_SHARDS": "6"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "aggregator", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def masters_of_shards() -> list[int]:
        return [cluster.master_of_slot(key_slot(f"{{s{s}}}".encode())).port for s in range(6)]

    per_shard = 60
    try:
        crowded_before = max(masters_of_shards().count(p) for p in set(masters_of_shards()))
        assert crowded_before >= 3, masters_of_shards()
        assert "spread-shards moves them apart" in cli("status").stdout
        dry = cli("spread-shards", "--dry-run")
        assert dry.returncode == 0 and "would move shard" in dry.stdout and "dry run" in dry.stdout, dry.stdout
        assert max(masters_of_shards().count(p) for p in set(masters_of_shards())) == crowded_before

        def produce() -> None:
            for seq in range(1, per_shard + 1):
                for shard in range(6):
                    events = [synthetic_event(shard * 10_000 + seq * 10 + i) for i in range(4)]
                    writer.xadd(keys.stream(shard), entry_fields(f"p{shard}", seq, events))  # type: ignore[arg-type]
                time.sleep(0.03)

        traffic = threading.Thread(target=produce)
        traffic.start()
        done = cli("spread-shards")
        traffic.join()
        assert done.returncode == 0 and "moving shard" in done.stdout, done.stdout + done.stderr
        ports = masters_of_shards()
        assert sorted(ports.count(p) for p in set(ports)) == [2, 2, 2], ports
        expected = 6 * per_shard * 4

        def applied() -> int:
            return sum(int(writer.hget(keys.shard_stats(s), "events_applied") or 0) for s in range(6))

        wait_for(lambda: applied() == expected, 60, what=f"{expected} events applied ({agg.log()[-1500:]})")
        engine = Engine(MetricsConfig.from_litellm_settings({}))
        families = read_families(writer, keys, engine.schema)  # type: ignore[arg-type]
        assert sum(families["litellm_requests_metric"].counters.values()) == expected
        after = cli("status")
        assert "spread-shards" not in after.stdout, after.stdout
        again = cli("spread-shards")
        assert "already spread evenly" in again.stdout, again.stdout
    finally:
        agg.stop()
        writer.close()


def test_a_shard_moves_to_another_master_while_traffic_flows(cluster: LocalCluster, tmp_path: Path) -> None:
    """``reshard`` of shard 0's slot to another master while a producer writes and an aggregator
    applies: both meet ASK and MOVED replies, and every event is applied exactly once."""
    namespace = "lsmtest-cluster-reshard"
    keys = Keys(namespace)
    reader = RedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
    emitter = Emitter(settings_for(cluster.url, namespace))
    agg = AggregatorProcess(cluster.url, namespace, "agg-reshard", tmp_path)
    slot = key_slot(b"{s0}")
    migrated = threading.Event()
    produced: list[int] = []
    try:

        def produce() -> None:
            # Until the slot has moved, and 300 events after (they meet MOVED), paced.
            i = after = 0
            while after < 300:
                assert emitter.offer(encode_event(synthetic_event(i)))
                i += 1
                after += migrated.is_set()
                if i % 50 == 0:
                    time.sleep(0.06)
            produced.append(i)

        writer = threading.Thread(target=produce)
        writer.start()
        wait_for(lambda: int(reader.hget(keys.shard_stats(0), "events_applied") or 0) > 200, 30, what="traffic")
        source = cluster.master_of_slot(slot)
        target = next(m for m in cluster.masters if m is not source)
        cluster.move_slot(slot, target, keys_per_step=1, pause=0.05)
        migrated.set()
        assert cluster.master_of_slot(slot) is target
        writer.join()
        (n,) = produced
        assert emitter.close(10) and emitter.counters.sent == n
        # The producer did meet the migration (ASK or MOVED on its stream), and went on.
        assert emitter.counters.flush_errors > 0, emitter.counters

        def applied() -> int:
            return int(reader.hget(keys.shard_stats(0), "events_applied") or 0)

        deadline = time.monotonic() + 60
        while applied() != n:
            stats = {k.decode(): v.decode() for k, v in reader.hgetall(keys.shard_stats(0)).items()}
            assert time.monotonic() < deadline, f"{n} events produced, shard stats {stats}\n{agg.log()[-3000:]}"
            time.sleep(0.05)
        engine = Engine(MetricsConfig.from_litellm_settings({}))
        families = read_families(reader, keys, engine.schema)  # type: ignore[arg-type]
        assert sum(families["litellm_requests_metric"].counters.values()) == n
        stats = {k.decode(): int(float(v)) for k, v in reader.hgetall(keys.shard_stats(0)).items()}
        assert not {k: v for k, v in stats.items() if k.startswith(("dead_", "lost_"))}, stats
    finally:
        agg.stop()
        emitter.close(1)
        reader.close()


def test_a_producer_waiting_for_replicas_counts_what_they_did_not_confirm(tmp_path: Path) -> None:
    """``LSM_WAIT_REPLICAS=1``: while the replica runs, every write is confirmed (nothing counted
    unreplicated); with the replica gone, writes still land on the master, each after the WAIT
    timeout, and exactly their events are counted as unreplicated, in the producer's counters
    and in ``status``."""
    namespace = "lsmtest-cluster-wait"
    with LocalCluster(masters=1, replicas=1, node_timeout_ms=1000) as small:
        emitter = Emitter(settings_for(small.url, namespace, wait_replicas=1, wait_timeout=0.2))
        reader = RedisCluster(host="127.0.0.1", port=small.masters[0].port)
        try:
            for i in range(100):
                assert emitter.offer(encode_event({"kind": "x", "t": 0, "i": i}))
            wait_for(lambda: emitter.counters.sent == 100, 20, what="first events sent")
            assert emitter.counters.unreplicated == 0
            small.replica_groups[0][0].close()  # the replica is gone; the master stays
            for i in range(100, 150):
                assert emitter.offer(encode_event({"kind": "x", "t": 0, "i": i}))
            wait_for(lambda: emitter.counters.sent == 150, 30, what="events sent without the replica")
            assert emitter.counters.unreplicated == 50, emitter.counters
            assert emitter.counters.flush_errors == 0
            assert emitter.close(5)
            stats = reader.hgetall(Keys(namespace).producer_stats(emitter.producer_id))
            assert stats[b"events_unreplicated"] == b"50"
            env = {**os.environ, "LSM_REDIS_URL": small.url, "LSM_NAMESPACE": namespace}
            done = subprocess.run(
                [sys.executable, "-m", "aggregator", "status"], cwd=ROOT, env=env, capture_output=True, text=True
            )
            assert "50 events written while fewer than LSM_WAIT_REPLICAS replicas confirmed them" in done.stdout
        finally:
            emitter.close(1)
            reader.close()


def test_owners_killed_at_random_on_the_cluster_with_a_master_failover_midway(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The owner chaos run of tests/test_owner.py (owners SIGKILLed every 0.3-0.9 s, 20,000
    events by default, LSM_OWNER_CHAOS_EVENTS for more) on the cluster, and halfway through the
    master serving shard 0 is SIGKILLed without waiting for its replica to catch up. The
    producers wait for one replica per write (LSM_WAIT_REPLICAS=1): a write the dead master
    acknowledged but had not replicated fails its WAIT and is written again to the promoted
    replica, so nothing is lost; a write whose WAIT merely timed out is counted unreplicated,
    and the run accepts a loss of at most those events. The owners' checkpoints that the
    replica had not received are refused to nobody: the stored checkpoint is older than the
    owner's, its next commit is fenced, and the new owner re-reads from the older position."""
    namespace = "lsmtest-cluster-chaos"
    client = RedisCluster(host="127.0.0.1", port=cluster.masters[0].port, socket_timeout=10)
    slot = key_slot(b"{s0}")
    failed_over: list[int] = []

    def failover() -> None:
        index = cluster.masters.index(cluster.master_of_slot(slot))
        failed_over.append(cluster.kill_master(index, synced=False).port)

    n = int(os.environ.get("LSM_OWNER_CHAOS_EVENTS", "20000"))
    try:
        result = run_chaos(
            cluster.url, client, namespace, tmp_path, n, midway=failover, wait_replicas=1, wait_timeout=0.4
        )
        assert failed_over and cluster.master_of_slot(slot).port == failed_over[0]
        print(f"cluster chaos: {result}")
    finally:
        client.close()


def test_the_shipped_users_run_the_pipeline_on_a_cluster_while_a_slot_moves(tmp_path: Path) -> None:
    """deploy/redis/users.acl's users, set on every node of a 2-master cluster: a producer as
    ``lsm-proxy`` (cluster mode set, as the proxy user may not run INFO) and an aggregator as
    ``lsm-aggregator`` (cluster mode asked of the server) run while shard 0's slot moves to the
    other master, so both meet ASK replies (``ASKING``); no permission error, every event
    applied once."""
    namespace = "lsm"  # the users' key patterns
    passwords = {"lsm-proxy": "proxy-cluster-pw-1", "lsm-aggregator": "aggregator-cluster-pw-2"}
    lines = [line.split() for line in (ROOT / "deploy/redis/users.acl").read_text().splitlines()]
    with LocalCluster(masters=2, replicas=0) as small:
        for node in small.nodes:
            for _user, name, *rules in lines:
                if name in passwords:
                    rules = [f">{passwords[name]}" if r.startswith(">") else r for r in rules]
                    small.command(node, "ACL", "SETUSER", name, *rules)
        port = small.masters[0].port
        proxy_url = f"redis://lsm-proxy:{passwords['lsm-proxy']}@127.0.0.1:{port}/0"
        aggregator_url = f"redis://lsm-aggregator:{passwords['lsm-aggregator']}@127.0.0.1:{port}/0"
        emitter = Emitter(settings_for(proxy_url, namespace, redis_cluster=True, wait_replicas=0))
        agg = AggregatorProcess(aggregator_url, namespace, "agg-acl", tmp_path)
        reader = RedisCluster(host="127.0.0.1", port=port)
        slot = key_slot(b"{s0}")
        n = 1500
        try:

            def produce() -> None:
                for i in range(n):
                    assert emitter.offer(encode_event(synthetic_event(i)))
                    if i % 50 == 0:
                        time.sleep(0.05)

            traffic = threading.Thread(target=produce)
            traffic.start()
            wait_for(lambda: int(reader.hget(Keys(namespace).shard_stats(0), "events_applied") or 0) > 100, 30)
            source = small.master_of_slot(slot)
            small.move_slot(slot, next(m for m in small.masters if m is not source), keys_per_step=1, pause=0.05)
            traffic.join()
            assert emitter.close(10) and emitter.counters.sent == n

            def applied() -> int:
                return int(reader.hget(Keys(namespace).shard_stats(0), "events_applied") or 0)

            wait_for(lambda: applied() == n, 60, what=f"{n} events applied ({agg.log()[-1500:]})")
            assert "NOPERM" not in agg.log() and "NOPERM" not in emitter.counters.last_error, agg.log()
            env = {**os.environ, "LSM_REDIS_URL": aggregator_url, "LSM_NAMESPACE": namespace}
            status = subprocess.run(
                [sys.executable, "-m", "aggregator", "status"], cwd=ROOT, env=env, capture_output=True, text=True
            )
            assert status.returncode in (0, 1) and "NOPERM" not in status.stdout + status.stderr, status.stderr
            assert f"shard 0 on 127.0.0.1:{small.master_of_slot(slot).port}" in status.stdout, status.stdout
        finally:
            agg.stop()
            emitter.close(1)
            reader.close()


def test_the_quick_start_runs_on_a_cluster(cluster: LocalCluster) -> None:
    """``python -m aggregator.quickstart`` given a cluster node's URL: the producer (the traffic
    generator) and the aggregator talk to the cluster, the quick start's own reads and its
    clean-up too (a throwaway namespace's keys, spread over the masters, deleted at the end)."""
    env = {**os.environ, "LSM_REDIS_URL": cluster.url, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("LSM_NAMESPACE", None)
    command = [sys.executable, "-m", "aggregator.quickstart", "--seconds", "6", "--interval", "2", "--fresh"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in out, out[-3000:]
    final = next(line for line in out.splitlines() if "final: events sent" in line)
    sent, applied = (int(x.replace(",", "")) for x in re.findall(r"(?:sent|applied) ([\d,]+)", final))
    assert sent > 0 and applied == sent, final
    namespace = re.findall(r"keys of this run's namespace (\S+)", out)[-1]
    reader = RedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
    try:
        assert next(reader.scan_iter(match=f"{namespace}:*"), None) is None
    finally:
        reader.close()
