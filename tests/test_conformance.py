"""Conformance with LiteLLM 1.110.2's own ``PrometheusLogger`` (docs/compatibility.md).

One sequence of hook calls is captured once from real LiteLLM (``Router.acompletion`` and
``litellm.acompletion`` with ``mock_response``, streaming and not, successes, LLM failures,
fallbacks) and completed with the calls the proxy and the router make directly (post-call
failures with a real ``UserAPIKeyAuth``, router cooldowns, provider budgets, guardrails, callback
failures, team members). The captured calls are then replayed, identically and in the same order,
into

(a) LiteLLM's real ``PrometheusLogger`` on the default prometheus_client registry, and
(b) our ``StreamMetricsLogger`` -> Redis -> the aggregator (``Aggregator`` run in-process until
    every event is applied) -> ``read_families`` -> ``Family.samples``,

for several configurations, and the samples (name, label set, value) are diffed. Every
difference must be one of the documented, intended divergences (``docs/compatibility.md``);
for the seed metric set there must be none at all (the cooled-down counter aside, which
LiteLLM cannot record when custom labels are configured).

The divergences that need inputs the main sequence deliberately avoids (raw ``sk-`` keys,
unknown spend or budget, a proxy router with tpm/rpm limits) are shown by their own test at the
end. Run with ``-s`` to see the number of samples and differences per configuration.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import litellm
import pytest
import redis
from litellm.integrations.custom_logger import CustomLogger
from litellm.integrations.prometheus import PrometheusLogger
from litellm.types.integrations.prometheus import validate_caller_identity_settings
from prometheus_client import REGISTRY

from aggregator.catalog import CATALOG
from aggregator.daemon import Aggregator
from aggregator.litellm_config import MetricsConfig, PrometheusSettings
from aggregator.schema import RESET_TIME_GAUGES
from aggregator.settings import AggregatorSettings
from aggregator.snapshot import read_families
from producer import wire
from producer.callback import StreamMetricsLogger
from producer.keys import Keys
from tests.support import settings_for

# --------------------------------------------------------------------------------------------
# What is compared

#: The seed metric set (docs/compatibility.md, "How we checked"): zero differences expected (families, as exported).
SEED_FAMILIES = frozenset(
    {
        "litellm_requests_metric",
        "litellm_spend_metric",
        "litellm_total_tokens_metric",
        "litellm_input_tokens_metric",
        "litellm_output_tokens_metric",
        "litellm_proxy_total_requests_metric",
        "litellm_proxy_failed_requests_metric",
        "litellm_llm_api_failed_requests_metric",
        "litellm_request_total_latency_metric",
        "litellm_llm_api_latency_metric",
        "litellm_llm_api_time_to_first_token_metric",
        "litellm_overhead_latency_metric",
        "litellm_deployment_success_responses",
        "litellm_deployment_failure_responses",
        "litellm_deployment_total_requests",
        "litellm_deployment_state",
        "litellm_deployment_cooled_down",
        "litellm_deployment_latency_per_output_token",
        "litellm_deployment_successful_fallbacks",
        "litellm_deployment_failed_fallbacks",
        "litellm_remaining_requests_metric",
        "litellm_remaining_tokens_metric",
        "litellm_remaining_api_key_requests_for_model",
        "litellm_remaining_api_key_tokens_for_model",
        "litellm_provider_remaining_budget_metric",
        "litellm_remaining_api_key_budget_metric",
        "litellm_api_key_max_budget_metric",
        "litellm_api_key_budget_remaining_hours_metric",
        "litellm_remaining_team_budget_metric",
        "litellm_team_max_budget_metric",
        "litellm_team_budget_remaining_hours_metric",
    }
)

#: Label-less gauges LiteLLM always exports as 0 (DB crons / batch cost job): skipped unless we
#: export them too.
ALWAYS_ZERO_GAUGES = frozenset(
    {
        "litellm_total_users",
        "litellm_active_users",
        "litellm_teams_count",
        "litellm_check_batch_cost_jobs_polled",
        "litellm_check_batch_cost_last_run_timestamp",
    }
)

#: "Hours until budget reset" gauges: LiteLLM computes them when the event is processed, we when
#: the metrics are read (docs/compatibility.md). Compared with this tolerance, in hours.
HOURS_TOLERANCE = 30 / 3600

CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "custom_labels_and_tags": {
        "custom_prometheus_metadata_labels": ["metadata.tenant", "metadata.app"],
        "custom_prometheus_tags": ["prod", "User-Agent: curl/*", "batch"],
    },
    "end_user_opt_in": {"enable_end_user_cost_tracking_prometheus_only": True},
    "metrics_config_include_labels": {
        "prometheus_metrics_config": [
            {
                "group": "requests",
                "metrics": [
                    "litellm_requests_metric",
                    "litellm_spend_metric",
                    "litellm_total_tokens_metric",
                    "litellm_request_total_latency_metric",
                    "litellm_llm_api_latency_metric",
                ],
                "include_labels": ["model", "team", "hashed_api_key", "api_provider"],
            },
            {
                "group": "proxy",
                "metrics": ["litellm_proxy_total_requests_metric", "litellm_proxy_failed_requests_metric"],
                "include_labels": ["requested_model", "team", "hashed_api_key"],
            },
            {
                "group": "deployments",
                "metrics": [
                    "litellm_deployment_state",
                    "litellm_deployment_cooled_down",
                    "litellm_deployment_success_responses",
                    "litellm_deployment_failure_responses",
                    "litellm_deployment_total_requests",
                    "litellm_remaining_api_key_budget_metric",
                    "litellm_remaining_team_budget_metric",
                    "litellm_deployment_successful_fallbacks",
                ],
            },
        ]
    },
    "latency_buckets": {"prometheus_latency_buckets": [0.001, 0.1, 0.5, 1.5, 5.0]},
    "other_label_knobs": {
        "prometheus_emit_stream_label": True,
        "prometheus_emit_rate_limit_labels": True,
        "prometheus_deployment_and_latency_caller_identity": "both",
        "prometheus_user_budget_label_include_email_alias": True,
        "prometheus_emit_input_sequence_length_label": True,
        "prometheus_exclude_labels": ["client_ip"],
    },
}

# --------------------------------------------------------------------------------------------
# The traffic


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Who:
    """One caller as the proxy's auth resolves it (keys already hashed, as the proxy logs them)."""

    key: str
    alias: str | None
    team: str | None = None
    team_alias: str | None = None
    user: str | None = None
    email: str | None = None
    org: str | None = None
    org_alias: str | None = None
    end_user: str | None = None
    project: str | None = None
    project_alias: str | None = None


