#!/usr/bin/env python
"""How much folding events by caller identity saves, and the per-event floor of the hot path.

The calls of ``aggregator_bench.py``'s realistic world (``producer_bench.build_calls``: 200 keys
in 50 teams, 20 model groups, 9% failures) go through the real producer into a stream; the
events are read back and decoded, and for checkpoint windows of several sizes (a window of W
events is W / rate seconds of traffic: 2,500 events is 250 ms at 10,000 events/s) this reports,
over the second half of the events (the world warm):

* identities per event: distinct caller identities (the engine's plans) in a window, divided by
  its events. Folding by identity does LiteLLM's fan-out once per identity per window, so this
  is the share of the per-event fan-out that remains;
* series and fields per event: what a checkpoint of the window writes in today's layout (one
  field per counter series, per histogram series its changed buckets + sum + count, two per
  gauge: value and event time).

Then, per success event with warm caches, the CPU of each step of today's hot path: decoding the
entry (``decode_entry``, per event), reading and checking the values (``Engine._success_values``
without the plan look-up), the plan look-up (building the identity key), and adding the values
to a delta through the plan.

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/identity_fold_bench.py [--events 100000]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aggregator_bench as ab
import producer_bench as pb
import redis

from aggregator.apply import PendingEntry
from aggregator.engine import Engine
from aggregator.gc_pause import paused_gc
from aggregator.litellm_config import MetricsConfig
from aggregator.state import Delta
from producer.keys import Keys
from producer.wire import decode_entry


def window_counts(engine: Engine, events: list[dict[str, Any]], window: int) -> tuple[float, float, float]:
    """(identities, series, fields) per event over the windows of the second half."""
    identities = series = fields = n = 0
    for start in range(len(events) // 2, len(events) - window + 1, window):
        chunk = events[start : start + window]
        delta = engine.build_delta([PendingEntry("1-0", "bench", 1, chunk)])
        identities += len({id(engine._success_plan(e)) for e in chunk if e.get("kind") == "success"})
        series += len(delta.counters) + len(delta.histograms) + len(delta.gauges)
        fields += len(delta.counters) + 2 * len(delta.gauges)
        fields += sum(2 + sum(1 for b in h.buckets if b) for h in delta.histograms.values())
        n += window
    return identities / n, series / n, fields / n


def per_event(seconds: float, n: int) -> str:
    return f"{seconds * 1e6 / n:6.1f} µs"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--windows", default="500,2500,12500,50000", help="events per checkpoint window")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    a = p.parse_args()
    n_fail = a.events // 11
    calls = pb.build_calls(a.events - n_fail, n_fail)
    namespace = f"lsm-fold-bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(a.redis_url)
    try:
        ab.produce(calls, a.redis_url, namespace, False)
        raw: Any = client.xrange(Keys(namespace).stream(0))
    finally:
        ab._delete(client, namespace)
        client.close()
    entries = [fields for _id, fields in raw]
    events = [ev for fields in entries for ev in decode_entry(fields).events]
    success = [ev for ev in events if ev.get("kind") == "success"]
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    engine.build_delta([PendingEntry("1-0", "bench", 1, events)])  # warm caches
    print(f"{len(events):,} events ({len(success):,} success) in {len(entries):,} entries")
    print(f"{'window':>8} {'identities/event':>17} {'series/event':>13} {'fields/event':>13}")
    for window in (int(w) for w in a.windows.split(",")):
        ids, series, fields = window_counts(engine, events, window)
        print(f"{window:>8,} {ids:>17.3f} {series:>13.2f} {fields:>13.2f}")

    def timed(fn: Any) -> float:
        """CPU seconds of ``fn`` with the collector paused, as the engine runs."""
        gc.collect()
        with paused_gc():
            t = time.process_time()
            fn()
            return time.process_time() - t

    def each(step: Any, items: list[Any]) -> None:
        for item in items:
            step(item)

    decode = timed(lambda: each(decode_entry, entries))
    values = timed(lambda: each(engine._success_values, success))
    plans = timed(lambda: each(engine._success_plan, success))
    built = [engine._success_values(ev) for ev in success]
    delta = Delta()

    def add() -> None:
        for v, plan in built:
            delta.inc_indexed(plan.counters, v)
            delta.observe_indexed(plan.histograms, v)
            delta.set_indexed(plan.gauges, v, 1.0)

    adds = timed(add)
    print("per success event, warm caches (process CPU):")
    print(f"  decode entry           {per_event(decode, len(events))} (per event of any kind)")
    print(f"  values, checked        {per_event(values - plans, len(success))}")
    print(f"  plan look-up           {per_event(plans, len(success))}")
    print(f"  add through the plan   {per_event(adds, len(success))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
