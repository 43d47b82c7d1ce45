#!/usr/bin/env python
"""Metric engine alone (no Redis): events/s of ``Engine.build_delta`` on synthetic success
events with 8,000 caller identities, first with cold caches (every identity's plan built on
first sight), then warm. The best of ``--repeat`` runs, each with a fresh engine.

    python bench/engine_bench.py [--events 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator.apply import PendingEntry
from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from producer import wire


def event(rnd: random.Random) -> dict[str, Any]:
    k, m = rnd.randrange(200), rnd.randrange(20)
    ev: dict[str, Any] = dict.fromkeys(wire.SUCCESS_FIELDS)
    ev.update(
        kind="success", t=time.time(), hashed_api_key=f"{k:064x}", api_key_alias=f"key-{k}", team=f"team-{k % 50}",
        team_alias=f"Team {k % 50}", user=f"user-{k}", user_email=f"u{k}@example.com", model=f"gpt-{m}",
        model_group=f"gpt-{m}", model_id=f"id-{m}", api_base="https://api.openai.com", api_provider="openai",
        stream=rnd.random() < 0.3, response_cost=0.001, total_tokens=30, prompt_tokens=10, completion_tokens=20,
        latency_total=0.5, latency_api=0.4, latency_per_token_basis=0.5, has_deployment=True,
        deployment_provider="openai", deployment_model_id=f"id-{m}", headers=[100, 1000] + [None] * 18,
        key_model_group=f"gpt-{m}",
        budget=[1.0, 10.0, "2026-12-01T00:00:00+00:00", 3.0, 100.0] + [None] * 9,
    )  # fmt: skip
    return ev


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    rnd = random.Random(1)
    events = [event(rnd) for _ in range(a.events)]
    entries = [PendingEntry(str(i), "p", i + 1, events[i * 500 : (i + 1) * 500]) for i in range(a.events // 500)]
    best = {"cold caches": math.inf, "warm caches": math.inf}
    for _ in range(a.repeat):
        engine = Engine(MetricsConfig.from_litellm_settings({}))
        for label in best:
            t = time.perf_counter()
            engine.build_delta(entries)
            best[label] = min(best[label], time.perf_counter() - t)
    for label, dt in best.items():
        print(f"{label}: {a.events / dt:,.0f} events/s ({1e6 * dt / a.events:.1f} µs/event)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