ALICE = Who(
    sha("sk-conf-alice"),
    "alice-key",
    "team-red",
    "Red Team",
    "u-alice",
    "alice@example.com",
    "org-1",
    "Org One",
    project="proj-7",
    project_alias="Project Seven",
)
BOB = Who(sha("sk-conf-bob"), "bob-key", "team-blue", None, "u-bob", None, "org-1", "Org One", end_user="cust-9")
# Hostile values (quotes, backslashes, newlines, CR, U+2028/9, length) must come out exactly as
# LiteLLM renders them: sanitised where LiteLLM sanitises, verbatim where it does not.
HOSTILE = 'q"uo\\te\nnew\rline\u2028sep\u2029 ' + "x" * 300
CAROL = Who(sha("sk-conf-carol"), 'ca"rol\\key\nx\r\u2028y\u2029', "team-red", "Red Team", "u-carol", None)
NOBODY = Who(sha("sk-conf-nobody"), None)
# A user whose auth carried no user budget snapshot (custom auth): LiteLLM's user budget gauges
# then take their email and alias labels from a user lookup (no database here: empty).
DAVE = Who(sha("sk-conf-dave"), "dave-key", None, None, "u-dave", "dave@example.com")
# Callers whose budget snapshots LiteLLM's pydantic models refuse or convert (custom code that
# writes the metadata): each entity's series show whether its snapshot counted.
ERIN = Who(sha("sk-conf-erin"), "erin-key", "team-erin", None, "u-erin", "erin@example.com", "org-erin", "Org Erin")
FRANK = Who(sha("sk-conf-frank"), "frank-key", "team-frank", None, "u-frank", "frank@example.com", "org-frank", None)

RESET_SOON = (datetime.now(timezone.utc) + timedelta(days=3, hours=5)).isoformat()
RESET_LATER = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")


def proxy_metadata(
    who: Who,
    spend: float,
    *,
    tags: Sequence[str] = (),
    queue: float | None = None,
    extra: Mapping[str, Any] | None = None,
    user_snapshot: bool = True,
) -> dict[str, Any]:
    """Request metadata as the proxy's pre-call setup writes it, budgets carried by auth
    (``user_snapshot=False``: without the user's budget snapshot, as custom auth leaves it)."""
    md: dict[str, Any] = {
        "user_api_key_hash": who.key,
        "user_api_key_alias": who.alias,
        "user_api_key_team_id": who.team,
        "user_api_key_team_alias": who.team_alias,
        "user_api_key_user_id": who.user,
        "user_api_key_user_email": who.email,
        "user_api_key_org_id": who.org,
        "user_api_key_org_alias": who.org_alias,
        "user_api_key_end_user_id": who.end_user,
        "user_api_key_project_id": who.project,
        "user_api_key_project_alias": who.project_alias,
        "user_api_key_request_route": "/chat/completions",
        "requester_ip_address": "10.0.0.7",
        "user_agent": "curl/8.5.0",
        # Budgets (spend before this call; auth carries them on every request).
        "user_api_key_spend": spend,
        "user_api_key_max_budget": 100.0,
        "user_api_key_budget_reset_at": RESET_SOON,
        "user_api_key_team_spend": spend * 10 if who.team else None,
        "user_api_key_team_max_budget": 500.0 if who.team else None,
        "user_api_key_team_table_max_budget": 500.0 if who.team else None,
        "user_api_key_team_budget_reset_at": RESET_LATER if who.team else None,
        "user_api_key_user_spend": spend * 2 if who.user else None,
        "user_api_key_user_max_budget": None,
        "user_api_key_user_table_max_budget": 50.0 if who.user else None,
        "user_api_key_user_budget_reset_at": RESET_LATER if who.user else None,
        "user_api_key_user_alias": None,
        "user_api_key_org_spend": spend * 100 if who.org else None,
        "user_api_key_org_max_budget": 10_000.0 if who.org else None,
        "requester_metadata": {"tenant": "acme", "region": "eu"},
        "spend_logs_metadata": {"app": "checkout"},
    }
    if tags:
        md["tags"] = list(tags)
    if queue is not None:
        md["queue_time_seconds"] = queue
    md.update(extra or {})
    if not user_snapshot:
        for key in wire.USER_SNAPSHOT_KEYS:
            del md[key]
    return md


@dataclass(frozen=True)
class Call:
    """One call of a logger method: the same arguments go to both loggers."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


class Recorder(CustomLogger):  # type: ignore[misc]
    """Records the hook calls LiteLLM makes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.calls.append(Call("async_log_success_event", (kwargs, response_obj, start_time, end_time)))

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.calls.append(Call("async_log_failure_event", (kwargs, response_obj, start_time, end_time)))

    async def log_success_fallback_event(self, original_model_group: str, kwargs: Any, original_exception: Any) -> None:
        self.calls.append(Call("log_success_fallback_event", (original_model_group, kwargs, original_exception)))

    async def log_failure_fallback_event(self, original_model_group: str, kwargs: Any, original_exception: Any) -> None:
        self.calls.append(Call("log_failure_fallback_event", (original_model_group, kwargs, original_exception)))


MESSAGES = [{"role": "user", "content": "hello there, how are you?"}]


def deployment(group: str, model: str, dep_id: str, mock: str, **limits: int) -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {"model": f"openai/{model}", "api_key": "sk-upstream", "mock_response": mock},
        "model_info": {"id": dep_id, **limits},
    }


MODEL_LIST = [
    # The only deployment with tpm/rpm, on a model no other deployment uses: LiteLLM's router
    # registers a deployment's limits per model name, process-wide.
    deployment(
        "chat-mini", "gpt-4o-mini-2024-07-18", "dep-mini", "a short answer from the mini model", tpm=200_000, rpm=300
    ),
    deployment("chat-4o", "gpt-4o", "dep-4o", "a longer answer from the bigger model, streamed in chunks"),
    deployment("primary", "gpt-4o-mini", "dep-primary", "litellm.RateLimitError"),
    deployment("backup", "gpt-4o", "dep-backup", "the backup answered"),
    deployment("primary-b", "gpt-4o-mini", "dep-primary-b", "litellm.RateLimitError"),
    deployment("backup-b", "gpt-4o", "dep-backup-b", "litellm.InternalServerError"),
    deployment("flaky", "gpt-4o-mini", "dep-flaky", "litellm.InternalServerError"),
    deployment("embed", "text-embedding-3-small", "dep-embed", "unused"),
    deployment("chat-resp", "gpt-4o-mini", "dep-resp", "an answer through the responses API"),
]
MODEL_LIST[-2]["litellm_params"]["mock_response"] = [0.1, 0.2, 0.3]
# The proxy's router, for LiteLLM's requested_model bounding: the same groups, without tpm/rpm
# (with them, LiteLLM's router-usage fallback for remaining tokens/requests would read live
# router state, which an out-of-process aggregator cannot: docs/compatibility.md).
PROXY_MODEL_LIST = [{**d, "model_info": {"id": d["model_info"]["id"]}} for d in MODEL_LIST]


