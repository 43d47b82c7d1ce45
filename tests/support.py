"""Helpers shared by the tests: build a producer against a test namespace, read events back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from producer.keys import Keys
from producer.settings import ProducerSettings
from producer.wire import Entry, decode_entry


def settings_for(redis_url: str, namespace: str, **overrides: Any) -> ProducerSettings:
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "namespace": namespace,
        "flush_interval": 0.02,
        "stats_interval": 0.2,
        "connect_timeout": 0.5,
        "socket_timeout": 0.5,
        "backoff_base": 0.01,
        "backoff_max": 0.2,
        "shutdown_timeout": 5.0,
    }
    base.update(overrides)
    return ProducerSettings(**base)


def read_entries(client: redis.Redis, namespace: str, shards: int = 1) -> list[Entry]:
    keys = Keys(namespace, shards)
    entries: list[Entry] = []
    for shard in range(shards):
        for _id, fields in client.xrange(keys.stream(shard)):
            entries.append(decode_entry(fields))
    return entries


def read_events(client: redis.Redis, namespace: str, shards: int = 1) -> list[dict[str, Any]]:
    """Every event in the namespace's streams, in stream order, duplicates (same producer and
    sequence) removed the way the aggregator removes them."""
    seen: set[tuple[str, int]] = set()
    out: list[dict[str, Any]] = []
    for entry in read_entries(client, namespace, shards):
        if (entry.producer_id, entry.seq) in seen:
            continue
        seen.add((entry.producer_id, entry.seq))
        out.extend(entry.events)
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def producer_stats(client: redis.Redis, namespace: str, producer_id: str) -> dict[str, str]:
    raw = client.hgetall(Keys(namespace).producer_stats(producer_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def latency_of(event: dict[str, Any]) -> dict[str, float]:
    """The latency fields of a success event that are set, without the ``latency_`` prefix."""
    return {k[8:]: v for k, v in event.items() if k.startswith("latency_") and v is not None}


def headers_of(event: dict[str, Any]) -> dict[str, Any]:
    """The ``headers`` field of a success event as a name -> value mapping."""
    from producer.wire import headers_as_dict

    return headers_as_dict(event.get("headers"))
