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
import operator
import re
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import litellm
from litellm.constants import LITELLM_PROXY_MASTER_KEY_ALIAS as MASTER_KEY_ALIAS
from litellm.exceptions import BudgetExceededError, MalformedRequestFieldError
from litellm.integrations import prometheus as _prom
from litellm.litellm_core_utils.core_helpers import get_metadata_variable_name_from_kwargs
from litellm.litellm_core_utils.service_tier_utils import KNOWN_REQUEST_SERVICE_TIERS as _KNOWN_SERVICE_TIERS

from producer import snapshots, wire

Event = dict[str, Any]

_get_custom_labels_from_metadata = _prom.get_custom_labels_from_metadata
_get_custom_labels_from_tags = _prom.get_custom_labels_from_tags
_combined_custom_metadata = _prom._get_combined_custom_metadata_from_standard_logging_payload
PrometheusLogger = _prom.PrometheusLogger

# -- small helpers -------------------------------------------------------------------------------


_KNOWN_HASHES: set[str] = set()


def is_hashed_key(value: str) -> bool:
    """A SHA-256 hex digest: the form LiteLLM stores and logs virtual keys in."""
    if value in _KNOWN_HASHES:
        return True
    if len(value) != 64:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    if len(_KNOWN_HASHES) >= 100_000:
        _KNOWN_HASHES.clear()
    _KNOWN_HASHES.add(value)
    return True


def normalize_api_key(value: object, alias: object = None) -> object:
    """What may be shipped as ``hashed_api_key``: never a raw credential.

    Kept as they are: SHA-256 hex digests (LiteLLM's normal form), LiteLLM's hashed JWTs
    (``hashed-jwt-...``), the master-key alias LiteLLM logs instead of the master key, and a
    session token's key alias (LiteLLM logs the alias for those). Anything else is a raw
    credential (``sk-...``, a bearer token, a custom-auth key) and becomes its SHA-256 hex
    digest, which for ``sk-`` keys is exactly LiteLLM's token hash.
    """
    if not isinstance(value, str) or not value or is_hashed_key(value):
        return value
    if value.startswith("hashed-") or value == MASTER_KEY_ALIAS or (alias and value == alias):
        return value
    if value.startswith("Bearer "):
        value = value[7:].strip()
    return hashlib.sha256(value.encode()).hexdigest()


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


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


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


def _bounded_requested_model(requested_model: object, router_originated: bool = False) -> str | None:
    """LiteLLM's ``_bounded_requested_model_label`` (unknown models collapse to ``"other"``).

    LiteLLM finds the proxy's router by importing ``litellm.proxy.proxy_server``; outside the
    proxy that import takes seconds and hundreds of MiB on the event loop. The router only
    exists when the proxy module is already loaded, so look there first.
    """
    if isinstance(requested_model, str) and requested_model:
        proxy = sys.modules.get("litellm.proxy.proxy_server")
        if getattr(proxy, "llm_router", None) is None:
            return requested_model if router_originated else str(_prom.UNRECOGNIZED_REQUESTED_MODEL_LABEL)
    result = _prom._bounded_requested_model_label(requested_model, router_originated=router_originated)
    return None if result is None else str(result)


def skipped_as_invalid_key(logger: Any, kwargs: Mapping[str, Any], slp: Mapping[str, Any]) -> bool:
    """LiteLLM's ``_should_skip_metrics_for_invalid_key``, cheap check first.

    LiteLLM skips a call when it looks like an invalid-key request (status 401 or an auth-error
    message) unless it is a real deployment failure. The deployment-failure test validates the
    whole call with pydantic, so it only runs when the cheap test says "invalid key".
    """
    status = logger._extract_status_code(kwargs=kwargs)
    if not logger._is_invalid_api_key_request(status, exception=kwargs.get("exception")):
        return False
    return bool(logger._should_skip_metrics_for_invalid_key(kwargs=kwargs, standard_logging_payload=slp))


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
    """LiteLLM's ``_get_exception_class_name``, without its per-call import."""
    if not isinstance(exc, BaseException):
        return None
    legacy = getattr(exc, "prometheus_exception_class_name", None)
    if isinstance(legacy, str) and legacy:
        return legacy
    if isinstance(exc, BudgetExceededError):
        return "BudgetExceededError"
    provider = getattr(exc, "llm_provider", None) or ""
    prefix = f"{provider[0].upper()}{provider[1:]}." if isinstance(provider, str) and provider else ""
    return prefix + type(exc).__name__