def _v3_headers(*, key_remaining: int, team_remaining: int) -> dict[str, Any]:
    return {
        "x-ratelimit-api_key-limit-requests": 1000,
        "x-ratelimit-api_key-remaining-requests": key_remaining,
        "x-ratelimit-api_key-limit-tokens": 100_000,
        "x-ratelimit-api_key-remaining-tokens": key_remaining * 90,
        "x-ratelimit-team-limit-requests": 5000,
        "x-ratelimit-team-remaining-requests": team_remaining,
        "x-ratelimit-model_per_key-remaining-requests": key_remaining - 1,
        "x-ratelimit-model_per_key-remaining-tokens": key_remaining * 80,
        "x-ratelimit-model_per_project-limit-requests": 600,
        "x-ratelimit-model_per_project-remaining-requests": 590,
        "x-ratelimit-model_per_project_itpm-limit-tokens": 7000,
        "x-ratelimit-model_per_project_itpm-remaining-tokens": 6500,
        "x-ratelimit-model_per_project_otpm-limit-tokens": 3000,
        "x-ratelimit-model_per_project_otpm-remaining-tokens": "2900",  # not an int: removed
    }


def _enrich(
    slp_changes: Mapping[str, Any] | None = None,
    hidden: Mapping[str, Any] | None = None,
    usage: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    litellm_metadata: Mapping[str, Any] | None = None,
) -> Callable[[dict[str, Any]], None]:
    """Inputs mock responses cannot produce (provider headers, overhead, usage details...), set on
    the captured call before either logger sees it."""

    def apply(kwargs: dict[str, Any]) -> None:
        slp = kwargs["standard_logging_object"]
        slp.update(slp_changes or {})
        slp["hidden_params"].update(hidden or {})
        slp["metadata"].update(metadata or {})
        if usage:
            usage_object = dict(slp["metadata"].get("usage_object") or {})
            usage_object.update(usage)
            slp["metadata"]["usage_object"] = usage_object
        if litellm_metadata:
            # What a guardrail hook may plant on a chat request after the proxy filled ``metadata``:
            # LiteLLM then reads ``litellm_metadata`` with the ``user_api_key*`` keys of ``metadata``.
            kwargs["litellm_params"]["litellm_metadata"] = dict(litellm_metadata)

    return apply


