"""End to end: a real LiteLLM proxy process with the producer enabled by one config line.

A fake OpenAI-compatible upstream (``tests/fake_upstream.py``) answers according to the model
name, so every request has a deterministic outcome. The proxy starts once for the module
(``litellm --config ... --port ...``, ~8-20 s) and one pass of requests drives every path:

==================  =================================  ========================================
request             proxy answer                       events (what LiteLLM 1.110.2 produces)
==================  =================================  ========================================
gpt-ok              200                                success
gpt-ok, stream      200 (SSE, usage chunk)             success (stream, latency.ttft)
gpt-429             429 (upstream)                     failure, post_call_failure, and, through
                                                       the router's cooldown callback,
                                                       deployment_state (2) +
                                                       deployment_cooled_down
gpt-500             500 (upstream)                     failure, post_call_failure
gpt-fb              200 after fallback to gpt-backup   failure (500), fallback_success, success
no-such-model       400 (router: unknown model)        failure (deployment not selected),
                                                       post_call_failure (requested_model other)
no credentials      401                                post_call_failure (hashed_api_key None);
                                                       LiteLLM's failure call is skipped
                                                       (counted in events_skipped)
unknown sk- key     400 "No connected db."             failure, post_call_failure (sha256 key)
==================  =================================  ========================================

LiteLLM never logs the master key, nor its hash: it substitutes the alias
``litellm_proxy_master_key`` in ``UserAPIKeyAuth.api_key`` (litellm/constants.py
``LITELLM_PROXY_MASTER_KEY_ALIAS``), so that is what ``hashed_api_key`` carries for master-key
requests. Without a database the proxy cannot validate (or generate) virtual keys: any
non-master key is answered with 400 "No connected db.", so the 401 case is a request without
credentials.
"""

from __future__ import annotations

import hashlib
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import redis

from producer.keys import Keys
from tests.fake_upstream import (
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    REMAINING_REQUESTS,
    REMAINING_TOKENS,
    FakeUpstreamServer,
)
from tests.proxy_process import ProxyProcess, start_proxy
from tests.support import headers_of, latency_of, producer_stats, read_entries, read_events, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Distinctive strings: none of them may reach Redis.
PROMPT_MARKER = "zebraPROMPTmarker" + uuid.uuid4().hex[:8]
COMPLETION_MARKER = "quokkaCOMPLETIONmarker" + uuid.uuid4().hex[:8]
MASTER_KEY = "sk-lsm-master-" + uuid.uuid4().hex
UNKNOWN_SK_KEY = "sk-lsm-unknown-" + uuid.uuid4().hex

# What LiteLLM puts in UserAPIKeyAuth.api_key for the master key (never the key or its hash).
MASTER_KEY_ALIAS = "litellm_proxy_master_key"

EVENT_TIMEOUT = 20.0


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy_namespace(redis_url: str) -> Iterator[str]:
    """The module's own namespace (the proxy lives for the whole module); deleted afterwards."""
    ns = f"lsmtest-proxy-{uuid.uuid4().hex[:12]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreamServer]:
    server = FakeUpstreamServer(f"Hello from the fake upstream {COMPLETION_MARKER} end").start()
    try:
        yield server
    finally:
        server.stop()


def _config(api_base: str) -> str:
    def model(name: str, upstream_model: str, model_info: str = "") -> str:
        entry = (
            f"  - model_name: {name}\n"
            f"    litellm_params:\n"
            f"      model: openai/{upstream_model}\n"
            f"      api_base: {api_base}\n"
            f"      api_key: fake-upstream-key\n"
        )
        return entry + model_info

    return (
        "model_list:\n"
        + model("gpt-ok", "ok-model")
        + model("gpt-backup", "backup-model")
        # An explicit per-deployment policy makes the router cool this single deployment down on
        # its first 429 (LiteLLM never cools down a lone deployment otherwise).
        + model(
            "gpt-429",
            "fail-429",
            "    model_info:\n      allowed_fails_policy:\n        RateLimitErrorAllowedFails: 0\n",
        )
        + model("gpt-500", "fail-500")
        + model("gpt-fb", "fail-500-fb")
        + "router_settings:\n"
        "  num_retries: 0\n"
        "  fallbacks:\n"
        '    - {"gpt-fb": ["gpt-backup"]}\n'
        "litellm_settings:\n"
        '  callbacks: ["producer.stream_metrics_logger"]\n'
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )


