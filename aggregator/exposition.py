"""The business series of ``/metrics``: durable state in Redis -> Prometheus text / OpenMetrics.

Two steps, both usable from a plain thread with a synchronous ``redis.Redis`` client:

1. :func:`iter_state` fetches every enabled metric's hashes of every shard (one pipelined
   ``HLEN`` round trip, then pipelined ``HGETALL`` in batches of at most ``PIPELINE_FIELDS``
   fields, handed over batch by batch; a hash larger than ``SCAN_THRESHOLD`` fields is read with
   ``HSCAN`` so no single reply grows to hundreds of MB). Fields stay raw bytes: no JSON
   decoding here. :meth:`Exposition.render` renders each batch before reading the next, and
   with ``max_fields`` leaves whole families out (the largest) rather than read more than that.
2. :meth:`Exposition.render_state` merges the shards and writes the text. Each series' label
   text (``name{a="x",b="y"} ``) is built once from its field (the JSON array of label values)
   and kept in a bounded cache across scrapes; a scrape then costs dict look-ups and byte
   concatenations. Values are formatted exactly like prometheus_client's ``floatToGoString``.

The output is byte-identical to prometheus_client's ``generate_latest`` (text 0.0.4) and
``openmetrics.exposition.generate_latest`` (OpenMetrics 1.0.0, without its final ``# EOF`` line:
the HTTP layer appends self-metrics, then :data:`EOF`, see :func:`assemble`) for a registry holding
the same series without ``_created`` samples (``tests/test_exposition.py`` proves it).

Merge rules: counters and histograms add up over shards. A gauge series takes the value or the
removal with the newest event time over all shards (``gt`` holds the time of the last write *or*
removal; a time without a value is a removal); on equal times the later shard wins, as a later
write does within one shard. With one shard the stored values are already the live ones and the
times are not read. A histogram's ``_count`` is its cumulative ``+Inf`` bucket (as in
prometheus_client), so it always agrees with the buckets; the stored count field is not used.

Label-less metrics (LiteLLM's user/team counts, batch-cost gauges) are exported with value 0
until set, as prometheus_client does for a metric without labels; other gauges only once set.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import redis

from aggregator.catalog import MetricDef
from aggregator.schema import EXEMPLAR_METRICS, RESET_TIME_GAUGES, TRACE_ID, MetricSchema
from aggregator.textformat import (
    EOF,
    Format,
    choose_format,
    escape_label_value,
    family_header,
    go_float,
    render_registry,
)
from producer.keys import Keys

__all__ = [
    "EOF",
    "Exposition",
    "MetricState",
    "State",
    "assemble",
    "choose_format",
    "iter_state",
    "read_state",
    "render_registry",
]

#: Hashes with more fields than this are read with HSCAN (bounded replies) instead of HGETALL.
SCAN_THRESHOLD: Final[int] = 200_000
#: COUNT of each HSCAN call.
SCAN_COUNT: Final[int] = 20_000
#: At most this many fields (sum of HLEN) per pipelined round trip of HGETALLs.
PIPELINE_FIELDS: Final[int] = 200_000
#: Series whose label text is remembered across scrapes (about 0.5-1 KiB each with the field
#: bytes it is keyed by; a histogram series' entry holds 4 texts, still one entry).
LABEL_CACHE_SIZE: Final[int] = 300_000
#: Distinct raw value strings whose formatted text is remembered (cleared when full).
VALUE_CACHE_SIZE: Final[int] = 100_000

_SEP = b"\x1f"


@dataclass(frozen=True, eq=False)
class MetricState:
    """The raw hashes of one metric: ``shards[i]`` is shard *i*'s ``c``/``h``/``g`` hash, ``times[i]``
    its ``gt`` hash for gauges (``None`` when not read: one shard, or not a gauge)."""

    mdef: MetricDef
    mkey: str
    label_names: tuple[str, ...]
    upper_bounds: tuple[float, ...]
    shards: tuple[dict[bytes, bytes], ...]
    times: tuple[dict[bytes, bytes], ...] | None = None
    #: Each shard's ``x`` hash (exemplars), when read (OpenMetrics, a metric that has them).
    exemplars: tuple[dict[bytes, bytes], ...] | None = None


@dataclass
class State:
    """What one read fetched, in LiteLLM's registration order."""

    metrics: list[MetricState] = field(default_factory=list)
    fields: int = 0  # hash fields read
    round_trips: int = 0
    #: Metrics left out because reading them would have exceeded ``max_fields``: name -> fields.
    omitted: dict[str, int] = field(default_factory=dict)