async def _capture_traffic() -> list[Call]:
    """Drive real LiteLLM once; return its hook calls plus the proxy/router's direct calls."""
    from litellm.proxy._types import LiteLLM_TeamTable, Member, UserAPIKeyAuth

    recorder = Recorder()
    saved = {k: list(v) for k, v in vars(litellm).items() if isinstance(v, list) and k.endswith("callbacks")}
    saved.update({k: list(v) for k, v in vars(litellm).items() if isinstance(v, list) and k.endswith("callback")})
    litellm.callbacks = [recorder]
    router = litellm.Router(
        model_list=copy.deepcopy(MODEL_LIST),
        fallbacks=[{"primary": ["backup"]}, {"primary-b": ["backup-b"]}],
        num_retries=0,
    )
    try:

        async def settle(expected: int) -> None:
            """Wait for LiteLLM's (asynchronous) logging of the call just made."""
            deadline = time.monotonic() + 15
            while len(recorder.calls) < expected:
                if time.monotonic() > deadline:
                    raise AssertionError(f"LiteLLM made {len(recorder.calls)} hook calls, expected {expected}")
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.02)
            assert len(recorder.calls) == expected, recorder.calls[expected:]

        async def success(
            group: str,
            md: dict[str, Any],
            enrich: Callable[[dict[str, Any]], None] | None = None,
            stream: bool = False,
        ) -> None:
            before = len(recorder.calls)
            response = await router.acompletion(model=group, messages=MESSAGES, metadata=md, stream=stream)
            if stream:
                async for _chunk in response:
                    pass
            await settle(before + 1)
            if enrich is not None:
                for call in recorder.calls[before:]:
                    if call.method == "async_log_success_event":
                        enrich(call.args[0])

        # 0. Other routes: embeddings (no completion tokens), the responses API and Anthropic's
        # /v1/messages (both carry the proxy metadata in ``litellm_metadata``). First, so
        # that the v3 rate-limit series they remove are set again by the calls below.
        before = len(recorder.calls)
        await router.aembedding(model="embed", input=["hello"], metadata=proxy_metadata(BOB, 0.8))
        await settle(before + 1)
        before = len(recorder.calls)
        await router.aresponses(model="chat-resp", input="hello", litellm_metadata=proxy_metadata(ALICE, 1.6))
        await settle(before + 1)
        before = len(recorder.calls)
        await router.aanthropic_messages(
            model="chat-resp",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=16,
            litellm_metadata=proxy_metadata(CAROL, 7.2, extra={"litellm-key-remaining-tokens-chat-resp": 900}),
        )
        await settle(before + 1)

        # 1. Successes: keys, teams, users, models, streaming and not, headers, usage details.
        await success(
            "chat-mini",
            proxy_metadata(ALICE, 1.25, tags=["prod", "checkout"], queue=0.25),
            _enrich(
                hidden={
                    "additional_headers": {
                        "x_ratelimit_remaining_requests": "299",
                        "x_ratelimit_remaining_tokens": 199_000,
                        **_v3_headers(key_remaining=900, team_remaining=4000),
                    },
                    "litellm_overhead_time_ms": 12.5,
                },
                usage={
                    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 2},
                    "completion_tokens_details": {"reasoning_tokens": 7},
                },
                slp_changes={"cache_hit": False},
            ),
        )
        await success(
            "chat-mini",
            proxy_metadata(ALICE, 1.5, tags=["prod"], queue=0.0),
            _enrich(
                hidden={
                    "additional_headers": {
                        "x_ratelimit_remaining_requests": 298,
                        "x_ratelimit_remaining_tokens": "198000.5",
                        **_v3_headers(key_remaining=899, team_remaining=3999),
                    },
                    "litellm_overhead_time_ms": 3.0,
                },
                slp_changes={
                    "guardrail_information": [
                        {"guardrail_name": "presidio", "guardrail_mode": "pre_call", "duration": 0.02},
                        {"guardrail_name": "lakera", "guardrail_mode": ["post_call"], "duration": 0.03},
                    ]
                },
            ),
            stream=True,
        )
        await success(
            "chat-4o",
            proxy_metadata(BOB, 0.5, tags=["batch"], queue=1.5, extra={"litellm-key-remaining-requests-chat-4o": 41}),
            _enrich(
                hidden={
                    "litellm_overhead_time_ms": 0,  # 0: the overhead histogram skips it
                    "additional_headers": {
                        "x-ratelimit-team-limit-tokens": 90_000,
                        "x-ratelimit-team-remaining-tokens": 89_000,
                        "x-ratelimit-team-limit-requests": True,  # a bool is not an int: removed
                        "x-ratelimit-team-remaining-requests": 1,
                    },
                },
                usage={
                    "prompt_tokens_details": {"cache_write_tokens": 5},
                    "completion_tokens_details": {"audio_tokens": 6},
                    "cache_read_input_tokens": 3,
                    "output_image_count": 2,
                    "duration_seconds": 4.5,
                },
                slp_changes={"cache_hit": True, "response": {"service_tier": "flex"}},
                litellm_metadata={"guardrail_planted": "yes", "user_api_key_end_user_id": "stale-id"},
            ),
            stream=True,
        )
        await success(
            "chat-4o",
            proxy_metadata(CAROL, 7.0, tags=["User-Agent: curl/8.5.0"]),
            _enrich(
                hidden={"additional_headers": {"x_ratelimit_remaining_tokens": 5}},  # v3 series removed
                metadata={"mcp_tool_call_metadata": {"name": "search", "mcp_server_name": "docs"}},
                slp_changes={"zero_cost_diagnostic": {"reason": "missing_pricing_key", "pricing_model": "x"}},
            ),
        )
        await success("chat-mini", proxy_metadata(NOBODY, 0.0, queue=-1.0))
        await success(
            "chat-mini",
            proxy_metadata(DAVE, 0.3, user_snapshot=False, extra={"user_api_key_user_max_budget": 20.0}),
        )
        odd_snapshots = {
            "user_api_key_budget_reset_at": "some day",  # key snapshot refused
            "user_api_key_team_table_max_budget": "lots",  # team snapshot refused
            "user_api_key_user_budget_reset_at": "2026-12-24",  # a date: LiteLLM decides
            "user_api_key_org_spend": None,  # org snapshot refused (spend is required)
        }
        await success("chat-mini", proxy_metadata(ERIN, 0.4, extra=odd_snapshots))
        converted = {
            "user_api_key_team_table_max_budget": "250",  # text: converted to a number
            "user_api_key_team_budget_reset_at": 1893456000,  # a Unix time
            "user_api_key_org_max_budget": "900.5",
        }
        await success("chat-mini", proxy_metadata(FRANK, 0.6, extra=converted))
        # A plain SDK call (no router, no proxy metadata at all).
        before = len(recorder.calls)
        await litellm.acompletion(model="gpt-4o-mini", messages=MESSAGES, mock_response="plain sdk call")
        await settle(before + 1)

        # 2. LLM failures: a selected deployment (500) and an unrouted call (429).
        before = len(recorder.calls)
        with pytest.raises(litellm.InternalServerError):
            await router.acompletion(model="flaky", messages=MESSAGES, metadata=proxy_metadata(BOB, 0.75))
        await settle(before + 1)
        before = len(recorder.calls)
        with pytest.raises(litellm.RateLimitError):
            await litellm.acompletion(
                model="gpt-4o",
                messages=MESSAGES,
                metadata=proxy_metadata(ALICE, 1.75),
                mock_response=litellm.RateLimitError("slow down", llm_provider="openai", model="gpt-4o"),
            )
        await settle(before + 1)
        # A 401 from the upstream provider: a deployment failure, counted by both.
        before = len(recorder.calls)
        with pytest.raises(litellm.AuthenticationError):
            await litellm.acompletion(
                model="gpt-4o-mini",
                messages=MESSAGES,
                metadata=proxy_metadata(NOBODY, 0.0),
                mock_response=litellm.AuthenticationError(
                    "invalid api key", llm_provider="openai", model="gpt-4o-mini"
                ),
            )
        await settle(before + 1)
        # The same 401 before any upstream call (an invalid virtual key): both loggers skip it.
        auth_failure = recorder.calls[-1]
        rejected = fresh(auth_failure.args)
        rejected[0].update(api_call_start_time=None, litellm_no_upstream_llm_call=True)
        recorder.calls.append(Call(auth_failure.method, rejected))

        # 3. Fallbacks: primary (429) -> backup succeeds; primary-b (429) -> backup-b fails (500).
        before = len(recorder.calls)
        await router.acompletion(model="primary", messages=MESSAGES, metadata=proxy_metadata(CAROL, 7.5))
        await settle(before + 3)  # failure, success, fallback success
        before = len(recorder.calls)
        with pytest.raises(litellm.RateLimitError):
            await router.acompletion(
                model="primary-b", messages=MESSAGES, metadata=proxy_metadata(ALICE, 2.0, tags=["prod"])
            )
        await settle(before + 3)  # two failures, fallback failure
    finally:
        for name, value in saved.items():
            setattr(litellm, name, value)

    calls = list(recorder.calls)

    # 4. The proxy's post-call failure hook, with real auth objects.
    def auth(who: Who) -> Any:
        return UserAPIKeyAuth(
            api_key=who.key,
            key_alias=who.alias,
            team_id=who.team,
            team_alias=who.team_alias,
            user_id=who.user,
            user_email=who.email,
            org_id=who.org,
            organization_alias=who.org_alias,
            end_user_id=who.end_user,
            request_route="/chat/completions",
        )

    def request(model: str, tags: Sequence[str] = ()) -> dict[str, Any]:
        return {
            "model": model,
            "messages": MESSAGES,
            "metadata": {"requester_ip_address": "10.0.0.8", "user_agent": "curl/8.5.0", "tags": list(tags)},
            "proxy_server_request": {"headers": {"user-agent": "curl/8.5.0"}},
        }

    from fastapi import HTTPException

    calls += [
        Call(
            "async_post_call_failure_hook",
            (
                request("chat-mini", ["prod"]),
                litellm.RateLimitError(
                    "key over its rpm",
                    llm_provider="openai",
                    model="gpt-4o-mini",
                    category="litellm_rate_limit",
                    rate_limit_type="requests",
                ),
                auth(ALICE),
            ),
        ),
        Call(
            "async_post_call_failure_hook",
            (request("no-such-model"), HTTPException(status_code=401, detail="invalid key"), auth(BOB)),
        ),
        Call(
            "async_post_call_failure_hook",
            (request("no-such-model"), litellm.BudgetExceededError(current_cost=9.0, max_budget=5.0), auth(CAROL)),
        ),
        Call(
            "async_post_call_failure_hook",
            (
                request("chat-4o", ["batch"]),
                litellm.InternalServerError("boom", llm_provider="openai", model="gpt-4o"),
                auth(BOB),
            ),
        ),
    ]
    # 5. The router's cooldown callback (router_cooldown_event_callback's call shape).
    for dep_id, status in (("dep-flaky", "500"), ("dep-primary", "429"), ("dep-primary", "429")):
        group = next(d["model_name"] for d in MODEL_LIST if d["model_info"]["id"] == dep_id)
        where = {"litellm_model_name": group, "model_id": dep_id, "api_base": "", "api_provider": "openai"}
        calls.append(Call("set_deployment_complete_outage", kwargs=where))
        calls.append(Call("increment_deployment_cooled_down", kwargs={**where, "exception_status": status}))
    # 6. Provider budgets (router budget limiter), guardrails, callback failures, team members.
    calls += [
        Call("track_provider_remaining_budget", kwargs={"provider": "openai", "spend": 12.5, "budget_limit": 100.0}),
        Call("track_provider_remaining_budget", kwargs={"provider": "anthropic", "spend": 3, "budget_limit": 50}),
        Call("track_provider_remaining_budget", kwargs={"provider": "openai", "spend": 13.0, "budget_limit": 100.0}),
        Call("track_provider_remaining_budget", kwargs={"provider": HOSTILE, "spend": 1.0, "budget_limit": 2.0}),
        Call("_record_guardrail_metrics", ("presidio", 0.02, "success", None, "pre_call")),
        Call("_record_guardrail_metrics", ("lakera", 0.4, "error", "timeout", "post_call")),
        Call("_record_guardrail_metrics", ("lakera", 0.03, "blocked", None, "during_call")),
        Call("_record_guardrail_metrics", (HOSTILE, 0.5, "error", HOSTILE, "pre_call")),
        Call("increment_callback_logging_failure", ("langfuse",)),
        Call("increment_callback_logging_failure", ("langfuse",)),
        Call("increment_callback_logging_failure", ("s3_v2",)),
        Call("increment_callback_logging_failure", (HOSTILE,)),
        Call(
            "set_team_members_metric",
            (
                LiteLLM_TeamTable(
                    team_id="team-red",
                    team_alias="Red Team",
                    members_with_roles=[Member(role="admin", user_id="u-alice"), Member(role="user", user_id="u-x")],
                ),
            ),
        ),
        Call("set_spend_capture_rate", ("openai", 0.97)),
        Call("set_spend_capture_rate", ("anthropic", None)),
        Call("record_managed_batch_created", ("gpt-4o", "openai", "u-alice", "alice@example.com", "alice-key")),
        Call("record_managed_file_created", ("gpt-4o", "openai", "u-bob", None, None)),
        Call("record_managed_file_deleted", ("success",)),
        Call("record_managed_file_deleted", (HOSTILE,)),
        Call("set_spend_capture_rate", (HOSTILE, 0.5)),
        Call("record_managed_file_size", (2048, "batch", "jsonl"), {"model": "gpt-4o", "api_provider": "openai"}),
        Call("record_managed_batch_duration", (95.0,), {"model": "gpt-4o", "api_provider": "openai"}),
        Call("record_check_batch_cost_run", (3, [("gpt-4o", "openai"), (None, None)])),
        Call("record_check_batch_cost_error", ("timeout",)),
    ]
    return calls


