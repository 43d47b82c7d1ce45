"""/metrics rendering (aggregator/exposition.py, aggregator/textformat.py) against real Redis.

prometheus_client is the reference. The exact comparisons build a registry holding the same
series as the state written to Redis and require *byte equality* with ``generate_latest`` (text)
and ``openmetrics.exposition.generate_latest`` (OpenMetrics). Two kinds of registry:

- LiteLLM's own objects (``Counter``/``Gauge``/``Histogram`` for every enabled metric, registered
  in LiteLLM's order, fed with ``inc``/``set``/``observe``) with ``_created`` samples switched off
  (``disable_created_metrics()``; our state has no creation time, and prometheus_client writes
  ``_created`` as separate gauge families in the text format). This proves names, HELP/TYPE
  lines, label sorting with ``le``, sample order, zero series of label-less metrics and value
  formatting are those of a LiteLLM registry.
- One custom collector of ``CounterMetricFamily``/``GaugeMetricFamily``/``HistogramMetricFamily``
  (no ``_created`` by construction) for arbitrary stored values and for ``restricted_registry``
  (one collector keeps the family order deterministic: a restricted registry iterates a set).

Series order inside a family is not meaningful to Prometheus and ours follows Redis' hash order,
so the reference registry adds its series in the order our output lists them (taken from our
output, restricted to the series the test expects: an extra or a missing series still fails).
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import random
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
import pytest
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import metrics as pc_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse
from prometheus_client.utils import floatToGoString

import aggregator.exposition as exposition
from aggregator.catalog import MetricDef
from aggregator.engine import Engine
from aggregator.exposition import EOF, Exposition, assemble, choose_format, render_registry
from aggregator.litellm_config import MetricsConfig
from aggregator.schema import RESET_TIME_GAUGES
from aggregator.snapshot import read_families
from aggregator.state import encode_series, histogram_field
from aggregator.textformat import go_float
from producer.keys import Keys

ENGINE = Engine(MetricsConfig.from_litellm_settings({}))
NOW = 1_700_000_000.0

AWKWARD = [
    "",
    "None",
    'a"b',
    "back\\slash",
    "new\nline",
    '\\"\\n',
    "ünïcødé ✓ 日本語 🙂",
    "{}=,",
    " ",
    "tab\there",
    "x" * 300,
    "end\\",
    "\u2028",
    "sk-...",
]
CHARS = 'ab"\\\n{}=, ü日🙂#'


def awkward(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(AWKWARD)
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(0, 12)))


Labels = tuple[str, ...]


@dataclass
class Model:
    """The expected merged state: what /metrics must show."""

    counters: dict[str, dict[Labels, float]] = field(default_factory=dict)
    gauges: dict[str, dict[Labels, float]] = field(default_factory=dict)  # stored value
    histograms: dict[str, dict[Labels, tuple[list[int], float]]] = field(default_factory=dict)


def mdef(name: str, engine: Engine = ENGINE) -> MetricDef:
    return engine.config.metric(name)


def key(keys: Keys, shard: int, kind: str, name: str, engine: Engine = ENGINE) -> str:
    mkey = engine.metric_key(name)
    assert mkey is not None
    return keys.metric(shard, kind, mkey)


def series_of(values: Sequence[str | None]) -> str:
    return encode_series(list(values))


# -- writing state the way apply.lua does ----------------------------------------------------


def split_amount(rng: random.Random, amount: float, parts: int, unit: int = 4) -> list[float]:
    """``amount`` (a multiple of 1/unit) as ``parts`` multiples of 1/unit: exact in any order."""
    units = round(amount * unit)
    cuts = sorted(rng.randint(0, units) for _ in range(parts - 1))
    bounds = [0, *cuts, units]
    return [(b - a) / unit for a, b in itertools.pairwise(bounds)]


def write_model(client: redis.Redis, keys: Keys, model: Model, rng: random.Random, engine: Engine = ENGINE) -> None:
    """Counters and histograms spread over the shards with HINCRBYFLOAT; every gauge series gets
    older writes and removals in other shards, and removed series a newer removal."""
    pipe = client.pipeline(transaction=False)
    n = keys.shards
    for name, series in model.counters.items():
        for labels, total in series.items():
            for shard, part in enumerate(split_amount(rng, total, n)):
                if part or shard == 0:
                    pipe.hincrbyfloat(key(keys, shard, "c", name, engine), series_of(labels), repr(part))
    for name, hseries in model.histograms.items():
        for labels, (buckets, total) in hseries.items():
            s = series_of(labels)
            for shard in range(n):
                pipe.hincrbyfloat(key(keys, shard, "h", name, engine), histogram_field(s, "c"), 0)
            for i, count in enumerate(buckets):
                for shard, part in enumerate(split_amount(rng, count, n, unit=1)):
                    if part:
                        pipe.hincrbyfloat(key(keys, shard, "h", name, engine), histogram_field(s, f"b{i}"), int(part))
            for shard, part in enumerate(split_amount(rng, total, n)):
                pipe.hincrbyfloat(key(keys, shard, "h", name, engine), histogram_field(s, "s"), repr(part))
    for name, gseries in model.gauges.items():
        for labels, value in gseries.items():
            s = series_of(labels)
            win = rng.randrange(n)
            t = 1000.0 + rng.randint(0, 100)
            pipe.hset(key(keys, win, "g", name, engine), s, value_text(value))
            pipe.hset(key(keys, win, "gt", name, engine), s, repr(t))
            for shard in range(n):
                if shard == win:
                    continue
                older = t - rng.randint(1, 50)
                if rng.random() < 0.5:  # an older value
                    pipe.hset(key(keys, shard, "g", name, engine), s, "-12345")
                pipe.hset(key(keys, shard, "gt", name, engine), s, repr(older))  # else an older removal
    pipe.execute()


def value_text(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def write_removed(client: redis.Redis, keys: Keys, name: str, labels: Labels, rng: random.Random) -> None:
    """A series set in some shards and removed later in another: it must not be exported."""
    s = series_of(labels)
    n = keys.shards
    remover = rng.randrange(n)
    t = 5000.0
    for shard in range(n):
        if shard != remover:
            client.hset(key(keys, shard, "g", name), s, "7")
            client.hset(key(keys, shard, "gt", name), s, repr(t - 1 - shard))
    client.hset(key(keys, remover, "gt", name), s, repr(t))


def random_model(rng: random.Random, engine: Engine = ENGINE, per_metric: int = 3) -> Model:
    model = Model()
    for m in engine.config.metrics():
        names = engine.label_names(m.name)
        if not names:
            continue
        count = rng.randint(0, per_metric)
        for _ in range(count):
            labels = tuple(awkward(rng) for _ in names)
            if m.kind == "counter":
                model.counters.setdefault(m.name, {})[labels] = rng.choice([0, 1, 3, 0.25, 1234567, 2.5e7, 1e15])
            elif m.kind == "gauge":
                if m.name in RESET_TIME_GAUGES:
                    v = NOW + rng.choice([7200.0, -1800.0, 3600 * 24 * 30])
                else:
                    v = rng.choice([0.0, -3.5, 42.0, math.inf, -math.inf, math.nan, 9.223372036854776e18, 0.1, 1e-300])
                model.gauges.setdefault(m.name, {})[labels] = v
            else:
                nb = len(engine.upper_bounds(m.name)) + 1
                buckets = [rng.choice([0, 0, 1, 2, 5000]) for _ in range(nb)]
                model.histograms.setdefault(m.name, {})[labels] = (buckets, rng.choice([0.0, 0.25, 12.5, 1e6]))
    return model


# -- the reference: prometheus_client ---------------------------------------------------------


def exported_gauge(name: str, stored: float, now: float = NOW) -> float:
    return (stored - now) / 3600 if name in RESET_TIME_GAUGES else stored


def label_order(body: bytes) -> dict[str, list[frozenset[tuple[str, str]]]]:
    """Family -> label sets in the order our output lists them (from prometheus_client's parser)."""
    order: dict[str, list[frozenset[tuple[str, str]]]] = {}
    for fam in text_parse(body.decode()):
        seen = order.setdefault(fam.name, [])
        for s in fam.samples:
            ls = frozenset((k, v) for k, v in s.labels.items() if k != "le")
            if ls not in seen:
                seen.append(ls)
    return order


def ordered(
    items: dict[Labels, Any], names: Sequence[str], order: Sequence[frozenset[tuple[str, str]]]
) -> list[Labels]:
    """The model's series, in ``order`` first (our output's order), then any ours lacks."""
    by_set = {frozenset(zip(names, labels, strict=True)): labels for labels in items}
    first = [by_set[ls] for ls in order if ls in by_set]
    return first + [labels for labels in items if labels not in first]


class ModelCollector:
    """The model as MetricFamily objects, in our family order (for exact arbitrary values)."""

    def __init__(self, model: Model, body: bytes, engine: Engine = ENGINE, now: float = NOW) -> None:
        self.model, self.engine, self.now = model, engine, now
        self.order = label_order(body)

    def collect(self) -> Iterator[Any]:
        e = self.engine
        for m in e.config.metrics():
            names = list(e.label_names(m.name))
            order = self.order.get(m.family, [])
            if m.kind == "counter":
                c = CounterMetricFamily(m.family, m.documentation, labels=names)
                series = self.model.counters.get(m.name, {})
                for labels in ordered(series, names, order):
                    c.add_metric(list(labels), series[labels])
                if not names:
                    c.add_metric([], 0.0)
                yield c
            elif m.kind == "gauge":
                g = GaugeMetricFamily(m.family, m.documentation, labels=names)
                gseries = self.model.gauges.get(m.name, {})
                for labels in ordered(gseries, names, order):
                    g.add_metric(list(labels), exported_gauge(m.name, gseries[labels], self.now))
                if not names and not gseries:
                    g.add_metric([], 0.0)
                yield g
            else:
                h = HistogramMetricFamily(m.family, m.documentation, labels=names)
                hseries = self.model.histograms.get(m.name, {})
                bounds = [*e.upper_bounds(m.name), math.inf]
                for labels in ordered(hseries, names, order):
                    buckets, total = hseries[labels]
                    cumulative, acc = [], 0.0
                    for bound, n in zip(bounds, buckets, strict=True):
                        acc += n
                        cumulative.append((floatToGoString(bound), acc))
                    h.add_metric(list(labels), cumulative, total)
                if not names and not hseries:
                    h.add_metric([], [(floatToGoString(b), 0.0) for b in bounds], 0.0)
                yield h


def reference(model: Model, body: bytes, engine: Engine = ENGINE, now: float = NOW) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ModelCollector(model, body, engine, now))
    return registry


