#!/usr/bin/env python
"""Producer benchmark: LiteLLM's own ``PrometheusLogger`` against ``StreamMetricsLogger``.

Both loggers get the *same* generated hook calls (``async_log_success_event`` /
``async_log_failure_event`` with kwargs shaped like the LiteLLM proxy's), fed one after another
in one asyncio loop. Measured per logger and run:

* the awaited hook call alone (``time.perf_counter_ns`` around the ``await``): mean, success
  mean, failure mean, p50, p99;
* process CPU time (``time.process_time``: every thread of this process, so the producer's
  writer thread too) from the first hook call until the logger is done: for LiteLLM when the
  last hook returns, for ours when ``close()`` returns, i.e. every event is in Redis;
* RSS growth during the run (sampled every 1,024 calls), Redis memory and bytes per event
  (ours), Redis server CPU during the run (ours; server-wide, so approximate).

Each logger runs ``--repeat`` times with a fresh instance (order alternates between runs) and
the table shows the median of the runs.

LiteLLM's logger registers its collectors in prometheus_client's default ``REGISTRY``; a second
instance in the same process would collide. The bench therefore unregisters every collector an
instance added once its run is over, so each run starts with a fresh logger and no series.

Inputs are built once, up front, and the same objects are fed to both loggers. A structural
copy (dicts and lists copied, leaves such as strings, datetimes and exceptions shared) is kept as
a reference: after every run the fed calls are compared with it; a run that changed them is
flagged ("mutated inputs") and the calls are restored from the reference before the next run.
The inputs are moved out of the cyclic GC's generations (``gc.freeze``) once they are built.

Usage::

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/producer_bench.py \\
        [--success 20000] [--failure 2000] [--redis-url redis://127.0.0.1:6379/0] [--repeat 3]

Only the public API of the producer is used: ``StreamMetricsLogger(settings=...)``, its hooks,
``close()`` and ``ProducerSettings``; the stream is read back with the field names of the wire
format (``producer.wire``). ``--profile TOP`` adds a cProfile of our success hook, called through
the same public hook.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import importlib.metadata
import os
import platform
import random
import resource
import statistics
import sys
import time
import uuid
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TARGET_HOOK_RATIO = 200.0
TARGET_CPU_RATIO = 100.0

# A hook call: (is_success, kwargs, response_obj, start_time, end_time).
Call = tuple[bool, dict[str, Any], Any, datetime, datetime]


# =================================================================================================
# Input generation
# =================================================================================================

_PROVIDER_BASES = {
    "openai": "https://api.openai.com/v1",
    "azure": "https://{region}.openai.azure.com/",
    "anthropic": "https://api.anthropic.com/v1",
    "bedrock": "https://bedrock-runtime.{region}.amazonaws.com",
    "vertex_ai": "https://{region}-aiplatform.googleapis.com",
}
# 20 model groups: (model_group, provider, upstream model, $/1k input, $/1k output, reasoning).
_MODEL_GROUPS = (
    ("gpt-4o", "azure", "gpt-4o", 0.0025, 0.01, False),
    ("gpt-4o-mini", "openai", "gpt-4o-mini", 0.00015, 0.0006, False),
    ("gpt-4.1", "azure", "gpt-4.1", 0.002, 0.008, False),
    ("gpt-4.1-mini", "openai", "gpt-4.1-mini", 0.0004, 0.0016, False),
    ("gpt-4.1-nano", "openai", "gpt-4.1-nano", 0.0001, 0.0004, False),
    ("o3-mini", "openai", "o3-mini", 0.0011, 0.0044, True),
    ("o4-mini", "azure", "o4-mini", 0.0011, 0.0044, True),
    ("claude-3-5-sonnet", "anthropic", "claude-3-5-sonnet-20241022", 0.003, 0.015, False),
    ("claude-3-5-haiku", "anthropic", "claude-3-5-haiku-20241022", 0.0008, 0.004, False),
    ("claude-3-7-sonnet", "bedrock", "anthropic.claude-3-7-sonnet-20250219-v1:0", 0.003, 0.015, True),
    ("claude-sonnet-4", "anthropic", "claude-sonnet-4-20250514", 0.003, 0.015, True),
    ("gemini-1.5-pro", "vertex_ai", "gemini-1.5-pro", 0.00125, 0.005, False),
    ("gemini-2.0-flash", "vertex_ai", "gemini-2.0-flash-001", 0.0001, 0.0004, False),
    ("gemini-2.5-pro", "vertex_ai", "gemini-2.5-pro", 0.00125, 0.01, True),
    ("llama-3-70b", "bedrock", "meta.llama3-70b-instruct-v1:0", 0.00265, 0.0035, False),
    ("mistral-large", "bedrock", "mistral.mistral-large-2407-v1:0", 0.002, 0.006, False),
    ("command-r-plus", "bedrock", "cohere.command-r-plus-v1:0", 0.0025, 0.01, False),
    ("gpt-35-turbo", "azure", "gpt-35-turbo", 0.0005, 0.0015, False),
    ("text-embedding-3-large", "openai", "text-embedding-3-large", 0.00013, 0.0, False),
    ("nova-pro", "bedrock", "amazon.nova-pro-v1:0", 0.0008, 0.0032, False),
)
_REGIONS = ("eastus", "westeurope", "us-east-1", "eu-west-1", "us-central1")
_TAGS = ("prod", "staging", "batch", "chat-ui", "agent", "eval", "rag", "support-bot", "internal", "ci")
_USER_AGENTS = (
    "OpenAI/Python 1.82.0",
    "OpenAI/Python 1.99.9",
    "AsyncOpenAI/Python 1.99.9",
    "langchain-openai/0.3.27",
    "Anthropic/Python 0.57.1",
    "curl/8.5.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
)
_PROMPTS = (
    "Summarise the following support ticket in two sentences.",
    "Translate this paragraph to German and keep the formatting.",
    "Write a SQL query that returns the ten most active customers last month.",
    "Explain the difference between a mutex and a semaphore.",
    "Classify the sentiment of this review as positive, neutral or negative.",
    "Draft a polite reply declining the meeting invitation.",
)
# Fields of ``litellm_params`` the proxy always sets (values mostly None), as captured from a
# real ``litellm.acompletion`` call with LiteLLM 1.110.2.
_LITELLM_PARAMS_NONE_FIELDS = (
    "aembedding", "allm_passthrough_route", "api_key", "api_version", "async_call", "azure_ad_token",
    "azure_ad_token_provider", "azure_password", "azure_scope", "azure_username", "base_model",
    "chatgpt_auth_file", "client_id", "client_secret", "completion_call_id", "cooldown_time",
    "cost_per_query", "cost_per_second", "data_residency", "disable_add_transform_inline_image_block",
    "drop_params", "gigachat_access_token", "gigachat_auth_url", "gigachat_scope", "hf_model_name",
    "input_cost_per_second", "input_cost_per_token", "litellm_metadata", "litellm_session_id",
    "litellm_trace_id", "logger_fn", "max_retries", "merge_reasoning_content_in_choices", "no-log",
    "output_cost_per_second", "output_cost_per_token", "preset_cache_key", "prompt_id",
    "prompt_variables", "ssl_verify", "tenant_id", "text_completion", "user_continue_message",
)  # fmt: skip


@dataclass
class _Team:
    team_id: str
    alias: str
    org_id: str | None
    org_alias: str | None
    spend: float
    max_budget: float | None
    budget_reset_at: datetime | None
    rpm: int
    tpm: int


@dataclass
class _Key:
    token: str  # sha256 hex of the raw key, what the proxy logs as user_api_key_hash
    alias: str
    team: _Team
    user_id: str
    user_email: str
    spend: float
    max_budget: float | None
    budget_reset_at: datetime | None
    rpm: int
    tpm: int
    ip: str
    user_agent: str
    auth: Any = None  # UserAPIKeyAuth, as the proxy carries it in litellm_params.metadata


@dataclass
class _Deployment:
    model_group: str
    provider: str
    model: str  # kwargs["model"]: the upstream model name
    model_id: str
    api_base: str
    tpm: int
    rpm: int
    price_in: float
    price_out: float
    reasoning: bool
    response: Any = None  # a shared litellm.ModelResponse for response_obj


@dataclass
class _World:
    teams: list[_Team]
    keys: list[_Key]
    key_weights: list[float]
    deployments: list[_Deployment]
    deployment_weights: list[float]
    exceptions: dict[tuple[str, str], BaseException]


def _build_world(rng: random.Random, n_keys: int, n_teams: int, now: datetime) -> _World:
    import litellm
    from litellm.proxy._types import UserAPIKeyAuth

    n_orgs = 5
    teams = []
    for t in range(n_teams):
        org = t % (n_orgs + 1)  # one team in six has no organisation
        has_budget = rng.random() < 0.7
        teams.append(
            _Team(
                team_id=str(uuid.UUID(int=rng.getrandbits(128))),
                alias=f"team-{t:02d}",
                org_id=None if org == n_orgs else f"org-{org}",
                org_alias=None if org == n_orgs else f"Organisation {org}",
                spend=round(rng.uniform(0, 900), 4),
                max_budget=float(rng.choice((500, 1000, 5000))) if has_budget else None,
                budget_reset_at=now + timedelta(hours=rng.uniform(1, 700)) if has_budget else None,
                rpm=rng.choice((600, 1200, 6000)),
                tpm=rng.choice((200_000, 1_000_000, 5_000_000)),
            )
        )
    keys = []
    for k in range(n_keys):
        team = teams[k % n_teams]
        has_budget = rng.random() < 0.6
        user = k % (n_keys * 3 // 4 or 1)
        key = _Key(
            token=hashlib.sha256(f"sk-bench-{k}-{rng.random()}".encode()).hexdigest(),
            alias=f"{team.alias}-key-{k:03d}",
            team=team,
            user_id=f"user-{user:04d}",
            user_email=f"user{user}@example.com",
            spend=round(rng.uniform(0, 90), 4),
            max_budget=float(rng.choice((50, 100, 250))) if has_budget else None,
            budget_reset_at=now + timedelta(hours=rng.uniform(1, 700)) if has_budget else None,
            rpm=rng.choice((60, 120, 600)),
            tpm=rng.choice((50_000, 100_000, 400_000)),
            ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            user_agent=rng.choice(_USER_AGENTS),
        )
        key.auth = UserAPIKeyAuth(
            token=key.token,
            key_alias=key.alias,
            spend=key.spend,
            max_budget=key.max_budget,
            user_id=key.user_id,
            user_email=key.user_email,
            team_id=team.team_id,
            team_alias=team.alias,
            team_spend=team.spend,
            team_max_budget=team.max_budget,
            org_id=team.org_id,
            organization_alias=team.org_alias,
            rpm_limit=key.rpm,
            tpm_limit=key.tpm,
            budget_reset_at=key.budget_reset_at,
            request_route="/chat/completions",
            metadata={"cost_center": f"cc-{k % 7}"},
        )
        keys.append(key)
    deployments = []
    exceptions: dict[tuple[str, str], BaseException] = {}
    for group, provider, model, price_in, price_out, reasoning in _MODEL_GROUPS:
        for d in range(2):  # two deployments per model group
            region = _REGIONS[(d + len(deployments)) % len(_REGIONS)]
            dep = _Deployment(
                model_group=group,
                provider=provider,
                model=model,
                model_id=hashlib.sha256(f"{group}-{d}".encode()).hexdigest(),
                api_base=_PROVIDER_BASES[provider].format(region=region),
                tpm=rng.choice((1_000_000, 2_000_000, 10_000_000)),
                rpm=rng.choice((6_000, 10_000, 30_000)),
                price_in=price_in,
                price_out=price_out,
                reasoning=reasoning,
            )
            dep.response = litellm.ModelResponse(
                model=model,
                choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "OK."}}],
                usage={"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160},
            )
            deployments.append(dep)
        exceptions[(group, "rate_limit")] = litellm.RateLimitError(
            message=f"{provider}Exception - Rate limit reached for {model} in organization on tokens per min",
            llm_provider=provider,
            model=model,
        )
        exceptions[(group, "internal")] = litellm.InternalServerError(
            message=f"{provider}Exception - The server had an error while processing your request.",
            llm_provider=provider,
            model=model,
        )
    # Skewed traffic: a few keys and models carry most of it.
    key_weights = [1.0 / (i + 1) ** 0.8 for i in range(n_keys)]
    deployment_weights = [1.0 / (i // 2 + 1) ** 0.7 for i in range(len(deployments))]
    return _World(teams, keys, key_weights, deployments, deployment_weights, exceptions)


def _slp_metadata(key: _Key, usage: dict[str, Any] | None, user_agent: str, spend_md: Any) -> dict[str, Any]:
    team = key.team
    return {
        "user_api_key_hash": key.token,
        "user_api_key_alias": key.alias,
        "user_api_key_spend": key.spend,
        "user_api_key_max_budget": key.max_budget,
        "user_api_key_budget_reset_at": key.budget_reset_at.isoformat() if key.budget_reset_at else None,
        "user_api_key_user_spend": None,
        "user_api_key_user_max_budget": None,
        "user_api_key_team_spend": team.spend,
        "user_api_key_team_max_budget": team.max_budget,
        "user_api_key_org_id": team.org_id,
        "user_api_key_org_alias": team.org_alias,
        "user_api_key_team_id": team.team_id,
        "user_api_key_project_id": None,
        "user_api_key_project_alias": None,
        "user_api_key_user_id": key.user_id,
        "user_api_key_user_email": key.user_email,
        "user_api_key_team_alias": team.alias,
        "user_api_key_end_user_id": None,
        "user_api_key_request_route": "/chat/completions",
        "user_api_key_auth_metadata": {"cost_center": key.auth.metadata["cost_center"]},
        "spend_logs_metadata": spend_md,
        "requester_ip_address": key.ip,
        "user_agent": user_agent,
        "requester_metadata": {},
        "requester_custom_headers": None,
        "prompt_management_metadata": None,
        "mcp_tool_call_metadata": None,
        "vector_store_request_metadata": None,
        "routing_decision": None,
        "kubernetes_pod_routing": None,
        "applied_guardrails": [],
        "usage_object": usage,
        "cold_storage_object_key": None,
        "team_alias": None,
        "team_id": None,
        "used_client_oauth_token": None,
    }


def _proxy_metadata(
    key: _Key, dep: _Deployment, user_agent: str, tags: list[str], hidden: dict[str, Any], spend_md: Any
) -> dict[str, Any]:
    """``litellm_params["metadata"]`` as the proxy fills it (auth, routing, budgets)."""
    team = key.team
    md: dict[str, Any] = {
        "requester_metadata": {},
        "user_api_key_hash": key.token,
        "user_api_key_alias": key.alias,
        "user_api_key_spend": key.spend,
        "user_api_key_max_budget": key.max_budget,
        "user_api_key_budget_reset_at": key.budget_reset_at.isoformat() if key.budget_reset_at else None,
        "user_api_key_user_spend": None,
        "user_api_key_user_max_budget": None,
        "user_api_key_team_id": team.team_id,
        "user_api_key_team_alias": team.alias,
        "user_api_key_team_spend": team.spend,
        "user_api_key_team_max_budget": team.max_budget,
        "user_api_key_team_budget_reset_at": team.budget_reset_at.isoformat() if team.budget_reset_at else None,
        "user_api_key_team_table_max_budget": team.max_budget,
        "user_api_key_org_id": team.org_id,
        "user_api_key_org_alias": team.org_alias,
        "user_api_key_project_id": None,
        "user_api_key_project_alias": None,
        "user_api_key_user_id": key.user_id,
        "user_api_key_user_email": key.user_email,
        "user_api_key_end_user_id": None,
        "user_api_key_request_route": "/chat/completions",
        "user_api_key_auth_metadata": {"cost_center": key.auth.metadata["cost_center"]},
        "user_api_key": key.token,
        "user_api_end_user_max_budget": None,
        "user_api_key_model_max_budget": {},
        "user_api_key_team_model_max_budget": {},
        "user_api_key_metadata": {"cost_center": key.auth.metadata["cost_center"]},
        "user_api_key_team_metadata": {},
        "user_api_key_auth": key.auth,
        "spend_logs_metadata": spend_md,
        "headers": {"content-type": "application/json", "user-agent": user_agent, "x-forwarded-for": key.ip},
        "endpoint": "http://litellm-proxy:4000/chat/completions",
        "litellm_api_version": "1.110.2",
        "global_max_parallel_requests": None,
        "requester_ip_address": key.ip,
        "user_agent": user_agent,
        "tags": tags,
        "model_group": dep.model_group,
        "model_group_size": 2,
        "deployment": f"{dep.provider}/{dep.model}",
        "model_info": {"id": dep.model_id, "db_model": False, "tpm": dep.tpm, "rpm": dep.rpm},
        "api_base": dep.api_base,
        "caching_groups": None,
        "hidden_params": hidden,
    }
    return md


def _litellm_params(dep: _Deployment, call_id: str, metadata: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    lp: dict[str, Any] = dict.fromkeys(_LITELLM_PARAMS_NONE_FIELDS)
    lp.update(
        acompletion=True,
        api_base=dep.api_base,
        custom_llm_provider=dep.provider,
        custom_prompt_dict={},
        force_timeout=600,
        litellm_call_id=call_id,
        litellm_request_debug=False,
        metadata=metadata,
        model_alias_map={},
        model_info={"id": dep.model_id, "db_model": False, "tpm": dep.tpm, "rpm": dep.rpm},
        proxy_server_request={
            "url": "http://litellm-proxy:4000/chat/completions",
            "method": "POST",
            # A traced fleet: every request carries a W3C trace (what LSM_EXEMPLARS ships).
            "headers": {
                "content-type": "application/json",
                "user-agent": metadata["user_agent"],
                "traceparent": f"00-{hashlib.md5(call_id.encode()).hexdigest()}-00f067aa0ba902b7-01",
            },
            "body": body,
        },
        rpm=None,
        stream_response={},
        timeout=600.0,
        tpm=None,
        use_litellm_proxy=False,
        use_xai_oauth=False,
        verbose=False,
    )
    return lp


def _v3_headers(rng: random.Random, key: _Key) -> dict[str, int]:
    """What the v3 parallel-request limiter mirrors into additional_headers (plain ints)."""
    team = key.team
    used_rk, used_tk = rng.randrange(key.rpm), rng.randrange(key.tpm)
    used_rt, used_tt = rng.randrange(team.rpm), rng.randrange(team.tpm)
    return {
        "x-ratelimit-api_key-limit-requests": key.rpm,
        "x-ratelimit-api_key-remaining-requests": key.rpm - used_rk,
        "x-ratelimit-api_key-limit-tokens": key.tpm,
        "x-ratelimit-api_key-remaining-tokens": key.tpm - used_tk,
        "x-ratelimit-team-limit-requests": team.rpm,
        "x-ratelimit-team-remaining-requests": team.rpm - used_rt,
        "x-ratelimit-team-limit-tokens": team.tpm,
        "x-ratelimit-team-remaining-tokens": team.tpm - used_tt,
        "x-ratelimit-model_per_key-remaining-requests": max(0, key.rpm // 2 - used_rk // 2),
        "x-ratelimit-model_per_key-remaining-tokens": max(0, key.tpm // 2 - used_tk // 2),
    }


def _success_call(rng: random.Random, world: _World, key: _Key, dep: _Deployment, t_end: datetime) -> Call:
    stream = rng.random() < 0.30
    prompt_tokens = rng.randint(20, 4000)
    completion_tokens = rng.randint(5, 1200)
    total_tokens = prompt_tokens + completion_tokens
    cached = rng.choice((0, 0, 0, prompt_tokens // 2))
    reasoning = rng.randint(0, completion_tokens) if dep.reasoning else None
    cost = round(prompt_tokens * dep.price_in / 1000 + completion_tokens * dep.price_out / 1000, 8)
    total_s = rng.uniform(0.3, 9.0)
    t_start = t_end - timedelta(seconds=total_s)
    api_start = t_start + timedelta(milliseconds=rng.uniform(2, 35))
    completion_start = api_start + timedelta(seconds=rng.uniform(0.15, 1.2)) if stream else t_end
    user_agent = key.user_agent if rng.random() < 0.9 else rng.choice(_USER_AGENTS)
    tags = rng.sample(_TAGS, rng.choice((0, 1, 1, 2)))
    spend_md = {"project": f"p-{key.team.alias}", "env": "prod"} if rng.random() < 0.4 else None
    call_id = str(uuid.UUID(int=rng.getrandbits(128)))
    usage = {
        "completion_tokens": completion_tokens,
        "prompt_tokens": prompt_tokens,
        "total_tokens": total_tokens,
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": None} if reasoning else None,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": None} if cached else None,
    }
    headers: dict[str, Any] = {}
    if dep.provider in ("openai", "azure", "anthropic"):
        headers.update(
            x_ratelimit_limit_requests=dep.rpm,
            x_ratelimit_limit_tokens=dep.tpm,
            x_ratelimit_remaining_requests=dep.rpm - rng.randrange(dep.rpm // 10),
            x_ratelimit_remaining_tokens=dep.tpm - rng.randrange(dep.tpm // 10),
            x_ratelimit_reset_requests="6ms",
            x_ratelimit_reset_tokens=f"{rng.randint(1, 900)}ms",
        )
        headers["llm_provider-x-request-id"] = f"req_{call_id.replace('-', '')}"
        headers["llm_provider-openai-processing-ms"] = str(int(total_s * 1000))
    headers.update(_v3_headers(rng, key))
    overhead_ms = round(rng.uniform(1.5, 30.0), 3)
    hidden = {
        "model_id": dep.model_id,
        "cache_key": None,
        "api_base": dep.api_base,
        "response_cost": cost,
        "litellm_overhead_time_ms": overhead_ms,
        "additional_headers": headers,
        "batch_models": None,
        "batch_successful_requests": None,
        "batch_failed_requests": None,
        "litellm_model_name": dep.model,
        "usage_object": usage,
    }
    prompt = rng.choice(_PROMPTS)
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": prompt}]
    response = {
        "id": f"chatcmpl-{call_id}",
        "created": int(t_end.timestamp()),
        "model": dep.model,
        "object": "chat.completion",
        "choices": [
            {
                "finish_reason": "stop",
                "index": 0,
                "message": {"content": "Here is the answer you asked for.", "role": "assistant", "tool_calls": None},
            }
        ],
        "usage": usage,
    }
    cache_hit = True if rng.random() < 0.03 else None
    slp = {
        "id": f"chatcmpl-{call_id}",
        "trace_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "session_id": "",
        "litellm_call_id": call_id,
        "call_type": "acompletion",
        "stream": stream or None,
        "response_cost": cost,
        "cost_breakdown": {"input_cost": prompt_tokens * dep.price_in / 1000, "total_cost": cost},
        "response_cost_failure_debug_info": None,
        "status": "success",
        "status_fields": {"llm_api_status": "success", "guardrail_status": "not_run"},
        "custom_llm_provider": dep.provider,
        "total_tokens": total_tokens,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "startTime": t_start.timestamp(),
        "endTime": t_end.timestamp(),
        "completionStartTime": completion_start.timestamp(),
        "response_time": total_s,
        "model_map_information": {"model_map_key": dep.model, "model_map_value": None},
        "model": dep.model,
        "model_id": dep.model_id,
        "model_group": dep.model_group,
        "api_base": dep.api_base,
        "metadata": _slp_metadata(key, usage, user_agent, spend_md),
        "cache_hit": cache_hit,
        "cache_key": None,
        "saved_cache_cost": 0.0,
        "request_tags": tags,
        "end_user": None,
        "requester_ip_address": key.ip,
        "user_agent": user_agent,
        "messages": messages,
        "response": response,
        "error_str": None,
        "error_information": None,
        "model_parameters": {"temperature": 0.2, "max_tokens": 2048, "stream": stream},
        "hidden_params": hidden,
        "guardrail_information": None,
        "standard_built_in_tools_params": {"web_search_options": None, "file_search": None},
        "cost_finalized": False,
    }
    body = {"model": dep.model_group, "messages": messages, "stream": stream}
    pmd = _proxy_metadata(key, dep, user_agent, tags, {"api_base": dep.api_base, "response_cost": cost}, spend_md)
    kwargs = {
        "litellm_trace_id": slp["trace_id"],
        "litellm_call_id": call_id,
        "input": messages,
        "litellm_params": _litellm_params(dep, call_id, pmd, body),
        "applied_guardrails": [],
        "model": dep.model,
        "messages": messages,
        "optional_params": {"temperature": 0.2, "max_tokens": 2048, "stream": stream},
        "start_time": t_start,
        "stream": stream,
        "user": None,
        "call_type": "acompletion",
        "completion_start_time": completion_start,
        "standard_callback_dynamic_params": {},
        "stream_options": {"include_usage": True} if stream else None,
        "custom_llm_provider": dep.provider,
        "model_id": dep.model_id,
        "api_key": "sk-provider-************",
        "additional_args": {},
        "log_event_type": "successful_api_call",
        "api_call_start_time": api_start,
        "current_attempt_api_call_start_time": api_start,
        "first_api_call_start_time": api_start,
        "original_response": None,
        "zero_cost_diagnostic": None,
        "end_time": t_end,
        "cache_hit": cache_hit,
        "response_cost": cost,
        "standard_logging_object": slp,
    }
    return (True, kwargs, dep.response, t_start, t_end)


def _failure_call(rng: random.Random, world: _World, key: _Key, dep: _Deployment, t_end: datetime) -> Call:
    kind = "rate_limit" if rng.random() < 0.6 else "internal"
    exc = world.exceptions[(dep.model_group, kind)]
    status = "429" if kind == "rate_limit" else "500"
    total_s = rng.uniform(0.05, 3.0)
    t_start = t_end - timedelta(seconds=total_s)
    api_start = t_start + timedelta(milliseconds=rng.uniform(2, 35))
    user_agent = key.user_agent if rng.random() < 0.9 else rng.choice(_USER_AGENTS)
    tags = rng.sample(_TAGS, rng.choice((0, 1)))
    call_id = str(uuid.UUID(int=rng.getrandbits(128)))
    prompt = rng.choice(_PROMPTS)
    messages = [{"role": "user", "content": prompt}]
    slp = {
        "id": call_id,
        "trace_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "session_id": "",
        "litellm_call_id": call_id,
        "call_type": "acompletion",
        "stream": None,
        "response_cost": 0.0,
        "cost_breakdown": None,
        "response_cost_failure_debug_info": None,
        "status": "failure",
        "status_fields": {"llm_api_status": "failure", "guardrail_status": "not_run"},
        "custom_llm_provider": dep.provider,
        "total_tokens": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "startTime": t_start.timestamp(),
        "endTime": t_end.timestamp(),
        "completionStartTime": t_end.timestamp(),
        "response_time": total_s,
        "model_map_information": {"model_map_key": "", "model_map_value": None},
        "model": dep.model,
        "model_id": dep.model_id,
        "model_group": dep.model_group,
        "api_base": dep.api_base,
        "metadata": _slp_metadata(key, {}, user_agent, None),
        "cache_hit": False,
        "cache_key": None,
        "saved_cache_cost": 0.0,
        "request_tags": tags,
        "end_user": None,
        "requester_ip_address": key.ip,
        "user_agent": user_agent,
        "messages": messages,
        "response": {},
        "error_str": str(exc),
        "error_information": {
            "error_code": status,
            "error_class": type(exc).__name__,
            "llm_provider": dep.provider,
            "traceback": "Traceback (most recent call last):\n  ...\n",
            "error_message": str(exc),
            "error_rate_limit_category": "vendor_rate_limit" if kind == "rate_limit" else None,
            "error_rate_limit_type": None,
        },
        "model_parameters": {},
        "hidden_params": {
            "model_id": None,
            "cache_key": None,
            "api_base": None,
            "response_cost": 0.0,
            "litellm_overhead_time_ms": None,
            "additional_headers": None,
            "batch_models": None,
            "batch_successful_requests": None,
            "batch_failed_requests": None,
            "litellm_model_name": None,
            "usage_object": None,
        },
        "guardrail_information": None,
        "standard_built_in_tools_params": {"web_search_options": None, "file_search": None},
        "cost_finalized": False,
    }
    body = {"model": dep.model_group, "messages": messages}
    pmd = _proxy_metadata(key, dep, user_agent, tags, {}, None)
    kwargs = {
        "litellm_trace_id": slp["trace_id"],
        "litellm_call_id": call_id,
        "input": messages,
        "litellm_params": _litellm_params(dep, call_id, pmd, body),
        "applied_guardrails": [],
        "model": dep.model,
        "messages": messages,
        "optional_params": {},
        "start_time": t_start,
        "stream": False,
        "user": None,
        "call_type": "acompletion",
        "completion_start_time": None,
        "standard_callback_dynamic_params": {},
        "stream_options": None,
        "custom_llm_provider": dep.provider,
        "model_id": dep.model_id,
        "api_key": "sk-provider-************",
        "additional_args": {},
        "log_event_type": "failed_api_call",
        "api_call_start_time": api_start,
        "current_attempt_api_call_start_time": api_start,
        "first_api_call_start_time": api_start,
        "exception": exc,
        "traceback_exception": f"Traceback (most recent call last):\n  ...\n{type(exc).__name__}: {exc}\n",
        "end_time": t_end,
        "original_response": None,
        "response_cost": 0,
        "standard_logging_object": slp,
    }
    return (False, kwargs, None, t_start, t_end)


def build_calls(n_success: int, n_failure: int, seed: int = 20251127) -> list[Call]:
    """The hook calls of one benchmark, successes and failures interleaved at random."""
    rng = random.Random(seed)
    now = datetime.now()
    world = _build_world(rng, n_keys=200, n_teams=50, now=now)
    kinds = [True] * n_success + [False] * n_failure
    rng.shuffle(kinds)
    total = len(kinds)
    span = timedelta(minutes=30)
    start = now - span
    calls: list[Call] = []
    for i, ok in enumerate(kinds):
        key = rng.choices(world.keys, world.key_weights)[0]
        dep = rng.choices(world.deployments, world.deployment_weights)[0]
        t_end = start + span * (i / max(total, 1))
        make = _success_call if ok else _failure_call
        calls.append(make(rng, world, key, dep, t_end))
    return calls


def clone_calls(calls: list[Call]) -> list[Call]:
    """A structural copy: every dict and list copied, shared sub-objects stay shared, leaves
    (strings, numbers, datetimes, exceptions, pydantic objects) are the same objects."""
    memo: dict[int, Any] = {}

    def copy(obj: Any) -> Any:
        t = type(obj)
        if t is dict:
            done = memo.get(id(obj))
            if done is None:
                done = memo[id(obj)] = {k: copy(v) for k, v in obj.items()}
            return done
        if t is list:
            done = memo.get(id(obj))
            if done is None:
                done = memo[id(obj)] = [copy(v) for v in obj]
            return done
        return obj

    return [(ok, copy(kw), resp, st, et) for ok, kw, resp, st, et in calls]


# =================================================================================================
# Measurement
# =================================================================================================


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class RunResult:
    logger: str
    run: int
    events: int
    n_success: int
    n_failure: int
    mean_us: float
    success_us: float
    failure_us: float
    p50_us: float
    p99_us: float
    feed_wall_s: float
    cpu_s: float  # process CPU from first hook call until done (ours: until close() returned)
    done_wall_s: float
    rss_growth: int
    errors: int
    mutated: bool
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.feed_wall_s if self.feed_wall_s else 0.0

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s * 1e6 / self.events if self.events else 0.0


@dataclass
class _Feed:
    durations: array  # ns per call, in call order
    errors: int
    wall_s: float
    cpu_start: float
    thread_cpu_start: float
    wall_start: float
    rss_start: int
    rss_peak: int
    first_error: str = ""
    hook_cpu_s: float = 0.0  # CPU of the calling thread inside the hook calls only


def _touch(obj: Any) -> int:
    """Read every dict and list of a call once, so it is in the CPU caches, as in the proxy."""
    t = type(obj)
    if t is dict:
        return sum(_touch(v) for v in obj.values()) + 1
    if t is list:
        return sum(_touch(v) for v in obj) + 1
    return 1


async def _feed(logger: Any, calls: list[Call], warm: bool) -> _Feed:
    """Await every hook call in order, timing only the awaited call.

    ``warm``: read each call's inputs just before its hook runs (outside the timed region and
    outside the CPU accounted to the hook), as LiteLLM has just built the logging payload when
    it calls the callbacks. Without it, every call's inputs are cold in memory (they were built
    up front), which penalises the logger that reads them fastest the most."""
    durations = array("q", bytes(8 * len(calls)))
    perf = time.perf_counter_ns
    tcpu = time.thread_time_ns
    success_hook = logger.async_log_success_event
    failure_hook = logger.async_log_failure_event
    errors = 0
    first_error = ""
    hook_cpu_ns = 0
    rss_start = rss_peak = _rss_bytes()
    thread_cpu_start = time.thread_time()
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    for i, (ok, kwargs, response_obj, start_time, end_time) in enumerate(calls):
        hook = success_hook if ok else failure_hook
        if warm:
            _touch(kwargs)
        c0 = tcpu()
        t0 = perf()
        try:
            await hook(kwargs, response_obj, start_time, end_time)
        except Exception as exc:  # the proxy swallows hook errors; count them
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
        durations[i] = perf() - t0
        hook_cpu_ns += tcpu() - c0
        if not i & 1023:
            rss_peak = max(rss_peak, _rss_bytes())
    wall = time.perf_counter() - wall_start
    rss_peak = max(rss_peak, _rss_bytes())
    return _Feed(
        durations, errors, wall, cpu_start, thread_cpu_start, wall_start, rss_start, rss_peak, first_error,
        hook_cpu_ns / 1e9,
    )  # fmt: skip


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[idx])


def _summarise(
    name: str, run: int, calls: list[Call], feed: _Feed, cpu_s: float, done_wall_s: float, rss_peak: int,
    mutated: bool,
) -> RunResult:  # fmt: skip
    succ = [d for d, c in zip(feed.durations, calls, strict=True) if c[0]]
    fail = [d for d, c in zip(feed.durations, calls, strict=True) if not c[0]]
    everything = sorted(feed.durations)
    return RunResult(
        logger=name,
        run=run,
        events=len(calls),
        n_success=len(succ),
        n_failure=len(fail),
        mean_us=statistics.fmean(everything) / 1e3 if everything else 0.0,
        success_us=statistics.fmean(succ) / 1e3 if succ else 0.0,
        failure_us=statistics.fmean(fail) / 1e3 if fail else 0.0,
        p50_us=_percentile(everything, 0.50) / 1e3,
        p99_us=_percentile(everything, 0.99) / 1e3,
        feed_wall_s=feed.wall_s,
        cpu_s=cpu_s,
        done_wall_s=done_wall_s,
        rss_growth=max(0, rss_peak - feed.rss_start),
        errors=feed.errors,
        mutated=mutated,
    )


class Inputs:
    """The generated calls, fed as they are, and a structural copy kept as the reference.

    After every run the fed calls are compared with the reference; if a logger changed them,
    the run is flagged and the calls are rebuilt from the reference before the next run."""

    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls
        self.reference = clone_calls(calls)

    def check_and_restore(self, n: int) -> bool:
        if self.calls[:n] == self.reference[:n]:
            return False
        self.calls[:n] = clone_calls(self.reference[:n])
        return True


async def run_litellm(inputs: Inputs, n: int, run: int, warm: bool) -> RunResult:
    """One run of LiteLLM's PrometheusLogger (constructed normally, default settings)."""
    from litellm.integrations.prometheus import PrometheusLogger
    from prometheus_client import REGISTRY

    calls = inputs.calls[:n]
    before = set(REGISTRY._collector_to_names)
    logger = PrometheusLogger()
    try:
        gc.collect()
        feed = await _feed(logger, calls, warm)
        # CPU of the hook calls themselves plus every other thread (LiteLLM's logger has none).
        cpu_s = feed.hook_cpu_s + (time.process_time() - feed.cpu_start) - (time.thread_time() - feed.thread_cpu_start)
        done_wall = time.perf_counter() - feed.wall_start
        mutated = inputs.check_and_restore(n)
        result = _summarise("litellm", run, calls, feed, cpu_s, done_wall, feed.rss_peak, mutated)
        if feed.errors:
            print(f"  ! LiteLLM hook raised {feed.errors} times, first: {feed.first_error}", file=sys.stderr)
        return result
    finally:
        # A second PrometheusLogger in this process would collide in the default registry.
        for collector in set(REGISTRY._collector_to_names) - before:
            REGISTRY.unregister(collector)
        del logger
        gc.collect()