@dataclass
class Proxy:
    base_url: str
    namespace: str
    upstream: FakeUpstreamServer
    process: ProxyProcess

    def log_tail(self, n: int = 60) -> str:
        return self.process.log_tail(n)


@pytest.fixture(scope="module")
def proxy(
    redis_url: str,
    proxy_namespace: str,
    upstream: FakeUpstreamServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    env = {
        "LSM_REDIS_URL": redis_url,
        "LSM_NAMESPACE": proxy_namespace,
        "LSM_FLUSH_INTERVAL": "0.05",
        "LSM_STATS_INTERVAL": "0.5",
    }
    process = start_proxy(_config(upstream.api_base), tmp_path_factory.mktemp("litellm-proxy"), env)
    try:
        yield Proxy(process.base_url, proxy_namespace, upstream, process)
    finally:
        process.stop()


@dataclass
class Outcome:
    status: int | None
    error: str | None = None
    text: str = ""


@dataclass
class Run:
    """What one pass of requests returned, and the events it produced."""

    outcomes: dict[str, Outcome]
    events: list[dict[str, Any]]
    proxy: Proxy
    by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for ev in self.events:
            self.by_kind.setdefault(ev["kind"], []).append(ev)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return self.by_kind.get(kind, [])

    def one(self, kind: str, **match: Any) -> dict[str, Any]:
        found = [e for e in self.kind(kind) if all(_get(e, k) == v for k, v in match.items())]
        assert len(found) == 1, f"expected one {kind} event with {match}, got {len(found)}:\n{self.summary()}"
        return found[0]

    def summary(self) -> str:
        return "\n".join(_brief(e) for e in self.events)


def _get(event: dict[str, Any], path: str) -> Any:
    value: Any = event
    for part in path.split("__"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _brief(ev: dict[str, Any]) -> str:
    keys = (
        "kind", "model", "model_group", "requested_model", "status_code", "exception_class", "stream",
        "hashed_api_key", "state", "exception_status", "fallback_model",
    )  # fmt: skip
    parts = [f"{k}={ev[k]!r}" for k in keys if k in ev]
    dep = ev.get("deployment")
    if isinstance(dep, dict) and "exception_status" in dep:
        parts.append(f"deployment.exception_status={dep['exception_status']!r}")
    return " ".join(parts)


# Expected number of events per kind for one pass of ``_drive`` (see the module docstring).
EXPECTED_KINDS = {
    "success": 3,
    "failure": 5,
    "post_call_failure": 5,
    "fallback_success": 1,
    "deployment_state": 1,
    "deployment_cooled_down": 1,
}


def _call(name: str, outcomes: dict[str, Outcome], fn: Any) -> None:
    try:
        outcomes[name] = Outcome(200, text=fn())
    except openai.APIStatusError as exc:
        outcomes[name] = Outcome(exc.status_code, error=str(exc))


def _drive(proxy: Proxy) -> dict[str, Outcome]:
    messages: Any = [{"role": "user", "content": f"Please answer {PROMPT_MARKER} briefly."}]
    client = openai.OpenAI(base_url=proxy.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)
    outcomes: dict[str, Outcome] = {}

    def complete(model: str, c: openai.OpenAI = client, **kw: Any) -> str:
        resp = c.chat.completions.create(model=model, messages=messages, **kw)
        return resp.choices[0].message.content or ""

    def stream(model: str) -> str:
        parts = []
        for chunk in client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}
        ):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
        return "".join(parts)

    try:
        _call("ok", outcomes, lambda: complete("gpt-ok"))
        _call("stream", outcomes, lambda: stream("gpt-ok"))
        _call("429", outcomes, lambda: complete("gpt-429"))
        _call("500", outcomes, lambda: complete("gpt-500"))
        _call("fallback", outcomes, lambda: complete("gpt-fb"))
        _call("unknown_model", outcomes, lambda: complete("no-such-model"))
        # No credentials at all: the only 401 a proxy without a database gives.
        _call(
            "no_key",
            outcomes,
            lambda: complete("gpt-ok", extra_headers={"Authorization": openai.Omit()}),
        )
        unknown_key_client = openai.OpenAI(base_url=proxy.base_url, api_key=UNKNOWN_SK_KEY, max_retries=0, timeout=30)
        try:
            _call("unknown_key", outcomes, lambda: complete("gpt-ok", c=unknown_key_client))
        finally:
            unknown_key_client.close()
    finally:
        client.close()
    return outcomes


