"""Importing the producer package inside the proxy is cheap: LiteLLM loads only on first use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_producer_does_not_import_litellm_or_heavy_modules() -> None:
    code = (
        "import sys, producer\n"
        "heavy = [m for m in ('litellm', 'prometheus_client', 'pydantic', 'redis') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_config_attribute_builds_one_shared_instance() -> None:
    code = (
        "import producer\n"
        "a = producer.stream_metrics_logger\n"
        "b = producer.stream_metrics_logger\n"
        "from litellm.integrations.prometheus import PrometheusLogger\n"
        "assert a is b and isinstance(a, PrometheusLogger) and isinstance(a, producer.StreamMetricsLogger)\n"
        "a.close(0.1)\n"
        "print('ok')\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LSM_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
