"""No password given in a URL setting is ever printed: real processes (the producer as the proxy
loads it, ``python -m aggregator run`` against a real Redis that requires the password, its
configuration errors, ``check-config``, ``dead-letters``, the budget command) run with a
distinctive password planted in every URL setting (``LSM_REDIS_URL`` as ``user:password@`` and
as ``?password=``, a mistyped scheme, ``LSM_DATABASE_URL``, ``LSM_LITELLM_API_BASE``), and
every line they print, every HTTP body they serve and everything they write to Redis is
searched for it. Each run also checks that its output does show where (host, user, ``***``),
so the search is not vacuous."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aggregator.local_server import LocalServer, free_port
from producer.keys import Keys
from producer.urls import passwords_in, safe_url

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = f"Pl4nted-{uuid.uuid4().hex[:10]}"
USER = "lsm-agg"
TOKEN = "secrets-test-token"
CLOSED = f"127.0.0.1:{free_port()}"  # nothing listens here


@pytest.fixture(scope="module")
def acl_server() -> Iterator[LocalServer]:
    """A private server on which user ``lsm-agg`` needs the planted password."""
    server = LocalServer(extra_args=["--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all"]).start()
    try:
        yield server
    finally:
        server.close()


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LSM_") and k not in ("REDIS_URL", "DATABASE_URL", "LITELLM_MASTER_KEY")
    }
    env.update(PYTHONPATH=str(ROOT), LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


def assert_clean(where: str, text: str) -> None:
    assert PASSWORD not in text, f"the password shows in {where}:\n{text[-3000:]}"


class Running:
    """``python -m aggregator run`` with its stderr collected line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run"], env=env, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}:\n{''.join(self.lines)[-3000:]}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        return "".join(self.lines)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def redis_contents(client: redis.Redis, namespace: str) -> str:
    """Everything stored under the namespace, as text."""
    parts: list[str] = []
    for key in client.scan_iter(match=f"{namespace}:*"):
        parts.append(key.decode())
        kind = client.type(key)
        if kind == b"stream":
            parts += [repr(fields) for _id, fields in client.xrange(key)]
        elif kind == b"hash":
            parts.append(repr(client.hgetall(key)))
        elif kind == b"string":
            parts.append(repr(client.get(key)))
        elif kind == b"zset":
            parts.append(repr(client.zrange(key, 0, -1, withscores=True)))
        elif kind == b"set":
            parts.append(repr(client.smembers(key)))
        elif kind == b"list":
            parts.append(repr(client.lrange(key, 0, -1)))
    return "\n".join(parts)


def drop(client: redis.Redis, namespace: str) -> None:
    keys = list(client.scan_iter(match=f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


# -- the shared mask ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:PW@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:PW@h:6379/0", "redis://user:***@h:6379/0"),
        ("redis://user:P@W/x:y@h:6379/0", "redis://user:***@h:6379/0"),  # unencoded @ / : in it
        ("rediss://h:6380/0?db=1&password=PW&x=2", "rediss://h:6380/0?db=1&password=***&x=2"),
        ("unix://user:PW@/run/redis.sock?db=0", "unix://user:***@/run/redis.sock?db=0"),
        ("unix:///run/user@1000/redis.sock", "unix:///run/user@1000/redis.sock"),
        ("redis://user@h/0?password=PW", "redis://user@h/0?password=***"),
        ("postgresql://llm:PW@db:5432/litellm?sslpassword=PW", "postgresql://llm:***@db:5432/litellm?sslpassword=***"),
        ("http://user:PW@h:6379/0", "http://user:***@h:6379/0"),  # a mistyped scheme
        ("redis:/user:PW@h:6379/0", "redis:***@h:6379/0"),
        ("user:PW@h:6379", "user:***@h:6379"),
        ("'redis://user:PW@h' is not a URL; nor host=db password='P W' user=x", None),
        ("dev@example.com, redis://user@h/0", "dev@example.com, redis://user@h/0"),
    ],
)
def test_safe_url_masks_passwords_and_keeps_the_rest(text: str, shown: str | None) -> None:
    masked = safe_url(text)
    assert "PW" not in masked and "P W" not in masked
    if shown is not None:
        assert masked == shown


def test_passwords_in_finds_them_as_written_and_decoded() -> None:
    url = "postgresql://llm:S3cr%20et@db/litellm?sslpassword=Key-pass&schema=x"
    assert sorted(passwords_in(url)) == sorted(["S3cr%20et", "S3cr et", "Key-pass"])
    # libpq quotes a bad piece of the URL out of context: the known password is masked anyway.
    message = 'invalid percent-encoded token: "S3cr%20et"; unexpected spaces found in "S3cr et"'
    assert (
        safe_url(message, passwords_in(url)) == 'invalid percent-encoded token: "***"; unexpected spaces found in "***"'
    )
    assert passwords_in("redis://h:6379/0") == []


