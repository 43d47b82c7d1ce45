"""The emitter when Redis misbehaves (invariant 5): absent, killed, hanging, a lost reply, and
shutdown while it is down. Every test runs against its own private server (or a dead port /
a silent listener), never the shared Redis."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from aggregator.local_server import LocalServer, free_port
from producer.emitter import DROP_REASONS, EVENT_MEMORY_OVERHEAD, Emitter
from producer.keys import Keys
from producer.wire import encode_event
from tests.support import ReplyLosingProxy, producer_stats, read_entries, read_events, settings_for, wait_for

pytestmark = pytest.mark.fault

# An offer must return at once whatever Redis does; generous enough for a loaded CI machine,
# far below any Redis timeout used here (>= 0.5 s).
MAX_OFFER_SECONDS = 0.05


def ev(i: int, size: int | None = None) -> bytes:
    data = encode_event({"kind": "success", "t": 1700000000.0 + i, "i": i})
    if size is None:
        return data
    base = encode_event({"kind": "success", "t": 1700000000.0 + i, "i": i, "pad": ""})
    data = encode_event({"kind": "success", "t": 1700000000.0 + i, "i": i, "pad": "x" * (size - len(base))})
    assert len(data) == size
    return data


def new_ns() -> str:
    return f"lsmfault-{uuid.uuid4().hex[:10]}"


class Offers:
    """Offers events and records how long each offer took and what it returned."""

    def __init__(self, em: Emitter) -> None:
        self.em = em
        self.accepted: list[int] = []
        self.refused: list[int] = []
        self.max_seconds = 0.0

    def offer(self, i: int, size: int | None = None) -> bool:
        data = ev(i, size)
        t0 = time.perf_counter()
        ok = self.em.offer(data)
        self.max_seconds = max(self.max_seconds, time.perf_counter() - t0)
        (self.accepted if ok else self.refused).append(i)
        return ok


def dropped_total(em: Emitter) -> int:
    return sum(em.counters.dropped.values())


def assert_accounted(em: Emitter, offered: int) -> None:
    """Every offered event is accepted or refused with a reason; every accepted one is sent,
    still buffered or dropped at shutdown: nothing is counted twice or not at all."""
    c = em.counters
    refused = sum(n for reason, n in c.dropped.items() if reason != "shutdown")
    assert c.accepted + refused == offered
    assert em.buffered() >= 0
    assert c.accepted == c.sent + em.buffered() + c.dropped["shutdown"]


@pytest.fixture
def emitters() -> Iterator[list[Emitter]]:
    made: list[Emitter] = []
    yield made
    for em in made:
        em.close(timeout=0.5)


@pytest.fixture
def aof_server() -> Iterator[LocalServer]:
    """A private server that fsyncs every write: what it acknowledged survives kill -9."""
    server = LocalServer(appendonly=True).start()
    try:
        yield server
    finally:
        server.close()


def client_for(server: LocalServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


# -- 1. Redis absent at start ---------------------------------------------------------------------


def test_redis_absent_at_start_then_delivered(private_server: LocalServer, emitters: list[Emitter]) -> None:
    private_server.kill()
    ns = new_ns()
    em = Emitter(settings_for(private_server.url, ns))
    emitters.append(em)
    offers = Offers(em)
    for i in range(500):
        assert offers.offer(i)
    assert offers.max_seconds < MAX_OFFER_SECONDS

    wait_for(lambda: em.counters.flush_errors >= 3, timeout=5)
    assert em.counters.sent == 0
    assert em.buffered() == 500
    assert "Connection" in em.counters.last_error

    private_server.start()
    wait_for(lambda: em.counters.sent == 500, timeout=10)
    assert em.close(timeout=2.0) is True
    client = client_for(private_server)
    assert [e["i"] for e in read_events(client, ns)] == list(range(500))
    assert len(read_entries(client, ns)) == em.counters.entries_sent
    assert int(producer_stats(client, ns, em.producer_id)["events_sent"]) == 500
    assert dropped_total(em) == 0
    assert_accounted(em, 500)


# -- 2. Redis killed mid-stream -------------------------------------------------------------------


def test_redis_killed_mid_stream_loses_nothing(aof_server: LocalServer, emitters: list[Emitter]) -> None:
    ns = new_ns()
    em = Emitter(settings_for(aof_server.url, ns))
    emitters.append(em)
    offers = Offers(em)
    errors: list[BaseException] = []
    stop = threading.Event()
    counter = iter(range(10**9))

    def feed() -> None:
        try:
            while not stop.is_set():
                offers.offer(next(counter))
                time.sleep(0.001)
        except BaseException as exc:  # pragma: no cover - what the test is looking for
            errors.append(exc)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        wait_for(lambda: em.counters.sent >= 200, what="traffic flowing")
        sent_before_kill = em.counters.sent
        aof_server.kill()
        killed_at_errors = em.counters.flush_errors
        # Down: the writer fails, and the proxy goes on offering events (they wait in the buffer).
        down_at = len(offers.accepted)
        wait_for(lambda: em.counters.flush_errors > killed_at_errors, what="the writer noticed the outage")
        wait_for(lambda: len(offers.accepted) >= down_at + 200, what="offers during the outage")
        aof_server.start()
        restarted_at = len(offers.accepted)
        # Up again: everything offered before the restart is sent, and traffic flows on.
        wait_for(lambda: em.counters.sent >= restarted_at + 200, what="sent after the restart")
    finally:
        stop.set()
        feeder.join(10)

    assert errors == []
    assert sent_before_kill > 0
    offered = len(offers.accepted) + len(offers.refused)
    assert offers.refused == []
    assert offers.max_seconds < MAX_OFFER_SECONDS, f"slowest offer took {offers.max_seconds:.3f} s"
    assert_accounted(em, offered)

    wait_for(lambda: em.buffered() == 0, timeout=10)
    assert em.close(timeout=2.0) is True
    # The outage really happened and was seen by the writer.
    assert em.counters.flush_errors > killed_at_errors
    assert em.counters.sent == em.counters.accepted == offered
    assert dropped_total(em) == 0

    client = client_for(aof_server)
    entries = read_entries(client, ns)
    # A write whose reply was lost in the kill may be in the stream twice, always with the
    # same sequence number and the same events.
    by_seq: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for entry in entries:
        key = (entry.producer_id, entry.seq)
        if key in by_seq:
            assert by_seq[key] == entry.events
        by_seq[key] = entry.events
    assert {p for p, _ in by_seq} == {em.producer_id}
    assert sorted(s for _, s in by_seq) == list(range(1, len(by_seq) + 1))
    delivered = [e["i"] for e in read_events(client, ns)]
    # Nothing lost, nothing duplicated after dedupe, and in order.
    assert delivered == offers.accepted
    assert set(offers.accepted[restarted_at:]) <= set(delivered)


# -- 3. Redis that accepts connections but never answers ------------------------------------------


def test_paused_redis_keeps_offers_fast_and_the_buffer_bounded(
    private_server: LocalServer, emitters: list[Emitter]
) -> None:
    ns = new_ns()
    private_server.pause()
    em = Emitter(settings_for(private_server.url, ns, buffer_max_events=1000, batch_max_events=100))
    emitters.append(em)
    offers = Offers(em)
    for i in range(5000):
        offers.offer(i)
    assert offers.max_seconds < MAX_OFFER_SECONDS, f"slowest offer took {offers.max_seconds:.3f} s"
    assert offers.accepted == list(range(1000))
    assert em.counters.accepted == 1000
    assert em.counters.dropped["buffer_full_events"] == 4000
    assert dropped_total(em) == 4000

    # While Redis stays silent, the writer times out and retries; the bound still holds.
    wait_for(lambda: em.counters.flush_errors >= 2, timeout=5)
    assert em.counters.sent == 0
    assert em.buffered() == 1000
    assert not em.offer(ev(5000))
    assert em.counters.dropped["buffer_full_events"] == 4001

    private_server.resume()
    wait_for(lambda: em.counters.sent == 1000, timeout=10)
    assert em.close(timeout=2.0) is True
    assert_accounted(em, 5001)
    client = client_for(private_server)
    assert [e["i"] for e in read_events(client, ns)] == list(range(1000))


class SilentListener:
    """A TCP listener that accepts connections, reads what is sent and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()