# -- success ---------------------------------------------------------------------------------------

_HEADER_FIELDS = wire.HEADER_FIELDS
# LiteLLM's times are naive local datetimes; where local time is UTC (containers, as a rule)
# they convert to epoch seconds without the C library's mktime.
_LOCAL_IS_UTC = time.timezone == 0 and time.altzone == 0 and not time.daylight
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EMPTY: Mapping[str, Any] = {}
_KEY_REMAINING_NAMES: dict[object, tuple[str, str]] = {}


def _key_remaining_names(model_group: object) -> tuple[str, str]:
    names = _KEY_REMAINING_NAMES.get(model_group)
    if names is None:
        names = (f"litellm-key-remaining-requests-{model_group}", f"litellm-key-remaining-tokens-{model_group}")
        if len(_KEY_REMAINING_NAMES) < 10_000:
            _KEY_REMAINING_NAMES[model_group] = names
    return names


def _service_tier(slp: Mapping[str, Any], usage: object) -> str | None:
    """LiteLLM's ``get_service_tier_from_standard_logging_payload``, without its overhead:
    the served tier (response, then usage), else a known requested tier."""
    response = slp.get("response")
    if type(response) is dict:
        tier = response.get("service_tier")
        if tier and isinstance(tier, str):
            return tier
    if type(usage) is dict:
        tier = usage.get("service_tier")
        if tier and isinstance(tier, str):
            return tier
    params = slp.get("model_parameters")
    if type(params) is dict:
        requested = params.get("service_tier")
        if isinstance(requested, str) and requested in _KNOWN_SERVICE_TIERS:
            return requested
    return None


def _usage(usage: dict[str, Any]) -> list[Any] | None:
    """The compact ``usage`` list (``wire.USAGE_FIELDS``): only the numbers the metrics read;
    None when it has none of them (most calls: plain prompt and completion tokens)."""
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    cached = audio_in = write = reasoning = audio_out = None
    if type(prompt) is dict:
        cached = prompt.get("cached_tokens")
        audio_in = prompt.get("audio_tokens")
        write = prompt.get("cache_write_tokens")
        if not isinstance(write, int) or isinstance(write, bool):
            write = prompt.get("cache_creation_tokens")
    if type(completion) is dict:
        reasoning = completion.get("reasoning_tokens")
        audio_out = completion.get("audio_tokens")
    values = [
        cached,
        write,
        audio_in,
        reasoning,
        audio_out,
        usage.get("duration_seconds"),
        usage.get("output_image_count"),
        usage.get("cache_read_input_tokens"),
        usage.get("cache_creation_input_tokens"),
    ]
    return None if values.count(None) == len(values) else values


def _budget(pmd: Mapping[str, Any]) -> list[Any] | None:
    """The ``budget`` list (``wire.BUDGET_FIELDS``): the request-metadata budget inputs, raw
    (absent = null); None when the request carries none (plain SDK use)."""
    if "user_api_key_spend" in pmd or "user_api_key_team_spend" in pmd or "user_api_key_user_spend" in pmd:
        values = list(map(pmd.get, wire.BUDGET_FIELDS))
        values += snapshots.carried(pmd, values)  # wire.BUDGET_FLAGS
        return values
    return None


# Where the success event's copied fields come from, in wire order (wire.SUCCESS_FIELDS).
_MD_NAMES = tuple(key for _, key in wire.SUCCESS_FROM_SLP_METADATA)
_SLP_NAMES = tuple(key for _, key in wire.SUCCESS_FROM_SLP)
# LiteLLM builds the SLP and its metadata with every key present: one C-level lookup each.
_md_values = operator.itemgetter(*_MD_NAMES)
_slp_values = operator.itemgetter(*_SLP_NAMES)


