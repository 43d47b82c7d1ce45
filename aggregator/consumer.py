"""Consume one shard's stream through the consumer group and apply it exactly once.

Order of work: first this consumer's own pending entries (left by a previous run under the
same name), then new entries with a blocking read that is shorter than the socket timeout.
Every ``claim_interval`` entries pending at other consumers for longer than ``claim_min_idle``
are claimed (XAUTOCLAIM). An entry delivered more than ``max_deliveries`` times is applied
alone, before the rest of its batch: a batch whose consumers keep dying (killed, OOM, a crash
the entry itself causes) does not take healthy entries with it, and a healthy entry applied
alone is done in milliseconds. One still not applied after ``max_isolated_attempts``
deliveries alone is dead-lettered. From the moment a batch is read until it is applied its
entries' idle time is kept low, so a live consumer that is merely slow keeps its batch.
Housekeeping (trimming processed entries, removing dead consumers, detecting lost entries) runs
every ``housekeeping_interval``.

Redis may lose everything (restarted without persistence, or replaced by a new instance): the
consumer group, the totals and the sequence bookkeeping are gone while producers go on writing.
The consumer checks the shard's group and state record (``shard_state.lua``) at start, after any
failed round and before each housekeeping round, and recreates what is missing while it runs: a
new state starts from the entries in the stream, and the reset is counted (``state_resets`` in
the shard's stats) and logged once.

New entries are processed two batches at a time: the next batch is read (without blocking)
before the current one is applied, and decoded and turned into a delta in a worker thread while
Redis runs the current batch's apply script. Batches are still applied one after the other.

A batch is either applied and acknowledged in one atomic script or not at all; stopping
(SIGTERM) lets the batches in hand finish and leaves the rest pending for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions
from redis.exceptions import ResponseError

from aggregator.apply import ApplyResult, DeadEntry, PendingEntry, ShardApplier
from aggregator.gc_pause import GC_PAUSE, paused_gc
from aggregator.housekeeping import Housekeeper
from aggregator.scripts import script
from aggregator.series_limits import MetricLimits
from aggregator.settings import AggregatorSettings
from aggregator.state import Delta
from producer.keys import Keys
from producer.wire import F_DATA, F_PRODUCER, F_SEQ, PRODUCER_ID, WireError, decode_entry

log = logging.getLogger("litellm_stream_metrics.aggregator")

DeltaBuilder = Callable[[Sequence[PendingEntry]], Delta]
# Reset the idle time of entries still pending at this consumer; XCLAIM ... JUSTID does not
# count a delivery. KEYS: stream. ARGV: group, consumer, entry ids.
_TOUCH = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
for i = 3, #ARGV do
  if #redis.call("XPENDING", stream, group, ARGV[i], ARGV[i], 1, consumer) == 1 then
    redis.call("XCLAIM", stream, group, consumer, 0, ARGV[i], "JUSTID")
  end
end
return 0
"""
# The largest sequence number Lua (doubles) represents exactly; no producer gets near it.
MAX_SEQ = 2**53 - 1
_SHARD_STATE = script("shard_state.lua")


@dataclass
class ConsumerCounters:
    """This process's own counters (the durable ones live in the shard stats hash)."""

    batches: int = 0
    entries_read: int = 0
    entries_applied: int = 0
    events_applied: int = 0
    duplicate_entries: int = 0
    dead_entries: int = 0
    claimed_entries: int = 0
    # Entries delivered more than max_deliveries times, applied (or dead-lettered) alone.
    isolated_entries: int = 0
    not_owned_entries: int = 0
    # Resets of the shard's state in Redis this process found (each is counted once in Redis).
    state_resets: int = 0
    # Exceptions of the engine (bugs): each costs its entry, dead-lettered as engine_error.
    engine_errors: int = 0
    apply_seconds_sum: float = 0.0
    apply_seconds_max: float = 0.0
    errors: int = 0


