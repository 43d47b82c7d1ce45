"""The aggregator image, built from deploy/Dockerfile and run for real.

The base is ``LSM_IMAGE_BASE`` if set (e.g. ``python:3.11-slim`` where a registry can be
reached), else a local Debian bookworm with Python made by ``scripts/image_base.sh``
(debootstrap, cached under ``LSM_IMAGE_CACHE``), passed as ``--build-arg BASE_IMAGE``. The
container runs as the Kubernetes manifests run it (non-root, read-only root file system, no
capabilities, no new privileges) on the host network against the test Redis; the test writes a
LiteLLM call through the real producer, sees it on ``/metrics`` (bearer token; 401 without),
runs the image's HEALTHCHECK (podman), and stops the container with SIGTERM: exit code 0 within
seconds. ``check-config`` runs in the image as deploy/README.md shows.

The engine: ``LSM_CONTAINER_ENGINE`` (a command, e.g. ``podman --runtime runc`` or ``docker``),
else the first of podman (its configured runtime, then runc; with the machine's
containers.conf, then with ``default_ulimits = []``), docker, that can start a container.
Where none can, or the base cannot be made, the tests are skipped with the reason, and fail
instead with ``LSM_REQUIRE_CONTAINER_ENGINE=1`` (CI). Engines on Debian:
``apt-get install podman runc debootstrap``.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
import litellm
import pytest

from producer.callback import StreamMetricsLogger
from tests.proxy_process import free_port
from tests.support import settings_for, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "localhost/lsm-base:bookworm"
IMAGE = "localhost/litellm-stream-metrics-aggregator:test"
TOKEN = "image-test-" + uuid.uuid4().hex
CONFIG = ROOT / "deploy" / "compose" / "litellm-config.yaml"


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("LSM_REQUIRE_CONTAINER_ENGINE") == "1":
        pytest.fail(f"LSM_REQUIRE_CONTAINER_ENGINE=1, but {reason}")
    pytest.skip(reason)


@dataclass
class Engine:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def podman(self) -> bool:
        return Path(self.argv[0]).name == "podman"

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **self.env}
        )
        if check and r.returncode != 0:
            pytest.fail(f"{self.describe(*args)} exited with {r.returncode}:\n{_tail(r.stdout + r.stderr)}")
        return r

    def describe(self, *args: str) -> str:
        prefix = " ".join(f"{k}={v}" for k, v in self.env.items())
        return " ".join(filter(None, [prefix, shlex.join([*self.argv, *args])]))


def _tail(text: str, lines: int = 40) -> str:
    # podman without systemd logs that it cannot schedule the HEALTHCHECK timer: not our concern.
    kept = [line for line in text.splitlines() if "unable to get systemd connection" not in line]
    return "\n".join(kept[-lines:])


def _candidates(tmp: Path) -> list[Engine]:
    if os.environ.get("LSM_CONTAINER_ENGINE"):
        argv = shlex.split(os.environ["LSM_CONTAINER_ENGINE"])
        return [Engine(argv)] if shutil.which(argv[0]) else []
    out: list[Engine] = []
    podman = shutil.which("podman")
    if podman:
        # Where the hard RLIMIT_NOFILE is below podman's default nofile ulimit, containers fail
        # to start ("error setting rlimit type 7"): a private containers.conf without it.
        conf = tmp / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        for env in ({}, {"CONTAINERS_CONF": str(conf)}):
            out.append(Engine([podman], env))
            if shutil.which("runc"):
                out.append(Engine([podman, "--runtime", "runc"], env))
    docker = shutil.which("docker")
    if docker:
        out.append(Engine([docker]))
    return out


@pytest.fixture(scope="module")
def engine_and_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, str]:
    candidates = _candidates(tmp_path_factory.mktemp("engine"))
    if not candidates:
        chosen = os.environ.get("LSM_CONTAINER_ENGINE")
        unavailable(f"LSM_CONTAINER_ENGINE={chosen}: not found" if chosen else "neither podman nor docker is installed")
    first = candidates[0]
    if Path(first.argv[0]).name == "docker" and first("info", check=False).returncode != 0:
        unavailable(f"docker cannot reach an engine: {_tail(first('info', check=False).stderr, 3)}")

    base = os.environ.get("LSM_IMAGE_BASE") or DEFAULT_BASE
    if base == DEFAULT_BASE:
        r = subprocess.run(
            ["bash", str(ROOT / "scripts" / "image_base.sh"), base],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, **first.env, "LSM_CONTAINER_ENGINE": shlex.join(first.argv)},
        )
        if r.returncode != 0:
            unavailable(f"scripts/image_base.sh could not make the base image:\n{_tail(r.stdout + r.stderr, 15)}")

    failures = []
    for engine in candidates:
        probe = ("run", "--rm", "--network", "host", base, "python", "-c", "print('ok')")
        r = engine(*probe, timeout=120, check=False)
        if r.returncode == 0 and r.stdout.strip() == "ok":
            return engine, base
        failures.append(f"$ {engine.describe(*probe)}\n{_tail(r.stdout + r.stderr, 3)}")
    unavailable("no container engine here can start a container:\n" + "\n".join(failures))


@pytest.fixture(scope="module")
def image(engine_and_base: tuple[Engine, str]) -> Iterator[tuple[Engine, str]]:
    engine, base = engine_and_base
    fmt = ["--format", "docker"] if engine.podman else []  # OCI images drop the HEALTHCHECK
    args = ["build", *fmt, "-f", str(ROOT / "deploy" / "Dockerfile"), "--build-arg", f"BASE_IMAGE={base}"]
    started = time.monotonic()
    engine(*args, "-t", IMAGE, str(ROOT), timeout=900)
    print(f"\nimage built in {time.monotonic() - started:.1f} s on {base} with {engine.describe()}")
    try:
        yield engine, IMAGE
    finally:
        engine("rmi", "-f", IMAGE, check=False)


async def _write_one_call(redis_url: str, namespace: str) -> None:
    """One successful LiteLLM call through the real producer callback, flushed to Redis."""
    logger = StreamMetricsLogger(settings=settings_for(redis_url, namespace))
    saved = {
        name: list(value)
        for name, value in vars(litellm).items()
        if isinstance(value, list) and name.endswith(("callback", "callbacks"))
    }
    litellm.callbacks = [logger]
    try:
        await litellm.acompletion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            mock_response="hello from the image test",
            metadata={"user_api_key_hash": "sk-image-test", "user_api_key_team_id": "team-image"},
        )
        await asyncio.to_thread(wait_for, lambda: logger.emitter.counters.accepted >= 1, 10)
    finally:
        for name, value in saved.items():
            setattr(litellm, name, value)
        assert logger.close()


async def test_container_serves_metrics_and_stops_cleanly_on_sigterm(
    image: tuple[Engine, str], redis_url: str, namespace: str
) -> None:
    engine, tag = image
    name = f"lsm-image-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        "LSM_REDIS_URL": redis_url,
        "LSM_NAMESPACE": namespace,
        "LSM_CONSUMER_NAME": name,
        "LSM_HTTP_HOST": "127.0.0.1",
        "LSM_HTTP_PORT": str(port),
        "LSM_METRICS_BEARER_TOKEN": TOKEN,
        "LSM_LITELLM_CONFIG": "/etc/litellm/config.yaml",
        "LSM_BLOCK_SECONDS": "0.2",
    }
    # As the Kubernetes Deployment runs it: the image's non-root user, read-only root file
    # system, no capabilities, no privilege escalation.
    hardening = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    engine(
        "run", "-d", "--name", name, "--network", "host", *hardening,
        *[f"--env={k}={v}" for k, v in env.items()],
        "-v", f"{CONFIG}:/etc/litellm/config.yaml:ro",
        tag,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(healthy, timeout=60, interval=0.25, what="/healthz")
        except AssertionError:
            pytest.fail(f"the container never answered /healthz:\n{_tail(engine('logs', name, check=False).stderr)}")
        assert engine("exec", name, "python", "-c", "import os; print(os.getuid())").stdout.strip() == "10001"
        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 401

        await _write_one_call(redis_url, namespace)

        def requests_metric() -> str | None:
            r = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            lines = [x for x in r.text.splitlines() if x.startswith("litellm_requests_metric_total{")]
            return lines[0] if r.status_code == 200 and lines else None

        try:
            line = wait_for(requests_metric, timeout=30, interval=0.25, what="litellm_requests_metric")
        except AssertionError:
            pytest.fail(f"/metrics never showed the call:\n{_tail(engine('logs', name, check=False).stderr)}")
        assert 'team="team-image"' in line and line.endswith(" 1.0"), line
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200

        if engine.podman:  # the Dockerfile's HEALTHCHECK, run once by hand (no systemd timer here)
            r = engine("healthcheck", "run", name, check=False)
            assert r.returncode == 0, _tail(r.stdout + r.stderr)

        engine("kill", "--signal", "TERM", name)
        started = time.monotonic()
        code = engine("wait", name, timeout=60).stdout.strip().splitlines()[-1]
        stopped_in = time.monotonic() - started
        r = engine("logs", name)
        logs = r.stdout + r.stderr
        assert code == "0", _tail(logs)
        assert stopped_in < 15, stopped_in
        assert "received SIGTERM" in logs and "released the exporter lease" in logs, _tail(logs)
    finally:
        engine("rm", "-f", name, check=False)


def test_check_config_in_the_image(image: tuple[Engine, str]) -> None:
    """deploy/README.md's check-config command, and the lsm-aggregator command, in the image."""
    engine, tag = image
    mount = ["-v", f"{CONFIG}:/c.yaml:ro"]
    for entrypoint in (["--entrypoint", "python", tag, "-m", "aggregator"], ["--entrypoint", "lsm-aggregator", tag]):
        out = engine("run", "--rm", *mount, *entrypoint, "check-config", "/c.yaml").stdout
        assert "litellm_requests_metric [" in out, out
