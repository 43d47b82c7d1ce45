"""LSM_BUFFER_MAX_BYTES bounds what the buffer really costs the proxy process (RSS), not only
the encoded bytes it counts: measured in a fresh process whose Redis is unreachable, so every
event the real callback accepts stays in the buffer until the bound refuses the next one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aggregator.local_server import free_port

ROOT = Path(__file__).resolve().parents[1]
BOUND = 16 * 1024 * 1024

FILL_UNTIL_FULL = textwrap.dedent(
    """
    import json, sys
    from producer.callback import StreamMetricsLogger

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    logger = StreamMetricsLogger()
    pad = "x" * int(sys.argv[1])
    for i in range(1000):  # warm up: allocator arenas, interned strings
        logger.increment_callback_logging_failure(callback_name=f"warm-{i}")
    before, offered = rss(), 0
    counters = logger.emitter.counters
    while not counters.dropped["buffer_full_bytes"]:
        logger.increment_callback_logging_failure(callback_name=f"cb-{offered}-{pad}")
        offered += 1
    payload = logger.emitter.snapshot()["buffer_bytes"]
    print(json.dumps({"grown": rss() - before, "accepted": counters.accepted, "payload": payload}))
    """
)


@pytest.mark.parametrize("pad", [0, 900], ids=["small-events", "1kb-events"])
def test_the_byte_bound_bounds_rss(pad: int) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LSM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: all events stay
        "LSM_BUFFER_MAX_BYTES": str(BOUND),
        "LSM_BUFFER_MAX_EVENTS": "10000000",
        "LSM_CONNECT_TIMEOUT": "0.2",
        "LSM_SHUTDOWN_TIMEOUT": "0.2",
    }
    proc = subprocess.run(
        [sys.executable, "-c", FILL_UNTIL_FULL, str(pad)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["accepted"] > 10_000  # the buffer really filled
    assert result["payload"] <= BOUND
    # Within a small factor of the bound (orjson's output keeps 4 KiB or more per event: an
    # unbounded buffer of such objects grows 4-30x its counted bytes).
    assert result["grown"] <= 1.5 * BOUND, result