def _kind_prefix(mdef: MetricDef) -> str:
    return {"counter": "c", "gauge": "g", "histogram": "h"}[mdef.kind]


def sample_names(mdef: MetricDef) -> tuple[str, ...]:
    """Names of the samples a family exposes (no ``_created``)."""
    return tuple(mdef.family + s for s in mdef.sample_suffixes)


def wanted(mdef: MetricDef, names: frozenset[str] | None) -> bool:
    """prometheus_client's ``restricted_registry``: a family is there if one of its sample names is
    requested (and then only with the requested samples)."""
    return names is None or any(n in names for n in sample_names(mdef))


def read_state(
    client: redis.Redis,
    keys: Keys,
    schema: MetricSchema,
    names: frozenset[str] | None = None,
    with_times: bool | None = None,
    max_fields: int | None = None,
) -> State:
    """Fetch the hashes of every enabled metric (only those ``names`` asks for) of every shard.

    ``with_times``: read the gauges' ``gt`` hashes (default: only with several shards, where the
    merge needs them). ``max_fields``: see :func:`iter_state`."""
    state = State()
    for chunk in iter_state(client, keys, schema, state, names, with_times, max_fields):
        state.metrics.extend(chunk)
    return state


def iter_state(
    client: redis.Redis,
    keys: Keys,
    schema: MetricSchema,
    state: State,
    names: frozenset[str] | None = None,
    with_times: bool | None = None,
    max_fields: int | None = None,
    exemplars: bool = False,
) -> Iterator[list[MetricState]]:
    """:func:`read_state` a few metrics at a time (pipelined round trips of at most
    ``PIPELINE_FIELDS`` fields), in registration order, so that a caller that renders each chunk
    and lets it go never holds every metric's hashes at once.

    ``max_fields``: read at most this many hash fields in all. When the metrics hold more, the
    smallest are read while they fit and the others are left out whole (never half a metric):
    ``state.omitted`` (metric name -> its fields) says which. Sizes come from one HLEN round trip
    before anything is read, so what is left out costs no memory. ``exemplars``: also read the
    exemplar hashes of the metrics that have them."""
    shards = keys.shards
    times = shards > 1 if with_times is None else with_times
    plan: list[tuple[MetricDef, str, list[str], list[str], list[str]]] = []
    all_keys: list[str] = []
    for mdef in schema.config.metrics():
        mkey = schema.metric_key(mdef.name)
        if mkey is None or not wanted(mdef, names):
            continue
        vkeys = [keys.metric(s, _kind_prefix(mdef), mkey) for s in range(shards)]
        tkeys = [keys.metric(s, "gt", mkey) for s in range(shards)] if times and mdef.kind == "gauge" else []
        xkeys = (
            [keys.metric(s, "x", mkey) for s in range(shards)] if exemplars and mdef.name in EXEMPLAR_METRICS else []
        )
        plan.append((mdef, mkey, vkeys, tkeys, xkeys))
        all_keys += vkeys + tkeys + xkeys
    if not plan:
        return
    pipe = client.pipeline(transaction=False)
    for k in all_keys:
        pipe.hlen(k)
    sizes = dict(zip(all_keys, (int(n) for n in pipe.execute()), strict=True))
    state.round_trips += 1
    per_metric = [sum(sizes[k] for k in vkeys + tkeys + xkeys) for _m, _k, vkeys, tkeys, xkeys in plan]
    keep = range(len(plan))
    if max_fields is not None and sum(per_metric) > max_fields:
        kept: set[int] = set()
        used = 0
        for i in sorted(range(len(plan)), key=per_metric.__getitem__):
            if used + per_metric[i] > max_fields:
                break
            kept.add(i)
            used += per_metric[i]
        for i in range(len(plan)):
            if i not in kept:
                state.omitted[plan[i][0].name] = per_metric[i]
        keep = sorted(kept)  # type: ignore[assignment]

    chunk: list[tuple[MetricDef, str, list[str], list[str], list[str]]] = []
    chunk_fields = 0

    def fetch(part: list[tuple[MetricDef, str, list[str], list[str], list[str]]]) -> list[MetricState]:
        out: dict[str, dict[bytes, bytes]] = {}
        batch = [
            k for _m, _k, vkeys, tkeys, xkeys in part for k in vkeys + tkeys + xkeys if 0 < sizes[k] <= SCAN_THRESHOLD
        ]
        if batch:
            p = client.pipeline(transaction=False)
            for k in batch:
                p.hgetall(k)
            out.update(zip(batch, p.execute(), strict=True))
            state.round_trips += 1
        metrics = []
        for mdef, mkey, vkeys, tkeys, xkeys in part:
            for k in vkeys + tkeys + xkeys:
                n = sizes[k]
                state.fields += n
                if n == 0:
                    out[k] = {}
                elif n > SCAN_THRESHOLD:
                    out[k] = _scan(client, k, state)
            metrics.append(
                MetricState(
                    mdef,
                    mkey,
                    schema.label_names(mdef.name),
                    schema.upper_bounds(mdef.name),
                    tuple(out[k] for k in vkeys),
                    tuple(out[k] for k in tkeys) if tkeys else None,
                    tuple(out[k] for k in xkeys) if xkeys else None,
                )
            )
        return metrics

    for i in keep:
        entry = plan[i]
        pipelined = sum(n for k in entry[2] + entry[3] + entry[4] if (n := sizes[k]) <= SCAN_THRESHOLD)
        if chunk and chunk_fields + pipelined > PIPELINE_FIELDS:
            yield fetch(chunk)
            chunk, chunk_fields = [], 0
        chunk.append(entry)
        chunk_fields += pipelined
    if chunk:
        yield fetch(chunk)