def success_event(
    logger: Any, kwargs: Mapping[str, Any], response_obj: Any, start_time: Any, end_time: Any
) -> list[Any] | None:
    """The event for ``async_log_success_event`` (a positional list, ``wire.SUCCESS_FIELDS``);
    None when LiteLLM's logger would skip it.

    This is the hot path of the whole product: C-level lookups, one list display, few calls,
    only scalars and datetimes (the event holds no reference to LiteLLM's mutable objects).
    """
    slp = kwargs.get("standard_logging_object")
    if not isinstance(slp, dict):
        return None
    if kwargs.get("exception") is not None and skipped_as_invalid_key(logger, kwargs, slp):
        return None
    md = slp.get("metadata") or _EMPTY
    try:
        md_values = _md_values(md)
    except (KeyError, TypeError):
        md_values = tuple(md.get(k) for k in _MD_NAMES)
    try:
        slp_values = _slp_values(slp)
    except KeyError:
        slp_values = tuple(slp.get(k) for k in _SLP_NAMES)
    lp = kwargs.get("litellm_params") or _EMPTY
    pmd = lp.get("metadata") or _EMPTY
    lmd = lp.get("litellm_metadata") or _EMPTY
    request_md = lmd or pmd  # LiteLLM's get_litellm_metadata_from_kwargs
    hidden = slp.get("hidden_params")
    if type(hidden) is not dict:
        hidden = _EMPTY
    usage = md.get("usage_object")

    # LiteLLM's times go out as they are; the reader derives the latencies (wire.derive_latencies).
    kend = kwargs.get("end_time") or end_time
    if type(kend) is not datetime and not isinstance(kend, datetime):
        kend = datetime.now()
    kstart = kwargs.get("start_time")
    api_start = kwargs.get("api_call_start_time")
    streamed = kwargs.get("stream", False) is True
    cst = kwargs.get("completion_start_time") if streamed else None

    headers = hidden.get("additional_headers")
    model_info = request_md.get("model_info")
    if type(model_info) is not dict:
        model_info = _EMPTY
    key_md = lmd if "litellm_metadata" in kwargs else pmd
    key_model_group = key_md.get("model_group") if type(key_md) is dict else None
    remaining_names = _KEY_REMAINING_NAMES.get(key_model_group) or _key_remaining_names(key_model_group)
    # LiteLLM reads ``litellm_metadata`` with the ``user_api_key*`` keys of ``metadata`` merged in.
    end_user_md = pmd if "user_api_key_end_user_id" in pmd else request_md
    end_user = lp.get("user_api_key_end_user_id") or end_user_md.get("user_api_key_end_user_id")
    original = pmd.get("original_model_group") or lmd.get("original_model_group")
    model_group = slp_values[0]
    zero_cost = slp.get("zero_cost_diagnostic")
    mcp = md.get("mcp_tool_call_metadata")
    event = [
        wire.SUCCESS,
        (kend - _EPOCH_NAIVE).total_seconds() if _LOCAL_IS_UTC and kend.tzinfo is None else kend.timestamp(),
        *md_values,
        *slp_values,
        end_user_for_prometheus(end_user) if end_user else None,
        kwargs.get("model", ""),
        original if isinstance(original, str) and original and original != model_group else None,
        _service_tier(slp, usage),
        kend,
        kstart if type(kstart) is datetime or isinstance(kstart, datetime) else None,
        api_start if type(api_start) is datetime or isinstance(api_start, datetime) else None,
        cst if type(cst) is datetime or isinstance(cst, datetime) else None,
        streamed,
        None if start_time is kstart else start_time if isinstance(start_time, datetime) else False,
        None if end_time is kend else end_time if isinstance(end_time, datetime) else False,
        pmd.get("queue_time_seconds"),
        _usage(usage) if type(usage) is dict else None,
        # LiteLLM skips the deployment block when SLP lacks these keys (``set_llm_deployment_success_metrics``).
        "api_base" in slp and "additional_headers" in hidden,
        lp.get("custom_llm_provider"),
        model_info.get("id"),
        model_info.get("tpm") or lp.get("tpm"),
        model_info.get("rpm") or lp.get("rpm"),
        hidden.get("litellm_overhead_time_ms"),
        _guardrail_overhead(slp) if slp.get("guardrail_information") else None,
        list(map(headers.get, _HEADER_FIELDS)) if type(headers) is dict and headers else None,
        key_model_group,
        pmd.get(remaining_names[0]),
        pmd.get(remaining_names[1]),
        _budget(pmd),
        _custom_labels(slp) if litellm.custom_prometheus_metadata_labels else None,
        _tag_labels(slp.get("request_tags") or []) if litellm.custom_prometheus_tags else None,
        PrometheusLogger._get_input_sequence_length(slp, kwargs, response_obj)
        if litellm.prometheus_emit_input_sequence_length_label
        else None,
        zero_cost.get("reason") if type(zero_cost) is dict else None,
        mcp.get("name") if type(mcp) is dict else None,
        mcp.get("mcp_server_name") if type(mcp) is dict else None,
        None,  # trace_id: set by the callback when exemplars are on (LSM_EXEMPLARS)
    ]
    key = event[2]
    if type(key) is str and key not in _KNOWN_HASHES and not is_hashed_key(key):
        event[2] = normalize_api_key(key, event[3])
    return event


