"""A real ``litellm --config`` proxy stopped with real signals, as Docker and Kubernetes stop it.

SIGTERM (to the main process only, as a container runtime sends it) during a burst of
requests, 0, 50 and 500 ms after the burst starts: every request the client saw answered is
counted by a real aggregator process, with LiteLLM's single-process uvicorn start, its
multi-worker start (``--num_workers 2``) and gunicorn (``--run_gunicorn``). uvicorn re-raises
SIGTERM after its shutdown, so the process dies without running ``atexit``: only the flush on
the proxy's shutdown path (producer/lifecycle.py) delivers the last events.

SIGKILL (to every process, as the runtime kills a container) cannot be survived; what it costs
must show: the producer reports its counters while events wait in its buffer, and the
aggregator counts the events a producer left unsent when it stopped reporting without a clean
close (``events_lost_unclean_exit``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from aggregator.local_server import LocalServer
from producer.keys import Keys
from tests.fake_upstream import FakeUpstreamServer
from tests.proxy_process import PROJECT_ROOT, ProxyProcess, free_port, start_proxy
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MASTER_KEY = "sk-lsm-shutdown-" + uuid.uuid4().hex
TOKEN = "shutdown-test-token"
START_MODES = {
    "uvicorn": (),
    "uvicorn-2-workers": ("--num_workers", "2"),
    "gunicorn-2-workers": ("--run_gunicorn", "--num_workers", "2"),
}
SIGNAL_DELAYS = (0.0, 0.05, 0.5)


def _config(api_base: str) -> str:
    return (
        "model_list:\n"
        "  - model_name: gpt-ok\n"
        "    litellm_params:\n"
        "      model: openai/ok-model\n"
        f"      api_base: {api_base}\n"
        "      api_key: fake-upstream-key\n"
        "litellm_settings:\n"
        '  callbacks: ["producer.stream_metrics_logger"]\n'
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreamServer]:
    server = FakeUpstreamServer("shutdown test answer").start()
    try:
        yield server
    finally:
        server.stop()


class AggregatorProcess:
    """``python -m aggregator run`` over the test's namespace, quick to notice silent producers."""

    def __init__(self, redis_url: str, namespace: str, logdir: Path) -> None:
        self.port = free_port()
        self.log_path = logdir / "aggregator.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(PROJECT_ROOT),
            "LSM_REDIS_URL": redis_url,
            "LSM_NAMESPACE": namespace,
            "LSM_CONSUMER_NAME": "shutdown-test",
            "LSM_HTTP_HOST": "127.0.0.1",
            "LSM_HTTP_PORT": str(self.port),
            "LSM_METRICS_BEARER_TOKEN": TOKEN,
            "LSM_RENDER_CACHE_SECONDS": "0",
            "LSM_BLOCK_SECONDS": "0.2",
            "LSM_HOUSEKEEPING_INTERVAL": "0.5",
            "LSM_PRODUCER_GONE_SECONDS": "1",
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aggregator", "run"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log
            )

    def scrape(self) -> str:
        assert self.proc.poll() is None, self.log_path.read_text(errors="replace")[-3000:]
        try:
            resp = httpx.get(
                f"http://127.0.0.1:{self.port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
            )
        except httpx.ConnectError:  # not listening yet
            return ""
        return resp.text if resp.status_code == 200 else ""

    def total(self, family: str, **labels: str) -> float:
        """Sum of the samples of ``family`` (a sample name) whose labels include ``labels``."""
        total = 0.0
        for line in self.scrape().splitlines():
            m = re.match(rf"^{re.escape(family)}(\{{.*\}})? (\S+)$", line)
            if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
                total += float(m.group(2))
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def aggregator(redis_url: str, namespace: str, tmp_path: Path) -> Iterator[AggregatorProcess]:
    agg = AggregatorProcess(redis_url, namespace, tmp_path)
    try:
        yield agg
    finally:
        agg.stop()


@dataclass
class Tally:
    """What the clients saw: answered (200), refused (never reached the proxy), and requests
    whose fate the client cannot know (the connection broke after the request was sent)."""

    answered: int = 0
    refused: int = 0
    unknown: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str) -> None:
        with self.lock:
            setattr(self, outcome, getattr(self, outcome) + 1)