def expected_samples(
    model: Model, engine: Engine = ENGINE, now: float = NOW
) -> set[tuple[str, frozenset[tuple[str, str]], str]]:
    out: set[tuple[str, frozenset[tuple[str, str]], str]] = set()
    for fam in reference(model, b"", engine, now).collect():
        for s in fam.samples:
            out.add((s.name, frozenset(s.labels.items()), floatToGoString(s.value)))
    return out


def parsed_samples(families: Any) -> set[tuple[str, frozenset[tuple[str, str]], str]]:
    return {(s.name, frozenset(s.labels.items()), floatToGoString(s.value)) for fam in families for s in fam.samples}


@pytest.fixture
def no_created() -> Iterator[None]:
    previous = pc_metrics._use_created
    prometheus_client.disable_created_metrics()
    try:
        yield
    finally:
        pc_metrics._use_created = previous


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 3])
def test_awkward_state_equals_generate_latest_and_parses_back(
    redis_client: redis.Redis, namespace: str, shards: int
) -> None:
    """Property-style: random series with awkward label values and values, every kind, spread over
    shards (with older gauge writes and removals): byte-equal to prometheus_client in both formats,
    and both parsers read back exactly the expected samples."""
    for seed in range(4):
        rng = random.Random(seed * 10 + shards)
        ns = f"{namespace}-{seed}"
        keys = Keys(ns, shards)
        model = random_model(rng)
        write_model(redis_client, keys, model, rng)
        try:
            ex = Exposition(redis_client, keys, ENGINE.schema)
            text = ex.render("text", now=NOW)
            om = assemble("openmetrics", ex.render("openmetrics", now=NOW))
            registry = reference(model, text)
            assert text == generate_latest(registry)
            assert om == om_exposition.generate_latest(registry)
            want = expected_samples(model)
            assert parsed_samples(text_parse(text.decode())) == want
            assert parsed_samples(om_parse(om.decode())) == want
            # Second scrape (label text from the cache) is identical.
            assert ex.render("text", now=NOW) == text
        finally:
            for k in redis_client.scan_iter(match=f"{ns}:*", count=1000):
                redis_client.delete(k)


