"""Test harness: real Redis connections, one key namespace per test, cleaned up afterwards.

Redis comes from ``REDIS_URL`` if set, else 127.0.0.1:6379 if it answers, else a private
server started from the embedded ``valkey-server`` binary for the whole session. Fault tests
use ``private_server`` instead: their own server on a free port, which they may kill.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from aggregator.local_server import LocalServer

_session_server: LocalServer | None = None


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    global _session_server
    url = os.environ.get("REDIS_URL")
    if url:
        if not _answers(url):
            pytest.exit(f"REDIS_URL={url} does not answer PING", returncode=2)
        yield url
        return
    default = "redis://127.0.0.1:6379/0"
    if _answers(default):
        yield default
        return
    _session_server = LocalServer().start()
    try:
        yield _session_server.url
    finally:
        _session_server.close()


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A fresh key namespace; every key under it is deleted after the test."""
    ns = f"lsmtest-{uuid.uuid4().hex[:12]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def aclient(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of the test Redis."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def private_server() -> Iterator[LocalServer]:
    """A server of the test's own on a free port: fault tests kill and restart it."""
    server = LocalServer().start()
    try:
        yield server
    finally:
        server.close()


# -- PostgreSQL with LiteLLM's schema (budget refresh tests) ------------------------------------
#
# The server: LSM_TEST_DATABASE_URL (a URL of a database to connect to for administration) if
# set, else PostgreSQL on 127.0.0.1:5432 (user postgres) if it answers, else (or with
# LSM_TEST_DATABASE_URL=embedded) an embedded server from the ``pgserver`` wheel for the session.
# The schema is LiteLLM's own: the SQL migrations shipped in ``litellm-proxy-extras``, applied
# once into a template database (kept between sessions, named after a hash of the migrations);
# every test gets a fresh copy, dropped after.

from pathlib import Path  # noqa: E402


class PgServer:
    """Where the test databases live: ``url(dbname)`` builds a URL for one of them."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def url(self, dbname: str) -> str:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + dbname))


def _pg_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    url = os.environ.get("LSM_TEST_DATABASE_URL")
    if url and url != "embedded":  # "embedded": use the embedded server even if 5432 answers
        if not _pg_answers(url):
            pytest.exit(f"LSM_TEST_DATABASE_URL={url} does not answer", returncode=2)
        yield PgServer(url)
        return
    default = "postgresql://postgres@127.0.0.1:5432/postgres"
    if url != "embedded" and _pg_answers(default):
        yield PgServer(default)
        return
    import shutil
    import tempfile

    import pgserver  # the embedded PostgreSQL wheel (test extra)

    # Not under pytest's basetemp: concurrent pytest sessions prune old basetemps.
    datadir = tempfile.mkdtemp(prefix="lsm-pgdata-")
    server = pgserver.get_server(datadir, cleanup_mode="stop")
    try:
        yield PgServer(server.get_uri("postgres"))
    finally:
        server.cleanup()
        shutil.rmtree(datadir, ignore_errors=True)


def litellm_migrations() -> list[Path]:
    """LiteLLM's migration SQL files, in order (directory names start with a timestamp)."""
    from importlib import resources

    root = Path(str(resources.files("litellm_proxy_extras") / "migrations"))
    return [
        d / "migration.sql" for d in sorted(root.iterdir(), key=lambda p: p.name) if (d / "migration.sql").is_file()
    ]


@pytest.fixture(scope="session")
def litellm_template(pg_server: PgServer) -> str:
    """A template database with LiteLLM's schema; built once and reused while unchanged."""
    import hashlib

    import psycopg

    files = litellm_migrations()
    digest = hashlib.sha1()
    for f in files:
        digest.update(f.parent.name.encode() + b"\0" + f.read_bytes())
    name = f"lsm_litellm_tpl_{digest.hexdigest()[:12]}"
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return name
        building = f"{name}_build_{uuid.uuid4().hex[:6]}"
        admin.execute(f'CREATE DATABASE "{building}"')
        try:
            with psycopg.connect(pg_server.url(building), autocommit=True) as conn:
                for f in files:
                    conn.execute(f.read_bytes())
            try:
                admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
                admin.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE true')
            except psycopg.errors.DuplicateDatabase:
                pass  # another session built it meanwhile
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
    return name


@pytest.fixture
def litellm_db(pg_server: PgServer, litellm_template: str) -> Iterator[str]:
    """The URL of a fresh database with LiteLLM's schema, dropped after the test."""
    import psycopg

    name = f"lsmtest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        for attempt in range(20):
            try:
                admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{litellm_template}"')
                break
            except psycopg.errors.ObjectInUse:  # the template is being copied by another session
                if attempt == 19:
                    raise
                import time

                time.sleep(0.2)
    try:
        yield pg_server.url(name)
    finally:
        with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