def _request(client: httpx.Client, tally: Tally) -> bool:
    """One chat completion; False once the proxy no longer takes requests."""
    try:
        resp = client.post(
            "/v1/chat/completions", json={"model": "gpt-ok", "messages": [{"role": "user", "content": "hi"}]}
        )
    except httpx.ConnectError:
        tally.add("refused")
        return False
    except httpx.HTTPError:
        tally.add("unknown")
        return False
    tally.add("answered" if resp.status_code == 200 else "unknown")
    return resp.status_code == 200


def _client(proxy: ProxyProcess) -> httpx.Client:
    return httpx.Client(base_url=proxy.base_url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=60)


def burst_then_signal(proxy: ProxyProcess, sig: int, delay: float, tally: Tally, threads: int = 8) -> None:
    """Clients send requests back to back; ``delay`` seconds after they start, the main process
    gets ``sig`` (what a container runtime sends); the clients stop at the first refusal."""
    started = threading.Barrier(threads + 1)

    def client_loop() -> None:
        with _client(proxy) as client:
            started.wait()
            for _ in range(200):
                if not _request(client, tally):
                    return

    workers = [threading.Thread(target=client_loop) for _ in range(threads)]
    for w in workers:
        w.start()
    started.wait()
    time.sleep(delay)
    os.kill(proxy.pid, sig)
    for w in workers:
        w.join(120)
    proxy.proc.wait(120)


def _producer_hashes(client: redis.Redis, namespace: str) -> list[dict[str, str]]:
    ids = [pid.decode() for pid in client.zrange(Keys(namespace).producer_registry(), 0, -1)]
    return [
        {k.decode(): v.decode() for k, v in client.hgetall(Keys(namespace).producer_stats(pid)).items()} for pid in ids
    ]


