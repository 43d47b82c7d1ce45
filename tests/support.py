"""Helpers shared by the tests: build a producer against a test namespace, read events back."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import pytest
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


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """The first truthy value of ``predicate``, polled every ``interval`` for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """``wait_for`` for a test running on the event loop (the loop keeps running meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(interval)


async def aggregator_reading(agg: Any, timeout: float = 10.0) -> None:
    """Until every shard consumer of ``agg`` (an ``aggregator.daemon.Aggregator``) has its group
    and reads the stream."""
    await wait_until(lambda: all(c.ready for c in agg.consumers), timeout, what="the aggregator reading its shards")


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


class ReplyLosingProxy:
    """A TCP proxy in front of Redis that loses replies. For each request containing ``trigger``
    (XADD: a producer's write; EVALSHA: an aggregator's apply script), ``lose()`` decides; when
    it says so, the request is forwarded, and as soon as Redis starts answering, the answer is
    thrown away and both connections are closed. Redis may have applied all, some (the rest of a
    pipeline never arrives) or none of the request: the writer cannot know and retries.
    Everything else passes through."""

    def __init__(self, upstream_port: int, lose: Callable[[], bool], trigger: bytes = b"XADD") -> None:
        import socket
        import threading

        self.upstream_port = upstream_port
        self.lose = lose
        self.trigger = trigger
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.dropped_replies = 0
        self.lock = threading.Lock()
        self.sockets: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            self.sockets += [client, upstream]
            state = {"swallow": False}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(client, upstream, state), daemon=True).start()

    def _up(self, client: Any, upstream: Any, state: dict[str, bool]) -> None:
        import contextlib
        import socket

        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.trigger in data:
                    with self.lock:
                        if self.lose():
                            state["swallow"] = True
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _down(self, client: Any, upstream: Any, state: dict[str, bool]) -> None:
        import contextlib
        import socket

        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if state["swallow"]:
                    with self.lock:
                        self.dropped_replies += 1
                    break
                client.sendall(data)
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        import contextlib

        self.sock.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def prometheus_tool(name: str) -> str:
    """Path of ``prometheus`` or ``promtool`` (Debian package ``prometheus``). Without it the test
    is skipped, except in CI (``LSM_REQUIRE_PROMETHEUS=1``), where it fails."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if found is None:
        if os.environ.get("LSM_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"{name} is required (LSM_REQUIRE_PROMETHEUS=1) but is not installed")
        pytest.skip(f"{name} is not installed (Debian package 'prometheus')")
    return found