_captured: list[Call] | None = None


async def captured_traffic() -> list[Call]:
    global _captured
    if _captured is None:
        _captured = await _capture_traffic()
    return _captured


# --------------------------------------------------------------------------------------------
# Running both sides

SETTING_KEYS = (*PrometheusSettings.model_fields, "suppress_startup_output")

Sample = tuple[str, frozenset[tuple[str, str]]]


@contextmanager
def litellm_settings(settings: Mapping[str, Any]) -> Iterator[None]:
    """The settings on the litellm module as the proxy's load_config sets them; restored afterwards."""
    saved = {key: getattr(litellm, key) for key in SETTING_KEYS}
    try:
        litellm.suppress_startup_output = True
        validate_caller_identity_settings(settings)
        for key, value in settings.items():
            setattr(litellm, key, copy.deepcopy(value))
        yield
    finally:
        for key, value in saved.items():
            setattr(litellm, key, value)


@contextmanager
def proxy_router(model_list: Sequence[Mapping[str, Any]]) -> Iterator[None]:
    """The proxy's ``llm_router`` (requested_model bounding knows the groups; unknown -> "other")."""
    from litellm.proxy import proxy_server

    saved = proxy_server.llm_router
    proxy_server.llm_router = litellm.Router(model_list=copy.deepcopy(list(model_list)))
    try:
        yield
    finally:
        proxy_server.llm_router = saved


def fresh(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """A copy of the containers (dicts, lists, tuples) of a call's arguments; other objects are
    shared. LiteLLM's logger changes some of them in place (it merges ``metadata`` into
    ``litellm_metadata``), so every logger gets its own copy of every call."""
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, dict):
        out: Any = {}
        memo[id(value)] = out
        out.update({k: fresh(v, memo) for k, v in value.items()})
        return out
    if isinstance(value, list):
        out = []
        memo[id(value)] = out
        out.extend(fresh(v, memo) for v in value)
        return out
    if isinstance(value, tuple):
        return tuple(fresh(v, memo) for v in value)
    return value


async def replay(logger: Any, calls: Sequence[Call]) -> list[tuple[str, BaseException]]:
    """Call every method like LiteLLM does (errors are swallowed by LiteLLM's callers); the errors."""
    errors: list[tuple[str, BaseException]] = []
    for call in calls:
        try:
            result = getattr(logger, call.method)(*fresh(call.args), **fresh(dict(call.kwargs)))
            if asyncio.iscoroutine(result):
                await result
        except Exception as exc:
            errors.append((call.method, exc))
    return errors