def test_equals_a_litellm_registry(redis_client: redis.Redis, namespace: str, no_created: None) -> None:
    """The real metric classes LiteLLM registers (every enabled metric, LiteLLM's order), fed with
    inc/set/observe; the same updates written to Redis over 2 shards as apply.lua writes them."""
    rng = random.Random(7)
    keys = Keys(namespace, 2)
    registry = CollectorRegistry(auto_describe=True)
    objects: dict[str, Any] = {}
    for m in ENGINE.config.metrics():
        names = list(ENGINE.label_names(m.name))
        if m.kind == "counter":
            objects[m.name] = Counter(m.name, m.documentation, names, registry=registry)
        elif m.kind == "gauge":
            objects[m.name] = Gauge(m.name, m.documentation, names, registry=registry)
        else:
            bounds = [*ENGINE.upper_bounds(m.name), math.inf]
            objects[m.name] = Histogram(m.name, m.documentation, names, registry=registry, buckets=bounds)
    # Updates: (metric, labels, op, value) with dyadic values (exact in any summation order).
    updates: list[tuple[str, Labels, str, float]] = []
    for m in ENGINE.config.metrics():
        names = ENGINE.label_names(m.name)
        if not names:
            continue
        for _ in range(rng.randint(1, 3)):
            labels = tuple(awkward(rng) for _ in names)
            for _ in range(rng.randint(1, 4)):
                if m.kind == "counter":
                    updates.append((m.name, labels, "inc", rng.choice([1.0, 0.5, 3.0, 1e6])))
                elif m.kind == "gauge":
                    v = NOW + 7200 if m.name in RESET_TIME_GAUGES else rng.choice([1.0, -2.5, 1e7, math.inf])
                    updates.append((m.name, labels, "set", v))
                else:
                    updates.append((m.name, labels, "observe", rng.choice([0.001, 0.5, 3.0, 7.25, 1000.0, -1.0])))
    # Redis: counters/histograms by HINCRBYFLOAT in a random shard, gauges last write per series.
    pipe = redis_client.pipeline(transaction=False)
    gauge_last: dict[tuple[str, Labels], float] = {}
    for t, (name, labels, op, v) in enumerate(updates):
        shard = rng.randrange(keys.shards)
        s = series_of(labels)
        if op == "inc":
            pipe.hincrbyfloat(key(keys, shard, "c", name), s, repr(v))
        elif op == "set":
            pipe.hset(key(keys, shard, "g", name), s, repr(v))
            pipe.hset(key(keys, shard, "gt", name), s, repr(float(t)))
            gauge_last[(name, labels)] = v
        else:
            b = bisect.bisect_left(ENGINE.upper_bounds(name), v)
            for part, amount in ((f"b{b}", 1), ("s", v), ("c", 1)):
                pipe.hincrbyfloat(key(keys, shard, "h", name), histogram_field(s, part), repr(amount))
    pipe.execute()
    ex = Exposition(redis_client, keys, ENGINE.schema)
    text = ex.render("text", now=NOW)
    om = assemble("openmetrics", ex.render("openmetrics", now=NOW))
    # Children in our output's order, then the updates.
    order = label_order(text)
    for m in ENGINE.config.metrics():
        names = ENGINE.label_names(m.name)
        touched = {labels: None for name, labels, _op, _v in updates if name == m.name}
        for labels in ordered(touched, names, order.get(m.family, [])):
            objects[m.name].labels(*labels)
    for name, labels, op, v in updates:
        child = objects[name].labels(*labels)
        if op == "inc":
            child.inc(v)
        elif op == "observe":
            child.observe(v)
    for (name, labels), v in gauge_last.items():
        objects[name].labels(*labels).set(exported_gauge(name, v))
    assert text == generate_latest(registry)
    assert om == om_exposition.generate_latest(registry)