def _events_complete(client: redis.Redis, namespace: str) -> list[dict[str, Any]] | None:
    events = read_events(client, namespace)
    counts = Counter(e["kind"] for e in events)
    if all(counts[k] >= n for k, n in EXPECTED_KINDS.items()):
        return events
    return None


@pytest.fixture(scope="module")
def run(proxy: Proxy, redis_url: str) -> Iterator[Run]:
    outcomes = _drive(proxy)
    client = redis.Redis.from_url(redis_url)
    try:
        try:
            wait_for(lambda: _events_complete(client, proxy.namespace), timeout=EVENT_TIMEOUT, interval=0.1)
        except AssertionError:
            got = "\n".join(_brief(e) for e in read_events(client, proxy.namespace))
            pytest.fail(
                f"expected events {EXPECTED_KINDS} did not arrive; got:\n{got}\n"
                f"outcomes: {outcomes}\nproxy log:\n{proxy.log_tail()}"
            )
        # Let late events (there should be none) arrive before counting exactly.
        time.sleep(1.0)
        yield Run(outcomes, read_events(client, proxy.namespace), proxy)
    finally:
        client.close()


# -- tests ----------------------------------------------------------------------------------------


def test_requests_reach_the_upstream_as_expected(run: Run) -> None:
    o = run.outcomes
    assert o["ok"].status == 200 and COMPLETION_MARKER in o["ok"].text
    assert o["stream"].status == 200 and COMPLETION_MARKER in o["stream"].text
    assert o["fallback"].status == 200 and COMPLETION_MARKER in o["fallback"].text
    assert o["429"].status == 429
    assert o["500"].status == 500
    assert o["unknown_model"].status == 400
    assert o["no_key"].status == 401
    assert o["unknown_key"].status == 400, o["unknown_key"]
    up = run.proxy.upstream
    # One upstream call per request (no retries), none for the requests the proxy rejected.
    assert {m: up.calls(m) for m in ("ok-model", "backup-model", "fail-429", "fail-500", "fail-500-fb")} == {
        "ok-model": 2,
        "backup-model": 1,
        "fail-429": 1,
        "fail-500": 1,
        "fail-500-fb": 1,
    }
    assert sum(1 for r in up.requests if r["stream"]) == 1


def test_event_kinds_are_exactly_the_expected_ones(run: Run) -> None:
    counts = dict(Counter(e["kind"] for e in run.events))
    assert counts == EXPECTED_KINDS, run.summary()


