"""Every Redis client of the aggregator is opened by aggregator/connections.py, with the settings'
timeouts, against a real server."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from aggregator.connections import open_async, open_sync
from aggregator.settings import AggregatorSettings


def settings_for(redis_url: str, namespace: str) -> AggregatorSettings:
    return AggregatorSettings(redis_url=redis_url, namespace=namespace, socket_timeout=3.5, connect_timeout=1.5)


AGGREGATOR = Path(__file__).resolve().parents[1] / "aggregator"


def test_no_client_is_opened_elsewhere() -> None:
    opened = re.compile(r"\bRedis\(|\.from_url\(|ConnectionPool\(|RedisCluster\(")
    offenders = [
        f"{path.relative_to(AGGREGATOR.parent)}:{n}: {line.strip()}"
        for path in sorted(AGGREGATOR.rglob("*.py"))
        if path.name != "connections.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if opened.search(line)
    ]
    assert offenders == [], "open Redis clients in aggregator/connections.py:\n" + "\n".join(offenders)


def test_sync_client_has_the_settings_timeouts(redis_url: str, namespace: str) -> None:
    settings = settings_for(redis_url, namespace)
    client = open_sync(settings)
    try:
        assert client.ping()
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (3.5, 1.5)
    finally:
        client.close()


@pytest.mark.parametrize("idempotent", [False, True])
def test_async_client_retries_only_when_asked(redis_url: str, namespace: str, idempotent: bool) -> None:
    settings = settings_for(redis_url, namespace)

    async def check() -> None:
        client = open_async(settings, idempotent=idempotent)
        try:
            assert await client.ping()
            kwargs = client.connection_pool.connection_kwargs
            assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (3.5, 1.5)
            # Our own backoff (3 retries, capped at 1 s) only on the idempotent apply path.
            backoff = type(kwargs["retry"]._backoff).__name__ if kwargs.get("retry") else None
            assert (backoff == "ExponentialBackoff") is idempotent
        finally:
            await client.aclose()

    asyncio.run(check())


def test_settings_share_one_keys_object(redis_url: str, namespace: str) -> None:
    a = settings_for(redis_url, namespace)
    b = settings_for(redis_url, namespace)
    assert a.keys is b.keys
    assert a.model_copy(update={"shards": 4}).keys.shards == 4
