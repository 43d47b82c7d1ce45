"""The state of one owned shard, in memory: what ``apply.lua`` keeps in Redis, kept by the one
process that owns the shard and written back as absolute values at each checkpoint.

With one owner per shard (aggregator/ownership.py) nothing else changes a shard's metric state,
so the owner can hold it, apply batches to it in Python, and commit only the fields a checkpoint
interval changed, as plain multi-field writes (``HSET`` of absolute values instead of one
``HINCRBYFLOAT`` per field in a script). The rules are ``apply.lua``'s, field for field, so the
state in Redis reads the same whichever path wrote it (tests/test_shard_memory.py applies the
same batches both ways and compares):

- counters add; histograms add their bucket counts, sum and count;
- a gauge write or removal wins only if its event time is not older than the series' last one;
  removing a series leaves its removal time (with several shards even where nothing was
  removed, so readers let it hide older values elsewhere);
- a limited series (series_limits.py) is admitted while its index holds fewer than the cap;
  past it, counter and histogram updates go to the overflow series and gauge updates are dropped,
  both counted in the shard's stats;
- per producer, the high-water mark and the sequence numbers seen above it (hwm.lua's rule):
  an entry at or below the mark, or seen already, is a duplicate; one more than ``max_seq_jump``
  above the mark is suspect (unless the shard's state was reset and the producer has no mark in
  it yet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from aggregator.apply import DUPLICATE, NEW, SUSPECT, DeadEntry, PendingEntry
from aggregator.series_limits import MetricLimits
from aggregator.state import HISTOGRAM_COUNT_SUFFIX, SEP, Delta, format_number
from producer.keys import Keys


@dataclass
class Changes:
    """What one checkpoint writes: absolute field values, removed fields, sorted-set members
    added and removed, and increments (stats: applied exactly once because the checkpoint that
    carries them is)."""

    hset: dict[str, dict[str, str]] = field(default_factory=dict)
    hdel: dict[str, list[str]] = field(default_factory=dict)
    zadd: dict[str, dict[str, float]] = field(default_factory=dict)
    zrem: dict[str, list[str]] = field(default_factory=dict)
    hincrby: dict[str, dict[str, int]] = field(default_factory=dict)

    def fields(self) -> int:
        """Fields and members written: what bounds a checkpoint's size."""
        return (
            sum(map(len, self.hset.values()))
            + sum(map(len, self.hdel.values()))
            + sum(map(len, self.zadd.values()))
            + sum(map(len, self.zrem.values()))
            + sum(map(len, self.hincrby.values()))
        )


@dataclass(frozen=True)
class BatchResult:
    applied_entries: int
    duplicate_entries: int
    applied_events: int
    #: Entries to dead-letter (the batch's dead entries, and those with a suspect sequence).
    dead: tuple[DeadEntry, ...]


class _Hash:
    """One Redis hash in memory, with the fields changed since the last checkpoint."""

    __slots__ = ("deleted", "dirty", "values")

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()

    def set(self, name: str, value: float) -> None:
        self.values[name] = value
        self.dirty.add(name)
        self.deleted.discard(name)

    def add(self, name: str, amount: float) -> None:
        self.set(name, self.values.get(name, 0.0) + amount)

    def delete(self, name: str) -> bool:
        if self.values.pop(name, None) is None:
            return False
        self.dirty.discard(name)
        self.deleted.add(name)
        return True


class _Producer:
    """A producer's sequence bookkeeping on this shard."""

    __slots__ = ("added", "mark", "mark_dirty", "removed", "seen")

    def __init__(self, mark: int = 0, seen: Mapping[int, str] | None = None) -> None:
        self.mark = mark
        self.seen: dict[int, str] = dict(seen or {})  # seq -> member "<seq> <entry id>"
        self.mark_dirty = False
        self.added: set[str] = set()
        self.removed: set[str] = set()


