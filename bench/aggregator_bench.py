#!/usr/bin/env python
"""Aggregator benchmark: sustained events/s of one aggregator process, Redis cost per series,
and write-to-applied latency, side by side with LiteLLM's in-process logger on the same calls.

Scenarios (same generator as ``producer_bench.py``: 200 keys in 50 teams, 20 model groups, 30%
streaming, 9% failures):

* ``realistic``: the calls as generated;
* ``worst``: every call a new end user, with LiteLLM's end-user labels on
  (``enable_end_user_cost_tracking_prometheus_only``): every event makes new series.

Each scenario runs in two phases, in one fresh namespace, with one aggregator (in this process,
one core: one ``Engine`` and one ``ShardConsumer`` for both phases):

* cold start: ``--warmup-events`` calls (default: as many as ``--events``) go through the real
  producer (``StreamMetricsLogger``), then the aggregator, just started (empty engine caches, no
  series in Redis), applies that backlog;
* steady state: then ``--events`` further calls (other calls of the same generated world: one
  ``build_calls`` run, split in two) go through the producer, and the same aggregator, its caches
  warm and the warm-up's series in Redis, applies them. This is the sustained rate of a
  long-running aggregator; the cold start is mostly warm-up (in the realistic scenario most
  caller identities, and series, are new).

Nothing runs while a phase's calls are produced (the consumer is stopped and restarted on the
same objects), so each phase measures only its own events: throughput and CPU of the aggregator
(with where its CPU goes), Redis CPU (server-wide), and Redis memory per series the phase
added (``MEMORY USAGE`` of the namespace's keys before the phase's calls were produced and once
they are applied and trimmed from the stream).
``--warmup-events 0`` measures the cold start on ``--events`` calls only. LiteLLM's
``PrometheusLogger`` processes some of the same calls in this process for the side-by-side rate.

Latency: a producer thread writes at ``--rate`` events/s (several rates: a comma-separated
list) for ``--latency-seconds`` while the aggregator runs; for every applied entry we record
(time applied - time the entry was built).

``--ingest group,owner`` (the default) runs everything with both ingests side by side, in
separate namespaces: ``group`` (the consumer group and the apply script, the default of
``aggregator run``) and ``owner`` (``LSM_INGEST=owner``: one owner per shard, state in memory,
fenced checkpoints every ``LSM_CHECKPOINT_INTERVAL``; an entry counts as applied when the
checkpoint covering it is committed). An owner phase is timed from its first applied event, so
the takeover's state load is left out (bench/owner_load_bench.py measures it).

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/aggregator_bench.py [--events 50000] [--warmup-events N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import producer_bench as pb
import redis

import aggregator.consumer as consumer_module
from aggregator.apply import ShardApplier
from aggregator.connections import open_async
from aggregator.consumer import ShardConsumer
from aggregator.daemon import tune_gc
from aggregator.engine import Engine
from aggregator.lease import Lease
from aggregator.litellm_config import MetricsConfig
from aggregator.owner import Owners, ShardOwner, state_keys
from aggregator.series_limits import build_limits
from aggregator.settings import DEFAULT_MAX_SERIES_PER_METRIC, AggregatorSettings
from producer.keys import Keys
from producer.settings import ProducerSettings
from producer.wire import decode_entry


def _redis_cpu(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _script_seconds(client: redis.Redis) -> float:
    """Seconds Redis has spent running scripts by SHA (the apply script; INFO commandstats).
    Read before and after, never reset: the Redis may have other users."""
    info: Any = client.info("commandstats")
    return float(info.get("cmdstat_evalsha", {}).get("usec", 0)) / 1e6


def _namespace_memory(client: redis.Redis, namespace: str) -> int:
    """Bytes of every key of the namespace (MEMORY USAGE, every field counted): unlike the
    server's used_memory, not moved by other users of the same Redis."""
    return sum(
        int(client.memory_usage(k, samples=0) or 0) for k in client.scan_iter(match=f"{namespace}:*", count=1000)
    )


