#!/usr/bin/env python
"""Redis work per event: today's apply script against the owned shard's in-memory state
(aggregator/shard_memory.py) written back at checkpoints, on the same entries, side by side.

One private Redis server (nothing else runs on it: its CPU counters measure only this). The
same synthetic success events (bench/engine_bench.py's generator: 200 keys, 20 models) are
written as stream entries of ``--events-per-entry`` events into three namespaces; then

* ``apply script``: batches of ``--entries-per-batch`` entries read with XREADGROUP and applied
  by ``ShardApplier`` (the delta built by the engine, then one apply.lua call per batch);
* ``owned shard``: the same batches read with XRANGE, applied to a ``ShardMemory``, and every
  ``--checkpoint-events`` events its changes written back in one MULTI/EXEC (HSET of absolute
  values, at most 1,000 fields per command);
* ``identity values``: the write cost alone of a layout that would store one value per caller
  identity (``IDENTITY_BYTES``), not per series: per checkpoint window, one HSET field per
  distinct identity (the engine's plan) in one MULTI/EXEC. Nothing reads such a layout yet.

Reported per event: Redis CPU (the server's user+sys CPU over the phase), and this process's CPU
outside the engine (the engine's delta building costs the same in both and is shown apart).
A first pass over other events of the same world warms the engine's caches and creates the
series, so the phases measure steady state.

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/owner_bench.py [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
import redis.asyncio as aioredis
from engine_bench import event

from aggregator.apply import PendingEntry, ShardApplier
from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.local_server import LocalServer
from aggregator.shard_memory import Changes, ShardMemory
from aggregator.state import Delta
from producer.keys import Keys
from producer.wire import decode_entry, encode_entry, encode_event

GROUP = "aggregators"
HSET_FIELDS = 1000


def redis_cpu(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def fill(client: redis.Redis, keys: Keys, events: Sequence[dict[str, Any]], per_entry: int, producer: str) -> None:
    pipe = client.pipeline(transaction=False)
    for seq, start in enumerate(range(0, len(events), per_entry), 1):
        chunk = [encode_event(e) for e in events[start : start + per_entry]]
        pipe.xadd(keys.stream(0), encode_entry(producer, seq, chunk, time.time()))  # type: ignore[arg-type]
        if seq % 200 == 0:
            pipe.execute()
    pipe.execute()


def decoded(raw: Sequence[tuple[Any, Any]]) -> list[PendingEntry]:
    out = []
    for entry_id, fields in raw:
        e = decode_entry(fields)
        out.append(PendingEntry(entry_id.decode(), e.producer_id, e.seq, e.events))
    return out


class Timed:
    """The engine's build_delta, timed apart."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.seconds = engine, 0.0

    def __call__(self, entries: Sequence[PendingEntry]) -> Delta:
        t = time.process_time()
        delta = self.engine.build_delta(entries)
        self.seconds += time.process_time() - t
        return delta


async def apply_script(url: str, keys: Keys, engine: Engine, batch: int, _checkpoint_events: int) -> dict[str, float]:
    sync = redis.Redis.from_url(url)
    client = aioredis.Redis.from_url(url)
    sync.xgroup_create(keys.stream(0), GROUP, id="0", mkstream=True)
    applier = ShardApplier(client, keys, 0, GROUP, "bench")
    build = Timed(engine)
    events = calls = 0
    cpu0, py0, wall0 = redis_cpu(sync), time.process_time(), time.perf_counter()
    while True:
        raw: Any = await client.xreadgroup(GROUP, "bench", {keys.stream(0): ">"}, count=batch)
        if not raw:
            break
        result = await applier.apply(decoded(raw[0][1]), [], build, time.time())
        events += result.applied_events
        calls += 2
    out = {
        "events": events,
        "redis_cpu": redis_cpu(sync) - cpu0,
        "python_cpu": time.process_time() - py0 - build.seconds,
        "engine_cpu": build.seconds,
        "wall": time.perf_counter() - wall0,
        "calls": calls,
    }
    await client.aclose()
    sync.close()
    return out


def write_back(client: redis.Redis, changes: Changes, position: str, checkpoint_key: str) -> int:
    pipe = client.pipeline(transaction=True)
    for key, values in changes.hset.items():
        items = list(values.items())
        for i in range(0, len(items), HSET_FIELDS):
            pipe.hset(key, mapping=dict(items[i : i + HSET_FIELDS]))
    for key, names in changes.hdel.items():
        pipe.hdel(key, *names)
    for key, members in changes.zadd.items():
        pipe.zadd(key, members)
    for key, gone in changes.zrem.items():
        pipe.zrem(key, *gone)
    for key, increments in changes.hincrby.items():
        for name, n in increments.items():
            pipe.hincrby(key, name, n)
    pipe.hset(checkpoint_key, "position", position)
    pipe.execute()
    return changes.fields()


