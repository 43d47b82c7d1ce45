"""The single-owner ingest: each shard applied by the one process that holds its lease, its state
in memory, committed with the stream position in fenced checkpoints.

- :class:`ShardOwner` runs one owned shard: on taking it over it loads the last checkpoint and
  the state it covers (aggregator/checkpoint.py, aggregator/shard_memory.py), reads the stream
  from the checkpoint's position on, applies every batch in memory, and commits a checkpoint
  every ``checkpoint_interval`` seconds, or sooner when the changes approach the bound of one
  checkpoint. Any failure to commit (fenced, or Redis unreachable) drops the state in memory: it
  takes the shard over again from what Redis holds, which is always correct because applying is
  deterministic. Handing the shard over ends with a last checkpoint.
- :class:`Owners` divides the shards among the live processes (aggregator/ownership.py) and
  runs a :class:`ShardOwner` for each shard this process holds.

A crash loses nothing: the successor reads again everything after the last checkpoint. Not yet
part of ``python -m aggregator run`` (which uses the consumer group, consumer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from aggregator import checkpoint as checkpoints
from aggregator.apply import DeadEntry, PendingEntry
from aggregator.checkpoint import Checkpoint, Fenced
from aggregator.consumer import ShardState, decode_batch
from aggregator.housekeeping import Housekeeper
from aggregator.lease import Lease
from aggregator.ownership import ShardOwnership
from aggregator.schema import MetricSchema
from aggregator.series_limits import MetricLimits
from aggregator.settings import AggregatorSettings
from aggregator.shard_memory import ShardMemory
from aggregator.state import Delta
from producer.keys import Keys
from producer.wire import F_COUNT

log = logging.getLogger("litellm_stream_metrics.aggregator")

DeltaBuilder = Callable[[Sequence[PendingEntry]], Delta]
#: Seconds between trims of an owned shard's stream below its checkpoint.
TRIM_INTERVAL = 10.0
#: Changed fields per event assumed before any is applied (a new caller identity touches ~40).
INITIAL_FIELDS_PER_EVENT = 40.0


class Overfull(RuntimeError):
    """A part of a read changed more fields than one checkpoint may hold: taken over again."""


@dataclass
class OwnerCounters:
    takeovers: int = 0
    entries_read: int = 0
    events_applied: int = 0
    checkpoints: int = 0
    checkpoint_seconds_max: float = 0.0
    checkpoint_fields_max: int = 0
    # Reads whose part changed more fields than a checkpoint may hold (taken over again).
    overfull: int = 0
    lost_entries: int = 0
    retired: int = 0
    removals_forgotten: int = 0
    refused: int = 0
    engine_errors: int = 0


class ShardOwner:
    """One owned shard, from takeover to handover."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: AggregatorSettings,
        shard: int,
        lease: Lease,
        build_delta: DeltaBuilder,
        hash_keys: Sequence[str],
        limits: Mapping[str, MetricLimits] | None = None,
        checkpoint_interval: float = 0.25,
        max_fields: int = checkpoints.MAX_FIELDS,
        gauge_mkeys: Sequence[str] = (),
        state: ShardState | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.gauge_mkeys = list(gauge_mkeys)
        self.state = state or ShardState(settings.keys, shard, settings.group)
        self.keys = settings.keys
        self.shard = shard
        self.lease = lease
        self.build_delta = build_delta
        self.hash_keys = list(hash_keys)
        self.limits = dict(limits or {})
        self.checkpoint_interval = checkpoint_interval
        # Checkpoint when the changes reach half the bound: one batch more cannot overflow it.
        self.max_fields = max_fields
        self.soon = max_fields // 2
        # Changed fields per applied event, the most seen: sizes the parts a read is applied in.
        self._fields_per_event = INITIAL_FIELDS_PER_EVENT
        self._first_part = True
        self.stream = self.keys.stream(shard)
        self.counters = OwnerCounters()
        self.memory = ShardMemory(self.keys, shard, self.limits, settings.max_seq_jump)
        self.checkpoint = Checkpoint()
        self.position = checkpoints.START
        self._dead: list[dict[str, Any]] = []
        self._changed = False
        self._next_trim = 0.0
        self._next_housekeeping = 0.0
        # What the owner leaves to housekeeping's scripts: producers that stopped (their stats
        # are increments, which the owner's checkpoints add to, not overwrite).
        self.housekeeper = Housekeeper(client, self.keys, shard, settings)

    async def run(self, stop: asyncio.Event) -> None:
        """Own the shard until ``stop`` is set or the lease is lost."""
        while not stop.is_set() and self.lease.held():
            try:
                await self._take_over()
                await self._loop(stop)
                if self.lease.held():
                    await self._commit()  # the handover's last checkpoint
                return
            except (Fenced, Overfull, RedisError, OSError) as exc:
                self.counters.refused += isinstance(exc, Fenced)
                log.warning("shard %d: %s; taking the shard over again from Redis", self.shard, exc)
                await _sleep_or_stop(stop, 0.2)

    async def _take_over(self) -> None:
        self.counters.takeovers += 1
        started = time.perf_counter()
        self.checkpoint = await checkpoints.load(self.client, self.keys, self.shard)
        self.position = self.checkpoint.position
        # The stream, the consumer group (which follows the checkpoints: each moves it to its
        # position, so lag, status and alerts read as with the group ingest) and the state record;
        # a reset of the shard's state since this process last looked is noticed and counted.
        await self.state.ensure(self.client)
        # After a reset (Redis restarted empty) a producer without a mark may go on at any
        # sequence number, and its lower ones count as written before the reset.
        after_reset = self.state.resets > 0
        self.memory = ShardMemory(self.keys, self.shard, self.limits, self.settings.max_seq_jump, after_reset)
        fields = await self.memory.load(self.client, self.hash_keys)
        self._dead = []
        self._changed = False
        log.info(
            "shard %d: taken over at checkpoint %d (position %s, %d fields loaded in %.2f s)",
            self.shard,
            self.checkpoint.number,
            self.position,
            fields,
            time.perf_counter() - started,
        )

    async def _loop(self, stop: asyncio.Event) -> None:
        last_commit = time.monotonic()
        block_ms = max(1, int(min(self.settings.block_seconds, self.checkpoint_interval) * 1000))
        while not stop.is_set() and self.lease.held():
            reply: Any = await self.client.xread(
                {self.stream: self.position}, count=self.settings.read_count, block=block_ms
            )
            entries = reply[0][1] if reply else []
            done = 0
            while done < len(entries):
                part = self._next_part(entries, done)
                done += len(part)
                if self._changed and self._pending_fields() + self._projected(part) > self.soon:
                    await self._commit()  # the part could push the checkpoint past its bound
                    last_commit = time.monotonic()
                before, events_before = self._pending_fields(), self.counters.events_applied
                # In a worker thread: the event loop stays free to renew the leases meanwhile
                # (a part may hold tens of thousands of events).
                await asyncio.to_thread(self._apply, part)
                events = self.counters.events_applied - events_before
                if events:
                    seen = max(1.0, (self._pending_fields() - before) / events)
                    # The highest seen, so that parts stay sized for the worst traffic met (a
                    # lower estimate after a takeover would repeat the same overfull part).
                    self._fields_per_event = seen if self._first_part else max(self._fields_per_event, seen)
                    self._first_part = False
                if self._pending_fields() > self.max_fields:
                    if len(part) > 1:
                        # The projection was wrong (new caller identities all at once): start
                        # again from the checkpoint, with parts sized by what was just seen.
                        self.counters.overfull += 1
                        raise Overfull(f"shard {self.shard}: {self._pending_fields()} changed fields")
                    await self._commit(oversize=True)  # one entry alone: it cannot be split
                    last_commit = time.monotonic()
            if time.monotonic() >= self._next_housekeeping:
                self._next_housekeeping = time.monotonic() + self.settings.housekeeping_interval
                await asyncio.to_thread(self._housekeep)
                await self.housekeeper.record_ended_producers()
            due = time.monotonic() - last_commit >= self.checkpoint_interval
            if self._changed and (due or self._pending_fields() >= self.soon):
                await self._commit()
                last_commit = time.monotonic()

    def _housekeep(self) -> None:
        """Retire idle series and forget old gauge removal records, in memory (committed with
        the next checkpoint), within what the checkpoint has room for."""
        now = time.time()
        room = max(0, self.soon - self._pending_fields())
        # A histogram series retired rewrites about 45 fields (its parts, twice, and the index).
        retired = self.memory.retire_idle(now, at_most=room // 64)
        room = max(0, self.soon - self._pending_fields())
        cutoff = now - self.settings.gauge_removal_memory_seconds
        forgotten = self.memory.forget_removals(self.gauge_mkeys, cutoff, at_most=room)
        if retired or forgotten:
            self.counters.retired += retired
            self.counters.removals_forgotten += forgotten
            self._changed = True

    def _pending_fields(self) -> int:
        return self.memory.dirty_fields() + len(self._dead)

    def _projected(self, part: Sequence[tuple[Any, Any]]) -> float:
        return self._fields_per_event * sum(_declared_count(fields) for _id, fields in part)

    def _next_part(self, entries: Sequence[tuple[Any, Any]], start: int) -> Sequence[tuple[Any, Any]]:
        """The entries from ``start`` whose changes (projected from the fields per event seen
        so far) fit in a quarter of a checkpoint, at least one: a backlog read at once never
        makes a checkpoint larger than its bound, as the owner commits between parts."""
        budget = self.soon / 2
        projected = 0.0
        end = start
        while end < len(entries):
            cost = self._fields_per_event * _declared_count(entries[end][1])
            if end > start and projected + cost > budget:
                break
            projected += cost
            end += 1
        return entries[start:end]

    def _apply(self, entries: Sequence[tuple[Any, Any]]) -> None:
        raw = {_text(i): f for i, f in entries}
        pending, dead = decode_batch(entries, self.settings, {})
        now = time.time()
        try:
            result = self.memory.apply_batch(pending, dead, self.build_delta, now)
        except Exception:
            good, bad = self._isolate(pending)
            result = self.memory.apply_batch(good, [*dead, *bad], self.build_delta, now)
        lost = self.memory.declare_lost()
        if lost:
            self.counters.lost_entries += lost
            log.warning("shard %d: %d entries were removed from the stream before being applied", self.shard, lost)
        for d in result.dead:
            self._dead.append(_dead_letter(d, raw.get(d.entry_id, {}), self.settings.consumer_name, now))
        self.position = _text(entries[-1][0])
        self.counters.entries_read += len(entries)
        self.counters.events_applied += result.applied_events
        self._changed = True

    def _isolate(self, pending: Sequence[PendingEntry]) -> tuple[list[PendingEntry], list[DeadEntry]]:
        """The entries the engine builds without raising, and the others as ``engine_error``."""
        good: list[PendingEntry] = []
        bad: list[DeadEntry] = []
        for e in pending:
            try:
                self.build_delta([e])
            except Exception as exc:
                self.counters.engine_errors += 1
                log.exception("shard %d: engine error (a bug) at entry %s; dead-lettered", self.shard, e.entry_id)
                bad.append(DeadEntry(e.entry_id, "engine_error", f"{type(exc).__name__}: {exc}", e.producer_id, e.seq))
            else:
                good.append(e)
        return good, bad

    async def _commit(self, oversize: bool = False) -> None:
        if not self._changed:
            return
        token, epoch = self.lease.token, self.lease.epoch
        if token is None or epoch is None or not self.lease.held():
            raise Fenced(f"shard {self.shard}: the lease ran out before the checkpoint")
        started = time.perf_counter()
        changes = self.memory.changes()
        bound, size = self.max_fields, changes.fields() + len(self._dead)
        if oversize:
            bound = size
            log.warning("shard %d: one entry changed %d fields: a checkpoint above its bound", self.shard, bound)
        self.checkpoint = await checkpoints.commit(
            self.client,
            self.keys,
            self.shard,
            token,
            epoch,
            self.checkpoint,
            self.position,
            changes,
            self._dead,
            group=checkpoints.GroupPosition(self.settings.group),
            max_fields=bound,
        )
        self._dead = []
        self._changed = False
        elapsed = time.perf_counter() - started
        self.counters.checkpoints += 1
        self.counters.checkpoint_seconds_max = max(self.counters.checkpoint_seconds_max, elapsed)
        self.counters.checkpoint_fields_max = max(self.counters.checkpoint_fields_max, size)
        if time.monotonic() >= self._next_trim:
            # What a checkpoint covers is never read again: trim below it (approximately, so
            # Redis drops whole nodes of the stream only).
            self._next_trim = time.monotonic() + TRIM_INTERVAL
            await self.client.xtrim(self.stream, minid=self.position, approximate=True)


def state_keys(schema: MetricSchema, keys: Keys, shard: int, limits: Mapping[str, MetricLimits]) -> list[str]:
    """Every metric hash of a shard that an owner loads: values (and gauge times), and the
    index of each limited metric."""
    kinds = {"counter": ("c",), "histogram": ("h",), "gauge": ("g", "gt")}
    out = []
    for metric in schema.config.metrics():
        mkey = schema.metric_key(metric.name)
        if mkey is None:
            continue
        out += [keys.metric(shard, kind, mkey) for kind in kinds[metric.kind]]
        ml = limits.get(mkey)
        for limit in (ml.general, ml.end_user) if ml is not None else ():
            if limit is not None:
                out.append(keys.metric(shard, limit.index_kind, mkey))
    return out


class Owners:
    """The shards this process owns, each run by a :class:`ShardOwner`."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: AggregatorSettings,
        build_delta: DeltaBuilder,
        hash_keys: Callable[[int], Sequence[str]],
        limits: Mapping[str, MetricLimits] | None = None,
        lease_seconds: float = 10.0,
        checkpoint_interval: float = 0.25,
        max_fields: int = checkpoints.MAX_FIELDS,
        gauge_mkeys: Sequence[str] = (),
        schemas: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.client = client
        self.max_fields = max_fields
        self.gauge_mkeys = list(gauge_mkeys)
        # Per shard, the state record as this process knows it, kept across its ownerships.
        self.states = {s: ShardState(settings.keys, s, settings.group, schemas) for s in range(settings.shards)}
        self.settings = settings
        self.build_delta = build_delta
        self.hash_keys = hash_keys
        self.limits = limits
        self.checkpoint_interval = checkpoint_interval
        self.owners: dict[int, ShardOwner] = {}
        self._tasks: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self.ownership = ShardOwnership(
            client, settings.keys, settings.consumer_name, lease_seconds, self._acquired, self._released
        )

    async def run(self, stop: asyncio.Event) -> None:
        # Learn every shard's state record first, owned or not: whichever process later takes a
        # shard over then notices (and counts, once) a reset of its state since this start.
        for state in self.states.values():
            try:
                await state.ensure(self.client)
            except (RedisError, OSError) as exc:
                log.warning("shard %d: cannot read the shard's state record yet: %s", state.shard, exc)
        await self.ownership.run(stop)

    async def _acquired(self, shard: int, lease: Lease) -> None:
        owner = ShardOwner(
            self.client,
            self.settings,
            shard,
            lease,
            self.build_delta,
            self.hash_keys(shard),
            self.limits,
            self.checkpoint_interval,
            self.max_fields,
            self.gauge_mkeys,
            self.states[shard],
        )
        done = asyncio.Event()
        self.owners[shard] = owner
        self._tasks[shard] = (asyncio.create_task(owner.run(done), name=f"owner {shard}"), done)

    async def _released(self, shard: int, lost: bool) -> None:
        task, done = self._tasks.pop(shard)
        done.set()  # a handover: the owner commits a last checkpoint, then returns
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.owners.pop(shard, None)


def _dead_letter(d: DeadEntry, original: Mapping[Any, Any], owner: str, now: float) -> dict[str, Any]:
    """A dead letter's fields, as apply.lua writes them: why, then the entry's own fields."""
    fields: dict[str, Any] = {
        "dead_entry_id": d.entry_id,
        "dead_reason": d.reason,
        "dead_detail": d.detail[:500],
        "dead_consumer": owner,
        "dead_at": repr(now),
    }
    for name, value in original.items():
        fields["orig_" + _text(name)] = value
    return fields


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _declared_count(fields: Mapping[Any, Any]) -> int:
    """The events an entry says it holds (at least 1; a forged or missing count counts 1)."""
    raw = fields.get(F_COUNT.encode(), fields.get(F_COUNT))
    try:
        return max(1, int(raw))
    except (TypeError, ValueError):
        return 1


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