def _delete(client: redis.Redis, namespace: str) -> None:
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def _series_count(client: redis.Redis, namespace: str) -> int:
    total = 0
    for k in client.scan_iter(match=f"{namespace}:{{s0}}:[chg]:*", count=1000):
        n = int(client.hlen(k))
        if b":h:" in k:
            n = n // 10  # histogram series: about ten fields each (buckets hit, sum, count)
        total += n
    return total


#: ``--exemplars``: the producers ship each request's trace id (every generated call has one), so the
#: aggregator keeps exemplars.
EXEMPLARS = False


def produce(calls: list[pb.Call], redis_url: str, namespace: str, end_users: bool) -> int:
    """Feed the calls to the real producer; returns events sent."""
    import litellm

    from producer.callback import StreamMetricsLogger

    litellm.enable_end_user_cost_tracking_prometheus_only = True if end_users else None
    logger = StreamMetricsLogger(
        settings=ProducerSettings(redis_url=redis_url, namespace=namespace, buffer_max_events=10_000_000,
                                  exemplars=EXEMPLARS,
                                  buffer_max_bytes=8 * 1024**3)
    )  # fmt: skip

    async def feed() -> None:
        for ok, kwargs, response_obj, start_time, end_time in calls:
            hook = logger.async_log_success_event if ok else logger.async_log_failure_event
            await hook(kwargs, response_obj, start_time, end_time)

    asyncio.run(feed())
    logger.close(timeout=300)
    litellm.enable_end_user_cost_tracking_prometheus_only = None
    return int(logger.emitter.counters.sent)


