"""LiteLLM's Prometheus metric catalogue (reference: LiteLLM 1.110.2), without importing LiteLLM.

The data lives in ``catalog_data.py``, generated from the installed LiteLLM by
``scripts/gen_catalog.py``; this module wraps it in typed, immutable objects.

Names: ``MetricDef.name`` is the name LiteLLM uses in ``prometheus_metrics_config`` and
``DEFINED_PROMETHEUS_METRICS`` (``litellm_zero_cost_requests_total``); ``MetricDef.family`` is the
exposition family prometheus_client derives from it (a counter loses a trailing ``_total``:
``litellm_zero_cost_requests``, whose sample is ``litellm_zero_cost_requests_total``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from aggregator import catalog_data as _data

MetricKind = Literal["counter", "gauge", "histogram"]
LatencyMarker = Literal["latency"]

LITELLM_VERSION: Final[str] = _data.LITELLM_VERSION

#: LiteLLM's default latency buckets (``litellm.prometheus_latency_buckets`` replaces them).
LATENCY_BUCKETS: Final[tuple[float, ...]] = _data.LATENCY_BUCKETS
#: prometheus_client's default histogram buckets (``litellm_deployment_latency_per_output_token``).
DEFAULT_BUCKETS: Final[tuple[float, ...]] = _data.DEFAULT_BUCKETS
#: Buckets of ``litellm_managed_batch_duration_seconds``.
BATCH_DURATION_BUCKETS: Final[tuple[float, ...]] = _data.BATCH_DURATION_BUCKETS


@dataclass(frozen=True)
class MetricDef:
    """One metric family as LiteLLM's ``PrometheusLogger`` registers it.

    ``labels`` is the label list in LiteLLM's order. In ``CATALOG`` it is the default (no
    configuration); ``MetricsConfig.metrics()`` returns copies resolved for a configuration.
    ``buckets`` is ``None`` for counters and gauges; for histograms it is either the marker
    ``"latency"`` (the configurable ``prometheus_latency_buckets``, default ``LATENCY_BUCKETS``)
    or the fixed upper bounds, ``+Inf`` included. ``uses_label_rules`` says whether LiteLLM builds
    the label list with ``get_labels_for_metric`` (then custom metadata labels, tag labels, org
    labels, caller identity, include/exclude filters... apply) rather than passing fixed label
    names; ``base_labels`` is the list those rules start from (``PrometheusMetricLabels.<name>``),
    or the fixed list. ``selectable`` says whether the name is in ``DEFINED_PROMETHEUS_METRICS``,
    i.e. may appear in ``prometheus_metrics_config`` / ``prometheus_exclude_metrics``.
    """

    name: str
    family: str
    kind: MetricKind
    documentation: str
    labels: tuple[str, ...]
    buckets: LatencyMarker | tuple[float, ...] | None
    uses_label_rules: bool
    base_labels: tuple[str, ...]
    selectable: bool

    @property
    def sample_suffixes(self) -> tuple[str, ...]:
        """Suffixes of the samples of one series in the text exposition (besides ``_created``)."""
        if self.kind == "counter":
            return ("_total",)
        if self.kind == "histogram":
            return ("_bucket", "_count", "_sum")
        return ("",)


def _buckets(marker: Literal["latency", "default", "batch"] | None) -> LatencyMarker | tuple[float, ...] | None:
    if marker == "latency":
        return "latency"
    if marker == "default":
        return DEFAULT_BUCKETS
    if marker == "batch":
        return BATCH_DURATION_BUCKETS
    return None


#: Every name valid in ``prometheus_metrics_config`` and ``prometheus_exclude_metrics``, in
#: LiteLLM's order; includes names LiteLLM's logger does not create (see ``NOT_CREATED``).
DEFINED_METRIC_NAMES: Final[tuple[str, ...]] = _data.DEFINED_METRIC_NAMES

CATALOG: Final[Mapping[str, MetricDef]] = MappingProxyType(
    {
        record["name"]: MetricDef(
            name=record["name"],
            family=record["family"],
            kind=record["kind"],
            documentation=record["documentation"],
            labels=record["labels"],
            buckets=_buckets(record["buckets"]),
            uses_label_rules=record["uses_label_rules"],
            base_labels=record["base_labels"],
            selectable=record["name"] in DEFINED_METRIC_NAMES,
        )
        for record in _data.METRICS
    }
)
"""The metric families ``PrometheusLogger`` registers with default settings, by LiteLLM name, in
LiteLLM's registration order."""

