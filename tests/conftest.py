"""Test harness: real Redis connections, one key namespace per test, cleaned up afterwards.

Redis comes from ``REDIS_URL`` if set, else 127.0.0.1:6379 if it answers, else a private
server started from the embedded ``valkey-server`` binary for the whole session. Fault tests
use ``private_server`` instead: their own server on a free port, which they may kill.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

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
def private_server() -> Iterator[LocalServer]:
    """A server of the test's own on a free port: fault tests kill and restart it."""
    server = LocalServer().start()
    try:
        yield server
    finally:
        server.close()