def litellm_samples(collectors: Sequence[Any]) -> dict[Sample, float]:
    out: dict[Sample, float] = {}
    for collector in collectors:
        for metric in collector.collect():
            for s in metric.samples:
                if s.name.endswith("_created"):
                    continue
                if metric.name in ALWAYS_ZERO_GAUGES and not s.labels and s.value == 0:
                    continue
                out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


@dataclass
class Run:
    theirs: dict[Sample, float]
    ours: dict[Sample, float]
    litellm_errors: list[tuple[str, BaseException]]
    rejected: dict[str, int]
    skipped: int = 0


async def run_both(
    calls: Sequence[Call],
    settings: Mapping[str, Any],
    redis_url: str,
    namespace: str,
    client: redis.Redis,
    proxy_model_list: Sequence[Mapping[str, Any]] = PROXY_MODEL_LIST,
) -> Run:
    """Replay ``calls`` into LiteLLM's logger and into ours -> Redis -> aggregator; both samples."""
    config = MetricsConfig.from_litellm_settings(settings)
    before = set(REGISTRY._names_to_collectors.values())
    try:
        with litellm_settings(settings), proxy_router(proxy_model_list):
            theirs_logger = PrometheusLogger()
            ours_logger = StreamMetricsLogger(settings=settings_for(redis_url, namespace))
            errors: list[tuple[str, BaseException]] = []
            for call in calls:
                # One call at a time into both, in the same order; ours first, so nothing LiteLLM's
                # logger changes in the kwargs (it merges metadata in place) can help ours.
                ours_errors = await replay(ours_logger, [call])
                assert not ours_errors, ours_errors
                errors += await replay(theirs_logger, [call])
            added = [c for c in set(REGISTRY._names_to_collectors.values()) if c not in before]
            theirs = litellm_samples(added)
            assert ours_logger.close(5), "the producer could not flush"
            snapshot = ours_logger.emitter.snapshot()
    finally:
        for collector in {c for c in REGISTRY._names_to_collectors.values() if c not in before}:
            REGISTRY.unregister(collector)
    sent = int(snapshot["events_sent"])
    assert int(snapshot["events_accepted"]) == sent and sent > 0, snapshot

    agg = Aggregator(
        AggregatorSettings(redis_url=redis_url, namespace=namespace, consumer_name="conformance", block_seconds=0.05),
        config,
    )
    task = asyncio.create_task(agg.run())
    stats_key = Keys(namespace).shard_stats(0)
    deadline = time.monotonic() + 20
    while int(client.hget(stats_key, "events_applied") or 0) < sent:
        assert time.monotonic() < deadline, "the aggregator did not apply every event"
        await asyncio.sleep(0.02)
    agg.stop.set()
    await asyncio.wait_for(task, 10)
    stats = {k.decode(): int(v) for k, v in client.hgetall(stats_key).items() if b"rejected" in k}

    now = time.time()
    ours: dict[Sample, float] = {}
    for fam in read_families(client, Keys(namespace), agg.schema).values():
        for name, labels, value in fam.samples(now):
            ours[(name, frozenset(labels.items()))] = value
    return Run(theirs, ours, errors, stats, int(snapshot["events_skipped"]))


# --------------------------------------------------------------------------------------------
# Diffing


@dataclass(frozen=True)
class Difference:
    family: str
    sample: str
    labels: Mapping[str, str]
    theirs: float | None
    ours: float | None

    def __str__(self) -> str:
        labels = ", ".join(f"{k}={v!r}" for k, v in sorted(self.labels.items()))
        return f"{self.sample}{{{labels}}}: litellm={self.theirs!r} ours={self.ours!r}"


def _family(sample: str, families: set[str]) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum", ""):
        if suffix and not sample.endswith(suffix):
            continue
        base = sample[: len(sample) - len(suffix)] if suffix else sample
        if base in families:
            return base
    return sample


def _same(family: str, a: float, b: float) -> bool:
    if family in RESET_TIME_FAMILIES:
        return abs(a - b) <= HOURS_TOLERANCE
    if family == "litellm_check_batch_cost_last_run_timestamp":
        return abs(a - b) <= 5  # the wall clock of two calls
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


RESET_TIME_FAMILIES = frozenset(RESET_TIME_GAUGES)
CATALOG_KIND = {m.family: m.kind for m in CATALOG.values()}
ALL_FAMILIES = {m.family for m in MetricsConfig.from_litellm_settings({}).metrics()}


def diff(run: Run) -> list[Difference]:
    out = []
    for key in sorted(set(run.theirs) | set(run.ours), key=lambda k: (k[0], sorted(k[1]))):
        sample, labels = key
        family = _family(sample, ALL_FAMILIES)
        a, b = run.theirs.get(key), run.ours.get(key)
        if a is not None and b is not None and _same(family, a, b):
            continue
        out.append(Difference(family, sample, dict(labels), a, b))
    return out


#: The intended divergences: number -> (heading on docs/compatibility.md under "Intended
#: divergences", the tests that show it). The page and this table must match
#: (test_every_intended_divergence_is_on_the_page); a Divergence that excuses a difference in the
#: comparison below names its number.
INTENDED_DIVERGENCES: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("`hashed_api_key` is always the SHA-256 of the key", ("test_conformance.py::test_intended_divergences",)),
    2: (
        "`litellm_deployment_cooled_down` is counted when custom labels are configured (LiteLLM bug)",
        ("test_conformance.py::test_same_samples_as_litellm",),
    ),
    3: (
        "An unknown spend or budget is not reported (LiteLLM reports zero spend or +Inf)",
        ("test_conformance.py::test_intended_divergences",),
    ),
    4: (
        '"Hours until budget reset" is computed when Prometheus scrapes',
        (
            "test_engine.py::test_reset_time_becomes_hours_at_exposition",
            "test_exposition.py::test_reset_time_gauges_are_hours_from_now",
        ),
    ),
    5: (
        "No router-usage fallback for `litellm_remaining_{requests,tokens}_metric`",
        ("test_conformance.py::test_intended_divergences",),
    ),
    6: (
        "No database or proxy-cache look-ups per request",
        ("test_engine.py::test_user_budget_labels_follow_the_user_snapshot",),
    ),
    7: (
        "Gauges keep the value of the newest event, not of the last one processed",
        ("test_conformance.py::test_gauges_follow_event_time_not_arrival",),
    ),
    8: (
        "When a series exists",
        (
            "test_exposition.py::test_label_less_metrics_export_zero_until_set",
            "test_series_limits.py::test_the_default_cap_folds_new_series_into_the_overflow_series",
        ),
    ),
    9: (
        "Invalid inputs: the whole event or just one gauge, never half an event",
        (
            "test_engine.py::test_poison_event_is_rejected_whole",
            "test_engine.py::test_unusable_optional_input_skips_only_its_metric",
        ),
    ),
    10: (
        "Long label values are cut to 1024 bytes",
        ("test_engine.py::test_long_values_are_cut_on_every_path_that_makes_a_series",),
    ),
}


