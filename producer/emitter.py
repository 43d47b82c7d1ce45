"""The bounded buffer and its background writer.

``offer()`` is the only thing the request path touches: it appends already-encoded bytes to an
in-memory deque under a short lock and returns. It never waits on Redis and never raises.

A daemon thread (started lazily, restarted after ``fork``) takes batches from the buffer and
writes them with one pipelined round trip: ``XADD`` per batch plus the producer's counters.
A batch keeps its sequence number until Redis confirms it, so a write whose reply was lost is
retried with the same ``(producer, seq)`` and the aggregator recognises the duplicate.

Drop policy: when the buffer is full (by events or by bytes) the *new* event is refused and
counted under ``buffer_full_events`` / ``buffer_full_bytes``; what is already buffered is kept
in order. Events still buffered when the shutdown deadline passes are counted as ``shutdown``;
events offered after ``close()`` as ``closed``.
Every event is either sent, still buffered, or counted as dropped under exactly one reason.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import redis
from redis.cluster import RedisCluster

from producer import __version__
from producer.keys import PRODUCER_STATS_TTL_SECONDS, Keys
from producer.logs import log
from producer.resp import CommandBatch
from producer.settings import ProducerSettings
from producer.wire import CODEC_JSON, array_length, compresses, encode_entry, entry_header

DROP_REASONS = (
    "buffer_full_events",
    "buffer_full_bytes",
    "event_too_large",
    "extract_error",
    "closed",
    "shutdown",
)

# What a buffered event costs in memory beyond its encoded length (the bytes object's header,
# the allocator's rounding, the deque's slot): counted against LSM_BUFFER_MAX_BYTES.
EVENT_MEMORY_OVERHEAD = 64


def new_producer_id() -> str:
    host = socket.gethostname().replace(":", "_")[:64] or "host"
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Batch:
    seq: int
    events: list[bytes]
    nbytes: int
    built_at: float


@dataclass
class ProducerCounters:
    """Counters since this producer instance started. Guarded by the emitter lock."""

    accepted: int = 0
    sent: int = 0
    skipped: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    entries_sent: int = 0
    flushes: int = 0
    flush_errors: int = 0
    # Events written while fewer than wait_replicas replicas confirmed them (LSM_WAIT_REPLICAS).
    unreplicated: int = 0
    flush_seconds_sum: float = 0.0
    flush_seconds_max: float = 0.0
    last_error: str = ""


def create_client(settings: ProducerSettings) -> redis.Redis:
    """A client with explicit timeouts and *no* automatic retries.

    redis-py 8 defaults to a 5 s socket timeout and several retries that may resend a write;
    the emitter owns retrying (with the same sequence number) and backoff instead. On a Redis
    Cluster (``LSM_REDIS_CLUSTER``, or asked of the server when unset) it is redis-py's cluster
    client, used only to find the node that serves each key (``Emitter._write``).
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.socket_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    plain = redis.Redis.from_url(
        settings.redis_url, retry_on_error=[], health_check_interval=0, single_connection_client=False, **options
    )
    cluster = settings.redis_cluster
    if cluster is None:
        try:
            info = plain.info("cluster")
        except redis.ResponseError:  # a user without INFO (an ACL): a cluster needs LSM_REDIS_CLUSTER
            info = {}
        cluster = bool(int(info.get("cluster_enabled", 0)))
    if not cluster:
        return plain
    plain.close()
    return cast(redis.Redis, RedisCluster.from_url(settings.redis_url, **options))