def test_success_events(run: Run, upstream: FakeUpstreamServer) -> None:
    ok = [e for e in run.kind("success") if e["model_group"] == "gpt-ok"]
    assert len(ok) == 2, run.summary()
    streamed = [e for e in ok if e.get("stream") is True]
    plain = [e for e in ok if e.get("stream") is not True]
    assert len(streamed) == 1 and len(plain) == 1, run.summary()
    for ev in ok:
        assert ev["hashed_api_key"] == MASTER_KEY_ALIAS
        assert ev["model"] == "ok-model"
        assert ev["api_provider"] == "openai"
        assert ev["api_base"] == upstream.api_base
        assert ev["model_id"]
        assert ev["prompt_tokens"] == PROMPT_TOKENS
        assert ev["completion_tokens"] == COMPLETION_TOKENS
        assert ev["total_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS
        assert ev["route"] == "/chat/completions"
        assert ev["user"] == "default_user_id"
        assert ev["client_ip"] == "127.0.0.1"
        assert ev["user_agent"].startswith("OpenAI/Python")
        assert ev["response_cost"] == 0.0  # fake model: no price in the cost map
        # Deployment metric inputs (LiteLLM's deployment block needs api_base + additional_headers).
        assert ev["has_deployment"] is True
        assert ev["deployment_provider"] == "openai"
        assert ev["deployment_model_id"] == ev["model_id"]
        assert ev["key_model_group"] == "gpt-ok"
        # The upstream's x-ratelimit-remaining-* headers, as LiteLLM passes them on.
        assert float(headers_of(ev)["x_ratelimit_remaining_requests"]) == REMAINING_REQUESTS
        assert float(headers_of(ev)["x_ratelimit_remaining_tokens"]) == REMAINING_TOKENS
        assert latency_of(ev)["total"] > 0 and latency_of(ev)["api"] > 0
        assert latency_of(ev)["per_token_basis"] > 0
        assert ev["original_model_group"] is None
    assert latency_of(streamed[0])["ttft"] > 0
    assert "ttft" not in latency_of(plain[0])

    backup = run.one("success", model_group="gpt-backup")
    assert backup["model"] == "backup-model"
    assert backup["original_model_group"] == "gpt-fb"
    assert backup["hashed_api_key"] == MASTER_KEY_ALIAS
    assert backup["has_deployment"] is True
    assert backup["deployment_model_id"] == backup["model_id"] != ok[0]["model_id"]


@pytest.mark.parametrize(
    ("model_group", "model", "status", "exception_class"),
    [
        ("gpt-429", "fail-429", "429", "Openai.RateLimitError"),
        ("gpt-500", "fail-500", "500", "Openai.InternalServerError"),
        ("gpt-fb", "fail-500-fb", "500", "Openai.InternalServerError"),
    ],
)
def test_upstream_failure_events(
    run: Run, upstream: FakeUpstreamServer, model_group: str, model: str, status: str, exception_class: str
) -> None:
    ev = run.one("failure", model_group=model_group)
    assert ev["model"] == model
    assert ev["hashed_api_key"] == MASTER_KEY_ALIAS
    dep = ev["deployment"]
    assert dep["selected"] is True
    assert dep["exception_status"] == status
    assert dep["exception_class"] == exception_class
    assert dep["litellm_model_name"] == model
    assert dep["requested_model"] == model_group
    assert dep["model_id"] == ev["model_id"]
    assert dep["api_base"] == upstream.api_base
    assert dep["api_provider"] == "openai"
    assert dep["hashed_api_key"] == MASTER_KEY_ALIAS


@pytest.mark.parametrize(
    ("requested_model", "status", "exception_class"),
    [
        ("gpt-429", "429", "Openai.RateLimitError"),
        ("gpt-500", "500", "Openai.InternalServerError"),
    ],
)
def test_post_call_failure_events_for_upstream_errors(
    run: Run, requested_model: str, status: str, exception_class: str
) -> None:
    ev = run.one("post_call_failure", requested_model=requested_model)
    assert ev["status_code"] == status
    assert ev["exception_class"] == exception_class
    assert ev["hashed_api_key"] == MASTER_KEY_ALIAS
    assert ev["api_provider"] == "openai"
    assert ev["route"] == "/chat/completions"
    failure = run.one("failure", model_group=requested_model)
    assert ev["model_id"] == failure["model_id"]
    if status == "429":
        assert ev.get("rate_limit_category") == "vendor_rate_limit"


def test_unknown_model_is_bounded_to_other(run: Run) -> None:
    ev = run.one("post_call_failure", requested_model="other")
    assert ev["status_code"] == "400"
    assert ev["exception_class"] == "ProxyModelNotFoundError"
    assert ev["hashed_api_key"] == MASTER_KEY_ALIAS
    assert not ev.get("model_id")
    # The router also logs a failure; no deployment was selected, so its labels are bounded.
    failure = run.one("failure", model="no-such-model")
    dep = failure["deployment"]
    assert dep["selected"] is False
    assert dep["requested_model"] == "other"
    assert dep["exception_status"] == "400"
    assert dep["litellm_model_name"] == "" and dep["model_id"] == "" and dep["api_base"] == ""


def test_missing_credentials_give_a_401_without_key(run: Run) -> None:
    ev = run.one("post_call_failure", status_code="401")
    assert ev.get("hashed_api_key") is None
    assert ev["exception_class"] == "ProxyException"
    assert ev["requested_model"] == "gpt-ok"
    # LiteLLM skips invalid-key failure events; the producer counts them as skipped.
    assert not [e for e in run.kind("failure") if e["deployment"]["exception_status"] == "401"]


def test_unknown_virtual_key_is_hashed(run: Run) -> None:
    hashed = _sha256(UNKNOWN_SK_KEY)
    ev = run.one("post_call_failure", hashed_api_key=hashed)
    assert ev["status_code"] == "400"
    assert ev["requested_model"] == "gpt-ok"
    failure = run.one("failure", hashed_api_key=hashed)
    assert failure["deployment"]["selected"] is False
    assert failure["deployment"]["hashed_api_key"] == hashed


def test_fallback_event(run: Run) -> None:
    ev = run.one("fallback_success", requested_model="gpt-fb")
    assert ev["fallback_model"] == "gpt-backup"
    assert ev["exception_status"] == "500"
    assert ev["exception_class"] == "Openai.InternalServerError"
    assert ev["hashed_api_key"] == MASTER_KEY_ALIAS
    assert not run.kind("fallback_failure")


def test_router_cooldown_reaches_the_producer(run: Run, upstream: FakeUpstreamServer) -> None:
    """The router finds the producer through ``isinstance(cb, PrometheusLogger)``."""
    failure = run.one("failure", model_group="gpt-429")
    state = run.one("deployment_state", model_id=failure["model_id"])
    assert state["state"] == 2
    # The cooldown callback uses the model *group* as litellm_model_name
    # (LiteLLM's ``increment_deployment_cooled_down``).
    assert state["litellm_model_name"] == "gpt-429"
    assert state["api_base"] == upstream.api_base
    assert state["api_provider"] == "openai"
    cooled = run.one("deployment_cooled_down", model_id=failure["model_id"])
    assert cooled["exception_status"] == "429"
    assert cooled["litellm_model_name"] == "gpt-429"


def test_master_key_never_logged(run: Run) -> None:
    for ev in run.events:
        for value in (ev.get("hashed_api_key"), (ev.get("deployment") or {}).get("hashed_api_key")):
            assert value in (None, MASTER_KEY_ALIAS, _sha256(UNKNOWN_SK_KEY)), _brief(ev)


def test_producer_stats_match_the_stream(run: Run, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        ns = run.proxy.namespace
        entries = read_entries(client, ns)
        producers = {e.producer_id for e in entries}
        assert len(producers) == 1, producers
        (producer_id,) = producers
        sent = sum(len(e.events) for e in entries)
        assert sent == len(run.events)

        def consistent() -> dict[str, str] | None:
            stats = producer_stats(client, ns, producer_id)
            return stats if stats and int(stats["events_sent"]) == sent else None

        stats = wait_for(consistent, timeout=5)
        assert int(stats["events_accepted"]) == sent
        assert int(stats["buffer_events"]) == 0
        assert int(stats["events_skipped"]) >= 1  # the 401 failure event LiteLLM skips too
        assert int(stats["flush_errors"]) == 0
        assert stats["stream"] == Keys(ns).stream(0)
        for name, value in stats.items():
            if name.startswith("events_dropped_"):
                assert int(value) == 0, (name, value)
        assert client.zscore(Keys(ns).producer_registry(), producer_id) is not None
        # Sequence numbers: 1..n, no gaps, no duplicates.
        assert sorted(e.seq for e in entries) == list(range(1, len(entries) + 1))
    finally:
        client.close()


def _all_bytes_under(client: redis.Redis, namespace: str) -> list[tuple[bytes, bytes]]:
    """(key, bytes) pairs for every key name, field and value stored under ``namespace``."""
    out: list[tuple[bytes, bytes]] = []
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        out.append((key, key))
        kind = client.type(key)
        if kind == b"stream":
            for entry_id, fields in client.xrange(key):
                out.append((key, entry_id))
                for name, value in fields.items():
                    out.append((key, name))
                    out.append((key, value))
                if fields.get(b"c") == b"zjson":
                    out.append((key, zlib.decompress(fields[b"d"])))
        elif kind == b"hash":
            for name, value in client.hgetall(key).items():
                out.extend([(key, name), (key, value)])
        elif kind == b"zset":
            for member, score in client.zrange(key, 0, -1, withscores=True):
                out.extend([(key, member), (key, repr(score).encode())])
        elif kind == b"string":
            out.append((key, client.get(key) or b""))
        elif kind == b"list":
            out.extend((key, v) for v in client.lrange(key, 0, -1))
        elif kind == b"set":
            out.extend((key, v) for v in client.smembers(key))
        else:
            out.append((key, client.dump(key) or b""))
    return out


def test_nothing_private_reaches_redis(run: Run, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        chunks = _all_bytes_under(client, run.proxy.namespace)
    finally:
        client.close()
    assert any(b"events" in key for key, _ in chunks)
    secrets = {
        "prompt text": PROMPT_MARKER.encode(),
        "completion text": COMPLETION_MARKER.encode(),
        "master key": MASTER_KEY.encode(),
        "master key without prefix": MASTER_KEY[3:].encode(),
        # LiteLLM itself never propagates the master key's hash either.
        "master key sha256": _sha256(MASTER_KEY).encode(),
        "unknown virtual key": UNKNOWN_SK_KEY.encode(),
        "unknown virtual key without prefix": UNKNOWN_SK_KEY[3:].encode(),
        "upstream api key": b"fake-upstream-key",
    }
    for key, data in chunks:
        for what, secret in secrets.items():
            assert secret not in data, f"{what} found under {key!r}"


def test_the_proxy_still_serves_its_process_metrics(run: Run) -> None:
    """The proxy's own /metrics stays (as with LiteLLM's prometheus callback) with what only the
    process knows; LiteLLM's business series are not there (the aggregator serves them)."""
    url = f"{run.proxy.base_url}/metrics/"
    # LiteLLM's own setting protects it (require_auth_for_metrics_endpoint, on by default).
    assert httpx.get(url, timeout=10).status_code == 401
    resp = httpx.get(url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
    assert resp.status_code == 200, resp.text[:500]
    names = {line.split("{")[0].split(" ")[0] for line in resp.text.splitlines() if line and line[0] != "#"}
    assert "litellm_in_flight_requests" in names
    assert not {n for n in names if n.startswith(("litellm_requests_metric", "litellm_spend_metric"))}
    assert not [n for n in names if n.startswith("litellm_proxy_total_requests")]