@dataclass(frozen=True)
class Divergence:
    """An intended difference: ``item`` is its number in INTENDED_DIVERGENCES."""

    name: str
    item: int
    matches: Callable[[Difference, Mapping[str, Any]], bool]


def _custom_labels_configured(settings: Mapping[str, Any]) -> bool:
    return bool(settings.get("custom_prometheus_metadata_labels") or settings.get("custom_prometheus_tags"))


INTENDED = (
    # LiteLLM's increment_deployment_cooled_down raises "Incorrect label count" when custom
    # labels or tags are configured; we count the cooldown.
    Divergence(
        "cooled_down_counted_with_custom_labels",
        2,
        lambda d, s: d.family == "litellm_deployment_cooled_down" and d.theirs is None and _custom_labels_configured(s),
    ),
)


def _page_divergences() -> dict[int, str]:
    page = (Path(__file__).resolve().parents[1] / "docs" / "compatibility.md").read_text()
    section = page.split("\n## Intended divergences\n", 1)[1].split("\n## ", 1)[0]
    return {int(n): title for n, title in re.findall(r"^### (\d+)\. (.+)$", section, flags=re.MULTILINE)}


def test_every_intended_divergence_is_on_the_page() -> None:
    """docs/compatibility.md lists exactly the divergences the tests know, each shown by a test
    that exists; every difference the comparison excuses is one of them."""
    assert _page_divergences() == {n: title for n, (title, _tests) in INTENDED_DIVERGENCES.items()}
    tests_dir = Path(__file__).resolve().parent
    for n, (_title, tests) in INTENDED_DIVERGENCES.items():
        for ref in tests:
            file, _, name = ref.partition("::")
            assert f"def {name}(" in (tests_dir / file).read_text(), f"divergence {n}: {ref} does not exist"
    assert {div.item for div in INTENDED} <= set(INTENDED_DIVERGENCES)


def unexplained(differences: Sequence[Difference], settings: Mapping[str, Any]) -> list[Difference]:
    return [d for d in differences if not any(div.matches(d, settings) for div in INTENDED)]


# --------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module", autouse=True)
def _proxy_server_imported() -> None:
    """LiteLLM's logger imports ``litellm.proxy.proxy_server`` on first use: pay for it once."""
    import litellm.proxy.proxy_server  # noqa: F401


