"""Turn LiteLLM hook calls into slim events (plain dicts, see ``docs/wire-format.md``).

This module imports LiteLLM, so it is only imported once the callback is built inside a
process that already runs LiteLLM. Field names equal LiteLLM's Prometheus label names wherever
a field feeds a label, so the aggregator can read label values straight from the event.

What needs proxy-side state or LiteLLM logic is resolved here, with LiteLLM's own helpers:
the end-user opt-in, the bounded ``requested_model`` (router registry), exception class and
status, the invalid-key skip rule, custom metadata and tag labels, the service tier, the
post-call ``api_provider``. Values are shipped raw otherwise (label sanitising is the
aggregator's job). Never shipped: message or response content, raw ``sk-`` keys, credentials.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import litellm
from litellm.integrations import prometheus as _prom
from litellm.litellm_core_utils.core_helpers import (
    get_litellm_metadata_from_kwargs,
    get_metadata_variable_name_from_kwargs,
)
from litellm.litellm_core_utils.service_tier_utils import get_service_tier_from_standard_logging_payload

from producer import wire

Event = dict[str, Any]

_get_custom_labels_from_metadata = _prom.get_custom_labels_from_metadata
_get_custom_labels_from_tags = _prom.get_custom_labels_from_tags
_combined_custom_metadata = _prom._get_combined_custom_metadata_from_standard_logging_payload
_bounded_requested_model = _prom._bounded_requested_model_label
PrometheusLogger = _prom.PrometheusLogger

# v3 rate limiter headers: (descriptor in the header name, header type, rate_limit_type label).
V3_RATE_LIMITS = (
    ("api_key", "requests", "requests"),
    ("api_key", "tokens", "tokens"),
    ("team", "requests", "requests"),
    ("team", "tokens", "tokens"),
    ("model_per_project", "requests", "requests"),
    ("model_per_project", "tokens", "tokens"),
    ("model_per_project_itpm", "tokens", "input_tokens"),
    ("model_per_project_otpm", "tokens", "output_tokens"),
)
_V3_HEADER_NAMES = tuple(
    (f"x-ratelimit-{d}-limit-{h}", f"x-ratelimit-{d}-remaining-{h}", f"{d}:{t}") for d, h, t in V3_RATE_LIMITS
)


# -- small helpers -------------------------------------------------------------------------------


def normalize_api_key(value: object) -> object:
    """Never ship a raw key: ``sk-...`` (with or without ``Bearer``) becomes its sha256 hex,
    exactly what LiteLLM stores as the key's token."""
    if isinstance(value, str):
        if value.startswith("Bearer "):
            value = value[7:].strip()
        if value.startswith("sk-"):
            return hashlib.sha256(value.encode()).hexdigest()
    return value