def test_counter_values_as_hincrbyfloat_stores_them(redis_client: redis.Redis, namespace: str) -> None:
    """Raw stored texts -> floatToGoString of their float: 3 -> 3.0, 1234567 -> 1.234567e+06..."""
    keys = Keys(namespace)
    name = "litellm_spend_metric"
    names = ENGINE.label_names(name)
    raw = ["3", "0.30000000000000004", "1234567", "1e+20", "12345678.5", "0", "5e-324", "100000", "999999.9"]
    model = Model()
    for i, r in enumerate(raw):
        labels = (str(i),) * len(names)
        redis_client.hset(key(keys, 0, "c", name), series_of(labels), r)
        model.counters.setdefault(name, {})[labels] = float(r)
    redis_client.hincrbyfloat(key(keys, 0, "c", name), series_of(("x",) * len(names)), "0.1")
    redis_client.hincrbyfloat(key(keys, 0, "c", name), series_of(("x",) * len(names)), "0.2")
    stored = redis_client.hget(key(keys, 0, "c", name), series_of(("x",) * len(names)))
    assert stored is not None
    model.counters[name][("x",) * len(names)] = float(stored)
    text = Exposition(redis_client, keys, ENGINE.schema).render("text", now=NOW)
    assert text == generate_latest(reference(model, text))
    assert b"} 1.234567e+06\n" in text and b"} 1e+20\n" in text and b"} 3.0\n" in text


