"""Process exit flushes what is buffered, within the shutdown deadline, without explicit close()."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import redis

from aggregator.local_server import free_port
from tests.support import read_events

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    from producer.callback import StreamMetricsLogger

    logger = StreamMetricsLogger()
    for i in range(int(sys.argv[1])):
        logger.increment_callback_logging_failure(callback_name=f"cb-{i}")
    print(logger.emitter.producer_id, flush=True)
    # No close(): the interpreter's exit must flush the buffer.
    """
)


def _run(n: int, env_extra: dict[str, str], timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True", **env_extra}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n)], env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc, time.monotonic() - started


def test_exit_flushes_everything_buffered(redis_url: str, namespace: str, redis_client: redis.Redis) -> None:
    # A flush interval far longer than the run: only the exit flush can deliver the events.
    proc, _ = _run(
        3000,
        {
            "LSM_REDIS_URL": redis_url,
            "LSM_NAMESPACE": namespace,
            "LSM_FLUSH_INTERVAL": "60",
            "LSM_STATS_INTERVAL": "60",
        },
    )
    assert proc.returncode == 0, proc.stderr
    producer_id = proc.stdout.strip().splitlines()[-1]
    events = read_events(redis_client, namespace)
    assert [e["callback_name"] for e in events] == [f"cb-{i}" for i in range(3000)]
    stats = redis_client.hgetall(f"{namespace}:producer:{producer_id}")
    assert int(stats[b"events_sent"]) == 3000
    assert int(stats[b"events_dropped_shutdown"]) == 0


def test_exit_with_redis_unreachable_respects_the_deadline(namespace: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    proc, elapsed = _run(
        500,
        {
            "LSM_REDIS_URL": dead,
            "LSM_NAMESPACE": namespace,
            "LSM_SHUTDOWN_TIMEOUT": "1.0",
            "LSM_CONNECT_TIMEOUT": "0.2",
        },
    )
    assert proc.returncode == 0, proc.stderr
    # Interpreter start-up plus a 1 s deadline; without the deadline the writer would retry forever.
    assert elapsed < 20, f"exit took {elapsed:.1f} s"
    assert "shutdown deadline passed, 500 events dropped" in proc.stderr