def epoch(value: object) -> float | None:
    """A ``datetime`` (aware or naive-local) or ISO string as seconds since the epoch."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _seconds(start: object, end: object) -> float | None:
    """``end - start`` in seconds when both are datetimes (LiteLLM's _safe_duration_seconds)."""
    if isinstance(start, datetime) and isinstance(end, datetime):
        return (end - start).total_seconds()
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _positive(value: object) -> float | None:
    n = _number(value)
    return n if n is not None and n > 0 else None


def _gauge_reading(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):
        return None


def _strict_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _put(event: Event, name: str, value: object) -> None:
    if value is not None:
        event[name] = value


def end_user_for_prometheus(end_user_id: object) -> object:
    """LiteLLM's Prometheus end-user policy: only with the explicit opt-in, never when disabled."""
    if not end_user_id:
        return None
    if litellm.disable_end_user_cost_tracking:
        return None
    if litellm.enable_end_user_cost_tracking_prometheus_only is not True:
        return None
    return end_user_id


def _custom_labels(slp: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not litellm.custom_prometheus_metadata_labels:
        return None
    labels = _get_custom_labels_from_metadata(metadata=_combined_custom_metadata(slp))
    return {_sanitize_label_name(k): v for k, v in labels.items()} or None


def _tag_labels(tags: object) -> dict[str, str] | None:
    if not litellm.custom_prometheus_tags or tags is None:
        return None
    return _get_custom_labels_from_tags(tags if isinstance(tags, list) else list(tags)) or None  # type: ignore[call-overload]


def _sanitize_label_name(name: str) -> str:
    from litellm.types.integrations.prometheus import sanitize_prometheus_label_name

    return str(sanitize_prometheus_label_name(name))


def exception_status(exc: object, with_code_fallback: bool = True) -> str | None:
    if exc is None:
        return None
    status = str(getattr(exc, "status_code", None))
    if with_code_fallback and (status == "None" or not status):
        code = getattr(exc, "code", None)
        if code is not None:
            status = str(code)
    return status


def exception_class(exc: object) -> str | None:
    if not isinstance(exc, BaseException):
        return None
    return str(PrometheusLogger._get_exception_class_name(exc))  # type: ignore[arg-type]


# -- success ---------------------------------------------------------------------------------------


def _usage_details(slp_metadata: Mapping[str, Any]) -> dict[str, float] | None:
    usage = slp_metadata.get("usage_object")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    prompt = prompt if isinstance(prompt, dict) else {}
    completion = completion if isinstance(completion, dict) else {}
    write_tokens = PrometheusLogger._resolve_cache_write_tokens(prompt)
    read_provider, write_provider = PrometheusLogger._resolve_provider_cache_tokens(usage)
    out: dict[str, float] = {}
    for name, value in (
        ("cached_tokens", prompt.get("cached_tokens")),
        ("cache_creation_tokens", write_tokens),
        ("input_audio_tokens", prompt.get("audio_tokens")),
        ("reasoning_tokens", completion.get("reasoning_tokens")),
        ("output_audio_tokens", completion.get("audio_tokens")),
        ("video_seconds", usage.get("duration_seconds")),
        ("images", usage.get("output_image_count")),
        ("provider_cache_read_tokens", read_provider),
        ("provider_cache_creation_tokens", write_provider),
    ):
        v = _positive(value)
        if v is not None:
            out[name] = v
    return out or None


def _guardrail_overhead(slp: Mapping[str, Any]) -> float:
    try:
        return float(PrometheusLogger._get_guardrail_overhead_seconds(slp))  # type: ignore[arg-type]
    except Exception:
        return 0.0


def _budgets(pmd: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """Budget inputs the proxy carried on the request (spec §4). Spend excludes this request's
    cost (the event's ``response_cost``); ``carried`` says whether auth's snapshot was present."""
    out: dict[str, dict[str, Any]] = {}
    if "user_api_key_spend" in pmd or "user_api_key_max_budget" in pmd or "user_api_key_budget_reset_at" in pmd:
        key: dict[str, Any] = {
            "spend": _number(pmd.get("user_api_key_spend")),
            "max_budget": _number(pmd.get("user_api_key_max_budget")),
            "carried": "user_api_key_budget_reset_at" in pmd,
        }
        _put(key, "reset_at", epoch(pmd.get("user_api_key_budget_reset_at")))
        out["key"] = key
    team_carried = "user_api_key_team_budget_reset_at" in pmd and "user_api_key_team_table_max_budget" in pmd
    team_max = _number(pmd.get("user_api_key_team_max_budget"))
    if team_max is None and team_carried:
        team_max = _number(pmd.get("user_api_key_team_table_max_budget"))
    team: dict[str, Any] = {
        "spend": _number(pmd.get("user_api_key_team_spend")),
        "max_budget": team_max,
        "carried": team_carried,
    }
    if team_carried:
        _put(team, "reset_at", epoch(pmd.get("user_api_key_team_budget_reset_at")))
    out["team"] = team
    user_carried = all(
        k in pmd
        for k in ("user_api_key_user_budget_reset_at", "user_api_key_user_table_max_budget", "user_api_key_user_alias")
    )
    user_max = _number(pmd.get("user_api_key_user_max_budget"))
    if user_max is None and user_carried:
        user_max = _number(pmd.get("user_api_key_user_table_max_budget"))
    user: dict[str, Any] = {
        "spend": _number(pmd.get("user_api_key_user_spend")),
        "max_budget": user_max,
        "carried": user_carried,
    }
    if user_carried:
        _put(user, "reset_at", epoch(pmd.get("user_api_key_user_budget_reset_at")))
        _put(user, "user_alias", pmd.get("user_api_key_user_alias"))
    out["user"] = user
    org_spend = _number(pmd.get("user_api_key_org_spend"))
    if org_spend is not None and "user_api_key_org_max_budget" in pmd:
        out["org"] = {"spend": org_spend, "max_budget": _number(pmd.get("user_api_key_org_max_budget"))}
    return out


def success_event(
    logger: Any, kwargs: Mapping[str, Any], response_obj: Any, start_time: Any, end_time: Any
) -> Event | None:
    """The event for ``async_log_success_event``; None when LiteLLM's logger would skip it."""
    slp = kwargs.get("standard_logging_object")
    if not isinstance(slp, dict):
        return None
    if kwargs.get("exception") is not None and logger._should_skip_metrics_for_invalid_key(
        kwargs=kwargs, standard_logging_payload=slp
    ):
        return None
    md = slp.get("metadata") or {}
    lp = kwargs.get("litellm_params") or {}
    pmd = lp.get("metadata") or {}
    kend = kwargs.get("end_time") or end_time
    model_group = slp.get("model_group")
    ev: Event = {
        "kind": wire.SUCCESS,
        "t": epoch(kend) or time.time(),
        "hashed_api_key": normalize_api_key(md.get("user_api_key_hash")),
        "api_key_alias": md.get("user_api_key_alias"),
        "team": md.get("user_api_key_team_id"),
        "team_alias": md.get("user_api_key_team_alias"),
        "user": md.get("user_api_key_user_id"),
        "user_email": md.get("user_api_key_user_email"),
        "model": kwargs.get("model", ""),
        "model_group": model_group,
        "model_id": slp.get("model_id"),
        "api_base": slp.get("api_base"),
        "api_provider": slp.get("custom_llm_provider"),
        "response_cost": slp.get("response_cost"),
        "total_tokens": slp.get("total_tokens"),
        "prompt_tokens": slp.get("prompt_tokens"),
        "completion_tokens": slp.get("completion_tokens"),
    }
    # Optional label inputs: shipped only when present (absent means None).
    for name, value in (
        ("org_id", md.get("user_api_key_org_id")),
        ("org_alias", md.get("user_api_key_org_alias")),
        ("project_id", md.get("user_api_key_project_id")),
        ("project_alias", md.get("user_api_key_project_alias")),
        ("route", md.get("user_api_key_request_route")),
        ("client_ip", md.get("requester_ip_address")),
        ("user_agent", md.get("user_agent")),
        ("stream", slp.get("stream")),
        ("service_tier", get_service_tier_from_standard_logging_payload(slp)),  # type: ignore[arg-type]
        ("cache_hit", slp.get("cache_hit")),
    ):
        if value is not None:
            ev[name] = value
    end_user = end_user_for_prometheus(
        lp.get("user_api_key_end_user_id")
        or get_litellm_metadata_from_kwargs({"litellm_params": lp}).get("user_api_key_end_user_id")
    )
    _put(ev, "end_user", end_user)
    request_md = get_litellm_metadata_from_kwargs(kwargs)
    original_model_group = pmd.get("original_model_group") or request_md.get("original_model_group")
    if isinstance(original_model_group, str) and original_model_group and original_model_group != model_group:
        ev["original_model_group"] = original_model_group
    _put(ev, "custom_labels", _custom_labels(slp))
    _put(ev, "tag_labels", _tag_labels(slp.get("request_tags") or []))
    if litellm.prometheus_emit_input_sequence_length_label:
        ev["input_sequence_length"] = PrometheusLogger._get_input_sequence_length(slp, kwargs, response_obj)
    zero_cost = slp.get("zero_cost_diagnostic")
    if isinstance(zero_cost, dict):
        _put(ev, "zero_cost_reason", zero_cost.get("reason"))
    _put(ev, "usage", _usage_details(md))
    mcp = md.get("mcp_tool_call_metadata")
    if isinstance(mcp, dict):
        ev["mcp"] = {"tool": mcp.get("name"), "server": mcp.get("mcp_server_name")}

    # Latencies, in seconds, from the kwargs datetimes (as LiteLLM's logger computes them).
    kstart = kwargs.get("start_time")
    api_start = kwargs.get("api_call_start_time")
    completion_start = kwargs.get("completion_start_time")
    stream_true = kwargs.get("stream", False) is True
    if kend is None:
        kend = datetime.now()
    lat: dict[str, float] = {}
    for name, value in (
        ("total", _seconds(kstart, kend)),
        ("api", _seconds(api_start, kend)),
        ("ttft", _seconds(api_start, completion_start) if stream_true else None),
        ("queue", _number(pmd.get("queue_time_seconds"))),
    ):
        if value is not None:
            lat[name] = value
    # Latency per output token uses the hook's positional times (spec §1.2).
    if isinstance(start_time, datetime) and isinstance(end_time, datetime):
        basis = (end_time - start_time).total_seconds()
        if stream_true:
            cst = kwargs.get("completion_start_time", end_time)
            if isinstance(cst, datetime):
                ttft_basis = (cst - start_time).total_seconds()
                basis = ttft_basis or basis
        lat["per_token_basis"] = basis
    ev["latency"] = lat

    hidden = slp.get("hidden_params") or {}
    # LiteLLM skips the whole deployment block when these keys are missing (spec §5).
    if "api_base" in slp and isinstance(hidden, dict) and "additional_headers" in hidden:
        headers = hidden.get("additional_headers") or {}
        model_info = request_md.get("model_info") or {}
        dep: dict[str, Any] = {"api_provider": lp.get("custom_llm_provider")}
        _put(dep, "model_id", model_info.get("id") if isinstance(model_info, dict) else None)
        if model_info or lp:
            mi = model_info if isinstance(model_info, dict) else {}
            _put(dep, "tpm", mi.get("tpm") or lp.get("tpm"))
            _put(dep, "rpm", mi.get("rpm") or lp.get("rpm"))
        if isinstance(headers, dict):
            _put(dep, "remaining_requests", _gauge_reading(headers.get("x_ratelimit_remaining_requests")))
            _put(dep, "remaining_tokens", _gauge_reading(headers.get("x_ratelimit_remaining_tokens")))
        # Shipped even when 0: the overhead histogram skips 0, the one with guardrails does not.
        _put(dep, "overhead_ms", _number(hidden.get("litellm_overhead_time_ms")))
        guard = _guardrail_overhead(slp)
        if guard:
            dep["guardrail_overhead"] = guard
        ev["deployment"] = dep

    # Per key+model remaining limits: legacy limiter metadata, else the v3 header.
    key_md = lp.get(get_metadata_variable_name_from_kwargs(kwargs)) or {}
    key_model_group = key_md.get("model_group") if isinstance(key_md, dict) else None
    headers_all = hidden.get("additional_headers") if isinstance(hidden, dict) else None
    headers_all = headers_all if isinstance(headers_all, dict) else {}
    key_limits: dict[str, Any] = {"model_group": key_model_group}
    for rtype in ("requests", "tokens"):
        value = pmd.get(f"litellm-key-remaining-{rtype}-{key_model_group}")
        if value is None:
            value = _strict_int(headers_all.get(f"x-ratelimit-model_per_key-remaining-{rtype}"))
        _put(key_limits, f"remaining_{rtype}", value)
    ev["key_limits"] = key_limits
    rate_limits: dict[str, list[int | None]] = {}
    for limit_name, remaining_name, slot in _V3_HEADER_NAMES:
        limit = _strict_int(headers_all.get(limit_name))
        remaining = _strict_int(headers_all.get(remaining_name))
        if limit is not None or remaining is not None:
            rate_limits[slot] = [limit, remaining]
    ev["rate_limits"] = rate_limits
    _put(ev, "budgets", _budgets(pmd))
    return ev


# -- failures ----------------------------------------------------------------------------------------


def failure_event(logger: Any, kwargs: Mapping[str, Any]) -> Event | None:
    """The event for ``async_log_failure_event``; None when LiteLLM's logger would skip it."""
    slp = kwargs.get("standard_logging_object") or {}
    if logger._should_skip_metrics_for_invalid_key(kwargs=kwargs, standard_logging_payload=slp):
        return None
    md = slp.get("metadata") or {}
    lp = kwargs.get("litellm_params") or {}
    exc = kwargs.get("exception")
    ev: Event = {
        "kind": wire.FAILURE,
        "t": epoch(kwargs.get("end_time")) or time.time(),
        "hashed_api_key": normalize_api_key(md.get("user_api_key_hash")),
        "api_key_alias": md.get("user_api_key_alias"),
        "team": md.get("user_api_key_team_id"),
        "team_alias": md.get("user_api_key_team_alias"),
        "user": md.get("user_api_key_user_id"),
        "model": kwargs.get("model", ""),
        "model_id": slp.get("model_id", ""),
        "model_group": slp.get("model_group"),
        "api_provider": slp.get("custom_llm_provider"),
    }
    _put(ev, "org_id", md.get("user_api_key_org_id"))
    _put(
        ev,
        "end_user",
        end_user_for_prometheus(
            lp.get("user_api_key_end_user_id")
            or get_litellm_metadata_from_kwargs({"litellm_params": lp}).get("user_api_key_end_user_id")
        ),
    )
    _put(ev, "custom_labels", _custom_labels(slp))
    zero_cost = slp.get("zero_cost_diagnostic")
    if isinstance(zero_cost, dict):
        _put(ev, "zero_cost_reason", zero_cost.get("reason"))
    ev["deployment"] = _deployment_failure(logger, kwargs, slp, lp, exc)
    return ev


def _deployment_failure(
    logger: Any, kwargs: Mapping[str, Any], slp: Mapping[str, Any], lp: Mapping[str, Any], exc: object
) -> dict[str, Any]:
    """Label values of the deployment failure counters, resolved as LiteLLM does (spec §2.4)."""
    from litellm.exceptions import MalformedRequestFieldError

    model = kwargs.get("model")
    model_group = slp.get("model_group")
    model_id = slp.get("model_id")
    api_base = slp.get("api_base")
    if model_id is None:
        info = (
            (lp.get("litellm_metadata") or {}).get("model_info") or (lp.get("metadata") or {}).get("model_info") or {}
        )
        model_id = info.get("id") if isinstance(info, dict) else None
    if model_group is None:
        model_group = (lp.get("litellm_metadata") or {}).get("model_group") or (lp.get("metadata") or {}).get(
            "model_group"
        )
    ids = logger._extract_deployment_failure_label_values(dict(kwargs))
    md = slp.get("metadata") or {}
    selected = (
        bool(model_id)
        and not lp.get(_prom.PROXY_REJECTED_BEFORE_ROUTING_KEY)
        and not isinstance(exc, MalformedRequestFieldError)
    )
    dep: dict[str, Any] = {
        "selected": selected,
        "has_exception": exc is not None,
        "exception_status": exception_status(exc),
        "exception_class": exception_class(exc),
        "hashed_api_key": normalize_api_key(ids.get("hashed_api_key") or md.get("user_api_key_hash")),
        "api_key_alias": ids.get("api_key_alias") or md.get("user_api_key_alias"),
        "user_email": ids.get("user_email"),
        "team": ids.get("team") or md.get("user_api_key_team_id"),
        "team_alias": ids.get("team_alias") or md.get("user_api_key_team_alias"),
        "client_ip": ids.get("client_ip") or md.get("requester_ip_address"),
        "user_agent": ids.get("user_agent") or md.get("user_agent"),
    }
    if selected:
        dep.update(
            litellm_model_name=model,
            model_id=model_id,
            api_base=api_base,
            api_provider=PrometheusLogger._extract_deployment_api_provider(dict(kwargs)),
            requested_model=model_group or model,
            model_group=model_group,
            state_api_provider=lp.get("custom_llm_provider") or "",
        )
    else:
        dep.update(
            litellm_model_name="",
            model_id="",
            api_base="",
            api_provider="",
            requested_model=_bounded_requested_model(model or model_group, router_originated=True) or "",
            model_group=_bounded_requested_model(model_group, router_originated=True),
        )
    _put(dep, "tag_labels", _tag_labels(slp.get("request_tags", [])))
    return dep


def post_call_failure_event(
    logger: Any, request_data: Mapping[str, Any], original_exception: BaseException, user_api_key_dict: Any
) -> Event:
    """The event for ``async_post_call_failure_hook``: every call counts (no skip rule)."""
    from litellm.litellm_core_utils.litellm_logging import StandardLoggingPayloadSetup
    from litellm.proxy.litellm_pre_call_utils import LiteLLMProxyRequestSetup

    status = logger._extract_status_code(exception=original_exception)
    metadata = _prom._logged_fields(request_data.get("metadata"))
    tags = StandardLoggingPayloadSetup.get_request_tags(
        litellm_params=dict(request_data),
        proxy_server_request=_prom._logged_fields(request_data.get("proxy_server_request")),
    )
    model_id = (
        _prom._logged_fields(metadata.get("model_info")).get("id")
        or _prom._logged_fields(request_data.get("model_info")).get("id")
        or _prom._logged_fields(request_data.get("standard_logging_object")).get("model_id")
    )
    rl_category, rl_type = PrometheusLogger._extract_rate_limit_labels(original_exception)
    api_provider = PrometheusLogger._extract_api_provider_from_request_data(
        dict(request_data)
    ) or PrometheusLogger._extract_api_provider_from_exception(original_exception)  # type: ignore[arg-type]
    uak = user_api_key_dict
    ev: Event = {
        "kind": wire.POST_CALL_FAILURE,
        "t": time.time(),
        "user": getattr(uak, "user_id", None),
        "user_email": getattr(uak, "user_email", None),
        "hashed_api_key": None
        if status == 401
        else normalize_api_key(LiteLLMProxyRequestSetup.get_logged_api_key(uak)),
        "api_key_alias": getattr(uak, "key_alias", None),
        "team": getattr(uak, "team_id", None),
        "team_alias": getattr(uak, "team_alias", None),
        "requested_model": _bounded_requested_model(PrometheusLogger._failed_request_requested_model(request_data)),
        "status_code": str(status),
        "exception_class": exception_class(original_exception),
        "model_id": model_id,
        "api_provider": api_provider,
    }
    for name, value in (
        ("end_user", end_user_for_prometheus(getattr(uak, "end_user_id", None))),
        ("org_id", getattr(uak, "org_id", None)),
        ("org_alias", getattr(uak, "organization_alias", None)),
        ("route", getattr(uak, "request_route", None)),
        ("client_ip", metadata.get("requester_ip_address")),
        ("user_agent", metadata.get("user_agent")),
        ("rate_limit_category", rl_category),
        ("rate_limit_type", rl_type),
        ("stream", request_data.get("stream")),
        ("tag_labels", _tag_labels(tags)),
    ):
        if value is not None:
            ev[name] = value
    return ev


def fallback_event(
    kind: str, original_model_group: object, kwargs: Mapping[str, Any], original_exception: object
) -> Event:
    """The event for ``log_success_fallback_event`` / ``log_failure_fallback_event``."""
    from litellm.litellm_core_utils.litellm_logging import StandardLoggingPayloadSetup

    metadata = kwargs.get(get_metadata_variable_name_from_kwargs(dict(kwargs))) or {}
    std = StandardLoggingPayloadSetup.get_standard_logging_metadata(metadata=metadata)
    ev: Event = {
        "kind": kind,
        "t": time.time(),
        "requested_model": _bounded_requested_model(original_model_group, router_originated=True),
        "fallback_model": kwargs.get("model"),
        "hashed_api_key": normalize_api_key(std.get("user_api_key_hash")),
        "api_key_alias": std.get("user_api_key_alias"),
        "team": std.get("user_api_key_team_id"),
        "team_alias": std.get("user_api_key_team_alias"),
        "exception_status": exception_status(original_exception, with_code_fallback=False),
        "exception_class": exception_class(original_exception),
    }
    _put(ev, "tag_labels", _tag_labels(kwargs.get("tags") or []))
    return ev


# -- direct calls from the router and proxy ------------------------------------------------------------


def simple_event(kind: str, **fields: Any) -> Event:
    """Events of direct method calls: the call's arguments, with the event time."""
    ev: Event = {"kind": kind, "t": time.time()}
    for name, value in fields.items():
        if value is not None:
            ev[name] = value
    return ev


def finite_or_none(value: object) -> float | None:
    n = _number(value)
    if n is None or math.isnan(n):
        return None
    return n
