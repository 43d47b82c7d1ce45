"""The package as a user installs it, not as the test suite imports it from the checkout.

``python -m build`` makes the sdist and the wheel once per module; ``twine check --strict``
accepts both. A fresh virtual environment gets the wheel without extras (only ``redis`` and
``orjson`` and ``pydantic`` may come along), then LiteLLM with the modules its proxy needs (the ``test`` extra of
``pyproject.toml`` less the test tools); a real ``litellm --config`` proxy from that environment,
with the callback line from README.md and nothing of the checkout on its path, answers one request
from the fake upstream, and the event is in Redis. Then the same environment gets the
``aggregator`` extra and its installed ``lsm-aggregator`` command checks a config, applies that
event, serves it on ``/metrics`` (bearer token) and stops on SIGTERM; ``lsm-budgets`` runs too.
A second environment installs the package from a ``git+file://`` URL (the README's git install).

Speed: pip keeps no HTTP cache on machines whose network strips caching headers, so the
wheels are kept in a wheelhouse (``LSM_TEST_WHEELHOUSE``, default
``~/.cache/litellm-stream-metrics/test-wheels``), filled on first use with ``pip wheel`` at the
versions of the running environment (its ``pip freeze`` as constraints); later installs are
``--no-index --find-links`` from there (about 7 s for LiteLLM and the proxy's modules).
Requires ``build`` and ``twine`` (the ``dev`` extra) and network access on first use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import tomllib
import yaml

from tests.fake_upstream import FakeUpstreamServer
from tests.proxy_process import ProxyProcess, free_port, start_proxy
from tests.support import producer_stats, read_entries, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]["name"]
VERSION = PYPROJECT["project"]["version"]
# Entries of the `test` extra that the proxy does not need (test tools, the test database).
TEST_ONLY = {"pytest", "pytest-asyncio", "pytest-timeout", "pgserver", "psycopg", "kubernetes-validate"}
# What a producer-only install may bring besides the package: its dependencies, and what those
# need on this Python (redis-py needs async-timeout before Python 3.11.3). pydantic is also a
# requirement of LiteLLM: a proxy has it already.
PYDANTIC = {"pydantic", "pydantic-core", "annotated-types", "typing-extensions", "typing-inspection"}
PRODUCER_DEPENDENCIES = {"redis", "orjson"} | PYDANTIC | ({"async-timeout"} if sys.version_info < (3, 11, 3) else set())
# Installed in every new virtual environment by `python -m venv`, not by us.
VENV_SEED = {"pip", "setuptools", "wheel"}
MASTER_KEY = "sk-lsm-install-" + uuid.uuid4().hex
TOKEN = "install-test-" + uuid.uuid4().hex
NOISE = "is ignored: it is neither a file nor a directory"  # a pip configuration with file:// indexes


def _name(requirement: str) -> str:
    """The normalised project name of a requirement string."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def proxy_requirements() -> list[str]:
    return [r for r in PYPROJECT["project"]["optional-dependencies"]["test"] if _name(r) not in TEST_ONLY]


def run(*cmd: str | Path, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        out = "\n".join(line for line in (r.stdout + r.stderr).splitlines() if NOISE not in line)
        pytest.fail(f"{' '.join(map(str, cmd))} exited with {r.returncode}:\n{out[-6000:]}")
    return r


# -- the distributions -----------------------------------------------------------------------------


@dataclass
class Dist:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    for module in ("build", "twine"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (the dev extra)")
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=ROOT)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dist(sdist, wheel)


def test_sdist_and_wheel_pass_twine_check(dist: Dist) -> None:
    r = run(sys.executable, "-m", "twine", "check", "--strict", dist.sdist, dist.wheel)
    assert r.stdout.count("PASSED") == 2, r.stdout
    assert dist.wheel.name == f"{PROJECT.replace('-', '_')}-{VERSION}-py3-none-any.whl"

    with zipfile.ZipFile(dist.wheel) as whl:
        names = set(whl.namelist())
        info = f"{PROJECT.replace('-', '_')}-{VERSION}.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    # Both packages with their data files; nothing else at the top level.
    assert {n.split("/")[0] for n in names} == {"producer", "aggregator", info}
    for data in (
        "producer/py.typed",
        "aggregator/py.typed",
        "aggregator/apply.lua",
        "aggregator/budgets/fenced_write.lua",
    ):
        assert data in names, data
    assert f"{info}/licenses/LICENSE" in names
    assert "License-Expression: MIT" in metadata
    assert "Classifier: License ::" not in metadata  # PEP 639: the expression replaces them
    # Without extras: exactly redis, orjson and pydantic.
    plain = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert {_name(line.split(":", 1)[1]) for line in plain} == {"redis", "orjson", "pydantic"}
    assert "lsm-aggregator = aggregator.__main__:console_main" in entry_points
    assert "lsm-budgets = aggregator.budgets.__main__:console_main" in entry_points

    with tarfile.open(dist.sdist) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    for path in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "producer/callback.py"):
        assert path in members, path
    assert not any(m.startswith("tests/") for m in members)