# -- real processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_producer_never_prints_the_password(acl_server: LocalServer) -> None:
    create = (
        "import producer, time\n"
        "lg = producer.stream_metrics_logger\n"
        "lg.set_litellm_deployment_state(0, 'gpt-4o', 'id-1', 'https://api.openai.com', 'openai')\n"
        "time.sleep(1.5)\n"
    )
    for bad in (f"http://{USER}:{PASSWORD}@127.0.0.1:6379/0", f"redis//127.0.0.1:6379/0?password={PASSWORD}"):
        out = run(["-c", create], base_env(LSM_REDIS_URL=bad, LSM_SHUTDOWN_TIMEOUT="0.5"))
        assert out.returncode != 0 and "LSM_REDIS_URL" in out.stderr and "127.0.0.1:6379" in out.stderr, out.stderr
        assert_clean(f"the producer's error for {bad!r}", out.stdout + out.stderr)
    # A URL Redis refuses (a user that does not exist): the writer's warnings.
    namespace = f"lsmtest-{uuid.uuid4().hex[:12]}"
    url = f"redis://intruder:{PASSWORD}@127.0.0.1:{acl_server.port}/0"
    out = run(["-c", create], base_env(REDIS_URL=url, LSM_NAMESPACE=namespace, LSM_SHUTDOWN_TIMEOUT="0.5"))
    assert "cannot write to Redis" in out.stderr, out.stderr
    assert_clean("the producer's warnings", out.stdout + out.stderr)
    # With the right password, what it writes to Redis.
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{acl_server.port}/0"
    out = run(["-c", create], base_env(LSM_REDIS_URL=url, LSM_NAMESPACE=namespace))
    assert out.returncode == 0, out.stderr
    assert_clean("the producer's output", out.stdout + out.stderr)
    client = redis.Redis.from_url(url)
    try:
        stored = redis_contents(client, namespace)
        assert Keys(namespace).stream(0) in stored
        assert_clean("what the producer wrote to Redis", stored)
    finally:
        drop(client, namespace)


