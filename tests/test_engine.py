"""The metric engine, table-driven: one event in, the exact series and delta out.

For every metric family of the seed set (docs/compatibility.md) a wire event (dict form, ``producer.wire``)
and the series it must touch, with LiteLLM's label values and the counter increment, gauge value
or histogram observation. Then poison events (rejected whole and counted, nothing applied) and
hostile label values (sanitised exactly like LiteLLM's ``sanitize_prometheus_label_value``).
The conformance test (``test_conformance.py``) checks the same against LiteLLM's logger end to
end; these pin the engine's behaviour case by case and run in milliseconds.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
from litellm.types.integrations.prometheus import sanitize_prometheus_label_value

from aggregator.apply import PendingEntry
from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.schema import TRUNCATED_STAT, sanitize, truncate_label_value
from aggregator.snapshot import Family
from aggregator.state import Delta, decode_series
from producer import wire
from tests.events import success_event

ENGINE = Engine(MetricsConfig.from_litellm_settings({}))
KEY = hashlib.sha256(b"sk-engine-test").hexdigest()
T = 1_800_000_000.0
RESET = "2030-01-01T00:00:00+00:00"
RESET_EPOCH = datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp()


def headers(**values: Any) -> list[Any]:
    return [values.get(name) for name in wire.HEADER_FIELDS]


def budget(**values: Any) -> list[Any]:
    base = {
        "user_api_key_spend": 2.0,
        "user_api_key_max_budget": 10.0,
        "user_api_key_budget_reset_at": RESET,
        "user_api_key_team_spend": 5.0,
        "user_api_key_team_max_budget": None,
        "user_api_key_team_table_max_budget": 50.0,
        "user_api_key_team_budget_reset_at": RESET,
    }
    base.update(values)
    return [base.get(name) for name in wire.BUDGET_FIELDS]


def success(**changes: Any) -> dict[str, Any]:
    """A success event as ``wire.decode_entry`` hands it to the engine."""
    event = success_event(
        t=T,
        hashed_api_key=KEY,
        api_key_alias="key-alias",
        team="team-1",
        team_alias="Team One",
        user="user-1",
        user_email="user@example.com",
        org_id="org-1",
        org_alias="Org One",
        route="/chat/completions",
        client_ip="10.0.0.1",
        user_agent="curl/8.5.0",
        model_group="chat",
        model_id="dep-1",
        api_base="https://api.example.com",
        api_provider="openai",
        stream=False,
        response_cost=0.25,
        total_tokens=30,
        prompt_tokens=10,
        completion_tokens=20,
        model="gpt-4o-mini",
        latency_total=1.5,
        latency_api=1.2,
        latency_queue=0.5,
        latency_per_token_basis=1.0,
        has_deployment=True,
        deployment_provider="openai",
        deployment_model_id="dep-1",
        overhead_ms=20.0,
        headers=headers(x_ratelimit_remaining_requests="99", x_ratelimit_remaining_tokens=5000),
        key_model_group="chat",
        key_remaining_requests=41,
        budget=budget(),
    )
    event.update(changes)
    return event


#: What each label of a success event's metrics resolves to (LiteLLM's rendering).
SUCCESS_LABELS = {
    "end_user": "None",
    "hashed_api_key": KEY,
    "api_key_alias": "key-alias",
    "requested_model": "chat",
    "model_group": "chat",
    "team": "team-1",
    "team_alias": "Team One",
    "user": "user-1",
    "user_email": "user@example.com",
    "org_id": "org-1",
    "org_alias": "Org One",
    "project_id": "None",
    "project_alias": "None",
    "model": "gpt-4o-mini",
    "litellm_model_name": "gpt-4o-mini",
    "model_id": "dep-1",
    "api_base": "https://api.example.com",
    "api_provider": "openai",
    "status_code": "200",
    "route": "/chat/completions",
    "client_ip": "10.0.0.1",
    "user_agent": "curl/8.5.0",
    "service_tier": "None",
}


def labels_for(metric: str, **overrides: str) -> dict[str, str]:
    values = {**SUCCESS_LABELS, **overrides}
    return {name: values[name] for name in ENGINE.label_names(metric)}


@dataclass(frozen=True)
class Obs:
    """One histogram observation."""

    value: float


Expected = float | Obs | None


def touched(delta: Delta, metric: str) -> list[tuple[dict[str, str], float | Obs | tuple[float, float] | None]]:
    """Every series of ``metric`` the delta changes, with its change."""
    mkey = ENGINE.metric_key(metric)
    names = ENGINE.label_names(metric)

    def labels(series: str) -> dict[str, str]:
        return dict(zip(names, [str(v) for v in decode_series(series)], strict=True))

    out: list[tuple[dict[str, str], Any]] = []
    for (k, series), amount in delta.counters.items():
        if k == mkey:
            out.append((labels(series), amount))
    for (k, series), hist in delta.histograms.items():
        if k == mkey:
            out.append((labels(series), (hist.count, hist.total, tuple(hist.buckets))))
    for (k, series), (_t, value) in delta.gauges.items():
        if k == mkey:
            out.append((labels(series), value))
    return out


def apply(*events: dict[str, Any]) -> Delta:
    return ENGINE.build_delta([PendingEntry("1-0", "p", 1, list(events))])


def assert_change(delta: Delta, metric: str, labels: dict[str, str], expected: Expected) -> None:
    changes = touched(delta, metric)
    if expected is None:
        assert changes == [], changes
        return
    assert len(changes) == 1, changes
    got_labels, got = changes[0]
    assert got_labels == labels
    if isinstance(expected, Obs):
        bounds = ENGINE.upper_bounds(metric)
        buckets = [0] * (len(bounds) + 1)
        buckets[bisect.bisect_left(bounds, expected.value)] = 1
        assert isinstance(got, tuple)
        count, total, got_buckets = got
        assert (count, got_buckets) == (1, tuple(buckets))
        assert total == pytest.approx(expected.value)
    else:
        assert got == pytest.approx(expected)


# --------------------------------------------------------------------------------------------
# Success events, per seed family

SUCCESS_ROWS: list[tuple[str, str, dict[str, Any], dict[str, str], Expected]] = [
    ("requests", "litellm_requests_metric", {}, {}, 1.0),
    ("spend", "litellm_spend_metric", {}, {}, 0.25),
    ("spend_zero_still_counted", "litellm_spend_metric", {"response_cost": 0}, {}, 0.0),
    ("total_tokens", "litellm_total_tokens_metric", {}, {}, 30.0),
    ("input_tokens", "litellm_input_tokens_metric", {}, {}, 10.0),
    ("output_tokens", "litellm_output_tokens_metric", {}, {}, 20.0),
    ("proxy_total", "litellm_proxy_total_requests_metric", {}, {}, 1.0),
    (
        "proxy_total_after_fallback",
        "litellm_proxy_total_requests_metric",
        {"original_model_group": "primary"},
        {"requested_model": "primary"},
        1.0,
    ),
    ("total_latency_with_queue", "litellm_request_total_latency_metric", {}, {}, Obs(2.0)),
    ("total_latency_negative_queue", "litellm_request_total_latency_metric", {"latency_queue": -1.0}, {}, Obs(1.5)),
    ("total_latency_unknown", "litellm_request_total_latency_metric", {"latency_total": None}, {}, None),
    ("api_latency", "litellm_llm_api_latency_metric", {}, {}, Obs(1.2)),
    (
        "ttft_streaming",
        "litellm_llm_api_time_to_first_token_metric",
        {"latency_ttft": 0.3, "stream": True},
        {},
        Obs(0.3),
    ),
    ("ttft_not_streaming", "litellm_llm_api_time_to_first_token_metric", {}, {}, None),
    ("overhead", "litellm_overhead_latency_metric", {}, {}, Obs(0.02)),
    ("overhead_zero_skipped", "litellm_overhead_latency_metric", {"overhead_ms": 0}, {}, None),
    ("deployment_success", "litellm_deployment_success_responses", {}, {}, 1.0),
    ("deployment_total", "litellm_deployment_total_requests", {}, {}, 1.0),
    ("deployment_block_skipped", "litellm_deployment_success_responses", {"has_deployment": False}, {}, None),
    ("deployment_state_healthy", "litellm_deployment_state", {}, {}, 0.0),
    (
        "deployment_state_ids_from_request",
        "litellm_deployment_state",
        {"deployment_model_id": None, "deployment_provider": None},
        {"model_id": "", "api_provider": ""},
        0.0,
    ),
    ("latency_per_output_token", "litellm_deployment_latency_per_output_token", {}, {}, Obs(0.05)),
    (
        "latency_per_output_token_no_tokens",
        "litellm_deployment_latency_per_output_token",
        {"completion_tokens": 0},
        {},
        None,
    ),
    ("remaining_requests_header_text", "litellm_remaining_requests_metric", {}, {}, 99.0),
    ("remaining_tokens_header_int", "litellm_remaining_tokens_metric", {}, {}, 5000.0),
    ("remaining_tokens_no_header", "litellm_remaining_tokens_metric", {"headers": None}, {}, None),
    (
        "key_model_remaining_requests_legacy",
        "litellm_remaining_api_key_requests_for_model",
        {},
        {"model": "chat"},
        41.0,
    ),
    (
        "key_model_remaining_tokens_default",
        "litellm_remaining_api_key_tokens_for_model",
        {},
        {"model": "chat"},
        float(sys.maxsize),
    ),
    (
        "key_model_remaining_tokens_v3",
        "litellm_remaining_api_key_tokens_for_model",
        {"headers": headers(**{"x-ratelimit-model_per_key-remaining-tokens": 777})},
        {"model": "chat"},
        777.0,
    ),
    (
        "key_model_remaining_v3_text_ignored",
        "litellm_remaining_api_key_tokens_for_model",
        {"headers": headers(**{"x-ratelimit-model_per_key-remaining-tokens": "777"})},
        {"model": "chat"},
        float(sys.maxsize),
    ),
    (
        "key_model_remaining_numeric_text",
        "litellm_remaining_api_key_requests_for_model",
        {"key_remaining_requests": "41"},
        {"model": "chat"},
        41.0,
    ),
    (
        "deployment_tpm_rpm",
        "litellm_deployment_tpm_limit",
        {"deployment_tpm": 100_000, "deployment_rpm": "60"},
        {},
        100_000.0,
    ),
    ("deployment_rpm_numeric_text", "litellm_deployment_rpm_limit", {"deployment_rpm": "60"}, {}, 60.0),
    ("key_remaining_budget", "litellm_remaining_api_key_budget_metric", {}, {}, 10.0 - (2.0 + 0.25)),
    ("key_max_budget", "litellm_api_key_max_budget_metric", {}, {}, 10.0),
    ("key_budget_reset_time", "litellm_api_key_budget_remaining_hours_metric", {}, {}, RESET_EPOCH),
    (
        "key_budget_no_alias",
        "litellm_remaining_api_key_budget_metric",
        {"api_key_alias": None},
        {"api_key_alias": ""},
        7.75,
    ),
    (
        "key_budget_unknown_max",
        "litellm_remaining_api_key_budget_metric",
        {"budget": budget(user_api_key_max_budget=None)},
        {},
        None,
    ),
    (
        "key_budget_unknown_spend",
        "litellm_remaining_api_key_budget_metric",
        {"budget": budget(user_api_key_spend=None)},
        {},
        None,
    ),
    ("key_budget_not_carried", "litellm_api_key_max_budget_metric", {"budget": None}, {}, None),
    ("team_remaining_budget_table_max", "litellm_remaining_team_budget_metric", {}, {}, 50.0 - (5.0 + 0.25)),
    (
        "team_remaining_budget_request_max_first",
        "litellm_remaining_team_budget_metric",
        {"budget": budget(user_api_key_team_max_budget=20.0)},
        {},
        20.0 - 5.25,
    ),
    ("team_max_budget", "litellm_team_max_budget_metric", {}, {}, 50.0),
    ("team_budget_reset_time", "litellm_team_budget_remaining_hours_metric", {"budget": budget()}, {}, RESET_EPOCH),
    (
        "team_budget_naive_reset_is_utc",
        "litellm_team_budget_remaining_hours_metric",
        {"budget": budget(user_api_key_team_budget_reset_at="2030-01-01T00:00:00")},
        {},
        RESET_EPOCH,
    ),
    ("team_budget_no_team", "litellm_team_max_budget_metric", {"team": None}, {}, None),
]


@pytest.mark.parametrize(
    ("metric", "changes", "label_overrides", "expected"),
    [row[1:] for row in SUCCESS_ROWS],
    ids=[row[0] for row in SUCCESS_ROWS],
)
def test_success_event(
    metric: str, changes: dict[str, Any], label_overrides: dict[str, str], expected: Expected
) -> None:
    delta = apply(success(**changes))
    assert delta.stats == {"events_applied_success": 1}
    assert_change(delta, metric, labels_for(metric, **label_overrides), expected)


def test_success_touches_exactly_these_families() -> None:
    delta = apply(success())
    families = {name for name in ENGINE._labels if touched(delta, name)}
    assert families == {
        "litellm_requests_metric",
        "litellm_spend_metric",
        "litellm_total_tokens_metric",
        "litellm_input_tokens_metric",
        "litellm_output_tokens_metric",
        "litellm_remaining_api_key_budget_metric",
        "litellm_api_key_max_budget_metric",
        "litellm_api_key_budget_remaining_hours_metric",
        "litellm_remaining_team_budget_metric",
        "litellm_team_max_budget_metric",
        "litellm_team_budget_remaining_hours_metric",
        "litellm_remaining_api_key_requests_for_model",
        "litellm_remaining_api_key_tokens_for_model",
        # every v3 rate-limit series of this caller is removed: the request carried none
        "litellm_api_key_rate_limit_allowed_metric",
        "litellm_api_key_rate_limit_used_metric",
        "litellm_team_rate_limit_allowed_metric",
        "litellm_team_rate_limit_used_metric",
        "litellm_project_model_rate_limit_allowed_metric",
        "litellm_project_model_rate_limit_used_metric",
        "litellm_request_total_latency_metric",
        "litellm_llm_api_latency_metric",
        "litellm_request_queue_time_seconds",
        "litellm_overhead_latency_metric",
        "litellm_overhead_with_guardrails_latency_metric",
        "litellm_remaining_requests_metric",
        "litellm_remaining_tokens_metric",
        "litellm_deployment_state",
        "litellm_deployment_success_responses",
        "litellm_deployment_total_requests",
        "litellm_deployment_latency_per_output_token",
        "litellm_proxy_total_requests_metric",
    }


def test_reset_time_becomes_hours_at_exposition() -> None:
    delta = apply(success())
    metric = "litellm_api_key_budget_remaining_hours_metric"
    [(labels, reset)] = touched(delta, metric)
    fam = Family(ENGINE.config.metric(metric), ENGINE.label_names(metric))
    fam.gauges[tuple(labels.values())] = (float(reset), T)  # type: ignore[arg-type]
    now = RESET_EPOCH - 7200
    assert fam.samples(now) == [(metric, labels, pytest.approx(2.0))]


def test_gauges_last_write_wins_by_event_time() -> None:
    newer = success(t=T + 10, budget=budget(user_api_key_spend=3.0))
    older = success(t=T, budget=budget(user_api_key_spend=1.0))
    delta = apply(newer, older)
    [(_labels, value)] = touched(delta, "litellm_remaining_api_key_budget_metric")
    assert value == pytest.approx(10.0 - 3.25)
    [(_labels, total)] = touched(delta, "litellm_requests_metric")
    assert total == 2.0


# --------------------------------------------------------------------------------------------
# The other event kinds


def failure(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": wire.FAILURE,
        "t": T,
        "hashed_api_key": KEY,
        "api_key_alias": "key-alias",
        "team": "team-1",
        "team_alias": "Team One",
        "user": "user-1",
        "model": "gpt-4o-mini",
        "model_id": "dep-1",
        "model_group": "chat",
        "api_provider": "openai",
        "deployment": {
            "selected": True,
            "has_exception": True,
            "exception_status": "429",
            "exception_class": "Openai.RateLimitError",
            "hashed_api_key": KEY,
            "api_key_alias": "key-alias",
            "user_email": None,
            "team": "team-1",
            "team_alias": "Team One",
            "client_ip": "10.0.0.1",
            "user_agent": "curl/8.5.0",
            "litellm_model_name": "gpt-4o-mini",
            "model_id": "dep-1",
            "api_base": "https://api.example.com",
            "api_provider": "openai",
            "requested_model": "chat",
            "model_group": "chat",
            "state_api_provider": "openai",
        },
    }
    event.update(changes)
    return event


DEPLOYMENT_FAILURE_LABELS = {
    "model_group": "chat",
    "requested_model": "chat",
    "litellm_model_name": "gpt-4o-mini",
    "model_id": "dep-1",
    "api_base": "https://api.example.com",
    "api_provider": "openai",
    "exception_status": "429",
    "exception_class": "Openai.RateLimitError",
    "hashed_api_key": KEY,
    "api_key_alias": "key-alias",
    "team": "team-1",
    "team_alias": "Team One",
    "client_ip": "10.0.0.1",
    "user_agent": "curl/8.5.0",
}
UNSELECTED = {
    "selected": False,
    "has_exception": True,
    "exception_status": "500",
    "exception_class": "Openai.InternalServerError",
    "litellm_model_name": "",
    "model_id": "",
    "api_base": "",
    "api_provider": "",
    "requested_model": "other",
    "model_group": None,
}
POST_CALL = {
    "kind": wire.POST_CALL_FAILURE,
    "t": T,
    "user": "user-1",
    "user_email": "user@example.com",
    "hashed_api_key": KEY,
    "api_key_alias": "key-alias",
    "team": "team-1",
    "team_alias": "Team One",
    "org_id": "org-1",
    "org_alias": "Org One",
    "requested_model": "other",
    "status_code": "429",
    "exception_class": "Openai.RateLimitError",
    "route": "/chat/completions",
    "client_ip": "10.0.0.2",
    "user_agent": "curl/8.5.0",
    "api_provider": "openai",
}
POST_CALL_LABELS = {
    "end_user": "None",
    "hashed_api_key": KEY,
    "api_key_alias": "key-alias",
    "requested_model": "other",
    "team": "team-1",
    "team_alias": "Team One",
    "user": "user-1",
    "user_email": "user@example.com",
    "route": "/chat/completions",
    "client_ip": "10.0.0.2",
    "user_agent": "curl/8.5.0",
    "model_id": "None",
    "api_provider": "openai",
    "org_id": "org-1",
    "org_alias": "Org One",
}
FALLBACK = {
    "t": T,
    "requested_model": "primary",
    "fallback_model": "backup",
    "hashed_api_key": KEY,
    "api_key_alias": "key-alias",
    "team": "team-1",
    "team_alias": "Team One",
    "exception_status": "429",
    "exception_class": "Openai.RateLimitError",
}
FALLBACK_LABELS = {k: v for k, v in FALLBACK.items() if k != "t"} | {"model_id": "None"}
WHERE = {"litellm_model_name": "chat", "model_id": "dep-1", "api_base": "", "api_provider": "openai"}

OTHER_ROWS: list[tuple[str, dict[str, Any], str, dict[str, str], Expected]] = [
    (
        "llm_api_failed",
        failure(),
        "litellm_llm_api_failed_requests_metric",
        {
            "end_user": "None",
            "hashed_api_key": KEY,
            "api_key_alias": "key-alias",
            "model": "gpt-4o-mini",
            "team": "team-1",
            "team_alias": "Team One",
            "user": "user-1",
            "model_id": "dep-1",
        },
        1.0,
    ),
    ("deployment_failure", failure(), "litellm_deployment_failure_responses", DEPLOYMENT_FAILURE_LABELS, 1.0),
    ("deployment_total_on_failure", failure(), "litellm_deployment_total_requests", DEPLOYMENT_FAILURE_LABELS, 1.0),
    (
        "deployment_state_partial_outage",
        failure(),
        "litellm_deployment_state",
        {
            "litellm_model_name": "gpt-4o-mini",
            "model_id": "dep-1",
            "api_base": "https://api.example.com",
            "api_provider": "openai",
        },
        1.0,
    ),
    (
        "deployment_failure_unselected",
        failure(deployment={**failure()["deployment"], **UNSELECTED}),
        "litellm_deployment_failure_responses",
        {
            **DEPLOYMENT_FAILURE_LABELS,
            **{k: str(v) for k, v in UNSELECTED.items() if k not in ("selected", "has_exception")},
        },
        1.0,
    ),
    (
        "deployment_state_untouched_when_unselected",
        failure(deployment={**failure()["deployment"], **UNSELECTED}),
        "litellm_deployment_state",
        {},
        None,
    ),
    (
        "proxy_failed",
        POST_CALL,
        "litellm_proxy_failed_requests_metric",
        {**POST_CALL_LABELS, "exception_status": "429", "exception_class": "Openai.RateLimitError"},
        1.0,
    ),
    (
        "proxy_total_on_post_call_failure",
        POST_CALL,
        "litellm_proxy_total_requests_metric",
        {**POST_CALL_LABELS, "status_code": "429"},
        1.0,
    ),
    (
        "proxy_failed_401_without_key",
        {**POST_CALL, "hashed_api_key": None, "status_code": "401", "exception_class": "HTTPException"},
        "litellm_proxy_failed_requests_metric",
        {**POST_CALL_LABELS, "hashed_api_key": "None", "exception_status": "401", "exception_class": "HTTPException"},
        1.0,
    ),
    (
        "successful_fallback",
        {**FALLBACK, "kind": wire.FALLBACK_SUCCESS},
        "litellm_deployment_successful_fallbacks",
        FALLBACK_LABELS,
        1.0,
    ),
    (
        "failed_fallback",
        {**FALLBACK, "kind": wire.FALLBACK_FAILURE},
        "litellm_deployment_failed_fallbacks",
        FALLBACK_LABELS,
        1.0,
    ),
    (
        "deployment_state_complete_outage",
        {"kind": wire.DEPLOYMENT_STATE, "t": T, "state": 2, **WHERE},
        "litellm_deployment_state",
        WHERE,
        2.0,
    ),
    (
        "cooled_down",
        {"kind": wire.DEPLOYMENT_COOLED_DOWN, "t": T, **WHERE, "exception_status": "429"},
        "litellm_deployment_cooled_down",
        {**WHERE, "exception_status": "429"},
        1.0,
    ),
    (
        "provider_remaining_budget",
        {"kind": wire.PROVIDER_BUDGET, "t": T, "api_provider": "openai", "spend": 12.5, "budget_limit": 100},
        "litellm_provider_remaining_budget_metric",
        {"api_provider": "openai"},
        87.5,
    ),
    (
        "provider_budget_spend_unknown",
        {"kind": wire.PROVIDER_BUDGET, "t": T, "api_provider": "openai", "budget_limit": 100},
        "litellm_provider_remaining_budget_metric",
        {},
        None,
    ),
    (
        "provider_budget_limit_unknown",
        {"kind": wire.PROVIDER_BUDGET, "t": T, "api_provider": "openai", "spend": 1.0},
        "litellm_provider_remaining_budget_metric",
        {},
        None,
    ),
]


@pytest.mark.parametrize(
    ("event", "metric", "labels", "expected"),
    [row[1:] for row in OTHER_ROWS],
    ids=[row[0] for row in OTHER_ROWS],
)
def test_other_event(event: dict[str, Any], metric: str, labels: dict[str, str], expected: Expected) -> None:
    delta = apply(event)
    assert delta.stats == {f"events_applied_{event['kind']}": 1}
    if expected is not None:
        labels = {name: labels[name] for name in ENGINE.label_names(metric)}  # every label, in order
    assert_change(delta, metric, labels, expected)


# --------------------------------------------------------------------------------------------
# Poison events: rejected whole, counted, nothing applied

POISON: list[tuple[str, dict[str, Any], str]] = [
    ("cost_nan", success(response_cost=math.nan), "invalid_response_cost"),
    ("cost_inf", success(response_cost=math.inf), "invalid_response_cost"),
    ("cost_negative", success(response_cost=-0.01), "invalid_response_cost"),
    ("cost_enormous", success(response_cost=1e300), "invalid_response_cost"),
    ("cost_text", success(response_cost="0.25"), "invalid_response_cost"),
    ("tokens_negative", success(total_tokens=-1), "invalid_tokens"),
    ("tokens_enormous", success(prompt_tokens=10**20), "invalid_tokens"),
    ("tokens_beyond_float", success(prompt_tokens=10**400), "invalid_tokens"),
    ("state_beyond_float", {"kind": wire.DEPLOYMENT_STATE, "t": T, "state": 10**400, **WHERE}, "invalid_state"),
    ("tokens_bool", success(completion_tokens=True), "invalid_tokens"),
    ("tokens_text", success(total_tokens="30"), "invalid_tokens"),
    ("tokens_list", success(total_tokens=[30]), "invalid_tokens"),
    ("time_missing", success(t=None), "invalid_time"),
    ("time_nan", success(t=math.nan), "invalid_time"),
    ("time_negative", success(t=-5.0), "invalid_time"),
    ("latency_inf", success(latency_total=math.inf), "invalid_latency"),
    ("latency_nan", success(latency_api=math.nan), "invalid_observation"),
    ("latency_text", success(latency_ttft="0.3"), "invalid_observation"),
    ("usage_enormous", success(usage=[10**19, None, None, None, None, None, None, None, None]), "invalid_usage"),
    ("state_text", {"kind": wire.DEPLOYMENT_STATE, "t": T, "state": "2", **WHERE}, "invalid_state"),
    ("state_negative", {"kind": wire.DEPLOYMENT_STATE, "t": T, "state": -1, **WHERE}, "invalid_state"),
    ("members_negative", {"kind": wire.TEAM_MEMBERS, "t": T, "team": "t", "members": -3}, "invalid_count"),
    ("guardrail_latency_text", {"kind": wire.GUARDRAIL, "t": T, "latency_seconds": "slow"}, "invalid_latency"),
    ("file_size_nan", {"kind": wire.MANAGED_FILE_SIZE, "t": T, "size_bytes": math.nan}, "invalid_size"),
    (
        "batch_processed_malformed",
        {"kind": wire.CHECK_BATCH_COST_RUN, "t": T, "jobs_polled": 1, "processed": [[1]]},
        "malformed",
    ),
    ("unknown_kind", {"kind": "teleport", "t": T}, "unknown_kind"),
    ("no_kind", {"t": T}, "unknown_kind"),
    ("kind_not_text", {"kind": ["success"], "t": T}, "unknown_kind"),
]


@pytest.mark.parametrize(("event", "reason"), [row[1:] for row in POISON], ids=[row[0] for row in POISON])
def test_poison_event_is_rejected_whole(event: dict[str, Any], reason: str) -> None:
    good = success()
    alone = apply(good)
    delta = Delta()
    assert ENGINE.add_event(delta, good) is True
    assert ENGINE.add_event(delta, event) is False
    assert ENGINE.add_event(delta, good) is True
    # Exactly twice the good event, nothing of the poison one.
    assert delta.counters == {k: 2 * v for k, v in alone.counters.items()}
    assert {k: (h.count, h.total) for k, h in delta.histograms.items()} == {
        k: (2 * h.count, pytest.approx(2 * h.total)) for k, h in alone.histograms.items()
    }
    assert delta.gauges == alone.gauges
    assert delta.stats == {"events_applied_success": 2, f"events_rejected_{reason}": 1}


def test_an_engine_bug_is_not_counted_as_a_malformed_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception the engine did not mean to raise propagates (the consumer dead-letters the
    entry as engine_error and counts it) instead of hiding as ``events_rejected_malformed``."""
    engine = Engine(MetricsConfig.from_litellm_settings({}))

    def buggy_handler(ops: Any, ev: dict[str, Any], t: float) -> None:
        raise TypeError("a slip in a handler")

    monkeypatch.setitem(engine._handlers, wire.TEAM_MEMBERS, buggy_handler)
    delta = Delta()
    with pytest.raises(TypeError, match="a slip in a handler"):
        engine.add_event(delta, {"kind": wire.TEAM_MEMBERS, "t": T, "team": "t", "members": 3})
    assert delta.stats == {}


