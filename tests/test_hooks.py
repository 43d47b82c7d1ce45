"""Every hook and direct method of the callback, driven by real LiteLLM, checked in Redis.

Each test builds its own ``StreamMetricsLogger`` on a fresh namespace, installs it in
``litellm.callbacks`` (restored afterwards, with every other LiteLLM callback list), makes
LiteLLM call it, and reads the events back from the real Redis stream. Nothing is mocked:
upstream calls use LiteLLM's own ``mock_response`` or a local HTTP server that answers 429.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import litellm
import pytest
import redis

from producer import wire
from producer.callback import GUARDED_METHODS, StreamMetricsLogger
from tests.support import latency_of, producer_stats, read_events, settings_for

PrometheusLogger = litellm.integrations.prometheus.PrometheusLogger

RAW_KEY = "sk-live-1234567890abcdefTESTKEY"
RAW_KEY_HASH = hashlib.sha256(RAW_KEY.encode()).hexdigest()
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hello there"}]

# What the proxy puts in the request metadata after auth (raw key on purpose: the producer
# must hash it; LiteLLM's own logger would put it verbatim in hashed_api_key).
PROXY_METADATA = {
    "user_api_key_hash": RAW_KEY,
    "user_api_key_alias": "checkout-key",
    "user_api_key_team_id": "team-42",
    "user_api_key_team_alias": "Checkout Team",
    "user_api_key_user_id": "user-7",
    "user_api_key_user_email": "dev@example.com",
    "user_api_key_org_id": "org-3",
    "user_api_key_org_alias": "Example Org",
    "user_api_key_request_route": "/chat/completions",
    "requester_ip_address": "10.1.2.3",
    "user_agent": "curl/8.5.0",
}
IDENTITY = {
    "hashed_api_key": RAW_KEY_HASH,
    "api_key_alias": "checkout-key",
    "team": "team-42",
    "team_alias": "Checkout Team",
    "user": "user-7",
}


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _proxy_server_imported() -> None:
    """LiteLLM's ``requested_model`` bounding imports ``litellm.proxy.proxy_server`` on first use
    (5-10 s here). Import it once up front so no hook pays for it inside a bounded wait."""
    import litellm.proxy.proxy_server  # noqa: F401


def _callback_lists() -> dict[str, list[Any]]:
    return {
        name: list(value)
        for name, value in vars(litellm).items()
        if isinstance(value, list) and (name.endswith("callback") or name.endswith("callbacks"))
    }


@pytest.fixture
def litellm_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore every LiteLLM callback list (LiteLLM copies ``callbacks`` into
    ``_async_success_callback`` and friends) and pin the knobs the events depend on."""
    from litellm.proxy import proxy_server

    saved = _callback_lists()
    monkeypatch.setattr(litellm, "custom_prometheus_metadata_labels", [])
    monkeypatch.setattr(litellm, "custom_prometheus_tags", [])
    monkeypatch.setattr(litellm, "enable_end_user_cost_tracking_prometheus_only", None)
    monkeypatch.setattr(litellm, "disable_end_user_cost_tracking", None)
    # No proxy router loaded: client-supplied requested_model values collapse to "other".
    monkeypatch.setattr(proxy_server, "llm_router", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(litellm, name, value)


@pytest.fixture
def logger(redis_url: str, namespace: str, litellm_state: None) -> Iterator[StreamMetricsLogger]:
    lg = StreamMetricsLogger(settings=settings_for(redis_url, namespace))
    litellm.callbacks = [lg]
    try:
        yield lg
    finally:
        lg.close()


def of_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


async def wait_events(
    client: redis.Redis,
    namespace: str,
    predicate: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 15.0,
) -> list[dict[str, Any]]:
    """Poll the stream without blocking the event loop (LiteLLM's callbacks run on it)."""
    deadline = time.monotonic() + timeout
    while True:
        events = read_events(client, namespace)
        if predicate(events):
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"events not there within {timeout} s; got {events!r}")
        await asyncio.sleep(0.02)