def test_silent_listener_bounds_buffer_and_shutdown(emitters: list[Emitter]) -> None:
    listener = SilentListener()
    try:
        em = Emitter(settings_for(listener.url, new_ns(), buffer_max_events=300, socket_timeout=0.5))
        emitters.append(em)
        offers = Offers(em)
        for i in range(1000):
            offers.offer(i)
        assert offers.max_seconds < MAX_OFFER_SECONDS
        assert em.counters.accepted == 300
        assert em.counters.dropped["buffer_full_events"] == 700
        wait_for(lambda: em.counters.flush_errors >= 1, timeout=5)
        assert listener.conns, "the writer never connected"
        assert em.counters.sent == 0

        t0 = time.monotonic()
        assert em.close(timeout=0.5) is False
        assert time.monotonic() - t0 < 1.5
        assert em.counters.dropped["shutdown"] == 300
        assert em.buffered() == 0
        assert_accounted(em, 1000)
    finally:
        listener.close()


# -- 4. bytes bound and oversized events ----------------------------------------------------------


def test_byte_bound_and_event_too_large(private_server: LocalServer, emitters: list[Emitter]) -> None:
    private_server.kill()  # nothing listens: everything stays buffered (in the buffer or in flight)
    ns = new_ns()
    em = Emitter(
        settings_for(
            private_server.url,
            ns,
            buffer_max_bytes=1000,
            max_event_bytes=300,
            batch_max_bytes=1000,
            buffer_max_events=100,
        )
    )
    emitters.append(em)
    offers = Offers(em)
    assert not offers.offer(0, size=301)
    assert em.counters.dropped["event_too_large"] == 1
    assert offers.offer(1, size=300)  # exactly max_event_bytes is fine
    # Let the writer take the first event into a (failing) in-flight batch: it still counts.
    wait_for(lambda: em.counters.flush_errors >= 1, timeout=5)
    # Each event counts its length plus EVENT_MEMORY_OVERHEAD (64): 364 + 3 * 164 = 856 bytes.
    assert EVENT_MEMORY_OVERHEAD == 64
    results = [offers.offer(2 + k, size=100) for k in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert offers.offer(12, size=1000 - 856 - 64)  # exactly up to the bound is fine
    assert not offers.offer(13, size=60)
    assert em.counters.dropped["buffer_full_bytes"] == 8
    assert em.counters.dropped["buffer_full_events"] == 0
    assert em.counters.dropped["event_too_large"] == 1
    assert em.counters.accepted == 5
    assert em.snapshot()["buffer_bytes"] == 300 + 3 * 100 + 80
    assert offers.max_seconds < MAX_OFFER_SECONDS

    private_server.start()
    wait_for(lambda: em.counters.sent == 5, timeout=10)
    assert em.snapshot()["buffer_bytes"] == 0
    # Space is free again once delivered.
    assert all(offers.offer(100 + k, size=100) for k in range(6))
    assert em.close(timeout=2.0) is True
    assert_accounted(em, 20)
    delivered = [e["i"] for e in read_events(client_for(private_server), ns)]
    assert delivered == offers.accepted == [1, 2, 3, 4, 12, *range(100, 106)]


# -- 5. shutdown with Redis down ------------------------------------------------------------------


def test_close_with_redis_down_counts_leftovers_as_shutdown(
    private_server: LocalServer, emitters: list[Emitter]
) -> None:
    private_server.kill()
    em = Emitter(settings_for(private_server.url, new_ns()))
    emitters.append(em)
    for i in range(100):
        assert em.offer(ev(i))
    t0 = time.monotonic()
    assert em.close(timeout=0.5) is False
    elapsed = time.monotonic() - t0
    assert elapsed < 1.1, f"close took {elapsed:.2f} s"
    assert em.counters.dropped["shutdown"] == 100
    assert dropped_total(em) == 100
    assert em.counters.sent == 0
    assert em.buffered() == 0
    assert_accounted(em, 100)
    # A second close does not count anything again.
    em.close(timeout=0.5)
    assert em.counters.dropped["shutdown"] == 100


def test_close_while_a_write_hangs(private_server: LocalServer, emitters: list[Emitter]) -> None:
    """The writer is blocked in a write (socket timeout longer than the shutdown deadline)."""
    ns = new_ns()
    em = Emitter(settings_for(private_server.url, ns, socket_timeout=1.5))
    emitters.append(em)
    em.offer(ev(0))
    wait_for(lambda: em.counters.sent == 1)  # the connection exists before Redis hangs
    private_server.pause()
    try:
        for i in range(1, 101):
            assert em.offer(ev(i))
        time.sleep(0.2)  # the writer has sent the batch and waits for the reply
        t0 = time.monotonic()
        assert em.close(timeout=0.3) is False
        assert time.monotonic() - t0 < 1.3
        assert em.counters.dropped["shutdown"] == 100
        # The hung write then times out: nothing is counted a second time.
        time.sleep(1.8)
        assert em.counters.dropped["shutdown"] == 100
        assert em.counters.sent == 1
        assert_accounted(em, 101)
    finally:
        private_server.resume()


def test_write_given_up_at_shutdown_that_lands_later_is_not_counted_twice(
    private_server: LocalServer, emitters: list[Emitter]
) -> None:
    """close() gives up on a write that Redis then completes: the events arrived, so they must
    end up counted as sent, not as sent *and* dropped (and the buffer never goes negative)."""
    ns = new_ns()
    em = Emitter(settings_for(private_server.url, ns, socket_timeout=3.0))
    emitters.append(em)
    em.offer(ev(0))
    wait_for(lambda: em.counters.sent == 1)
    private_server.pause()
    try:
        for i in range(1, 101):
            assert em.offer(ev(i))
        time.sleep(0.2)  # the batch is written to the socket; the reply cannot come
        assert em.close(timeout=0.2) is False
        assert em.counters.dropped["shutdown"] == 100
    finally:
        private_server.resume()
    client = client_for(private_server)
    wait_for(lambda: len(read_events(client, ns)) == 101, timeout=5)
    # The writer thread sees the late reply and finishes.
    wait_for(lambda: em.counters.sent == 101, timeout=5)
    time.sleep(0.2)
    assert em.buffered() == 0
    assert em.counters.dropped["shutdown"] == 0
    assert_accounted(em, 101)
    wait_for(lambda: producer_stats(client, ns, em.producer_id).get("events_dropped_shutdown") == "0", timeout=5)
    assert producer_stats(client, ns, em.producer_id)["events_sent"] == "101"


# -- 6. a retried write whose first reply was lost ------------------------------------------------


def test_retry_after_lost_reply_reuses_the_sequence_number(
    private_server: LocalServer, emitters: list[Emitter]
) -> None:
    first_only = iter([True])
    proxy = ReplyLosingProxy(private_server.port, lambda: next(first_only, False))
    ns = new_ns()
    try:
        em = Emitter(settings_for(proxy.url, ns))
        emitters.append(em)
        for i in range(5):
            assert em.offer(ev(i))
        wait_for(lambda: em.counters.sent == 5, timeout=10)
        assert em.close(timeout=2.0) is True
    finally:
        proxy.close()

    assert proxy.dropped_replies == 1
    assert em.counters.flush_errors == 1
    client = client_for(private_server)
    entries = read_entries(client, ns)
    # The first write was applied although its reply never arrived; the retry wrote it again
    # with the same (producer, seq).
    assert [(e.producer_id, e.seq) for e in entries] == [(em.producer_id, 1), (em.producer_id, 1)]
    assert entries[0].events == entries[1].events == [orjson.loads(ev(i)) for i in range(5)]
    assert [e["i"] for e in read_events(client, ns)] == list(range(5))
    assert em.counters.sent == 5 and em.counters.entries_sent == 1
    assert_accounted(em, 5)
    assert Keys(ns).stream(0) == em.stream


def test_drop_reasons_are_all_reported(private_server: LocalServer, emitters: list[Emitter]) -> None:
    """Every drop reason has a field in the counters hash, so dashboards see zeros, not gaps."""
    ns = new_ns()
    em = Emitter(settings_for(private_server.url, ns))
    emitters.append(em)
    em.offer(ev(0))
    assert em.close(timeout=2.0)
    stats = producer_stats(client_for(private_server), ns, em.producer_id)
    for reason in DROP_REASONS:
        assert stats[f"events_dropped_{reason}"] == "0"


def test_free_port_with_nothing_listening(emitters: list[Emitter]) -> None:
    em = Emitter(settings_for(f"redis://127.0.0.1:{free_port()}/0", new_ns(), buffer_max_events=50))
    emitters.append(em)
    offers = Offers(em)
    for i in range(80):
        offers.offer(i)
    assert offers.max_seconds < MAX_OFFER_SECONDS
    assert len(offers.accepted) == 50 and em.counters.dropped["buffer_full_events"] == 30
    wait_for(lambda: em.counters.flush_errors >= 2, timeout=5)
    assert em.close(timeout=0.3) is False
    assert em.counters.dropped["shutdown"] == 50
    assert_accounted(em, 80)