@pytest.mark.parametrize(
    ("redis_url", "database_url", "shown"),
    [
        (
            f"redis://{USER}:{PASSWORD}@127.0.0.1:{{port}}/0",
            f"postgresql://litellm:{PASSWORD}@{CLOSED}/litellm?sslpassword={PASSWORD}",
            f"redis://{USER}:***@127.0.0.1:{{port}}/0",
        ),
        (
            # The password as a parameter; a database URL libpq cannot parse (it quotes the piece).
            f"redis://{USER}@127.0.0.1:{{port}}/0?password={PASSWORD}",
            f"postgresql://litellm:{PASSWORD}%zz@{CLOSED}/litellm",
            f"redis://{USER}@127.0.0.1:{{port}}/0?password=***",
        ),
    ],
    ids=["userinfo", "query"],
)
def test_aggregator_run_never_shows_the_password(
    acl_server: LocalServer, redis_url: str, database_url: str, shown: str
) -> None:
    namespace = f"lsmtest-{uuid.uuid4().hex[:12]}"
    redis_url = redis_url.format(port=acl_server.port)
    env = base_env(
        LSM_REDIS_URL=redis_url,
        LSM_DATABASE_URL=database_url,
        LSM_NAMESPACE=namespace,
        LSM_HTTP_HOST="127.0.0.1",
        LSM_HTTP_PORT="0",
        LSM_METRICS_BEARER_TOKEN=TOKEN,
        LSM_BLOCK_SECONDS="0.2",
        LSM_BUDGET_CONNECT_TIMEOUT="1",
    )
    agg = Running(env)
    bodies: list[str] = []
    try:
        port = agg.wait_line(r"serving .*127\.0\.0\.1:(\d+)")[1]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while get(base + "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "".join(agg.lines)
            time.sleep(0.1)
        agg.wait_line(r"budget refresh: cannot connect to the LiteLLM database")
        for path, headers in (("/healthz", {}), ("/readyz", {}), ("/metrics", {"Authorization": f"Bearer {TOKEN}"})):
            status, body = get(base + path, headers)
            assert status == 200, (path, body)
            bodies.append(body)
    finally:
        log = agg.stop()
    assert_clean("the aggregator's log", log)
    for body in bodies:
        assert_clean("an HTTP body", body)
    assert shown.format(port=acl_server.port) in log  # the start line says where, without the password
    client = redis.Redis.from_url(f"redis://{USER}:{PASSWORD}@127.0.0.1:{acl_server.port}/0")
    try:
        stored = redis_contents(client, namespace)
        assert "budget" in stored  # the refresh's status and errors are there
        assert_clean("what the aggregator wrote to Redis", stored)
    finally:
        drop(client, namespace)


def test_aggregator_with_unreachable_redis_never_shows_the_password() -> None:
    env = base_env(
        LSM_REDIS_URL=f"redis://{USER}:{PASSWORD}@{CLOSED}/0",
        LSM_HTTP_HOST="127.0.0.1",
        LSM_HTTP_PORT="0",
        LSM_METRICS_BEARER_TOKEN=TOKEN,
        LSM_CONNECT_TIMEOUT="0.3",
        LSM_SOCKET_TIMEOUT="0.5",
        LSM_BLOCK_SECONDS="0.2",
    )
    agg = Running(env)
    try:
        port = agg.wait_line(r"serving .*127\.0\.0\.1:(\d+)")[1]
        status, body = get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503
        agg.wait_line(r"not ready: Redis unreachable: ")  # the detail goes to the log
    finally:
        log = agg.stop()
    assert_clean("the aggregator's log", log)
    assert_clean("/readyz", body)
    assert f"redis://{USER}:***@{CLOSED}/0" in log


def test_configuration_errors_never_show_the_password(tmp_path: Path) -> None:
    yaml_file = tmp_path / "settings.yaml"
    # A YAML error quotes the lines around it.
    yaml_file.write_text(f'namespace: lsm\nredis_url: "redis://{USER}:{PASSWORD}@redis:6379/0\n')
    cases = [
        {"LSM_REDIS_URL": f"http://{USER}:{PASSWORD}@redis:6379/0"},  # a mistyped scheme
        {"REDIS_URL": f"htp://redis:6379/0?password={PASSWORD}"},
        {"LSM_REDIS_URL": f"redis:/{USER}:{PASSWORD}@redis:6379/0"},
        {"LSM_REDIS_URL": f"http://{USER}:{PASSWORD}@redis:6379/0", "LSM_SHARDS": "0"},
        {"LSM_DATABASE_URL": f"mysql://litellm:{PASSWORD}@db/litellm"},
        {"DATABASE_URL": f"mysql://litellm:{PASSWORD}@db/litellm"},
        {"LSM_LITELLM_API_BASE": f"ftp://admin:{PASSWORD}@proxy:4000", "LSM_LITELLM_MASTER_KEY": "sk-x"},
        {"LSM_SETTINGS_FILE": str(yaml_file)},
    ]
    for extra in cases:
        for command in (["-m", "aggregator", "run"], ["-m", "aggregator.budgets", "once"]):
            out = run(command, base_env(LSM_METRICS_BEARER_TOKEN=TOKEN, **extra))
            assert out.returncode == 2 and "configuration error" in out.stderr, (extra, out.stderr)
            assert_clean(f"{command} with {extra}", out.stdout + out.stderr)
            if "REDIS_URL" in extra or "LSM_REDIS_URL" in extra or "LSM_LITELLM_API_BASE" in extra:
                assert "***" in out.stderr and ("redis:6379" in out.stderr or "proxy:4000" in out.stderr)


def test_commands_never_show_the_password(acl_server: LocalServer, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("litellm_settings:\n  callbacks: ['producer.stream_metrics_logger']\n")
    namespace = f"lsmtest-{uuid.uuid4().hex[:12]}"
    good = f"redis://{USER}:{PASSWORD}@127.0.0.1:{acl_server.port}/0"
    database = f"postgresql://litellm:{PASSWORD}@{CLOSED}/litellm"
    env = base_env(LSM_REDIS_URL=good, LSM_DATABASE_URL=database, LSM_NAMESPACE=namespace)

    out = run(["-m", "aggregator", "check-config", str(config)], env)
    assert out.returncode == 0 and "litellm_requests_metric" in out.stdout, out.stderr
    assert_clean("check-config", out.stdout + out.stderr)

    out = run(["-m", "aggregator", "dead-letters", "list"], env)
    assert out.returncode == 0 and "0 dead letters" in out.stdout, out.stderr
    assert_clean("dead-letters list", out.stdout + out.stderr)
    unreachable = {**env, "LSM_REDIS_URL": f"redis://{USER}:{PASSWORD}@{CLOSED}/0"}
    out = run(["-m", "aggregator", "dead-letters", "list"], unreachable)
    assert_clean("dead-letters list (unreachable)", out.stdout + out.stderr)
    assert out.returncode == 1 and f"cannot reach Redis at redis://{USER}:***@{CLOSED}/0" in out.stderr, out.stderr

    for url in (database, f"postgresql://litellm:{PASSWORD}%zz@{CLOSED}/litellm?sslpassword={PASSWORD}"):
        out = run(
            ["-m", "aggregator.budgets", "once"], {**env, "LSM_DATABASE_URL": url, "LSM_BUDGET_CONNECT_TIMEOUT": "1"}
        )
        assert out.returncode == 1 and '"outcome": "error"' in out.stdout and "LiteLLM database" in out.stdout, (
            out.stdout + out.stderr
        )
        assert_clean("the budget command", out.stdout + out.stderr)
    client = redis.Redis.from_url(good)
    try:
        assert_clean("what the budget command wrote to Redis", redis_contents(client, namespace))
    finally:
        drop(client, namespace)


@pytest.mark.slow
def test_quickstart_never_shows_the_password(acl_server: LocalServer) -> None:
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{acl_server.port}/0"
    env = base_env(REDIS_URL=url, LSM_HTTP_PORT="0", LSM_NAMESPACE=f"lsmtest-{uuid.uuid4().hex[:12]}")
    out = run(["-m", "aggregator.quickstart", "--seconds", "3", "--interval", "1"], env, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_clean("the quick start", out.stdout + out.stderr)
    assert f"using Redis at redis://{USER}:***@127.0.0.1:{acl_server.port}/0" in out.stdout
    drop(redis.Redis.from_url(url), env["LSM_NAMESPACE"])