def kinds_at_least(**counts: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: all(len(of_kind(events, k)) >= n for k, n in counts.items())


async def finish(lg: StreamMetricsLogger, client: redis.Redis, namespace: str) -> list[dict[str, Any]]:
    """Let late callbacks run, flush everything, and return what reached Redis."""
    await asyncio.sleep(0.1)
    assert lg.close(), "the emitter could not flush everything"
    return read_events(client, namespace)


def expected_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    info = litellm.model_cost[model]
    return float(prompt_tokens * info["input_cost_per_token"] + completion_tokens * info["output_cost_per_token"])


def assert_identity(ev: dict[str, Any]) -> None:
    for name, value in IDENTITY.items():
        assert ev[name] == value, (name, ev)


def counters(lg: StreamMetricsLogger) -> dict[str, int]:
    snap = lg.emitter.snapshot()
    return {
        "accepted": snap["events_accepted"],
        "skipped": snap["events_skipped"],
        "extract_error": snap["events_dropped_extract_error"],
    }


# -- 1. success through litellm.acompletion ---------------------------------------------------------


async def test_acompletion_success_event(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    before = time.time()
    t0 = time.perf_counter()
    response = await litellm.acompletion(
        model=MODEL, messages=MESSAGES, mock_response="hi, how can I help?", metadata=dict(PROXY_METADATA)
    )
    elapsed = time.perf_counter() - t0
    await wait_events(redis_client, namespace, kinds_at_least(success=1))
    events = await finish(logger, redis_client, namespace)

    assert [e["kind"] for e in events] == ["success"]
    ev = events[0]
    assert ev["model"] == MODEL
    assert ev["api_provider"] == "openai"
    usage = response.usage
    assert (ev["prompt_tokens"], ev["completion_tokens"], ev["total_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
    )
    assert ev["total_tokens"] == ev["prompt_tokens"] + ev["completion_tokens"] > 0
    assert ev["response_cost"] == pytest.approx(response._hidden_params["response_cost"])
    assert ev["response_cost"] == pytest.approx(expected_cost(MODEL, usage.prompt_tokens, usage.completion_tokens))
    assert ev["response_cost"] > 0
    assert ev.get("stream") is not True

    lat = latency_of(ev)
    assert "ttft" not in lat
    assert 0 < lat["total"] <= elapsed + 0.05
    assert 0 <= lat["api"] <= lat["total"]
    assert lat["per_token_basis"] == pytest.approx(lat["total"], abs=0.05)
    assert before - 1 <= ev["t"] <= time.time() + 1

    assert_identity(ev)
    assert ev["user_email"] == "dev@example.com"
    assert ev["org_id"] == "org-3"
    assert ev["org_alias"] == "Example Org"
    assert ev["route"] == "/chat/completions"
    assert ev["client_ip"] == "10.1.2.3"
    assert ev["user_agent"] == "curl/8.5.0"
    assert ev.get("end_user") is None
    assert ev["trace_id"] is None  # exemplars off (LSM_EXEMPLARS): no trace id shipped
    assert RAW_KEY not in json.dumps(ev)
    assert counters(logger) == {"accepted": 1, "skipped": 0, "extract_error": 0}
    # On the wire: one positional event, exactly as long as the declared field list.
    ((_, fields),) = redis_client.xrange(f"{namespace}:{{s0}}:events")
    (raw,) = json.loads(fields[b"d"])
    assert raw[0] == "success" and len(raw) == len(wire.SUCCESS_FIELDS)


async def test_acompletion_streaming_success_event(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    t0 = time.perf_counter()
    stream = await litellm.acompletion(
        model=MODEL,
        messages=MESSAGES,
        mock_response="a streamed answer in several chunks",
        metadata=dict(PROXY_METADATA),
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    elapsed = time.perf_counter() - t0
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "a streamed answer in several chunks"
    await wait_events(redis_client, namespace, kinds_at_least(success=1))
    events = await finish(logger, redis_client, namespace)

    assert [e["kind"] for e in events] == ["success"]
    ev = events[0]
    assert ev["stream"] is True
    assert ev["model"] == MODEL
    assert ev["api_provider"] == "openai"
    built = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    assert (ev["prompt_tokens"], ev["completion_tokens"]) == (
        built.usage.prompt_tokens,
        built.usage.completion_tokens,
    )
    assert ev["total_tokens"] == ev["prompt_tokens"] + ev["completion_tokens"]
    assert ev["completion_tokens"] > 0
    assert ev["response_cost"] == pytest.approx(expected_cost(MODEL, ev["prompt_tokens"], ev["completion_tokens"]))

    lat = latency_of(ev)
    # Time to first token only for streaming calls, and it comes before the end of the call.
    assert 0 < lat["ttft"] <= lat["api"] <= lat["total"] <= elapsed + 0.05
    assert lat["ttft"] < lat["api"]
    assert_identity(ev)
    assert RAW_KEY not in json.dumps(ev)


async def test_with_exemplars_on_the_success_event_carries_the_trace_id(
    redis_url: str, redis_client: redis.Redis, namespace: str, litellm_state: None
) -> None:
    lg = StreamMetricsLogger(settings=settings_for(redis_url, namespace, exemplars=True))
    litellm.callbacks = [lg]
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    try:
        # LiteLLM's own trace id when the request carries no trace, else the W3C trace's.
        await litellm.acompletion(
            model=MODEL, messages=MESSAGES, mock_response="hi", metadata=dict(PROXY_METADATA), litellm_trace_id="t-1"
        )
        await litellm.acompletion(
            model=MODEL,
            messages=MESSAGES,
            mock_response="hi",
            metadata={**PROXY_METADATA, "headers": {"traceparent": traceparent}},
        )
        await wait_events(redis_client, namespace, kinds_at_least(success=2))
        events = await finish(lg, redis_client, namespace)
    finally:
        lg.close()
    assert sorted(e["trace_id"] for e in events) == ["4bf92f3577b34da6a3ce929d0e0e4736", "t-1"]


# -- 2. failures through litellm.acompletion ----------------------------------------------------------


@pytest.mark.parametrize(
    ("make_exc", "status", "exc_class"),
    [
        (
            lambda: litellm.RateLimitError("slow down", llm_provider="openai", model=MODEL),
            "429",
            "Openai.RateLimitError",
        ),
        (
            lambda: litellm.InternalServerError("upstream broke", llm_provider="openai", model=MODEL),
            "500",
            "Openai.InternalServerError",
        ),
        (
            lambda: litellm.ServiceUnavailableError("try later", llm_provider="openai", model=MODEL),
            "503",
            "Openai.ServiceUnavailableError",
        ),
    ],
    ids=["429", "500", "503"],
)
async def test_acompletion_failure_event(
    logger: StreamMetricsLogger,
    redis_client: redis.Redis,
    namespace: str,
    make_exc: Callable[[], Exception],
    status: str,
    exc_class: str,
) -> None:
    exc = make_exc()
    with pytest.raises(type(exc)):
        await litellm.acompletion(model=MODEL, messages=MESSAGES, mock_response=exc, metadata=dict(PROXY_METADATA))
    await wait_events(redis_client, namespace, kinds_at_least(failure=1))
    events = await finish(logger, redis_client, namespace)

    assert [e["kind"] for e in events] == ["failure"]
    ev = events[0]
    assert ev["model"] == MODEL
    assert ev["api_provider"] == "openai"
    assert_identity(ev)
    assert ev["org_id"] == "org-3"
    dep = ev["deployment"]
    assert dep["exception_status"] == status
    assert dep["exception_class"] == exc_class
    assert dep["has_exception"] is True
    # No router: no deployment was selected, the requested model passes through unbounded.
    assert dep["selected"] is False
    assert dep["requested_model"] == MODEL
    assert dep["hashed_api_key"] == RAW_KEY_HASH
    assert dep["api_key_alias"] == "checkout-key"
    assert dep["user_email"] == "dev@example.com"
    assert dep["client_ip"] == "10.1.2.3"
    assert RAW_KEY not in json.dumps(ev)
    assert counters(logger) == {"accepted": 1, "skipped": 0, "extract_error": 0}


async def test_invalid_key_failure_before_upstream_is_skipped(
    logger: StreamMetricsLogger,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LiteLLM's skip rule: a 401 raised before any upstream call (here: no Anthropic key
    configured) is not counted; a 401 from the deployment itself is."""
    for var in (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_IDENTITY_TOKEN",
        "ANTHROPIC_FEDERATION_RULE_ID",
    ):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(litellm.AuthenticationError) as info:
        await litellm.acompletion(
            model="anthropic/claude-3-5-sonnet-20240620", messages=MESSAGES, metadata=dict(PROXY_METADATA)
        )
    assert info.value.status_code == 401
    deadline = time.monotonic() + 10
    while counters(logger)["skipped"] < 1:
        assert time.monotonic() < deadline, "the invalid-key failure was never seen"
        await asyncio.sleep(0.02)

    # The same status from the upstream deployment (after the API call started) is a real failure.
    upstream_401 = litellm.AuthenticationError("Incorrect API key provided", llm_provider="openai", model=MODEL)
    with pytest.raises(litellm.AuthenticationError):
        await litellm.acompletion(
            model=MODEL, messages=MESSAGES, mock_response=upstream_401, metadata=dict(PROXY_METADATA)
        )
    await wait_events(redis_client, namespace, kinds_at_least(failure=1))
    events = await finish(logger, redis_client, namespace)

    assert [e["kind"] for e in events] == ["failure"]
    assert events[0]["model"] == MODEL
    assert events[0]["deployment"]["exception_status"] == "401"
    assert events[0]["deployment"]["exception_class"] == "Openai.AuthenticationError"
    assert counters(logger) == {"accepted": 1, "skipped": 1, "extract_error": 0}
    stats = producer_stats(redis_client, namespace, logger.emitter.producer_id)
    assert stats["events_skipped"] == "1"
    assert stats["events_sent"] == "1"


# -- 3. async_post_call_failure_hook with real proxy objects -------------------------------------------


def _user_api_key_auth(**overrides: Any) -> Any:
    from litellm.proxy._types import UserAPIKeyAuth

    fields: dict[str, Any] = {
        "api_key": RAW_KEY,
        "key_alias": "checkout-key",
        "team_id": "team-42",
        "team_alias": "Checkout Team",
        "user_id": "user-7",
        "user_email": "dev@example.com",
        "org_id": "org-3",
        "organization_alias": "Example Org",
        "end_user_id": "customer-9",
        "request_route": "/chat/completions",
    }
    fields.update(overrides)
    return UserAPIKeyAuth(**fields)


async def test_post_call_failure_hook_rate_limit(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    uak = _user_api_key_auth()
    assert uak.api_key == RAW_KEY_HASH  # the validator hashes sk- keys
    request_data = {
        "model": "no-such-model-anywhere",
        "messages": MESSAGES,
        "metadata": {"requester_ip_address": "10.9.8.7", "user_agent": "python-httpx/0.27"},
    }
    exc = litellm.RateLimitError("key over its rpm", llm_provider="openai", model=MODEL)
    assert await logger.async_post_call_failure_hook(request_data, exc, uak, "traceback text") is None
    events = await finish(logger, redis_client, namespace)

    assert [e["kind"] for e in events] == ["post_call_failure"]
    ev = events[0]
    assert ev["requested_model"] == "other"
    assert ev["status_code"] == "429"
    assert ev["exception_class"] == "Openai.RateLimitError"
    assert ev["api_provider"] == "openai"
    assert_identity(ev)
    assert ev["user_email"] == "dev@example.com"
    assert ev["org_id"] == "org-3"
    assert ev["org_alias"] == "Example Org"
    assert ev["route"] == "/chat/completions"
    assert ev["client_ip"] == "10.9.8.7"
    assert ev["user_agent"] == "python-httpx/0.27"
    assert ev.get("end_user") is None  # end-user labels are opt-in
    assert ev.get("model_id") is None


def _http_401() -> Exception:
    from fastapi import HTTPException

    return HTTPException(status_code=401, detail="Authentication Error, invalid key")


def _proxy_401() -> Exception:
    from litellm.proxy._types import ProxyException

    return ProxyException(message="Authentication Error", type="auth_error", param="None", code=401)


class _CodedError(Exception):
    def __init__(self, message: str, code: object = None, status_code: object = None) -> None:
        super().__init__(message)
        self.code, self.status_code = code, status_code


@pytest.mark.parametrize(
    "make_exc",
    [
        _http_401,
        _proxy_401,
        lambda: litellm.AuthenticationError("Invalid API Key provided", llm_provider="openai", model="gpt-4o"),
        lambda: litellm.RateLimitError("slow down", llm_provider="openai", model="gpt-4o"),
        lambda: litellm.InternalServerError("boom", llm_provider="bedrock", model="m"),
        lambda: AssertionError("LiteLLM Virtual Key expected. Received=abc, expected to start with 'sk-'."),
        lambda: ValueError("Authentication Error: no such key"),
        lambda: ValueError("API key not valid. Please pass a valid API key."),
        lambda: ValueError("an error about something else"),
        lambda: _CodedError("x", code="401"),
        lambda: _CodedError("x", code="not a number"),
        lambda: _CodedError("x", status_code=0, code=401),
        lambda: _CodedError("x", status_code=403),
    ],
)
def test_invalid_key_rule_agrees_with_litellm(make_exc: Callable[[], BaseException]) -> None:
    """The producer's copy of LiteLLM's invalid-key test (one regular expression, no method
    dispatch) answers as LiteLLM's own method for the reference version."""
    from litellm.integrations.prometheus import PrometheusLogger

    from producer.events import invalid_key_request

    exc = make_exc()
    reference = PrometheusLogger._is_invalid_api_key_request(
        None,  # type: ignore[arg-type]  # does not use self
        PrometheusLogger._extract_status_code(None, exception=exc),  # type: ignore[arg-type]
        exception=exc,
    )
    assert invalid_key_request(exc) is reference


@pytest.mark.parametrize(
    ("make_exc", "exc_class"), [(_http_401, "HTTPException"), (_proxy_401, "ProxyException")], ids=["http", "proxy"]
)
async def test_post_call_failure_hook_401_has_no_key(
    logger: StreamMetricsLogger,
    redis_client: redis.Redis,
    namespace: str,
    make_exc: Callable[[], Exception],
    exc_class: str,
) -> None:
    uak = _user_api_key_auth()
    await logger.async_post_call_failure_hook({"model": "gpt-4o"}, make_exc(), uak)
    events = await finish(logger, redis_client, namespace)

    assert [e["kind"] for e in events] == ["post_call_failure"]
    ev = events[0]
    assert ev["hashed_api_key"] is None
    assert ev["status_code"] == "401"
    assert ev["exception_class"] == exc_class
    assert ev["requested_model"] == "other"  # no proxy router to vouch for "gpt-4o"
    assert ev["api_provider"] == "openai"  # from litellm.get_llm_provider("gpt-4o")
    assert ev["api_key_alias"] == "checkout-key"
    assert ev["team"] == "team-42"
    assert RAW_KEY not in json.dumps(ev)


async def test_post_call_failure_hook_budget_exceeded(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    uak = _user_api_key_auth(api_key=None)
    exc = litellm.BudgetExceededError(current_cost=12.0, max_budget=10.0)
    await logger.async_post_call_failure_hook({"model": "gpt-4o"}, exc, uak)
    events = await finish(logger, redis_client, namespace)

    assert len(events) == 1
    ev = events[0]
    assert ev["exception_class"] == "BudgetExceededError"
    assert ev["status_code"] == str(litellm.budget_exceeded_status_code)
    assert ev["hashed_api_key"] is None


async def test_post_call_success_hook_emits_nothing(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    assert await logger.async_post_call_success_hook({"model": MODEL}, _user_api_key_auth(), None) is None
    assert await finish(logger, redis_client, namespace) == []
    assert counters(logger) == {"accepted": 0, "skipped": 0, "extract_error": 0}


# -- 4. fallbacks through a real Router ------------------------------------------------------------------


def _deployment(group: str, model: str, dep_id: str, mock: str) -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {"model": f"openai/{model}", "api_key": "sk-deployment-key", "mock_response": mock},
        "model_info": {"id": dep_id},
    }


async def test_router_fallback_success_and_failure(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    router = litellm.Router(
        model_list=[
            _deployment("primary", "gpt-4o-mini", "dep-primary", "litellm.RateLimitError"),
            _deployment("backup", "gpt-4o", "dep-backup", "the backup answered"),
            _deployment("primary-b", "gpt-4o-mini", "dep-primary-b", "litellm.RateLimitError"),
            _deployment("backup-b", "gpt-4o", "dep-backup-b", "litellm.InternalServerError"),
        ],
        fallbacks=[{"primary": ["backup"]}, {"primary-b": ["backup-b"]}],
        num_retries=0,
    )
    response = await router.acompletion(model="primary", messages=MESSAGES, metadata=dict(PROXY_METADATA))
    assert response.choices[0].message.content == "the backup answered"
    with pytest.raises(litellm.RateLimitError):
        await router.acompletion(model="primary-b", messages=MESSAGES, metadata=dict(PROXY_METADATA))
    await wait_events(
        redis_client, namespace, kinds_at_least(fallback_success=1, fallback_failure=1, success=1, failure=3)
    )
    events = await finish(logger, redis_client, namespace)

    [fb_ok] = of_kind(events, "fallback_success")
    assert fb_ok["requested_model"] == "primary"
    assert fb_ok["fallback_model"] == "backup"
    assert fb_ok["exception_status"] == "429"
    assert fb_ok["exception_class"] == "Openai.RateLimitError"
    assert fb_ok["hashed_api_key"] == RAW_KEY_HASH
    assert (fb_ok["api_key_alias"], fb_ok["team"], fb_ok["team_alias"]) == ("checkout-key", "team-42", "Checkout Team")

    [fb_bad] = of_kind(events, "fallback_failure")
    assert fb_bad["requested_model"] == "primary-b"
    assert fb_bad["fallback_model"] == "backup-b"
    assert fb_bad["exception_status"] == "429"  # the original exception, not the fallback's
    assert fb_bad["exception_class"] == "Openai.RateLimitError"
    assert fb_bad["hashed_api_key"] == RAW_KEY_HASH

    [ok] = of_kind(events, "success")
    assert ok["model"] == "gpt-4o"
    assert ok["model_group"] == "backup"
    assert ok["model_id"] == "dep-backup"
    assert ok["original_model_group"] == "primary"
    assert ok["response_cost"] == pytest.approx(expected_cost("gpt-4o", ok["prompt_tokens"], ok["completion_tokens"]))

    failures = {e["deployment"]["model_id"]: e for e in of_kind(events, "failure")}
    assert set(failures) == {"dep-primary", "dep-primary-b", "dep-backup-b"}
    dep = failures["dep-primary"]["deployment"]
    assert dep["selected"] is True
    assert dep["litellm_model_name"] == "gpt-4o-mini"
    assert dep["requested_model"] == "primary"
    assert dep["api_provider"] == "openai"
    assert dep["exception_status"] == "429"
    assert failures["dep-backup-b"]["deployment"]["exception_status"] == "500"
    assert failures["dep-backup-b"]["deployment"]["exception_class"] == "Openai.InternalServerError"
    assert RAW_KEY not in json.dumps(events)


async def test_fallback_methods_called_directly(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    """The router's call shape, with ``litellm_metadata`` (used by non-chat routes) and tags."""
    kwargs = {
        "model": "backup-group",
        "litellm_metadata": {"user_api_key_hash": RAW_KEY_HASH, "user_api_key_alias": "k", "user_api_key_team_id": "t"},
        "metadata": {"user_api_key_hash": "ignored-when-litellm_metadata-exists"},
        "messages": MESSAGES,
    }
    exc = litellm.Timeout("took too long", model=MODEL, llm_provider="azure")
    await logger.log_failure_fallback_event("orig-group", kwargs, exc)
    await logger.log_success_fallback_event("orig-group", {**kwargs, "metadata": None}, exc)
    events = await finish(logger, redis_client, namespace)

    assert [e["kind"] for e in events] == ["fallback_failure", "fallback_success"]
    for ev in events:
        assert ev["requested_model"] == "orig-group"
        assert ev["fallback_model"] == "backup-group"
        assert ev["hashed_api_key"] == RAW_KEY_HASH
        assert ev["api_key_alias"] == "k"
        assert ev["team"] == "t"
        assert ev["exception_status"] == "408"
        assert ev["exception_class"] == "Azure.Timeout"


# -- 5. router cooldown reaches the callback through LiteLLM's isinstance lookup ---------------------------


class _TooManyRequests(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps(
            {"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}
        ).encode()
        self.send_response(429)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream_429() -> Iterator[str]:
    """A real OpenAI-compatible upstream that answers every request with 429."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TooManyRequests)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


async def test_router_cooldown_reaches_callback(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str, upstream_429: str
) -> None:
    from litellm.router_utils.cooldown_callbacks import get_prometheus_logger_from_callbacks

    assert get_prometheus_logger_from_callbacks() is logger
    assert PrometheusLogger.get_instance() is logger

    # LiteLLM fires no cooldown event for mock_response failures (they are "logged off the
    # loop"), so the deployments call a real HTTP upstream. Two deployments: LiteLLM never
    # cools down the only deployment of a group.
    params = {"api_key": "sk-deployment-key", "api_base": upstream_429, "max_retries": 0}
    router = litellm.Router(
        model_list=[
            {
                "model_name": "cool",
                "litellm_params": {"model": "openai/gpt-4o-mini", **params},
                "model_info": {"id": "dep-a"},
            },
            {
                "model_name": "cool",
                "litellm_params": {"model": "openai/gpt-4o", **params},
                "model_info": {"id": "dep-b"},
            },
        ],
        allowed_fails=0,
        num_retries=0,
        cooldown_time=60,
    )
    for _ in range(2):
        with pytest.raises(litellm.RateLimitError):
            await router.acompletion(model="cool", messages=MESSAGES)
    await wait_events(redis_client, namespace, kinds_at_least(deployment_state=2, deployment_cooled_down=2))
    events = await finish(logger, redis_client, namespace)

    states = of_kind(events, "deployment_state")
    cooled = of_kind(events, "deployment_cooled_down")
    assert sorted(e["model_id"] for e in states) == ["dep-a", "dep-b"]
    assert sorted(e["model_id"] for e in cooled) == ["dep-a", "dep-b"]
    for ev in states:
        assert ev["state"] == 2
        # The cooldown path labels with the router's group name, not the deployment model.
        assert ev["litellm_model_name"] == "cool"
        assert ev["api_base"] == upstream_429
        assert ev["api_provider"] == "openai"
    for ev in cooled:
        assert ev["litellm_model_name"] == "cool"
        assert ev["api_base"] == upstream_429
        assert ev["api_provider"] == "openai"
        assert ev["exception_status"] == "429"
    # Each deployment failure is also a selected-deployment failure event.
    failures = of_kind(events, "failure")
    assert sorted(e["deployment"]["model_id"] for e in failures) == ["dep-a", "dep-b"]
    assert all(e["deployment"]["api_base"] == upstream_429 for e in failures)


# -- 6. direct methods ------------------------------------------------------------------------------------


class _BrokenLogger(litellm.integrations.custom_logger.CustomLogger):  # type: ignore[misc]
    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        raise RuntimeError("this logger is broken")


async def test_callback_logging_failure_from_litellm(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    """LiteLLM reports a failing callback to the first logger that has
    ``increment_callback_logging_failure``: ours."""
    litellm.callbacks = [logger, _BrokenLogger()]
    await litellm.acompletion(model=MODEL, messages=MESSAGES, mock_response="ok")
    await wait_events(redis_client, namespace, kinds_at_least(success=1, callback_failure=1))
    logger.increment_callback_logging_failure(callback_name="s3_v2")
    events = await finish(logger, redis_client, namespace)

    names = [e["callback_name"] for e in of_kind(events, "callback_failure")]
    assert names == ["_BrokenLogger", "s3_v2"]


def _without_t(events: list[dict[str, Any]], since: float) -> list[dict[str, Any]]:
    out = []
    for ev in events:
        ev = dict(ev)
        t = ev.pop("t")
        assert since - 1 <= t <= time.time() + 1
        out.append(ev)
    return out


async def test_direct_methods(logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str) -> None:
    from litellm.proxy._types import LiteLLM_TeamTable, Member
    from litellm.proxy.utils import ProxyLogging

    since = time.time()
    logger.track_provider_remaining_budget(provider="openai", spend=12.5, budget_limit=100.0)
    logger._record_guardrail_metrics(
        guardrail_name="pii-mask", latency_seconds=0.25, status="success", error_type=None, hook_type="pre_call"
    )
    # The proxy's own dispatcher finds the logger in litellm.callbacks with isinstance.
    ProxyLogging._emit_guardrail_metrics(
        guardrail_name="lakera", latency_seconds=1.5, status="error", error_type="timeout", hook_type="post_call"
    )
    team = LiteLLM_TeamTable(
        team_id="team-42",
        team_alias=None,
        members_with_roles=[
            Member(role="admin", user_id="a"),
            Member(role="user", user_id="b"),
            Member(role="user", user_email="c@example.com"),
        ],
    )
    logger.set_team_members_metric(team)
    logger.set_spend_capture_rate(api_provider="openai", capture_rate=0.875)
    logger.set_spend_capture_rate(api_provider="anthropic", capture_rate=None)
    logger.set_spend_capture_rate(api_provider="bedrock", capture_rate=math.nan)
    logger.record_managed_batch_created(
        model="gpt-4o", api_provider="openai", user="user-7", user_email="dev@example.com", api_key_alias="k"
    )
    logger.record_managed_file_created(
        model=None, api_provider=None, user="user-7", user_email=None, api_key_alias=None
    )
    logger.record_managed_file_deleted(result="success")
    logger.record_managed_file_size(size_bytes=4096, purpose="batch", file_type="jsonl", model="gpt-4o")
    logger.record_managed_batch_duration(duration_seconds=3600.5, model="gpt-4o", api_provider="openai")
    logger.record_managed_batch_duration(duration_seconds=12.0)
    logger.record_check_batch_cost_run(jobs_polled=3, processed_models=[("gpt-4o", "openai"), (None, None)])
    logger.record_check_batch_cost_run(jobs_polled=0)
    logger.record_check_batch_cost_error(error_type="timeout")
    logger.set_deployment_healthy("gpt-4o", "dep-1", "https://api.openai.com/v1", "openai")
    logger.set_deployment_partial_outage("gpt-4o", "dep-1", None, "openai")
    logger.increment_deployment_cooled_down("group", "dep-1", "https://api.openai.com/v1", "openai", "429")
    events = await finish(logger, redis_client, namespace)

    assert _without_t(events, since) == [
        {"kind": "provider_budget", "api_provider": "openai", "spend": 12.5, "budget_limit": 100.0},
        {
            "kind": "guardrail",
            "guardrail_name": "pii-mask",
            "latency_seconds": 0.25,
            "status": "success",
            "hook_type": "pre_call",
        },
        {
            "kind": "guardrail",
            "guardrail_name": "lakera",
            "latency_seconds": 1.5,
            "status": "error",
            "error_type": "timeout",
            "hook_type": "post_call",
        },
        {"kind": "team_members", "team": "team-42", "team_alias": "", "members": 3},
        {"kind": "spend_capture_rate", "api_provider": "openai", "capture_rate": 0.875},
        {"kind": "spend_capture_rate", "api_provider": "anthropic"},
        {"kind": "spend_capture_rate", "api_provider": "bedrock"},
        {
            "kind": "managed_batch_created",
            "model": "gpt-4o",
            "api_provider": "openai",
            "user": "user-7",
            "user_email": "dev@example.com",
            "api_key_alias": "k",
        },
        {"kind": "managed_file_created", "user": "user-7"},
        {"kind": "managed_file_deleted", "result": "success"},
        {
            "kind": "managed_file_size",
            "size_bytes": 4096,
            "purpose": "batch",
            "file_type": "jsonl",
            "model": "gpt-4o",
            "api_provider": "",
            "user": "",
        },
        {"kind": "managed_batch_duration", "duration_seconds": 3600.5, "model": "gpt-4o", "api_provider": "openai"},
        {"kind": "managed_batch_duration", "duration_seconds": 12.0, "model": "", "api_provider": ""},
        {"kind": "check_batch_cost_run", "jobs_polled": 3, "processed": [["gpt-4o", "openai"], ["", ""]]},
        {"kind": "check_batch_cost_run", "jobs_polled": 0, "processed": []},
        {"kind": "check_batch_cost_error", "error_type": "timeout"},
        {
            "kind": "deployment_state",
            "state": 0,
            "litellm_model_name": "gpt-4o",
            "model_id": "dep-1",
            "api_base": "https://api.openai.com/v1",
            "api_provider": "openai",
        },
        {
            "kind": "deployment_state",
            "state": 1,
            "litellm_model_name": "gpt-4o",
            "model_id": "dep-1",
            "api_provider": "openai",
        },
        {
            "kind": "deployment_cooled_down",
            "litellm_model_name": "group",
            "model_id": "dep-1",
            "api_base": "https://api.openai.com/v1",
            "api_provider": "openai",
            "exception_status": "429",
        },
    ]
    assert all(e["kind"] in wire.EVENT_KINDS for e in events)


async def test_budget_cron_is_not_run_in_the_proxy(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    assert await logger.initialize_remaining_budget_metrics() is None
    scheduler = AsyncIOScheduler()
    assert StreamMetricsLogger.initialize_budget_metrics_cron_job(scheduler) is None
    assert logger.initialize_budget_metrics_cron_job(scheduler) is None
    assert scheduler.get_jobs() == []
    assert await finish(logger, redis_client, namespace) == []
    assert counters(logger) == {"accepted": 0, "skipped": 0, "extract_error": 0}


def _public_prometheus_methods() -> list[str]:
    return [
        name
        for name, value in vars(PrometheusLogger).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, (staticmethod, classmethod)))
    ]


def test_every_prometheus_logger_method_is_overridden() -> None:
    """No public PrometheusLogger method can reach code that needs in-process metrics."""
    assert GUARDED_METHODS, "LiteLLM 1.110.2 has public methods the callback does not implement"
    assert set(GUARDED_METHODS) <= set(_public_prometheus_methods())
    for name in _public_prometheus_methods():
        if name == "get_instance":
            continue
        ours = inspect.getattr_static(StreamMetricsLogger, name)
        theirs = inspect.getattr_static(PrometheusLogger, name)
        assert ours is not theirs, f"{name} is PrometheusLogger's own implementation"


async def test_guarded_methods_are_harmless(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    for name in GUARDED_METHODS:
        signature = inspect.signature(getattr(PrometheusLogger, name))
        args = {
            p.name: None
            for p in signature.parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
        }
        result = getattr(logger, name)(**args)
        if inspect.isawaitable(result):
            result = await result
        assert result is None, name
    assert await finish(logger, redis_client, namespace) == []
    assert counters(logger) == {"accepted": 0, "skipped": 0, "extract_error": 0}


# -- 7. configuration-dependent fields -----------------------------------------------------------------


@pytest.fixture
def prometheus_label_config(monkeypatch: pytest.MonkeyPatch, litellm_state: None) -> None:
    """Custom metadata labels, custom tags and end-user labels on (monkeypatch restores them)."""
    monkeypatch.setattr(litellm, "custom_prometheus_metadata_labels", ["metadata.tenant"])
    monkeypatch.setattr(litellm, "custom_prometheus_tags", ["prod", "User-Agent: curl/*"])
    monkeypatch.setattr(litellm, "enable_end_user_cost_tracking_prometheus_only", True)


TAGGED_METADATA = {
    **PROXY_METADATA,
    "requester_metadata": {"tenant": "acme"},
    "user_api_key_end_user_id": "customer-9",
    "tags": ["prod", "User-Agent: curl/8.5.0"],
}
TAG_LABELS_ON = {"tag_prod": "true", "tag_User_Agent__curl__": "true"}


async def test_configured_labels_and_end_user(
    prometheus_label_config: None, logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    await litellm.acompletion(model=MODEL, messages=MESSAGES, mock_response="ok", metadata=dict(TAGGED_METADATA))
    with pytest.raises(litellm.RateLimitError):
        await litellm.acompletion(
            model=MODEL,
            messages=MESSAGES,
            mock_response=litellm.RateLimitError("slow down", llm_provider="openai", model=MODEL),
            metadata=dict(TAGGED_METADATA),
        )
    request_data = {
        "model": MODEL,
        "metadata": {"tags": ["prod"]},
        "proxy_server_request": {"headers": {"user-agent": "curl/8.5.0"}},
    }
    await logger.async_post_call_failure_hook(request_data, _http_401(), _user_api_key_auth())
    await logger.async_post_call_failure_hook({"model": MODEL}, _http_401(), _user_api_key_auth())
    await wait_events(redis_client, namespace, kinds_at_least(success=1, failure=1, post_call_failure=2))
    events = await finish(logger, redis_client, namespace)

    [ok] = of_kind(events, "success")
    assert ok["custom_labels"] == {"metadata_tenant": "acme"}
    assert ok["tag_labels"] == TAG_LABELS_ON
    assert ok["end_user"] == "customer-9"
    [bad] = of_kind(events, "failure")
    assert bad["custom_labels"] == {"metadata_tenant": "acme"}
    assert bad["end_user"] == "customer-9"
    assert bad["deployment"]["tag_labels"] == TAG_LABELS_ON
    tagged, untagged = of_kind(events, "post_call_failure")
    # prod from the request's tags, the User-Agent tag from the request's header.
    assert tagged["tag_labels"] == TAG_LABELS_ON
    assert tagged["end_user"] == "customer-9"
    assert untagged["tag_labels"] == {"tag_prod": "false", "tag_User_Agent__curl__": "false"}


async def test_disable_end_user_cost_tracking_wins(
    prometheus_label_config: None,
    monkeypatch: pytest.MonkeyPatch,
    logger: StreamMetricsLogger,
    redis_client: redis.Redis,
    namespace: str,
) -> None:
    monkeypatch.setattr(litellm, "disable_end_user_cost_tracking", True)
    await litellm.acompletion(model=MODEL, messages=MESSAGES, mock_response="ok", metadata=dict(TAGGED_METADATA))
    await logger.async_post_call_failure_hook({"model": MODEL}, _http_401(), _user_api_key_auth())
    await wait_events(redis_client, namespace, kinds_at_least(success=1, post_call_failure=1))
    events = await finish(logger, redis_client, namespace)

    assert len(events) == 2
    for ev in events:
        assert ev.get("end_user") is None, ev
    assert of_kind(events, "success")[0]["custom_labels"] == {"metadata_tenant": "acme"}


async def test_default_config_has_no_optional_labels(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    await litellm.acompletion(model=MODEL, messages=MESSAGES, mock_response="ok", metadata=dict(TAGGED_METADATA))
    with pytest.raises(litellm.RateLimitError):
        await litellm.acompletion(
            model=MODEL,
            messages=MESSAGES,
            mock_response=litellm.RateLimitError("slow down", llm_provider="openai", model=MODEL),
            metadata=dict(TAGGED_METADATA),
        )
    await logger.async_post_call_failure_hook({"model": MODEL}, _http_401(), _user_api_key_auth())
    await wait_events(redis_client, namespace, kinds_at_least(success=1, failure=1, post_call_failure=1))
    events = await finish(logger, redis_client, namespace)

    assert len(events) == 3
    for ev in events:
        assert ev.get("end_user") is None, ev
        assert ev.get("custom_labels") is None, ev
        assert ev.get("tag_labels") is None, ev
        assert ev.get("deployment", {}).get("tag_labels") is None, ev


# -- 8. privacy: nothing secret anywhere in the namespace -------------------------------------------------

SECRET_PROMPT = "TOP-SECRET-PROMPT"
SECRET_ANSWER = "TOP-SECRET-ANSWER"


def dump_namespace(client: redis.Redis, namespace: str) -> tuple[bytes, list[str]]:
    """Every byte stored under the namespace (stream entries decompressed), and the codecs seen."""
    parts: list[bytes] = []
    codecs: list[str] = []
    for key in client.scan_iter(match=f"{namespace}:*"):
        parts.append(key)
        kind = client.type(key)
        if kind == b"stream":
            for entry_id, fields in client.xrange(key):
                parts.append(entry_id)
                for name, value in fields.items():
                    parts += [name, value]
                codec = fields[wire.F_CODEC.encode()].decode()
                codecs.append(codec)
                if codec == wire.CODEC_ZLIB_JSON:
                    parts.append(zlib.decompress(fields[wire.F_DATA.encode()]))
        elif kind == b"hash":
            for name, value in client.hgetall(key).items():
                parts += [name, value]
        elif kind == b"zset":
            for member, score in client.zrange(key, 0, -1, withscores=True):
                parts += [member, repr(score).encode()]
        elif kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"list":
            parts += client.lrange(key, 0, -1)
        elif kind == b"set":
            parts += list(client.smembers(key))
        else:
            raise AssertionError(f"unexpected key type {kind!r} for {key!r}")
    return b"\n".join(parts), codecs


@pytest.mark.parametrize("compress_min_bytes", [0, 1], ids=["plain", "zlib"])
async def test_no_content_or_raw_key_reaches_redis(
    redis_url: str,
    namespace: str,
    redis_client: redis.Redis,
    litellm_state: None,
    compress_min_bytes: int,
) -> None:
    lg = StreamMetricsLogger(settings=settings_for(redis_url, namespace, compress_min_bytes=compress_min_bytes))
    litellm.callbacks = [lg]
    try:
        secret_messages = [{"role": "user", "content": f"please keep this {SECRET_PROMPT} safe"}]
        metadata = {**PROXY_METADATA, "user_api_key": RAW_KEY, "tags": [SECRET_PROMPT]}
        await litellm.acompletion(model=MODEL, messages=secret_messages, mock_response=SECRET_ANSWER, metadata=metadata)
        stream = await litellm.acompletion(
            model=MODEL,
            messages=secret_messages,
            mock_response=f"{SECRET_ANSWER} streamed",
            metadata=metadata,
            stream=True,
        )
        async for _chunk in stream:
            pass
        leaky = litellm.BadRequestError(f"content rejected: {SECRET_PROMPT}", model=MODEL, llm_provider="openai")
        with pytest.raises(litellm.BadRequestError):
            await litellm.acompletion(model=MODEL, messages=secret_messages, mock_response=leaky, metadata=metadata)
        request_data = {
            "model": MODEL,
            "messages": secret_messages,
            "metadata": {"user_api_key": RAW_KEY, "headers": {"authorization": f"Bearer {RAW_KEY}"}},
            "proxy_server_request": {"body": {"messages": secret_messages}, "headers": {"authorization": RAW_KEY}},
        }
        await lg.async_post_call_failure_hook(
            request_data,
            litellm.RateLimitError(SECRET_PROMPT, llm_provider="openai", model=MODEL),
            _user_api_key_auth(),
        )
        await lg.log_success_fallback_event(
            MODEL,
            {"model": "backup", "messages": secret_messages, "metadata": {"user_api_key_hash": RAW_KEY}},
            litellm.RateLimitError(SECRET_PROMPT, llm_provider="openai", model=MODEL),
        )
        await wait_events(
            redis_client, namespace, kinds_at_least(success=2, failure=1, post_call_failure=1, fallback_success=1)
        )
        events = await finish(lg, redis_client, namespace)
    finally:
        lg.close()

    assert len(events) == 5
    blob, codecs = dump_namespace(redis_client, namespace)
    assert codecs and set(codecs) == ({wire.CODEC_ZLIB_JSON} if compress_min_bytes else {wire.CODEC_JSON})
    # The key-derived data did reach Redis, hashed: the check below is not vacuous.
    assert blob.count(RAW_KEY_HASH.encode()) >= 5
    assert b"checkout-key" in blob
    for secret in (SECRET_PROMPT, SECRET_ANSWER, RAW_KEY, RAW_KEY.removeprefix("sk-")):
        assert secret.encode() not in blob, f"{secret!r} reached Redis"


# -- 9. hooks never raise ----------------------------------------------------------------------------


GARBAGE_KWARGS: list[Any] = [
    None,
    [],
    "kwargs",
    {},
    {"standard_logging_object": None},
    {"standard_logging_object": "not a payload"},
    {"standard_logging_object": {"metadata": "not a dict"}},
    {"standard_logging_object": {"metadata": {}, "hidden_params": 7, "response_cost": "NaN"}},
    {"standard_logging_object": {}, "litellm_params": "not a dict"},
    {"standard_logging_object": {}, "exception": "not an exception", "start_time": "yesterday"},
]


async def test_hooks_never_raise_on_garbage(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    calls = 0
    for kwargs in GARBAGE_KWARGS:
        for response_obj, start, end in ((None, None, None), (object(), "start", datetime.now())):
            await logger.async_log_success_event(kwargs, response_obj, start, end)
            await logger.async_log_failure_event(kwargs, response_obj, start, end)
            calls += 2
    for request_data, exc, uak in (
        (None, None, None),
        ({}, ValueError("x"), None),
        ({"model": 5, "metadata": "x", "proxy_server_request": 3}, RuntimeError(), object()),
        ("request", "not an exception", "not an auth object"),
    ):
        await logger.async_post_call_failure_hook(request_data, exc, uak)  # type: ignore[arg-type]
        calls += 1
    for group, kwargs, exc in ((None, None, None), ("m", {}, None), ("m", {"metadata": "x"}, ValueError())):
        await logger.log_success_fallback_event(group, kwargs, exc)  # type: ignore[arg-type]
        await logger.log_failure_fallback_event(group, kwargs, exc)  # type: ignore[arg-type]
        calls += 2
    before_direct = counters(logger)
    for method, args in (
        (logger.track_provider_remaining_budget, ("openai", "lots", None)),
        (logger.set_team_members_metric, (None,)),
        (logger._record_guardrail_metrics, (None, "slow", None, None, None)),
        (logger.record_managed_batch_duration, ("long",)),
        (logger.increment_deployment_cooled_down, (None, None, None, None, None)),
        # Malformed beyond repair: counted as extraction errors, never raised into LiteLLM.
        (logger.set_team_members_metric, (SimpleNamespace(team_id="t", members_with_roles=3),)),
        (logger.set_spend_capture_rate, ("openai", "high")),
        (logger.record_check_batch_cost_run, (1, "not a list of pairs")),
        (logger.record_check_batch_cost_run, (1, 5)),
    ):
        assert method(*args) is None
        calls += 1
    direct = {k: v - before_direct[k] for k, v in counters(logger).items()}
    assert direct == {"accepted": 5, "skipped": 0, "extract_error": 4}

    c = counters(logger)
    # Every call is accounted for exactly once: sent, skipped, or dropped as an extraction error.
    assert c["accepted"] + c["skipped"] + c["extract_error"] == calls
    assert c["skipped"] >= 4  # success calls without a usable payload
    assert c["extract_error"] >= 1
    events = await finish(logger, redis_client, namespace)
    assert len(events) == c["accepted"]
    assert all(e["kind"] in wire.EVENT_KINDS for e in events)
    stats = producer_stats(redis_client, namespace, logger.emitter.producer_id)
    assert int(stats["events_dropped_extract_error"]) == c["extract_error"]
    assert int(stats["events_skipped"]) == c["skipped"]


# -- 10. values JSON cannot carry: that value is replaced, the event still travels --------------------

HUGE = 2**70  # beyond the 64 bits orjson writes


def _mock_response(prompt_tokens: int, headers: dict[str, Any]) -> litellm.ModelResponse:
    """A provider response as LiteLLM builds it, with the usage and response headers given."""
    response = litellm.ModelResponse(
        model=MODEL,
        choices=[{"message": {"role": "assistant", "content": "fine"}}],
        usage={"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5},
    )
    response._hidden_params = {"additional_headers": headers}
    return response


async def test_integers_beyond_64_bits_and_lone_surrogates_do_not_drop_the_event(
    logger: StreamMetricsLogger, redis_client: redis.Redis, namespace: str
) -> None:
    from aggregator.engine import Engine
    from aggregator.litellm_config import MetricsConfig
    from aggregator.state import Delta

    metadata = {
        **PROXY_METADATA,
        "user_agent": "curl/\ud800 8.5",  # a "\ud800" escape in a request's JSON decodes to this
        "user_api_key_spend": 0.5,
        "user_api_key_max_budget": HUGE,
        "queue_time_seconds": 10**400,  # beyond any float
        "anything": {"deep": [HUGE, -HUGE]},
    }
    headers = {"x-ratelimit-remaining-requests": 99, "x-ratelimit-remaining-tokens": HUGE}
    # 1. Huge values in the request metadata and the provider's headers only.
    await litellm.acompletion(
        model=MODEL, messages=MESSAGES, mock_response=_mock_response(7, headers), metadata=dict(metadata)
    )
    # 2. A token count beyond 64 bits.
    await litellm.acompletion(
        model=MODEL, messages=MESSAGES, mock_response=_mock_response(HUGE, headers), metadata=dict(PROXY_METADATA)
    )
    await wait_events(redis_client, namespace, kinds_at_least(success=2))
    events = await finish(logger, redis_client, namespace)

    assert counters(logger) == {"accepted": 2, "skipped": 0, "extract_error": 0}
    stats = producer_stats(redis_client, namespace, logger.emitter.producer_id)
    assert stats["events_dropped_extract_error"] == "0" and stats["events_sent"] == "2"
    first, second = events
    for ev in events:
        assert_identity(ev)
        assert ev["model"] == MODEL and ev["api_provider"] == "openai"
        assert ev["completion_tokens"] == 5 and ev["response_cost"] > 0
        assert latency_of(ev)["total"] > 0
    # Only the values JSON cannot carry changed: the nearest float, null beyond the float range,
    # U+FFFD for a lone surrogate.
    assert (first["prompt_tokens"], first["total_tokens"]) == (7, 12)
    assert first["user_agent"] == "curl/\ufffd 8.5"
    assert first["latency_queue"] is None
    budget = dict(zip((*wire.BUDGET_FIELDS, *wire.BUDGET_FLAGS), first["budget"], strict=True))
    assert budget["user_api_key_spend"] == 0.5
    assert budget["user_api_key_max_budget"] == float(HUGE)
    assert wire.headers_as_dict(first["headers"]) == {
        "x_ratelimit_remaining_requests": 99,
        "x_ratelimit_remaining_tokens": float(HUGE),
    }
    assert second["prompt_tokens"] == float(HUGE) and second["user_agent"] == "curl/8.5.0"

    # The aggregator reads them as it reads any other number: the first event counts (its huge
    # header is just a large gauge reading), the second is rejected as a whole for its token
    # count above 10^15 (docs/compatibility.md, item 9), and counted as such.
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    delta = Delta()
    assert engine.add_event(delta, first) is True
    assert engine.add_event(delta, second) is False
    assert delta.stats == {"events_applied_success": 1, "events_rejected_invalid_tokens": 1}