class ShardMemory:
    """A shard's metric state and sequence bookkeeping, changed in memory, written back by
    :meth:`changes`. ``text_kinds``: the kind of each metric hash (c, h, g, gt, ix, ixe)."""

    def __init__(
        self,
        keys: Keys,
        shard: int,
        limits: Mapping[str, MetricLimits] | None = None,
        max_seq_jump: int = 100_000,
        after_reset: bool = False,
    ) -> None:
        self.keys = keys
        self.shard = shard
        self.limits = dict(limits or {})
        self.max_seq_jump = max_seq_jump
        #: The shard's state was reset (Redis restarted empty): a producer without a mark may go
        #: on at any sequence number.
        self.after_reset = after_reset
        self.record_every_removal = keys.shards > 1
        self.hashes: dict[str, _Hash] = {}
        self.producers: dict[str, _Producer] = {}
        self.stats: dict[str, int] = {}
        self.applied_by_producer: dict[str, int] = {}
        self.lost_by_producer: dict[str, int] = {}
        #: Producers with sequence numbers recorded above their mark (a gap below them).
        self._gapped: set[str] = set()
        # Exemplars written since the last checkpoint (x hash -> series -> text) and removed
        # (a retired series'). Never loaded: they are only ever overwritten or deleted.
        self.exemplars: dict[str, dict[str, str]] = {}
        self.exemplars_gone: dict[str, set[str]] = {}

    # -- loading ---------------------------------------------------------------------------------

    async def load(self, client: aioredis.Redis, hash_keys: Iterable[str], page: int = 10_000) -> int:
        """Load the committed state: the given metric hashes (HSCAN, ``page`` fields a step, so
        no call holds Redis long) and every producer's mark and seen set. Returns fields read."""
        read = 0
        for key in hash_keys:
            cursor: Any = 0
            while True:
                reply: Any = await client.hscan(key, cursor, count=page)
                cursor, values = reply
                self.load_hash(key, values)
                read += len(values)
                if int(cursor) == 0:
                    break
        marks = await client.hgetall(self.keys.high_water_marks(self.shard))
        for raw_pid, raw_mark in marks.items():
            pid = _text(raw_pid)
            seen: Any = await client.zrange(self.keys.seen_above_mark(self.shard, pid), 0, -1, withscores=True)
            self.load_producer(pid, int(raw_mark), seen)
            read += 1 + len(seen)
        return read

    def load_hash(self, key: str, values: Mapping[Any, Any]) -> None:
        """A metric hash as Redis holds it (bytes or text, as HGETALL/HSCAN return)."""
        h = self._hash(key)
        for name, value in values.items():
            h.values[_text(name)] = float(value)

    def load_producer(self, producer_id: str, mark: int, seen: Iterable[tuple[Any, float]] = ()) -> None:
        """A producer's mark and its seen set (ZRANGE ... WITHSCORES pairs)."""
        p = self.producers[producer_id] = _Producer(mark, {int(score): _text(member) for member, score in seen})
        if p.seen:
            self._gapped.add(producer_id)

    # -- a batch ---------------------------------------------------------------------------------

    def apply_batch(
        self,
        entries: Sequence[PendingEntry],
        dead: Sequence[DeadEntry],
        build_delta: Callable[[Sequence[PendingEntry]], Delta],
        now: float,
    ) -> BatchResult:
        """Apply decoded entries (and count the undecodable ones): duplicates are skipped,
        suspect sequence numbers dead-lettered, the new entries' events applied. Entries are
        classified against the state before the batch, as the apply script does; nothing changes
        until ``build_delta`` has returned, so an engine error leaves the state as it was."""
        new: list[PendingEntry] = []
        dead_out: list[DeadEntry] = []
        duplicates = 0
        in_batch: set[tuple[str, int]] = set()
        for e in entries:
            state = self.classify(e.producer_id, e.seq)
            if state == DUPLICATE or (e.producer_id, e.seq) in in_batch:
                duplicates += 1
            elif state == SUSPECT:
                mark = self.producers[e.producer_id].mark if e.producer_id in self.producers else 0
                detail = (
                    f"sequence {e.seq} of producer {e.producer_id} is more than LSM_MAX_SEQ_JUMP "
                    f"({self.max_seq_jump}) above its mark {mark}"
                )
                dead_out.append(DeadEntry(e.entry_id, "suspect_sequence", detail))
            else:
                in_batch.add((e.producer_id, e.seq))
                new.append(e)
        delta = build_delta(new) if new else Delta()
        for e in new:
            self.record(e.producer_id, e.seq, e.entry_id)
        for d in dead:
            # Processed, not lost, when its header was readable (unless its seq is suspect).
            if d.producer_id and d.seq and self.classify(d.producer_id, d.seq) != SUSPECT:
                self.record(d.producer_id, d.seq, d.entry_id)
            dead_out.append(d)
        for d in dead_out:
            self.count(f"dead_{d.reason}")
        events = 0
        for e in new:
            n = len(e.events) - delta.rejected.get(e.entry_id, 0)
            self.applied(e.producer_id, n)
            events += n
        if new:
            self.count("entries_applied", len(new))
            self.count("events_applied", events)
        if duplicates:
            self.count("duplicate_entries", duplicates)
        self.apply(delta, now)
        return BatchResult(len(new), duplicates, events, tuple(dead_out))

    # -- sequence bookkeeping ----------------------------------------------------------------------

    def classify(self, producer_id: str, seq: int) -> str:
        """NEW, DUPLICATE or SUSPECT, as apply.lua decides it (nothing recorded)."""
        p = self.producers.get(producer_id)
        mark = p.mark if p else 0
        if seq <= mark or (p is not None and seq in p.seen):
            return DUPLICATE
        if seq > mark + self.max_seq_jump and not (mark == 0 and self.after_reset):
            return SUSPECT
        return NEW

    def record(self, producer_id: str, seq: int, entry_id: str) -> bool:
        """Record ``(producer, seq)`` as processed and move the mark over what follows it without
        a gap. False when it was recorded already."""
        p = self.producers.get(producer_id)
        if p is None:
            p = self.producers[producer_id] = _Producer()
        if seq <= p.mark or seq in p.seen:
            return False
        member = f"{seq} {entry_id}"
        p.seen[seq] = member
        p.added.add(member)
        _advance(p)
        if p.seen:
            self._gapped.add(producer_id)
        return True

    def count(self, stat: str, n: int = 1) -> None:
        self.stats[stat] = self.stats.get(stat, 0) + n

    def applied(self, producer_id: str, events: int) -> None:
        self.applied_by_producer[producer_id] = self.applied_by_producer.get(producer_id, 0) + events

    # -- metrics -----------------------------------------------------------------------------------

    def apply(self, delta: Delta, now: float) -> None:
        """Apply a batch's metric updates (and its stats), as apply.lua's second phase does."""
        metric = self.keys.metric
        s = self.shard
        limits = self.limits
        for (mkey, series), amount in delta.counters.items():
            ml = limits.get(mkey)
            if ml is not None and ml.limit_for(series) is not None:
                series = self._admitted_or_overflow(ml, series, now)
            self._hash(metric(s, "c", mkey)).add(series, amount)
        for (mkey, series), hist in delta.histograms.items():
            ml = limits.get(mkey)
            if ml is not None and ml.limit_for(series) is not None:
                series = self._admitted_or_overflow(ml, series, now)
            h = self._hash(metric(s, "h", mkey))
            for bucket, n in enumerate(hist.buckets):
                if n:
                    h.add(f"{series}{SEP}b{bucket}", n)
            h.add(f"{series}{SEP}s", hist.total)
            h.add(f"{series}{SEP}c", hist.count)
        for (mkey, series), (t, value) in delta.gauges.items():
            values, times = self._hash(metric(s, "g", mkey)), self._hash(metric(s, "gt", mkey))
            ml = limits.get(mkey)
            limit = ml.limit_for(series) if ml is not None else None
            if ml is None or limit is None:
                self._set_gauge(values, times, series, t, value)
            elif value is None:
                self._set_gauge(values, times, series, t, value)
                self._hash(metric(s, limit.index_kind, mkey)).delete(series)
            elif self._admit(ml, series, now):
                self._set_gauge(values, times, series, t, value)
            else:
                self.count(f"series_dropped:{ml.name}")
        for (kind, mkey, series), (t, trace, value) in delta.exemplars.items():
            # apply.lua's rule: only for a series that exists (not one the cap overflowed).
            name = series if kind == "c" else series + HISTOGRAM_COUNT_SUFFIX
            if name in self._hash(metric(s, kind, mkey)).values:
                xkey = metric(s, "x", mkey)
                self.exemplars.setdefault(xkey, {})[series] = orjson.dumps([trace, value, t]).decode()
                self.exemplars_gone.get(xkey, set()).discard(series)
        for stat, n in delta.stats.items():
            self.count(stat, n)

    def _admitted_or_overflow(self, ml: MetricLimits, series: str, now: float) -> str:
        if self._admit(ml, series, now):
            return series
        self.count(f"series_overflow:{ml.name}")
        return ml.overflow

    def _admit(self, ml: MetricLimits, series: str, now: float) -> bool:
        limit = ml.limit_for(series)
        assert limit is not None
        index = self._hash(self.keys.metric(self.shard, limit.index_kind, ml.mkey))
        if series not in index.values and limit.cap > 0 and len(index.values) >= limit.cap:
            return False
        index.set(series, now)
        return True

    def _set_gauge(self, values: _Hash, times: _Hash, series: str, t: float, value: float | None) -> None:
        current = times.values.get(series)
        if current is not None and t < current:
            return
        if value is not None:
            values.set(series, value)
            times.set(series, t)
        elif values.delete(series) or self.record_every_removal:
            times.set(series, t)

    def _hash(self, key: str) -> _Hash:
        h = self.hashes.get(key)
        if h is None:
            h = self.hashes[key] = _Hash()
        return h

    # -- housekeeping (what housekeeping.py's scripts do to a shard that is not owned) -----------

    def declare_lost(self) -> int:
        """gaps.lua for an owner: the owner has read every entry before the ones it applied, so
        the sequence numbers between a producer's mark and its lowest one applied above it can no
        longer arrive (the producer writes them in order): they are lost. Counted in
        ``lost_entries`` (per producer too), or, for a producer with no mark in a state that was
        reset, in ``entries_before_reset``; the mark moves over them. Returns the lost count."""
        lost_total = 0
        for pid in sorted(self._gapped):
            p = self.producers[pid]
            self._gapped.discard(pid)
            if not p.seen:
                continue
            lowest = min(p.seen)
            lost = lowest - p.mark - 1
            from_start = p.mark == 0
            p.mark = lowest - 1
            _advance(p)
            if from_start and self.after_reset:
                self.count("entries_before_reset", lost)
                continue
            self.count("lost_entries", lost)
            self.lost_by_producer[pid] = self.lost_by_producer.get(pid, 0) + lost
            lost_total += lost
        return lost_total

    def retire_idle(self, now: float, at_most: int | None = None) -> int:
        """retire.lua for an owner: series of limited metrics idle longer than their TTL leave
        the index; a counter's or histogram's values move to the overflow series (the metric's
        total never goes down), a gauge is removed (its removal time kept). Returns how many
        (``at_most``: stop there; the rest at the next round)."""
        retired = 0
        for ml in self.limits.values():
            for limit in (ml.general, ml.end_user):
                if limit is None or limit.ttl is None:
                    continue
                index = self.hashes.get(self.keys.metric(self.shard, limit.index_kind, ml.mkey))
                if index is None:
                    continue
                cutoff = now - limit.ttl
                idle = [series for series, t in index.values.items() if t < cutoff]
                if at_most is not None:
                    idle = idle[: max(0, at_most - retired)]
                for series in idle:
                    self._retire(ml, series, now)
                    index.delete(series)
                retired += len(idle)
        return retired

    def _retire(self, ml: MetricLimits, series: str, now: float) -> None:
        metric = self.keys.metric
        if ml.kind == "gauge":
            values, times = self._hash(metric(self.shard, "g", ml.mkey)), self._hash(metric(self.shard, "gt", ml.mkey))
            if values.delete(series):
                times.set(series, now)
            return
        values = self._hash(metric(self.shard, "c" if ml.kind == "counter" else "h", ml.mkey))
        names = [(series, ml.overflow)] if ml.kind == "counter" else [
            (f"{series}{SEP}{part}", f"{ml.overflow}{SEP}{part}") for part in ml.histogram_parts
        ]  # fmt: skip
        for name, overflow in names:
            value = values.values.get(name)
            if value is not None:
                values.delete(name)
                values.add(overflow, value)
        xkey = metric(self.shard, "x", ml.mkey)
        self.exemplars.get(xkey, {}).pop(series, None)
        self.exemplars_gone.setdefault(xkey, set()).add(series)

    def forget_removals(self, gauge_mkeys: Iterable[str], cutoff: float, at_most: int | None = None) -> int:
        """forget_removals.lua for an owner: a gauge's removal records (a time without a value)
        older than ``cutoff`` are dropped. Returns how many (``at_most``: stop there)."""
        forgotten = 0
        for mkey in gauge_mkeys:
            values = self.hashes.get(self.keys.metric(self.shard, "g", mkey))
            times = self.hashes.get(self.keys.metric(self.shard, "gt", mkey))
            if times is None:
                continue
            old = [f for f, t in times.values.items() if t < cutoff and (values is None or f not in values.values)]
            if at_most is not None:
                old = old[: max(0, at_most - forgotten)]
            for f in old:
                times.delete(f)
            forgotten += len(old)
        return forgotten

    # -- writing back ------------------------------------------------------------------------------

    def dirty_fields(self) -> int:
        """About how many fields the next :meth:`changes` writes (what bounds a checkpoint)."""
        fields = sum(len(h.dirty) + len(h.deleted) for h in self.hashes.values())
        fields += sum(map(len, self.exemplars.values())) + sum(map(len, self.exemplars_gone.values()))
        fields += sum(len(p.added) + len(p.removed) + 1 for p in self.producers.values() if p.mark_dirty)
        return fields + len(self.stats) + len(self.applied_by_producer) + len(self.lost_by_producer)

    def changes(self) -> Changes:
        """Everything changed since the last call, as absolute values; forgets it was changed."""
        out = Changes()
        for key, h in self.hashes.items():
            if h.dirty:
                out.hset[key] = {name: _format(key, name, h.values[name]) for name in h.dirty}
                h.dirty = set()
            if h.deleted:
                out.hdel[key] = sorted(h.deleted)
                h.deleted = set()
        for key, texts in self.exemplars.items():
            if texts:
                out.hset.setdefault(key, {}).update(texts)
        for key, gone in self.exemplars_gone.items():
            if gone:
                out.hdel[key] = sorted(gone)
        self.exemplars, self.exemplars_gone = {}, {}
        hwm = self.keys.high_water_marks(self.shard)
        for pid, p in self.producers.items():
            if p.mark_dirty:
                out.hset.setdefault(hwm, {})[pid] = str(p.mark)
                p.mark_dirty = False
            zkey = self.keys.seen_above_mark(self.shard, pid)
            if p.added:
                out.zadd[zkey] = {m: float(m.split(" ", 1)[0]) for m in p.added}
                p.added = set()
            if p.removed:
                out.zrem[zkey] = sorted(p.removed)
                p.removed = set()
        if self.stats:
            out.hincrby[self.keys.shard_stats(self.shard)] = self.stats
            self.stats = {}
        if self.applied_by_producer:
            out.hincrby[self.keys.applied_by_producer(self.shard)] = self.applied_by_producer
            self.applied_by_producer = {}
        if self.lost_by_producer:
            out.hincrby[self.keys.lost_by_producer(self.shard)] = self.lost_by_producer
            self.lost_by_producer = {}
        return out


def _advance(p: _Producer) -> None:
    """Move the mark over the recorded sequence numbers that follow it without a gap (hwm.lua's
    advance_mark)."""
    while p.mark + 1 in p.seen:
        p.mark += 1
        gone = p.seen.pop(p.mark)
        if gone in p.added:
            p.added.discard(gone)
        else:
            p.removed.add(gone)
    p.mark_dirty = True


def _format(key: str, name: str, value: float) -> str:
    """A value as the apply script leaves it: bucket counts and counts as integers, gauge and
    index times as the float they are, everything else exact (format_number)."""
    if SEP in name and not name.endswith(f"{SEP}s"):
        return str(int(value))
    return format_number(value)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
