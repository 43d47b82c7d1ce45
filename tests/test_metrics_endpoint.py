"""The /metrics, /healthz and /readyz endpoints of a running aggregator (invariants 4 and 6):
credentials required by default, 401 without any series, TLS, gzip, content negotiation,
``name[]``, readiness, and exactly one exporter of the business series among several processes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gzip
import ipaddress
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from aggregator.daemon import Aggregator
from aggregator.leadership import Leadership
from aggregator.local_server import LocalServer
from aggregator.settings import AggregatorConfigError, AggregatorSettings
from producer.emitter import Emitter
from producer.keys import Keys
from producer.wire import encode_event
from tests.support import settings_for
from tests.test_aggregator_crash import synthetic_event

TOKEN = "t0ken-for-tests"


def agg_settings(redis_url: str, namespace: str, name: str = "a1", **kw: Any) -> AggregatorSettings:
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "namespace": namespace,
        "consumer_name": name,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "metrics_bearer_token": TOKEN,
        "block_seconds": 0.1,
        "render_cache_seconds": 0,
        "leader_lease_seconds": 2,
    }
    base.update(kw)
    return AggregatorSettings(**base)


def fetch(
    url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def produce(redis_url: str, namespace: str, n: int) -> None:
    em = Emitter(settings_for(redis_url, namespace))
    for i in range(n):
        assert em.offer(encode_event(synthetic_event(i)))
    assert em.close()


class Running:
    def __init__(self, agg: Aggregator, task: asyncio.Task[None]) -> None:
        self.agg = agg
        self.task = task

    @property
    def url(self) -> str:
        assert self.agg.server is not None
        return self.agg.server.address.metrics_url

    @property
    def base(self) -> str:
        return self.url.rsplit("/", 1)[0]

    async def stop(self) -> None:
        self.agg.stop.set()
        await asyncio.wait_for(self.task, 20)


async def start(settings: AggregatorSettings) -> Running:
    agg = Aggregator(settings, serve_http=True)
    return Running(agg, asyncio.create_task(agg.run()))


async def until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def requests_total(body: bytes) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name == "litellm_requests_metric":
            total += sum(s.value for s in fam.samples)
    return total


@pytest.fixture
async def running(redis_url: str, namespace: str) -> AsyncIterator[Running]:
    produce(redis_url, namespace, 50)
    r = await start(agg_settings(redis_url, namespace))
    try:
        await until(lambda: requests_total(fetch(r.url, bearer())[2]) == 50, what="50 requests exported")
        yield r
    finally:
        await r.stop()


async def test_credentials_are_required_and_a_401_carries_no_series(running: Running) -> None:
    for headers in ({}, bearer("wrong"), {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}):
        status, h, body = await asyncio.to_thread(fetch, running.url, headers)
        assert status == 401
        assert b"litellm_" not in body and b"lsm_" not in body
        assert "Bearer" in h["WWW-Authenticate"]
    status, _, body = await asyncio.to_thread(fetch, running.url, bearer())
    assert status == 200 and requests_total(body) == 50
    series = {
        s.labels["metric"]: s.value
        for f in text_string_to_metric_families(body.decode())
        if f.name == "lsm_series"
        for s in f.samples
    }
    assert series["litellm_requests_metric"] == 50  # 50 distinct (key, model) label sets
    # Health endpoints stay open, and say only a status word and a few words more.
    assert (await asyncio.to_thread(fetch, running.base + "/healthz"))[:3:2] == (200, b"ok\n")
    status, _, body = await asyncio.to_thread(fetch, running.base + "/readyz")
    assert status == 200 and body in (b"ready (leader)\n", b"ready (standby)\n")


async def test_gzip_openmetrics_and_name_filter(running: Running) -> None:
    _, _, plain = await asyncio.to_thread(fetch, running.url, bearer())
    status, h, zipped = await asyncio.to_thread(fetch, running.url, {**bearer(), "Accept-Encoding": "gzip"})
    assert status == 200 and h["Content-Encoding"] == "gzip"
    assert requests_total(gzip.decompress(zipped)) == 50
    accept = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    status, h, om = await asyncio.to_thread(fetch, running.url, {**bearer(), "Accept": accept})
    assert status == 200 and h["Content-Type"].startswith("application/openmetrics-text")
    assert om.endswith(b"# EOF\n") and om.count(b"# EOF") == 1
    assert h["Content-Type"] != "" and plain.startswith(b"# HELP")
    url = running.url + "?name[]=litellm_requests_metric_total&name[]=lsm_leader"
    _, _, filtered = await asyncio.to_thread(fetch, url, bearer())
    names = {f.name for f in text_string_to_metric_families(filtered.decode())}
    assert names == {"litellm_requests_metric", "lsm_leader"}


async def test_basic_auth(redis_url: str, namespace: str) -> None:
    s = agg_settings(
        redis_url,
        namespace,
        metrics_bearer_token=None,
        metrics_basic_auth_username="prom",
        metrics_basic_auth_password="s3cret",
    )
    r = await start(s)
    try:
        good = {"Authorization": "Basic " + base64.b64encode(b"prom:s3cret").decode()}
        bad = {"Authorization": "Basic " + base64.b64encode(b"prom:s3creT").decode()}
        assert (await asyncio.to_thread(fetch, r.url, good))[0] == 200
        status, h, _ = await asyncio.to_thread(fetch, r.url, bad)
        assert status == 401 and h["WWW-Authenticate"].startswith("Basic")
        assert (await asyncio.to_thread(fetch, r.url, bearer()))[0] == 401
    finally:
        await r.stop()


def test_no_credentials_refuses_to_start_unless_explicitly_opened(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(AggregatorConfigError, match="LSM_METRICS_BEARER_TOKEN"):
        Aggregator(agg_settings(redis_url, namespace, metrics_bearer_token=None), serve_http=True)
    with caplog.at_level(logging.WARNING):
        agg = Aggregator(
            agg_settings(redis_url, namespace, metrics_bearer_token=None, metrics_allow_unauthenticated=True),
            serve_http=True,
        )
    assert "WITHOUT authentication" in caplog.text
    assert agg.server is not None
    agg.server.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def test_tls(redis_url: str, namespace: str, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    r = await start(agg_settings(redis_url, namespace, tls_cert_file=str(cert), tls_key_file=str(key)))
    try:
        assert r.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        status, _, body = await asyncio.to_thread(fetch, r.url, bearer(), ctx)
        assert status == 200 and b"lsm_leader" in body
        with pytest.raises(OSError):  # plain HTTP is not answered
            await asyncio.to_thread(fetch, r.url.replace("https://", "http://"), bearer())
    finally:
        await r.stop()


def test_bad_tls_files_fail_at_start_with_a_clear_message(redis_url: str, namespace: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(AggregatorConfigError, match="TLS certificate"):
        Aggregator(agg_settings(redis_url, namespace, tls_cert_file=missing, tls_key_file=missing), serve_http=True)


async def test_readyz_reports_unreachable_redis(namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    """The open endpoint says why in a few words; where Redis is and what failed go to the log."""
    r = await start(agg_settings("redis://127.0.0.1:1/0", namespace, connect_timeout=0.2, socket_timeout=0.5))
    try:
        with caplog.at_level(logging.WARNING, logger="litellm_stream_metrics.aggregator"):
            for _ in range(3):  # the detail is logged once, not at every probe
                status, _, body = await asyncio.to_thread(fetch, r.base + "/readyz")
                assert (status, body) == (503, b"not ready: Redis unreachable\n")
        detail = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("not ready:")]
        assert len(detail) == 1 and "Redis unreachable: " in detail[0] and "127.0.0.1:1" in detail[0], detail
        assert (await asyncio.to_thread(fetch, r.base + "/healthz"))[0] == 200
        status, _, body = await asyncio.to_thread(fetch, r.url, bearer())
        assert status == 200 and b"litellm_" not in body  # not the leader: no business series
    finally:
        await r.stop()


async def test_readyz_names_no_key_or_namespace(
    redis_url: str, namespace: str, redis_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    r = await start(agg_settings(redis_url, namespace))
    try:
        await until(lambda: fetch(r.base + "/readyz")[0] == 200, what="ready")
        stream = Keys(namespace).stream(0)

        def missing_then_fetch() -> tuple[int, dict[str, str], bytes] | None:
            # The consumer recreates the group within milliseconds: remove it right before each look.
            with contextlib.suppress(redis.ResponseError):
                redis_client.xgroup_destroy(stream, "aggregators")
            got = fetch(r.base + "/readyz")
            return got if got[0] == 503 else None

        with caplog.at_level(logging.WARNING, logger="litellm_stream_metrics.aggregator"):
            _, _, body = await until(missing_then_fetch, what="not ready")
        assert body == b"not ready: consumer group missing\n"
        assert namespace.encode() not in body and b"aggregators" not in body
        assert any(stream in rec.getMessage() and "aggregators" in rec.getMessage() for rec in caplog.records)
    finally:
        await r.stop()


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _serving_line(host: str, redis_url: str, namespace: str) -> tuple[str, int, bool]:
    """The start line of a real ``python -m aggregator run`` told to listen on ``host``, its
    port, and whether it answers on 127.0.0.2 (any interface but the first loopback address:
    Linux routes all of 127/8 to the loopback interface)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "LSM_REDIS_URL": redis_url,
        "LSM_NAMESPACE": namespace,
        "LSM_HTTP_HOST": host,
        "LSM_HTTP_PORT": "0",
        "LSM_METRICS_BEARER_TOKEN": TOKEN,
    }
    proc = subprocess.Popen([sys.executable, "-m", "aggregator", "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        for line in proc.stderr:
            lines.append(line)
            if m := re.search(r"serving (.*)", line):
                port = int(re.findall(r":(\d+)", m[1])[0])
                assert fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200
                return m[1], port, _answers("127.0.0.2", port)
        raise AssertionError("".join(lines))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_start_line_says_where_it_really_listens(redis_url: str, namespace: str) -> None:
    said, port, elsewhere = _serving_line("0.0.0.0", redis_url, namespace)
    assert said == (
        f"/metrics, /healthz, /readyz on 0.0.0.0:{port} (all interfaces; from this host: http://127.0.0.1:{port}/metrics)"
    )
    assert elsewhere  # it does listen on every interface
    said, port, elsewhere = _serving_line("127.0.0.1", redis_url, namespace)
    assert said == f"/metrics, /healthz, /readyz on 127.0.0.1:{port} (http://127.0.0.1:{port}/metrics)"
    assert not elsewhere


async def test_exactly_one_process_exports_and_a_clean_stop_hands_over(redis_url: str, namespace: str) -> None:
    produce(redis_url, namespace, 30)
    pods = [await start(agg_settings(redis_url, namespace, name=f"p{i}", leader_lease_seconds=5)) for i in range(3)]
    try:

        def exporters() -> list[int]:
            out = []
            for i, p in enumerate(pods):
                if p.task.done():
                    continue
                if requests_total(fetch(p.url, bearer())[2]) == 30:
                    out.append(i)
            return out

        await until(lambda: len(exporters()) == 1, what="one exporter")
        for _ in range(10):
            assert len(await asyncio.to_thread(exporters)) == 1
            await asyncio.sleep(0.1)
        leader = (await asyncio.to_thread(exporters))[0]
        stopped_at = time.monotonic()
        await pods[leader].stop()
        # Released on a clean stop: another process takes over well within the 5 s lease.
        await until(lambda: len(exporters()) == 1, timeout=4.5, what="a new exporter")
        assert time.monotonic() - stopped_at < 4.5
    finally:
        for p in pods:
            if not p.task.done():
                await p.stop()


async def test_redis_errors_are_errors_not_another_leader(private_server: LocalServer, namespace: str) -> None:
    import redis.asyncio as aioredis

    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    lead = Leadership(dead, Keys(namespace), "x", ttl=2)
    await lead.step()
    assert lead.errors == 1 and lead.acquisitions == 0 and not lead.is_leader()
    assert lead.last_error is not None and "Connect" in lead.last_error
    await dead.aclose()
    # A holder that loses Redis keeps exporting only while its lease certainly lasts, then stops
    # (and counts the errors); it never decides that someone else leads.
    client = aioredis.Redis.from_url(private_server.url, socket_connect_timeout=0.2, socket_timeout=0.5)
    lead = Leadership(client, Keys(namespace), "y", ttl=1.5)
    await lead.step()
    assert lead.is_leader() and lead.acquisitions == 1
    private_server.pause()  # SIGSTOP: a hung Redis
    try:
        await lead.step()
        assert lead.errors == 1 and lead.is_leader()  # still within its lease
        await asyncio.sleep(1.5)
        await lead.step()
        assert lead.errors == 2 and lead.losses == 1 and not lead.is_leader()
    finally:
        private_server.resume()
    await client.aclose()


def test_a_frozen_leader_is_replaced_within_the_lease_and_exports_nothing_when_resumed(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    from tests.test_prometheus_scrape import LEASE, TOKEN, Pods, get, leader_name

    produce(redis_url, namespace, 20)
    pods = Pods(redis_url, namespace, tmp_path, n=2)
    try:
        deadline = time.monotonic() + 30
        while (first := leader_name(pods)) is None:
            assert time.monotonic() < deadline, pods.logs()
            time.sleep(0.1)
        frozen = pods.procs[first]
        port = pods.ports[list(pods.procs).index(first)]
        frozen.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            while (second := leader_name(pods)) in (None, first):
                assert time.monotonic() - stopped < LEASE + LEASE / 3 + 2, "no takeover within the lease"
                time.sleep(0.1)
        finally:
            frozen.send_signal(signal.SIGCONT)
        # Resumed, the former leader's own clock tells it the lease is gone: no business series.
        status, body = get(f"http://127.0.0.1:{port}/metrics", TOKEN, timeout=10)
        assert status == 200 and b"\nlitellm_" not in body and b"\nlsm_leader 0.0" in body
        assert leader_name(pods) == second
    finally:
        pods.stop()


@pytest.mark.parametrize(
    ("header", "gzip_expected"),
    [
        (None, False),
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip;q=abc", False),
        ("*", True),
        ("identity", False),
    ],
)
def test_accept_encoding_parsing(header: str | None, gzip_expected: bool) -> None:
    from aggregator.http_server import _accepts_gzip

    assert _accepts_gzip(header) is gzip_expected