async def run_ours(inputs: Inputs, n: int, run: int, redis_url: str, namespace: str, warm: bool) -> RunResult:
    """One run of StreamMetricsLogger writing to real Redis through its emitter."""
    import redis

    from producer.callback import StreamMetricsLogger
    from producer.settings import ProducerSettings

    calls = inputs.calls[:n]
    client = redis.Redis.from_url(redis_url)
    try:
        logger = StreamMetricsLogger(
            settings=ProducerSettings(redis_url=redis_url, namespace=namespace, exemplars=EXEMPLARS)
        )
        gc.collect()
        redis_cpu0 = _redis_cpu(client)
        feed = await _feed(logger, calls, warm)
        closed = logger.close(timeout=120)
        # CPU of the hook calls themselves plus the writer thread (flushing to Redis).
        writer_cpu_s = (time.process_time() - feed.cpu_start) - (time.thread_time() - feed.thread_cpu_start)
        cpu_s = feed.hook_cpu_s + writer_cpu_s
        main_cpu_s = feed.hook_cpu_s
        done_wall = time.perf_counter() - feed.wall_start
        rss_peak = max(feed.rss_peak, _rss_bytes())
        redis_cpu = _redis_cpu(client) - redis_cpu0
        mutated = inputs.check_and_restore(n)
        result = _summarise("ours", run, calls, feed, cpu_s, done_wall, rss_peak, mutated)
        result.extra.update(_stream_stats(client, namespace))
        result.extra["redis_cpu_us_per_event"] = redis_cpu * 1e6 / len(calls)
        result.extra["main_thread_cpu_us_per_event"] = main_cpu_s * 1e6 / len(calls)
        result.extra["other_threads_cpu_us_per_event"] = (cpu_s - main_cpu_s) * 1e6 / len(calls)
        result.extra["closed_clean"] = float(closed)
        if feed.errors:
            print(f"  ! our hook raised {feed.errors} times, first: {feed.first_error}", file=sys.stderr)
        if not closed or result.extra["events_in_redis"] != len(calls):
            print(
                f"  ! ours: close() returned {closed}, {int(result.extra['events_in_redis'])} of "
                f"{len(calls)} events in Redis",
                file=sys.stderr,
            )
        del logger
        return result
    finally:
        _delete_namespace(client, namespace)
        client.close()
        gc.collect()


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info.get("used_cpu_user", 0.0)) + float(info.get("used_cpu_sys", 0.0))