class ShardState:
    """The shard's state record as this process knows it (``shard_state.lua``): makes sure the
    stream, the consumer group and the record exist, and notices (and counts, once across
    processes) a reset of the shard's state since this process last looked. Shared by both
    ingests; an owner keeps it across its takeovers of the shard."""

    def __init__(self, keys: Keys, shard: int, group: str, schemas: Mapping[str, Sequence[str]] | None = None) -> None:
        self.keys = keys
        self.shard = shard
        self.group = group
        # metric key -> label names, recorded in the shard's ``schemas`` hash.
        self.schemas = dict(schemas or {})
        #: The state id this process works with, and the reset count it last saw.
        self.state_id: str | None = None
        self.resets = 0

    async def ensure(self, client: aioredis.Redis) -> bool:
        """Run the check; True when the state was reset since this process last looked."""
        stream = self.keys.stream(self.shard)
        keys = [stream, self.keys.shard_state(self.shard), self.keys.shard_stats(self.shard)]
        args: list[str | int] = [self.group, self.state_id or "", uuid.uuid4().hex, self.resets, repr(time.time())]
        reply: Any = await client.register_script(_SHARD_STATE)(keys=keys, args=args)
        state_id, created, reset, counted, resets = _text(reply[0]), *(int(x) for x in reply[1:])
        if reset and counted:
            log.warning(
                "shard %s: the shard's state in Redis was reset (Redis restarted empty or lost its data): "
                "consumer group %s and sequence bookkeeping recreated, applying the %d entries now in the "
                "stream; totals restart from zero and entries not applied before the reset are lost "
                "(state resets so far: %d)",
                self.shard,
                self.group,
                await client.xlen(stream),
                resets,
            )
        elif reset:
            log.info("shard %s: the shard's state was reset (already recorded by another aggregator)", self.shard)
        elif created and self.state_id is not None:
            log.warning("shard %s: consumer group %s was missing on %s: recreated", self.shard, self.group, stream)
        elif created:
            log.info("created consumer group %s on %s", self.group, stream)
        if self.schemas and (state_id != self.state_id or created):
            # The label names of every metric key this process writes, so readers can render
            # series stored under an earlier label configuration too.
            await client.hset(
                self.keys.schemas(self.shard),
                mapping={k: orjson.dumps(list(v)).decode() for k, v in self.schemas.items()},
            )
        self.state_id, self.resets = state_id, resets
        return bool(reset)