TOLERATED: list[tuple[str, dict[str, Any], str]] = [
    # Unusable optional inputs: the metric they feed is skipped (LiteLLM skips it too), the rest
    # of the event counts.
    (
        "usage_negative",
        success(usage=[-4, None, None, None, None, None, None, None, None]),
        "litellm_input_cached_tokens_metric",
    ),
    ("usage_not_a_list", success(usage={"cached_tokens": 4}), "litellm_input_cached_tokens_metric"),
    (
        "header_not_a_number",
        success(headers=headers(x_ratelimit_remaining_requests="lots")),
        "litellm_remaining_requests_metric",
    ),
    ("headers_not_a_list", success(headers="x_ratelimit_remaining_requests=5"), "litellm_remaining_requests_metric"),
    ("budget_text", success(budget=budget(user_api_key_max_budget="10")), "litellm_api_key_max_budget_metric"),
    ("budget_not_a_list", success(budget={"user_api_key_spend": 1}), "litellm_api_key_max_budget_metric"),
    (
        "reset_not_a_time",
        success(budget=budget(user_api_key_budget_reset_at="soon")),
        "litellm_api_key_budget_remaining_hours_metric",
    ),
    ("queue_text", success(latency_queue="0.5"), "litellm_request_queue_time_seconds"),
    ("tpm_text", success(deployment_tpm="lots"), "litellm_deployment_tpm_limit"),
    ("tpm_beyond_float", success(deployment_tpm=10**400), "litellm_deployment_tpm_limit"),
    ("key_remaining_nan", success(key_remaining_requests=math.nan), "litellm_remaining_api_key_requests_for_model"),
    ("key_remaining_text", success(key_remaining_requests="many"), "litellm_remaining_api_key_requests_for_model"),
]