# -- installing into fresh environments ------------------------------------------------------------


@dataclass
class Wheelhouse:
    path: Path
    constraints: Path

    def install(self, python: Path, *requirements: str | Path) -> None:
        """pip install from the wheelhouse only; on a miss, fill it from the index and retry."""
        cmd = (python, "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", self.path)
        cmd += ("-c", self.constraints, *requirements)
        if subprocess.run([str(c) for c in cmd], capture_output=True, timeout=600).returncode == 0:
            return
        self.fill(python, *requirements)
        run(*cmd)

    def fill(self, python: Path, *requirements: str | Path) -> None:
        """Wheels of ``requirements`` and what they need, the project itself excepted (a wheel
        path or a URL of it stands for its dependencies), plus its build backend."""
        wanted = list(PYPROJECT["build-system"]["requires"])
        for req in map(str, requirements):
            if req.endswith(".whl") or ".whl[" in req or req.startswith("git+"):
                extras = re.findall(r"\[([^\]]*)\]", req)
                wanted += PYPROJECT["project"]["dependencies"]
                for extra in (x.strip() for e in extras for x in e.split(",")):
                    wanted += PYPROJECT["project"]["optional-dependencies"][extra]
            else:
                wanted.append(req)
        self.path.mkdir(parents=True, exist_ok=True)
        run(python, "-m", "pip", "wheel", "-q", "-w", self.path, "-c", self.constraints, *wanted)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    default = Path.home() / ".cache" / "litellm-stream-metrics" / "test-wheels"
    path = Path(os.environ.get("LSM_TEST_WHEELHOUSE") or default)
    frozen = run(sys.executable, "-m", "pip", "freeze", "--exclude-editable").stdout.splitlines()
    pins = [line for line in frozen if "==" in line and " @ " not in line and _name(line) != PROJECT]
    constraints = tmp_path_factory.mktemp("constraints") / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    return Wheelhouse(path, constraints)


def new_venv(path: Path) -> Path:
    run(sys.executable, "-m", "venv", path)
    return path / "bin" / "python"


def installed(python: Path) -> set[str]:
    listing = json.loads(run(python, "-m", "pip", "list", "--format", "json").stdout)
    return {_name(p["name"]) for p in listing} - VENV_SEED


