"""The metric engine: pure functions from events to metric deltas.

For every event kind, the same metrics with the same label values and sample values as
LiteLLM 1.110.2's ``PrometheusLogger`` (``litellm/integrations/prometheus.py``), except where LiteLLM
has a plain bug (``docs/compatibility.md``). An event is applied wholly or not at all: its
values are read and checked first and only added to the batch delta when nothing was invalid.

Label values are stored as LiteLLM renders them: sanitised (LiteLLM's
``sanitize_prometheus_label_value``) and ``None`` as the string ``"None"``; then a value
longer than ``max_label_value_length`` bytes
(``LSM_MAX_LABEL_VALUE_LENGTH``) is cut and ends with a digest of the whole value
(:func:`truncate_label_value`), in every series whatever the path. ``end_user`` is ``"None"``
unless the configuration opts in (LiteLLM's ``enable_end_user_cost_tracking_prometheus_only``),
whatever the event carries.

Success events (nine in ten events) take a faster path than the other kinds: the series they
update depend only on the caller's identity (label fields, custom and tag labels) and a few
selectors (deployment, zero-cost reason, ...), so the delta key of every series is computed
once per identity and kept in a bounded cache (a :class:`_Plan`). Per event, only the values
are read (:meth:`Engine._success_values`) and added to the delta through the plan.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aggregator.gc_pause import paused_gc
from aggregator.litellm_config import MetricsConfig
from aggregator.schema import (
    EXEMPLAR_METRICS,
    TRACE_ID,
    TRUNCATED_STAT,
    Labels,
    MetricSchema,
    sanitize,
    too_long,
)
from aggregator.settings import DEFAULT_MAX_LABEL_VALUE_LENGTH
from aggregator.state import MAX_ABS_AMOUNT, REMOVE, Delta, Key, encode_series
from producer import wire

if TYPE_CHECKING:
    from aggregator.apply import PendingEntry

# Integers beyond this do not convert to a float (OverflowError).
MAX_INT_FLOAT = int(sys.float_info.max)


class InvalidEvent(ValueError):
    """An event that cannot be applied; ``reason`` is counted in the shard stats."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _holds_longer(value: tuple[Any, ...], length: int) -> bool:
    """Whether a plan-cache key (or a tuple in it) holds a string longer than ``length``."""
    for part in value:
        kind = type(part)
        if (kind is str and len(part) > length) or (kind is tuple and _holds_longer(part, length)):
            return True
    return False


def _texts_longer(values: Iterable[Any], length: int) -> bool:
    """Whether label values (strings, as a rule) hold one longer than ``length``."""
    try:
        return max(map(len, values), default=0) > length  # in C: the usual case
    except TypeError:
        return any(type(v) is str and len(v) > length for v in values)


def _long_key_part(value: object, limit: int) -> object:
    """A plan-cache key part with every label value longer than ``limit`` replaced by its
    digest (the key must not hold a long value: the cache would keep it alive)."""
    if type(value) is str:
        if too_long(value, limit):
            return ("\0long", len(value), hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest())
        return value
    if type(value) is tuple:
        return tuple(_long_key_part(v, limit) for v in value)
    return value


def number(value: object, what: str, allow_negative: bool = False) -> float:
    """A finite number within the range the apply script accepts; anything else is poison."""
    if (type(value) is float or type(value) is int) and -MAX_ABS_AMOUNT <= value <= MAX_ABS_AMOUNT:
        if value >= 0 or allow_negative:  # the common case, checked the quick way (NaN fails above)
            return float(value)
        raise InvalidEvent(f"invalid_{what}")
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
        # An ISO 8601 time is short; anything long is not one (and is not kept in the cache).
        return _epoch_text(value) if len(value) <= 64 else None
    return None