@pytest.mark.parametrize(("event", "skipped"), [row[1:] for row in TOLERATED], ids=[row[0] for row in TOLERATED])
def test_unusable_optional_input_skips_only_its_metric(event: dict[str, Any], skipped: str) -> None:
    delta = apply(event)
    assert delta.stats == {"events_applied_success": 1}
    assert touched(delta, skipped) == []
    assert touched(delta, "litellm_requests_metric") != []


# --------------------------------------------------------------------------------------------
# Hostile label values

HOSTILE = [
    'double "quotes"',
    "back\\slash and \\\\ two",
    "new\nline",
    "carriage\rreturn",
    "line\u2028separator\u2029paragraph",
    '\\"\n\r\u2028 all of them "\\',
    "x" * 10_000,
    "ünïcödé ✓ 中文",
    "",
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_label_values_are_sanitised_like_litellm(value: str) -> None:
    expected = sanitize_prometheus_label_value(value)
    assert sanitize(value) == expected
    # Then cut to LSM_MAX_LABEL_VALUE_LENGTH (the 10,000-character value; below).
    expected = truncate_label_value(expected, ENGINE.max_label_value_length)
    delta = apply(success(api_key_alias=value, team=value, user_agent=value, custom_labels={"metadata_x": value}))
    [(labels, _v)] = touched(delta, "litellm_requests_metric")
    assert labels["api_key_alias"] == labels["team"] == labels["user_agent"] == expected
    if len(value) < 1000:
        assert len(labels["team"]) >= len(value) - value.count("\r") - value.count("\u2028") - value.count("\u2029")
    # The budget gauges sanitise too (an empty team has no budget gauges, as in LiteLLM).
    budget_series = touched(delta, "litellm_remaining_team_budget_metric")
    assert [labels for labels, _v in budget_series] == ([{"team": expected, "team_alias": "Team One"}] if value else [])


def test_custom_and_tag_labels_are_sanitised() -> None:
    engine = Engine(
        MetricsConfig.from_litellm_settings(
            {"custom_prometheus_metadata_labels": ["metadata.tenant"], "custom_prometheus_tags": ["prod"]}
        )
    )
    delta = Delta()
    engine.add_event(delta, success(custom_labels={"metadata_tenant": 'a"b\nc'}, tag_labels={"tag_prod": "true"}))
    mkey = engine.metric_key("litellm_requests_metric")
    [series] = [s for (k, s) in delta.counters if k == mkey]
    labels = dict(zip(engine.label_names("litellm_requests_metric"), decode_series(series), strict=True))
    assert labels["metadata_tenant"] == sanitize_prometheus_label_value('a"b\nc')
    assert labels["tag_prod"] == "true"
    # Metrics LiteLLM builds without the request's tags render a configured tag label "false".
    mkey = engine.metric_key("litellm_remaining_team_budget_metric")
    [series] = [s for (k, s) in delta.gauges if k == mkey]
    labels = dict(zip(engine.label_names("litellm_remaining_team_budget_metric"), decode_series(series), strict=True))
    assert labels == {"team": "team-1", "team_alias": "Team One", "metadata_tenant": "None", "tag_prod": "false"}


# --------------------------------------------------------------------------------------------
# Long label values: cut to LSM_MAX_LABEL_VALUE_LENGTH (UTF-8 bytes), on every path that makes a
# series, deterministically, without merging distinct values, and counted per event and label.

LIMIT = ENGINE.max_label_value_length
MIB = "A" * (1 << 20)


def series_values(delta: Delta) -> list[str]:
    """Every label value of every series the delta touches."""
    keys = [*delta.counters, *delta.histograms, *delta.gauges]
    return [v for _mkey, series in keys for v in decode_series(series) if isinstance(v, str)]


def test_truncate_label_value() -> None:
    assert truncate_label_value("short", 64) == "short"
    exact = "x" * 64
    assert truncate_label_value(exact, 64) == exact
    cut = truncate_label_value("x" * 65, 64)
    assert len(cut) == 64 and cut.startswith("x" * 44 + "...#")
    assert cut == truncate_label_value("x" * 65, 64)  # deterministic
    assert cut[-16:] == hashlib.sha256(b"x" * 65).hexdigest()[:16]
    # Two long values with the same beginning stay apart.
    assert truncate_label_value("x" * 100 + "a", 64) != truncate_label_value("x" * 100 + "b", 64)
    # Bytes, not characters, and never half a character.
    wide = "✓" * 30  # 90 bytes in 30 characters
    cut = truncate_label_value(wide, 64)
    assert len(cut.encode()) <= 64 and cut.startswith("✓" * 14 + "...#")
    assert truncate_label_value("✓" * 21, 64) == "✓" * 21  # 63 bytes: fits
    assert truncate_label_value("a\udc80" * 40, 64).isprintable()  # a lone surrogate is dropped, no error


def test_long_values_are_cut_on_every_path_that_makes_a_series() -> None:
    events = [
        success(user_agent=MIB, api_key_alias=MIB, custom_labels={"metadata_x": MIB}),
        failure(api_key_alias=MIB, deployment={**failure()["deployment"], "user_agent": MIB}),
        {**POST_CALL, "route": MIB, "user_agent": MIB},
        {"kind": wire.FALLBACK_FAILURE, **FALLBACK, "fallback_model": MIB},
        {"kind": wire.DEPLOYMENT_STATE, "t": T, "state": 2, "litellm_model_name": MIB, "model_id": "d"},
        {"kind": wire.DEPLOYMENT_COOLED_DOWN, "t": T, "litellm_model_name": MIB, "model_id": "d"},
        {"kind": wire.PROVIDER_BUDGET, "t": T, "api_provider": MIB, "spend": 1.0, "budget_limit": 5.0},
        {"kind": wire.CALLBACK_FAILURE, "t": T, "callback_name": MIB},
        {"kind": wire.GUARDRAIL, "t": T, "guardrail_name": MIB, "status": "error", "error_type": MIB,
         "hook_type": "pre_call", "latency_seconds": 0.1},
        {"kind": wire.TEAM_MEMBERS, "t": T, "team": MIB, "members": 3},
        {"kind": wire.SPEND_CAPTURE_RATE, "t": T, "api_provider": MIB, "capture_rate": 0.5},
        {"kind": wire.MANAGED_FILE_CREATED, "t": T, "model": MIB},
        {"kind": wire.MANAGED_FILE_DELETED, "t": T, "result": MIB},
        {"kind": wire.MANAGED_FILE_SIZE, "t": T, "purpose": MIB, "size_bytes": 10},
        {"kind": wire.MANAGED_BATCH_DURATION, "t": T, "model": MIB, "duration_seconds": 60},
        {"kind": wire.CHECK_BATCH_COST_RUN, "t": T, "jobs_polled": 1, "processed": [[MIB, "openai"]]},
        {"kind": wire.CHECK_BATCH_COST_ERROR, "t": T, "error_type": MIB},
    ]  # fmt: skip
    for event in events:
        delta = Delta()
        assert ENGINE.add_event(delta, event), event["kind"]
        values = series_values(delta)
        assert values, event["kind"]
        assert max(len(v.encode()) for v in values) <= LIMIT, event["kind"]
        assert any(v.startswith("AAAA") and "...#" in v for v in values), event["kind"]
        assert [k for k in delta.stats if k.startswith(TRUNCATED_STAT)], event["kind"]


def test_a_long_value_is_one_series_and_two_long_values_are_two() -> None:
    a, b = MIB + "a", MIB + "b"
    delta = apply(success(user_agent=a), success(user_agent=a), success(user_agent=b))
    agents = sorted(labels["user_agent"] for labels, _v in touched(delta, "litellm_requests_metric"))
    assert len(agents) == 2 and agents[0] != agents[1]
    assert {amount for _labels, amount in touched(delta, "litellm_requests_metric")} == {2.0, 1.0}
    # The same series in any other process (a fresh engine: nothing cached).
    again = Engine(MetricsConfig.from_litellm_settings({})).build_delta(
        [PendingEntry("1-0", "p", 1, [success(user_agent=a)])]
    )
    [(labels, _v)] = touched(again, "litellm_requests_metric")
    assert labels["user_agent"] in agents


def test_truncations_are_counted_per_event_and_label() -> None:
    delta = apply(
        success(user_agent=MIB, api_key_alias=MIB),
        success(user_agent=MIB, api_key_alias=MIB),  # the cached plan counts too
        success(),
        failure(api_key_alias=MIB),
    )
    truncated = {k: v for k, v in delta.stats.items() if k.startswith(TRUNCATED_STAT)}
    assert truncated == {f"{TRUNCATED_STAT}user_agent": 2, f"{TRUNCATED_STAT}api_key_alias": 3}


def test_the_limit_is_configurable() -> None:
    engine = Engine(MetricsConfig.from_litellm_settings({}), max_label_value_length=64)
    delta = _delta_of(engine, success(user_agent="u" * 65, api_key_alias="k" * 64))
    [(labels, _v)] = touched(delta, "litellm_requests_metric")
    assert labels["api_key_alias"] == "k" * 64
    assert len(labels["user_agent"]) == 64 and labels["user_agent"].endswith(hashlib.sha256(b"u" * 65).hexdigest()[:16])
    with pytest.raises(ValueError, match="max_label_value_length"):
        Engine(MetricsConfig.from_litellm_settings({}), max_label_value_length=20)


def test_the_caches_keep_no_long_value() -> None:
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    for i in range(50):
        _delta_of(
            engine, success(user_agent=f"{i}" + "u" * 100_000, custom_labels={"metadata_x": f"{i}" + "c" * 100_000})
        )

    def longest(obj: object) -> int:
        if isinstance(obj, str):
            return len(obj.encode())
        if isinstance(obj, tuple):
            return max((longest(x) for x in obj), default=0)
        return 0

    assert len(engine._plans) == 50
    assert max(longest(k) for k in engine._plans) <= LIMIT
    assert max(longest(k) for k in engine._series_cache) <= LIMIT
    assert max(len(s.encode()) for s in engine._series_cache.values()) <= 40 * LIMIT


# --------------------------------------------------------------------------------------------
# end_user: a real id only with LiteLLM's opt-in (enable_end_user_cost_tracking_prometheus_only),
# read from the aggregator's own configuration, whatever the event carries.

OPTED_IN = Engine(MetricsConfig.from_litellm_settings({"enable_end_user_cost_tracking_prometheus_only": True}))


def end_users(engine: Engine, delta: Delta) -> set[str | None]:
    """The end_user values of every series the delta touches."""
    found: set[str | None] = set()
    for mdef in engine.config.metrics():
        if "end_user" not in mdef.labels:
            continue
        mkey = engine.metric_key(mdef.name)
        at = engine.label_names(mdef.name).index("end_user")
        for k, series in [*delta.counters, *delta.histograms, *delta.gauges]:
            if k == mkey:
                found.add(decode_series(series)[at])
    return found


@pytest.mark.parametrize("opted_in", [False, True])
def test_end_user_label_needs_the_opt_in(opted_in: bool) -> None:
    engine = OPTED_IN if opted_in else Engine(MetricsConfig.from_litellm_settings({}))
    events = [
        success(end_user="cust-1", mcp_tool="search", mcp_server="srv"),
        failure(end_user="cust-1"),
        {**POST_CALL, "end_user": "cust-1"},
    ]
    for event in events:
        delta = _delta_of(engine, event)
        assert end_users(engine, delta) == ({"cust-1"} if opted_in else {"None"}), event["kind"]


def test_without_the_opt_in_end_users_share_one_plan() -> None:
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    delta = _delta_of(engine, *(success(end_user=f"cust-{i}") for i in range(1000)))
    assert len(touched(delta, "litellm_requests_metric")) == 1
    assert len(engine._plans) == 1  # the end user is not part of the identity either


@pytest.mark.parametrize(("value", "rendered"), [(None, "None"), (5, "5"), (1.5, "1.5"), (True, "True"), ("sk", "sk")])
def test_non_text_label_values_render_like_prometheus_client(value: object, rendered: str) -> None:
    assert sanitize(value) == rendered
    assert sanitize_prometheus_label_value(value) in (None, rendered)


# --------------------------------------------------------------------------------------------
# The success path's caches: per caller identity, the delta keys of its series (a plan), and
# the series strings by label values. They must never change a result, and stay bounded.


def _delta_of(engine: Engine, *events: dict[str, Any]) -> Delta:
    delta = Delta()
    for event in events:
        engine.add_event(delta, event)
    return delta


def _same(a: Delta, b: Delta) -> None:
    assert a.counters == b.counters
    assert {k: (h.buckets, h.total, h.count) for k, h in a.histograms.items()} == {
        k: (h.buckets, h.total, h.count) for k, h in b.histograms.items()
    }
    assert a.gauges == b.gauges
    assert a.stats == b.stats


def test_plan_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import aggregator.engine as engine_module

    monkeypatch.setattr(engine_module, "PLAN_CACHE_SIZE", 10)
    monkeypatch.setattr(engine_module, "SERIES_CACHE_SIZE", 40)
    eng = Engine(MetricsConfig.from_litellm_settings({}))
    delta = Delta()
    for i in range(100):
        ev = dict.fromkeys(wire.SUCCESS_FIELDS)
        ev.update(kind="success", t=1.0, hashed_api_key=f"{i:064x}", model="m", response_cost=0.0)
        assert eng.add_event(delta, ev)
        assert len(eng._plans) <= 10
        assert len(eng._series_cache) <= 40
    assert len(delta.counters) > 100  # every identity still counted


def test_evicted_caches_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import aggregator.engine as engine_module

    events = [success(team=f"team-{i % 7}", user_agent=f"agent-{i % 5}", t=T + i % 3) for i in range(60)]
    roomy = _delta_of(Engine(MetricsConfig.from_litellm_settings({})), *events)
    monkeypatch.setattr(engine_module, "PLAN_CACHE_SIZE", 2)
    monkeypatch.setattr(engine_module, "SERIES_CACHE_SIZE", 4)
    _same(_delta_of(Engine(MetricsConfig.from_litellm_settings({})), *events), roomy)


# Every input besides the identity fields that picks a label value of some series: a plan built
# for one value must not be reused for another.
SELECTORS: list[tuple[str, dict[str, Any]]] = [
    ("zero_cost_reason", {"zero_cost_reason": "cache_hit"}),
    ("original_model_group", {"original_model_group": "primary"}),
    ("key_model_group", {"key_model_group": "other-group"}),
    ("deployment_model_id", {"deployment_model_id": "dep-2"}),
    ("deployment_provider", {"deployment_provider": "azure"}),
    ("no_deployment", {"has_deployment": False}),
    ("user_alias", {"budget": budget(user_api_key_user_alias="Alias", user_api_key_user_max_budget=5.0)}),
    ("no_budget", {"budget": None}),
    ("mcp_tool", {"mcp_tool": "search"}),
    ("mcp_server", {"mcp_server": "tools"}),
    ("custom_labels", {"custom_labels": {"metadata_tenant": "t2"}}),
    ("tag_labels", {"tag_labels": {"tag_prod": "false"}}),
    ("stream", {"stream": True}),
    ("no_user_snapshot", {"budget": [*budget(user_api_key_user_alias="Ann"), 0]}),
]


@pytest.mark.parametrize("changes", [row[1] for row in SELECTORS], ids=[row[0] for row in SELECTORS])
def test_a_cached_plan_never_lends_its_labels(changes: dict[str, Any]) -> None:
    config = MetricsConfig.from_litellm_settings(
        {
            "custom_prometheus_metadata_labels": ["metadata.tenant"],
            "custom_prometheus_tags": ["prod"],
            "prometheus_user_budget_label_include_email_alias": True,
        }
    )
    base = success(custom_labels={"metadata_tenant": "t1"}, tag_labels={"tag_prod": "true"})
    other = {**base, **changes, "t": T + 1}
    for cached, event in ((base, other), (other, base)):
        warm = Engine(config)
        warm.add_event(Delta(), cached)  # the cached event's plan is remembered
        _same(_delta_of(warm, event), _delta_of(Engine(config), event))


def test_a_batch_equals_its_events_one_by_one() -> None:
    events = [
        success(),
        success(t=T + 5, response_cost=0.5, latency_ttft=0.2, stream=True, cache_hit=True),
        success(t=T - 5, headers=headers(**{"x-ratelimit-api_key-limit-requests": 10})),
        success(t=T + 5, headers=headers(**{"x-ratelimit-api_key-limit-requests": 10,
                                            "x-ratelimit-api_key-remaining-requests": 4})),
        failure(),
        success(usage=[4, 2, 1, 3, 5, 1.5, 2, 7, 8], zero_cost_reason="free", mcp_tool="search"),
    ]  # fmt: skip
    engine = Engine(MetricsConfig.from_litellm_settings({}))
    one_by_one = Delta()
    for event in events:
        single = apply(event)
        for k, v in single.counters.items():
            one_by_one.counters[k] = one_by_one.counters.get(k, 0.0) + v
        for k, h in single.histograms.items():
            acc = one_by_one.histograms.setdefault(k, type(h)([0] * len(h.buckets)))
            acc.buckets = [a + b for a, b in zip(acc.buckets, h.buckets, strict=True)]
            acc.total += h.total
            acc.count += h.count
        for k, (t, value) in single.gauges.items():
            if k not in one_by_one.gauges or t >= one_by_one.gauges[k][0]:
                one_by_one.gauges[k] = (t, value)
        for stat, n in single.stats.items():
            one_by_one.count(stat, n)
    _same(engine.build_delta([PendingEntry("1-0", "p", 1, events)]), one_by_one)


def test_gauge_tie_goes_to_the_later_event() -> None:
    first = success(budget=budget(user_api_key_spend=1.0))
    second = success(budget=budget(user_api_key_spend=3.0))
    [(_labels, value)] = touched(apply(first, second), "litellm_remaining_api_key_budget_metric")
    assert value == pytest.approx(10.0 - 3.25)


def test_v3_rate_limit_series_removed_when_the_pair_is_missing_last_write_wins() -> None:
    with_limits = headers(**{"x-ratelimit-api_key-limit-requests": 10, "x-ratelimit-api_key-remaining-requests": 4})
    labels = {"hashed_api_key": KEY, "api_key_alias": "key-alias", "rate_limit_type": "requests"}

    def used_requests(delta: Delta) -> list[Any]:
        changes = touched(delta, "litellm_api_key_rate_limit_used_metric")
        return [value for got, value in changes if got == labels]

    # The newer event carries the limits: the series is set; it does not: removed (None).
    assert used_requests(apply(success(t=T), success(t=T + 1, headers=with_limits))) == [6.0]
    assert used_requests(apply(success(t=T + 1), success(t=T, headers=with_limits))) == [None]


def test_an_observation_is_checked_only_when_its_histogram_is_on() -> None:
    only_requests = MetricsConfig.from_litellm_settings(
        {"prometheus_metrics_config": [{"group": "g", "metrics": ["litellm_requests_metric"]}]}
    )
    engine = Engine(only_requests)
    delta = Delta()
    # LiteLLM never observes a disabled histogram, so a bad latency there rejects nothing.
    assert engine.add_event(delta, success(latency_api="slow", latency_ttft="x", stream=True)) is True
    assert engine.add_event(delta, success(latency_total=math.inf)) is False  # the total is always read
    assert delta.stats == {"events_applied_success": 1, "events_rejected_invalid_latency": 1}


def test_the_gc_is_paused_only_while_building() -> None:
    import gc

    assert gc.isenabled()
    apply(success())
    assert gc.isenabled()
    gc.disable()
    try:
        apply(success())
        assert not gc.isenabled()  # not switched on by the engine when it was off
    finally:
        gc.enable()


def test_budget_fields_are_in_the_order_the_engine_unpacks() -> None:
    names = ("spend", "max_budget", "budget_reset_at", "team_spend", "team_max_budget", "team_table_max_budget",
             "team_budget_reset_at", "user_spend", "user_max_budget", "user_table_max_budget", "user_budget_reset_at",
             "user_alias", "org_spend", "org_max_budget")  # fmt: skip
    assert tuple(f"user_api_key_{n}" for n in names) == wire.BUDGET_FIELDS


#: Values no producer writes for a field, which a stream writer could.
ODD_VALUES: list[Any] = [["x"], {"a": 1}, [[1]], {"a": [1]}, 10**30, -(10**30), math.nan, True, "", None, ("t",)]


def _field_names() -> list[str]:
    """Every field name the engine reads from an event (``ev.get("...")``, ``g("...")``)."""
    import re
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "aggregator" / "engine.py").read_text()
    return sorted(set(re.findall(r'(?:ev\.get|\bg)\("([a-z_0-9]+)"', source)) | set(wire.SUCCESS_FIELDS))