def _stream_stats(client: Any, namespace: str) -> dict[str, float]:
    """Entries, events and bytes of every stream under the namespace."""
    from producer import wire

    f_data = getattr(wire, "F_DATA", "d").encode()
    f_count = getattr(wire, "F_COUNT", "n").encode()
    f_codec = getattr(wire, "F_CODEC", "c").encode()
    zcodec = getattr(wire, "CODEC_ZLIB_JSON", "zjson").encode()
    entries = events = payload = wire_bytes = json_bytes = memory = 0
    for raw_key in client.scan_iter(match=f"{namespace}:*", count=1000):
        if client.type(raw_key) != b"stream":
            continue
        memory += int(client.memory_usage(raw_key, samples=0) or 0)
        entries += int(client.xinfo_stream(raw_key)["length"])
        for _id, fields in client.xrange(raw_key):
            wire_bytes += sum(len(k) + len(v) for k, v in fields.items())
            data = fields.get(f_data, b"")
            payload += len(data)
            events += int(fields.get(f_count, b"0"))
            json_bytes += len(zlib.decompress(data)) if fields.get(f_codec) == zcodec else len(data)
    per = max(events, 1)
    return {
        "entries": float(entries),
        "events_in_redis": float(events),
        "stream_memory_per_event": memory / per,
        "entry_bytes_per_event": wire_bytes / per,
        "payload_bytes_per_event": payload / per,
        "json_bytes_per_event": json_bytes / per,
    }


