"""Helpers for the budget refresh tests: rows in LiteLLM's real tables, gauges read back from
Redis, a TCP proxy that can take the database away, and the refresh runner processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg.types.json import Jsonb

from aggregator.budgets.jobs import BudgetJobs
from aggregator.engine import Engine
from aggregator.schema import MetricSchema
from aggregator.state import decode_series
from producer.keys import Keys
from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent


def utc(ts: float) -> datetime:
    """A naive UTC datetime, as Prisma stores ``DateTime`` columns."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).replace(tzinfo=None)


class LiteLLMDb:
    """Rows in LiteLLM's tables (only the columns the refresh reads, others take defaults)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(sql, params)
        return cur.fetchall() if cur.description else []

    def add_key(
        self,
        token: str,
        alias: str | None = None,
        team_id: str | None = None,
        spend: float = 0.0,
        max_budget: float | None = None,
        reset_at: float | None = None,
    ) -> None:
        self.execute(
            'INSERT INTO "LiteLLM_VerificationToken" (token, key_alias, team_id, spend, max_budget, budget_reset_at)'
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (token, alias, team_id, spend, max_budget, None if reset_at is None else utc(reset_at)),
        )

    def add_keys(self, rows: Iterable[tuple[str, str | None, float, float | None]]) -> None:
        """Many keys at once: (token, alias, spend, max_budget)."""
        with (
            self.conn.cursor() as cur,
            cur.copy('COPY "LiteLLM_VerificationToken" (token, key_alias, spend, max_budget) FROM STDIN') as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def add_team(
        self,
        team_id: str,
        alias: str | None = None,
        spend: float = 0.0,
        max_budget: float | None = None,
        reset_at: float | None = None,
        members: int = 0,
    ) -> None:
        roles = [{"user_id": f"u{i}", "role": "user"} for i in range(members)]
        self.execute(
            'INSERT INTO "LiteLLM_TeamTable" (team_id, team_alias, spend, max_budget, budget_reset_at,'
            " members_with_roles) VALUES (%s, %s, %s, %s, %s, %s)",
            (team_id, alias, spend, max_budget, None if reset_at is None else utc(reset_at), Jsonb(roles)),
        )

    def add_user(
        self,
        user_id: str,
        alias: str | None = None,
        email: str | None = None,
        spend: float = 0.0,
        max_budget: float | None = None,
        reset_at: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.execute(
            'INSERT INTO "LiteLLM_UserTable" (user_id, user_alias, user_email, spend, max_budget, budget_reset_at,'
            " metadata) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                user_id,
                alias,
                email,
                spend,
                max_budget,
                None if reset_at is None else utc(reset_at),
                Jsonb(dict(metadata or {})),
            ),
        )

    def add_budget(self, budget_id: str, max_budget: float | None, reset_at: float | None = None) -> None:
        self.execute(
            'INSERT INTO "LiteLLM_BudgetTable" (budget_id, max_budget, budget_reset_at, created_by, updated_by)'
            " VALUES (%s, %s, %s, 'test', 'test')",
            (budget_id, max_budget, None if reset_at is None else utc(reset_at)),
        )

    def add_org(self, org_id: str, alias: str, budget_id: str, spend: float = 0.0) -> None:
        self.execute(
            'INSERT INTO "LiteLLM_OrganizationTable" (organization_id, organization_alias, budget_id, spend,'
            " created_by, updated_by) VALUES (%s, %s, %s, %s, 'test', 'test')",
            (org_id, alias, budget_id, spend),
        )

    def add_customer(self, user_id: str, spend: float = 0.0, budget_id: str | None = None) -> None:
        self.execute(
            'INSERT INTO "LiteLLM_EndUserTable" (user_id, spend, budget_id) VALUES (%s, %s, %s)',
            (user_id, spend, budget_id),
        )


def engine_of(jobs: BudgetJobs) -> Engine:
    """An engine with the budget jobs' schema (to apply events next to their refresh)."""
    return Engine(jobs.schema.config, jobs.schema.max_label_value_length)


def stored_gauge(
    client: redis.Redis, namespace: str, engine: Engine | MetricSchema, name: str, shard: int = 0
) -> dict[tuple[str | None, ...], float]:
    """The stored values of gauge ``name`` in one shard: label values tuple -> value (reset-time
    gauges hold the reset time)."""
    mkey = engine.metric_key(name)
    assert mkey is not None, f"{name} is not enabled"
    raw = client.hgetall(Keys(namespace).metric(shard, "g", mkey))
    return {tuple(decode_series(k)): float(v) for k, v in raw.items()}


def stored_times(
    client: redis.Redis, namespace: str, engine: Engine | MetricSchema, name: str, shard: int = 0
) -> dict[str, float]:
    mkey = engine.metric_key(name)
    assert mkey is not None
    raw = client.hgetall(Keys(namespace).metric(shard, "gt", mkey))
    return {k.decode(): float(v) for k, v in raw.items()}


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the database of ``url`` (TCP or a Unix socket directory);
    ``down()`` closes every connection and refuses new ones (the database "goes away"), ``up()``
    listens again on the same port. ``url_for(url)`` is the same database through the proxy."""

    def __init__(self, url: str) -> None:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(url)
        host, port = str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)
        self.target: tuple[str, int] | str = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
        self.port = 0
        self._sock: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.up()

    def up(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def down(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()

    close = down

    def url_for(self, url: str) -> str:
        """``url`` (same database, user, password) through this proxy."""
        from urllib.parse import urlencode

        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(url)
        info.update(host="127.0.0.1", port=str(self.port))
        return "postgresql:///?" + urlencode({k: str(v) for k, v in info.items() if v is not None})

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            try:
                if isinstance(self.target, str):
                    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    upstream.connect(self.target)
                else:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def runner_env(redis_url: str, namespace: str, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSM_") and k != "DATABASE_URL"}
    env.update(
        {
            "LSM_REDIS_URL": redis_url,
            "LSM_NAMESPACE": namespace,
            "LSM_DATABASE_URL": database_url,
            "LSM_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class Runner:
    """One ``python -m aggregator.budgets run`` process with its metrics on a port."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, name: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_port = s.getsockname()[1]
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator.budgets", "run", "--metrics-port", str(self.metrics_port)],
            env={**env, "LSM_CONSUMER_NAME": name},
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics(self) -> dict[str, float]:
        """This process's samples: ``name{labels}`` -> value."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """Resume if frozen, SIGTERM, then SIGKILL if it does not exit."""
        if self.proc.poll() is None:
            self.kill(signal.SIGCONT)
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def writes_log(client: redis.Redis, namespace: str) -> list[dict[str, Any]]:
    """The refresh's accepted writes in order: stream id (ms), epoch, owner, kind."""
    out = []
    for entry_id, fields in client.xrange(Keys(namespace).budget_writes()):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        out.append({**f, "ms": int(entry_id.decode().split("-")[0]), "epoch": int(f["epoch"])})
    return out


def status(client: redis.Redis, namespace: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(Keys(namespace).budget_status()).items()}


def lease_holder(client: redis.Redis, namespace: str) -> tuple[str, int] | None:
    """(owner, epoch) of the refresh lease while it is held."""
    keys = Keys(namespace)
    token = client.get(keys.lease("budget"))
    if token is None:
        return None
    epoch = client.get(keys.lease("budget") + ":epoch")
    return token.decode().rsplit(":", 1)[0], int(epoch or 0)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:4000]


def wait_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    return wait_for(predicate, timeout, interval, what)