def test_multi_shard_merge_and_tombstones(redis_client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace, 3)
    c, g, h = "litellm_requests_metric", "litellm_deployment_state", "litellm_request_total_latency_metric"
    cl = ("v",) * len(ENGINE.label_names(c))
    for shard, amount in ((0, "1"), (1, "2.5"), (2, "4")):
        redis_client.hincrbyfloat(key(keys, shard, "c", c), series_of(cl), amount)
    hl = ("v",) * len(ENGINE.label_names(h))
    for shard in range(3):
        redis_client.hincrbyfloat(key(keys, shard, "h", h), histogram_field(series_of(hl), "b0"), 1)
        redis_client.hincrbyfloat(key(keys, shard, "h", h), histogram_field(series_of(hl), "b17"), 2)
        redis_client.hincrbyfloat(key(keys, shard, "h", h), histogram_field(series_of(hl), "s"), "0.5")
    n = len(ENGINE.label_names(g))

    def gauge(shard: int, labels: Labels, t: float, value: str | None) -> None:
        if value is not None:
            redis_client.hset(key(keys, shard, "g", g), series_of(labels), value)
        redis_client.hset(key(keys, shard, "gt", g), series_of(labels), repr(t))

    newest_value = ("newest value",) * n
    gauge(0, newest_value, 10, "1")
    gauge(1, newest_value, 30, "2")
    gauge(2, newest_value, 20, None)  # an older removal does not hide the newer value
    removed = ("removed later",) * n
    gauge(0, removed, 10, "1")
    gauge(2, removed, 11, None)  # a newer removal in another shard hides it
    readded = ("set after removal",) * n
    gauge(1, readded, 5, None)
    gauge(0, readded, 6, "0")
    tie = ("equal times",) * n
    gauge(0, tie, 7, "1")
    gauge(2, tie, 7, "3")  # on equal times the later shard wins
    untimed = ("no time",) * n
    redis_client.hset(key(keys, 1, "g", g), series_of(untimed), "5")

    text = Exposition(redis_client, keys, ENGINE.schema).render("text", now=NOW).decode()
    parsed = {
        (s.name, s.labels.get("api_base"), s.labels.get("le")): s.value for fam in text_parse(text) for s in fam.samples
    }
    assert parsed[("litellm_requests_metric_total", None, None)] == 7.5
    assert parsed[(f"{h}_bucket", None, "0.005")] == 3
    assert parsed[(f"{h}_bucket", None, "+Inf")] == 9
    assert parsed[(f"{h}_count", None, None)] == 9
    assert parsed[(f"{h}_sum", None, None)] == 1.5
    gauges = {s.labels["model_id"]: s.value for fam in text_parse(text) if fam.name == g for s in fam.samples}
    assert gauges == {"newest value": 2.0, "set after removal": 0.0, "equal times": 3.0, "no time": 5.0}
    # read_families applies the same merge.
    fams = read_families(redis_client, keys, ENGINE.schema)
    assert {k[0]: v[0] for k, v in fams[g].gauges.items()} == gauges
    assert fams[c].samples(NOW) == [
        ("litellm_requests_metric_total", dict(zip(ENGINE.label_names(c), cl, strict=True)), 7.5)
    ]
    [(buckets, total, count)] = fams[h].histograms.values()
    assert (buckets[0], buckets[-1], total, count) == (3.0, 6.0, 1.5, 9.0)


