"""Read the durable metric state back from Redis as decoded samples (tests, quick start, debugging).

The same read and the same shard merge as ``/metrics`` (:mod:`aggregator.exposition`): counters
and histograms add up, a gauge series takes the write *or removal* with the newest event time over
all shards. The "hours until budget reset" gauges are stored as the reset time and turned into
hours from ``now`` here, so they are always current. Unlike the exposition, only stored series
appear (no implicit zero series for label-less metrics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
import redis

from aggregator.catalog import MetricDef
from aggregator.exposition import histogram_groups, merged_counters, merged_gauges, read_state
from aggregator.schema import RESET_TIME_GAUGES, MetricSchema
from aggregator.state import decode_series
from aggregator.textformat import go_float
from producer.keys import Keys


@dataclass
class Family:
    """One metric family: its definition and series (label values tuple -> value)."""

    metric: MetricDef
    label_names: tuple[str, ...]
    upper_bounds: tuple[float, ...] = ()
    counters: dict[tuple[str, ...], float] = field(default_factory=dict)
    gauges: dict[tuple[str, ...], tuple[float, float]] = field(default_factory=dict)  # value, time
    # series -> (per-bucket counts, sum, count)
    histograms: dict[tuple[str, ...], tuple[list[float], float, float]] = field(default_factory=dict)

    def samples(self, now: float) -> list[tuple[str, dict[str, str], float]]:
        """(sample name, labels, value) like prometheus_client's ``Metric.samples`` (no _created)."""
        out: list[tuple[str, dict[str, str], float]] = []
        fam = self.metric.family
        if self.metric.kind == "counter":
            for values, v in self.counters.items():
                out.append((f"{fam}_total", dict(zip(self.label_names, values, strict=True)), v))
        elif self.metric.kind == "gauge":
            for values, (v, _t) in self.gauges.items():
                if self.metric.name in RESET_TIME_GAUGES:
                    v = (v - now) / 3600
                out.append((fam, dict(zip(self.label_names, values, strict=True)), v))
        else:
            bounds = [*self.upper_bounds, math.inf]
            for values, (buckets, total, count) in self.histograms.items():
                labels = dict(zip(self.label_names, values, strict=True))
                cumulative = 0.0
                for bound, n in zip(bounds, buckets, strict=True):
                    cumulative += n
                    out.append((f"{fam}_bucket", {**labels, "le": go_float(bound)}, cumulative))
                out.append((f"{fam}_count", labels, count))
                out.append((f"{fam}_sum", labels, total))
        return out


def read_families(client: redis.Redis, keys: Keys, schema: MetricSchema) -> dict[str, Family]:
    """Every enabled metric's series, merged over all shards."""
    families: dict[str, Family] = {}
    for ms in read_state(client, keys, schema, with_times=True).metrics:
        mdef = ms.mdef
        fam = families[mdef.name] = Family(mdef, ms.label_names, ms.upper_bounds)
        if mdef.kind == "counter":
            for f, v in merged_counters(ms).items():
                fam.counters[_values(f)] = float(v)
        elif mdef.kind == "gauge":
            for f, (raw, t) in merged_gauges(ms).items():
                fam.gauges[_values(f)] = (float(raw), t)
        else:
            nb = len(ms.upper_bounds) + 1
            for series, g in histogram_groups(ms).items():
                buckets = g[:nb]
                # The count is the +Inf bucket, as prometheus_client exports it.
                fam.histograms[_values(series)] = (buckets, g[nb], float(sum(buckets)))
    return families


def _values(field_name: bytes | str) -> tuple[str, ...]:
    return tuple(("None" if v is None else str(v)) for v in decode_series(field_name))


def samples(families: Iterable[Family], now: float | None = None) -> list[tuple[str, dict[str, str], float]]:
    now = time.time() if now is None else now
    out: list[tuple[str, dict[str, str], float]] = []
    for fam in families:
        out.extend(fam.samples(now))
    return out


def dump(families: Iterable[Family]) -> bytes:
    """A JSON dump of the samples (debugging aid)."""
    return orjson.dumps([list(s) for s in samples(families)], option=orjson.OPT_INDENT_2)
