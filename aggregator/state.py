"""How metric state is laid out in Redis, and the per-batch delta that changes it.

Each metric is stored under a *metric key* ``<name>:<schema id>``, where the schema id is a
short hash of the metric's label names: changing the label configuration starts new series
instead of mixing label sets, and the label names of every metric key are recorded in the
shard's ``schemas`` hash. A series is a field of the metric's hash: the JSON array of its
label values (``null`` for a missing value).

- counter ``c:<metric key>``: field -> running total (HINCRBYFLOAT)
- histogram ``h:<metric key>``: ``<series>\\x1fb<i>`` -> count of observations in bucket *i*
  (not cumulative), ``<series>\\x1fs`` -> sum, ``<series>\\x1fc`` -> count
- gauge ``g:<metric key>``: field -> value; ``gt:<metric key>``: field -> event time of the
  last write or removal (a write older than that is ignored: last write wins by event time)
- exemplar ``x:<metric key>`` (counters and histograms of ``schema.EXEMPLAR_METRICS``): series
  -> ``[trace id, value, event time]`` (JSON) of the newest event that carried a trace id
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

SEP = "\x1f"
# Values outside this range are refused by the engine (poison): HINCRBYFLOAT must never fail
# half-way through the apply script.
MAX_ABS_AMOUNT = 1e15


def schema_id(label_names: Sequence[str]) -> str:
    return hashlib.sha1(orjson.dumps(list(label_names))).hexdigest()[:8]


def metric_key(name: str, label_names: Sequence[str]) -> str:
    return f"{name}:{schema_id(label_names)}"


def encode_series(values: Sequence[str | None]) -> str:
    return orjson.dumps(list(values)).decode()


def decode_series(field_name: str | bytes) -> list[str | None]:
    decoded = orjson.loads(field_name)
    if not isinstance(decoded, list):
        raise ValueError(f"not a series field: {field_name!r}")
    return decoded


#: The field suffix of a histogram series' count (its presence says the series exists).
HISTOGRAM_COUNT_SUFFIX = f"{SEP}c"


def histogram_field(series: str, part: str) -> str:
    return f"{series}{SEP}{part}"


# One series of one metric: (metric key, series field); the key of every ``Delta`` entry.
Key = tuple[str, str]
# A gauge value that removes the series (``Delta.set_indexed``).
REMOVE: Any = object()


@dataclass(slots=True)
class Histogram:
    buckets: list[int]
    total: float = 0.0
    count: int = 0


@dataclass
class Delta:
    """Pre-aggregated changes of one batch for one shard."""

    counters: dict[Key, float] = field(default_factory=dict)
    histograms: dict[Key, Histogram] = field(default_factory=dict)
    # (metric key, series) -> (event time, value or None for a removal); newest wins.
    gauges: dict[Key, tuple[float, float | None]] = field(default_factory=dict)
    # Increments of the shard's stats hash applied with the batch (e.g. rejected events by reason).
    stats: dict[str, int] = field(default_factory=dict)
    # Entry id -> events of that entry rejected (not applied): they count neither as applied
    # events in the shard's stats nor in the producer's applied total.
    rejected: dict[str, int] = field(default_factory=dict)
    # (kind "c"/"h", metric key, series) -> (event time, trace id, value): the newest exemplar.
    exemplars: dict[tuple[str, str, str], tuple[float, str, float]] = field(default_factory=dict)

    def exemplar(self, kind: str, mkey: str, series: str, t: float, trace_id: str, value: float) -> None:
        """The newest (by event time) exemplar of a counter (``kind`` "c") or histogram ("h")
        series."""
        k = (kind, mkey, series)
        current = self.exemplars.get(k)
        if current is None or t >= current[0]:
            self.exemplars[k] = (t, trace_id, value)

    def inc(self, mkey: str, series: str, amount: float) -> None:
        k = (mkey, series)
        self.counters[k] = self.counters.get(k, 0.0) + amount

    def observe(self, mkey: str, series: str, upper_bounds: Sequence[float], value: float) -> None:
        """``upper_bounds`` excludes +Inf; the last bucket index is the +Inf bucket."""
        k = (mkey, series)
        h = self.histograms.get(k)
        if h is None:
            h = self.histograms[k] = Histogram([0] * (len(upper_bounds) + 1))
        h.buckets[bisect.bisect_left(upper_bounds, value)] += 1
        h.total += value
        h.count += 1

    def set_gauge(self, mkey: str, series: str, t: float, value: float | None) -> None:
        k = (mkey, series)
        current = self.gauges.get(k)
        if current is None or t >= current[0]:
            self.gauges[k] = (t, value)

    # The same three updates for many series at once: each ``(key, slot)`` pair gets the value
    # ``values[slot]``; a value None updates nothing. How the engine adds a success event.

    def inc_indexed(self, pairs: Sequence[tuple[Key, int]], values: Sequence[Any]) -> None:
        counters = self.counters
        get = counters.get
        for k, i in pairs:
            amount = values[i]
            if amount is not None:
                counters[k] = get(k, 0.0) + amount

    def observe_indexed(self, rows: Sequence[tuple[Key, Sequence[float], int]], values: Sequence[Any]) -> None:
        """``rows``: (key, the histogram's upper bounds without +Inf, slot)."""
        histograms = self.histograms
        for k, bounds, i in rows:
            value = values[i]
            if value is not None:
                h = histograms.get(k)
                if h is None:
                    h = histograms[k] = Histogram([0] * (len(bounds) + 1))
                h.buckets[bisect.bisect_left(bounds, value)] += 1
                h.total += value
                h.count += 1

    def set_indexed(self, pairs: Sequence[tuple[Key, int]], values: Sequence[Any], t: float) -> None:
        """Gauges at event time ``t``; a value ``REMOVE`` removes the series."""
        gauges = self.gauges
        get = gauges.get
        for k, i in pairs:
            value = values[i]
            if value is not None:
                current = get(k)
                if current is None or t >= current[0]:
                    gauges[k] = (t, None if value is REMOVE else value)

    def count(self, stat: str, n: int = 1) -> None:
        self.stats[stat] = self.stats.get(stat, 0) + n

    def is_empty(self) -> bool:
        return not (self.counters or self.histograms or self.gauges)


def format_number(value: float) -> str:
    """Exact text for a float (repr round-trips); integers without a trailing .0."""
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)
