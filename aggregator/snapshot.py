"""Read the durable metric state back from Redis as samples.

Shards are merged: counters and histograms add up, a gauge takes the value written with the
newest event time. The "hours until budget reset" gauges are stored as the reset time and
turned into hours from ``now`` here, so they are always current.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from aggregator.catalog import MetricDef
from aggregator.engine import RESET_TIME_GAUGES, Engine
from aggregator.state import SEP, decode_series
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
                    out.append((f"{fam}_bucket", {**labels, "le": _le(bound)}, cumulative))
                out.append((f"{fam}_count", labels, count))
                out.append((f"{fam}_sum", labels, total))
        return out


def _le(bound: float) -> str:
    """prometheus_client's ``floatToGoString``."""
    if bound == math.inf:
        return "+Inf"
    text = repr(float(bound))
    return text


def read_families(client: redis.Redis, keys: Keys, engine: Engine) -> dict[str, Family]:
    """Every enabled metric's series, merged over all shards."""
    families: dict[str, Family] = {}
    for mdef in engine.config.metrics():
        mkey = engine.metric_key(mdef.name)
        if mkey is None:
            continue
        fam = Family(mdef, engine.label_names(mdef.name), engine.upper_bounds(mdef.name))
        families[mdef.name] = fam
        for shard in range(keys.shards):
            if mdef.kind == "counter":
                for f, v in client.hgetall(keys.metric(shard, "c", mkey)).items():
                    s = tuple(_values(f))
                    fam.counters[s] = fam.counters.get(s, 0.0) + float(v)
            elif mdef.kind == "gauge":
                values = client.hgetall(keys.metric(shard, "g", mkey))
                times = client.hgetall(keys.metric(shard, "gt", mkey))
                for f, v in values.items():
                    s = tuple(_values(f))
                    t = float(times.get(f, b"0"))
                    cur = fam.gauges.get(s)
                    if cur is None or t >= cur[1]:
                        fam.gauges[s] = (float(v), t)
            else:
                _read_histogram(fam, client.hgetall(keys.metric(shard, "h", mkey)))
    return families


def _values(field_name: bytes | str) -> list[str]:
    return [("None" if v is None else str(v)) for v in decode_series(field_name)]


def _read_histogram(fam: Family, raw: dict[Any, Any]) -> None:
    nb = len(fam.upper_bounds) + 1
    for f, v in raw.items():
        series_raw, _, part = f.decode().rpartition(SEP)
        s = tuple(_values(series_raw.encode()))
        buckets, total, count = fam.histograms.get(s, ([0.0] * nb, 0.0, 0.0))
        if part == "s":
            total += float(v)
        elif part == "c":
            count += float(v)
        elif part.startswith("b"):
            i = int(part[1:])
            if 0 <= i < nb:
                buckets[i] += float(v)
        fam.histograms[s] = (buckets, total, count)


def samples(families: Iterable[Family], now: float | None = None) -> list[tuple[str, dict[str, str], float]]:
    now = time.time() if now is None else now
    out: list[tuple[str, dict[str, str], float]] = []
    for fam in families:
        out.extend(fam.samples(now))
    return out


def dump(families: Iterable[Family]) -> bytes:
    """A JSON dump of the samples (debugging aid)."""
    return orjson.dumps([list(s) for s in samples(families)], option=orjson.OPT_INDENT_2)