@pytest.mark.parametrize("kind", sorted(wire.EVENT_KINDS))
def test_odd_field_values_are_applied_or_rejected_never_raised(kind: str) -> None:
    """An engine exception is reported as a bug (the entry is dead-lettered as engine_error), so
    no event a stream writer can craft may raise one: each is applied or rejected with a reason."""
    names = _field_names()
    base: dict[str, Any] = success() if kind == wire.SUCCESS else {"kind": kind, "t": T, **WHERE}
    for name in names:
        for odd in ODD_VALUES:
            event = {**base, name: odd}
            delta = Delta()
            assert ENGINE.add_event(delta, event) in (True, False), (name, odd)


@pytest.mark.parametrize(
    ("flags", "email", "alias"),
    [
        ([1], "ann@example.com", "Ann"),  # the request carried LiteLLM's user budget snapshot
        ([0], "", ""),  # custom auth: LiteLLM looks the user up; no database, empty labels
        ([], "ann@example.com", "Ann"),  # a wire 2.0 producer: read as carried, as 2.0 readers did
    ],
    ids=["snapshot", "no_snapshot", "wire_2_0"],
)
def test_user_budget_labels_follow_the_user_snapshot(flags: list[int], email: str, alias: str) -> None:
    engine = Engine(MetricsConfig.from_litellm_settings({"prometheus_user_budget_label_include_email_alias": True}))
    values = budget(
        user_api_key_user_spend=1.0,
        user_api_key_user_max_budget=20.0,  # the request's own: read with or without the snapshot
        user_api_key_user_table_max_budget=20.0,
        user_api_key_user_alias="Ann",
    )
    event = success(user="user-ann", user_email="ann@example.com", budget=values + flags)
    delta = _delta_of(engine, event)
    for name in ("litellm_remaining_user_budget_metric", "litellm_user_max_budget_metric"):
        mkey = engine.schema.metric_key(name)
        [series] = [s for (k, s) in delta.gauges if k == mkey]
        labels = dict(zip(engine.schema.label_names(name), decode_series(series), strict=True))
        assert (labels["user"], labels["user_email"], labels["user_alias"]) == ("user-ann", email, alias), name


