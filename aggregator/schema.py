"""The metric schema: what every reader of the metric state shares with the engine.

Built once from the LiteLLM configuration (``litellm_settings``) and the generated catalogue:
for each enabled metric its Redis metric key, label names, the value a missing label takes, its
histogram buckets; the rules that turn label values into a series (LiteLLM's sanitising, the
length cap with a digest suffix, the series encoding of aggregator/state.py); the budget gauges
stored as a reset time. The engine writes with it; exposition, snapshots, series caps and the
budget jobs read with it, and none of them needs the engine.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aggregator.catalog import CATALOG
from aggregator.litellm_config import MetricsConfig
from aggregator.settings import DEFAULT_MAX_LABEL_VALUE_LENGTH
from aggregator.state import encode_series, metric_key

Labels = Mapping[str, Any]

# The series that carry an exemplar (the trace id of their newest event that had one, with its
# value), as the request counters and latency histograms of LiteLLM's dashboards need.
EXEMPLAR_METRICS = frozenset(
    {
        "litellm_requests_metric",
        "litellm_spend_metric",
        "litellm_proxy_total_requests_metric",
        "litellm_request_total_latency_metric",
        "litellm_llm_api_latency_metric",
        "litellm_llm_api_time_to_first_token_metric",
    }
)

# A trace id as an exemplar carries it (OpenMetrics allows 128 characters of exemplar labels).
TRACE_ID = re.compile(r"[0-9A-Za-z_.:-]{1,64}")

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

#: Shard-stats field prefix counting events whose value of a label was truncated (+ label name).
TRUNCATED_STAT = "label_truncated:"

_TRANSLATE = {ord("\n"): " ", ord("\r"): None, 0x2028: None, 0x2029: None}


def sanitize(value: object) -> str:
    """LiteLLM's ``sanitize_prometheus_label_value`` plus prometheus_client's ``None`` -> "None"."""
    if value is None:
        return "None"
    s = value if isinstance(value, str) else str(value)
    if s.isprintable() and "\\" not in s and '"' not in s:
        # Nothing to change (isprintable() is False for \n, \r, U+2028 and U+2029): the common
        # case, several times faster than translate(), which maps every character in Python.
        return s
    s = s.translate(_TRANSLATE)
    if "\\" in s or '"' in s:
        s = s.replace("\\", "\\\\").replace('"', '\\"')
    return s


#: What replaces the cut-off end of a longer value: ``...#`` and 16 hex digits of the SHA-256 of
#: the whole value, so that two long values with the same beginning stay two series.
_TRUNCATION_MARK = "...#"
TRUNCATION_SUFFIX_LENGTH = len(_TRUNCATION_MARK) + 16
_ASCII_ONLY = str.isascii  # O(1) in CPython: a flag of the string


def too_long(value: object, limit: int) -> bool:
    """Whether a label value is longer than ``limit`` UTF-8 bytes."""
    if type(value) is not str or len(value) <= limit // 4:  # 4 bytes per character at most
        return False
    if len(value) > limit:
        return True
    return not _ASCII_ONLY(value) and len(value.encode("utf-8", "surrogatepass")) > limit


def truncate_label_value(value: str, limit: int) -> str:
    """A label value of at most ``limit`` UTF-8 bytes: unchanged when it fits, else its beginning
    (cut at a character boundary) followed by ``...#`` and 16 hex digits of the SHA-256 of the
    whole value. Deterministic: one long value always gives the same series, in every process;
    two long values that differ anywhere give two series."""
    if not too_long(value, limit):
        return value
    raw = value.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(raw).hexdigest()[:16]
    head = raw[: limit - TRUNCATION_SUFFIX_LENGTH].decode("utf-8", "ignore")
    return f"{head}{_TRUNCATION_MARK}{digest}"


class MetricSchema:
    """The enabled metrics of one configuration and how their series are written."""

    def __init__(self, config: MetricsConfig, max_label_value_length: int = DEFAULT_MAX_LABEL_VALUE_LENGTH) -> None:
        if max_label_value_length < 2 * TRUNCATION_SUFFIX_LENGTH:
            raise ValueError(f"max_label_value_length must be at least {2 * TRUNCATION_SUFFIX_LENGTH}")
        self.config = config
        #: Longest label value written, in UTF-8 bytes; longer ones are truncated (``truncate_label_value``).
        self.max_label_value_length = max_label_value_length
        #: Label names per enabled metric.
        self.labels: dict[str, tuple[str, ...]] = {}
        #: The value of each label when the event does not set it: LiteLLM renders a missing
        #: value "None", except a configured tag label, which is "false" whenever the request's
        #: tags are not passed (budget gauges, deployment state, LLM API failures...).
        self.defaults: dict[str, tuple[str, ...]] = {}
        #: Redis metric key per enabled metric (aggregator/state.py).
        self.keys: dict[str, str] = {}
        #: Finite bucket bounds per enabled histogram.
        self.bounds: dict[str, tuple[float, ...]] = {}
        tag_labels = frozenset(config.custom_tag_labels)
        for name, mdef in CATALOG.items():
            if not config.enabled(name):
                continue
            labels = tuple(config.labels(name))
            self.labels[name] = labels
            self.defaults[name] = tuple("false" if n in tag_labels else "None" for n in labels)
            self.keys[name] = metric_key(name, labels)
            if mdef.kind == "histogram":
                self.bounds[name] = tuple(b for b in config.buckets(name) if not math.isinf(b))

    def metric_key(self, name: str) -> str | None:
        """The Redis metric key of ``name``; None when the metric is disabled."""
        return self.keys.get(name)

    def label_names(self, name: str) -> tuple[str, ...]:
        return self.labels[name]

    def upper_bounds(self, name: str) -> tuple[float, ...]:
        """A histogram's finite bucket bounds (the +Inf bucket is implied)."""
        return self.bounds.get(name, ())

    def series(self, name: str, labels: Labels, truncated: set[str] | None = None) -> str | None:
        """The series of ``name`` for these label values, or None when the metric is disabled.
        A value longer than ``max_label_value_length`` is truncated; its label's name is added
        to ``truncated``."""
        if name not in self.keys:
            return None
        names = self.labels[name]
        values = [*map(labels.get, names, self.defaults[name])]
        self.truncate(names, values, truncated)
        return encode_series(values)

    def truncate(self, names: Sequence[str], values: list[Any], truncated: set[str] | None) -> None:
        """Truncate the values longer than the limit, in place (adding their label names to
        ``truncated``)."""
        limit = self.max_label_value_length
        for i, value in enumerate(values):
            if too_long(value, limit):
                values[i] = truncate_label_value(value, limit)
                if truncated is not None:
                    truncated.add(names[i])