# W3C trace context: version-trace id-parent id-flags (version 00; later versions may append).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}(?:-.*)?")
_NO_TRACE = "0" * 32


def trace_id(kwargs: Mapping[str, Any]) -> str | None:
    """The request's trace id, for exemplars: as LiteLLM's OpenTelemetry callback picks the
    parent of its spans (the span in the request metadata, then the ``traceparent`` header),
    else LiteLLM's own trace id of the call (the one its logging integrations use)."""
    lp = kwargs.get("litellm_params") or _EMPTY
    for name in ("metadata", "litellm_metadata"):
        md = lp.get(name)
        span = md.get("litellm_parent_otel_span") if type(md) is dict else None
        if span is not None:
            try:
                ctx = span.get_span_context()
                if ctx.is_valid:
                    return format(ctx.trace_id, "032x")
            except Exception:  # not an OpenTelemetry span after all
                pass
    psr = lp.get("proxy_server_request")
    md = lp.get("metadata")
    for headers in (psr.get("headers") if type(psr) is dict else None, md.get("headers") if type(md) is dict else None):
        value = headers.get("traceparent") if type(headers) is dict else None
        if type(value) is str:
            m = _TRACEPARENT.fullmatch(value.strip().lower())
            if m and m.group(1) != _NO_TRACE:
                return m.group(1)
    slp = kwargs.get("standard_logging_object")
    tid = slp.get("trace_id") if type(slp) is dict else None
    return tid if type(tid) is str and tid else None


def _guardrail_overhead(slp: Mapping[str, Any]) -> float:
    try:
        return float(PrometheusLogger._get_guardrail_overhead_seconds(slp))  # type: ignore[arg-type]
    except Exception:
        return 0.0


# -- failures ----------------------------------------------------------------------------------------


# The SLP metadata a failure event reads, in this order.
_FAILURE_MD_NAMES = (
    "user_api_key_hash",
    "user_api_key_alias",
    "user_api_key_team_id",
    "user_api_key_team_alias",
    "user_api_key_user_id",
    "user_api_key_org_id",
    "user_api_key_user_email",
    "requester_ip_address",
    "user_agent",
)
_failure_md_values = operator.itemgetter(*_FAILURE_MD_NAMES)
# LiteLLM's ``_is_invalid_api_key_request`` message patterns (tests/test_hooks.py checks that
# ``invalid_key_request`` agrees with LiteLLM's method), as one expression: one C call.
_AUTH_ERROR = re.compile(
    "|".join(
        re.escape(p)
        for p in (
            "virtual key expected",
            "expected to start with 'sk-'",
            "authentication error",
            "invalid api key",
            "api key not valid",
        )
    )
)


def invalid_key_request(exc: object) -> bool:
    """LiteLLM's ``_is_invalid_api_key_request`` for a call's exception: status 401 (its
    ``status_code``, else its ``code``) or an authentication-error message."""
    status = getattr(exc, "status_code", None) or getattr(exc, "code", None)
    if status is not None:
        try:
            if int(status) == 401:
                return True
        except (ValueError, TypeError):
            pass
    return _AUTH_ERROR.search(str(exc).lower()) is not None


