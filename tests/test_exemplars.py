"""Exemplars: the producer ships the request's trace id (an OpenTelemetry span, the traceparent
header, or LiteLLM's own trace id), the apply path keeps the newest per series (never for a
series the cap sent to the overflow series; a retired series loses its own), and the
OpenMetrics exposition carries them on the ``_total`` and ``_bucket`` lines; a real Prometheus
with exemplar storage stores them."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from aggregator.engine import Engine
from aggregator.exposition import Exposition
from aggregator.litellm_config import MetricsConfig
from aggregator.series_limits import build_limits, retire_idle
from producer import events, wire
from producer.keys import Keys
from tests.events import entry_fields
from tests.support import prometheus_tool, wait_for
from tests.test_budget_refresh import apply_events
from tests.test_engine import success
from tests.test_prometheus_scrape import Pods, Prometheus, get

TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"


# -- the producer --------------------------------------------------------------------------------


def test_the_trace_id_is_taken_as_litellm_s_otel_callback_takes_its_parent() -> None:
    span = TracerProvider().get_tracer("t").start_span("request")
    want = format(span.get_span_context().trace_id, "032x")
    traceparent = f"00-{TRACE_A}-00f067aa0ba902b7-01"
    slp = {"trace_id": "litellm-trace-1"}
    both = {
        "litellm_params": {
            "metadata": {"litellm_parent_otel_span": span},
            "proxy_server_request": {"headers": {"traceparent": traceparent}},
        },
        "standard_logging_object": slp,
    }
    assert events.trace_id(both) == want  # the span first
    in_litellm_metadata = {"litellm_params": {"litellm_metadata": {"litellm_parent_otel_span": span}}}
    assert events.trace_id(in_litellm_metadata) == want
    header = {"litellm_params": {"proxy_server_request": {"headers": {"traceparent": traceparent}}}}
    assert events.trace_id(header) == TRACE_A
    in_metadata_headers = {"litellm_params": {"metadata": {"headers": {"traceparent": traceparent.upper()}}}}
    assert events.trace_id(in_metadata_headers) == TRACE_A
    assert events.trace_id({"standard_logging_object": slp}) == "litellm-trace-1"
    # Not a trace: an all-zero trace id, a malformed header, no SLP id.
    zero = {"litellm_params": {"proxy_server_request": {"headers": {"traceparent": f"00-{'0' * 32}-{'1' * 16}-01"}}}}
    assert events.trace_id(zero) is None
    assert events.trace_id({"litellm_params": {"proxy_server_request": {"headers": {"traceparent": "junk"}}}}) is None
    assert events.trace_id({"litellm_params": {"metadata": {"litellm_parent_otel_span": object()}}}) is None
    assert events.trace_id({}) is None


def test_the_trace_id_travels_at_the_end_of_a_success_event() -> None:
    positional: list[Any] = [wire.SUCCESS, time.time(), *[None] * (len(wire.SUCCESS_FIELDS) - 3), TRACE_A]
    assert wire.SUCCESS_FIELDS[-1] == "trace_id"

    def decoded(event: list[Any]) -> dict[str, Any]:
        entry = wire.encode_entry("p", 1, [wire.encode_event(event)], time.time())
        return wire.decode_entry({k.encode(): v for k, v in entry.items()}).events[0]

    assert decoded(positional)["trace_id"] == TRACE_A
    # A 2.2 producer's event (one field shorter) still decodes, without one.
    assert decoded(positional[:-1])["trace_id"] is None


# -- the aggregator --------------------------------------------------------------------------------


def exemplars_of(text: str, family: str) -> list[tuple[str, dict[str, str], Any]]:
    """(sample name, labels, exemplar) of every sample of ``family`` that has one."""
    out = []
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            out += [(s.name, s.labels, s.exemplar) for s in fam.samples if s.exemplar is not None]
    return out


async def test_the_newest_exemplar_of_each_series_in_openmetrics(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace, 2)
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    t = time.time()
    old = success(t=t - 10, trace_id=TRACE_A, latency_total=0.3, latency_queue=None, response_cost=0.5)
    new = success(t=t, trace_id=TRACE_B, latency_total=4.0, latency_queue=None, response_cost=0.25)
    untraced = success(t=t + 5, latency_total=0.1, latency_queue=None)
    await apply_events(aclient, namespace, engine, [new], shard=1, seq=1)
    await apply_events(aclient, namespace, engine, [old, untraced], shard=0, seq=2)  # applied later, older trace
    text = Exposition(redis_client, keys, engine.schema).render("openmetrics").decode() + "# EOF\n"

    (requests,) = exemplars_of(text, "litellm_requests_metric")
    assert requests[0] == "litellm_requests_metric_total"
    assert requests[2].labels == {"trace_id": TRACE_B} and requests[2].value == 1.0
    assert float(requests[2].timestamp) == pytest.approx(t, abs=0.001)
    (spend,) = exemplars_of(text, "litellm_spend_metric")
    assert spend[2].labels == {"trace_id": TRACE_B} and spend[2].value == 0.25
    (latency,) = exemplars_of(text, "litellm_request_total_latency_metric")
    assert latency[0] == "litellm_request_total_latency_metric_bucket" and latency[2].value == 4.0
    bounds = engine.schema.upper_bounds("litellm_request_total_latency_metric")
    assert float(latency[1]["le"]) == min(b for b in bounds if b >= 4.0)  # the bucket it was counted in
    # Other metrics have none; the text format 0.0.4 has none at all.
    assert not exemplars_of(text, "litellm_total_tokens_metric")
    assert b" # {" not in Exposition(redis_client, keys, engine.schema).render("text")


async def test_a_batch_with_many_exemplars_of_one_metric(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    """More exemplars of one metric than one HSET takes (the script writes them in parts)."""
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    t = time.time()
    batch = [success(t=t, user=f"user-{i}", trace_id=f"trace-{i}") for i in range(1200)]
    await apply_events(aclient, namespace, engine, batch)
    stored = redis_client.hgetall(Keys(namespace).metric(0, "x", engine.metric_key("litellm_requests_metric") or ""))
    assert len(stored) == 1200
    assert {json.loads(v)[0] for v in stored.values()} == {f"trace-{i}" for i in range(1200)}


async def test_exemplars_stay_within_the_series_caps(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    engine = Engine(MetricsConfig.from_litellm_settings({"prometheus_metrics_ttl_seconds": 60}))
    limits = build_limits(engine.schema, 1)  # one series per metric with a client-chosen label
    mkey = engine.metric_key("litellm_requests_metric")
    assert mkey in limits, "litellm_requests_metric has the client's user agent and IP"
    first = success(t=time.time(), trace_id=TRACE_A, client_ip="10.0.0.1")
    second = success(t=time.time(), trace_id=TRACE_B, client_ip="10.0.0.2")  # over the cap: overflow
    await apply_events(aclient, namespace, engine, [first], 0, 1, limits=limits)
    await apply_events(aclient, namespace, engine, [second], 0, 2, limits=limits)
    stored = redis_client.hgetall(keys.metric(0, "x", mkey or ""))
    assert len(stored) == 1 and json.loads(next(iter(stored.values())))[0] == TRACE_A
    # The series retires (idle past its TTL): its exemplar goes with it.
    await retire_idle(aclient, keys, 0, limits, now=time.time() + 10 * 86400)
    assert redis_client.hlen(keys.metric(0, "x", mkey or "")) == 0


@pytest.mark.slow
def test_prometheus_stores_the_exemplars(
    redis_client: redis.Redis, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    prometheus_binary = prometheus_tool("prometheus")
    pods = Pods(redis_url, namespace, tmp_path, n=1)
    prom = None
    try:
        prom = Prometheus(prometheus_binary, tmp_path, pods.targets(), flags=["--enable-feature=exemplar-storage"])
        keys = Keys(namespace)
        redis_client.xadd(keys.stream(0), entry_fields("p", 1, [success(t=time.time(), trace_id=TRACE_A)]))
        assert prom is not None
        server = prom

        def stored() -> list[dict[str, Any]]:
            now = time.time()
            query = urllib.parse.urlencode(
                {"query": "litellm_requests_metric_total", "start": now - 600, "end": now + 60}
            )
            status, body = get(f"{server.url}/api/v1/query_exemplars?{query}")
            data = json.loads(body)
            assert status == 200 and data["status"] == "success", data
            return [e for series in data["data"] for e in series["exemplars"]]

        found = wait_for(stored, 60, what="an exemplar stored by Prometheus")
        assert found[0]["labels"] == {"trace_id": TRACE_A} and float(found[0]["value"]) == 1.0
    except BaseException:
        print(pods.logs())
        raise
    finally:
        pods.stop()
        if prom is not None:
            prom.stop()