@pytest.mark.parametrize(
    ("flags", "present"),
    [
        ([1, 1, 1, 1], {"key_reset", "team_max", "team_reset", "org"}),
        ([1, 0, 1, 1], {"team_max", "team_reset", "org"}),  # no key snapshot: no reset time
        ([1, 1, 0, 1], {"key_reset", "org"}),  # no team snapshot: no table budget, no reset
        ([1, 1, 1, 0], {"key_reset", "team_max", "team_reset"}),  # no org snapshot: no org gauges
        ([1], {"key_reset", "team_max", "team_reset", "org"}),  # a wire 2.1 producer: read as carried
    ],
    ids=["all", "no_key_snapshot", "no_team_snapshot", "no_org_snapshot", "wire_2_1"],
)
def test_snapshot_values_count_only_with_their_snapshot(flags: list[int], present: set[str]) -> None:
    """As LiteLLM's logger: what a budget snapshot carries (a key's reset time, a team's table
    budget and reset time, an org's spend and budget) is used only when the request carried
    that snapshot; the request's own spends and budgets are used either way."""
    values = budget(user_api_key_org_spend=3.0, user_api_key_org_max_budget=100.0)
    event = success(budget=values + flags)
    delta = _delta_of(ENGINE, event)
    gauges = {k for k, _s in delta.gauges}

    def has(name: str) -> bool:
        return ENGINE.schema.metric_key(name) in gauges

    found = {
        "key_reset": has("litellm_api_key_budget_remaining_hours_metric"),
        "team_max": has("litellm_team_max_budget_metric"),
        "team_reset": has("litellm_team_budget_remaining_hours_metric"),
        "org": has("litellm_org_max_budget_metric"),
    }
    assert {name for name, yes in found.items() if yes} == present
    assert has("litellm_api_key_max_budget_metric")  # the request's own key budget: always
