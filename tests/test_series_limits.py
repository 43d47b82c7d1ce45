"""Series caps with an overflow series and idle-series retirement (DESIGN invariant 7), applied by
the real apply script against real Redis: totals stay exact whatever is capped or retired."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from aggregator.apply import PendingEntry, ShardApplier
from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.series_limits import Limit, MetricLimits, build_limits, retire_idle
from aggregator.state import SEP, Delta, decode_series, encode_series
from producer.keys import Keys
from producer.wire import decode_entry
from tests.events import entry_fields

GROUP = "aggregators"
COUNTER = "litellm_requests_metric"
HISTOGRAM = "litellm_request_total_latency_metric"
GAUGE = "litellm_remaining_team_budget_metric"


def engine_with(**settings: Any) -> Engine:
    return Engine(MetricsConfig.from_litellm_settings(settings))


def series(engine: Engine, name: str, **values: str) -> str:
    return encode_series([values.get(label, "None") for label in engine.label_names(name)])


class Harness:
    """Applies hand-made deltas through the real apply script, one stream entry per delta."""

    def __init__(self, engine: Engine, aclient: aioredis.Redis, client: redis.Redis, namespace: str) -> None:
        self.engine = engine
        self.keys = Keys(namespace)
        self.client = client
        self.aclient = aclient
        self.limits: dict[str, MetricLimits] = build_limits(engine.schema, 0)
        self.applier = ShardApplier(aclient, self.keys, 0, GROUP, "c1")
        self.applier.limits = self.limits
        self.seq = 0
        client.xgroup_create(self.keys.stream(0), GROUP, id="0", mkstream=True)

    def mkey(self, name: str) -> str:
        mkey = self.engine.metric_key(name)
        assert mkey is not None
        return mkey

    async def apply(self, build: Callable[[Delta], None], now: float | None = None) -> None:
        self.seq += 1
        fields = entry_fields("p1", self.seq, [{"kind": "x", "t": 0}])
        self.client.xadd(self.keys.stream(0), fields)  # type: ignore[arg-type]
        raw: Any = await self.aclient.xreadgroup(GROUP, "c1", {self.keys.stream(0): ">"}, count=10)
        batch = [PendingEntry(i.decode(), "p1", e.seq, e.events) for i, f in raw[0][1] for e in [decode_entry(f)]]

        def delta(_entries: Sequence[PendingEntry]) -> Delta:
            d = Delta()
            build(d)
            return d

        await self.applier.apply(batch, [], delta, time.time() if now is None else now)

    def counters(self, name: str) -> dict[tuple[str | None, ...], float]:
        raw = self.client.hgetall(self.keys.metric(0, "c", self.mkey(name)))
        return {tuple(decode_series(k)): float(v) for k, v in raw.items()}

    def histogram_counts(self, name: str) -> dict[tuple[str | None, ...], float]:
        raw = self.client.hgetall(self.keys.metric(0, "h", self.mkey(name)))
        out = {}
        for k, v in raw.items():
            s, _, part = k.decode().rpartition(SEP)
            if part == "c":
                out[tuple(decode_series(s))] = float(v)
        return out

    def stats(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(self.keys.shard_stats(0)).items()}


def other(engine: Engine, name: str) -> tuple[str, ...]:
    return tuple("other" for _ in engine.label_names(name))


async def test_counter_cap_folds_the_rest_into_the_overflow_series(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    e = engine_with(prometheus_metrics_max_series_per_metric=3)
    h = Harness(e, aclient, redis_client, namespace)
    mkey = h.mkey(COUNTER)
    for i in range(1, 11):
        await h.apply(lambda d, i=i: d.inc(mkey, series(e, COUNTER, team=f"t{i}"), float(i)))
    got = h.counters(COUNTER)
    assert len(got) == 4  # the cap plus the overflow series
    assert got[other(e, COUNTER)] == sum(range(4, 11))
    assert sum(got.values()) == sum(range(1, 11))  # nothing lost, nothing added
    # An admitted series keeps counting in place.
    await h.apply(lambda d: d.inc(mkey, series(e, COUNTER, team="t2"), 5.0))
    assert h.counters(COUNTER)[tuple(decode_series(series(e, COUNTER, team="t2")))] == 7.0
    assert h.stats()[f"series_overflow:{COUNTER}"] == 7


async def test_histogram_cap_and_gauges_dropped_past_the_cap(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    e = engine_with(prometheus_metrics_max_series_per_metric=2)
    h = Harness(e, aclient, redis_client, namespace)
    hkey, gkey = h.mkey(HISTOGRAM), h.mkey(GAUGE)
    bounds = e.upper_bounds(HISTOGRAM)
    for i in range(5):
        await h.apply(lambda d, i=i: d.observe(hkey, series(e, HISTOGRAM, team=f"t{i}"), bounds, 0.5 + i))
        await h.apply(lambda d, i=i: d.set_gauge(gkey, series(e, GAUGE, team=f"t{i}"), 100.0 + i, float(i)))
    counts = h.histogram_counts(HISTOGRAM)
    assert len(counts) == 3 and counts[other(e, HISTOGRAM)] == 3 and sum(counts.values()) == 5
    gauges = redis_client.hgetall(h.keys.metric(0, "g", gkey))
    assert len(gauges) == 2  # LiteLLM drops gauge series past the cap
    assert h.stats()[f"series_dropped:{GAUGE}"] == 3


async def test_idle_series_retire_into_the_overflow_series_and_free_their_slot(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    e = engine_with(prometheus_metrics_max_series_per_metric=2, prometheus_metrics_ttl_seconds=60)
    h = Harness(e, aclient, redis_client, namespace)
    mkey = h.mkey(COUNTER)
    now = time.time()
    await h.apply(lambda d: d.inc(mkey, series(e, COUNTER, team="old"), 4.0), now=now - 120)
    await h.apply(lambda d: d.inc(mkey, series(e, COUNTER, team="live"), 3.0), now=now)
    # Full: a third series overflows.
    await h.apply(lambda d: d.inc(mkey, series(e, COUNTER, team="new"), 2.0), now=now)
    assert h.counters(COUNTER)[other(e, COUNTER)] == 2.0
    retired = await retire_idle(aclient, h.keys, 0, h.limits, now=now)
    assert retired == 1
    got = h.counters(COUNTER)
    assert ("old",) not in {(v[e.label_names(COUNTER).index("team")],) for v in got}
    assert got[other(e, COUNTER)] == 6.0  # the retired total moved, the sum is unchanged
    assert sum(got.values()) == 9.0
    # Its slot is free again: the next new series is admitted.
    await h.apply(lambda d: d.inc(mkey, series(e, COUNTER, team="next"), 1.0), now=now)
    assert h.counters(COUNTER)[tuple(decode_series(series(e, COUNTER, team="next")))] == 1.0


async def test_retirement_spares_a_series_updated_meanwhile(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    e = engine_with(prometheus_metrics_ttl_seconds=60)
    h = Harness(e, aclient, redis_client, namespace)
    mkey = h.mkey(COUNTER)
    now = time.time()
    await h.apply(lambda d: d.inc(mkey, series(e, COUNTER, team="a"), 1.0), now=now - 120)
    await h.apply(lambda d: d.inc(mkey, series(e, COUNTER, team="a"), 1.0), now=now)
    assert await retire_idle(aclient, h.keys, 0, h.limits, now=now) == 0
    assert sum(h.counters(COUNTER).values()) == 2.0 and len(h.counters(COUNTER)) == 1


async def test_end_user_series_have_their_own_cap(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    e = engine_with(
        enable_end_user_cost_tracking_prometheus_only=True,
        prometheus_end_user_metrics_max_series_per_metric=2,
    )
    h = Harness(e, aclient, redis_client, namespace)
    mkey = h.mkey(COUNTER)
    for i in range(4):
        await h.apply(lambda d, i=i: d.inc(mkey, series(e, COUNTER, end_user=f"u{i}"), 1.0))
    for i in range(4):  # series without an end user are not limited by the end-user cap
        await h.apply(lambda d, i=i: d.inc(mkey, series(e, COUNTER, team=f"t{i}"), 1.0))
    got = h.counters(COUNTER)
    assert len(got) == 2 + 1 + 4
    assert got[other(e, COUNTER)] == 2.0 and sum(got.values()) == 8.0


async def test_no_limits_configured_writes_no_index(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    e = engine_with()
    h = Harness(e, aclient, redis_client, namespace)
    assert h.limits == {}  # end-user limits only apply with end-user tracking on
    mkey = h.mkey(COUNTER)
    await h.apply(lambda d: d.inc(mkey, series(e, COUNTER, team="a"), 1.0))
    assert not redis_client.exists(h.keys.metric(0, "ix", mkey))


# -- default caps (LSM_MAX_SERIES_PER_METRIC) -----------------------------------------------------


def test_metrics_with_client_chosen_labels_have_the_default_cap() -> None:
    e = engine_with()
    limits = build_limits(e.schema, 20_000)
    client_chosen = {"user_agent", "client_ip", "route", "mcp_tool_name", "mcp_server_name"}
    expected = {m.name for m in e.config.metrics() if client_chosen & set(m.labels)}
    assert {ml.name for ml in limits.values()} == expected
    assert {COUNTER, "litellm_proxy_total_requests_metric", "litellm_mcp_tool_calls_total"} <= expected
    assert "litellm_total_tokens_metric" not in expected and HISTOGRAM not in expected
    assert {(ml.general, ml.end_user) for ml in limits.values()} == {(Limit("ix", 20_000, None), None)}
    assert build_limits(e.schema, 0) == {}  # 0: no default cap (LiteLLM's behaviour)
    # Custom metadata labels come from the request's metadata: their metrics are capped too.
    custom = engine_with(custom_prometheus_metadata_labels=["metadata.tenant"])
    capped = {ml.name for ml in build_limits(custom.schema, 20_000).values()}
    assert {"litellm_total_tokens_metric", HISTOGRAM} <= capped


def test_a_configured_cap_is_kept_and_applies_to_every_metric() -> None:
    def limits(**settings: Any) -> dict[str, tuple[Limit | None, Limit | None]]:
        return {
            ml.name: (ml.general, ml.end_user) for ml in build_limits(engine_with(**settings).schema, 20_000).values()
        }

    # A configured cap wins, bigger or smaller than the default, with its TTL, on every metric.
    for cap in (500, 90_000):
        got = limits(prometheus_metrics_max_series_per_metric=cap, prometheus_metrics_ttl_seconds=60)
        assert got[COUNTER] == got[HISTOGRAM] == (Limit("ix", cap, 60.0), None)
    # A TTL alone: the default cap where it applies, the TTL everywhere.
    got = limits(prometheus_metrics_ttl_seconds=60)
    assert got[COUNTER] == (Limit("ix", 20_000, 60.0), None) and got[HISTOGRAM] == (Limit("ix", 0, 60.0), None)
    # A cap LiteLLM ignores (not a whole number > 0) is no cap: the default applies.
    assert limits(prometheus_metrics_max_series_per_metric=0)[COUNTER] == (Limit("ix", 20_000, None), None)
    # With end-user tracking, series with an end user keep LiteLLM's end-user cap and TTL...
    got = limits(enable_end_user_cost_tracking_prometheus_only=True)
    assert got[COUNTER] == (Limit("ix", 20_000, None), Limit("ixe", 10_000, 3600.0))
    assert got[HISTOGRAM] == (None, Limit("ixe", 10_000, 3600.0))
    # ...and without it (switched off) the end user is a client-chosen label like the others.
    got = limits(
        enable_end_user_cost_tracking_prometheus_only=True,
        prometheus_end_user_metrics_max_series_per_metric=0,
        prometheus_end_user_metrics_ttl_seconds=None,
    )
    assert got[HISTOGRAM] == (Limit("ix", 20_000, None), None)


async def test_the_default_cap_folds_new_series_into_the_overflow_series(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    e = engine_with()
    h = Harness(e, aclient, redis_client, namespace)
    h.limits = h.applier.limits = build_limits(e.schema, 3)
    mkey = h.mkey(COUNTER)
    for i in range(1, 8):
        await h.apply(lambda d, i=i: d.inc(mkey, series(e, COUNTER, user_agent=f"scanner/{i}"), 1.0))
    got = h.counters(COUNTER)
    assert len(got) == 4 and got[other(e, COUNTER)] == 4.0 and sum(got.values()) == 7.0
    assert h.stats()[f"series_overflow:{COUNTER}"] == 4
