"""Apply a batch of entries exactly once with one server-side script (``apply.lua``).

The caller decodes entries and builds the batch's pre-aggregated :class:`Delta` from the
events of the entries it believes are new. The script re-checks, atomically, that every entry
is still pending for this consumer (not acknowledged, not claimed away by another consumer)
and which entries are duplicates of an already-applied ``(producer, seq)``. If reality differs
from the caller's belief, nothing is written and the caller rebuilds the delta and tries again.
Otherwise metric updates, sequence bookkeeping, dead-lettering and XACK happen in one step, so
a crash at any instruction leaves the batch either wholly applied or not at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from aggregator.scripts import script
from aggregator.series_limits import MetricLimits
from aggregator.settings import DEFAULT_MAX_SEQ_JUMP
from aggregator.state import HISTOGRAM_COUNT_SUFFIX, Delta, format_number
from producer.keys import Keys

_SCRIPT = script("apply.lua")
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class PendingEntry:
    """A decoded entry waiting to be applied."""

    entry_id: str
    producer_id: str
    seq: int
    events: list[dict[str, Any]]


@dataclass(frozen=True)
class DeadEntry:
    """An entry to dead-letter; ``producer_id``/``seq`` when its header could be read, so that it
    counts as processed rather than lost."""

    entry_id: str
    reason: str
    detail: str
    producer_id: str | None = None
    seq: int | None = None


@dataclass(frozen=True)
class ApplyResult:
    applied_entries: int
    duplicate_entries: int
    applied_events: int
    dead_entries: int
    not_owned: tuple[str, ...]
    attempts: int


# The states of an entry in apply.lua: new (applied), a duplicate (acknowledged only), or with a
# suspect sequence number (dead-lettered).
NEW, DUPLICATE, SUSPECT = "0", "1", "2"


class BatchApplyError(RuntimeError):
    """The batch could not be applied after repeated conflicts."""


class ShardApplier:
    """Applies batches of one shard's stream for one consumer of the group."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        shard: int,
        group: str,
        consumer: str,
        limits: Mapping[str, MetricLimits] | None = None,
        max_seq_jump: int = DEFAULT_MAX_SEQ_JUMP,
    ) -> None:
        self.client = client
        self.keys = keys
        self.shard = shard
        self.group = group
        self.consumer = consumer
        self._script = client.register_script(_SCRIPT)
        #: metric key -> series caps / TTL (see series_limits.py); empty: no limits.
        self.limits: dict[str, MetricLimits] = dict(limits or {})
        #: How far above its producer's high-water mark an entry's seq may be (else suspect).
        self.max_seq_jump = max_seq_jump
        # (kind, metric key) -> the Redis key of that hash in this shard (formatted once).
        self._metric_keys: dict[tuple[str, str], str] = {}

    async def apply(
        self,
        entries: Sequence[PendingEntry],
        dead: Sequence[DeadEntry],
        build_delta: Callable[[Sequence[PendingEntry]], Delta],
        now: float,
    ) -> ApplyResult:
        """Apply ``entries`` (events via ``build_delta``) and dead-letter ``dead``, exactly once."""
        entries = list(entries)
        dead = list(dead)
        # Assumed state per entry id (absent: new); apply.lua checks it and says where it differs.
        state: dict[str, str] = dict.fromkeys(_in_batch_duplicates(entries), DUPLICATE)
        dropped: list[str] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            # In a worker thread: the event loop stays free to keep the batch's entries claimed.
            delta = await asyncio.to_thread(build_delta, [e for e in entries if e.entry_id not in state])
            keys, args = self._encode(entries, state, dead, delta, now)
            reply = await self._script(keys=keys, args=args)
            status = _text(reply[0])
            if status == "ok":
                return ApplyResult(int(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]), tuple(dropped), attempt)
            not_owned = {_text(x) for x in reply[1]}
            dropped.extend(sorted(not_owned))
            entries = [e for e in entries if e.entry_id not in not_owned]
            dead = [d for d in dead if d.entry_id not in not_owned]
            for entry_id, actual in zip(reply[2], reply[3], strict=True):
                if _text(actual) == NEW:
                    state.pop(_text(entry_id), None)
                else:
                    state[_text(entry_id)] = _text(actual)
            if not entries and not dead:
                return ApplyResult(0, 0, 0, 0, tuple(dropped), attempt)
        raise BatchApplyError(f"batch still conflicting after {MAX_ATTEMPTS} attempts")

    def _encode(
        self,
        entries: Sequence[PendingEntry],
        state: Mapping[str, str],
        dead: Sequence[DeadEntry],
        delta: Delta,
        now: float,
    ) -> tuple[list[str], list[str | int | float]]:
        k = self.keys
        s = self.shard
        producers: list[str] = []
        pindex: dict[str, int] = {}
        for pid in [e.producer_id for e in entries] + [d.producer_id for d in dead if d.producer_id and d.seq]:
            if pid not in pindex:
                producers.append(pid)
                pindex[pid] = len(producers)
        keys = [k.stream(s), k.dead_letters(s), k.shard_stats(s), k.applied_by_producer(s), k.high_water_marks(s)]
        keys += [k.seen_above_mark(s, p) for p in producers]
        mkeys: dict[tuple[str, str], int] = {}
        names = self._metric_keys

        def key_index(kind: str, mkey: str) -> int:
            idx = mkeys.get((kind, mkey))
            if idx is None:
                idx = mkeys[(kind, mkey)] = len(mkeys) + 1
            return idx

        args: list[str | int | float] = [self.group, self.consumer, repr(now), self.max_seq_jump]
        args += [len(producers), *producers]
        args.append(len(entries))
        rejected = delta.rejected
        for e in entries:
            # The events applied: those of the entry less those the engine rejected.
            n = len(e.events) - rejected.get(e.entry_id, 0) if rejected else len(e.events)
            args += [e.entry_id, pindex[e.producer_id], e.seq, n, state.get(e.entry_id, NEW)]
        args.append(len(dead))
        for d in dead:
            known = bool(d.producer_id and d.seq)
            pidx = pindex[d.producer_id] if known and d.producer_id else 0
            args += [d.entry_id, d.reason, d.detail[:500], pidx, d.seq if known and d.seq else 0]
        limits = self.limits
        policies: list[list[str | int]] = []
        policy_index: dict[tuple[str, str], int] = {}

        def limited(mkey: str, series: str) -> int:
            """The policy number of a limited series (1-based), or 0."""
            ml = limits.get(mkey)
            if ml is None:
                return 0
            limit = ml.limit_for(series)
            if limit is None:
                return 0
            pk = (mkey, limit.index_kind)
            idx = policy_index.get(pk)
            if idx is None:
                policies.append([key_index(limit.index_kind, mkey), limit.cap, ml.overflow, ml.name])
                idx = policy_index[pk] = len(policies)
            return idx

        # Each series string travels once per batch, as its own argument (no JSON escaping, no
        # JSON decoding in Redis); the updates refer to it by number. Series repeat a lot: one
        # label set serves several metrics, and a histogram series has several fields.
        strings: dict[str, int] = {}

        def ref(series: str) -> int:
            idx = strings.get(series)
            if idx is None:
                idx = strings[series] = len(strings) + 1
            return idx

        incs: list[str | int] = []
        hists: list[str | int] = []
        capped: list[list[str | int]] = []
        for (mkey, series), amount in delta.counters.items():
            if limits and (pol := limited(mkey, series)):
                capped.append([pol, "c", key_index("c", mkey), ref(series), format_number(amount)])
            else:
                incs += [key_index("c", mkey), ref(series), format_number(amount)]
        for (mkey, series), h in delta.histograms.items():
            op: list[str | int] = [key_index("h", mkey), ref(series), 0]
            for b, n in enumerate(h.buckets):
                if n:
                    op += [b, n]
            op[2] = (len(op) - 3) // 2
            op += [format_number(h.total), h.count]
            if limits and (pol := limited(mkey, series)):
                capped.append([pol, "h", *op])
            else:
                hists += op
        gauges: list[str | int] = []
        for (mkey, series), (t, value) in delta.gauges.items():
            op = [key_index("g", mkey), key_index("gt", mkey), ref(series), repr(t)]
            op.append("" if value is None else format_number(value))
            if limits and (pol := limited(mkey, series)):
                capped.append([pol, "g", *op])
            else:
                gauges += op
        # Exemplars of series the batch updates without a cap exist after it: written as they
        # are, several per HSET; those of capped series only if the series was admitted.
        exemplars: dict[int, list[str | int]] = {}
        checked: list[str | int] = []
        for (kind, mkey, series), (t, trace, value) in delta.exemplars.items():
            text = orjson.dumps([trace, value, t]).decode()
            if limits and limited(mkey, series):
                suffix = "" if kind == "c" else HISTOGRAM_COUNT_SUFFIX
                checked += [key_index("x", mkey), key_index(kind, mkey), ref(series), suffix, text]
            else:
                exemplars.setdefault(key_index("x", mkey), []).extend((ref(series), text))
        counts: list[str | int] = []
        for name, n in delta.stats.items():
            counts += [name, n]
        # cjson decodes an empty array as an (equally empty) object: both iterate as nothing.
        record_removals = 1 if k.shards > 1 else 0
        document = {
            "i": incs,
            "h": hists,
            "g": gauges,
            "s": counts,
            "p": policies,
            "x": capped,
            "r": record_removals,
            "e": [[x, *fields] for x, fields in exemplars.items()],
            "ec": checked,
        }
        args.append(len(strings))
        args += strings  # in number order (dicts keep insertion order)
        args.append(orjson.dumps(document).decode())
        for kind_mkey in mkeys:  # in index order (dicts keep insertion order)
            full = names.get(kind_mkey)
            if full is None:
                full = names[kind_mkey] = k.metric(s, *kind_mkey)
            keys.append(full)
        return keys, args


def _in_batch_duplicates(entries: Sequence[PendingEntry]) -> set[str]:
    seen: set[tuple[str, int]] = set()
    dup: set[str] = set()
    for e in entries:
        token = (e.producer_id, e.seq)
        if token in seen:
            dup.add(e.entry_id)
        seen.add(token)
    return dup


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