async def identity_writes(url: str, keys: Keys, engine: Engine, batch: int, checkpoint_events: int) -> dict[str, float]:
    """Write cost only of a layout with one value per caller identity (not implemented): per
    checkpoint window, one ``--identity-bytes`` value per distinct identity, HSET in MULTI."""
    sync = redis.Redis.from_url(url)
    value = b"x" * IDENTITY_BYTES
    key = keys.shard_stats(0) + ":identities"
    events = since = fields = checkpoints = calls = 0
    touched: set[int] = set()
    position = "-"
    cpu0, py0, wall0 = redis_cpu(sync), time.process_time(), time.perf_counter()
    while True:
        start = "-" if position == "-" else f"({position}"
        raw: Any = sync.xrange(keys.stream(0), start, "+", count=batch)
        calls += 1
        for e in decoded(raw):
            for ev in e.events:
                touched.add(id(engine._success_plan(ev)))
                events += 1
                since += 1
        if raw:
            position = raw[-1][0].decode()
        if since >= checkpoint_events or (not raw and since):
            pipe = sync.pipeline(transaction=True)
            ids = [str(i) for i in touched]
            for i in range(0, len(ids), HSET_FIELDS):
                pipe.hset(key, mapping=dict.fromkeys(ids[i : i + HSET_FIELDS], value))
            pipe.hset(key + ":checkpoint", "position", position)
            pipe.execute()
            fields += len(touched)
            checkpoints += 1
            calls += 1
            touched = set()
            since = 0
        if not raw:
            break
    out = {
        "events": events,
        "redis_cpu": redis_cpu(sync) - cpu0,
        "python_cpu": time.process_time() - py0,
        "engine_cpu": 0.0,
        "wall": time.perf_counter() - wall0,
        "calls": calls,
        "fields": fields,
        "checkpoints": checkpoints,
    }
    sync.close()
    return out


IDENTITY_BYTES = 1024
MEMORIES: dict[str, ShardMemory] = {}


async def owned_shard(url: str, keys: Keys, engine: Engine, batch: int, checkpoint_events: int) -> dict[str, float]:
    sync = redis.Redis.from_url(url)
    memory = MEMORIES.setdefault(keys.namespace, ShardMemory(keys, 0))  # one owner across both passes
    build = Timed(engine)
    events = since = calls = fields = checkpoints = 0
    position = "-"
    checkpoint_key = keys.shard_stats(0) + ":checkpoint"
    cpu0, py0, wall0 = redis_cpu(sync), time.process_time(), time.perf_counter()
    while True:
        start = "-" if position == "-" else f"({position}"
        raw: Any = sync.xrange(keys.stream(0), start, "+", count=batch)
        calls += 1
        if raw:
            result = memory.apply_batch(decoded(raw), [], build, time.time())
            events += result.applied_events
            since += result.applied_events
            position = raw[-1][0].decode()
        if since >= checkpoint_events or (not raw and since):
            fields += write_back(sync, memory.changes(), position, checkpoint_key)
            checkpoints += 1
            calls += 1
            since = 0
        if not raw:
            break
    out = {
        "events": events,
        "redis_cpu": redis_cpu(sync) - cpu0,
        "python_cpu": time.process_time() - py0 - build.seconds,
        "engine_cpu": build.seconds,
        "wall": time.perf_counter() - wall0,
        "calls": calls,
        "fields": fields,
        "checkpoints": checkpoints,
    }
    sync.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--events-per-entry", type=int, default=100)
    p.add_argument("--entries-per-batch", type=int, default=20)
    p.add_argument("--checkpoint-events", type=int, default=2_500, help="about 250 ms at 10,000 events/s")
    a = p.parse_args()
    rnd = random.Random(1)
    warm = [event(rnd) for _ in range(a.events)]
    measured = [event(rnd) for _ in range(a.events)]
    with LocalServer() as server:
        sync = redis.Redis.from_url(server.url)
        results = {}
        for name in ("apply script", "owned shard", "identity values"):
            keys = Keys(f"bench-{name.replace(' ', '-')}")
            engine = Engine(MetricsConfig.from_litellm_settings({}))
            run = {"apply script": apply_script, "owned shard": owned_shard, "identity values": identity_writes}[name]
            # Warm-up, then the measured pass: the same world, warm caches, existing series, a
            # fresh stream (and its consumer group) written by another producer.
            fill(sync, keys, warm, a.events_per_entry, "warm-up")
            asyncio.run(run(server.url, keys, engine, a.entries_per_batch, a.checkpoint_events))
            sync.delete(keys.stream(0))
            fill(sync, keys, measured, a.events_per_entry, "measured")
            results[name] = asyncio.run(run(server.url, keys, engine, a.entries_per_batch, a.checkpoint_events))
        sync.close()
    print(
        f"{a.events:,} events, {a.events_per_entry} per entry, {a.entries_per_batch} entries per batch, "
        f"checkpoint every {a.checkpoint_events:,} events"
    )
    header = ("", "Redis CPU/event", "Python CPU/event", "engine/event", "Redis calls", "events/s (wall)")
    print("{:14} {:>16} {:>17} {:>13} {:>12} {:>16}".format(*header))
    for name, r in results.items():
        n = r["events"]
        print(
            f"{name:14} {1e6 * r['redis_cpu'] / n:>13.2f} µs {1e6 * r['python_cpu'] / n:>14.2f} µs "
            f"{1e6 * r['engine_cpu'] / n:>10.2f} µs {r['calls']:>12,.0f} {n / r['wall']:>16,.0f}"
        )
    owned = results["owned shard"]
    per = owned["fields"] / owned["checkpoints"]
    print(f"owned shard: {owned['checkpoints']:.0f} checkpoints, {per:,.0f} fields each")
    ident = results["identity values"]
    per = ident["fields"] / ident["checkpoints"]
    print(
        f"identity values (write cost only, {IDENTITY_BYTES} bytes per identity; the layout is not "
        f"implemented): {per:,.0f} identities per checkpoint, {ident['fields'] / ident['events']:.2f} per event"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
