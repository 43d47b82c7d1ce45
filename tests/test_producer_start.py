"""What a user sees when the producer starts inside a proxy: one line saying where it writes,
its counters in Redis before the first event, and a bad setting as the last line printed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import redis

from tests.proxy_process import PROJECT_ROOT, free_port, litellm_cli
from tests.support import producer_stats, wait_for

LOAD_AS_THE_PROXY_DOES = textwrap.dedent(
    """
    import sys, time
    import producer

    logger = producer.stream_metrics_logger  # what `callbacks: ["producer.stream_metrics_logger"]` loads
    print(logger.emitter.producer_id, flush=True)
    sys.stdin.readline()  # wait until the test has looked
    """
)


def test_the_producer_announces_itself_and_its_counters_at_start(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "LSM_REDIS_URL": redis_url, "LSM_NAMESPACE": namespace}
    proc = subprocess.Popen(
        [sys.executable, "-c", LOAD_AS_THE_PROXY_DOES],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        producer_id = proc.stdout.readline().strip()
        # No event yet: the counters are there already.
        stats = wait_for(lambda: producer_stats(redis_client, namespace, producer_id), timeout=10)
        assert stats["events_accepted"] == "0" and stats["stream"] == f"{namespace}:{{s0}}:events"
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    start = [line for line in err.splitlines() if f"producer {producer_id} writes to" in line]
    assert len(start) == 1, err
    assert start[0].startswith("INFO litellm-stream-metrics:") and f"stream {namespace}:{{s0}}:events" in start[0]
    assert "closed: 0 events sent in all" in err  # and one line when it stops


@pytest.mark.slow
def test_a_bad_setting_is_the_last_thing_the_proxy_prints(tmp_path: Path) -> None:
    cli = litellm_cli()
    if cli is None:
        pytest.skip("the litellm CLI is not installed")
    config = tmp_path / "config.yaml"
    config.write_text('litellm_settings:\n  callbacks: ["producer.stream_metrics_logger"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSM_")}
    env.update(
        PYTHONPATH=str(PROJECT_ROOT),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LSM_BUFFER_MAX_EVENTS="a lot",
        LSM_NAMESPACE=f"lsmtest-{uuid.uuid4().hex[:8]}",
    )
    started = time.monotonic()
    proc = subprocess.run(
        [cli, "--config", str(config), "--port", str(free_port()), "--host", "127.0.0.1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    output = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0, f"the proxy started with a bad setting ({time.monotonic() - started:.0f} s)"
    assert output[-1] == (
        "litellm-stream-metrics: cannot start, invalid configuration: "
        "LSM_BUFFER_MAX_EVENTS='a lot': Input should be a valid integer, unable to parse string as an integer"
    ), "\n".join(output[-20:])