def _scan(client: redis.Redis, key: str, state: State) -> dict[bytes, bytes]:
    """HSCAN in chunks. A field returned twice (HSCAN may during a rehash) is kept once."""
    out: dict[bytes, bytes] = {}
    cursor = 0
    while True:
        cursor, part = client.hscan(key, cursor, count=SCAN_COUNT)
        out.update(part)  # type: ignore[arg-type]
        state.round_trips += 1
        if cursor == 0:
            return out


# -- merging ------------------------------------------------------------------------------------


def merged_counters(ms: MetricState) -> dict[bytes, bytes] | dict[bytes, float]:
    """Counter totals: the raw hash of a single shard, or float sums over shards."""
    if len(ms.shards) == 1:
        return ms.shards[0]
    total: dict[bytes, float] = {}
    for d in ms.shards:
        for f, v in d.items():
            try:
                total[f] = total.get(f, 0.0) + float(v)
            except ValueError:
                continue
    return total


def merged_gauges(ms: MetricState) -> dict[bytes, tuple[bytes, float]]:
    """Live gauge series -> (raw value, event time): the newest write or removal over the shards
    wins; a removal (time in ``gt`` without a value in ``g``) hides older values of other shards."""
    if ms.times is None:
        if len(ms.shards) != 1:
            raise ValueError("merging gauges of several shards needs their times")
        return {f: (v, 0.0) for f, v in ms.shards[0].items()}
    best: dict[bytes, tuple[float, bytes | None]] = {}
    for values, times in zip(ms.shards, ms.times, strict=True):
        for f, raw_t in times.items():
            try:
                t = float(raw_t)
            except ValueError:
                t = 0.0
            cur = best.get(f)
            if cur is None or t >= cur[0]:
                best[f] = (t, values.get(f))
        for f, v in values.items():
            if f not in times:  # a value without a time (not written by apply.lua): oldest
                cur = best.get(f)
                if cur is None or cur[0] <= 0.0:
                    best[f] = (0.0, v)
    return {f: (v, t) for f, (t, v) in best.items() if v is not None}


def histogram_groups(ms: MetricState) -> dict[bytes, list[float]]:
    """Series field -> per-bucket counts (not cumulative, ``+Inf`` last) followed by the sum,
    added up over shards. Bucket indexes beyond the configured buckets are ignored."""
    nb = len(ms.upper_bounds) + 1
    index = _part_index(nb).get
    zeros = [0.0] * (nb + 1)
    groups: dict[bytes, list[float]] = {}
    group = groups.get
    for d in ms.shards:
        for f, v in d.items():
            series, _, part = f.rpartition(_SEP)
            i = index(part)
            if i is None:  # the count field (the +Inf bucket is the count), or not ours
                continue
            g = group(series)
            if g is None:
                g = groups[series] = zeros[:]
            try:
                g[i] += float(v)
            except ValueError:
                continue
    return groups