class ShardConsumer:
    def __init__(
        self,
        client: aioredis.Redis,
        settings: AggregatorSettings,
        shard: int,
        build_delta: DeltaBuilder,
        schemas: Mapping[str, Sequence[str]] | None = None,
        *,
        limits: Mapping[str, MetricLimits] | None = None,
        gauge_keys: Sequence[str] = (),
    ) -> None:
        self.client = client
        # metric key -> label names, recorded in the shard's ``schemas`` hash at start.
        self.schemas = dict(schemas or {})
        self.settings = settings
        self.shard = shard
        self.keys = settings.keys
        self.stream = self.keys.stream(shard)
        self.group = settings.group
        self.consumer = settings.consumer_name
        self.build_delta = build_delta
        self.applier = ShardApplier(
            client, self.keys, shard, self.group, self.consumer, limits, max_seq_jump=settings.max_seq_jump
        )
        self._touch = client.register_script(_TOUCH)
        self.state = ShardState(self.keys, shard, self.group, self.schemas)
        self.housekeeper = Housekeeper(client, self.keys, shard, settings, limits, gauge_keys)
        self.counters = ConsumerCounters()
        # The most events one entry held in the last batch (before the first: a producer's
        # default batch size), to read about settings.apply_max_events events at a time.
        self._events_per_entry = 500
        self.ready = False
        # Liveness (see stalled()): monotonic times of the last completed round or applied batch,
        # of the start of the current round (after a failure: when the next one is due), and of
        # the first failure since the last progress that did not come from Redis being
        # unavailable (down, loading, out of memory...), if any.
        self.last_progress = time.monotonic()
        self.last_attempt = self.last_progress
        self.failing_since: float | None = None
        self.last_error: str | None = None

    async def ensure_group(self) -> None:
        """Create the stream, the group and the state record if missing; a new group starts at the
        stream's start, so entries written before the first aggregator ran (or, after a reset,
        before the group was recreated) are applied too. Counts and logs a reset of the shard's
        state since this process last looked."""
        if await self.state.ensure(self.client):
            self.counters.state_resets += 1
        self.ready = True

    def stalled(self, timeout: float, now: float | None = None) -> str | None:
        """Why this consumer has been stuck for longer than ``timeout`` seconds for a reason a
        restart may fix, or None: its rounds have kept failing, without any progress, for that
        long with errors other than Redis being unavailable (restarting cannot bring Redis back,
        so an outage never counts, however long), or a round has been running (without applying
        anything) for that long: the loop hangs."""
        now = time.monotonic() if now is None else now
        if now - self.last_attempt > timeout:
            return f"shard {self.shard}: a round has not ended for {now - self.last_attempt:.0f} s"
        if self.failing_since is not None and now - self.failing_since > timeout:
            return f"shard {self.shard}: failing for {now - self.failing_since:.0f} s ({self.last_error})"
        return None

    def _progress(self) -> None:
        self.last_progress = self.last_attempt = time.monotonic()
        self.failing_since = None

    def _failed(self, exc: BaseException, retry_in: float) -> None:
        now = time.monotonic()
        self.last_attempt = now + retry_in  # the next round starts after the backoff
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.failing_since is None and not redis_unavailable(exc):
            self.failing_since = now

    async def run(self, stop: asyncio.Event) -> None:
        next_claim = time.monotonic() + self.settings.claim_interval
        next_housekeeping = time.monotonic()
        backoff = 0.1
        started = False
        # Batches overlap: the next batch is read before the current one is applied, and decoded
        # and built (in a worker thread) while Redis runs the current one's apply script.
        ahead: _Prepared | None = None  # read and prepared, not applied yet
        check_state = False
        while not stop.is_set():
            self.last_attempt = time.monotonic()
            try:
                if not started:  # Redis may be down when the process starts: retry like any read
                    await self.ensure_group()
                    await self._drain_own_pending(stop)
                    started = True
                elif check_state:
                    # After a failed round: Redis may have come back empty (no group, no state).
                    await self.ensure_group()
                check_state = False
                now = time.monotonic()
                # A claim or housekeeping round that fails (or keeps failing) must not keep the
                # loop from reading new entries: it is logged and tried again at its next time.
                if now >= next_claim:
                    next_claim = now + self.settings.claim_interval
                    await self._periodic("claim", self._claim_stale(stop))
                if now >= next_housekeeping:
                    next_housekeeping = now + self.settings.housekeeping_interval
                    # The state first: gap detection must know whether the state was reset.
                    await self.ensure_group()
                    await self._periodic("housekeeping", self.housekeeper.run_once())
                raw: Any = await self.client.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    count=self._read_count(),
                    # Never wait for new entries while a batch is waiting to be applied.
                    block=None if ahead else int(self.settings.block_seconds * 1000),
                )
                entries = [e for _stream, stream_entries in raw or [] for e in stream_entries]
                current, ahead = ahead, None
                applying = asyncio.create_task(self._apply(current)) if current else None
                try:
                    if entries:
                        ahead = await self._prepare_batch(entries, {})
                finally:
                    if applying is not None:
                        await applying
                    current = None  # applied: its objects go now (and with them its GC pause)
                backoff = 0.1
                self._progress()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or slow: keep going, nothing is lost (pending)
                self.counters.errors += 1
                self._failed(exc, backoff)
                check_state = started
                log.warning("shard %s: %s: %s; retrying in %.1f s", self.shard, type(exc).__name__, exc, backoff)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 5.0)
        if ahead is not None:  # the batch in hand: applied before stopping
            try:
                await self._apply(ahead)
            except Exception as exc:  # left pending, for this consumer's next run or a claim
                self.counters.errors += 1
                log.warning("shard %s: last batch not applied: %s: %s", self.shard, type(exc).__name__, exc)

    def _read_count(self) -> int:
        """Entries to read at once: ``read_count``, fewer when entries are large, so that an
        apply script handles about ``apply_max_events`` events (a script blocks Redis while it
        runs: every producer's writes wait; measured 5 s and more for 50,000 events of new
        series on a slow machine)."""
        s = self.settings
        return max(1, min(s.read_count, s.apply_max_events // self._events_per_entry))

    async def _periodic(self, what: str, job: Awaitable[object]) -> None:
        try:
            await job
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counters.errors += 1
            log.warning("shard %s: %s failed: %s: %s", self.shard, what, type(exc).__name__, exc)

    async def _drain_own_pending(self, stop: asyncio.Event) -> None:
        """Entries delivered to this consumer name before a restart and never acknowledged."""
        start = "0"
        while not stop.is_set():
            raw: Any = await self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=self._read_count()
            )
            entries = raw[0][1] if raw else []
            entries = [(i, f) for i, f in entries if f]  # deleted entries come back with no fields
            if not entries:
                return
            await self._process_redelivered(entries)
            start = _text(entries[-1][0])

    async def _claim_stale(self, stop: asyncio.Event) -> None:
        """Take over entries left pending by consumers that died or hang."""
        start = "0-0"
        min_idle = int(self.settings.claim_min_idle * 1000)
        while not stop.is_set():
            reply: Any = await self.client.xautoclaim(
                self.stream, self.group, self.consumer, min_idle, start_id=start, count=self._read_count()
            )
            start = _text(reply[0])
            claimed = [(i, f) for i, f in reply[1] if f]
            if claimed:
                self.counters.claimed_entries += len(claimed)
                log.info("shard %s: claimed %d stale entries", self.shard, len(claimed))
                await self._process_redelivered(claimed)
            if start == "0-0":
                return

    async def process(self, entries: Sequence[tuple[Any, Any]]) -> ApplyResult:
        """Decode, build the delta and apply one batch of first deliveries."""
        return await self._apply(await self._prepare_batch(entries, {}))

    async def _process_redelivered(self, entries: Sequence[tuple[Any, Any]]) -> None:
        """Entries delivered before (this consumer's own after a restart, or claimed): those
        delivered more than ``max_deliveries`` times one by one and first, then the rest."""
        deliveries = await self._delivery_counts([_text(i) for i, _ in entries])
        limit = self.settings.max_deliveries
        rest = []
        for entry in entries:
            n = deliveries.get(_text(entry[0]), 0)
            if n > limit:
                self.counters.isolated_entries += 1
                log.info("shard %s: entry %s delivered %d times: applying it alone", self.shard, _text(entry[0]), n)
                await self._apply(await self._prepare_batch([entry], deliveries))
            else:
                rest.append(entry)
        if rest:
            await self._apply(await self._prepare_batch(rest, deliveries))

    async def _prepare_batch(self, entries: Sequence[tuple[Any, Any]], deliveries: Mapping[str, int]) -> _Prepared:
        """Decode a batch and build its delta; from now until it is applied, the batch's entries
        are kept claimed (see _keep_owned)."""
        started = time.perf_counter()
        keeper = self._start_keeper([_text(i) for i, _ in entries])
        GC_PAUSE.hold()  # until the batch is applied and dropped (see gc_pause.py)
        try:
            # In a worker thread: the event loop stays free to keep the batch's entries claimed.
            batch = await asyncio.to_thread(self._prepare, entries, deliveries)
        except BaseException:
            keeper.cancel()
            GC_PAUSE.release()
            raise
        batch.gc_hold = GC_PAUSE.hold_while_alive(batch)
        GC_PAUSE.release()
        batch.keeper = keeper
        batch.entries_read = len(entries)
        if batch.pending:
            self._events_per_entry = max(1, max(len(e.events) for e in batch.pending))
        batch.started = started
        return batch

    async def _apply(self, batch: _Prepared) -> ApplyResult:
        pending, dead = batch.pending, batch.dead
        try:
            result = await self.applier.apply(pending, dead, _guarded(batch.builder(self.build_delta)), time.time())
        except _EngineError:
            # An event the engine cannot handle must not block (and, after too many deliveries,
            # dead-letter) the whole batch: dead-letter just the entries that fail.
            pending, dead = self._isolate_engine_errors(pending, dead)
            result = await self.applier.apply(pending, dead, self.build_delta, time.time())
        finally:
            if batch.keeper is not None:
                batch.keeper.cancel()
            if batch.gc_hold is not None:
                batch.gc_hold()  # applied or failed: the collector may run again
        elapsed = time.perf_counter() - batch.started
        c = self.counters
        c.batches += 1
        c.entries_read += batch.entries_read
        c.entries_applied += result.applied_entries
        c.events_applied += result.applied_events
        c.duplicate_entries += result.duplicate_entries
        c.dead_entries += result.dead_entries
        c.not_owned_entries += len(result.not_owned)
        c.apply_seconds_sum += elapsed
        c.apply_seconds_max = max(c.apply_seconds_max, elapsed)
        self._progress()
        if dead:
            log.warning("shard %s: dead-lettered %d entries (%s)", self.shard, len(dead), dead[0].reason)
        return result

    def _prepare(self, entries: Sequence[tuple[Any, Any]], deliveries: Mapping[str, int]) -> _Prepared:
        """Decode a batch and build its delta ahead, in one pass with the cyclic GC paused."""
        with paused_gc():
            pending, dead = self._decode(entries, deliveries)
            first_copies = _first_copies(pending)
            try:
                delta = self.build_delta(first_copies)
            except Exception:  # built again, guarded, by the apply step: the error is handled there
                return _Prepared(pending, dead)
            return _Prepared(pending, dead, tuple(e.entry_id for e in first_copies), delta)

    def _decode(
        self, entries: Sequence[tuple[Any, Any]], deliveries: Mapping[str, int]
    ) -> tuple[list[PendingEntry], list[DeadEntry]]:
        return decode_batch(entries, self.settings, deliveries)

    def _start_keeper(self, ids: list[str]) -> asyncio.Task[None]:
        return asyncio.create_task(self._keep_owned(ids))

    async def _keep_owned(self, ids: list[str]) -> None:
        """While a batch is being applied, reset the idle time of its entries (those still
        pending here), so that live consumers do not claim a batch that is merely slow: every
        claim counts as a delivery, and ``max_deliveries`` would dead-letter healthy entries."""
        while True:
            await asyncio.sleep(self.settings.claim_min_idle / 3)
            try:
                await self._touch(keys=[self.stream], args=[self.group, self.consumer, *ids])
            except Exception as exc:  # Redis down: the apply fails too and the entries stay pending
                log.debug("shard %s: cannot refresh the batch's claim: %s", self.shard, exc)

    def _isolate_engine_errors(
        self, pending: list[PendingEntry], dead: list[DeadEntry]
    ) -> tuple[list[PendingEntry], list[DeadEntry]]:
        good: list[PendingEntry] = []
        dead = list(dead)
        for entry in pending:
            try:
                self.build_delta([entry])
            except Exception as exc:
                self.counters.engine_errors += 1
                where = _failing_event(self.build_delta, entry)
                log.exception(
                    "shard %s: engine error (a bug, not a bad event) at entry %s%s; the entry is dead-lettered "
                    "as engine_error and can be replayed once fixed",
                    self.shard,
                    entry.entry_id,
                    where,
                )
                detail = f"{type(exc).__name__}: {exc}{where}"
                dead.append(DeadEntry(entry.entry_id, "engine_error", detail, entry.producer_id, entry.seq))
            else:
                good.append(entry)
        return good, dead

    async def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        """How often each entry was delivered, for those still pending here; ``ids`` in stream
        order (as XREADGROUP and XAUTOCLAIM return them). One XPENDING over their id range
        (paged), not one per entry: the claimed entries wait for this before being applied."""
        out: dict[str, int] = {}
        wanted = set(ids)
        start, page = ids[0] if ids else "", 500
        while wanted:
            rows: Any = await self.client.xpending_range(
                self.stream, self.group, min=start, max=ids[-1], count=page, consumername=self.consumer
            )
            for row in rows:
                entry_id = _text(row["message_id"])
                if entry_id in wanted:
                    out[entry_id] = int(row["times_delivered"])
                    wanted.discard(entry_id)
            if len(rows) < page:
                break
            start = "(" + _text(rows[-1]["message_id"])
        return out


@dataclass
class _Prepared:
    """A decoded batch, with its delta when it could be built ahead (for ``built_for``)."""

    pending: list[PendingEntry]
    dead: list[DeadEntry]
    built_for: tuple[str, ...] = ()
    delta: Delta | None = None
    keeper: asyncio.Task[None] | None = None
    gc_hold: weakref.finalize[[], object] | None = None
    entries_read: int = 0
    started: float = 0.0

    def builder(self, build: DeltaBuilder) -> DeltaBuilder:
        """``build``, except that the first call for exactly the entries the delta was built for
        returns that delta (the apply step's later attempts, for other entries, build anew)."""

        def build_prepared(entries: Sequence[PendingEntry]) -> Delta:
            delta, self.delta = self.delta, None
            if delta is not None and tuple(e.entry_id for e in entries) == self.built_for:
                return delta
            return build(entries)

        return build_prepared


def decode_batch(
    entries: Sequence[tuple[Any, Any]], s: AggregatorSettings, deliveries: Mapping[str, int]
) -> tuple[list[PendingEntry], list[DeadEntry]]:
    """Decode read entries; those that cannot be applied become dead entries, with their reason
    (``deliveries``: how often each was delivered, where known)."""
    pending: list[PendingEntry] = []
    dead: list[DeadEntry] = []
    for raw_id, fields in entries:
        entry_id = _text(raw_id)
        n = deliveries.get(entry_id, 0)
        if n > s.max_deliveries + s.max_isolated_attempts:
            detail = f"{n} deliveries; not applied in {n - 1 - s.max_deliveries} attempts alone"
            dead.append(DeadEntry(entry_id, "too_many_deliveries", detail, *_header(fields)))
            continue
        size = len(fields.get(F_DATA.encode(), b""))
        if size > s.max_entry_bytes:  # decode_entry bounds only decompressed data
            limit = s.max_entry_bytes
            detail = f"{size} bytes of events; the limit is {limit}"
            dead.append(DeadEntry(entry_id, "too_large", detail, *_header(fields)))
            continue
        try:
            entry = decode_entry(fields, s.max_entry_bytes)
        except WireError as exc:
            dead.append(DeadEntry(entry_id, exc.reason, exc.detail, *_header(fields)))
            continue
        if entry.seq > MAX_SEQ:  # the apply and gap scripts compute with Lua's doubles
            dead.append(DeadEntry(entry_id, "bad_header", f"sequence {entry.seq} is above {MAX_SEQ}"))
            continue
        pending.append(PendingEntry(entry_id, entry.producer_id, entry.seq, entry.events))
    return pending, dead


def _first_copies(entries: Sequence[PendingEntry]) -> list[PendingEntry]:
    """The entries the apply step builds the delta from: a ``(producer, seq)`` read twice in one
    batch counts once (its first copy)."""
    seen: set[tuple[str, int]] = set()
    first: list[PendingEntry] = []
    for e in entries:
        token = (e.producer_id, e.seq)
        if token not in seen:
            seen.add(token)
            first.append(e)
    return first


def _failing_event(build_delta: DeltaBuilder, entry: PendingEntry) -> str:
    """Which event of ``entry`` makes the engine raise, for the log and the dead letter."""
    for index, event in enumerate(entry.events):
        try:
            build_delta([dataclasses.replace(entry, events=[event])])
        except Exception:
            kind = event.get("kind") if isinstance(event, dict) else type(event).__name__
            return f", event {index} (kind {str(kind)[:64]!r})"
    return ""


class _EngineError(Exception):
    """Building the delta of a batch raised (an event the engine does not handle)."""


def _guarded(build: DeltaBuilder) -> DeltaBuilder:
    def build_guarded(entries: Sequence[PendingEntry]) -> Delta:
        try:
            return build(entries)
        except Exception as exc:
            raise _EngineError(f"{type(exc).__name__}: {exc}") from exc

    return build_guarded


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _header(fields: Any) -> tuple[str | None, int | None]:
    """The producer id and sequence number of an entry, when its header can be read at all (so a
    dead-lettered entry still counts as processed, not lost)."""
    try:
        producer = fields[F_PRODUCER.encode()].decode()
        seq = int(fields[F_SEQ.encode()])
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, AttributeError):
        return None, None
    return (producer, seq) if 1 <= seq <= MAX_SEQ and PRODUCER_ID.fullmatch(producer) else (None, None)


# Redis error replies that describe the server's condition, not this process's: waiting (not
# restarting the aggregator) is what helps. redis-py turns some into their own classes.
_UNAVAILABLE = (
    ConnectionError,
    TimeoutError,
    OSError,
    redis_exceptions.ConnectionError,  # includes BusyLoadingError (LOADING)
    redis_exceptions.TimeoutError,
    redis_exceptions.OutOfMemoryError,
    redis_exceptions.ReadOnlyError,
    redis_exceptions.TryAgainError,
    redis_exceptions.ClusterDownError,
    redis_exceptions.MasterDownError,
)
_UNAVAILABLE_REPLIES = ("BUSY", "MISCONF", "LOADING", "OOM", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")


def redis_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says Redis cannot serve now (unreachable, too slow, loading, busy with a
    script, out of memory, read-only...), as opposed to a failure a restart of this process may fix."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    return isinstance(exc, ResponseError) and str(exc).split(" ", 1)[0].upper() in _UNAVAILABLE_REPLIES


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