@functools.lru_cache(maxsize=4096)
def _epoch_text(value: str) -> float | None:
    """ISO 8601 text -> seconds; cached, because every event of a key or team carries the same
    budget reset time."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)  # the wire format's rule
    return parsed.timestamp()


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

# Plans remembered at most; when full, the older half is forgotten (rebuilt on demand). A plan
# takes about 4.5 KiB, plus the series strings only it uses (about 0.5 KiB each: a few for a
# usual caller, about ten for a new end user each time).
PLAN_CACHE_SIZE = 20_000
# Series strings remembered at most (same eviction), by label values, about 0.6 KiB each with
# their key. Identities that differ only in labels some metrics do not have (client IP, user
# agent...) share those metrics' series, and many identities share the budget, rate-limit and
# deployment series: a plan is mostly built from strings encoded before. Both caches together
# peak at about 220 MiB when every event is a new caller (measured with end-user labels on).
SERIES_CACHE_SIZE = 100_000


def _make_room(cache: dict[Any, Any], size: int) -> None:
    """Forget the older half of a full cache (dicts keep insertion order)."""
    if len(cache) >= size:
        # list(cache) copies the keys in one C call (builds of several shards may run in
        # threads at once); pop() tolerates a key another thread removed already.
        for old in list(cache)[: size // 2]:
            cache.pop(old, None)


def _frozen(value: object) -> object:
    return tuple(sorted(value.items())) if isinstance(value, dict) else value


def _padded(raw: object, size: int) -> Sequence[Any]:
    """A positional list of the wire format with exactly ``size`` items (missing ones null);
    anything that is not a list reads as all null."""
    if not isinstance(raw, list):
        return (None,) * size
    n = len(raw)
    if n == size:
        return raw
    return raw[:size] if n > size else raw + [None] * (size - n)


# -- success events: value slots ----------------------------------------------------------------
# ``Engine._success_values`` returns a list indexed by these; a plan says which series each slot
# feeds. A slot left None updates nothing; a gauge slot set to REMOVE removes its series.
_ONE = 0
_ZERO = 1
_COST = 2
_TOTAL_TOKENS = 3
_PROMPT_TOKENS = 4
_COMPLETION_TOKENS = 5
_USAGE = 6  # 6-12: the positive usage numbers, in wire.USAGE_FIELDS order (7 of them)
_CACHE_HIT = 13
_CACHED_TOTAL_TOKENS = 14
_CACHE_MISS = 15
_PROVIDER_CACHE_READ = 16
_PROVIDER_CACHE_WRITE = 17
_MCP_SPEND = 18
_TTFT = 19
_API_LATENCY = 20
_TOTAL_LATENCY = 21
_QUEUE_TIME = 22
_OVERHEAD = 23
_OVERHEAD_WITH_GUARDRAILS = 24
_PER_OUTPUT_TOKEN = 25
_TPM = 26
_RPM = 27
_REMAINING_REQUESTS = 28
_REMAINING_TOKENS = 29
_KEY_REMAINING_REQUESTS = 30
_KEY_REMAINING_TOKENS = 31
_BUDGET = 32  # 32-43: (max, remaining, reset time) for api_key, team, user, org
_V3 = 44  # 44-59: (allowed, used) for each of wire.V3_RATE_LIMITS
_SLOTS = 60

_BUDGET_ENTITIES = ("api_key", "team", "user", "org")
_BUDGET_METRICS = {
    "api_key": (
        "litellm_api_key_max_budget_metric",
        "litellm_remaining_api_key_budget_metric",
        "litellm_api_key_budget_remaining_hours_metric",
    ),
    "team": (
        "litellm_team_max_budget_metric",
        "litellm_remaining_team_budget_metric",
        "litellm_team_budget_remaining_hours_metric",
    ),
    "user": (
        "litellm_user_max_budget_metric",
        "litellm_remaining_user_budget_metric",
        "litellm_user_budget_remaining_hours_metric",
    ),
    "org": (
        "litellm_org_max_budget_metric",
        "litellm_remaining_org_budget_metric",
        "litellm_org_budget_remaining_hours_metric",
    ),
}
_V3_METRICS = {
    "api_key": "litellm_api_key_rate_limit",
    "team": "litellm_team_rate_limit",
    "model_per_project": "litellm_project_model_rate_limit",
    "model_per_project_itpm": "litellm_project_model_rate_limit",
    "model_per_project_otpm": "litellm_project_model_rate_limit",
}
_USAGE_COUNTERS = (
    "litellm_input_cached_tokens_metric",
    "litellm_input_cache_creation_tokens_metric",
    "litellm_input_audio_tokens_metric",
    "litellm_output_reasoning_tokens_metric",
    "litellm_output_audio_tokens_metric",
    "litellm_video_duration_seconds_metric",
    "litellm_images_generated_metric",
)
# Indices into the padded ``headers`` and ``budget`` lists of a success event.
_H = {name: i for i, name in enumerate(wire.HEADER_FIELDS)}
_B = {name: i for i, name in enumerate((*wire.BUDGET_FIELDS, *wire.BUDGET_FLAGS))}
_N_HEADERS, _N_USAGE = len(wire.HEADER_FIELDS), len(wire.USAGE_FIELDS)
_N_BUDGET = len(wire.BUDGET_FIELDS) + len(wire.BUDGET_FLAGS)
# (limit header, remaining header, first value slot) of each v3 rate limit.
_V3_HEADERS = tuple(
    (_H[f"x-ratelimit-{d}-limit-{h}"], _H[f"x-ratelimit-{d}-remaining-{h}"], _V3 + 2 * i)
    for i, (d, h, _t) in enumerate(wire.V3_RATE_LIMITS)
)
# (value slot, event field of the legacy limiter, v3 header) of the key's remaining requests/tokens.
_KEY_REMAINING = tuple(
    (slot, f"key_remaining_{rtype}", _H[f"x-ratelimit-model_per_key-remaining-{rtype}"])
    for slot, rtype in ((_KEY_REMAINING_REQUESTS, "requests"), (_KEY_REMAINING_TOKENS, "tokens"))
)
_REMAINING_REQUESTS_AT = _H["x_ratelimit_remaining_requests"]
_REMAINING_TOKENS_AT = _H["x_ratelimit_remaining_tokens"]
_MAXSIZE = float(sys.maxsize)
_INF = math.inf

# (metric, label set, value slot) of every series a success event may update. The label sets
# are built by ``Engine._success_label_sets``. A row whose metric is off is left out; a row whose
# label set the identity does not have (no team: no team budget) has no key in its plan.
_SUCCESS_COUNTERS: tuple[tuple[str, str, int], ...] = (
    ("litellm_requests_metric", "call", _ONE),
    ("litellm_spend_metric", "call", _COST),
    ("litellm_zero_cost_requests_total", "zero_cost", _ONE),
    ("litellm_total_tokens_metric", "call", _TOTAL_TOKENS),
    ("litellm_input_tokens_metric", "call", _PROMPT_TOKENS),
    ("litellm_output_tokens_metric", "call", _COMPLETION_TOKENS),
    *((name, "call", _USAGE + i) for i, name in enumerate(_USAGE_COUNTERS)),
    ("litellm_deployment_success_responses", "deployed_call", _ONE),
    ("litellm_deployment_total_requests", "deployed_call", _ONE),
    ("litellm_cache_hits_metric", "call", _CACHE_HIT),
    ("litellm_cached_tokens_metric", "call", _CACHED_TOTAL_TOKENS),
    ("litellm_cache_misses_metric", "call", _CACHE_MISS),
    ("litellm_provider_cache_read_input_tokens_metric", "call", _PROVIDER_CACHE_READ),
    ("litellm_provider_cache_creation_input_tokens_metric", "call", _PROVIDER_CACHE_WRITE),
    ("litellm_mcp_tool_calls_total", "mcp", _ONE),
    ("litellm_mcp_tool_call_spend_metric", "mcp", _MCP_SPEND),
    ("litellm_proxy_total_requests_metric", "proxy", _ONE),
)
_SUCCESS_HISTOGRAMS: tuple[tuple[str, str, int], ...] = (
    ("litellm_llm_api_time_to_first_token_metric", "call", _TTFT),
    ("litellm_llm_api_latency_metric", "call", _API_LATENCY),
    ("litellm_request_total_latency_metric", "call", _TOTAL_LATENCY),
    ("litellm_request_queue_time_seconds", "call", _QUEUE_TIME),
    ("litellm_overhead_latency_metric", "deployed_call", _OVERHEAD),
    ("litellm_overhead_with_guardrails_latency_metric", "deployed_call", _OVERHEAD_WITH_GUARDRAILS),
    ("litellm_deployment_latency_per_output_token", "deployed_call", _PER_OUTPUT_TOKEN),
)
_SUCCESS_GAUGES: tuple[tuple[str, str, int], ...] = (
    *(
        (name, f"budget_{entity}", _BUDGET + 3 * i + j)
        for i, entity in enumerate(_BUDGET_ENTITIES)
        for j, name in enumerate(_BUDGET_METRICS[entity])
    ),
    ("litellm_remaining_api_key_requests_for_model", "key_limits", _KEY_REMAINING_REQUESTS),
    ("litellm_remaining_api_key_tokens_for_model", "key_limits", _KEY_REMAINING_TOKENS),
    *(
        (f"{_V3_METRICS[descriptor]}_{part}_metric", f"rate_limit_{rtype}", _V3 + 2 * i + j)
        for i, (descriptor, _h, rtype) in enumerate(wire.V3_RATE_LIMITS)
        for j, part in enumerate(("allowed", "used"))
    ),
    ("litellm_deployment_tpm_limit", "deployment", _TPM),
    ("litellm_deployment_rpm_limit", "deployment", _RPM),
    ("litellm_remaining_requests_metric", "deployed_call", _REMAINING_REQUESTS),
    ("litellm_remaining_tokens_metric", "deployed_call", _REMAINING_TOKENS),
    ("litellm_deployment_state", "state", _ZERO),
)


@dataclass(frozen=True, slots=True)
class _Plan:
    """The series of one caller identity: for each row of the engine's success tables whose
    metric is on and whose label set the identity has (in table order), the delta key and the
    value slot that feeds it (histograms: with the bucket bounds)."""

    counters: tuple[tuple[Key, int], ...]
    histograms: tuple[tuple[Key, tuple[float, ...], int], ...]
    gauges: tuple[tuple[Key, int], ...]
    # The shard-stats fields to count per event: one per label truncated in the plan's series.
    truncated: tuple[str, ...] = ()
    # (kind "c"/"h", delta key, value slot) of the series that take an exemplar.
    exemplars: tuple[tuple[str, Key, int], ...] = ()


class _Ops:
    """Updates of one event (other than a success), committed to the batch delta only if the
    whole event is valid."""

    __slots__ = ("gauges", "incs", "observations", "truncated")

    def __init__(self) -> None:
        self.incs: list[tuple[Key, float]] = []
        self.observations: list[tuple[Key, tuple[float, ...], float]] = []
        self.gauges: list[tuple[Key, float | None]] = []
        #: Names of the labels whose value had to be truncated.
        self.truncated: set[str] = set()


class Engine:
    """Turns events into a :class:`Delta` for one metrics configuration."""

    def __init__(self, config: MetricsConfig, max_label_value_length: int = DEFAULT_MAX_LABEL_VALUE_LENGTH) -> None:
        self.config = config
        #: What the readers share: metric keys, label names and defaults, buckets, series encoding.
        self.schema = schema = MetricSchema(config, max_label_value_length)
        #: Longest label value written, in UTF-8 bytes; longer ones are truncated (``truncate_label_value``).
        self.max_label_value_length = max_label_value_length
        # LiteLLM's end_user label is a real id only with the opt-in; otherwise it is "None",
        # whatever an event carries (the end-user series caps exist only with the opt-in too).
        self._end_user_tracking = config.end_user_tracking
        self._success_label_fields = tuple(
            f for f in _SUCCESS_LABEL_FIELDS if self._end_user_tracking or f != "end_user"
        )
        # The schema's tables, bound here for the hot paths.
        self._labels = schema.labels
        self._defaults = schema.defaults
        self._mkeys = schema.keys
        self._bounds = schema.bounds
        self._series = schema.series
        self._truncate = schema.truncate
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._series_cache: dict[tuple[str, ...], str] = {}
        self._index_success_tables()
        self._handlers: dict[str, Callable[[_Ops, dict[str, Any], float], None]] = {
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

    def _index_success_tables(self) -> None:
        """Keep the rows of the success tables whose metric is on, and index them for plans."""
        # An observation is checked only when its histogram is on (as LiteLLM only observes then).
        self._observed = frozenset(name for name, _s, _v in _SUCCESS_HISTOGRAMS if name in self._bounds)
        counters, histograms, gauges = (
            [(set_name, name, slot) for name, set_name, slot in table if name in self._mkeys]
            for table in (_SUCCESS_COUNTERS, _SUCCESS_HISTOGRAMS, _SUCCESS_GAUGES)
        )
        self._exemplar_mkeys = frozenset(self._mkeys[n] for n in EXEMPLAR_METRICS if n in self._mkeys)
        self._counter_slots = tuple(slot for _s, _name, slot in counters)
        self._histogram_slots = tuple(slot for _s, _name, slot in histograms)
        self._histogram_bounds = tuple(self._bounds[name] for _s, name, _slot in histograms)
        self._gauge_slots = tuple(slot for _s, _name, slot in gauges)
        self._plan_sizes = (len(counters), len(histograms), len(gauges))
        # Rows whose metrics have the same label list and label set have the same series: a plan
        # encodes it once. (label set, label names, defaults) -> [(table, row, metric key), ...]
        self._plan_groups: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[tuple[int, int, str]]] = {}
        for table, rows in enumerate((counters, histograms, gauges)):
            for row, (set_name, name, _slot) in enumerate(rows):
                group = (set_name, self._labels[name], self._defaults[name])
                self._plan_groups.setdefault(group, []).append((table, row, self._mkeys[name]))

    # -- plumbing -----------------------------------------------------------------------------------

    def metric_key(self, name: str) -> str | None:
        return self.schema.metric_key(name)

    def label_names(self, name: str) -> tuple[str, ...]:
        return self.schema.label_names(name)

    def upper_bounds(self, name: str) -> tuple[float, ...]:
        return self.schema.upper_bounds(name)

    def build_delta(self, entries: Sequence[PendingEntry]) -> Delta:
        delta = Delta()
        add = self.add_event
        rejected = delta.rejected
        with paused_gc():
            for entry in entries:
                bad = 0
                for event in entry.events:
                    if not add(delta, event):
                        bad += 1
                if bad:
                    rejected[entry.entry_id] = bad
        return delta

    def add_event(self, delta: Delta, event: dict[str, Any]) -> bool:
        """Add one event's updates to ``delta``; False (and a counted reason) when rejected."""
        kind = event.get("kind")
        try:
            if kind == wire.SUCCESS:
                t = number(event.get("t"), "time")
                values, plan = self._success_values(event)
                delta.inc_indexed(plan.counters, values)
                delta.observe_indexed(plan.histograms, values)
                delta.set_indexed(plan.gauges, values, t)
                if plan.truncated:
                    for stat in plan.truncated:
                        delta.count(stat)
                if plan.exemplars:
                    trace = event.get("trace_id")
                    if trace is not None and type(trace) is str and TRACE_ID.fullmatch(trace):
                        for kind_, (mkey, series), slot in plan.exemplars:
                            value = values[slot]
                            if value is not None:
                                delta.exemplar(kind_, mkey, series, t, trace, value)
            else:
                handler = self._handlers.get(kind) if isinstance(kind, str) else None
                if handler is None:
                    delta.count("events_rejected_unknown_kind")
                    return False
                ops = _Ops()
                t = number(event.get("t"), "time")
                handler(ops, event, t)
                _commit(delta, ops, t)
        except InvalidEvent as exc:
            delta.count(f"events_rejected_{exc.reason}")
            return False
        # Any other exception is a bug of the engine (an input it should have validated, or a
        # slip), not a malformed event: it propagates, the consumer dead-letters the entry as
        # ``engine_error`` (replayable once fixed) and counts it (``lsm_engine_errors_total``).
        delta.count("events_applied_" + str(kind))
        return True

    def _key(self, ops: _Ops, name: str, labels: Labels) -> Key | None:
        """The delta key of ``name``'s series for these label values (None: metric disabled)."""
        series = self._series(name, labels, ops.truncated)
        return None if series is None else (self._mkeys[name], series)

    def _inc(self, ops: _Ops, name: str, labels: Labels, amount: float = 1.0) -> None:
        key = self._key(ops, name, labels)
        if key is not None:
            ops.incs.append((key, amount))

    def _observe(self, ops: _Ops, name: str, labels: Labels, value: float) -> None:
        key = self._key(ops, name, labels)
        if key is not None:
            ops.observations.append((key, self._bounds[name], number(value, "observation", allow_negative=True)))

    def _set(self, ops: _Ops, name: str, labels: Labels, value: float, t: float) -> None:
        key = self._key(ops, name, labels)
        if key is not None:
            ops.gauges.append((key, value))

    def _end_user(self, value: object) -> str:
        return sanitize(value) if self._end_user_tracking else "None"

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

    # -- success: values ----------------------------------------------------------------------------

    def _success_values(self, ev: Mapping[str, Any]) -> tuple[list[Any], _Plan]:
        """Every value a success event adds (checked: raises InvalidEvent before anything is
        written), and the plan of its identity. The checks run in LiteLLM's order of updates;
        only the plan look-up (which fails on an unhashable label value) comes early, right after
        the token counts, so an event with two faults may be counted under the other one."""
        g = ev.get
        v: list[Any] = [None] * _SLOTS
        v[_ONE] = 1.0
        v[_ZERO] = 0.0
        v[_COST] = cost = number(g("response_cost") or 0, "response_cost")
        v[_TOTAL_TOKENS] = total_tokens = number(g("total_tokens") or 0, "tokens")
        v[_PROMPT_TOKENS] = number(g("prompt_tokens") or 0, "tokens")
        v[_COMPLETION_TOKENS] = completion_tokens = number(g("completion_tokens") or 0, "tokens")
        plan = self._success_plan(ev)
        raw_usage = g("usage")
        usage = _padded(raw_usage, _N_USAGE) if isinstance(raw_usage, list) else None
        if usage is not None:
            for i in range(5):  # token details
                if usage[i] is not None:
                    positive = _positive_number(usage[i])
                    if positive is not None:
                        v[_USAGE + i] = number(positive, "usage")
        self._budget_values(v, ev, cost)
        headers = _padded(g("headers"), _N_HEADERS)
        self._limit_values(v, ev, headers)
        self._latency_values(v, ev)
        if g("has_deployment"):
            self._deployment_values(v, ev, headers, completion_tokens)
        hit = g("cache_hit")
        if hit is True:
            v[_CACHE_HIT] = 1.0
            if total_tokens > 0:
                v[_CACHED_TOTAL_TOKENS] = total_tokens
        elif hit is not None:
            v[_CACHE_MISS] = 1.0
        if usage is not None:
            self._provider_cache_values(v, usage)
            for i in (5, 6):  # video seconds, images
                if usage[i] is not None:
                    positive = _positive_number(usage[i])
                    if positive is not None:
                        v[_USAGE + i] = number(positive, "usage")
        if cost > 0:
            v[_MCP_SPEND] = cost
        return v, plan

    @staticmethod
    def _budget_values(v: list[Any], ev: Mapping[str, Any], cost: float) -> None:
        """Per-request budget gauges (LiteLLM's
        ``_set_*_budget_metrics_after_api_request``), from the raw inputs the proxy carried. An unknown
        spend or budget is not reported (LiteLLM reports it as zero spend or +Inf;
        docs/compatibility.md)."""
        raw = ev.get("budget")
        if not isinstance(raw, list):
            return
        (
            key_spend,
            key_max,
            key_reset,
            team_spend,
            team_max,
            team_table_max,
            team_reset,
            user_spend,
            user_max,
            user_table_max,
            user_reset,
            _user_alias,
            org_spend,
            org_max,
            user_snapshot,
            key_snapshot,
            team_snapshot,
            org_snapshot,
        ) = raw if len(raw) == _N_BUDGET else _padded(raw, _N_BUDGET)  # wire.BUDGET_FIELDS + BUDGET_FLAGS
        # What a snapshot carries counts only when the request carried that snapshot (a flag of
        # 0); without it LiteLLM looks the entity up, which finds nothing without a database.
        # An absent flag (an older producer) reads as carried.
        if key_snapshot == 0:
            key_reset = None
        if team_snapshot == 0:
            team_table_max = team_reset = None
        if user_snapshot == 0:
            user_table_max = user_reset = None
        g = ev.get
        if g("hashed_api_key"):
            _budget_gauges(v, _BUDGET, key_spend, key_max, key_reset, cost)
        if g("team"):
            _budget_gauges(
                v, _BUDGET + 3, team_spend, team_table_max if team_max is None else team_max, team_reset, cost
            )
        if g("user"):
            _budget_gauges(
                v, _BUDGET + 6, user_spend, user_table_max if user_max is None else user_max, user_reset, cost
            )
        # Org gauges only from the org's snapshot (without it: a database look-up).
        if (org_snapshot == 1 or (org_snapshot is None and org_spend is not None)) and g("org_id"):
            _budget_gauges(v, _BUDGET + 9, org_spend, org_max, None, cost)

    @staticmethod
    def _limit_values(v: list[Any], ev: Mapping[str, Any], headers: Sequence[Any]) -> None:
        """Remaining requests/tokens of the key for the model (legacy limiter, else the v3
        limiter's header; none: LiteLLM exports sys.maxsize), and the v3 limiter's
        allowed/used gauges (a missing limit/remaining pair removes the series)."""
        g = ev.get
        for slot, name, header_at in _KEY_REMAINING:
            value = g(name)
            if value is None:
                value = headers[header_at]
                if type(value) is not int:
                    value = strict_int(value)
            v[slot] = _MAXSIZE if value is None else gauge_reading(value)
        for limit_at, remaining_at, slot in _V3_HEADERS:
            limit = headers[limit_at]
            remaining = headers[remaining_at]
            if type(limit) is not int or type(remaining) is not int:  # not the usual two plain ints
                if limit is not None and remaining is not None:
                    limit, remaining = strict_int(limit), strict_int(remaining)
                if limit is None or remaining is None:
                    v[slot] = v[slot + 1] = REMOVE
                    continue
            v[slot] = float(limit)
            v[slot + 1] = float(limit - remaining)

    def _latency_values(self, v: list[Any], ev: Mapping[str, Any]) -> None:
        queue = optional_number(ev.get("latency_queue"))
        ttft, api, total = ev.get("latency_ttft"), ev.get("latency_api"), ev.get("latency_total")
        if ttft is not None:
            v[_TTFT] = self._observation("litellm_llm_api_time_to_first_token_metric", ttft)
        if api is not None:
            v[_API_LATENCY] = self._observation("litellm_llm_api_latency_metric", api)
        if total is not None:
            observed = number(total, "latency", allow_negative=True)
            if queue is not None and queue >= 0:
                observed += queue
            v[_TOTAL_LATENCY] = self._observation("litellm_request_total_latency_metric", observed)
        if queue is not None and queue >= 0:
            v[_QUEUE_TIME] = self._observation("litellm_request_queue_time_seconds", queue)

    def _observation(self, name: str, value: object) -> float | None:
        """A checked histogram observation, or None when the histogram is off."""
        return number(value, "observation", allow_negative=True) if name in self._observed else None

    def _deployment_values(
        self, v: list[Any], ev: Mapping[str, Any], headers: Sequence[Any], completion_tokens: float
    ) -> None:
        g = ev.get
        tpm, rpm = g("deployment_tpm"), g("deployment_rpm")
        v[_TPM] = None if tpm is None else gauge_reading(tpm)
        v[_RPM] = None if rpm is None else gauge_reading(rpm)
        overhead_ms = optional_number(g("overhead_ms"))
        if overhead_ms:
            v[_OVERHEAD] = self._observation("litellm_overhead_latency_metric", overhead_ms / 1000)
        guard = optional_number(g("guardrail_overhead")) or 0.0
        if overhead_ms is not None or guard > 0:
            v[_OVERHEAD_WITH_GUARDRAILS] = self._observation(
                "litellm_overhead_with_guardrails_latency_metric", (overhead_ms or 0) / 1000 + guard
            )
        remaining_requests, remaining_tokens = headers[_REMAINING_REQUESTS_AT], headers[_REMAINING_TOKENS_AT]
        v[_REMAINING_REQUESTS] = None if remaining_requests is None else gauge_reading(remaining_requests)
        v[_REMAINING_TOKENS] = None if remaining_tokens is None else gauge_reading(remaining_tokens)
        basis = optional_number(g("latency_per_token_basis"))
        if basis is not None and completion_tokens > 0:
            v[_PER_OUTPUT_TOKEN] = self._observation(
                "litellm_deployment_latency_per_output_token", basis / completion_tokens
            )

    @staticmethod
    def _provider_cache_values(v: list[Any], usage: Sequence[Any]) -> None:
        """LiteLLM's _resolve_provider_cache_tokens: explicit provider fields (ints), else the
        prompt-details values when the explicit field is absent."""
        cached, cache_write, read, write = usage[0], usage[1], usage[7], usage[8]
        read_tokens = read if isinstance(read, int) else 0
        write_tokens = write if isinstance(write, int) else 0
        if read is None and isinstance(cached, int):
            read_tokens = cached
        if write is None and isinstance(cache_write, int) and not isinstance(cache_write, bool):
            write_tokens = cache_write
        if read_tokens > 0:
            v[_PROVIDER_CACHE_READ] = number(read_tokens, "usage")
        if write_tokens > 0:
            v[_PROVIDER_CACHE_WRITE] = number(write_tokens, "usage")

    # -- success: plans -----------------------------------------------------------------------------

    def _success_plan(self, ev: Mapping[str, Any]) -> _Plan:
        """The plan of this event's identity: from the cache, else built (and remembered)."""
        g = ev.get
        has_deployment = bool(g("has_deployment"))
        original = g("original_model_group")
        budget = g("budget")
        user_alias = user_snapshot = None
        if isinstance(budget, list) and g("user"):
            padded = _padded(budget, _N_BUDGET)
            user_alias, user_snapshot = padded[_B["user_api_key_user_alias"]], padded[_B["user_snapshot"]]
        mcp_tool, mcp_server = g("mcp_tool"), g("mcp_server")
        key = (
            *map(g, self._success_label_fields),
            _frozen(g("custom_labels")),
            _frozen(g("tag_labels")),
            # What else picks the label values of some series (see _success_label_sets).
            g("zero_cost_reason"),
            original if isinstance(original, str) and original else None,
            g("key_model_group"),
            isinstance(budget, list),
            user_alias,
            user_snapshot,
            (g("deployment_model_id"), g("deployment_provider")) if has_deployment else None,
            None if mcp_tool is None and mcp_server is None else (sanitize(mcp_tool), sanitize(mcp_server)),
        )
        try:
            plan = self._plans.get(key)
        except TypeError:  # a label value that is a list or an object: not one LiteLLM could log
            raise InvalidEvent("malformed") from None
        if plan is None:
            # A key holding a long label value is remembered by the value's digest instead: the
            # cache must not keep long values alive. Such an event always misses the lookup
            # above and finds its plan here.
            if _holds_longer(key, self.max_label_value_length // 4):
                key = _long_key_part(key, self.max_label_value_length)  # type: ignore[assignment]
                plan = self._plans.get(key)
            if plan is None:
                _make_room(self._plans, PLAN_CACHE_SIZE)
                plan = self._plans[key] = self._build_plan(self._success_label_sets(ev))
        return plan

    def _build_plan(self, label_sets: Mapping[str, Labels | None]) -> _Plan:
        """Resolve every row of the success tables to a delta key (left out: rows whose label
        set the identity does not have)."""
        tables: tuple[list[Key | None], ...] = tuple([None] * n for n in self._plan_sizes)
        truncated: set[str] = set()
        # Rarely any label value is long (no value of a quarter of the limit can be: UTF-8).
        quarter = self.max_label_value_length // 4
        cut_any = False
        for labels in label_sets.values():
            if labels and _texts_longer(labels.values(), quarter):
                cut_any = True
                break
        for (set_name, names, defaults), rows in self._plan_groups.items():
            labels = label_sets.get(set_name)
            if labels is not None:
                values = tuple(map(labels.get, names, defaults))
                if cut_any:
                    cut = list(values)
                    self._truncate(names, cut, truncated)
                    values = tuple(cut)
                series = self._shared_series(values)
                for table, row, mkey in rows:
                    tables[table][row] = (mkey, series)
        counters, histograms, gauges = tables
        ex = self._exemplar_mkeys
        exemplars = tuple(
            (kind, k, slot)
            for kind, keys, slots in (("c", counters, self._counter_slots), ("h", histograms, self._histogram_slots))
            for k, slot in zip(keys, slots, strict=True)
            if k is not None and k[0] in ex
        )
        return _Plan(
            tuple((k, slot) for k, slot in zip(counters, self._counter_slots, strict=True) if k is not None),
            tuple(
                (k, bounds, slot)
                for k, bounds, slot in zip(histograms, self._histogram_bounds, self._histogram_slots, strict=True)
                if k is not None
            ),
            tuple((k, slot) for k, slot in zip(gauges, self._gauge_slots, strict=True) if k is not None),
            tuple(f"{TRUNCATED_STAT}{name}" for name in sorted(truncated)),
            exemplars,
        )

    def _shared_series(self, values: tuple[str, ...]) -> str:
        """The series string of these (already truncated) label values, encoded once and shared
        by every plan."""
        cache = self._series_cache
        series = cache.get(values)
        if series is None:
            _make_room(cache, SERIES_CACHE_SIZE)
            series = cache[values] = encode_series(values)
        return series

    def _success_label_sets(self, ev: Mapping[str, Any]) -> dict[str, Labels | None]:
        """The label values of every series a success event updates, by label set name (None:
        the event has no such series)."""
        g = ev.get
        call = self._success_labels(ev)
        sets: dict[str, Labels | None] = {"call": call}
        reason = g("zero_cost_reason")
        sets["zero_cost"] = None if reason is None else {**call, "reason": sanitize(reason)}
        original = g("original_model_group")
        requested = original if isinstance(original, str) and original else g("model_group")
        sets["proxy"] = {**call, "requested_model": sanitize(requested)}
        if g("mcp_tool") is not None or g("mcp_server") is not None:
            sets["mcp"] = {
                "mcp_tool_name": sanitize(g("mcp_tool")),
                "mcp_server_name": sanitize(g("mcp_server")),
                **{k: call[k] for k in ("hashed_api_key", "api_key_alias", "team", "team_alias", "user", "end_user")},
            }
        sets["key_limits"] = self._with_extras(
            {
                "hashed_api_key": call["hashed_api_key"],
                "api_key_alias": call["api_key_alias"],
                "model": sanitize(g("key_model_group")),
                "model_id": call["model_id"],
            },
            {"custom_labels": g("custom_labels")},
        )
        for _d, _h, rtype in wire.V3_RATE_LIMITS:
            sets[f"rate_limit_{rtype}"] = {**call, "rate_limit_type": rtype}
        if g("has_deployment"):
            sets.update(self._deployment_label_sets(ev, call))
        if isinstance(g("budget"), list):
            sets.update(self._budget_label_sets(ev))
        return sets

    def _success_labels(self, ev: Mapping[str, Any]) -> dict[str, str]:
        g = ev.get
        model = g("model")
        stream = g("stream")
        return self._with_extras(
            {
                "end_user": self._end_user(g("end_user")),
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

    @staticmethod
    def _deployment_label_sets(ev: Mapping[str, Any], call: Mapping[str, str]) -> dict[str, Labels]:
        """Deployment series: built without the request's metadata and tags, as LiteLLM does."""
        g = ev.get
        model, deployment_id, api_base = g("model"), g("deployment_model_id"), g("api_base")
        provider = g("deployment_provider")
        return {
            "deployed_call": call,
            "deployment": {
                "litellm_model_name": sanitize(model),
                "model_id": sanitize(deployment_id),
                "api_base": sanitize(api_base),
                "api_provider": sanitize(provider),
                "model_group": call["model_group"],
            },
            "state": {
                "litellm_model_name": sanitize(model or ""),
                "model_id": sanitize(deployment_id or ""),
                "api_base": sanitize(api_base or ""),
                "api_provider": sanitize(provider or ""),
            },
        }

    @staticmethod
    def _budget_label_sets(ev: Mapping[str, Any]) -> dict[str, Labels]:
        g = ev.get
        sets: dict[str, Labels] = {}
        if g("hashed_api_key"):
            sets["budget_api_key"] = {
                "hashed_api_key": sanitize(g("hashed_api_key")),
                "api_key_alias": sanitize(g("api_key_alias") or ""),
            }
        if g("team"):
            sets["budget_team"] = {"team": sanitize(g("team")), "team_alias": sanitize(g("team_alias") or "")}
        if g("user"):
            budget = _padded(g("budget"), _N_BUDGET)
            # LiteLLM's labels: the request's email and the snapshot's alias when the request
            # carried the user's budget snapshot, else those of a user lookup (no database: "").
            carried = budget[_B["user_snapshot"]] != 0  # null: a 2.0 producer, read as carried
            sets["budget_user"] = {
                "user": sanitize(g("user")),
                "user_email": sanitize((g("user_email") if carried else None) or ""),
                "user_alias": sanitize((budget[_B["user_api_key_user_alias"]] if carried else None) or ""),
            }
        if g("org_id"):
            sets["budget_org"] = {"org_id": sanitize(g("org_id")), "org_alias": sanitize(g("org_alias") or "")}
        return sets

    # -- failures ----------------------------------------------------------------------------------

    def _failure(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        g = ev.get
        labels = self._with_extras(
            {
                "end_user": self._end_user(g("end_user")),
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
        labels["end_user"] = self._end_user(g("end_user"))
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
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise InvalidEvent("malformed")
            model, provider = pair
            self._inc(
                ops,
                "litellm_check_batch_cost_jobs_processed_total",
                {"model": _plain(model or ""), "api_provider": _plain(provider or "")},
            )

    def _check_batch_cost_error(self, ops: _Ops, ev: dict[str, Any], t: float) -> None:
        self._inc(ops, "litellm_check_batch_cost_errors_total", {"error_type": _plain(ev.get("error_type"))})


def _finite(value: object) -> float | None:
    """``optional_number`` with a quick path for the usual float."""
    if type(value) is float:
        return value if -_INF < value < _INF else None
    return None if value is None else optional_number(value)


def _budget_gauges(v: list[Any], slot: int, spend: object, max_budget: object, reset_at: object, cost: float) -> None:
    """The max budget, remaining budget and reset time of one entity, from ``slot`` on."""
    max_v = _finite(max_budget)
    if max_v is not None:
        v[slot] = max_v
        spend_v = _finite(spend)
        if spend_v is not None:
            v[slot + 1] = max_v - (spend_v + cost)
    v[slot + 2] = None if reset_at is None else epoch(reset_at)


def _plain(value: object) -> str:
    """Labels LiteLLM sets without sanitising (hard-coded label lists): prometheus_client's str()."""
    return "None" if value is None else str(value)


def _positive_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)


def _commit(delta: Delta, ops: _Ops, t: float) -> None:
    for name in ops.truncated:
        delta.count(TRUNCATED_STAT + name)
    for (mkey, series), amount in ops.incs:
        delta.inc(mkey, series, amount)
    for (mkey, series), bounds, value in ops.observations:
        delta.observe(mkey, series, bounds, value)
    for (mkey, series), gauge in ops.gauges:
        delta.set_gauge(mkey, series, t, gauge)