def _delete_namespace(client: Any, namespace: str) -> None:
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


async def profile_ours(inputs: Inputs, redis_url: str, namespace: str, top: int) -> str:
    """cProfile of our success hook, called through the public API on the generated success calls."""
    import cProfile
    import io
    import pstats

    import redis

    from producer.callback import StreamMetricsLogger
    from producer.settings import ProducerSettings

    client = redis.Redis.from_url(redis_url)
    try:
        logger = StreamMetricsLogger(
            settings=ProducerSettings(redis_url=redis_url, namespace=namespace, exemplars=EXEMPLARS)
        )
        hook = logger.async_log_success_event
        success = [c for c in inputs.calls if c[0]]
        profiler = cProfile.Profile()
        profiler.enable()
        for _ok, kwargs, response_obj, start_time, end_time in success:
            await hook(kwargs, response_obj, start_time, end_time)
        profiler.disable()
        logger.close(timeout=120)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        return f"cProfile of {len(success):,} success hook calls (StreamMetricsLogger):\n{out.getvalue()}"
    finally:
        _delete_namespace(client, namespace)
        client.close()


# =================================================================================================
# Report
# =================================================================================================


def _median(results: list[RunResult], get: Callable[[RunResult], float]) -> float | None:
    return statistics.median(get(r) for r in results) if results else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:,.0f}x" if a is not None and b else ""


