"""The metric engine: pure functions from events to metric deltas.

For every event kind, the same metrics with the same label values and sample values as
LiteLLM 1.110.2's ``PrometheusLogger`` (spec ``litellm-prometheus.md``), except where LiteLLM
has a plain bug (``docs/compatibility.md``). An event is applied wholly or not at all: its
updates are collected first and only added to the batch delta when nothing was invalid.

Label values are stored as LiteLLM renders them: sanitised (spec §2.1) and ``None`` as the
string ``"None"``.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from aggregator.apply import PendingEntry
from aggregator.catalog import CATALOG
from aggregator.litellm_config import MetricsConfig
from aggregator.state import MAX_ABS_AMOUNT, Delta, encode_series, metric_key
from producer import wire

Labels = Mapping[str, Any]
# Stored instead of the "hours until reset" value: the reset time itself (seconds since the
# epoch). Exposition turns it into hours from the current time, so the value is always current.
RESET_TIME_GAUGES = frozenset(
    {
        "litellm_api_key_budget_remaining_hours_metric",
        "litellm_team_budget_remaining_hours_metric",
        "litellm_user_budget_remaining_hours_metric",
        "litellm_org_budget_remaining_hours_metric",
        "litellm_customer_budget_remaining_hours_metric",
    }
)

# Integers beyond this do not convert to a float (OverflowError).
MAX_INT_FLOAT = int(sys.float_info.max)
_TRANSLATE = {ord("\n"): " ", ord("\r"): None, 0x2028: None, 0x2029: None}


class InvalidEvent(ValueError):
    """An event that cannot be applied; ``reason`` is counted in the shard stats."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sanitize(value: object) -> str:
    """LiteLLM's ``sanitize_prometheus_label_value`` plus prometheus_client's ``None`` -> "None"."""
    if value is None:
        return "None"
    s = value if isinstance(value, str) else str(value)
    s = s.translate(_TRANSLATE)
    if "\\" in s or '"' in s:
        s = s.replace("\\", "\\\\").replace('"', '\\"')
    return s


def number(value: object, what: str, allow_negative: bool = False) -> float:
    """A finite number within the range the apply script accepts; anything else is poison."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(f"invalid_{what}")
    v = float(value) if type(value) is float or -MAX_INT_FLOAT <= value <= MAX_INT_FLOAT else math.inf
    if not math.isfinite(v) or abs(v) > MAX_ABS_AMOUNT or (v < 0 and not allow_negative):
        raise InvalidEvent(f"invalid_{what}")
    return v


def optional_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def gauge_reading(value: object) -> float | None:
    """LiteLLM's ``_gauge_reading_or_none``: str/int/float -> float (what ``Gauge.set`` accepts).

    Used for every optional gauge input (provider headers, limiter metadata, deployment tpm/rpm):
    an unusable one (NaN, not a number) skips that gauge only, it never rejects the event."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        v = float(value)
    except (ValueError, OverflowError):
        return None
    return v if not math.isnan(v) else None


def strict_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def epoch(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)  # the wire format's rule
        return parsed.timestamp()
    return None


# The success-event fields the shared label values are built from (with the custom and tag labels).
_SUCCESS_LABEL_FIELDS = (
    "end_user",
    "hashed_api_key",
    "api_key_alias",
    "model_group",
    "team",
    "team_alias",
    "project_id",
    "project_alias",
    "org_id",
    "org_alias",
    "user",
    "user_email",
    "model",
    "model_id",
    "api_base",
    "api_provider",
    "route",
    "client_ip",
    "user_agent",
    "stream",
    "service_tier",
    "input_sequence_length",
)


class LabelSet(dict[str, str]):
    """Label values shared by every event of one caller identity; remembers the series string of
    each metric and the label sets derived from it, so repeated identities cost dict look-ups
    instead of label sanitising and series encoding."""

    __slots__ = ("derived", "memo")

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.memo: dict[str, str | None] = {}
        self.derived: dict[tuple[Any, ...], LabelSet] = {}


_MISSING: Any = object()
# Identities remembered at most; when full, the older half is forgotten (rebuilt on demand). One
# identity with its series strings and derived label sets takes about 10-25 KiB, so this bounds
# the cache to roughly 250 MiB even when every event is a new caller (end-user labels on).
LABEL_CACHE_SIZE = 10_000


def _frozen(value: object) -> object:
    return tuple(sorted(value.items())) if isinstance(value, dict) else value


