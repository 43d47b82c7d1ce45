"""The owned shard's in-memory state (aggregator/shard_memory.py) follows apply.lua's rules
field for field: the same batches applied through the apply script (one namespace) and through
``ShardMemory`` written back as absolute values (another) leave the same state in Redis —
counters, histograms, gauges with their times and removals, series caps with their overflow and
drops, marks, seen sets, stats. And a successor that loads the written state goes on exactly as
the first owner would have. Real Redis."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from aggregator.apply import DeadEntry, PendingEntry, ShardApplier
from aggregator.housekeeping import Housekeeper
from aggregator.series_limits import Limit, MetricLimits, retire_idle
from aggregator.settings import AggregatorSettings
from aggregator.shard_memory import Changes, ShardMemory
from aggregator.state import Delta, encode_series
from producer.keys import Keys
from producer.wire import decode_entry
from tests.events import entry_fields

GROUP = "aggregators"
BOUNDS = (0.1, 1.0, 10.0)
MAX_JUMP = 1000
SHARDS = 2  # several shards: every gauge removal is recorded


def limits(ttl: float | None = None) -> dict[str, MetricLimits]:
    def one(name: str, kind: str, mkey: str, cap: int, parts: tuple[str, ...] = ()) -> MetricLimits:
        return MetricLimits(
            name, kind, mkey, encode_series(["other"]), Limit("ix", cap, ttl), None, None, histogram_parts=parts
        )

    parts = (*(f"b{i}" for i in range(len(BOUNDS) + 1)), "s", "c")
    return {
        "lc:0": one("lc", "counter", "lc:0", 3),
        "lh:0": one("lh", "histogram", "lh:0", 2, parts),
        "lg:0": one("lg", "gauge", "lg:0", 2),
    }


METRIC_HASHES = [("c", "c1:0"), ("c", "lc:0"), ("h", "h1:0"), ("h", "lh:0"), ("g", "g1:0"), ("gt", "g1:0")]
METRIC_HASHES += [("g", "lg:0"), ("gt", "lg:0"), ("ix", "lc:0"), ("ix", "lh:0"), ("ix", "lg:0")]


def entry_delta(rnd: random.Random, entry_id: str) -> Delta:
    """The updates of one entry: counters, histograms and gauges on limited and unlimited
    metrics, removals, a rejected event now and then."""
    d = Delta()

    def series() -> str:
        return encode_series([f"v{rnd.randrange(6)}"])

    for _ in range(rnd.randrange(1, 4)):
        d.inc("c1:0", series(), rnd.choice([1.0, 0.1, 2.5, 1e-7]))
        d.inc("lc:0", series(), rnd.choice([1.0, 0.3]))
        d.observe("h1:0", series(), BOUNDS, rnd.choice([0.05, 0.5, 5.0, 50.0]))
        d.observe("lh:0", series(), BOUNDS, rnd.choice([0.05, 5.0]))
        for mkey in ("g1:0", "lg:0"):
            value = None if rnd.random() < 0.2 else rnd.choice([1.0, 7.5, -2.0])
            d.set_gauge(mkey, series(), float(rnd.randrange(100)), value)
        # Exemplars: on series just updated, and on series that may not exist (overflowed).
        for kind, mkey in (("c", "c1:0"), ("c", "lc:0"), ("h", "h1:0"), ("h", "lh:0")):
            d.exemplar(kind, mkey, series(), float(rnd.randrange(100)), f"trace-{rnd.randrange(50)}", 0.5)
    d.count("events_applied_x", 1)
    if rnd.random() < 0.1:
        d.rejected[entry_id] = 1
        d.count("events_rejected_test", 1)
    return d


def merged(deltas: Sequence[Delta]) -> Delta:
    """Several entries' deltas as the engine would build them for one batch."""
    out = Delta()
    for d in deltas:
        for k, v in d.counters.items():
            out.counters[k] = out.counters.get(k, 0.0) + v
        for k, h in d.histograms.items():
            cur = out.histograms.get(k)
            if cur is None:
                out.histograms[k] = type(h)(list(h.buckets), h.total, h.count)
            else:
                cur.buckets = [a + b for a, b in zip(cur.buckets, h.buckets, strict=True)]
                cur.total += h.total
                cur.count += h.count
        for k, (t, value) in d.gauges.items():
            cur_g = out.gauges.get(k)
            if cur_g is None or t >= cur_g[0]:
                out.gauges[k] = (t, value)
        for (kind, mkey, s), (t, trace, value) in d.exemplars.items():
            out.exemplar(kind, mkey, s, t, trace, value)
        for stat, n in d.stats.items():
            out.count(stat, n)
        out.rejected.update(d.rejected)
    return out


