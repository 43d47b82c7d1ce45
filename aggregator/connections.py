"""The one place that opens the aggregator's Redis clients, each with its policy.

Every client gets the settings' timeouts (``LSM_SOCKET_TIMEOUT``, ``LSM_CONNECT_TIMEOUT``) and
the URL's TLS and credentials. Retries of a command that failed in flight are only enabled
where a repeated command is known to be harmless: applying a batch is idempotent (a re-sent
apply finds its entries acknowledged and writes nothing), so the consumers' client asks for
its own backoff; the others keep redis-py's default.

On a Redis Cluster (``LSM_REDIS_CLUSTER``, or asked of the server when unset) the clients are
redis-py's cluster clients, typed as the plain ones: every command the aggregator sends, script
and pipeline stays within one shard's hash slot (``{sN}``), where the cluster client offers the
same methods; tests/test_cluster.py runs the components on a real cluster.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster

from aggregator.settings import AggregatorSettings
from producer.urls import safe_url

log = logging.getLogger("litellm_stream_metrics.aggregator")

#: Seconds between the PINGs redis-py sends on an idle pooled connection before using it.
HEALTH_CHECK_INTERVAL = 30


def open_async(settings: AggregatorSettings, *, idempotent: bool = False) -> aioredis.Redis:
    """A client for the event loop. ``idempotent``: retry a failed command (a few times, with
    backoff), for callers whose every command may safely run twice."""
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }
    if idempotent:
        options["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.05), 3)
    if is_cluster(settings):
        return cast(aioredis.Redis, AsyncRedisCluster.from_url(settings.redis_url, **options))
    return aioredis.Redis.from_url(settings.redis_url, **options)


def open_sync(settings: AggregatorSettings) -> redis.Redis:
    """A blocking client: the HTTP threads' reads for ``/metrics``, the command-line tools."""
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
    }
    if is_cluster(settings):
        return cast(redis.Redis, RedisCluster.from_url(settings.redis_url, **options))
    return redis.Redis.from_url(settings.redis_url, **options)


def is_cluster(settings: AggregatorSettings) -> bool:
    """``LSM_REDIS_CLUSTER``, or, when unset, what the server says (asked once per URL)."""
    if settings.redis_cluster is not None:
        return settings.redis_cluster
    return _cluster_enabled(settings.redis_url, settings.connect_timeout)


_DETECTED: dict[str, bool] = {}


def _cluster_enabled(url: str, timeout: float) -> bool:
    if url in _DETECTED:
        return _DETECTED[url]
    client = redis.Redis.from_url(url, socket_timeout=max(timeout, 1.0), socket_connect_timeout=timeout)
    try:
        info: Any = client.info("cluster")
    except redis.RedisError as exc:
        log.warning(
            "cannot ask Redis whether it is a cluster (%s): using a single-node client; set LSM_REDIS_CLUSTER",
            safe_url(str(exc)),
        )
        return False
    finally:
        client.close()
    _DETECTED[url] = enabled = bool(int(info.get("cluster_enabled", 0)))
    return enabled


def open_url(url: str) -> redis.Redis:
    """A blocking client for a tool that has no settings yet (the quick start picks its Redis
    and namespace before it builds them)."""
    return redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0)