@pytest.fixture(scope="module")
def venv(dist: Dist, wheelhouse: Wheelhouse, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed, no extras."""
    python = new_venv(tmp_path_factory.mktemp("venv") / "env")
    wheelhouse.install(python, dist.wheel)
    return python


def test_producer_install_pulls_only_redis_and_orjson(venv: Path) -> None:
    assert installed(venv) == {PROJECT} | PRODUCER_DEPENDENCIES
    # The producer imports with only those (the callback itself needs LiteLLM, the proxy's).
    run(venv, "-c", "import producer.emitter, producer.settings, producer.wire")


def readme_callback_settings() -> dict[str, Any]:
    """The `litellm_settings` block that README.md tells users to add to the proxy's config.yaml."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [yaml.safe_load(b) for b in blocks if "producer.stream_metrics_logger" in b]
    assert found, "README.md: no yaml block with the callback line"
    settings = found[0]["litellm_settings"]
    assert settings == {"callbacks": ["producer.stream_metrics_logger"]}
    return dict(settings)


@dataclass
class ProxyRun:
    namespace: str
    events: list[dict[str, Any]]
    producer_ids: set[str]
    log: str


@pytest.fixture(scope="module")
def proxy_run(
    venv: Path, wheelhouse: Wheelhouse, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyRun]:
    """LiteLLM installed beside the wheel; its proxy answers one request; the proxy is stopped."""
    wheelhouse.install(venv, *proxy_requirements())
    bindir = venv.parent
    namespace = f"lsmtest-install-{uuid.uuid4().hex[:12]}"
    workdir = tmp_path_factory.mktemp("installed-proxy")
    # The proxy must import the installed producer, not the checkout's.
    where = run(venv, "-c", "import producer; print(producer.__file__)", cwd=workdir, env={}).stdout.strip()
    assert "site-packages" in where and not where.startswith(str(ROOT)), where

    upstream = FakeUpstreamServer("installed producer says hello").start()
    config = {
        "model_list": [
            {
                "model_name": "gpt-ok",
                "litellm_params": {"model": "openai/ok-model", "api_base": upstream.api_base, "api_key": "k"},
            }
        ],
        "litellm_settings": readme_callback_settings(),
        "general_settings": {"master_key": MASTER_KEY},
    }
    env = {"LSM_REDIS_URL": redis_url, "LSM_NAMESPACE": namespace, "LSM_FLUSH_INTERVAL": "0.05"}
    client = redis.Redis.from_url(redis_url)
    proxy: ProxyProcess | None = None
    try:
        proxy = start_proxy(yaml.safe_dump(config), workdir, env, cli=str(bindir / "litellm"), project_on_path=False)
        with openai.OpenAI(base_url=proxy.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30) as oai:
            reply = oai.chat.completions.create(model="gpt-ok", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "installed producer says hello"

        def success_events() -> list[dict[str, Any]] | None:
            events = [e for entry in read_entries(client, namespace) for e in entry.events]
            return events if any(e["kind"] == "success" for e in events) else None

        try:
            wait_for(success_events, timeout=20, interval=0.1, what="a success event in Redis")
        except AssertionError:
            pytest.fail(f"no success event in Redis; proxy log:\n{proxy.log_tail()}")
        proxy.stop()  # SIGTERM: the producer flushes and reports a clean close
        entries = read_entries(client, namespace)
        yield ProxyRun(
            namespace,
            [e for entry in entries for e in entry.events],
            {entry.producer_id for entry in entries},
            proxy.log_tail(200),
        )
    finally:
        if proxy is not None:
            proxy.stop()
        upstream.stop()
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            client.delete(key)
        client.close()


def test_installed_producer_in_a_real_proxy_writes_the_event(proxy_run: ProxyRun, redis_url: str) -> None:
    (event,) = [e for e in proxy_run.events if e["kind"] == "success"]
    assert event["model_group"] == "gpt-ok" and event["model"] == "ok-model"
    assert event["prompt_tokens"] > 0 and event["completion_tokens"] > 0
    client = redis.Redis.from_url(redis_url)
    try:
        for pid in proxy_run.producer_ids:
            stats = producer_stats(client, proxy_run.namespace, pid)
            assert int(stats["events_sent"]) >= 1 and stats.get("closed_at"), stats
    finally:
        client.close()


def test_installed_lsm_aggregator_applies_and_serves_the_event(
    proxy_run: ProxyRun, venv: Path, dist: Dist, wheelhouse: Wheelhouse, redis_url: str, tmp_path: Path
) -> None:
    wheelhouse.install(venv, f"{dist.wheel}[aggregator]")
    bindir = venv.parent
    aggregator, budgets = bindir / "lsm-aggregator", bindir / "lsm-budgets"
    assert run(aggregator, "--help").stdout.startswith("usage: lsm-aggregator")

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"litellm_settings": readme_callback_settings()}))
    listing = run(aggregator, "check-config", config).stdout
    assert re.search(r"^counter\s+litellm_requests_metric \[", listing, re.M), listing

    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LSM_REDIS_URL": redis_url,
        "LSM_NAMESPACE": proxy_run.namespace,
        "LSM_CONSUMER_NAME": "installed",
        "LSM_HTTP_HOST": "127.0.0.1",
        "LSM_HTTP_PORT": str(port),
        "LSM_METRICS_BEARER_TOKEN": TOKEN,
        "LSM_BLOCK_SECONDS": "0.2",
    }
    # The stream still holds the proxy's entries (the fixture deletes them after the module).
    proc = subprocess.Popen([str(aggregator), "run", "--config", str(config)], env=env, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def requests_metric() -> str | None:
            try:
                r = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            except httpx.HTTPError:
                return None
            lines = [x for x in r.text.splitlines() if x.startswith("litellm_requests_metric_total{")]
            return lines[0] if r.status_code == 200 and lines else None

        try:
            line = wait_for(requests_metric, timeout=30, interval=0.2, what="litellm_requests_metric on /metrics")
        except AssertionError:
            proc.kill()
            pytest.fail(
                f"/metrics never showed the event; aggregator stderr:\n{proc.communicate()[1].decode()[-4000:]}"
            )
        assert 'model="gpt-ok"' in line and line.endswith(" 1.0"), line
        assert httpx.get(url, timeout=5).status_code == 401  # credentials required
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert proc.wait(timeout=20) == 0, proc.communicate()[1].decode()[-4000:]
        assert time.monotonic() - start < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    r = subprocess.run(
        [str(budgets), "once"], env={**env, "LSM_BUDGET_SOURCE": "none"}, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "configuration error: no budget source" in r.stderr, r.stderr


def test_install_from_a_git_url(wheelhouse: Wheelhouse, tmp_path: Path) -> None:
    """`pip install "git+<url>@<tag>"`, as README.md says: here the checkout's own repository by
    file URL (its HEAD commit), build isolation and all."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    python = new_venv(tmp_path / "env")
    commit = run("git", "rev-parse", "HEAD", cwd=ROOT).stdout.strip()
    wheelhouse.install(python, f"git+file://{ROOT}@{commit}")
    assert installed(python) == {PROJECT} | PRODUCER_DEPENDENCIES
    version = run(python, "-c", f"import importlib.metadata as m; print(m.version({PROJECT!r}))").stdout.strip()
    assert version == VERSION