def failure_event(logger: Any, kwargs: Mapping[str, Any]) -> Event | None:
    """The event for ``async_log_failure_event``; None when LiteLLM's logger would skip it.

    On the request path of every failed call (all of them during a provider outage): C-level
    lookups and one dict display per level, like the success event; LiteLLM's label helpers are
    inlined where they only read the call (``_extract_deployment_failure_label_values``)."""
    slp = kwargs.get("standard_logging_object") or _EMPTY
    exc = kwargs.get("exception")
    if (
        exc is not None
        and invalid_key_request(exc)
        and logger._should_skip_metrics_for_invalid_key(kwargs=kwargs, standard_logging_payload=slp)
    ):
        return None
    md = slp.get("metadata") or _EMPTY
    if not isinstance(md, dict):  # a pydantic metadata object: LiteLLM reads its attributes
        md = {name: getattr(md, name, None) for name in _FAILURE_MD_NAMES}
    try:
        key_hash, alias, team, team_alias, user, org_id, email, ip, agent = _failure_md_values(md)
    except KeyError:
        key_hash, alias, team, team_alias, user, org_id, email, ip, agent = map(md.get, _FAILURE_MD_NAMES)
    lp = kwargs.get("litellm_params") or _EMPTY
    pmd = lp.get("metadata") or _EMPTY
    lmd = lp.get("litellm_metadata") or _EMPTY
    kend = kwargs.get("end_time")
    if type(kend) is datetime and _LOCAL_IS_UTC and kend.tzinfo is None:
        t: float | None = (kend - _EPOCH_NAIVE).total_seconds()
    else:
        t = epoch(kend)
    ev: Event = {
        "kind": wire.FAILURE,
        "t": t or time.time(),
        "hashed_api_key": key_hash
        if type(key_hash) is not str or key_hash in _KNOWN_HASHES
        else normalize_api_key(key_hash, alias),
        "api_key_alias": alias,
        "team": team,
        "team_alias": team_alias,
        "user": user,
        "model": kwargs.get("model", ""),
        "model_id": slp.get("model_id", ""),
        "model_group": slp.get("model_group"),
        "api_provider": slp.get("custom_llm_provider"),
    }
    if org_id is not None:
        ev["org_id"] = org_id
    # LiteLLM reads ``litellm_metadata`` with the ``user_api_key*`` keys of ``metadata`` merged in.
    end_user = lp.get("user_api_key_end_user_id") or (pmd if "user_api_key_end_user_id" in pmd else lmd or pmd).get(
        "user_api_key_end_user_id"
    )
    if end_user:
        _put(ev, "end_user", end_user_for_prometheus(end_user))
    if litellm.custom_prometheus_metadata_labels:
        _put(ev, "custom_labels", _custom_labels(slp))
    zero_cost = slp.get("zero_cost_diagnostic")
    if type(zero_cost) is dict:
        _put(ev, "zero_cost_reason", zero_cost.get("reason"))
    # LiteLLM's _extract_deployment_failure_label_values: each value from the SLP metadata, else
    # the request metadata, else the proxy's auth object.
    auth = pmd.get("user_api_key_auth")
    d_alias = alias if alias is not None else _from_request(pmd, "user_api_key_alias", auth, "key_alias")
    d_email = email if email is not None else _from_request(pmd, "user_api_key_user_email", auth, "user_email")
    d_team = team if team is not None else _from_request(pmd, "user_api_key_team_id", auth, "team_id")
    d_team_alias = (
        team_alias if team_alias is not None else _from_request(pmd, "user_api_key_team_alias", auth, "team_alias")
    )
    d_hash = key_hash if key_hash is not None else _from_request(pmd, "user_api_key_hash", auth, "api_key")
    ev["deployment"] = _deployment_failure(
        kwargs,
        slp,
        lp,
        pmd,
        lmd,
        exc,
        d_hash or key_hash,
        d_alias or alias,
        d_email,
        d_team or team,
        d_team_alias or team_alias,
        ip or pmd.get("requester_ip_address") or ip,
        agent or pmd.get("user_agent") or agent,
    )
    return ev


def _from_request(pmd: Mapping[str, Any], key: str, auth: object, attr: str) -> Any:
    """A label value missing from the SLP metadata: the request metadata's, else the auth
    object's (its attribute; ``user_email`` also from a dict; ``api_key`` else ``api_key_hash``),
    as LiteLLM's ``_extract_deployment_failure_label_values`` reads them."""
    value = pmd.get(key)
    if value is not None or auth is None:
        return value
    if attr == "user_email" and isinstance(auth, dict):
        return auth.get(attr)
    value = getattr(auth, attr, None)
    if attr == "api_key":
        value = value or getattr(auth, "api_key_hash", None)
    return value