@pytest.mark.parametrize("config_name", list(CONFIGS))
async def test_same_samples_as_litellm(
    config_name: str, redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    settings = CONFIGS[config_name]
    config = MetricsConfig.from_litellm_settings(settings)
    calls = await captured_traffic()
    run = await run_both(calls, settings, redis_url, namespace, redis_client)
    differences = diff(run)
    seed = [d for d in differences if d.family in SEED_FAMILIES]
    print(
        f"\nconformance[{config_name}]: {len(run.theirs)} LiteLLM samples, {len(run.ours)} ours, "
        f"{len(differences)} differences ({len(seed)} in the seed set)"
    )

    assert run.rejected == {}, run.rejected
    assert run.skipped == 1  # the invalid-key failure, which LiteLLM's logger skips too
    if config.enabled("litellm_deployment_failure_responses"):  # the upstream 401 is counted by both
        assert any(("exception_status", "401") in labels for _name, labels in run.theirs)
    left = unexplained(differences, settings)
    report = "\n".join(str(d) for d in left)
    assert not left, f"{len(left)} unexplained differences with {config_name}:\n{report}"
    if _custom_labels_configured(settings):
        # The only difference: LiteLLM could not count the cooldowns (divergence 2), we did.
        assert {d.family for d in differences} == {"litellm_deployment_cooled_down"}
        assert all(d.theirs is None and d.ours for d in differences)
        cooldown_errors = [e for method, e in run.litellm_errors if method == "increment_deployment_cooled_down"]
        assert [str(e) for e in cooldown_errors] == ["Incorrect label count"] * 3
        assert len(run.litellm_errors) == 3
    else:
        assert differences == []
        assert run.litellm_errors == []

    # Not vacuous: every enabled seed family has series, and so do most of the others.
    enabled = {m.family for m in config.metrics()}
    covered = {_family(name, ALL_FAMILIES) for name, _labels in run.ours}
    assert SEED_FAMILIES & enabled <= covered, sorted(SEED_FAMILIES & enabled - covered)
    not_covered = enabled - covered - ALWAYS_ZERO_GAUGES
    # Needs the proxy's customer cache (not per request here) / a DB (org reset times): see
    # test_intended_divergences and docs/compatibility.md.
    assert not_covered <= {
        "litellm_remaining_customer_budget_metric",
        "litellm_customer_max_budget_metric",
        "litellm_customer_budget_remaining_hours_metric",
        "litellm_org_budget_remaining_hours_metric",
    }, sorted(not_covered)


def _success_of(calls: Sequence[Call], alias: str | None, model_group: str) -> Call:
    """The first captured success of this caller on this model group."""
    for call in calls:
        if call.method != "async_log_success_event":
            continue
        slp = call.args[0]["standard_logging_object"]
        if slp["metadata"]["user_api_key_alias"] == alias and slp["model_group"] == model_group:
            return call
    raise AssertionError(f"no captured success for {alias!r} on {model_group!r}")


def _with_metadata(call: Call, changes: Mapping[str, Any]) -> Call:
    """A copy of a captured hook call with request metadata changed as the proxy would have
    carried it (both the request metadata and the SLP metadata built from it)."""
    args = fresh(call.args)
    kwargs = args[0]
    kwargs["litellm_params"]["metadata"].update(changes)
    slp_md = kwargs["standard_logging_object"]["metadata"]
    slp_md.update({k: v for k, v in changes.items() if k in slp_md})
    return Call(call.method, args)


RAW_KEY = "sk-conformance-raw-key-0001"


async def test_intended_divergences(redis_url: str, namespace: str, redis_client: redis.Redis) -> None:
    """The divergences the main sequence avoids, shown on purpose (docs/compatibility.md):

    (a) a raw ``sk-`` key in the SLP: LiteLLM exports it verbatim in ``hashed_api_key`` on most
        metrics, we export its SHA-256 (what LiteLLM itself puts on the budget gauges);
    (c) unknown spend or budget: LiteLLM reports remaining = +Inf (no max budget) or the full
        budget (spend unknown), we report nothing;
    (e) remaining tokens/requests from the proxy router's live usage when the provider sent no
        headers: LiteLLM reads the router, we cannot.
    """
    captured = await captured_traffic()
    alice = _success_of(captured, "alice-key", "chat-mini")
    bob = _success_of(captured, "bob-key", "chat-4o")
    successes = [
        # (a) a raw key (plain SDK use / custom auth logging the key itself).
        _with_metadata(alice, {"user_api_key_hash": RAW_KEY}),
        # (c) budgets the proxy did not know.
        _with_metadata(
            alice,
            {
                "user_api_key_hash": sha("sk-no-budget"),
                "user_api_key_alias": "no-budget-key",
                "user_api_key_max_budget": None,  # no key budget: LiteLLM +Inf
                "user_api_key_team_id": "team-unknown-spend",
                "user_api_key_team_spend": None,  # unknown spend: LiteLLM max - cost
                "user_api_key_user_id": "u-no-budget",
                "user_api_key_user_max_budget": None,
                "user_api_key_user_table_max_budget": None,  # LiteLLM +Inf
                "user_api_key_org_id": "org-no-budget",
                "user_api_key_org_max_budget": None,  # LiteLLM +Inf
            },
        ),
        # (e) no x_ratelimit_remaining_* headers, and the proxy router has tpm/rpm for the group.
        bob,
    ]
    # In the order the calls happened (our gauges keep the write with the newest event time).
    calls = [
        *sorted(successes, key=lambda call: call.args[0]["end_time"]),
        Call("track_provider_remaining_budget", kwargs={"provider": "bedrock", "spend": None, "budget_limit": 10.0}),
        Call("track_provider_remaining_budget", kwargs={"provider": "vertex_ai", "spend": 1.0, "budget_limit": None}),
    ]
    limited = [
        {**d, "model_info": {**d["model_info"], "tpm": 50_000, "rpm": 60}} if d["model_name"] == "chat-4o" else d
        for d in PROXY_MODEL_LIST
    ]
    run = await run_both(calls, {}, redis_url, namespace, redis_client, proxy_model_list=limited)
    assert run.rejected == {} and run.litellm_errors == []

    # (a): LiteLLM's raw key is our hash; with that mapping the request metrics agree.
    raw_series = {(name, labels) for name, labels in run.theirs if ("hashed_api_key", RAW_KEY) in labels}
    assert {_family(name, ALL_FAMILIES) for name, _ in raw_series} >= {
        "litellm_requests_metric",
        "litellm_spend_metric",
        "litellm_deployment_success_responses",
        "litellm_request_total_latency_metric",
    }
    assert not any(("hashed_api_key", RAW_KEY) in labels for _name, labels in run.ours)
    mapped = Run(
        {
            (name, frozenset((k, sha(RAW_KEY) if (k, v) == ("hashed_api_key", RAW_KEY) else v) for k, v in labels)): v
            for (name, labels), v in run.theirs.items()
        },
        run.ours,
        run.litellm_errors,
        run.rejected,
    )
    differences = diff(mapped)

    # (c) and (e): series only LiteLLM has.
    assert all(d.ours is None for d in differences), [str(d) for d in differences if d.ours is not None]
    by_family: dict[str, list[Difference]] = {}
    for d in differences:
        by_family.setdefault(d.family, []).append(d)
    assert set(by_family) == {
        "litellm_remaining_api_key_budget_metric",
        "litellm_remaining_team_budget_metric",
        "litellm_remaining_user_budget_metric",
        "litellm_remaining_org_budget_metric",
        "litellm_provider_remaining_budget_metric",
        "litellm_remaining_requests_metric",
        "litellm_remaining_tokens_metric",
    }, sorted(by_family)
    inf = math.inf
    assert [d.theirs for d in by_family["litellm_remaining_api_key_budget_metric"]] == [inf]
    assert [d.labels["team"] for d in by_family["litellm_remaining_team_budget_metric"]] == ["team-unknown-spend"]
    assert 499 < (by_family["litellm_remaining_team_budget_metric"][0].theirs or 0) < 500  # the full budget - cost
    assert [d.theirs for d in by_family["litellm_remaining_user_budget_metric"]] == [inf]
    assert [d.theirs for d in by_family["litellm_remaining_org_budget_metric"]] == [inf]
    assert sorted(
        (d.labels["api_provider"], d.theirs) for d in by_family["litellm_provider_remaining_budget_metric"]
    ) == [
        ("bedrock", 10.0),  # spend unknown: "the full budget"
        ("vertex_ai", inf),
    ]
    for family in ("litellm_remaining_requests_metric", "litellm_remaining_tokens_metric"):
        assert [(d.labels["model_group"], d.theirs) for d in by_family[family]] == [
            ("chat-4o", 50_000 if family.endswith("tokens_metric") else 60)  # the router's usage
        ]


async def test_gauges_follow_event_time_not_arrival(redis_url: str, namespace: str, redis_client: redis.Redis) -> None:
    """(g) Two successes of one key processed out of order (the later call's hook ran first):
    LiteLLM keeps the budget snapshot processed last, we keep the one of the newest call."""
    captured = await captured_traffic()
    alice = [
        c
        for c in captured
        if c.method == "async_log_success_event"
        and c.args[0]["standard_logging_object"]["metadata"]["user_api_key_alias"] == "alice-key"
        and c.args[0]["standard_logging_object"]["model_group"] == "chat-mini"
    ]
    first, second = alice[:2]
    assert first.args[0]["end_time"] < second.args[0]["end_time"]
    run = await run_both([second, first], {}, redis_url, namespace, redis_client)
    differences = diff(run)
    gauge_families = {d.family for d in differences}
    assert gauge_families and all(CATALOG_KIND[f] == "gauge" for f in gauge_families), gauge_families
    remaining = [d for d in differences if d.family == "litellm_remaining_api_key_budget_metric"]
    [d] = remaining
    spend_first = first.args[0]["litellm_params"]["metadata"]["user_api_key_spend"]
    spend_second = second.args[0]["litellm_params"]["metadata"]["user_api_key_spend"]
    assert spend_first < spend_second
    assert d.theirs is not None and d.ours is not None and d.ours < d.theirs  # ours: the newer, higher spend
