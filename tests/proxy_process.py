"""A real LiteLLM proxy process (``litellm --config ...``) for integration tests.

The proxy runs in its own process group with the producer importable (``PYTHONPATH``) and
the given ``LSM_*`` settings; ``start_proxy`` returns once ``/health/liveliness`` answers and
every worker has finished its startup.

Why wait for every worker: under ``--run_gunicorn`` LiteLLM's master forks the workers while
one of its own threads may hold an import lock, and a worker forked at that moment hangs forever
in its startup (tests/gunicorn_fork_guard/sitecustomize.py, put on such a proxy's PYTHONPATH,
closes that window). The other worker would serve every request while gunicorn kills the hung
one with SIGKILL at stop, so its producer never closes: a test must not start from there. A
start where a worker does not finish its startup is retried once, then fails with the log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 90.0
# How long every worker may take to finish its startup once the first one answers.
WORKERS_STARTUP_TIMEOUT = 45.0
START_ATTEMPTS = 2
GUNICORN_FORK_GUARD = Path(__file__).resolve().parent / "gunicorn_fork_guard"
STARTUP_COMPLETE = "Application startup complete"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def litellm_cli() -> str | None:
    candidate = Path(sys.executable).parent / "litellm"
    if candidate.exists():
        return str(candidate)
    return shutil.which("litellm")


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no proxy log)"
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        """Stop the whole process group, politely first."""
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def start_proxy(
    config: str,
    workdir: Path,
    env: dict[str, str],
    args: tuple[str, ...] = (),
    cli: str | None = None,
    project_on_path: bool = True,
) -> ProxyProcess:
    """Start ``litellm --config`` with ``config`` (YAML text) and wait until every worker is up.

    ``cli``: another ``litellm`` command (that of another virtual environment); with
    ``project_on_path=False`` the repository is not put on ``PYTHONPATH``, so the proxy imports
    the producer installed in its own environment.
    """
    cli = cli or litellm_cli()
    if cli is None:
        pytest.skip("the litellm CLI is not installed")
    for attempt in range(1, START_ATTEMPTS + 1):
        attempt_dir = workdir if attempt == 1 else workdir / f"restart-{attempt}"
        proxy = _start_once(cli, config, attempt_dir, env, args, project_on_path)
        if _wait_for_every_worker(proxy, _workers(args)):
            return proxy
        proxy.stop()
        if attempt == START_ATTEMPTS:
            pytest.fail(
                f"a proxy worker did not finish its startup in {START_ATTEMPTS} starts "
                f"(LiteLLM's forked worker hang, see tests/proxy_process.py):\n{proxy.log_tail()}"
            )
    raise AssertionError("unreachable")


def _workers(args: tuple[str, ...]) -> int:
    if "--num_workers" in args:
        return int(args[args.index("--num_workers") + 1])
    return 1


def _wait_for_every_worker(proxy: ProxyProcess, workers: int) -> bool:
    deadline = time.monotonic() + WORKERS_STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if proxy.log_path.read_text(errors="replace").count(STARTUP_COMPLETE) >= workers:
                return True
        except OSError:
            pass
        time.sleep(0.25)
    return False


def _start_once(
    cli: str,
    config: str,
    workdir: Path,
    env: dict[str, str],
    args: tuple[str, ...],
    project_on_path: bool,
) -> ProxyProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(config)
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LSM_")}
    full_env.pop("OPENAI_API_KEY", None)
    full_env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1")
    if project_on_path:
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), full_env.get("PYTHONPATH")) if p)
    else:
        full_env.pop("PYTHONPATH", None)
    if "--run_gunicorn" in args:
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(GUNICORN_FORK_GUARD), full_env.get("PYTHONPATH")) if p)
    full_env.update(env)
    log_path = workdir / "proxy.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [cli, "--config", str(config_path), "--port", str(port), "--host", "127.0.0.1", *args],
            cwd=workdir,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proxy = ProxyProcess(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the proxy exited with {proc.returncode} during startup:\n{proxy.log_tail()}")
        try:
            if httpx.get(f"{proxy.base_url}/health/liveliness", timeout=2).status_code == 200:
                return proxy
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proxy.stop()
            pytest.fail(f"the proxy did not answer within {STARTUP_TIMEOUT} s:\n{proxy.log_tail()}")
        time.sleep(0.25)