def render(lite: list[RunResult], ours: list[RunResult], args: argparse.Namespace, meta: dict[str, Any]) -> str:
    """The report: medians side by side, the targets, ours' Redis side, every run."""
    m = _median
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, get: Callable[[RunResult], float], digits: int = 1, ratio: bool = True) -> None:
        a, b = m(lite, get), m(ours, get)
        rows.append((name, _fmt(a, digits), _fmt(b, digits), _ratio(a, b) if ratio else ""))

    def extra(name: str) -> float | None:
        return m(ours, lambda r: r.extra.get(name, 0.0))

    row("hook mean µs/event", lambda r: r.mean_us)
    row("success hook µs", lambda r: r.success_us)
    row("failure hook µs", lambda r: r.failure_us)
    row("p50 µs", lambda r: r.p50_us)
    row("p99 µs", lambda r: r.p99_us)
    lite_eps, ours_eps = m(lite, lambda r: r.events_per_s), m(ours, lambda r: r.events_per_s)
    eps_ratio = _ratio(ours_eps, lite_eps)
    rows.append(("hook events/s", _fmt(lite_eps, 0), _fmt(ours_eps, 0), eps_ratio and f"{eps_ratio} (ours/LiteLLM)"))
    row("process CPU µs/event (ours: incl. flushing to Redis)", lambda r: r.cpu_us_per_event)
    if ours:
        split = f"{_fmt(extra('main_thread_cpu_us_per_event'))} / {_fmt(extra('other_threads_cpu_us_per_event'))}"
        rows.append(("ours' CPU split: hook (main) thread / writer thread, µs/event", "", split, ""))
    row("end-to-end events/s (ours: until close() returned)", lambda r: r.events / r.done_wall_s, 0, ratio=False)
    row("RSS growth during run, MiB", lambda r: r.rss_growth / 2**20, ratio=False)

    runs = max(len(lite), len(ours))
    out = [
        f"{args.success:,} success + {args.failure:,} failure hook calls per run, median of {runs} run(s) "
        "per logger (fresh logger each run, alternating order).",
        "",
        "| metric | LiteLLM PrometheusLogger | StreamMetricsLogger | LiteLLM / ours |",
        "|---|---:|---:|---:|",
    ]
    out.extend(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)
    out.append("")

    if lite and ours:
        hook_ratio = (m(lite, lambda r: r.success_us) or 0.0) / max(m(ours, lambda r: r.success_us) or 0.0, 1e-9)
        cpu_ratio = (m(lite, lambda r: r.cpu_us_per_event) or 0.0) / max(
            m(ours, lambda r: r.cpu_us_per_event) or 0.0, 1e-9
        )
        out += [
            "| target | measured | goal | |",
            "|---|---:|---:|---|",
            f"| success hook: LiteLLM µs / ours µs | {hook_ratio:,.0f}x | ≥ {TARGET_HOOK_RATIO:,.0f}x | "
            f"{'PASS' if hook_ratio >= TARGET_HOOK_RATIO else 'FAIL'} |",
            f"| CPU per event: LiteLLM / ours (incl. flushing) | {cpu_ratio:,.0f}x | ≥ {TARGET_CPU_RATIO:,.0f}x | "
            f"{'PASS' if cpu_ratio >= TARGET_CPU_RATIO else 'FAIL'} |",
            "",
        ]

    if ours:
        out += [
            "| ours: Redis side (median) | value |",
            "|---|---:|",
            f"| events in Redis / events offered | {_fmt(extra('events_in_redis'), 0)} / "
            f"{args.success + args.failure:,} |",
            f"| stream entries (batches) | {_fmt(extra('entries'), 0)} |",
            f"| MEMORY USAGE of the stream, bytes/event | {_fmt(extra('stream_memory_per_event'))} |",
            f"| entry fields on the wire, bytes/event | {_fmt(extra('entry_bytes_per_event'))} |",
            f"| event payload (`d`, as stored), bytes/event | {_fmt(extra('payload_bytes_per_event'))} |",
            f"| event JSON before compression, bytes/event | {_fmt(extra('json_bytes_per_event'))} |",
            f"| Redis server CPU µs/event (server-wide, approximate) | {_fmt(extra('redis_cpu_us_per_event'), 2)} |",
            "",
        ]

    out += [
        "| run | logger | mean µs | success µs | failure µs | p50 µs | p99 µs | CPU µs/event | errors "
        "| mutated inputs |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(lite + ours, key=lambda r: (r.run, meta["order"][r.run].index(r.logger))):
        out.append(
            f"| {r.run} | {r.logger} | {_fmt(r.mean_us)} | {_fmt(r.success_us)} | {_fmt(r.failure_us)} | "
            f"{_fmt(r.p50_us)} | {_fmt(r.p99_us)} | {_fmt(r.cpu_us_per_event)} | {r.errors} | "
            f"{'yes' if r.mutated else 'no'} |"
        )
    out.append("")
    out.append(
        f"Peak RSS of the bench process: {meta['peak_rss'] / 2**20:,.0f} MiB (LiteLLM + proxy modules "
        f"{meta['rss_after_import'] / 2**20:,.0f} MiB, generated inputs with their reference copy "
        f"{meta['rss_inputs'] / 2**20:,.0f} MiB). Machine: {meta['machine']}. Load average at start / end: "
        f"{meta['load_start']} / {meta['load_end']}. Total bench time {meta['elapsed']:,.0f} s."
    )
    return "\n".join(out)


# =================================================================================================
# CLI
# =================================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--success", type=int, default=20_000, help="success hook calls per run (default 20000)")
    p.add_argument("--failure", type=int, default=2_000, help="failure hook calls per run (default 2000)")
    p.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        help=f"Redis for StreamMetricsLogger (default $REDIS_URL or {DEFAULT_REDIS_URL})",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per logger; the median is reported (default 3)")
    p.add_argument("--warmup", type=int, default=300, help="calls fed to a throwaway instance of each logger first")
    p.add_argument("--seed", type=int, default=20251127, help="seed of the generated calls")
    p.add_argument("--only", choices=("both", "litellm", "ours"), default="both", help="run one logger only")
    p.add_argument(
        "--cold",
        action="store_true",
        help="do not read each call's inputs before its hook (inputs cold in memory; see _feed)",
    )
    p.add_argument(
        "--exemplars",
        action="store_true",
        help="our logger with LSM_EXEMPLARS on (each success event carries the request's trace id)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="TOP",
        help="afterwards, cProfile our success hook and print the TOP functions (stderr)",
    )
    a = p.parse_args(argv)
    if a.success < 0 or a.failure < 0 or a.success + a.failure == 0:
        p.error("need at least one hook call")
    if a.repeat < 1:
        p.error("--repeat must be >= 1")
    return a


#: ``--exemplars``: our logger ships each request's trace id (ProducerSettings.exemplars).
EXEMPLARS = False


async def amain(args: argparse.Namespace) -> int:
    global EXEMPLARS
    EXEMPLARS = args.exemplars
    t_begin = time.perf_counter()
    load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    import redis

    try:
        redis.Redis.from_url(args.redis_url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        print(f"cannot reach Redis at {args.redis_url}: {exc}", file=sys.stderr)
        return 2

    print("importing LiteLLM and its proxy modules ...", file=sys.stderr)
    import litellm.proxy.proxy_server  # noqa: F401  (the loggers' lazy imports, paid up front as in a proxy)
    from litellm.integrations.prometheus import PrometheusLogger  # noqa: F401

    import producer.callback  # noqa: F401

    rss_after_import = _rss_bytes()
    print(f"generating {args.success:,} success + {args.failure:,} failure calls ...", file=sys.stderr)
    t0 = time.perf_counter()
    inputs = Inputs(build_calls(args.success, args.failure, seed=args.seed))
    gc.collect()
    # The generated inputs (and the reference copy) are long-lived: keep them out of the cyclic
    # GC's generations so collections during the runs do not walk them. Same for both loggers.
    gc.freeze()
    rss_inputs = _rss_bytes() - rss_after_import
    print(f"  {time.perf_counter() - t0:.1f} s, {rss_inputs / 2**20:,.0f} MiB with the reference copy", file=sys.stderr)

    meta: dict[str, Any] = {
        "t_begin": t_begin,
        "load_start": load_start,
        "rss_after_import": rss_after_import,
        "rss_inputs": rss_inputs,
    }
    bench_id = uuid.uuid4().hex[:12]
    try:
        return await _bench(args, inputs, bench_id, meta)
    finally:
        # Every run deletes its own keys; this catches whatever an interrupted run left.
        client = redis.Redis.from_url(args.redis_url)
        _delete_namespace(client, f"lsmbench-{bench_id}-*")
        client.close()


async def _bench(args: argparse.Namespace, inputs: Inputs, bench_id: str, meta: dict[str, Any]) -> int:
    """Warm-up, the alternating runs, the report."""
    import redis

    client = redis.Redis.from_url(args.redis_url)
    redis_version = client.info("server").get("redis_version", "?")
    client.close()
    n_all = len(inputs.calls)
    do_lite = args.only in ("both", "litellm")
    do_ours = args.only in ("both", "ours")

    # Warm-up: lazy imports, pydantic adapters, Redis connection code paths. Not reported.
    if args.warmup:
        n_warm = min(args.warmup, n_all)
        if do_lite:
            await run_litellm(inputs, n_warm, 0, not args.cold)
        if do_ours:
            await run_ours(inputs, n_warm, 0, args.redis_url, f"lsmbench-{bench_id}-w", not args.cold)

    lite: list[RunResult] = []
    ours: list[RunResult] = []
    order: dict[int, list[str]] = {}
    for run in range(1, args.repeat + 1):
        names = ["litellm", "ours"] if run % 2 else ["ours", "litellm"]
        names = [n for n in names if (n == "litellm" and do_lite) or (n == "ours" and do_ours)]
        order[run] = names
        for name in names:
            print(f"run {run}/{args.repeat}: {name} ...", file=sys.stderr)
            if name == "litellm":
                res = await run_litellm(inputs, n_all, run, not args.cold)
                lite.append(res)
            else:
                res = await run_ours(inputs, n_all, run, args.redis_url, f"lsmbench-{bench_id}-r{run}", not args.cold)
                ours.append(res)
            print(
                f"  mean {res.mean_us:,.1f} µs, success {res.success_us:,.1f} µs, p99 {res.p99_us:,.1f} µs, "
                f"CPU {res.cpu_us_per_event:,.1f} µs/event",
                file=sys.stderr,
            )

    meta.update(
        order=order,
        peak_rss=_peak_rss_bytes(),
        machine=(
            f"{os.cpu_count()} cores, Python {platform.python_version()}, LiteLLM {_dist_version('litellm')}, "
            f"prometheus_client {_dist_version('prometheus_client')}, Redis {redis_version}"
        ),
        elapsed=time.perf_counter() - meta["t_begin"],
        load_end=", ".join(f"{x:.2f}" for x in os.getloadavg()),
    )
    print(render(lite, ours, args, meta), flush=True)
    if args.profile:
        report = await profile_ours(inputs, args.redis_url, f"lsmbench-{bench_id}-p", args.profile)
        print(report, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