def state(client: redis.Redis, keys: Keys, producers: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, mkey in METRIC_HASHES:
        out[f"{kind}:{mkey}"] = {k.decode(): float(v) for k, v in client.hgetall(keys.metric(0, kind, mkey)).items()}
    for mkey in ("c1:0", "lc:0", "h1:0", "lh:0"):
        out[f"x:{mkey}"] = {k.decode(): v.decode() for k, v in client.hgetall(keys.metric(0, "x", mkey)).items()}
    for name, key in (
        ("hwm", keys.high_water_marks(0)),
        ("stats", keys.shard_stats(0)),
        ("applied", keys.applied_by_producer(0)),
        ("lost", keys.lost_by_producer(0)),
    ):
        out[name] = {k.decode(): float(v) for k, v in client.hgetall(key).items()}
    for p in producers:
        out[f"seen:{p}"] = [
            (m.decode(), s) for m, s in client.zrange(keys.seen_above_mark(0, p), 0, -1, withscores=True)
        ]
    return out


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], dict):
            assert a[name].keys() == b[name].keys(), name
            for f in a[name]:
                if isinstance(a[name][f], str):  # an exemplar
                    assert a[name][f] == b[name][f], (name, f)
                    continue
                # Redis adds floats in long double: the last bits may differ from Python's.
                assert abs(a[name][f] - b[name][f]) <= 1e-12 * max(1.0, abs(a[name][f])), (name, f)
        else:
            assert a[name] == b[name], name


def write(client: redis.Redis, changes: Changes) -> None:
    pipe = client.pipeline(transaction=True)
    for key, values in changes.hset.items():
        pipe.hset(key, mapping=values)  # type: ignore[arg-type]
    for key, names in changes.hdel.items():
        pipe.hdel(key, *names)
    for key, members in changes.zadd.items():
        pipe.zadd(key, members)
    for key, members in changes.zrem.items():
        pipe.zrem(key, *members)
    for key, increments in changes.hincrby.items():
        for name, n in increments.items():
            pipe.hincrby(key, name, n)
    pipe.execute()


class Workload:
    """Batches of entries from three producers: in order, retried (duplicates, within a batch
    and across batches), a suspect sequence number, dead entries with a readable header."""

    def __init__(self, client: redis.Redis, keys: Keys, seed: int, gaps: bool = False) -> None:
        self.client, self.keys, self.rnd = client, keys, random.Random(seed)
        #: Now and then a sequence number is never written (an entry lost before it was read).
        self.gaps = gaps
        self.next_seq = {"p1": 1, "p2": 1, "p3": 1}
        self.written: list[tuple[str, int]] = []
        self.deltas: dict[str, Delta] = {}
        self.dead_ids: dict[str, DeadEntry] = {}

    def add(self, producer: str, seq: int) -> None:
        fields = entry_fields(producer, seq, [{"kind": "x", "t": 0}] * 2)
        entry_id = self.client.xadd(self.keys.stream(0), fields).decode()  # type: ignore[arg-type]
        self.deltas[entry_id] = entry_delta(self.rnd, entry_id)
        self.written.append((producer, seq))

    def batch(self) -> None:
        rnd = self.rnd
        for _ in range(rnd.randrange(3, 12)):
            p = rnd.choice(list(self.next_seq))
            roll = rnd.random()
            if roll < 0.1 and self.written:
                self.add(*rnd.choice(self.written))  # a retry
            elif roll < 0.13:
                self.add(p, self.next_seq[p] + MAX_JUMP * 10)  # suspect
            elif self.gaps and roll < 0.16:
                self.next_seq[p] += 1  # this one never reaches the stream
            elif roll < 0.18:
                fields = entry_fields(p, self.next_seq[p], [{"kind": "x", "t": 0}])
                entry_id = self.client.xadd(self.keys.stream(0), fields).decode()  # type: ignore[arg-type]
                self.dead_ids[entry_id] = DeadEntry(entry_id, "undecodable", "test", p, self.next_seq[p])
                self.next_seq[p] += 1
            else:
                self.add(p, self.next_seq[p])
                self.next_seq[p] += 1

    def build_delta(self, entries: Sequence[PendingEntry]) -> Delta:
        return merged([self.deltas[e.entry_id] for e in entries])


