"""Invariants 3 and 4 with a real Prometheus server: three aggregator processes are scraped while a
producer streams events; the leader is killed (SIGKILL) mid-run. PromQL ``sum`` over the targets
equals the produced totals exactly, and ``resets()`` over the run is 0 for every counter sample
(counters, histogram buckets/counts/sums). The scrape job is the one shipped in
``deploy/prometheus/prometheus.yml`` (its relabel rule included), pointed at the test's processes.

Needs the ``prometheus`` binary (Debian package ``prometheus``); skipped without it, except when
``LSM_REQUIRE_PROMETHEUS=1`` (CI), where its absence fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import prometheus_tool, wait_for
from tests.test_aggregator_crash import cost_of, tokens_of

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "scrape-token-for-tests"
EVENTS = 12_000
RATE = 1_000.0
LEASE = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Prometheus:
    def __init__(self, binary: str, tmp: Path, targets: list[str], flags: Sequence[str] = ()) -> None:
        shipped = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
        job = shipped["scrape_configs"][0]
        token_file = tmp / "token"
        token_file.write_text(TOKEN)
        job["authorization"]["credentials_file"] = str(token_file)
        job["static_configs"] = [{"targets": targets}]
        job["scrape_interval"] = "1s"
        job["scrape_timeout"] = "1s"
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [job]}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                *flags,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {(tmp / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return get(f"{self.url}/-/ready")[0] == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", data
        return list(data["data"]["result"])

    def scalar(self, promql: str) -> float:
        result = self.query(promql)
        assert len(result) == 1, (promql, result)
        return float(result[0]["value"][1])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class Pods:
    """Aggregator processes with their HTTP ports."""

    def __init__(self, url: str, namespace: str, tmp: Path, n: int = 3, env: dict[str, str] | None = None) -> None:
        self.url = url
        self.namespace = namespace
        self.tmp = tmp
        self.extra_env = env or {}
        self.ports = [free_port() for _ in range(n)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for i, port in enumerate(self.ports):
            self.start(f"pod{i}", port)

    def start(self, name: str, port: int) -> None:
        env = {
            **os.environ,
            "LSM_REDIS_URL": self.url,
            "LSM_NAMESPACE": self.namespace,
            "LSM_CONSUMER_NAME": name,
            "LSM_HTTP_HOST": "127.0.0.1",
            "LSM_HTTP_PORT": str(port),
            "LSM_METRICS_BEARER_TOKEN": TOKEN,
            "LSM_LEADER_LEASE_SECONDS": str(LEASE),
            "LSM_RENDER_CACHE_SECONDS": "0.5",
            "LSM_CLAIM_MIN_IDLE": "2",
            "LSM_CLAIM_INTERVAL": "0.5",
            "LSM_BLOCK_SECONDS": "0.2",
            "LSM_LOG_LEVEL": "INFO",
            **self.extra_env,
        }
        with open(self.tmp / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "aggregator", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def targets(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.tmp.glob("pod*.log"))
        )

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture
def prometheus_binary() -> str:
    return prometheus_tool("prometheus")


def leader_name(pods: Pods) -> str | None:
    """The pod whose own /metrics says it exports the business series."""
    for (name, proc), port in zip(pods.procs.items(), pods.ports, strict=True):
        if proc.poll() is not None:
            continue
        try:
            status, body = get(f"http://127.0.0.1:{port}/metrics?name[]=lsm_leader", TOKEN, timeout=2)
        except OSError:
            continue
        if status == 200 and b"\nlsm_leader 1.0" in body:
            return name
    return None


@pytest.fixture
def pods_and_prometheus(
    redis_url: str, namespace: str, tmp_path: Path, prometheus_binary: str
) -> Iterator[tuple[Pods, Prometheus]]:
    pods = Pods(redis_url, namespace, tmp_path)
    prom = None
    try:
        prom = Prometheus(prometheus_binary, tmp_path, pods.targets())
        yield pods, prom
    finally:
        pods.stop()
        if prom is not None:
            prom.stop()


def test_prometheus_sum_exact_and_no_counter_resets_across_a_leader_kill(
    pods_and_prometheus: tuple[Pods, Prometheus], redis_url: str, namespace: str, tmp_path: Path
) -> None:
    pods, prom = pods_and_prometheus
    wait_for(lambda: leader_name(pods) is not None, 30, 0.25, "a leader")
    out = tmp_path / "produced.json"
    producer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.test_aggregator_crash",
            "produce",
            redis_url,
            namespace,
            str(EVENTS),
            str(RATE),
            str(out),
        ],
        cwd=ROOT,
    )
    try:
        time.sleep(EVENTS / RATE / 2)
        first = leader_name(pods)
        assert first is not None
        pods.procs[first].kill()  # mid-run, mid-lease
        assert producer.wait(120) == 0
    finally:
        if producer.poll() is None:
            producer.kill()
    produced = json.loads(out.read_text())
    assert sum(produced["dropped"].values()) == 0 and produced["sent"] == EVENTS, produced

    wait_for(lambda: leader_name(pods) not in (None, first), 30, 0.25, "a new leader")
    expected_spend = sum(cost_of(i) for i in range(EVENTS))
    expected_tokens = sum(sum(tokens_of(i)) for i in range(EVENTS))

    def settled() -> bool:
        try:
            return prom.scalar("sum(litellm_requests_metric_total)") == EVENTS
        except (AssertionError, KeyError, ValueError):
            return False

    try:
        wait_for(settled, 60, 0.25, "Prometheus to see every event")
        time.sleep(3)  # a few more scrapes after the totals settled
        assert prom.scalar("sum(litellm_requests_metric_total)") == EVENTS
        assert prom.scalar("sum(litellm_spend_metric_total)") == pytest.approx(expected_spend, rel=1e-12)
        assert prom.scalar("sum(litellm_total_tokens_metric_total)") == expected_tokens
        # Exactly one live pod exports the business series; every live pod exports its own.
        assert prom.scalar('sum(lsm_leader{job="litellm-stream-metrics"})') == 1
        assert prom.scalar('count(up{job="litellm-stream-metrics"} == 1)') == 2
        # No counter sample ever went down over the whole run, leader kill included.
        _, body = get(f"{prom.url}/api/v1/label/__name__/values")
        names = [
            n
            for n in json.loads(body)["data"]
            if n.startswith("litellm_") and n.endswith(("_total", "_bucket", "_count", "_sum"))
        ]
        assert "litellm_requests_metric_total" in names and "litellm_spend_metric_total" in names
        for name in names:
            assert prom.query(f"resets({name}[5m]) > 0") == [], name
            # One identity per label set across the leader change: the series seen over the whole
            # run are exactly those alive now (per-pod series would add the dead leader's).
            assert prom.scalar(f"count(count_over_time({name}[5m]))") == prom.scalar(f"count({name})"), name
    except AssertionError:
        print(pods.logs())
        raise