class Emitter:
    """Bounded, thread-safe event buffer with a background Redis writer."""

    def __init__(
        self,
        settings: ProducerSettings,
        client_factory: Callable[[ProducerSettings], redis.Redis] = create_client,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace, settings.shards)
        self._client_factory = client_factory
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._init_state()
        _LIVE.add(self)

    # -- state ---------------------------------------------------------------------------------

    def _init_state(self) -> None:
        self.producer_id = new_producer_id()
        self.stream = self.keys.stream(self.keys.shard_for_producer(self.producer_id))
        self.started_at = time.time()
        self.counters = ProducerCounters()
        self._buffer: deque[bytes] = deque()
        self._buffer_bytes = 0
        self._inflight: list[_Batch] = []
        self._inflight_events = 0
        self._inflight_bytes = 0
        self._seq = 0
        # When the oldest buffered event was offered (monotonic): a partial batch is due one
        # flush interval later.
        self._oldest_at = 0.0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stop.clear()
        self._wake.clear()

    def _after_fork(self) -> None:
        # The writer thread does not survive fork; the child is a new producer with an empty buffer.
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._init_state()

    # -- hot path ------------------------------------------------------------------------------

    def offer(self, data: bytes) -> bool:
        """Buffer one encoded event. Returns False (and counts why) when it is dropped."""
        n = len(data)
        s = self.settings
        if len(self._buffer) >= s.batch_max_events:
            # A backlog (Redis slow or down): keep an exact-size copy. orjson's output keeps an
            # allocation of 4 KiB or more whatever its length; harmless for an event written
            # within a flush interval, it would make a backlog cost 4-30x its counted bytes.
            data = bytes(memoryview(data))
        lock = self._lock
        lock.acquire()
        try:
            c = self.counters
            if self._closed:
                c.dropped["closed"] += 1
                return False
            if n > s.max_event_bytes:
                c.dropped["event_too_large"] += 1
                return False
            buffered = len(self._buffer)
            if buffered + self._inflight_events >= s.buffer_max_events:
                c.dropped["buffer_full_events"] += 1
                return False
            held = buffered + self._inflight_events + 1
            if self._buffer_bytes + self._inflight_bytes + n + EVENT_MEMORY_OVERHEAD * held > s.buffer_max_bytes:
                c.dropped["buffer_full_bytes"] += 1
                return False
            self._buffer.append(data)
            self._buffer_bytes += n
            c.accepted += 1
            if self._thread is None:
                self._oldest_at = time.monotonic()
                self._start_locked()
            elif not buffered:
                # The first event after a write: the flush interval starts now.
                self._oldest_at = time.monotonic()
                self._wake.set()
            elif buffered + 1 == s.batch_max_events:
                self._wake.set()
            return True
        finally:
            lock.release()

    def count_dropped(self, reason: str) -> None:
        with self._lock:
            self.counters.dropped[reason] = self.counters.dropped.get(reason, 0) + 1

    def count_skipped(self) -> None:
        """An event LiteLLM's own logger would not record either (e.g. an invalid-key request)."""
        with self._lock:
            self.counters.skipped += 1

    # -- writer thread -------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._start_locked()

    def _start_locked(self) -> None:
        t = threading.Thread(target=self._run, name="lsm-producer-writer", daemon=True)
        self._thread = t
        t.start()

    def _take_batch_locked(self) -> _Batch | None:
        if not self._buffer:
            return None
        s = self.settings
        events: list[bytes] = []
        size = 1  # the JSON array's "[": each event then adds its length plus "," or "]"
        buf = self._buffer
        while buf and len(events) < s.batch_max_events:
            nxt = len(buf[0])
            if events and size + nxt + 1 > s.batch_max_bytes:
                break
            events.append(buf.popleft())
            size += nxt + 1
        nbytes = size - 1 - len(events)
        self._buffer_bytes -= nbytes
        self._seq += 1
        batch = _Batch(self._seq, events, nbytes, time.time())
        if buf:
            self._oldest_at = time.monotonic()
        self._inflight.append(batch)
        self._inflight_events += len(events)
        self._inflight_bytes += nbytes
        return batch

    def _collect_locked(self, max_batches: int) -> list[_Batch]:
        while len(self._inflight) < max_batches:
            if self._take_batch_locked() is None:
                break
        return list(self._inflight)

    def _seconds_until_due(self, next_report: float) -> float:
        """How long the writer may sleep: 0 when a batch is due (a full batch waits, a partial
        one is a flush interval old, or a failed write is to be retried) or the counters are."""
        s = self.settings
        with self._lock:
            if self._inflight or len(self._buffer) >= s.batch_max_events:
                return 0.0
            now = time.monotonic()
            wait = next_report - now
            if self._buffer:
                wait = min(wait, self._oldest_at + s.flush_interval - now)
        # Woken early by offer() (first event, full batch) and close(); the cap is a safety net.
        return min(max(wait, 0.0), 1.0)

    def _flush_due_locked(self) -> bool:
        s = self.settings
        buffered = len(self._buffer)
        return bool(
            self._inflight
            or buffered >= s.batch_max_events
            or (buffered and time.monotonic() - self._oldest_at >= s.flush_interval)
        )

    def _run(self) -> None:
        """Write due batches; write the counters at least every stats interval, also while a
        partial batch waits, so that what was accepted shows in Redis ahead of what was sent
        (a process killed before its next write leaves a visible gap, docs/operations.md)."""
        client: redis.Redis | None = None
        attempt = 0
        next_report = 0.0
        s = self.settings
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                wait = self._seconds_until_due(next_report)
                if wait > 0:
                    self._wake.wait(wait)
                    self._wake.clear()
                    continue
            with self._lock:
                batches = self._collect_locked(max_batches=8) if stopping or self._flush_due_locked() else []
            if not batches and stopping:
                # Final report, marked as a clean close, so the aggregator side sees the last
                # counters and knows this producer did not vanish with events in its buffer.
                try:
                    client = client or self._client_factory(s)
                    self._write(client, [], final=True)
                except Exception as exc:
                    self._record_error(exc)
                return
            try:
                client = client or self._client_factory(s)
                t0 = time.perf_counter()
                replicated = self._write(client, batches)
                elapsed = time.perf_counter() - t0
                attempt = 0
                next_report = time.monotonic() + s.stats_interval
                self._complete(batches, elapsed, replicated)
            except Exception as exc:  # Redis down, slow, or replying garbage: keep the batch.
                attempt += 1
                self._record_error(exc)
                if client is not None:
                    with contextlib.suppress(Exception):
                        _forget_connections(client)
                delay = random.uniform(0, min(s.backoff_max, s.backoff_base * (2 ** min(attempt, 30))))
                if self._stop.is_set():
                    if time.monotonic() >= self._deadline:
                        self._drop_remaining()
                        return
                    delay = min(delay, max(0.0, self._deadline - time.monotonic()))
                    time.sleep(delay)
                else:
                    self._stop.wait(delay)

    def _write(self, client: redis.Redis, batches: list[_Batch], final: bool = False) -> bool:
        """One write, one round trip: an ``XADD`` per batch, then the producer's counters. (On a
        cluster, one round trip per node that serves one of the keys: the stream's, the
        counters' and the registry's.) With ``wait_replicas``, a ``WAIT`` follows the ``XADD``s
        on the stream's connection; returns whether enough replicas confirmed them (True
        without ``wait_replicas``)."""
        s = self.settings
        route = _Route(client)
        commands = route.commands(self.stream)
        for b in batches:
            if compresses(array_length(b.nbytes, len(b.events)), s.compress_min_bytes):
                fields = encode_entry(self.producer_id, b.seq, b.events, b.built_at, s.compress_min_bytes)
                commands.xadd(self.stream, s.stream_maxlen, fields)
            else:
                header = entry_header(self.producer_id, b.seq, len(b.events), CODEC_JSON, b.built_at)
                commands.xadd(self.stream, s.stream_maxlen, header, b.events, b.nbytes)
        wait = None
        if s.wait_replicas and batches:
            wait = (commands, commands.commands)
            commands.command(b"WAIT", s.wait_replicas, int(s.wait_timeout * 1000))
        stats_key = self.keys.producer_stats(self.producer_id)
        stats = self._stats_mapping(batches, final)
        commands = route.commands(stats_key)
        commands.command(b"HSET", stats_key, *[x for kv in stats.items() for x in kv])
        commands.command(b"EXPIRE", stats_key, PRODUCER_STATS_TTL_SECONDS)
        registry = self.keys.producer_registry()
        route.commands(registry).command(b"ZADD", registry, time.time(), self.producer_id)
        replies = route.execute()
        if wait is None:
            return True
        acked = replies[wait[0]][wait[1]]
        return isinstance(acked, int) and acked >= s.wait_replicas

    def _complete(self, batches: list[_Batch], elapsed: float, replicated: bool = True) -> None:
        with self._lock:
            c = self.counters
            if not replicated:
                c.unreplicated += sum(len(b.events) for b in batches)
            done = {id(b) for b in batches}
            live = {id(b) for b in self._inflight}
            self._inflight = [b for b in self._inflight if id(b) not in done]
            for b in batches:
                c.sent += len(b.events)
                c.entries_sent += 1
                if id(b) not in live:
                    # close() gave up on this write and counted it as dropped; it landed after all.
                    c.dropped["shutdown"] -= len(b.events)
                    continue
                self._inflight_events -= len(b.events)
                self._inflight_bytes -= b.nbytes
            if batches:
                c.flushes += 1
                c.flush_seconds_sum += elapsed
                c.flush_seconds_max = max(c.flush_seconds_max, elapsed)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self.counters.flush_errors += 1
            self.counters.last_error = f"{type(exc).__name__}: {exc}"[:300]
            errors = self.counters.flush_errors
        # Log the first error and then every 100th, so a long outage does not flood the proxy log.
        if errors == 1 or errors % 100 == 0:
            log.warning("litellm-stream-metrics: cannot write to Redis (%s errors so far): %s", errors, exc)

    def _drop_remaining(self) -> None:
        with self._lock:
            lost = len(self._buffer) + self._inflight_events
            self.counters.dropped["shutdown"] += lost
            self._buffer.clear()
            self._buffer_bytes = 0
            self._inflight = []
            self._inflight_events = 0
            self._inflight_bytes = 0
        if lost:
            log.warning("litellm-stream-metrics: shutdown deadline passed, %s events dropped", lost)

    def _stats_mapping(self, writing: list[_Batch] | None = None, final: bool = False) -> dict[str, str | int | float]:
        """Counters as written to Redis. ``writing``: the batches of the write in progress; the
        hash is written by the same pipeline that carries them, so it counts them as sent.
        ``final``: the report of a clean close (``closed_at``)."""
        writing = writing or []
        extra_sent = sum(len(b.events) for b in writing)
        extra_bytes = sum(b.nbytes for b in writing)
        with self._lock:
            c = self.counters
            m: dict[str, str | int | float] = {
                "producer_id": self.producer_id,
                "version": __version__,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "stream": self.stream,
                "started_at": self.started_at,
                "updated_at": time.time(),
                "events_accepted": c.accepted,
                "events_sent": c.sent + extra_sent,
                "events_skipped": c.skipped,
                "entries_sent": c.entries_sent + len(writing),
                "last_seq": self._seq,
                "flushes": c.flushes,
                "flush_errors": c.flush_errors,
                "events_unreplicated": c.unreplicated,
                "flush_seconds_sum": c.flush_seconds_sum,
                "flush_seconds_max": c.flush_seconds_max,
                # Not below 0: close() may have given up on (and counted) the batches in this write.
                "buffer_events": max(0, len(self._buffer) + self._inflight_events - extra_sent),
                "buffer_bytes": max(0, self._buffer_bytes + self._inflight_bytes - extra_bytes),
                "last_error": c.last_error,
                "stats_interval": self.settings.stats_interval,
            }
            if final:
                m["closed_at"] = time.time()
            for reason, n in c.dropped.items():
                m[f"events_dropped_{reason}"] = n
        return m

    # -- introspection and shutdown ------------------------------------------------------------

    def snapshot(self) -> dict[str, str | int | float]:
        """The counters as a plain dict (what ``_stats_mapping`` would write now)."""
        return self._stats_mapping()

    def buffered(self) -> int:
        with self._lock:
            return len(self._buffer) + self._inflight_events

    def close(self, timeout: float | None = None) -> bool:
        """Flush what is buffered and stop, giving up after ``timeout`` (default: the
        configured shutdown timeout). Returns True when everything was sent."""
        return self._finish_close(*self._begin_close(timeout))

    def _begin_close(self, timeout: float | None) -> tuple[threading.Thread | None, float, int]:
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        with self._lock:
            shutdown_before = self.counters.dropped["shutdown"]
            if self._closed and self._thread is None:
                return None, timeout, shutdown_before
            self._closed = True
            thread = self._thread
            self._deadline = time.monotonic() + timeout
            if thread is None and (self._buffer or self._inflight):
                self._start_locked()
                thread = self._thread
        self._stop.set()
        self._wake.set()
        return thread, timeout, shutdown_before

    def _finish_close(self, thread: threading.Thread | None, timeout: float, shutdown_before: int) -> bool:
        if thread is not None:
            thread.join(max(0.0, self._deadline - time.monotonic()) + 0.5)
            if thread.is_alive():
                self._drop_remaining()
        with self._lock:
            self._thread = None
            clean = self.buffered_unlocked() == 0 and self.counters.dropped["shutdown"] == shutdown_before
            sent, dropped = self.counters.sent, self.counters.dropped["shutdown"]
        if thread is not None:
            log.info(
                "litellm-stream-metrics: producer %s closed: %d events sent in all, %d dropped at shutdown",
                self.producer_id,
                sent,
                dropped,
            )
        return clean

    def buffered_unlocked(self) -> int:
        return len(self._buffer) + self._inflight_events

    _deadline: float = 0.0