_PART_INDEX: dict[int, dict[bytes, int]] = {}


def _part_index(nb: int) -> dict[bytes, int]:
    index = _PART_INDEX.get(nb)
    if index is None:
        index = {f"b{i}".encode(): i for i in range(nb)}
        index[b"s"] = nb
        _PART_INDEX[nb] = index
    return index


# -- value text ---------------------------------------------------------------------------------

_COUNT_TEXT: dict[float, bytes] = {float(i): f"{go_float(float(i))}\n".encode() for i in range(4096)}


def merged_exemplars(ms: MetricState) -> dict[bytes, tuple[str, float, float]]:
    """Series -> (trace id, value, time) of its newest exemplar over the shards; unreadable ones
    are left out."""
    out: dict[bytes, tuple[str, float, float]] = {}
    for shard in ms.exemplars or ():
        for f, raw in shard.items():
            try:
                trace, value, t = orjson.loads(raw)
                value, t = float(value), float(t)
            except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
                continue
            if type(trace) is not str or not TRACE_ID.fullmatch(trace) or not math.isfinite(value + t):
                continue
            current = out.get(f)
            if current is None or t >= current[2]:
                out[f] = (trace, value, t)
    return out


def _exemplar_text(trace: str, value: float, t: float) -> bytes:
    """The end of a sample line with an exemplar (OpenMetrics), newline included."""
    return f' # {{trace_id="{trace}"}} {go_float(value)} {t:.3f}\n'.encode()


def _float_text(v: float) -> bytes:
    return f"{go_float(v)}\n".encode()


class _ValueText:
    """Formatted text (with the newline) of raw Redis values and of computed floats, memoised."""

    def __init__(self) -> None:
        self.raw: dict[bytes, bytes] = {}
        self.floats: dict[float, bytes] = {}

    def of_raw(self, raw: bytes) -> bytes | None:
        """None for a value that is not a number (the series is skipped)."""
        try:
            v = float(raw)
        except ValueError:
            return None
        text = _float_text(v)
        if len(self.raw) >= VALUE_CACHE_SIZE:
            self.raw.clear()
        self.raw[raw] = text
        return text

    def of_float(self, v: float) -> bytes:
        text = self.floats.get(v)
        if text is None:
            text = _float_text(v)
            # 0.0 and -0.0 (and NaN) are not remembered: equal keys, different texts.
            if v != 0 and v == v:
                if len(self.floats) >= VALUE_CACHE_SIZE:
                    self.floats.clear()
                self.floats[v] = text
        return text


# -- rendering ----------------------------------------------------------------------------------


@dataclass
class _FamilyText:
    """Per metric key: headers per format, how to turn a series field into label text (``perm``:
    label indexes in name order, ``None`` when names repeat; ``prefixes``: ``name="`` in that
    order; ``le_pos``: where ``le`` goes) and, for histograms, the ``le="..."`` fragments."""

    header: dict[str, bytes]
    perm: tuple[int, ...] | None
    prefixes: tuple[str, ...]
    le_pos: int
    le: tuple[bytes, ...] = ()
    zero: tuple[tuple[str, bytes], ...] = ()  # (sample name, line) of a label-less metric's zero series