def _deployment_failure(
    kwargs: Mapping[str, Any],
    slp: Mapping[str, Any],
    lp: Mapping[str, Any],
    pmd: Mapping[str, Any],
    lmd: Mapping[str, Any],
    exc: object,
    key_hash: object,
    alias: object,
    email: object,
    team: object,
    team_alias: object,
    client_ip: object,
    user_agent: object,
) -> dict[str, Any]:
    """Label values of the deployment failure counters, resolved as LiteLLM does
    (docs/compatibility.md, deployment failures)."""
    model = kwargs.get("model")
    model_group = slp.get("model_group")
    model_id = slp.get("model_id")
    if model_id is None:
        info = lmd.get("model_info") or pmd.get("model_info") or _EMPTY
        model_id = info.get("id") if isinstance(info, dict) else None
    if model_group is None:
        model_group = lmd.get("model_group") or pmd.get("model_group")
    selected = (
        bool(model_id)
        and not lp.get(_prom.PROXY_REJECTED_BEFORE_ROUTING_KEY)
        and not isinstance(exc, MalformedRequestFieldError)
    )
    if exc is None:
        status = klass = None
    else:
        status = exception_status(exc)
        klass = exception_class(exc)
    if selected:
        provider = lp.get("custom_llm_provider")
        dep: dict[str, Any] = {
            "selected": True,
            "has_exception": exc is not None,
            "exception_status": status,
            "exception_class": klass,
            "hashed_api_key": key_hash
            if type(key_hash) is not str or key_hash in _KNOWN_HASHES
            else normalize_api_key(key_hash, alias),
            "api_key_alias": alias,
            "user_email": email,
            "team": team,
            "team_alias": team_alias,
            "client_ip": client_ip,
            "user_agent": user_agent,
            "litellm_model_name": model,
            "model_id": model_id,
            "api_base": slp.get("api_base"),
            "api_provider": provider
            if isinstance(provider, str) and provider
            else _deployment_api_provider(kwargs, lp),
            "requested_model": model_group or model,
            "model_group": model_group,
            "state_api_provider": provider or "",
        }
    else:
        dep = {
            "selected": False,
            "has_exception": exc is not None,
            "exception_status": status,
            "exception_class": klass,
            "hashed_api_key": normalize_api_key(key_hash, alias),
            "api_key_alias": alias,
            "user_email": email,
            "team": team,
            "team_alias": team_alias,
            "client_ip": client_ip,
            "user_agent": user_agent,
            "litellm_model_name": "",
            "model_id": "",
            "api_base": "",
            "api_provider": "",
            "requested_model": _bounded_requested_model(model or model_group, router_originated=True) or "",
            "model_group": _bounded_requested_model(model_group, router_originated=True),
        }
    if litellm.custom_prometheus_tags:
        _put(dep, "tag_labels", _tag_labels(slp.get("request_tags", [])))
    return dep


def logged_api_key(user_api_key_dict: Any) -> object:
    """``LiteLLMProxyRequestSetup.get_logged_api_key`` without importing the proxy (FastAPI):
    session tokens with an alias are logged by alias, everything else by the normalised key."""
    alias = getattr(user_api_key_dict, "key_alias", None)
    if getattr(user_api_key_dict, "is_session_token", False) and alias:
        return alias
    return getattr(user_api_key_dict, "api_key", None)


def _deployment_api_provider(kwargs: Mapping[str, Any], lp: Mapping[str, Any]) -> str:
    """LiteLLM's ``_extract_deployment_api_provider``; its first (and usual) answer without the
    pydantic validation of the whole call."""
    provider = lp.get("custom_llm_provider")
    if isinstance(provider, str) and provider:
        return provider
    return str(PrometheusLogger._extract_deployment_api_provider(kwargs))


def post_call_failure_event(
    logger: Any, request_data: Mapping[str, Any], original_exception: BaseException, user_api_key_dict: Any
) -> Event:
    """The event for ``async_post_call_failure_hook``: every call counts (no skip rule)."""
    from litellm.litellm_core_utils.litellm_logging import StandardLoggingPayloadSetup

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
        else normalize_api_key(logged_api_key(uak), getattr(uak, "key_alias", None)),
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
        "hashed_api_key": normalize_api_key(std.get("user_api_key_hash"), std.get("user_api_key_alias")),
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
