"""Hostile label values against a running aggregator (invariant 7, "Bounded"): a label value
megabytes long, a flood of new label values, end users that LiteLLM would not export, and a
/metrics render that fails or is too big. Each through the real path: events written to the
stream (by the real producer where the event passes its size limit), the aggregator's consumer,
apply script and HTTP server, read back over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.settings import AggregatorSettings
from producer import wire
from producer.emitter import Emitter
from producer.keys import Keys
from producer.wire import encode_event
from tests.events import entry_fields
from tests.support import settings_for
from tests.test_aggregator_crash import _I, synthetic_event
from tests.test_metrics_endpoint import Running, agg_settings, bearer, fetch, until

OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


def event(i: int, **values: Any) -> list[Any]:
    ev = synthetic_event(i)
    for name, value in values.items():
        ev[_I[name]] = value
    return ev


def emit(redis_url: str, namespace: str, events: Sequence[list[Any] | dict[str, Any]]) -> None:
    """Through the real producer."""
    em = Emitter(settings_for(redis_url, namespace))
    for ev in events:
        assert em.offer(encode_event(ev))
    assert em.close()


def xadd(client: redis.Redis, namespace: str, events: Sequence[list[Any]], seq: int = 1) -> None:
    """Straight into the stream, as a producer with a raised LSM_MAX_EVENT_BYTES (or any other
    writer) would: the aggregator must not trust what it reads."""
    fields = entry_fields("hostile-writer", seq, events)
    client.xadd(Keys(namespace).stream(0), fields)  # type: ignore[arg-type]


async def start(settings: AggregatorSettings, litellm_settings: dict[str, Any] | None = None) -> Running:
    from aggregator.daemon import Aggregator

    config = MetricsConfig.from_litellm_settings(litellm_settings or {})
    agg = Aggregator(settings, config, serve_http=True)
    return Running(agg, asyncio.create_task(agg.run()))


def applied(client: redis.Redis, namespace: str) -> int:
    return int(client.hget(Keys(namespace).shard_stats(0), "events_applied") or 0)


async def scrape_when_leader(r: Running, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """The first /metrics answer given as the exporter (lsm_leader 1)."""
    answer: list[tuple[int, bytes]] = []

    def leading() -> bool:
        status, _h, body = fetch(r.url, {**bearer(), **(headers or {})})
        answer[:] = [(status, body)]
        return b"lsm_leader 1.0" in body

    await until(leading, what="leadership")
    return answer[0]


def samples(body: bytes, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name == family:
            return {tuple(sorted(s.labels.items())): s.value for s in fam.samples if s.name.endswith("_total")}
    return {}


def value(body: bytes, family: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name in (family, family + "_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def test_a_megabyte_label_value_is_cut_wherever_it_is_exported(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    big = "A" * (1 << 20)  # the alias is on 40 metrics: 48 MiB of /metrics before the cap
    xadd(redis_client, namespace, [event(0, api_key_alias=big), event(0, api_key_alias=big)])
    agent = "curl/" + "B" * 200_000  # passes the producer's 256 KiB event limit
    emit(redis_url, namespace, [event(2, user_agent=agent), event(3, user_agent=agent + "!")])
    r = await start(agg_settings(redis_url, namespace))
    try:
        await until(lambda: applied(redis_client, namespace) == 4, what="4 events applied")
        status, body = await scrape_when_leader(r)
        assert status == 200
        assert len(body) < 512 * 1024  # was 48 MiB: the long values are gone, not repeated
        assert b"A" * 2000 not in body and b"B" * 2000 not in body
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                assert all(len(v.encode()) <= 1024 for v in s.labels.values()), s
        requests = samples(body, "litellm_requests_metric")
        assert sum(requests.values()) == 4  # nothing lost
        aliases = {dict(k)["api_key_alias"] for k, v in requests.items() if v == 2}
        [alias] = aliases  # the two events with the same 1 MiB alias: one series
        assert alias.startswith("AAAA") and "...#" in alias and len(alias) == 1024
        agents = {dict(k)["user_agent"] for k in requests} - {"None"}
        assert len(agents) == 2  # two 200 KB agents that differ at the end: two series
        assert value(body, "lsm_label_values_truncated", label="api_key_alias") == 2
        assert value(body, "lsm_label_values_truncated", label="user_agent") == 2
    finally:
        await r.stop()


async def test_a_flood_of_new_label_values_is_capped_by_default(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    emit(redis_url, namespace, [event(i, user_agent=f"scanner/{i}") for i in range(300)])
    # LSM_MAX_SERIES_PER_METRIC applies where litellm_settings set no cap...
    r = await start(agg_settings(redis_url, namespace, max_series_per_metric=40))
    try:
        await until(lambda: applied(redis_client, namespace) == 300, what="300 events applied")
        _status, body = await scrape_when_leader(r)
        requests = samples(body, "litellm_requests_metric")
        assert len(requests) == 41 and sum(requests.values()) == 300  # 40 + the "other" series; exact
        other = tuple(sorted((k, "other") for k in dict(next(iter(requests)))))
        assert requests[other] == 260
        assert value(body, "lsm_series_overflow", metric="litellm_requests_metric") == 260
    finally:
        await r.stop()


async def test_a_configured_series_cap_keeps_its_value(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    emit(redis_url, namespace, [event(i, user_agent=f"scanner/{i}") for i in range(300)])
    # ...and a configured one, bigger or smaller, is kept.
    r = await start(
        agg_settings(redis_url, namespace, max_series_per_metric=40),
        {"prometheus_metrics_max_series_per_metric": 100},
    )
    try:
        await until(lambda: applied(redis_client, namespace) == 300, what="300 events applied")
        _status, body = await scrape_when_leader(r)
        requests = samples(body, "litellm_requests_metric")
        assert len(requests) == 101 and sum(requests.values()) == 300
    finally:
        await r.stop()


async def test_end_users_are_exported_only_with_the_aggregators_opt_in(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    # Events that carry end users (as a producer in a proxy with the opt-in sends them), read by
    # an aggregator whose litellm_settings do not opt in: LiteLLM would export end_user="None".
    emit(redis_url, namespace, [event(i, end_user=f"customer-{i}") for i in range(200)])
    r = await start(agg_settings(redis_url, namespace))
    try:
        await until(lambda: applied(redis_client, namespace) == 200, what="200 events applied")
        _status, body = await scrape_when_leader(r)
        requests = samples(body, "litellm_requests_metric")
        assert {dict(k)["end_user"] for k in requests} == {"None"}
        assert sum(requests.values()) == 200
    finally:
        await r.stop()
    # With the opt-in (and LiteLLM's end-user cap, here 50) they are exported.
    r = await start(
        agg_settings(redis_url, namespace, name="a2"),
        {
            "enable_end_user_cost_tracking_prometheus_only": True,
            "prometheus_end_user_metrics_max_series_per_metric": 50,
        },
    )
    try:
        emit(redis_url, namespace, [event(i, end_user=f"customer-{i}") for i in range(200, 300)])
        await until(lambda: applied(redis_client, namespace) == 300, what="300 events applied")
        _status, body = await scrape_when_leader(r)
        users: dict[str, float] = {}
        for k, v in samples(body, "litellm_requests_metric").items():
            users[dict(k)["end_user"]] = users.get(dict(k)["end_user"], 0.0) + v
        # The first 200 (end_user "None"), 50 end users, the other 50 in the overflow series.
        assert len(users) == 1 + 50 + 1 and users["None"] == 200 and users["other"] == 50
        assert sum(users.values()) == 300
    finally:
        await r.stop()


async def test_a_failing_render_still_serves_the_health(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    emit(redis_url, namespace, [event(i) for i in range(20)])
    r = await start(agg_settings(redis_url, namespace))
    try:
        await until(lambda: applied(redis_client, namespace) == 20, what="20 events applied")
        status, body = await scrape_when_leader(r)
        assert status == 200 and value(body, "lsm_render_incomplete") == 0
        # A metric's hash replaced by a string: reading the business series now fails.
        engine = Engine(MetricsConfig.from_litellm_settings({}))
        mkey = engine.metric_key("litellm_spend_metric")
        assert mkey is not None
        key = Keys(namespace).metric(0, "c", mkey)
        redis_client.delete(key)
        redis_client.set(key, "not a hash")
        status, body = await scrape_when_leader(r)
        assert status == 200  # was 503, which hid the health too
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert not {n for n in names if n.startswith("litellm_")}  # nothing of a render that failed half-way
        assert value(body, "lsm_render_incomplete") == 1
        assert (value(body, "lsm_render_errors", reason="error") or 0) >= 1
        assert value(body, "lsm_stream_length", shard="0") is not None  # the shared health too
        status, om = await scrape_when_leader(r, OPENMETRICS)
        assert status == 200 and om.endswith(b"# EOF\n")
        assert any(f.name == "lsm_render_incomplete" for f in parse_openmetrics(om.decode()))
    finally:
        await r.stop()


async def test_families_over_the_render_budget_are_left_out_whole(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    state = {"kind": wire.DEPLOYMENT_STATE, "t": 1.7e9, "state": 2, "litellm_model_name": "m", "model_id": "d"}
    emit(redis_url, namespace, [event(i, hashed_api_key=f"{i:064x}") for i in range(100)] + [state])
    r = await start(agg_settings(redis_url, namespace, render_max_fields=50))
    try:
        await until(lambda: applied(redis_client, namespace) == 101, what="101 events applied")
        status, body = await scrape_when_leader(r)
        assert status == 200
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "litellm_requests_metric" not in names and "litellm_spend_metric" not in names
        assert value(body, "litellm_deployment_state", litellm_model_name="m") == 2  # small families stay
        assert value(body, "lsm_render_omitted_fields", metric="litellm_requests_metric") == 100
        assert value(body, "lsm_render_incomplete") == 1
        assert value(body, "lsm_render_errors", reason="too_large") == 1
        status, om = await scrape_when_leader(r, OPENMETRICS)
        assert status == 200
        assert {f.name for f in parse_openmetrics(om.decode())} >= {"litellm_deployment_state", "lsm_leader"}
    finally:
        await r.stop()