#: The same definitions by exposition family name.
BY_FAMILY: Final[Mapping[str, MetricDef]] = MappingProxyType({m.family: m for m in CATALOG.values()})

#: Names valid in configuration that LiteLLM's PrometheusLogger never creates (they belong to
#: PrometheusServicesLogger or the in-flight middleware).
NOT_CREATED: Final[frozenset[str]] = frozenset(DEFINED_METRIC_NAMES) - frozenset(CATALOG)

#: ``PrometheusMetricLabels.<name>`` for every defined name (``None``: LiteLLM has no entry, so
#: ``get_labels`` raises ``AttributeError`` for it).
LABEL_SOURCES: Final[Mapping[str, tuple[str, ...] | None]] = MappingProxyType(dict(_data.LABEL_SOURCES))

#: Label names of LiteLLM's ``UserAPIKeyLabelNames`` enum.
ENUM_LABEL_NAMES: Final[tuple[str, ...]] = _data.ENUM_LABEL_NAMES
#: Hard-coded label names outside the enum that ``prometheus_exclude_labels`` accepts.
NON_ENUM_METRIC_LABELS: Final[tuple[str, ...]] = _data.NON_ENUM_METRIC_LABELS
#: What LiteLLM validates ``prometheus_exclude_labels`` against, before adding the configured
#: custom metadata labels and tag labels. (Not every label in use: ``reason`` of the zero-cost
#: counter is missing, so LiteLLM refuses to exclude it.)
ALL_LABEL_NAMES: Final[frozenset[str]] = frozenset(ENUM_LABEL_NAMES) | frozenset(NON_ENUM_METRIC_LABELS)

# Membership sets of the rules in PrometheusMetricLabels.get_labels.
ORG_LABEL_METRICS: Final[frozenset[str]] = frozenset(_data.ORG_LABEL_METRICS)
ORG_LABELS: Final[tuple[str, ...]] = _data.ORG_LABELS
CALLER_IDENTITY_METRICS: Final[frozenset[str]] = frozenset(_data.CALLER_IDENTITY_METRICS)
CALLER_IDENTITY_VALUES: Final[tuple[str, ...]] = _data.CALLER_IDENTITY_VALUES
STREAM_LABEL_METRICS: Final[frozenset[str]] = frozenset(_data.STREAM_LABEL_METRICS)
STREAM_LABELS: Final[tuple[str, ...]] = _data.STREAM_LABELS
RATE_LIMIT_LABEL_METRICS: Final[frozenset[str]] = frozenset(_data.RATE_LIMIT_LABEL_METRICS)
RATE_LIMIT_LABELS: Final[tuple[str, ...]] = _data.RATE_LIMIT_LABELS
USER_BUDGET_EMAIL_ALIAS_METRICS: Final[frozenset[str]] = frozenset(_data.USER_BUDGET_EMAIL_ALIAS_METRICS)
USER_BUDGET_EMAIL_ALIAS_LABELS: Final[tuple[str, ...]] = _data.USER_BUDGET_EMAIL_ALIAS_LABELS
INPUT_SEQUENCE_LENGTH_METRICS: Final[frozenset[str]] = frozenset(_data.INPUT_SEQUENCE_LENGTH_METRICS)
INPUT_SEQUENCE_LENGTH_LABELS: Final[tuple[str, ...]] = _data.INPUT_SEQUENCE_LENGTH_LABELS


def get_metric(name: str) -> MetricDef:
    """The definition for a LiteLLM metric name or an exposition family name."""
    found = CATALOG.get(name) or BY_FAMILY.get(name)
    if found is None:
        raise KeyError(f"unknown metric {name!r}")
    return found
