"""Producer -> Redis -> aggregator, end to end with real LiteLLM calls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import litellm
import orjson
import pytest
import redis

from aggregator.daemon import Aggregator
from aggregator.settings import AggregatorSettings
from aggregator.snapshot import read_families
from producer.callback import StreamMetricsLogger
from producer.keys import Keys
from tests.support import settings_for, wait_for

KEY = "sk-e2e-test-key-0001"


@pytest.fixture
def logger(redis_url: str, namespace: str) -> Iterator[StreamMetricsLogger]:
    lg = StreamMetricsLogger(settings=settings_for(redis_url, namespace))
    # LiteLLM copies ``callbacks`` into ``_async_success_callback`` and friends (one logger per
    # type): restore every list, or the next test's logger is never called.
    saved = {
        name: list(value)
        for name, value in vars(litellm).items()
        if isinstance(value, list) and name.endswith(("callback", "callbacks"))
    }
    litellm.callbacks = [lg]
    try:
        yield lg
    finally:
        for name, value in saved.items():
            setattr(litellm, name, value)
        lg.close()


async def drive(redis_url: str, namespace: str, until_events: int) -> Aggregator:
    agg = Aggregator(AggregatorSettings(redis_url=redis_url, namespace=namespace, consumer_name="e2e"))
    task = asyncio.create_task(agg.run())
    client = redis.Redis.from_url(redis_url)

    def applied() -> bool:
        raw = client.hget(Keys(namespace).shard_stats(0), "events_applied")
        return raw is not None and int(raw) >= until_events

    await asyncio.to_thread(wait_for, applied, 20)
    agg.stop.set()
    await asyncio.wait_for(task, 10)
    client.close()
    return agg


async def test_success_and_failure_become_litellm_metrics(
    logger: StreamMetricsLogger, redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    md = {"user_api_key_hash": KEY, "user_api_key_alias": "e2e-key", "user_api_key_team_id": "team-e2e"}
    await litellm.acompletion(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], mock_response="hello there", metadata=md
    )
    with pytest.raises(litellm.RateLimitError):
        await litellm.acompletion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            metadata=md,
            mock_response=litellm.RateLimitError("slow down", llm_provider="openai", model="gpt-4o-mini"),
        )
    await asyncio.to_thread(wait_for, lambda: logger.emitter.counters.accepted >= 2, 10)
    assert logger.close()
    agg = await drive(redis_url, namespace, 2)
    fams = read_families(redis_client, Keys(namespace), agg.schema)
    requests = fams["litellm_requests_metric"].samples(0)
    assert len(requests) == 1
    name, labels, value = requests[0]
    assert name == "litellm_requests_metric_total" and value == 1.0
    assert labels["team"] == "team-e2e" and labels["api_key_alias"] == "e2e-key"
    assert labels["hashed_api_key"] != KEY and len(labels["hashed_api_key"]) == 64
    assert labels["end_user"] == "None" and labels["model"] == "gpt-4o-mini"
    tokens = {s[0]: s[2] for s in fams["litellm_total_tokens_metric"].samples(0)}
    assert tokens["litellm_total_tokens_metric_total"] > 0
    failed = fams["litellm_llm_api_failed_requests_metric"].samples(0)
    assert [s[2] for s in failed] == [1.0]
    latency = {s[0]: s[2] for s in fams["litellm_request_total_latency_metric"].samples(0) if s[0].endswith("_count")}
    assert latency == {"litellm_request_total_latency_metric_count": 1.0}


async def test_label_schemas_are_recorded(redis_url: str, namespace: str, redis_client: redis.Redis) -> None:
    agg = Aggregator(AggregatorSettings(redis_url=redis_url, namespace=namespace, consumer_name="schemas"))
    await agg.consumers[0].ensure_group()
    await agg.client.aclose()
    schemas = redis_client.hgetall(Keys(namespace).schemas(0))
    mkey = agg.engine.metric_key("litellm_requests_metric")
    assert mkey is not None
    assert orjson.loads(schemas[mkey.encode()]) == list(agg.engine.label_names("litellm_requests_metric"))
    assert len(schemas) == len(agg.config.metrics())
