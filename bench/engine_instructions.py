#!/usr/bin/env python
"""CPU instructions per event of the metric engine, counted by valgrind (callgrind): unlike
times, the count does not move with whatever else the machine is doing, so a change of a few
percent is visible. Counts a warm pass (every identity's plan cached) of ``Engine.build_delta``
over ``bench/engine_bench.py``'s synthetic success events, as the difference between a process
that builds once and one that builds twice.

    python bench/engine_instructions.py [--events 4000] [--identities 200x20]

Needs ``valgrind`` (Debian package). Takes about a minute.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build(events: int, keys: int, models: int, passes: int) -> None:
    """What runs under valgrind: generate the events, then ``passes`` builds."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from engine_bench import event

    from aggregator.apply import PendingEntry
    from aggregator.engine import Engine
    from aggregator.litellm_config import MetricsConfig

    rnd, pick = random.Random(1), random.Random(2)
    evs = []
    for _ in range(events):
        ev = event(rnd)
        k, m = pick.randrange(keys), pick.randrange(models)
        ev.update(
            hashed_api_key=f"{k:064x}", api_key_alias=f"key-{k}", team=f"team-{k % 50}", user=f"user-{k}",
            model=f"gpt-{m}", model_group=f"gpt-{m}", model_id=f"id-{m}", deployment_model_id=f"id-{m}",
            key_model_group=f"gpt-{m}",
        )  # fmt: skip
        evs.append(ev)
    entries = [PendingEntry(str(i), "p", i + 1, evs[i : i + 500]) for i in range(0, events, 500)]
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    for _ in range(passes):
        engine.build_delta(entries)


def _instructions(args: argparse.Namespace, passes: int) -> int:
    cmd = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--_run", str(passes), "--events", str(args.events), "--identities", args.identities,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out[-2000:]}")
    return int(match.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=4000)
    p.add_argument("--identities", default="200x20", help="keys x models (default 200x20; x2 for streaming)")
    p.add_argument("--_run", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    keys, models = (int(x) for x in a.identities.split("x"))
    if a._run:
        _build(a.events, keys, models, a._run)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    once, twice = _instructions(a, 1), _instructions(a, 2)
    per_event = (twice - once) / a.events
    print(f"warm build_delta: {per_event:,.0f} instructions per event ({a.events:,} events, {a.identities})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