async def read(aclient: aioredis.Redis, keys: Keys, dead_ids: dict[str, DeadEntry]) -> tuple[list[Any], list[Any]]:
    raw: Any = await aclient.xreadgroup(GROUP, "c1", {keys.stream(0): ">"}, count=1000)
    pending, dead = [], []
    for entry_id, fields in raw[0][1] if raw else []:
        eid = entry_id.decode()
        if eid in dead_ids:
            dead.append(dead_ids[eid])
            continue
        e = decode_entry(fields)
        pending.append(PendingEntry(eid, e.producer_id, e.seq, e.events))
    return pending, dead


async def test_the_same_batches_leave_the_same_state_as_the_apply_script(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    v1, v2 = Keys(namespace + "-v1", SHARDS), Keys(namespace + "-v2", SHARDS)
    redis_client.xgroup_create(v1.stream(0), GROUP, id="0", mkstream=True)
    applier = ShardApplier(aclient, v1, 0, GROUP, "c1", limits(), max_seq_jump=MAX_JUMP)
    memory = ShardMemory(v2, 0, limits(), max_seq_jump=MAX_JUMP)
    work = Workload(redis_client, v1, seed=7)
    dead_seen: list[tuple[str, str]] = []
    totals = [0, 0, 0]
    try:
        for _ in range(40):
            work.batch()
            pending, dead = await read(aclient, v1, work.dead_ids)
            now = time.time()
            r1 = await applier.apply(pending, dead, work.build_delta, now)
            r2 = memory.apply_batch(pending, dead, work.build_delta, now)
            assert (r1.applied_entries, r1.duplicate_entries, r1.applied_events) == (
                r2.applied_entries,
                r2.duplicate_entries,
                r2.applied_events,
            )
            assert r1.dead_entries == len(r2.dead)
            totals = [totals[0] + r2.applied_entries, totals[1] + r2.duplicate_entries, totals[2] + len(r2.dead)]
            dead_seen += [(d.entry_id, d.reason) for d in r2.dead]
            write(redis_client, memory.changes())
            assert memory.changes().fields() == 0  # written: nothing left to write
        # The workload exercised every rule.
        assert totals[0] > 100 and totals[1] > 5 and totals[2] > 5
        v1_state, v2_state = state(redis_client, v1, ["p1", "p2", "p3"]), state(redis_client, v2, ["p1", "p2", "p3"])
        assert any(k.startswith("series_overflow") for k in v1_state["stats"])
        assert any(k.startswith("series_dropped") for k in v1_state["stats"])
        assert v1_state["stats"]["dead_suspect_sequence"] > 0
        assert_same(v1_state, v2_state)
        dead_v1 = [
            (f[b"dead_entry_id"].decode(), f[b"dead_reason"].decode())
            for _, f in redis_client.xrange(v1.dead_letters(0))
        ]
        assert sorted(dead_v1) == sorted(dead_seen)
    finally:
        redis_client.delete(*(k for k in redis_client.scan_iter(match=f"{namespace}-v*")))


async def test_a_successor_loading_the_written_state_goes_on_as_the_first_owner(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace, SHARDS)
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    first = ShardMemory(keys, 0, limits(), max_seq_jump=MAX_JUMP)
    work = Workload(redis_client, keys, seed=11)
    for _ in range(15):
        work.batch()
        pending, dead = await read(aclient, keys, work.dead_ids)
        first.apply_batch(pending, dead, work.build_delta, 1000.0)
        write(redis_client, first.changes())
    successor = ShardMemory(keys, 0, limits(), max_seq_jump=MAX_JUMP)
    loaded = await successor.load(aclient, [keys.metric(0, kind, mkey) for kind, mkey in METRIC_HASHES])
    assert loaded > 50
    held = {name: h.values for name, h in first.hashes.items() if h.values}
    assert {name: h.values for name, h in successor.hashes.items() if h.values} == held
    assert {p: (s.mark, s.seen) for p, s in successor.producers.items()} == {
        p: (s.mark, s.seen) for p, s in first.producers.items()
    }
    # Both go on with the same batches: the same changes.
    for _ in range(10):
        work.batch()
        pending, dead = await read(aclient, keys, work.dead_ids)
        a = first.apply_batch(pending, dead, work.build_delta, 2000.0)
        b = successor.apply_batch(pending, dead, work.build_delta, 2000.0)
        assert a == b
        ca, cb = first.changes(), successor.changes()
        assert ca == cb
        write(redis_client, ca)


async def test_housekeeping_in_memory_leaves_the_same_state_as_the_scripts(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    """What housekeeping's scripts do to a shard in Redis (gaps.lua: lost entries; retire.lua:
    idle series of capped metrics; forget_removals.lua: old gauge removal records), the owner
    does in memory (``declare_lost``, ``retire_idle``, ``forget_removals``): the same batches,
    with sequence numbers that never arrive and series that go idle, leave the same state."""
    lim = limits(ttl=0.5)  # retired at the next look unless updated by the batch just applied
    gauges = ["g1:0", "lg:0"]
    v1, v2 = Keys(namespace + "-v1", SHARDS), Keys(namespace + "-v2", SHARDS)
    redis_client.xgroup_create(v1.stream(0), GROUP, id="0", mkstream=True)
    applier = ShardApplier(aclient, v1, 0, GROUP, "c1", lim, max_seq_jump=MAX_JUMP)
    settings = AggregatorSettings(namespace=namespace + "-v1", shards=SHARDS, group=GROUP, consumer_name="c1")
    keeper = Housekeeper(aclient, v1, 0, settings, lim, gauge_keys=gauges)
    memory = ShardMemory(v2, 0, lim, max_seq_jump=MAX_JUMP)
    work = Workload(redis_client, v1, seed=5, gaps=True)
    lost = retired = forgotten = 0
    try:
        for k in range(40):
            now = 1000.0 + k
            work.batch()
            pending, dead = await read(aclient, v1, work.dead_ids)
            await applier.apply(pending, dead, work.build_delta, now)
            memory.apply_batch(pending, dead, work.build_delta, now)
            n = await keeper.detect_lost()
            assert memory.declare_lost() == n
            lost += n
            if k % 5 == 4:
                n = await retire_idle(aclient, v1, 0, lim, now + 0.25)
                assert memory.retire_idle(now + 0.25) == n
                retired += n
                n = await keeper.forget_old_removals(99.5)
                assert memory.forget_removals(gauges, 99.5) == n
                forgotten += n
            write(redis_client, memory.changes())
        assert lost > 3 and retired > 3 and forgotten > 3, (lost, retired, forgotten)
        v1_state, v2_state = state(redis_client, v1, ["p1", "p2", "p3"]), state(redis_client, v2, ["p1", "p2", "p3"])
        assert v1_state["stats"]["lost_entries"] == lost and sum(v1_state["lost"].values()) == lost
        assert_same(v1_state, v2_state)
    finally:
        redis_client.delete(*(k for k in redis_client.scan_iter(match=f"{namespace}-v*")))


def test_a_gap_after_a_reset_counts_as_entries_before_it() -> None:
    """A producer with no mark in a reset state: its first sequence number seen is not 1, and
    the ones below were written before the reset, not lost (gaps.lua's rule)."""
    memory = ShardMemory(Keys("lsmtest-reset", 1), 0, after_reset=True)
    memory.record("p1", 4000, "1-0")
    memory.record("p2", 1, "1-1")
    memory.record("p2", 3, "1-2")
    assert memory.declare_lost() == 1  # p2's seq 2; p1's 3,999 are entries before the reset
    assert memory.stats == {"entries_before_reset": 3999, "lost_entries": 1}
    assert memory.lost_by_producer == {"p2": 1}
    assert (memory.producers["p1"].mark, memory.producers["p2"].mark) == (4000, 3)
    assert memory.declare_lost() == 0