class CpuSplit:
    """CPU seconds (of the calling thread) spent in the engine, in decoding entries and in
    encoding the apply script's arguments."""

    def __init__(self) -> None:
        self.seconds = {"engine": 0.0, "decode": 0.0, "encode": 0.0}

    def timed(self, part: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.thread_time() - t0

        return wrapper


async def apply_backlog(
    redis_url: str,
    namespace: str,
    phases: list[list[pb.Call]],
    end_users: bool,
    config: MetricsConfig,
    apply_max_events: int = 5_000,
    max_series_per_metric: int = DEFAULT_MAX_SERIES_PER_METRIC,
    ingest: str = "group",
) -> list[dict[str, float]]:
    """For each phase in turn: its calls through the real producer (untimed, the aggregator
    stopped), then the one aggregator (same engine, same consumer for every phase, so its caches
    stay warm) applies them, timed. One result per phase."""
    settings = AggregatorSettings(
        redis_url=redis_url,
        namespace=namespace,
        consumer_name="bench",
        read_count=100,
        apply_max_events=apply_max_events,
    )
    engine = Engine(config)
    client = open_async(settings, idempotent=True)
    split = CpuSplit()
    consumer = ShardConsumer(
        client,
        settings,
        0,
        split.timed("engine", engine.build_delta),
        limits=build_limits(engine.schema, max_series_per_metric),
    )
    # Series caps as the daemon sets them (LSM_MAX_SERIES_PER_METRIC; 0: none).
    consumer_module.decode_entry = split.timed("decode", decode_entry)  # type: ignore[attr-defined]
    encode = ShardApplier._encode
    ShardApplier._encode = split.timed("encode", encode)  # type: ignore[method-assign]
    sync = redis.Redis.from_url(redis_url)
    keys = Keys(namespace)
    stats_key = keys.shard_stats(0)
    limits = build_limits(engine.schema, max_series_per_metric)
    lease = Lease(client, keys.shard_owner(0), 3600.0, "bench")
    owner: ShardOwner | None = None
    results: list[dict[str, float]] = []
    try:
        await consumer.ensure_group()
        series0 = 0
        for calls in phases:
            mem0 = _namespace_memory(sync, namespace)
            sent = await asyncio.to_thread(produce, calls, redis_url, namespace, end_users)
            if sent != len(calls):
                print(f"  warning: {len(calls):,} calls, but the producer sent {sent:,} events", file=sys.stderr)
            target = int(sync.hget(stats_key, "events_applied") or 0) + sent
            plans0 = len(getattr(engine, "_plans", ()))  # caller identities with a cached plan
            print(f"  applying {sent:,} events ({plans0:,} identity plans cached) ...", file=sys.stderr)
            for part in split.seconds:
                split.seconds[part] = 0.0
            batches0 = consumer.counters.batches
            stop = asyncio.Event()
            if ingest == "owner":
                assert await lease.acquire()
                owner = ShardOwner(
                    client,
                    settings,
                    0,
                    lease,
                    split.timed("engine", engine.build_delta),
                    state_keys(engine.schema, keys, 0, limits),
                    limits,
                    settings.checkpoint_interval,
                )
                task = asyncio.create_task(owner.run(stop))
                while owner.counters.entries_read == 0 and not task.done():
                    await asyncio.sleep(0.002)  # the takeover's load is not timed
                for part in split.seconds:
                    split.seconds[part] = 0.0
            rcpu0 = _redis_cpu(sync)
            script0 = _script_seconds(sync)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            if ingest != "owner":
                task = asyncio.create_task(consumer.run(stop))
            while True:
                await asyncio.sleep(0.05)
                applied = int(sync.hget(stats_key, "events_applied") or 0)
                if applied >= target:
                    break
                if task.done():
                    task.result()
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            rcpu = _redis_cpu(sync) - rcpu0
            script = _script_seconds(sync) - script0
            stop.set()
            await task
            batches = consumer.counters.batches - batches0
            if owner is not None:
                batches = owner.counters.checkpoints
                await client.xtrim(keys.stream(0), minid=owner.position)
            else:
                await consumer.housekeeper.trim()
            series = _series_count(sync, namespace)
            mem = _namespace_memory(sync, namespace) - mem0
            plans, strings = len(getattr(engine, "_plans", ())), len(getattr(engine, "_series_cache", ()))
            print(
                f"  {wall:.1f} s; engine caches: {plans:,} identity plans, {strings:,} series strings; "
                f"{series:,} series in Redis",
                file=sys.stderr,
            )
            new_series = series - series0
            series0 = series
            results.append(
                {
                    "events": sent,
                    "wall_s": wall,
                    "events_per_s": sent / wall,
                    "cpu_us_per_event": cpu * 1e6 / sent,
                    "redis_cpu_us_per_event": rcpu * 1e6 / sent,
                    "script_us_per_event": script * 1e6 / sent,
                    "series": series,
                    "new_series": new_series,
                    "redis_bytes_per_series": mem / new_series if new_series > 0 else float("nan"),
                    "batches": batches,
                    **{f"{part}_us_per_event": sec * 1e6 / sent for part, sec in split.seconds.items()},
                }
            )
    finally:
        consumer_module.decode_entry = decode_entry  # type: ignore[attr-defined]
        ShardApplier._encode = encode  # type: ignore[method-assign]
        await client.aclose()
        sync.close()
    return results


async def feed_warmup(logger: Any, calls: list[pb.Call]) -> None:
    for ok, kwargs, response_obj, start_time, end_time in calls:
        hook = logger.async_log_success_event if ok else logger.async_log_failure_event
        await hook(kwargs, response_obj, start_time, end_time)


def litellm_rate(calls: list[pb.Call], end_users: bool) -> float:
    import litellm
    from litellm.integrations.prometheus import PrometheusLogger
    from prometheus_client import REGISTRY

    litellm.enable_end_user_cost_tracking_prometheus_only = True if end_users else None
    before = set(REGISTRY._collector_to_names)
    logger = PrometheusLogger()

    async def feed() -> None:
        for ok, kwargs, response_obj, start_time, end_time in calls:
            hook = logger.async_log_success_event if ok else logger.async_log_failure_event
            await hook(kwargs, response_obj, start_time, end_time)

    asyncio.run(feed_warmup(logger, calls[:200]))  # lazy imports (the proxy modules) are not counted
    cpu0 = time.process_time()
    asyncio.run(feed())
    cpu = time.process_time() - cpu0
    for collector in set(REGISTRY._collector_to_names) - before:
        REGISTRY.unregister(collector)
    litellm.enable_end_user_cost_tracking_prometheus_only = None
    return len(calls) / cpu


async def latency(
    redis_url: str, namespace: str, calls: list[pb.Call], rate: float, seconds: float, ingest: str = "group"
) -> dict[str, float]:
    """Producer at ``rate`` events/s in a thread; aggregator in this loop; per-entry latency."""
    import litellm

    from producer.callback import StreamMetricsLogger

    litellm.enable_end_user_cost_tracking_prometheus_only = None
    logger = StreamMetricsLogger(
        settings=ProducerSettings(redis_url=redis_url, namespace=namespace, exemplars=EXEMPLARS)
    )
    settings = AggregatorSettings(
        redis_url=redis_url, namespace=namespace, consumer_name="bench-lat", block_seconds=0.05
    )
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    client = open_async(settings, idempotent=True)
    consumer = ShardConsumer(client, settings, 0, engine.build_delta)
    await consumer.ensure_group()
    samples: list[float] = []
    original = ShardApplier.apply

    async def timed_apply(self: ShardApplier, entries: Any, dead: Any, build: Any, now: float) -> Any:
        result = await original(self, entries, dead, build, now)
        done = time.time()
        built = {e.entry_id: e for e in entries}
        for entry in built.values():
            samples.append(done - _built_at(entry.entry_id))
        return result

    ShardApplier.apply = timed_apply  # type: ignore[method-assign]
    read_ids: list[str] = []
    original_read, original_commit = ShardOwner._apply, ShardOwner._commit

    def owner_read(self: ShardOwner, entries: Any) -> None:
        original_read(self, entries)
        read_ids.extend(_text(entry_id) for entry_id, _fields in entries)

    async def owner_commit(self: ShardOwner, oversize: bool = False) -> None:
        covered = len(read_ids)
        await original_commit(self, oversize)
        done = time.time()
        samples.extend(done - _built_at(entry_id) for entry_id in read_ids[:covered])
        del read_ids[:covered]

    stop = asyncio.Event()
    if ingest == "owner":
        ShardOwner._apply = owner_read  # type: ignore[method-assign]
        ShardOwner._commit = owner_commit  # type: ignore[method-assign]
        limits = build_limits(engine.schema, DEFAULT_MAX_SERIES_PER_METRIC)
        owners = Owners(
            client,
            settings,
            engine.build_delta,
            lambda shard: state_keys(engine.schema, settings.keys, shard, limits),
            limits,
            checkpoint_interval=settings.checkpoint_interval,
        )
        task = asyncio.create_task(owners.run(stop))
    else:
        task = asyncio.create_task(consumer.run(stop))
    total = int(rate * seconds)

    def produce_paced() -> None:
        loop = asyncio.new_event_loop()
        start = time.perf_counter()
        for i in range(total):
            ok, kwargs, response_obj, start_time, end_time = calls[i % len(calls)]
            hook = logger.async_log_success_event if ok else logger.async_log_failure_event
            loop.run_until_complete(hook(kwargs, response_obj, start_time, end_time))
            ahead = (i + 1) / rate - (time.perf_counter() - start)
            if ahead > 0.002:
                time.sleep(ahead)
        logger.close()
        loop.close()

    t = threading.Thread(target=produce_paced)
    t.start()
    await asyncio.to_thread(t.join)
    sync = redis.Redis.from_url(redis_url)
    stats_key = Keys(namespace).shard_stats(0)
    while int(sync.hget(stats_key, "events_applied") or 0) < logger.emitter.counters.sent:
        await asyncio.sleep(0.05)
    stop.set()
    await task
    ShardApplier.apply = original  # type: ignore[method-assign]
    ShardOwner._apply, ShardOwner._commit = original_read, original_commit  # type: ignore[method-assign]
    await client.aclose()
    sync.close()
    samples.sort()
    return {
        "entries": len(samples),
        "p50_ms": 1000 * statistics.median(samples),
        "p99_ms": 1000 * samples[min(len(samples) - 1, int(0.99 * len(samples)))],
        "max_ms": 1000 * samples[-1],
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _built_at(entry_id: str) -> float:
    """A stream entry id starts with the Redis time (ms) when it was added."""
    return int(entry_id.partition("-")[0]) / 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=50_000, help="measured calls per scenario (default 50000)")
    p.add_argument(
        "--warmup-events",
        type=int,
        default=None,
        metavar="N",
        help="calls applied first by the same aggregator (the cold-start phase) before the measured "
        "--events (the steady-state phase); default: as many as --events; 0: no warm-up, measure the cold start only",
    )
    p.add_argument("--litellm-events", type=int, default=5_000, help="calls fed to LiteLLM's logger (default 5000)")
    p.add_argument("--rate", default="10000", help="events/s of the latency runs, comma-separated (default 10000)")
    p.add_argument("--ingest", default="group,owner", help="comma-separated: group, owner (default both)")
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--skip-litellm", action="store_true")
    p.add_argument(
        "--apply-max-events", type=int, default=5_000, help="the aggregator's LSM_APPLY_MAX_EVENTS (default 5000)"
    )
    p.add_argument("--scenarios", default="realistic,worst", help="comma-separated (default realistic,worst)")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--exemplars", action="store_true", help="producers with LSM_EXEMPLARS on")
    p.add_argument(
        "--max-series-per-metric",
        type=int,
        default=DEFAULT_MAX_SERIES_PER_METRIC,
        help=f"series cap per metric as LSM_MAX_SERIES_PER_METRIC (default {DEFAULT_MAX_SERIES_PER_METRIC}; 0: none)",
    )
    p.add_argument(
        "--default-gc", action="store_true", help="keep Python's GC thresholds (the daemon tunes them: tune_gc)"
    )
    a = p.parse_args()
    global EXEMPLARS
    EXEMPLARS = a.exemplars
    warmup = a.events if a.warmup_events is None else a.warmup_events
    if a.events < 1 or warmup < 0:
        p.error("--events must be >= 1 and --warmup-events >= 0")
    bench_id = uuid.uuid4().hex[:8]
    sync = redis.Redis.from_url(a.redis_url)
    total = warmup + a.events
    n_fail = total // 11
    print(f"generating {total:,} calls ({warmup:,} warm-up + {a.events:,} measured) ...", file=sys.stderr)
    # One run of the generator (one world: same keys, teams, models; timestamps spread over the
    # whole run), split in two: the measured calls are further draws, not repeats of the warm-up.
    calls = pb.build_calls(total - n_fail, n_fail)
    warm_calls, measured_calls = calls[:warmup], calls[warmup:]
    gc.collect()
    if not a.default_gc:
        tune_gc()
    phases = [("cold start", warm_calls), ("steady state", measured_calls)] if warmup else [("cold start", calls)]
    ingests = a.ingest.split(",")
    if not set(ingests) <= {"group", "owner"}:
        p.error("--ingest: group, owner or both")
    rows: list[tuple[str, str, str, dict[str, float], float | None]] = []
    for scenario in a.scenarios.split(","):
        worst = scenario == "worst"
        if worst:
            for i, (_ok, kwargs, *_rest) in enumerate(calls):
                kwargs["litellm_params"]["user_api_key_end_user_id"] = f"end-user-{bench_id}-{i}"
        # The aggregator reads the same opt-in as the producer (without it, end_user is "None").
        opt_in = {"enable_end_user_cost_tracking_prometheus_only": True} if worst else {}
        config = MetricsConfig.from_litellm_settings(opt_in)
        lite = None
        if not a.skip_litellm:
            print(f"[{scenario}] LiteLLM's logger on {a.litellm_events:,} of the same calls ...", file=sys.stderr)
            lite = litellm_rate(calls[: a.litellm_events], worst)
        for ingest in ingests:
            ns = f"lsmbench-agg-{bench_id}-{scenario}-{ingest}"
            try:
                what = " then ".join(f"{name} ({len(c):,} calls)" for name, c in phases)
                print(f"[{scenario}, {ingest}] producing and applying with one aggregator: {what} ...", file=sys.stderr)
                results = asyncio.run(
                    apply_backlog(
                        a.redis_url,
                        ns,
                        [c for _name, c in phases],
                        worst,
                        config,
                        a.apply_max_events,
                        a.max_series_per_metric,
                        ingest,
                    )
                )
            finally:
                _delete(sync, ns)
            rows.extend((scenario, ingest, name, r, lite) for (name, _c), r in zip(phases, results, strict=True))
    for _ok, kwargs, *_rest in calls:
        kwargs["litellm_params"]["user_api_key_end_user_id"] = None
    latencies: list[tuple[str, float, dict[str, float]]] = []
    for rate in [] if a.skip_latency else [float(x) for x in a.rate.split(",")]:
        for ingest in ingests:
            ns = f"lsmbench-agg-{bench_id}-latency-{ingest}"
            try:
                print(f"[latency, {ingest}] {rate:,.0f} events/s for {a.latency_seconds:g} s ...", file=sys.stderr)
                lat = asyncio.run(latency(a.redis_url, ns, measured_calls, rate, a.latency_seconds, ingest))
                latencies.append((ingest, rate, lat))
            finally:
                _delete(sync, ns)
    if warmup:
        print(f"cold start: the first {warmup:,} events; steady state: {a.events:,} events after those.")
    else:
        print(f"cold start: {a.events:,} events, no warm-up.")
    print(
        "| scenario | ingest | phase | events | aggregator events/s (one process) | aggregator CPU µs/event | "
        "Redis CPU µs/event | series | new series | Redis bytes/new series | LiteLLM logger events/s (one core) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scenario, ingest, phase, r, lite in rows:
        per_series = r["redis_bytes_per_series"]
        print(
            f"| {scenario} | {ingest} | {phase} | {r['events']:,.0f} | {r['events_per_s']:,.0f} | "
            f"{r['cpu_us_per_event']:.1f} | "
            f"{r['redis_cpu_us_per_event']:.1f} | {r['series']:,.0f} | {r['new_series']:,.0f} | "
            f"{'-' if math.isnan(per_series) else f'{per_series:,.0f}'} | {'-' if lite is None else f'{lite:,.0f}'} |"
        )
    print()
    print(
        "| scenario | ingest | phase | batches (owner: checkpoints) | engine µs/event | decode µs/event | "
        "encode µs/event | rest of the process µs/event | Redis: apply script µs/event |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for scenario, ingest, phase, r, _lite in rows:
        rest = r["cpu_us_per_event"] - r["engine_us_per_event"] - r["decode_us_per_event"] - r["encode_us_per_event"]
        print(
            f"| {scenario} | {ingest} | {phase} | {r['batches']:,.0f} | {r['engine_us_per_event']:.1f} | "
            f"{r['decode_us_per_event']:.1f} | {r['encode_us_per_event']:.1f} | {rest:.1f} | "
            f"{r['script_us_per_event']:.1f} |"
        )
    if latencies:
        print()
        print(f"Write-to-applied latency, {a.latency_seconds:g} s at each rate:")
        print()
        print("| ingest | events/s | entries | p50 | p99 | max |")
        print("|---|---:|---:|---:|---:|---:|")
        for ingest, rate, lat in latencies:
            print(
                f"| {ingest} | {rate:,.0f} | {lat['entries']:,.0f} | {lat['p50_ms']:,.0f} ms | "
                f"{lat['p99_ms']:,.0f} ms | {lat['max_ms']:,.0f} ms |"
            )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nMachine: {os.cpu_count()} cores; load average at the end: {load}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