class _Ops:
    """Updates of one event, committed to the batch delta only if the whole event is valid."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple[str, str, str, float | None, float]] = []

    def add(self, op: str, name: str, series: str, value: float | None, t: float = 0.0) -> None:
        self.ops.append((op, name, series, value, t))


class Engine:
    """Turns events into a :class:`Delta` for one metrics configuration."""

    def __init__(self, config: MetricsConfig) -> None:
        self.config = config
        self._labels: dict[str, tuple[str, ...]] = {}
        # (label name, value when the event does not set it) per metric: LiteLLM renders a missing
        # value "None", except a configured tag label, which is "false" whenever the request's
        # tags are not passed (budget gauges, deployment state, LLM API failures...).
        self._label_defaults: dict[str, tuple[tuple[str, str], ...]] = {}
        self._label_cache: dict[tuple[Any, ...], LabelSet] = {}
        self._mkeys: dict[str, str] = {}
        self._bounds: dict[str, tuple[float, ...]] = {}
        tag_labels = frozenset(config.custom_tag_labels)
        for name, mdef in CATALOG.items():
            if not config.enabled(name):
                continue
            labels = tuple(config.labels(name))
            self._labels[name] = labels
            self._label_defaults[name] = tuple((n, "false" if n in tag_labels else "None") for n in labels)
            self._mkeys[name] = metric_key(name, labels)
            if mdef.kind == "histogram":
                self._bounds[name] = tuple(b for b in config.buckets(name) if not math.isinf(b))
        self._handlers: dict[str, Callable[[_Ops, dict[str, Any], float], None]] = {
            wire.SUCCESS: self._success,
            wire.FAILURE: self._failure,
            wire.POST_CALL_FAILURE: self._post_call_failure,
            wire.FALLBACK_SUCCESS: self._fallback,
            wire.FALLBACK_FAILURE: self._fallback,
            wire.DEPLOYMENT_STATE: self._deployment_state,
            wire.DEPLOYMENT_COOLED_DOWN: self._cooled_down,
            wire.PROVIDER_BUDGET: self._provider_budget,
            wire.CALLBACK_FAILURE: self._callback_failure,
            wire.GUARDRAIL: self._guardrail,
            wire.TEAM_MEMBERS: self._team_members,
            wire.SPEND_CAPTURE_RATE: self._spend_capture_rate,
            wire.MANAGED_BATCH_CREATED: self._managed_created,
            wire.MANAGED_FILE_CREATED: self._managed_created,
            wire.MANAGED_FILE_DELETED: self._managed_file_deleted,
            wire.MANAGED_FILE_SIZE: self._managed_file_size,
            wire.MANAGED_BATCH_DURATION: self._managed_batch_duration,
            wire.CHECK_BATCH_COST_RUN: self._check_batch_cost_run,
            wire.CHECK_BATCH_COST_ERROR: self._check_batch_cost_error,
        }

    # -- plumbing -----------------------------------------------------------------------------------

    def metric_key(self, name: str) -> str | None:
        return self._mkeys.get(name)

    def label_names(self, name: str) -> tuple[str, ...]:
        return self._labels[name]

    def upper_bounds(self, name: str) -> tuple[float, ...]:
        """A histogram's finite bucket bounds (the +Inf bucket is implied)."""
        return self._bounds.get(name, ())

    def build_delta(self, entries: Sequence[PendingEntry]) -> Delta:
        delta = Delta()
        for entry in entries:
            for event in entry.events:
                self.add_event(delta, event)
        return delta

    def add_event(self, delta: Delta, event: dict[str, Any]) -> bool:
        """Add one event's updates to ``delta``; False (and a counted reason) when rejected."""
        kind = event.get("kind")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            delta.count("events_rejected_unknown_kind")
            return False
        ops = _Ops()
        try:
            t = number(event.get("t"), "time")
            handler(ops, event, t)
        except InvalidEvent as exc:
            delta.count(f"events_rejected_{exc.reason}")
            return False
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError):
            delta.count("events_rejected_malformed")
            return False
        for op, name, series, value, when in ops.ops:
            mkey = self._mkeys[name]
            if op == "inc":
                assert value is not None
                delta.inc(mkey, series, value)
            elif op == "obs":
                assert value is not None
                delta.observe(mkey, series, self._bounds[name], value)
            else:  # "set" or "del"
                delta.set_gauge(mkey, series, when, value if op == "set" else None)
        delta.count("events_applied_" + str(event["kind"]))
        return True

    def _series(self, name: str, labels: Labels) -> str | None:
        """The series of ``name`` for these label values, or None when the metric is disabled."""
        memo = labels.memo if isinstance(labels, LabelSet) else None
        if memo is not None:
            cached = memo.get(name, _MISSING)
            if cached is not _MISSING:
                return cached  # type: ignore[no-any-return]
        defaults = self._label_defaults.get(name)
        series = None if defaults is None else encode_series([labels.get(n, d) for n, d in defaults])
        if memo is not None:
            memo[name] = series
        return series

    def _derive(
        self, base: Labels, key: tuple[Any, ...], overrides: Callable[[], Mapping[str, str]], merge: bool = True
    ) -> Labels:
        """``{**base, **overrides()}`` (or just ``overrides()`` without ``merge``), remembered on
        ``base`` under ``key``, which must capture everything ``overrides`` depends on."""
        if isinstance(base, LabelSet):
            derived = base.derived.get(key)
            if derived is None:
                derived = base.derived[key] = LabelSet({**base, **overrides()} if merge else overrides())
            return derived
        return {**base, **overrides()} if merge else dict(overrides())

    def _identity_labels(self, key: tuple[Any, ...], build: Callable[[], dict[str, str]]) -> LabelSet:
        cache = self._label_cache
        labels = cache.get(key)
        if labels is None:
            if len(cache) >= LABEL_CACHE_SIZE:
                # list(cache) copies the keys in one C call (builds of several shards may run
                # in threads at once); pop() tolerates a key another thread removed already.
                for old in list(cache)[: LABEL_CACHE_SIZE // 2]:
                    cache.pop(old, None)
            labels = cache[key] = LabelSet(build())
        return labels

    def _inc(self, ops: _Ops, name: str, labels: Labels, amount: float = 1.0) -> None:
        series = self._series(name, labels)
        if series is not None:
            ops.add("inc", name, series, amount)

    def _observe(self, ops: _Ops, name: str, labels: Labels, value: float) -> None:
        series = self._series(name, labels)
        if series is not None:
            ops.add("obs", name, series, number(value, "observation", allow_negative=True))

    def _set(self, ops: _Ops, name: str, labels: Labels, value: float, t: float) -> None:
        series = self._series(name, labels)
        if series is not None:
            ops.add("set", name, series, value, t)

    def _remove(self, ops: _Ops, name: str, labels: Labels, t: float) -> None:
        series = self._series(name, labels)
        if series is not None:
            ops.add("del", name, series, None, t)

    # -- label sets ---------------------------------------------------------------------------------

    @staticmethod
    def _with_extras(base: dict[str, str], event: Mapping[str, Any]) -> dict[str, str]:
        """Add the custom metadata and tag labels the producer resolved."""
        custom = event.get("custom_labels")
        if isinstance(custom, dict):
            for k, v in custom.items():
                base[str(k)] = sanitize(v)
        tags = event.get("tag_labels")
        if isinstance(tags, dict):
            for k, v in tags.items():
                base[str(k)] = sanitize(v)
        return base

    # -- success -----------------------------------------------------------------------------------

    def _success_labels(self, ev: Mapping[str, Any]) -> dict[str, str]:
        g = ev.get
        model = g("model")
        stream = g("stream")
        return self._with_extras(
            {
                "end_user": sanitize(g("end_user")),
                "hashed_api_key": sanitize(g("hashed_api_key")),
                "api_key_alias": sanitize(g("api_key_alias")),
                "requested_model": sanitize(g("model_group")),
                "model_group": sanitize(g("model_group")),
                "team": sanitize(g("team")),
                "team_alias": sanitize(g("team_alias")),
                "project_id": sanitize(g("project_id")),
                "project_alias": sanitize(g("project_alias")),
                "org_id": sanitize(g("org_id")),
                "org_alias": sanitize(g("org_alias")),
                "user": sanitize(g("user")),
                "user_email": sanitize(g("user_email")),
                "status_code": "200",
                "model": sanitize(model),
                "litellm_model_name": sanitize(model),
                "model_id": sanitize(g("model_id")),
                "api_base": sanitize(g("api_base")),
                "api_provider": sanitize(g("api_provider")),
                "route": sanitize(g("route")),
                "client_ip": sanitize(g("client_ip")),
                "user_agent": sanitize(g("user_agent")),
                "stream": sanitize(str(stream)),
                "service_tier": sanitize(g("service_tier")),
                "input_sequence_length": sanitize(g("input_sequence_length")),
            },
            ev,
        )

    def _success(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        g = ev.get
        cost = number(g("response_cost") or 0, "response_cost")
        total_tokens = number(g("total_tokens") or 0, "tokens")
        prompt_tokens = number(g("prompt_tokens") or 0, "tokens")
        completion_tokens = number(g("completion_tokens") or 0, "tokens")
        identity = (
            "success",
            *map(g, _SUCCESS_LABEL_FIELDS),
            _frozen(g("custom_labels")),
            _frozen(g("tag_labels")),
        )
        labels = self._identity_labels(identity, lambda: self._success_labels(ev))
        self._inc(ops, "litellm_requests_metric", labels)
        self._inc(ops, "litellm_spend_metric", labels, cost)
        reason = g("zero_cost_reason")
        if reason is not None:
            zero = self._derive(labels, ("zero_cost", reason), lambda: {"reason": sanitize(reason)})
            self._inc(ops, "litellm_zero_cost_requests_total", zero)
        self._inc(ops, "litellm_total_tokens_metric", labels, total_tokens)
        self._inc(ops, "litellm_input_tokens_metric", labels, prompt_tokens)
        self._inc(ops, "litellm_output_tokens_metric", labels, completion_tokens)
        usage = usage_dict(g("usage"))
        if usage is not None:
            self._token_details(ops, labels, usage)
        self._budgets(ops, ev, labels, cost, t)
        self._key_limits(ops, ev, labels, t)
        self._v3_rate_limits(ops, ev, labels, t)
        self._latencies(ops, ev, labels)
        if g("has_deployment"):
            self._deployment_success(ops, ev, labels, completion_tokens, t)
        self._cache(ops, ev, labels, total_tokens, usage)
        if usage is not None:
            for name, key in (
                ("litellm_video_duration_seconds_metric", "duration_seconds"),
                ("litellm_images_generated_metric", "output_image_count"),
            ):
                v = _positive_number(usage.get(key))
                if v is not None:
                    self._inc(ops, name, labels, number(v, "usage"))
        if g("mcp_tool") is not None or g("mcp_server") is not None:
            mcp_labels = {
                "mcp_tool_name": sanitize(g("mcp_tool")),
                "mcp_server_name": sanitize(g("mcp_server")),
                **{k: labels[k] for k in ("hashed_api_key", "api_key_alias", "team", "team_alias", "user", "end_user")},
            }
            self._inc(ops, "litellm_mcp_tool_calls_total", mcp_labels)
            if cost > 0:
                self._inc(ops, "litellm_mcp_tool_call_spend_metric", mcp_labels, cost)
        original = g("original_model_group")
        requested = original if isinstance(original, str) and original else g("model_group")
        proxy_labels = self._derive(labels, ("requested", requested), lambda: {"requested_model": sanitize(requested)})
        self._inc(ops, "litellm_proxy_total_requests_metric", proxy_labels)

    def _token_details(self, ops: _Ops, labels: Labels, usage: Mapping[str, Any]) -> None:
        for name, key in (
            ("litellm_input_cached_tokens_metric", "cached_tokens"),
            ("litellm_input_cache_creation_tokens_metric", "cache_write_tokens"),
            ("litellm_input_audio_tokens_metric", "input_audio_tokens"),
            ("litellm_output_reasoning_tokens_metric", "reasoning_tokens"),
            ("litellm_output_audio_tokens_metric", "output_audio_tokens"),
        ):
            v = _positive_number(usage.get(key))
            if v is not None:
                self._inc(ops, name, labels, number(v, "usage"))

    def _cache(
        self, ops: _Ops, ev: Mapping[str, Any], labels: Labels, total_tokens: float, usage: Mapping[str, Any] | None
    ) -> None:
        hit = ev.get("cache_hit")
        if hit is True:
            self._inc(ops, "litellm_cache_hits_metric", labels)
            if total_tokens > 0:
                self._inc(ops, "litellm_cached_tokens_metric", labels, total_tokens)
        elif hit is not None:
            self._inc(ops, "litellm_cache_misses_metric", labels)
        if usage is None:
            return
        # LiteLLM's _resolve_provider_cache_tokens: explicit provider fields (ints), else the
        # prompt-details values when the explicit field is absent.
        read = usage.get("cache_read_input_tokens")
        write = usage.get("cache_creation_input_tokens")
        read_tokens = read if isinstance(read, int) else 0
        write_tokens = write if isinstance(write, int) else 0
        cached = usage.get("cached_tokens")
        if read is None and isinstance(cached, int):
            read_tokens = cached
        cache_write = usage.get("cache_write_tokens")
        if write is None and isinstance(cache_write, int) and not isinstance(cache_write, bool):
            write_tokens = cache_write
        if read_tokens > 0:
            self._inc(ops, "litellm_provider_cache_read_input_tokens_metric", labels, number(read_tokens, "usage"))
        if write_tokens > 0:
            self._inc(ops, "litellm_provider_cache_creation_input_tokens_metric", labels, number(write_tokens, "usage"))

    def _latencies(self, ops: _Ops, ev: Mapping[str, Any], labels: Labels) -> None:
        queue = optional_number(ev.get("latency_queue"))
        ttft, api, total = ev.get("latency_ttft"), ev.get("latency_api"), ev.get("latency_total")
        if ttft is not None:
            self._observe(ops, "litellm_llm_api_time_to_first_token_metric", labels, ttft)
        if api is not None:
            self._observe(ops, "litellm_llm_api_latency_metric", labels, api)
        if total is not None:
            observed = number(total, "latency", allow_negative=True)
            if queue is not None and queue >= 0:
                observed += queue
            self._observe(ops, "litellm_request_total_latency_metric", labels, observed)
        if queue is not None and queue >= 0:
            self._observe(ops, "litellm_request_queue_time_seconds", labels, queue)

    def _deployment_success(
        self, ops: _Ops, ev: Mapping[str, Any], labels: Labels, completion_tokens: float, t: float
    ) -> None:
        g = ev.get
        provider = g("deployment_provider")
        model = g("model")
        deployment_id = g("deployment_model_id")
        dep_key = ("deployment", model, deployment_id, g("api_base"), provider)
        # Built without the request's metadata and tags, as LiteLLM builds them.
        dep_labels = self._derive(
            labels,
            dep_key,
            lambda: {
                "litellm_model_name": sanitize(model),
                "model_id": sanitize(deployment_id),
                "api_base": sanitize(g("api_base")),
                "api_provider": sanitize(provider),
                "model_group": labels["model_group"],
            },
            merge=False,
        )
        for name, value in (
            ("litellm_deployment_tpm_limit", g("deployment_tpm")),
            ("litellm_deployment_rpm_limit", g("deployment_rpm")),
        ):
            reading = gauge_reading(value)
            if reading is not None:
                self._set(ops, name, dep_labels, reading, t)
        overhead_ms = optional_number(g("overhead_ms"))
        if overhead_ms:
            self._observe(ops, "litellm_overhead_latency_metric", labels, overhead_ms / 1000)
        guard = optional_number(g("guardrail_overhead")) or 0.0
        if overhead_ms is not None or guard > 0:
            self._observe(
                ops, "litellm_overhead_with_guardrails_latency_metric", labels, (overhead_ms or 0) / 1000 + guard
            )
        headers = wire.headers_as_dict(g("headers"))
        for name, header in (
            ("litellm_remaining_requests_metric", "x_ratelimit_remaining_requests"),
            ("litellm_remaining_tokens_metric", "x_ratelimit_remaining_tokens"),
        ):
            reading = gauge_reading(headers.get(header))
            if reading is not None:
                self._set(ops, name, labels, reading, t)
        state_labels = self._derive(
            labels,
            ("state", *dep_key),
            lambda: {
                "litellm_model_name": sanitize(model or ""),
                "model_id": sanitize(deployment_id or ""),
                "api_base": sanitize(g("api_base") or ""),
                "api_provider": sanitize(provider or ""),
            },
            merge=False,
        )
        self._set(ops, "litellm_deployment_state", state_labels, 0.0, t)
        self._inc(ops, "litellm_deployment_success_responses", labels)
        self._inc(ops, "litellm_deployment_total_requests", labels)
        basis = optional_number(g("latency_per_token_basis"))
        if basis is not None and completion_tokens > 0:
            self._observe(ops, "litellm_deployment_latency_per_output_token", labels, basis / completion_tokens)

    def _key_limits(self, ops: _Ops, ev: Mapping[str, Any], labels: Labels, t: float) -> None:
        headers = wire.headers_as_dict(ev.get("headers"))
        key_model_group = ev.get("key_model_group")
        key_labels = self._derive(
            labels,
            ("key_limits", key_model_group),
            lambda: self._with_extras(
                {
                    "hashed_api_key": labels["hashed_api_key"],
                    "api_key_alias": labels["api_key_alias"],
                    "model": sanitize(key_model_group),
                    "model_id": labels["model_id"],
                },
                {"custom_labels": ev.get("custom_labels")},
            ),
            merge=False,
        )
        for rtype, name in (
            ("requests", "litellm_remaining_api_key_requests_for_model"),
            ("tokens", "litellm_remaining_api_key_tokens_for_model"),
        ):
            value = ev.get(f"key_remaining_{rtype}")
            if value is None:
                value = strict_int(headers.get(f"x-ratelimit-model_per_key-remaining-{rtype}"))
            # No limiter data: LiteLLM exports sys.maxsize (spec §7.7).
            reading = float(sys.maxsize) if value is None else gauge_reading(value)
            if reading is not None:
                self._set(ops, name, key_labels, reading, t)

    _V3 = (
        ("api_key", "requests", "requests", "litellm_api_key_rate_limit"),
        ("api_key", "tokens", "tokens", "litellm_api_key_rate_limit"),
        ("team", "requests", "requests", "litellm_team_rate_limit"),
        ("team", "tokens", "tokens", "litellm_team_rate_limit"),
        ("model_per_project", "requests", "requests", "litellm_project_model_rate_limit"),
        ("model_per_project", "tokens", "tokens", "litellm_project_model_rate_limit"),
        ("model_per_project_itpm", "tokens", "input_tokens", "litellm_project_model_rate_limit"),
        ("model_per_project_otpm", "tokens", "output_tokens", "litellm_project_model_rate_limit"),
    )

    def _v3_rate_limits(self, ops: _Ops, ev: Mapping[str, Any], labels: Labels, t: float) -> None:
        headers = wire.headers_as_dict(ev.get("headers"))
        for descriptor, header_type, rtype, prefix in self._V3:
            limit = strict_int(headers.get(f"x-ratelimit-{descriptor}-limit-{header_type}"))
            remaining = strict_int(headers.get(f"x-ratelimit-{descriptor}-remaining-{header_type}"))
            rl_labels = self._derive(labels, ("rate_limit_type", rtype), functools.partial(dict, rate_limit_type=rtype))
            allowed, used = f"{prefix}_allowed_metric", f"{prefix}_used_metric"
            if limit is None or remaining is None:
                self._remove(ops, allowed, rl_labels, t)
                self._remove(ops, used, rl_labels, t)
            else:
                self._set(ops, allowed, rl_labels, float(limit), t)
                self._set(ops, used, rl_labels, float(limit - remaining), t)

    def _budgets(self, ops: _Ops, ev: Mapping[str, Any], labels: Labels, cost: float, t: float) -> None:
        """Per-request budget gauges (spec §4), from the raw inputs the proxy carried. An unknown
        spend or budget is not reported (LiteLLM reports it as zero spend or +Inf;
        docs/compatibility.md)."""
        raw = ev.get("budget")
        if not isinstance(raw, list):
            return
        b = dict(zip(wire.BUDGET_FIELDS, raw, strict=False))
        key = ev.get("hashed_api_key")
        if key:
            self._budget_gauges(
                ops,
                "api_key",
                self._derive(
                    labels,
                    ("budget_key",),
                    lambda: {"hashed_api_key": sanitize(key), "api_key_alias": sanitize(ev.get("api_key_alias") or "")},
                    merge=False,
                ),
                b.get("user_api_key_spend"),
                b.get("user_api_key_max_budget"),
                b.get("user_api_key_budget_reset_at"),
                cost,
                t,
            )
        team = ev.get("team")
        if team:
            max_budget = b.get("user_api_key_team_max_budget")
            if max_budget is None:
                max_budget = b.get("user_api_key_team_table_max_budget")
            self._budget_gauges(
                ops,
                "team",
                self._derive(
                    labels,
                    ("budget_team",),
                    lambda: {"team": sanitize(team), "team_alias": sanitize(ev.get("team_alias") or "")},
                    merge=False,
                ),
                b.get("user_api_key_team_spend"),
                max_budget,
                b.get("user_api_key_team_budget_reset_at"),
                cost,
                t,
            )
        user = ev.get("user")
        if user:
            max_budget = b.get("user_api_key_user_max_budget")
            if max_budget is None:
                max_budget = b.get("user_api_key_user_table_max_budget")
            user_alias = b.get("user_api_key_user_alias")
            user_labels = self._derive(
                labels,
                ("budget_user", user_alias),
                lambda: {
                    "user": sanitize(user),
                    "user_email": sanitize(ev.get("user_email") or ""),
                    "user_alias": sanitize(user_alias or ""),
                },
                merge=False,
            )
            self._budget_gauges(
                ops,
                "user",
                user_labels,
                b.get("user_api_key_user_spend"),
                max_budget,
                b.get("user_api_key_user_budget_reset_at"),
                cost,
                t,
            )
        org = ev.get("org_id")
        if org and b.get("user_api_key_org_spend") is not None:
            self._budget_gauges(
                ops,
                "org",
                self._derive(
                    labels,
                    ("budget_org",),
                    lambda: {"org_id": sanitize(org), "org_alias": sanitize(ev.get("org_alias") or "")},
                    merge=False,
                ),
                b.get("user_api_key_org_spend"),
                b.get("user_api_key_org_max_budget"),
                None,
                cost,
                t,
            )

    _BUDGET_METRICS = {
        "api_key": (
            "litellm_remaining_api_key_budget_metric",
            "litellm_api_key_max_budget_metric",
            "litellm_api_key_budget_remaining_hours_metric",
        ),
        "team": (
            "litellm_remaining_team_budget_metric",
            "litellm_team_max_budget_metric",
            "litellm_team_budget_remaining_hours_metric",
        ),
        "user": (
            "litellm_remaining_user_budget_metric",
            "litellm_user_max_budget_metric",
            "litellm_user_budget_remaining_hours_metric",
        ),
        "org": (
            "litellm_remaining_org_budget_metric",
            "litellm_org_max_budget_metric",
            "litellm_org_budget_remaining_hours_metric",
        ),
    }

    def _budget_gauges(
        self,
        ops: _Ops,
        entity: str,
        labels: Labels,
        spend: object,
        max_budget: object,
        reset_at: object,
        cost: float,
        t: float,
    ) -> None:
        remaining_name, max_name, hours_name = self._BUDGET_METRICS[entity]
        spend_v = optional_number(spend)
        max_v = optional_number(max_budget)
        if max_v is not None:
            self._set(ops, max_name, labels, max_v, t)
            if spend_v is not None:
                self._set(ops, remaining_name, labels, max_v - (spend_v + cost), t)
        reset = epoch(reset_at)
        if reset is not None:
            self._set(ops, hours_name, labels, reset, t)

    # -- failures ----------------------------------------------------------------------------------

    def _failure(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        g = ev.get
        labels = self._with_extras(
            {
                "end_user": sanitize(g("end_user")),
                "hashed_api_key": sanitize(g("hashed_api_key")),
                "api_key_alias": sanitize(g("api_key_alias")),
                "model": sanitize(g("model")),
                "team": sanitize(g("team")),
                "team_alias": sanitize(g("team_alias")),
                "user": sanitize(g("user")),
                "model_id": sanitize(g("model_id")),
                "requested_model": sanitize(g("model_group")),
                "api_provider": sanitize(g("api_provider")),
            },
            {"custom_labels": g("custom_labels")},
        )
        self._inc(ops, "litellm_llm_api_failed_requests_metric", labels)
        if g("zero_cost_reason") is not None:
            self._inc(ops, "litellm_zero_cost_requests_total", {**labels, "reason": sanitize(g("zero_cost_reason"))})
        dep = g("deployment")
        if not isinstance(dep, dict):
            return
        d = dep.get
        dep_labels = self._with_extras(
            {
                name: sanitize(d(name))
                for name in (
                    "litellm_model_name",
                    "model_id",
                    "api_base",
                    "api_provider",
                    "exception_status",
                    "exception_class",
                    "requested_model",
                    "model_group",
                    "hashed_api_key",
                    "api_key_alias",
                    "user_email",
                    "team",
                    "team_alias",
                    "client_ip",
                    "user_agent",
                )
            },
            dep,
        )
        if d("selected"):
            state_labels = {
                "litellm_model_name": sanitize(d("litellm_model_name") or ""),
                "model_id": sanitize(d("model_id")),
                "api_base": sanitize(d("api_base")),
                "api_provider": sanitize(d("state_api_provider") or ""),
            }
            self._set(ops, "litellm_deployment_state", state_labels, 1.0, t)
        if d("has_exception"):
            self._inc(ops, "litellm_deployment_failure_responses", dep_labels)
        self._inc(ops, "litellm_deployment_total_requests", dep_labels)

    def _post_call_failure(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        g = ev.get
        status = g("status_code")
        labels = self._with_extras(
            {
                name: sanitize(g(name))
                for name in (
                    "end_user",
                    "user",
                    "user_email",
                    "hashed_api_key",
                    "api_key_alias",
                    "team",
                    "team_alias",
                    "org_id",
                    "org_alias",
                    "requested_model",
                    "exception_class",
                    "rate_limit_category",
                    "rate_limit_type",
                    "route",
                    "client_ip",
                    "user_agent",
                    "model_id",
                    "api_provider",
                )
            },
            ev,
        )
        labels["status_code"] = labels["exception_status"] = sanitize(status)
        labels["stream"] = sanitize(str(g("stream")))
        self._inc(ops, "litellm_proxy_failed_requests_metric", labels)
        self._inc(ops, "litellm_proxy_total_requests_metric", labels)

    def _fallback(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        g = ev.get
        labels = self._with_extras(
            {
                name: sanitize(g(name))
                for name in (
                    "requested_model",
                    "fallback_model",
                    "hashed_api_key",
                    "api_key_alias",
                    "team",
                    "team_alias",
                    "exception_status",
                    "exception_class",
                )
            },
            ev,
        )
        name = (
            "litellm_deployment_successful_fallbacks"
            if ev["kind"] == wire.FALLBACK_SUCCESS
            else "litellm_deployment_failed_fallbacks"
        )
        self._inc(ops, name, labels)

    # -- direct calls -------------------------------------------------------------------------------

    def _deployment_state(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        state = number(ev.get("state"), "state")
        labels = {k: sanitize(ev.get(k)) for k in ("litellm_model_name", "model_id", "api_base", "api_provider")}
        self._set(ops, "litellm_deployment_state", labels, state, t)

    def _cooled_down(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        labels = {
            k: sanitize(ev.get(k))
            for k in ("litellm_model_name", "model_id", "api_base", "api_provider", "exception_status")
        }
        self._inc(ops, "litellm_deployment_cooled_down", labels)

    def _provider_budget(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        limit = optional_number(ev.get("budget_limit"))
        spend = optional_number(ev.get("spend"))
        if limit is None or spend is None:
            return  # unknown: never reported as zero spend or as the full budget
        self._set(
            ops,
            "litellm_provider_remaining_budget_metric",
            # LiteLLM passes the provider positionally, without sanitising it.
            {"api_provider": _plain(ev.get("api_provider"))},
            limit - spend,
            t,
        )

    def _callback_failure(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        self._inc(ops, "litellm_callback_logging_failures_metric", {"callback_name": str(ev.get("callback_name"))})

    def _guardrail(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        g = ev.get
        name, status, hook = str(g("guardrail_name")), str(g("status")), str(g("hook_type"))
        error_type = g("error_type")
        latency = g("latency_seconds")
        if latency is not None:
            self._observe(
                ops,
                "litellm_guardrail_latency_seconds",
                {
                    "guardrail_name": name,
                    "status": status,
                    "error_type": str(error_type or "none"),
                    "hook_type": hook,
                },
                number(latency, "latency", allow_negative=True),
            )
        self._inc(
            ops, "litellm_guardrail_requests_total", {"guardrail_name": name, "status": status, "hook_type": hook}
        )
        if status == "error" and error_type:
            self._inc(
                ops,
                "litellm_guardrail_errors_total",
                {"guardrail_name": name, "error_type": str(error_type), "hook_type": hook},
            )

    def _team_members(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        labels = {"team": sanitize(ev.get("team")), "team_alias": sanitize(ev.get("team_alias") or "")}
        self._set(ops, "litellm_team_members_metric", labels, number(ev.get("members"), "count"), t)

    def _spend_capture_rate(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        rate = optional_number(ev.get("capture_rate"))
        self._set(
            ops,
            "litellm_spend_capture_rate",
            {"api_provider": sanitize(ev.get("api_provider"))},
            math.nan if rate is None else rate,
            t,
        )

    def _managed_created(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        name = (
            "litellm_managed_batch_created_total"
            if ev["kind"] == wire.MANAGED_BATCH_CREATED
            else "litellm_managed_file_created_total"
        )
        self._inc(
            ops, name, {k: _plain(ev.get(k)) for k in ("model", "api_provider", "user", "user_email", "api_key_alias")}
        )

    def _managed_file_deleted(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        self._inc(ops, "litellm_managed_file_deleted_total", {"result": _plain(ev.get("result"))})

    def _managed_file_size(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        labels = {k: _plain(ev.get(k, "")) for k in ("purpose", "file_type", "model", "api_provider", "user")}
        self._set(ops, "litellm_managed_file_size_bytes", labels, number(ev.get("size_bytes"), "size"), t)

    def _managed_batch_duration(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        labels = {"model": _plain(ev.get("model", "")), "api_provider": _plain(ev.get("api_provider", ""))}
        self._observe(
            ops, "litellm_managed_batch_duration_seconds", labels, number(ev.get("duration_seconds"), "duration")
        )

    def _check_batch_cost_run(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        self._set(ops, "litellm_check_batch_cost_last_run_timestamp", {}, t, t)
        self._set(ops, "litellm_check_batch_cost_jobs_polled", {}, number(ev.get("jobs_polled"), "count"), t)
        for pair in ev.get("processed") or []:
            model, provider = pair
            self._inc(
                ops,
                "litellm_check_batch_cost_jobs_processed_total",
                {"model": _plain(model or ""), "api_provider": _plain(provider or "")},
            )

    def _check_batch_cost_error(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        self._inc(ops, "litellm_check_batch_cost_errors_total", {"error_type": _plain(ev.get("error_type"))})


def usage_dict(raw: object) -> dict[str, Any] | None:
    """The compact ``usage`` list of a success event as a name -> value mapping."""
    if not isinstance(raw, list):
        return None
    return dict(zip(wire.USAGE_FIELDS, raw, strict=False))


def _plain(value: object) -> str:
    """Labels LiteLLM sets without sanitising (hard-coded label lists): prometheus_client's str()."""
    return "None" if value is None else str(value)


def _positive_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)