def test_reset_time_gauges_are_hours_from_now(redis_client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    name = "litellm_api_key_budget_remaining_hours_metric"
    labels = ("k", "alias")
    redis_client.hset(key(keys, 0, "g", name), series_of(labels), repr(NOW + 5400))
    ex = Exposition(redis_client, keys, ENGINE.schema)
    assert f'{name}{{api_key_alias="alias",hashed_api_key="k"}} 1.5\n'.encode() in ex.render("text", now=NOW)
    assert f'{name}{{api_key_alias="alias",hashed_api_key="k"}} -0.5\n'.encode() in ex.render("text", now=NOW + 7200)


NAME_SETS = [
    {"litellm_requests_metric_total"},
    {"litellm_requests_metric"},  # a counter's family name is no sample name: nothing
    {"litellm_requests_metric_created"},
    {"litellm_request_total_latency_metric_bucket"},
    {"litellm_request_total_latency_metric_count", "litellm_request_total_latency_metric_sum"},
    {"litellm_request_total_latency_metric"},
    {"litellm_deployment_state", "litellm_total_users", "litellm_spend_metric_total"},
    {"litellm_check_batch_cost_jobs_polled"},
    {"no_such_metric"},
    set(),
]


@pytest.mark.parametrize("names", NAME_SETS, ids=lambda s: ",".join(sorted(s)) or "empty")
def test_name_filter_like_restricted_registry(redis_client: redis.Redis, namespace: str, names: set[str]) -> None:
    rng = random.Random(3)
    keys = Keys(namespace, 2)
    model = random_model(rng, per_metric=2)
    model.counters["litellm_requests_metric"] = {("a",) * len(ENGINE.label_names("litellm_requests_metric")): 2.0}
    model.histograms["litellm_request_total_latency_metric"] = {
        ("h",) * len(ENGINE.label_names("litellm_request_total_latency_metric")): ([1] * 18, 2.25)
    }
    write_model(redis_client, keys, model, rng)
    ex = Exposition(redis_client, keys, ENGINE.schema)
    full = ex.render("text", now=NOW)
    registry = reference(model, full).restricted_registry(names)
    assert ex.render("text", frozenset(names), now=NOW) == generate_latest(registry)
    om = assemble("openmetrics", ex.render("openmetrics", frozenset(names), now=NOW))
    assert om == om_exposition.generate_latest(registry)


def test_label_less_metrics_export_zero_until_set(redis_client: redis.Redis, namespace: str, no_created: None) -> None:
    """With every label of a counter, a histogram and a gauge excluded they become label-less:
    prometheus_client then exports them at 0 right away (LiteLLM's behaviour)."""
    config = MetricsConfig.from_litellm_settings(
        {
            "prometheus_exclude_labels": [
                "callback_name",
                "model",
                "api_provider",
                "litellm_model_name",
                "model_id",
                "api_base",
            ]
        }
    )
    engine = Engine(config)
    label_less = {m.name: m.kind for m in engine.config.metrics() if not engine.label_names(m.name)}
    assert {"counter", "gauge"} <= set(label_less.values()), label_less
    keys = Keys(namespace)
    registry = CollectorRegistry(auto_describe=True)
    objects: dict[str, Any] = {}
    for m in engine.config.metrics():
        names = list(engine.label_names(m.name))
        cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[m.kind]
        kwargs: dict[str, Any] = {"buckets": [*engine.upper_bounds(m.name), math.inf]} if m.kind == "histogram" else {}
        objects[m.name] = cls(m.name, m.documentation, names, registry=registry, **kwargs)
    text = Exposition(redis_client, keys, engine.schema).render("text", now=NOW)
    assert text == generate_latest(registry)
    # Once set, the stored value replaces the zero.
    redis_client.hset(key(keys, 0, "g", "litellm_teams_count", engine), "[]", "4")
    redis_client.hset(key(keys, 0, "gt", "litellm_teams_count", engine), "[]", "1")
    objects["litellm_teams_count"].set(4)
    counter = next(n for n, k in label_less.items() if k == "counter")
    redis_client.hincrbyfloat(key(keys, 0, "c", counter, engine), "[]", 2)
    objects[counter].inc(2)
    text = Exposition(redis_client, keys, engine.schema).render("text", now=NOW)
    assert text == generate_latest(registry)
    assert assemble("openmetrics", Exposition(redis_client, keys, engine.schema).render("openmetrics", now=NOW)) == (
        om_exposition.generate_latest(registry)
    )


def test_read_paths_hscan_and_batched_pipelines(
    redis_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large hashes are read with HSCAN, HGETALLs are batched: same lines as one big read (the
    series order of a scanned hash may differ)."""
    rng = random.Random(11)
    keys = Keys(namespace, 2)
    model = random_model(rng, per_metric=3)
    name = "litellm_total_tokens_metric"
    n = len(ENGINE.label_names(name))
    model.counters[name] = {(f"s{i}",) * n: float(i) for i in range(3000)}
    write_model(redis_client, keys, model, rng)
    expected = Exposition(redis_client, keys, ENGINE.schema).render("text", now=NOW)
    monkeypatch.setattr(exposition, "SCAN_THRESHOLD", 50)
    monkeypatch.setattr(exposition, "SCAN_COUNT", 100)
    monkeypatch.setattr(exposition, "PIPELINE_FIELDS", 40)
    ex = Exposition(redis_client, keys, ENGINE.schema)
    state = ex.read()
    assert state.round_trips > 20
    scanned = ex.render_state(state, "text", now=NOW)
    assert sorted(scanned.splitlines()) == sorted(expected.splitlines())
    assert scanned == generate_latest(reference(model, scanned))
    # Rendering batch by batch while reading (what a scrape does) gives the same lines.
    chunked = ex.render("text", now=NOW)
    assert sorted(chunked.splitlines()) == sorted(expected.splitlines())


def test_max_fields_leaves_the_largest_families_out_whole(redis_client: redis.Redis, namespace: str) -> None:
    rng = random.Random(12)
    keys = Keys(namespace)
    model = random_model(rng, per_metric=3)
    big = "litellm_total_tokens_metric"
    n = len(ENGINE.label_names(big))
    model.counters[big] = {(f"s{i}",) * n: float(i) for i in range(3000)}
    write_model(redis_client, keys, model, rng)
    ex = Exposition(redis_client, keys, ENGINE.schema)
    full = ex.render("text", now=NOW)
    assert ex.omitted == {}
    fields = ex.read().fields
    limited = ex.render("text", now=NOW, max_fields=fields - 1)
    assert ex.omitted == {big: 3000}  # only the largest, whole
    sample = f"{big}_total".encode()
    of_big = (b"# HELP " + sample + b" ", b"# TYPE " + sample + b" ", sample + b"{", sample + b" ")
    assert limited.splitlines() == [line for line in full.splitlines() if not line.startswith(of_big)]
    assert "litellm_total_tokens_metric" not in ex.series_counts
    # Nothing fits: every family with a stored field is left out; the body stays valid.
    nothing = ex.render("text", now=NOW, max_fields=0)
    assert b"litellm_requests_metric_total{" not in nothing and len(ex.omitted) > 1
    assert parsed_samples(text_parse(nothing.decode())) <= parsed_samples(text_parse(full.decode()))
    assert ex.render("text", now=NOW) == full and ex.omitted == {}


def test_label_cache_is_bounded_and_follows_changes(redis_client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    name = "litellm_requests_metric"
    n = len(ENGINE.label_names(name))
    k = key(keys, 0, "c", name)
    for i in range(50):
        redis_client.hset(k, series_of((f"s{i}",) * n), str(i))
    small = Exposition(redis_client, keys, ENGINE.schema, label_cache_size=10)
    big = Exposition(redis_client, keys, ENGINE.schema)
    first = small.render("text", now=NOW)
    assert small.cached_series <= 10
    assert first == big.render("text", now=NOW) == small.render("text", now=NOW)
    assert big.cached_series == 50
    # Removed series leave the cache on the next scrape; changed values show.
    redis_client.delete(k)
    redis_client.hset(k, series_of(("s1",) * n), "5")
    text = big.render("text", now=NOW)
    assert big.cached_series == 1
    assert text.count(b"litellm_requests_metric_total{") == 1 and b"} 5.0\n" in text


def test_malformed_fields_and_values_are_skipped(redis_client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    name = "litellm_requests_metric"
    n = len(ENGINE.label_names(name))
    k = key(keys, 0, "c", name)
    redis_client.hset(k, mapping={"not json": "1", '["too","short"]': "1", series_of(("ok",) * n): "2"})
    redis_client.hset(k, series_of(("bad value",) * n), "x")
    ex = Exposition(redis_client, keys, ENGINE.schema)
    text = ex.render("text", now=NOW)
    assert text.count(b"litellm_requests_metric_total{") == 1
    assert ex.skipped == 3
    assert list(text_parse(text.decode()))


def test_needs_a_bytes_client(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            Exposition(client, Keys("x"), ENGINE.schema)
    finally:
        client.close()


def _promtool() -> str | None:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None)
    if path is None and os.environ.get("LSM_REQUIRE_PROMETHEUS") == "1":
        pytest.fail("promtool not found but LSM_REQUIRE_PROMETHEUS=1 (install the Debian 'prometheus' package)")
    return path


# promtool's lint findings that come from LiteLLM's metric names themselves (kept for
# compatibility with existing dashboards): anything else fails the test.
LITELLM_NAME_LINTS = {
    *(f'{name} use base unit "seconds" instead of "hours"' for name in RESET_TIME_GAUGES),
    'litellm_teams_count non-histogram and non-summary metrics should not have "_count" suffix',
}


def test_promtool_check_metrics(redis_client: redis.Redis, namespace: str) -> None:
    """The text format passes ``promtool check metrics`` (which reads only that format: the
    OpenMetrics output is checked by prometheus_client's strict OpenMetrics parser above)."""
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'); set LSM_REQUIRE_PROMETHEUS=1 to fail")
    rng = random.Random(5)
    keys = Keys(namespace, 2)
    model = random_model(rng, per_metric=3)
    write_model(redis_client, keys, model, rng)
    text = Exposition(redis_client, keys, ENGINE.schema).render("text", now=NOW)
    assert text.count(b"\n") > 500
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    findings = {line.strip() for line in (proc.stdout + proc.stderr).decode().splitlines() if line.strip()}
    assert proc.returncode in (0, 3), findings  # 1: parse error; 3: lint findings only
    assert findings <= LITELLM_NAME_LINTS, findings - LITELLM_NAME_LINTS


ACCEPT = [
    None,
    "",
    "*/*",
    "text/plain",
    "text/plain; version=0.0.4",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",  # Prometheus 3
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",  # Prometheus 2
    "application/openmetrics-text; version=0.0.1",
    "application/json, text/plain; version=1.0.0; escaping=underscores",
    "application/openmetrics-text; version=1.0.0; escaping=values",
]


@pytest.mark.parametrize("accept", ACCEPT)
def test_choose_format_like_choose_encoder(accept: str | None) -> None:
    fmt, content_type = choose_format(accept)
    _encoder, reference_type = prometheus_client.exposition.choose_encoder(accept)
    assert content_type == reference_type
    assert fmt == ("openmetrics" if content_type.startswith("application/openmetrics-text") else "text")


def test_choose_format_differences() -> None:
    """We write OpenMetrics 1.0.0 whatever version >= 1 is asked for, and never apply "dots"."""
    assert choose_format("application/openmetrics-text; version=2.0.0") == (
        "openmetrics",
        "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores",
    )
    assert choose_format("text/plain; version=1.0.0; escaping=dots")[1].endswith("escaping=underscores")


def test_render_registry_concatenates(redis_client: redis.Redis, namespace: str) -> None:
    """Business series + self-metrics + one # EOF parse as one exposition in both formats."""
    registry = CollectorRegistry()
    Counter("lsm_scrapes", "Scrapes served.", registry=registry).inc()
    Gauge("lsm_up", 'Up "yes".\nSecond line \\', registry=registry).set(1)
    keys = Keys(namespace)
    redis_client.hincrbyfloat(
        key(keys, 0, "c", "litellm_requests_metric"),
        series_of(("v",) * len(ENGINE.label_names("litellm_requests_metric"))),
        1,
    )
    ex = Exposition(redis_client, keys, ENGINE.schema)
    for fmt in ("text", "openmetrics"):
        own = render_registry(registry, fmt)
        assert not own.endswith(EOF)
        body = assemble(fmt, ex.render(fmt, now=NOW), own)
        parse = text_parse if fmt == "text" else om_parse
        names = {f.name for f in parse(body.decode())}
        assert {"lsm_scrapes", "lsm_up", "litellm_requests_metric"} <= names
    assert render_registry(registry, "text", ["lsm_up"]) == generate_latest(registry.restricted_registry(["lsm_up"]))
    assert render_registry(registry, "openmetrics") + EOF == om_exposition.generate_latest(registry)


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -0.0,
        1.0,
        0.1,
        1e6,
        999999.0,
        1234567.0,
        1e7,
        12345678.5,
        1e15,
        1e16,
        1e20,
        5e-324,
        -1e20,
        -1234567.0,
        math.inf,
        -math.inf,
        math.nan,
        9.223372036854776e18,
        2**53 + 0.0,
        123456.7891,
    ],
)
def test_go_float_is_float_to_go_string(value: float) -> None:
    assert go_float(value) == floatToGoString(value)


def test_go_float_random() -> None:
    rng = random.Random(1)
    for _ in range(20000):
        v = rng.choice([rng.uniform(-1e9, 1e9), 10 ** rng.uniform(-20, 25), float(rng.randint(0, 10**12))])
        assert go_float(v) == floatToGoString(v)


def test_repeated_label_names_like_prometheus_client(no_created: None) -> None:
    """prometheus_client accepts a repeated label name and keeps the last value (a dict): the
    fallback path does the same, for counters and for histograms (``le`` among the names)."""
    from aggregator.exposition import MetricState, State

    counter, hist = mdef("litellm_requests_metric"), mdef("litellm_guardrail_latency_seconds")
    bounds = ENGINE.upper_bounds(hist.name)
    state = State(
        [
            MetricState(counter, "dup:c", ("b", "a", "b"), (), ({b'["1","x\\"y","3"]': b"4"},)),
            MetricState(
                hist,
                "dup:h",
                ("z", "m", "z"),
                bounds,
                ({b'["1",null,"3"]\x1fb0': b"2", b'["1",null,"3"]\x1fs': b"0.5"},),
            ),
        ]
    )
    registry = CollectorRegistry()
    Counter(counter.name, counter.documentation, ["b", "a", "b"], registry=registry).labels("1", 'x"y', "3").inc(4)
    h = Histogram(hist.name, hist.documentation, ["z", "m", "z"], registry=registry, buckets=[*bounds, math.inf])
    child = h.labels("1", "None", "3")
    child.observe(0.001)
    child.observe(0.001)
    child._sum.set(0.5)
    ex = Exposition(redis.Redis(), Keys("unused"), ENGINE.schema)
    assert ex.render_state(state, "text", now=NOW) == generate_latest(registry)