class Exposition:
    """Renders the business series from Redis. Thread-safe; keep one instance per process so the
    label-text cache is reused across scrapes. The client must return bytes
    (``decode_responses=False``)."""

    def __init__(self, client: redis.Redis, keys: Keys, schema: MetricSchema, label_cache_size: int = LABEL_CACHE_SIZE):
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("Exposition needs a redis client with decode_responses=False")
        self.client = client
        self.keys = keys
        self.schema = schema
        self.label_cache_size = label_cache_size
        self._heads: dict[str, dict[bytes, Any]] = {}
        self._cached = 0
        self._families: dict[str, _FamilyText] = {}
        self._values = _ValueText()
        #: Series skipped since start because their field or value could not be read.
        self.skipped = 0
        #: Label sets per metric in the last unfiltered render (self-metric ``lsm_series``).
        self.series_counts: dict[str, int] = {}
        #: Metrics the last render left out for ``max_fields``: name -> stored fields.
        self.omitted: dict[str, int] = {}

    def render(
        self,
        fmt: Format,
        names: frozenset[str] | None = None,
        now: float | None = None,
        max_fields: int | None = None,
    ) -> bytes:
        """One scrape: read Redis, render. ``names`` restricts like prometheus_client's ``name[]``.
        OpenMetrics output does *not* end with ``# EOF`` (append :data:`EOF` after any other part)."""
        return b"".join(self.render_parts(fmt, names, now, max_fields))

    def render_parts(
        self,
        fmt: Format,
        names: frozenset[str] | None = None,
        now: float | None = None,
        max_fields: int | None = None,
    ) -> list[bytes]:
        """:meth:`render` as one bytes object per family (join them, or write them one after the
        other). Redis is read a few metrics at a time and each chunk is rendered before the next
        is read. ``max_fields``: read at most this many hash fields; families that do not fit are
        left out whole (the smallest are kept, see :func:`iter_state`) and listed in
        :attr:`omitted`."""
        state = State()
        parts: list[bytes] = []
        exemplars = fmt == "openmetrics"  # the text format 0.0.4 has no exemplars
        for chunk in iter_state(
            self.client, self.keys, self.schema, state, names, max_fields=max_fields, exemplars=exemplars
        ):
            parts += self._render_metrics(chunk, fmt, names, now)
        self.omitted = dict(state.omitted)
        for name in state.omitted:
            self.series_counts.pop(name, None)
            mkey = self.schema.metric_key(name)
            if mkey is not None and self._heads.pop(mkey, None) is not None:
                self._cached = sum(len(d) for d in self._heads.values())
        return parts

    def read(self, names: frozenset[str] | None = None) -> State:
        return read_state(self.client, self.keys, self.schema, names)

    @property
    def cached_series(self) -> int:
        """Series whose label text is currently cached."""
        return self._cached

    def render_state(
        self, state: State, fmt: Format, names: frozenset[str] | None = None, now: float | None = None
    ) -> bytes:
        """Render fetched state (no I/O)."""
        return b"".join(self._render_metrics(state.metrics, fmt, names, now))

    def _render_metrics(
        self, metrics: Sequence[MetricState], fmt: Format, names: frozenset[str] | None, now: float | None
    ) -> list[bytes]:
        """One bytes object per rendered family."""
        now = time.time() if now is None else now
        out: list[bytes] = []
        for ms in metrics:
            if not wanted(ms.mdef, names):
                continue
            ft = self._family_text(ms)
            old = self._heads.get(ms.mkey) or {}
            new: dict[bytes, Any] = {}
            room = self.label_cache_size - (self._cached - len(old))
            body: list[bytes] = []
            kind = ms.mdef.kind
            ex = merged_exemplars(ms) if fmt == "openmetrics" and ms.exemplars else None
            if kind == "counter":
                self._counter(ms, old, new, room, body, ex)
                rendered = len(body)  # one line per series
            elif kind == "gauge":
                self._gauge(ms, old, new, room, body, now)
                rendered = len(body)
            else:
                fam = ms.mdef.family
                want = (
                    names is None or fam + "_bucket" in names,
                    names is None or fam + "_count" in names,
                    names is None or fam + "_sum" in names,
                )
                rendered = self._histogram(ms, ft, old, new, room, body, want, ex)
            if names is None:
                self.series_counts[ms.mdef.name] = rendered
            if not body and not ms.label_names:
                body = self._zero_lines(ms, ft, names)
            if body or names is None:
                body.insert(0, ft.header[fmt])
                out.append(b"".join(body))
            del body
            self._heads[ms.mkey] = new
            self._cached = sum(len(d) for d in self._heads.values())
        return out

    # -- per kind -----------------------------------------------------------------------------

    def _counter(
        self,
        ms: MetricState,
        old: dict[bytes, Any],
        new: dict[bytes, Any],
        room: int,
        out: list[bytes],
        ex: dict[bytes, tuple[str, float, float]] | None = None,
    ) -> None:
        prefix = ms.mdef.family + "_total"
        values: dict[bytes, Any] = merged_counters(ms)
        vt = self._values
        raw_text: dict[Any, bytes]
        text_of: Callable[[Any], bytes | None]
        if len(ms.shards) == 1:
            raw_text, text_of = vt.raw, vt.of_raw
        else:
            raw_text, text_of = vt.floats, vt.of_float
        skipped = 0
        append = out.append
        for f, v in values.items():
            h = old.get(f)
            if h is None:
                h = self._plain_head(ms, f, prefix)
                if h is None:
                    skipped += 1
                    continue
                if room > 0:
                    new[f] = h
                    room -= 1
            else:
                new[f] = h
            t = raw_text.get(v)
            if t is None:
                t = text_of(v)
                if t is None:
                    skipped += 1
                    continue
            if ex and (e := ex.get(f)) is not None:
                append(h + t[:-1] + _exemplar_text(*e))
            else:
                append(h + t)
        self.skipped += skipped

    def _gauge(
        self, ms: MetricState, old: dict[bytes, Any], new: dict[bytes, Any], room: int, out: list[bytes], now: float
    ) -> None:
        prefix = ms.mdef.family
        values: dict[bytes, bytes]
        if ms.times is None and len(ms.shards) == 1:
            values = ms.shards[0]
        else:
            values = {f: v for f, (v, _t) in merged_gauges(ms).items()}
        hours = ms.mdef.name in RESET_TIME_GAUGES
        vt = self._values
        raw_text = vt.raw
        skipped = 0
        for f, v in values.items():
            h = old.get(f)
            if h is None:
                h = self._plain_head(ms, f, prefix)
                if h is None:
                    skipped += 1
                    continue
                if room > 0:
                    new[f] = h
                    room -= 1
            else:
                new[f] = h
            t: bytes | None
            if hours:
                try:
                    t = _float_text((float(v) - now) / 3600)
                except ValueError:
                    t = None
            else:
                t = raw_text.get(v) or vt.of_raw(v)
            if t is None:
                skipped += 1
                continue
            out.append(h + t)
        self.skipped += skipped

    def _histogram(
        self,
        ms: MetricState,
        ft: _FamilyText,
        old: dict[bytes, Any],
        new: dict[bytes, Any],
        room: int,
        out: list[bytes],
        want: tuple[bool, bool, bool],
        ex: dict[bytes, tuple[str, float, float]] | None = None,
    ) -> int:
        """Renders the histogram's series; returns how many. An exemplar goes on the bucket its
        value falls in."""
        want_bucket, want_count, want_sum = want
        groups = histogram_groups(ms)
        nb = len(ms.upper_bounds) + 1
        le = ft.le
        counts = _COUNT_TEXT
        of_float = self._values.of_float
        skipped = 0
        extend = out.extend
        for series, g in groups.items():
            h = old.get(series)
            if h is None:
                h = self._histogram_heads(ms, series)
                if h is None:
                    skipped += 1
                    continue
                if room > 0:
                    new[series] = h
                    room -= 1
            else:
                new[series] = h
            pre, post, count_head, sum_head = h
            acc = 0.0
            e = ex.get(series) if ex else None
            if want_bucket and e is not None:
                at = bisect.bisect_left(ms.upper_bounds, e[1])  # the bucket the engine counted it in
                for i in range(nb):
                    acc += g[i]
                    text = counts.get(acc) or of_float(acc)
                    extend((pre, le[i], post, text[:-1] + _exemplar_text(*e) if i == at else text))
            elif want_bucket:
                for i in range(nb):
                    acc += g[i]
                    extend((pre, le[i], post, counts.get(acc) or of_float(acc)))
            else:
                for i in range(nb):
                    acc += g[i]
            if want_count:
                extend((count_head, counts.get(acc) or of_float(acc)))
            if want_sum:
                extend((sum_head, of_float(g[nb])))
        self.skipped += skipped
        return len(groups) - skipped

    def _zero_lines(self, ms: MetricState, ft: _FamilyText, names: frozenset[str] | None) -> list[bytes]:
        """prometheus_client exports a label-less metric at 0 before any update."""
        return [line for sample, line in ft.zero if names is None or sample in names]

    # -- label text ---------------------------------------------------------------------------

    @staticmethod
    def _label_parts(ft: _FamilyText, ms: MetricState, field_name: bytes) -> list[str] | None:
        """``name="escaped value`` per label, sorted by label name as prometheus_client writes them
        (joined with ``",`` and closed with ``"``); None for a field that is not a series of this
        metric."""
        try:
            values = orjson.loads(field_name)
        except orjson.JSONDecodeError:
            return None
        if type(values) is not list or len(values) != len(ms.label_names):
            return None
        # JSON writes a backslash, a double quote and a newline with a backslash: without one in
        # the field, no value needs escaping.
        escape = b"\\" in field_name
        if ft.perm is None:  # repeated label names: the last value wins, as in a dict
            texts = ["None" if v is None else (v if isinstance(v, str) else str(v)) for v in values]
            pairs = sorted(dict(zip(ms.label_names, texts, strict=True)).items())
            return [f'{k}="{escape_label_value(v)}' for k, v in pairs]
        out = []
        for prefix, i in zip(ft.prefixes, ft.perm, strict=True):
            v = values[i]
            if type(v) is not str:
                v = "None" if v is None else escape_label_value(str(v))
            elif escape:
                v = escape_label_value(v)
            out.append(prefix + v)
        return out

    def _plain_head(self, ms: MetricState, field_name: bytes, sample: str) -> bytes | None:
        parts = self._label_parts(self._family_text(ms), ms, field_name)
        if parts is None:
            return None
        return (sample + "{" + '",'.join(parts) + '"} ').encode() if parts else (sample + " ").encode()

    def _histogram_heads(self, ms: MetricState, series: bytes) -> tuple[bytes, bytes, bytes, bytes] | None:
        ft = self._family_text(ms)
        parts = self._label_parts(ft, ms, series)
        if parts is None:
            return None
        pos = ft.le_pos if ft.perm is not None else bisect.bisect_left([p.partition("=")[0] for p in parts], "le")
        return _histogram_heads(ms.mdef.family, parts, pos)

    def _family_text(self, ms: MetricState) -> _FamilyText:
        ft = self._families.get(ms.mkey)
        if ft is None:
            m = ms.mdef
            header = {fmt: family_header(m.family, m.kind, m.documentation, fmt) for fmt in ("text", "openmetrics")}
            names = ms.label_names
            perm: tuple[int, ...] | None = None
            prefixes: tuple[str, ...] = ()
            le_pos = 0
            if len(set(names)) == len(names):
                perm = tuple(sorted(range(len(names)), key=names.__getitem__))
                prefixes = tuple(f'{names[i]}="' for i in perm)
                le_pos = bisect.bisect_left([names[i] for i in perm], "le")
            le: tuple[bytes, ...] = ()
            zero: tuple[tuple[str, bytes], ...] = ()
            if m.kind == "histogram":
                le = tuple(f'le="{go_float(b)}"'.encode() for b in (*ms.upper_bounds, math.inf))
                if not names:
                    pre, post, count_head, sum_head = _histogram_heads(m.family, [], 0)
                    zero = (
                        *((m.family + "_bucket", pre + x + post + b"0.0\n") for x in le),
                        (m.family + "_count", count_head + b"0.0\n"),
                        (m.family + "_sum", sum_head + b"0.0\n"),
                    )
            elif not names:
                sample = f"{m.family}_total" if m.kind == "counter" else m.family
                zero = ((sample, sample.encode() + b" 0.0\n"),)
            ft = self._families[ms.mkey] = _FamilyText(header, perm, prefixes, le_pos, le, zero)
        return ft


def assemble(fmt: Format, *parts: bytes) -> bytes:
    """The response body: the parts (business series, self-metrics...) and, for OpenMetrics, the
    final ``# EOF`` line."""
    return b"".join((*parts, EOF)) if fmt == "openmetrics" else b"".join(parts)


def _histogram_heads(family: str, parts: list[str], pos: int) -> tuple[bytes, bytes, bytes, bytes]:
    """(``x_bucket{<labels before le>``, ``<labels after le>} ``, ``x_count{...} ``, ``x_sum{...} ``)
    from the label parts of :meth:`Exposition._label_parts`: ``le`` sorts among the label names like
    any other (prometheus_client sorts them all), at ``pos``."""
    before, after = parts[:pos], parts[pos:]
    pre = family + "_bucket{" + ('",'.join(before) + '",' if before else "")
    post = ("," + '",'.join(after) + '"' if after else "") + "} "
    plain = "{" + '",'.join(parts) + '"} ' if parts else " "
    return pre.encode(), post.encode(), (family + "_count" + plain).encode(), (family + "_sum" + plain).encode()