@pytest.mark.parametrize("mode", list(START_MODES))
def test_sigterm_flushes_every_answered_request(
    mode: str,
    upstream: FakeUpstreamServer,
    aggregator: AggregatorProcess,
    redis_url: str,
    namespace: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    env = {"LSM_REDIS_URL": redis_url, "LSM_NAMESPACE": namespace}
    tally = Tally()
    rounds = [(signal.SIGTERM, delay) for delay in SIGNAL_DELAYS]
    if mode == "uvicorn":  # the plain start again, and Ctrl-C
        rounds += [*rounds, (signal.SIGINT, 0.05)]
    for i, (sig, delay) in enumerate(rounds):
        proxy = start_proxy(_config(upstream.api_base), tmp_path / f"proxy-{i}", env, START_MODES[mode])
        try:
            with _client(proxy) as client:
                for _ in range(10):  # warm up: the first requests initialise LiteLLM's clients
                    assert _request(client, tally), proxy.log_tail()
            burst_then_signal(proxy, sig, delay, tally)
        finally:
            proxy.stop()
    assert tally.answered >= 10 * len(rounds)

    # Every producer closed cleanly: final counters written, nothing dropped or left behind.
    producers = _producer_hashes(redis_client, namespace)
    assert producers, "no producer reported"
    for p in producers:
        assert "closed_at" in p, f"a producer stopped without its final report: {p}"
        assert int(p["buffer_events"]) == 0, p
        assert all(int(v) == 0 for k, v in p.items() if k.startswith("events_dropped_")), p
    sent = sum(int(p["events_sent"]) for p in producers)

    def counted() -> float:
        return aggregator.total("litellm_proxy_total_requests_metric_total")

    wait_for(lambda: counted() >= sent, timeout=60, interval=0.5)
    total = counted()
    assert total == sent
    # Every request the client saw answered is counted; a request whose connection broke after
    # it was sent may have been answered by the proxy (then it is counted too).
    assert tally.answered <= total <= tally.answered + tally.unknown, (tally, total)
    assert aggregator.total("lsm_shard_stat_total", stat="events_lost_unclean_exit") == 0


@pytest.mark.parametrize("mode", ["uvicorn", "uvicorn-2-workers"])
def test_sigkill_loss_shows_in_the_counters(
    mode: str,
    upstream: FakeUpstreamServer,
    aggregator: AggregatorProcess,
    redis_url: str,
    namespace: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    # Events wait in the buffer (a long flush interval) while the counters are reported often.
    env = {
        "LSM_REDIS_URL": redis_url,
        "LSM_NAMESPACE": namespace,
        "LSM_FLUSH_INTERVAL": "600",
        "LSM_STATS_INTERVAL": "0.2",
    }
    tally = Tally()
    proxy = start_proxy(_config(upstream.api_base), tmp_path / "proxy", env, START_MODES[mode])
    try:
        with _client(proxy) as client:
            for _ in range(30):
                assert _request(client, tally), proxy.log_tail()

        def accepted() -> int:
            return sum(int(p.get("events_accepted", 0)) for p in _producer_hashes(redis_client, namespace))

        # The producer's report shows what it accepted ahead of what it sent.
        wait_for(lambda: accepted() == tally.answered, timeout=30, interval=0.1)
        assert sum(int(p["events_sent"]) for p in _producer_hashes(redis_client, namespace)) == 0
        os.killpg(proxy.pid, signal.SIGKILL)  # the runtime kills every process of the container
        proxy.proc.wait(30)
    finally:
        proxy.stop()

    def lost() -> float:
        return aggregator.total("lsm_shard_stat_total", stat="events_lost_unclean_exit")

    wait_for(lambda: lost() >= tally.answered, timeout=60, interval=0.5)
    assert lost() == tally.answered == 30
    assert aggregator.total("lsm_shard_stat_total", stat="producer_exits_unclean") >= 1
    assert aggregator.total("litellm_proxy_total_requests_metric_total") == 0


@pytest.fixture
def aof_server() -> Iterator[LocalServer]:
    """A private server that fsyncs every write: what it acknowledged survives its kill."""
    server = LocalServer(appendonly=True).start()
    try:
        yield server
    finally:
        server.close()


def test_redis_down_at_stop_delays_it_by_the_shutdown_timeout_only(
    upstream: FakeUpstreamServer, aof_server: LocalServer, tmp_path: Path
) -> None:
    """Redis is down when the proxy is stopped: the flush gives up after LSM_SHUTDOWN_TIMEOUT,
    the process exits, and the events it held are counted as lost once Redis is back."""
    namespace = f"lsmtest-{uuid.uuid4().hex[:12]}"
    env = {
        "LSM_REDIS_URL": aof_server.url,
        "LSM_NAMESPACE": namespace,
        "LSM_FLUSH_INTERVAL": "600",
        "LSM_STATS_INTERVAL": "0.2",
        "LSM_SHUTDOWN_TIMEOUT": "1",
    }
    tally = Tally()
    client = redis.Redis.from_url(aof_server.url)
    proxy = start_proxy(_config(upstream.api_base), tmp_path / "proxy", env)
    try:
        with _client(proxy) as http:
            for _ in range(20):
                assert _request(http, tally), proxy.log_tail()
        wait_for(
            lambda: sum(int(p.get("events_accepted", 0)) for p in _producer_hashes(client, namespace)) == 20,
            timeout=30,
            interval=0.1,
        )
        aof_server.kill()
        started = time.monotonic()
        os.kill(proxy.pid, signal.SIGTERM)
        proxy.proc.wait(60)
        stopped_in = time.monotonic() - started
    finally:
        proxy.stop()
    # LiteLLM's own teardown plus at most LSM_SHUTDOWN_TIMEOUT; without the deadline the writer
    # would retry forever.
    assert stopped_in < 20, f"the proxy took {stopped_in:.1f} s to stop:\n{proxy.log_tail()}"
    assert "shutdown deadline passed, 20 events dropped" in proxy.log_path.read_text(errors="replace")

    aof_server.start()
    aggregator = AggregatorProcess(aof_server.url, namespace, tmp_path)
    try:

        def lost() -> float:
            return aggregator.total("lsm_shard_stat_total", stat="events_lost_unclean_exit")

        wait_for(lambda: lost() >= 20, timeout=60, interval=0.5)
        assert lost() == 20
        assert aggregator.total("litellm_proxy_total_requests_metric_total") == 0
    finally:
        aggregator.stop()
        client.close()
