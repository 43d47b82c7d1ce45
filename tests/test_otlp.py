"""The OTLP push (aggregator/otlp_push.py) against a real OTLP/HTTP receiver that decodes the
real protobuf (tests/otlp_receiver.py): the same families, names, labels and values as
``/metrics``; cumulative points with one start time and one identity whatever pod sends them;
only the leader pushes; a refused push is counted; real aggregator processes through a leader
SIGKILL never count anything twice."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from aggregator.engine import Engine
from aggregator.exposition import Exposition
from aggregator.leadership import Leadership
from aggregator.litellm_config import MetricsConfig
from aggregator.otlp_push import OtlpPusher
from aggregator.settings import AggregatorConfigError, AggregatorSettings
from producer.keys import Keys
from tests.events import entry_fields
from tests.otlp_receiver import Decoded, Receiver
from tests.support import wait_for
from tests.test_budget_refresh import apply_events
from tests.test_engine import failure, success
from tests.test_prometheus_scrape import TOKEN, Pods, get, leader_name

CUMULATIVE = 2  # opentelemetry.proto.metrics.v1.AggregationTemporality


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def expected_from_metrics(text: str) -> tuple[dict[str, str], dict[tuple[str, tuple[tuple[str, str], ...]], Any]]:
    """(kind by family, series) of a /metrics text, in the receiver's shape (histogram buckets
    per bucket, not cumulative). Label-less series are left out: /metrics shows a zero for a
    label-less metric that has no stored value, OTLP sends stored series only."""
    kinds: dict[str, str] = {}
    series: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
    for fam in text_string_to_metric_families(text):
        kinds[fam.name] = fam.type
        if fam.type == "histogram":
            groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
            for s in fam.samples:
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                g = groups.setdefault(labels, {"buckets": [], "sum": 0.0, "count": 0.0})
                if s.name.endswith("_bucket"):
                    g["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_sum"):
                    g["sum"] = s.value
                elif s.name.endswith("_count"):
                    g["count"] = s.value
            for labels, g in groups.items():
                cumulative = [v for _le, v in sorted(g["buckets"])]
                per_bucket = [int(v - prev) for v, prev in zip(cumulative, [0.0, *cumulative[:-1]], strict=True)]
                series[(fam.name, labels)] = (per_bucket, g["sum"], int(g["count"]))
        else:
            for s in fam.samples:
                if s.name.endswith("_created") or not s.labels:
                    continue
                series[(fam.name, tuple(sorted(s.labels.items())))] = s.value
    return kinds, series


def settings_for(redis_url: str, namespace: str, receiver: Receiver, **kw: Any) -> AggregatorSettings:
    return AggregatorSettings(
        redis_url=redis_url,
        namespace=namespace,
        shards=2,
        consumer_name="otlp-test",
        otlp_endpoint=receiver.url,
        otlp_timeout_seconds=1.0,
        **kw,
    )


async def test_a_push_carries_what_metrics_shows(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str, receiver: Receiver
) -> None:
    settings = settings_for(redis_url, namespace, receiver, otlp_headers="x-api-key=secret-1, x-tenant=t1")
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    events = [
        success(hashed_api_key="k1", api_key_alias="one", response_cost=0.25, latency_total=0.4),
        success(hashed_api_key="k2", api_key_alias="two", response_cost=1.5, latency_total=7.0),
        failure(),
    ]
    for i, event in enumerate(events):
        await apply_events(aclient, namespace, engine, [event], shard=i % 2, seq=i + 1)
    leadership = Leadership(aclient, settings.keys, "otlp-test", 30)
    await leadership.step()
    registry = CollectorRegistry()
    pusher = OtlpPusher(settings, engine.schema, leadership, registry)
    try:
        assert pusher.push_once() == "success"
        text = Exposition(redis_client, Keys(namespace, 2), engine.schema).render("text").decode()
        (push,) = receiver.received()
        assert push.headers["x-api-key"] == "secret-1" and push.headers["x-tenant"] == "t1"
        got = Decoded()
        got.add(push)
        kinds, want = expected_from_metrics(text)
        # The same families (by name), kinds, series, label names and values.
        assert set(got.series) == set(want), set(got.series) ^ set(want)
        for key, value in want.items():
            if isinstance(value, tuple):
                assert got.series[key] == value, key
            else:
                assert got.series[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
        otlp_kind = {"counter": "sum", "gauge": "gauge", "histogram": "histogram"}
        for name, kind in got.kinds.items():
            assert otlp_kind[kinds[name]] == kind, name
            if kind == "sum":
                assert got.monotonic[name] and got.temporality[name] == CUMULATIVE
            if kind == "histogram":
                assert got.temporality[name] == CUMULATIVE
                assert got.bounds[name] == list(engine.schema.upper_bounds(name)), name
        assert "litellm_requests_metric" in got.kinds and "litellm_request_total_latency_metric" in got.kinds
        assert any(n.endswith("_hours_metric") for n in got.kinds)  # a reset-time gauge, in hours
        assert not got.min_max_set
        assert (
            got.descriptions["litellm_requests_metric"]
            == engine.schema.config.metric("litellm_requests_metric").documentation
        )
        # One identity whoever pushes: the namespace, nothing of the pod.
        resource = push.resource()
        assert resource["service.name"] == "litellm-stream-metrics"
        assert resource["service.instance.id"] == f"litellm-stream-metrics:{namespace}"
        assert not {"host.name", "process.pid", "k8s.pod.name"} & set(resource)
        (start,) = got.start_times

        # More traffic, another push: cumulative values go on from the same start time.
        await apply_events(aclient, namespace, engine, [events[0]], shard=1, seq=10)
        assert pusher.push_once() == "success"
        second = Decoded()
        second.add(receiver.received()[-1])
        assert second.start_times == {start}
        requests = [k for k in second.series if k[0] == "litellm_requests_metric" and ("hashed_api_key", "k1") in k[1]]
        assert requests and all(second.series[k] == got.series[k] + 1 for k in requests)

        # Refused by the endpoint: counted, nothing else happens.
        receiver.status = 503
        assert pusher.push_once() == "failure"
        assert registry.get_sample_value("lsm_otlp_pushes_total", {"outcome": "failure"}) == 1
        assert registry.get_sample_value("lsm_otlp_pushes_total", {"outcome": "success"}) == 2
        receiver.status = 200

        # Not the leader any more: no push.
        await leadership.lease.release()
        n = len(receiver.received())
        assert pusher.push_once() == "not_leader" and len(receiver.received()) == n
    finally:
        pusher.close()


def test_bad_otlp_settings_are_named() -> None:
    with pytest.raises(AggregatorConfigError, match="LSM_OTLP_ENDPOINT: an OTLP/HTTP URL"):
        AggregatorSettings.load({"LSM_OTLP_ENDPOINT": "otel-collector:4318"})
    with pytest.raises(AggregatorConfigError, match="part 2 is not key=value") as exc:
        AggregatorSettings.load(
            {"LSM_OTLP_ENDPOINT": "http://c:4318/v1/metrics", "LSM_OTLP_HEADERS": "a=1,Bearer s3cr3t"}
        )
    assert "s3cr3t" not in str(exc.value)


def requests_total(push: Any) -> float:
    d = Decoded()
    d.add(push)
    return sum(v for (name, _labels), v in d.series.items() if name == "litellm_requests_metric")


@pytest.mark.slow
def test_processes_push_exact_totals_through_a_leader_kill(
    redis_client: redis.Redis, redis_url: str, namespace: str, tmp_path: Path, receiver: Receiver
) -> None:
    interval = 0.3
    pods = Pods(
        redis_url,
        namespace,
        tmp_path,
        n=2,
        env={"LSM_OTLP_ENDPOINT": receiver.url, "LSM_OTLP_INTERVAL_SECONDS": str(interval)},
    )
    keys = Keys(namespace)
    try:
        for seq in range(1, 6):
            redis_client.xadd(keys.stream(0), entry_fields("producer-a", seq, [success(t=time.time())] * 10))
        wait_for(lambda: any(requests_total(p) == 50 for p in receiver.received()), 30, what="a push with 50 requests")
        # Two processes run; pushes come from one of them only: about one per interval.
        first = receiver.received()[0].at
        time.sleep(3)
        window = [p for p in receiver.received() if first <= p.at <= first + 3]
        assert len(window) <= 3 / interval + 3, [round(p.at - first, 2) for p in window]

        leader = wait_for(lambda: leader_name(pods), 10, what="a leader")
        pods.procs[leader].send_signal(signal.SIGKILL)
        pods.procs[leader].wait(10)
        for seq in range(6, 11):
            redis_client.xadd(keys.stream(0), entry_fields("producer-a", seq, [success(t=time.time())] * 10))
        wait_for(
            lambda: any(requests_total(p) == 100 for p in receiver.received()), 60, what="a push with 100 requests"
        )

        pushes = receiver.received()
        totals = [requests_total(p) for p in pushes]
        assert totals == sorted(totals) and max(totals) == 100, totals  # never back, never twice
        assert len({tuple(sorted(p.resource().items())) for p in pushes}) == 1
        starts = set()
        for p in pushes:
            d = Decoded()
            d.add(p)
            starts |= d.start_times
        assert len(starts) == 1
        # The survivor's /metrics says the same.
        (survivor,) = [n for n in pods.procs if n != leader]
        port = pods.ports[list(pods.procs).index(survivor)]
        status, body = get(f"http://127.0.0.1:{port}/metrics?name[]=litellm_requests_metric_total", TOKEN)
        assert status == 200
        scraped = sum(
            s.value
            for f in text_string_to_metric_families(body.decode())
            for s in f.samples
            if s.name == "litellm_requests_metric_total"
        )
        assert scraped == 100 and not math.isnan(scraped)
    except BaseException:
        print(pods.logs())
        raise
    finally:
        pods.stop()