# Every emitter not yet garbage-collected. One process-wide exit hook flushes them all in
# parallel (each within its own deadline); one fork hook resets them in the child.
_LIVE: weakref.WeakSet[Emitter] = weakref.WeakSet()


def close_all() -> None:
    """Close every live emitter: flush in parallel, each within its own shutdown timeout.

    Runs at interpreter exit and, inside the LiteLLM proxy, from its shutdown path
    (producer/lifecycle.py), where a SIGTERM ends the process without running ``atexit``."""
    pending = []
    for emitter in list(_LIVE):
        try:
            pending.append((emitter, emitter._begin_close(None)))
        except Exception:
            log.exception("litellm-stream-metrics: cannot start closing a producer")
    for emitter, started in pending:
        try:
            emitter._finish_close(*started)
        except Exception:
            log.exception("litellm-stream-metrics: cannot close a producer")


class _Route:
    """Where the writer's commands go: all on one connection to a single server, or, on a
    cluster, grouped by the node serving each key (every command here has one key)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.cluster = cast(RedisCluster, client) if isinstance(client, RedisCluster) else None
        self.batches: dict[str, tuple[redis.Redis, CommandBatch]] = {}

    def commands(self, key: str) -> CommandBatch:
        if self.cluster is None:
            name, target = "", self.client
        else:
            node = self.cluster.get_node_from_key(key)
            name, target = node.name, node.redis_connection
        if name not in self.batches:
            self.batches[name] = (target, CommandBatch())
        return self.batches[name][1]

    def execute(self) -> dict[CommandBatch, list[object]]:
        """Send every node's commands; the replies of each."""
        replies = {}
        for target, commands in self.batches.values():
            pool = target.connection_pool
            connection = pool.get_connection()
            try:
                replies[commands] = commands.execute(connection)
            finally:
                pool.release(connection)
        return replies


def _forget_connections(client: redis.Redis) -> None:
    """After a failed write: drop the connections (and, on a cluster, the slot map: a node may
    have failed over or slots moved), so the retry starts afresh."""
    if isinstance(client, RedisCluster):
        client.nodes_manager.initialize()
    else:
        client.connection_pool.disconnect()


def _reset_all_after_fork() -> None:
    for emitter in list(_LIVE):
        emitter._after_fork()


atexit.register(close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)
