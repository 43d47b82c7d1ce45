"""The one place that opens the aggregator's Redis clients, each with its policy.

Every client gets the settings' timeouts (``LSM_SOCKET_TIMEOUT``, ``LSM_CONNECT_TIMEOUT``) and
the URL's TLS and credentials. Retries of a command that failed in flight are only enabled
where a repeated command is known to be harmless: applying a batch is idempotent (a re-sent
apply finds its entries acknowledged and writes nothing), so the consumers' client asks for
its own backoff; the others keep redis-py's default.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from aggregator.settings import AggregatorSettings

#: Seconds between the PINGs redis-py sends on an idle pooled connection before using it.
HEALTH_CHECK_INTERVAL = 30


def open_async(settings: AggregatorSettings, *, idempotent: bool = False) -> aioredis.Redis:
    """A client for the event loop. ``idempotent``: retry a failed command (a few times, with
    backoff), for callers whose every command may safely run twice."""
    if idempotent:
        return aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.socket_timeout,
            socket_connect_timeout=settings.connect_timeout,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            health_check_interval=HEALTH_CHECK_INTERVAL,
        )
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.connect_timeout,
        health_check_interval=HEALTH_CHECK_INTERVAL,
    )


def open_sync(settings: AggregatorSettings) -> redis.Redis:
    """A blocking client: the HTTP threads' reads for ``/metrics``, the command-line tools."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.connect_timeout,
    )


def open_url(url: str) -> redis.Redis:
    """A blocking client for a tool that has no settings yet (the quick start picks its Redis
    and namespace before it builds them)."""
    return redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0)
