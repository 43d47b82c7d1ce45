"""LiteLLM's Prometheus settings, read from the proxy's ``config.yaml`` and resolved as LiteLLM 1.110.2 does.

One file configures both sides: the proxy reads ``litellm_settings`` into attributes of the
``litellm`` module and its ``PrometheusLogger`` resolves them at construction; this module reads
the same section and resolves it the same way, without importing LiteLLM:

* which metrics exist (``prometheus_metrics_config`` lists the only metrics created,
  ``prometheus_exclude_metrics`` removes some);
* each metric's label names in LiteLLM's order (``PrometheusMetricLabels.get_labels`` followed by
  ``PrometheusLogger.get_labels_for_metric`` and the metric factory's label exclusion);
* the latency buckets, and the series-cap settings as plain values.

``tests/test_litellm_config.py`` proves the result equal to the real ``PrometheusLogger`` over a
matrix of configurations. Invalid settings raise ``ConfigError`` wherever LiteLLM raises, and
also where LiteLLM silently accepts a value of the wrong type or builds a metric that can never
record anything (duplicate label names); see ``MetricsConfig``.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from aggregator.catalog import (
    ALL_LABEL_NAMES,
    CALLER_IDENTITY_METRICS,
    CATALOG,
    DEFINED_METRIC_NAMES,
    INPUT_SEQUENCE_LENGTH_LABELS,
    INPUT_SEQUENCE_LENGTH_METRICS,
    LABEL_SOURCES,
    LATENCY_BUCKETS,
    LITELLM_VERSION,
    ORG_LABEL_METRICS,
    ORG_LABELS,
    RATE_LIMIT_LABEL_METRICS,
    RATE_LIMIT_LABELS,
    STREAM_LABEL_METRICS,
    STREAM_LABELS,
    USER_BUDGET_EMAIL_ALIAS_LABELS,
    USER_BUDGET_EMAIL_ALIAS_METRICS,
    MetricDef,
)

__all__ = [
    "ConfigError",
    "MetricsConfig",
    "MetricsGroup",
    "PrometheusSettings",
    "SeriesLimits",
    "load_config_file",
    "load_litellm_settings",
    "sanitize_label_name",
]

logger = logging.getLogger(__name__)

_INF: Final = math.inf
_API_KEY_ALIAS: Final = "api_key_alias"
_USER_EMAIL: Final = "user_email"
_HISTOGRAM_RESERVED_LABELS: Final = frozenset({"le"})
# LiteLLM's default for prometheus_metrics_cleanup_interval_seconds when the value is invalid.
_DEFAULT_CLEANUP_INTERVAL_SECONDS: Final = 60.0


class ConfigError(ValueError):
    """The LiteLLM settings are invalid; the message names the setting, metric or label."""


# --------------------------------------------------------------------------------------------
# Reading config.yaml


def _read_yaml_mapping(path: Path, *, included: bool = False) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read LiteLLM config {str(path)!r}: {exc}") from exc
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"LiteLLM config {str(path)!r} is not valid YAML: {exc}") from exc
    if loaded is None:
        # The proxy refuses an empty config file but reads an empty included file as {}.
        if included:
            return {}
        raise ConfigError(f"LiteLLM config {str(path)!r} is empty")
    if not isinstance(loaded, dict) or not all(isinstance(key, str) for key in loaded):
        raise ConfigError(f"LiteLLM config {str(path)!r} is not a YAML mapping")
    return loaded


def _include_entries(config: Mapping[str, object], location: Path) -> list[str]:
    if "include" not in config:
        return []
    entries = config["include"]
    if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
        raise ConfigError(f"{str(location)!r}: 'include' must be a list of file paths")
    return list(entries)


def _resolve_include(entry: str, declared_in: Path, root: Path) -> Path:
    # As LiteLLM: relative to the file that declares it; a file next to the root config is still
    # found when there is none next to the declaring file.
    declared_relative = Path(os.path.abspath(declared_in.parent / entry))
    root_relative = Path(os.path.abspath(root.parent / entry))
    if root_relative == declared_relative or not root_relative.exists():
        return declared_relative
    return declared_relative if declared_relative.exists() else root_relative


def load_config_file(path: str | Path) -> dict[str, object]:
    """The whole proxy config, with the files named by ``include`` merged as the proxy merges them
    (top-level keys: lists are extended, any other value is replaced)."""
    root = Path(os.path.abspath(path))
    merged: dict[str, object] = _read_yaml_mapping(root)
    pending = [(entry, root) for entry in _include_entries(merged, root)]
    loaded = {root}
    while pending:
        entry, declared_in = pending.pop(0)
        location = _resolve_include(entry, declared_in, root)
        if location in loaded:
            continue
        if not location.exists():
            raise ConfigError(f"included file not found: {str(location)!r} (include in {str(declared_in)!r})")
        included = _read_yaml_mapping(location, included=True)
        loaded.add(location)
        for key, value in included.items():
            if key == "include":
                continue
            base = merged.get(key)
            merged[key] = [*base, *value] if isinstance(base, list) and isinstance(value, list) else value
        pending.extend((child, location) for child in _include_entries(included, location))
    merged.pop("include", None)
    return merged


def load_litellm_settings(path: str | Path) -> dict[str, object]:
    """The ``litellm_settings`` section of the proxy's config file (``{}`` when absent)."""
    section = load_config_file(path).get("litellm_settings")
    if section is None:
        return {}
    if not isinstance(section, dict) or not all(isinstance(key, str) for key in section):
        raise ConfigError(f"litellm_settings in {str(path)!r} is not a mapping")
    return section


# --------------------------------------------------------------------------------------------
# Settings model


def sanitize_label_name(label: str) -> str:
    """LiteLLM's ``sanitize_prometheus_label_name``: every character outside ``[A-Za-z0-9_]``
    becomes ``_``, a leading digit gets a ``_`` prefix, ``""`` becomes ``_``."""
    if not label:
        return "_"
    sanitized = re.sub(r"[^a-zA-Z0-9_]", "_", label)
    if not re.match(r"^[a-zA-Z_]", sanitized[0]):
        sanitized = "_" + sanitized
    return sanitized


def tag_label_name(tag: str) -> str:
    """The label LiteLLM adds for an entry of ``custom_prometheus_tags``."""
    return sanitize_label_name(f"tag_{tag}")


_Number = StrictInt | StrictFloat


class MetricsGroup(BaseModel):
    """One entry of ``prometheus_metrics_config`` (LiteLLM's ``PrometheusMetricsConfig``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: StrictStr
    metrics: list[StrictStr]
    include_labels: list[StrictStr] | None = None


class PrometheusSettings(BaseModel):
    """The ``litellm_settings`` keys LiteLLM's Prometheus logger reads, with LiteLLM's defaults.

    Types are checked strictly: where LiteLLM would crash at start-up (a ``null`` list) or
    silently misread a value (``"true"`` for a flag is not ``True`` to LiteLLM; an unquoted YAML
    tag ``User-Agent: curl/*`` is a mapping, not a string) this raises instead.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    prometheus_metrics_config: list[MetricsGroup] | None = None
    prometheus_exclude_metrics: list[StrictStr] | None = None
    prometheus_exclude_labels: list[StrictStr] | None = None
    custom_prometheus_metadata_labels: list[StrictStr] = Field(default_factory=list)
    custom_prometheus_tags: list[StrictStr] = Field(default_factory=list)
    prometheus_emit_stream_label: StrictBool | None = False
    prometheus_emit_rate_limit_labels: StrictBool | None = False
    prometheus_user_budget_label_include_email_alias: StrictBool | None = False
    prometheus_emit_input_sequence_length_label: StrictBool | None = False
    prometheus_deployment_and_latency_caller_identity: Literal["api_key_alias", "user_email", "both"] = "api_key_alias"
    prometheus_latency_buckets: list[_Number] | None = None
    prometheus_metrics_max_series_per_metric: _Number | None = None
    prometheus_metrics_ttl_seconds: _Number | None = None
    prometheus_metrics_cleanup_interval_seconds: _Number | None = 60.0
    prometheus_end_user_metrics_max_series_per_metric: _Number | None = 10000
    prometheus_end_user_metrics_ttl_seconds: _Number | None = 3600.0
    prometheus_end_user_metrics_cleanup_interval_seconds: _Number | None = 60.0
    enable_end_user_cost_tracking_prometheus_only: StrictBool | None = None
    disable_end_user_cost_tracking: StrictBool | None = None


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "litellm_settings"
        lines.append(f"{location}: {error['msg']} (got {error['input']!r})")
    return "invalid litellm_settings:\n" + "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Resolution


@dataclass(frozen=True)
class SeriesLimits:
    """A series cap as LiteLLM applies it. ``None``: no limit of that kind.
    ``cleanup_interval_seconds == 0``: expired series are looked for on every update."""

    max_series: int | None
    ttl_seconds: float | None
    cleanup_interval_seconds: float

    @property
    def enabled(self) -> bool:
        return self.max_series is not None or self.ttl_seconds is not None


def _positive_cap(setting: str, value: float | None, warnings: list[str]) -> int | None:
    # LiteLLM: TypeAdapter(Annotated[int, Field(gt=0)]) in lax mode, else ignored with a warning.
    if value is None:
        return None
    if value > 0 and float(value).is_integer():
        return int(value)
    warnings.append(f"{setting} is ignored because it is not a whole number greater than 0 (got {value!r})")
    return None


def _positive_ttl(setting: str, value: float | None, warnings: list[str]) -> float | None:
    if value is None:
        return None
    if value > 0 and not math.isnan(value):
        return float(value)
    warnings.append(f"{setting} is ignored because it is not a number greater than 0 (got {value!r})")
    return None


def _latency_buckets(values: list[float] | None) -> tuple[float, ...]:
    if values is None:
        return LATENCY_BUCKETS
    buckets = [float(value) for value in values]
    if not buckets:
        raise ConfigError("prometheus_latency_buckets: must not be empty (omit it to use LiteLLM's default buckets)")
    if any(math.isnan(bucket) for bucket in buckets):
        raise ConfigError(f"prometheus_latency_buckets: NaN is not a bucket bound (got {values!r})")
    if any(later <= earlier for earlier, later in itertools.pairwise(buckets)):
        raise ConfigError(f"prometheus_latency_buckets: bounds must be strictly increasing (got {values!r})")
    if buckets[-1] != _INF:
        buckets.append(_INF)
    if len(buckets) < 2:
        raise ConfigError(f"prometheus_latency_buckets: needs at least one finite bound (got {values!r})")
    return tuple(buckets)


def _join(names: Iterable[str]) -> str:
    listed = list(names)
    return ", ".join(listed) if listed else "(none)"


class MetricsConfig:
    """LiteLLM's metric selection, label lists and buckets for one set of ``litellm_settings``.

    Equal to LiteLLM 1.110.2's ``PrometheusLogger`` (tests prove it), with these deliberate
    differences, all of them errors where LiteLLM goes on with a broken metric or a misread value:

    * wrong value types raise (see ``PrometheusSettings``);
    * ``prometheus_latency_buckets`` must be non-empty and strictly increasing, even when no
      latency histogram is enabled (LiteLLM accepts repeated bounds and only fails on unsorted
      ones when it builds a latency histogram);
    * a label name that would appear twice on an enabled metric raises (LiteLLM registers the
      metric with the duplicate and every update of it then fails);
    * a series cap or TTL of the right type that LiteLLM ignores is ignored too, with a message
      in ``warnings`` (also logged).
    """

    def __init__(self, settings: PrometheusSettings) -> None:
        self.settings: Final = settings
        warnings: list[str] = []
        errors: list[str] = []
        self.caller_identity: Final[str] = settings.prometheus_deployment_and_latency_caller_identity

        # Flags LiteLLM compares with ``is True``.
        self._emit_stream = settings.prometheus_emit_stream_label is True
        self._emit_rate_limit = settings.prometheus_emit_rate_limit_labels is True
        self._user_budget_email_alias = settings.prometheus_user_budget_label_include_email_alias is True
        self._emit_input_sequence_length = settings.prometheus_emit_input_sequence_length_label is True

        #: sanitized label name -> the configured entry (first one wins when two sanitize alike).
        self.custom_metadata_labels: Final[Mapping[str, str]] = _first_by_label(
            settings.custom_prometheus_metadata_labels, sanitize_label_name
        )
        #: tag label name -> the configured tag or wildcard pattern.
        self.custom_tag_labels: Final[Mapping[str, str]] = _first_by_label(
            settings.custom_prometheus_tags, tag_label_name
        )

        # PrometheusMetricLabels.get_labels, for every defined name that has a label list.
        self._get_labels: dict[str, tuple[str, ...]] = {
            name: self._resolve_get_labels(name, source) for name, source in LABEL_SOURCES.items() if source is not None
        }

        # _parse_prometheus_config: enabled metrics and include_labels filters.
        self._label_filters: dict[str, tuple[str, ...]] = {}
        groups = settings.prometheus_metrics_config or []
        selected: set[str] = set()
        for group in groups:
            selected.update(group.metrics)
            for name in group.metrics:
                if name not in DEFINED_METRIC_NAMES:
                    errors.append(
                        f"prometheus_metrics_config: unknown metric {name!r}; valid metrics: "
                        f"{_join(sorted(DEFINED_METRIC_NAMES))}"
                    )
                    continue
                if group.include_labels:
                    errors.extend(self._include_label_errors(name, group.include_labels))
                    self._label_filters[name] = tuple(group.include_labels)
        # LiteLLM: a configuration whose groups list no metric at all enables every metric.
        self.enabled_metric_names: Final[frozenset[str] | None] = frozenset(selected) if selected else None

        # _parse_exclude_config.
        self.excluded_metric_names: Final[frozenset[str]] = frozenset(settings.prometheus_exclude_metrics or ())
        self.excluded_labels: Final[frozenset[str]] = frozenset(settings.prometheus_exclude_labels or ())
        for name in sorted(self.excluded_metric_names - frozenset(DEFINED_METRIC_NAMES)):
            errors.append(
                f"prometheus_exclude_metrics: unknown metric {name!r}; valid metrics: "
                f"{_join(sorted(DEFINED_METRIC_NAMES))}"
            )
        excludable = ALL_LABEL_NAMES | frozenset(self.custom_metadata_labels) | frozenset(self.custom_tag_labels)
        for label in sorted(self.excluded_labels - excludable):
            errors.append(
                f"prometheus_exclude_labels: unknown label {label!r}; valid labels: {_join(sorted(excludable))}"
            )
        if errors:
            raise ConfigError("\n".join(errors))

        self.latency_buckets: Final[tuple[float, ...]] = _latency_buckets(settings.prometheus_latency_buckets)

        # get_labels_for_metric (label-rule metrics) or the factory's exclusion (fixed labels).
        self._rule_labels: dict[str, tuple[str, ...]] = {
            name: tuple(
                label
                for label in labels
                if label not in self.excluded_labels
                and (name not in self._label_filters or label in self._label_filters[name])
            )
            for name, labels in self._get_labels.items()
        }
        self._labels: dict[str, tuple[str, ...]] = {}
        for definition in CATALOG.values():
            if definition.uses_label_rules:
                self._labels[definition.name] = self._rule_labels[definition.name]
            else:
                self._labels[definition.name] = tuple(
                    label for label in definition.base_labels if label not in self.excluded_labels
                )
                if definition.name in self._label_filters:
                    warnings.append(
                        f"include_labels for {definition.name} has no effect: LiteLLM creates this metric "
                        f"with fixed labels ({_join(definition.base_labels)})"
                    )

        # Label sets prometheus_client would refuse or that could never be updated, on enabled metrics.
        duplicated: dict[str, list[str]] = {}
        reserved: dict[str, list[str]] = {}
        for definition in CATALOG.values():
            if not self.enabled(definition.name):
                continue
            labels = self._labels[definition.name]
            for label in dict.fromkeys(label for label in labels if labels.count(label) > 1):
                duplicated.setdefault(label, []).append(definition.name)
            if definition.kind == "histogram":
                for label in _HISTOGRAM_RESERVED_LABELS.intersection(labels):
                    reserved.setdefault(label, []).append(definition.name)
        for label, names in duplicated.items():
            errors.append(
                f"label {label!r} would appear twice on {_join(names)} ({self._label_origin(label)}); LiteLLM "
                "registers such a metric with a duplicate label name and then never records it"
            )
        for label, names in reserved.items():
            errors.append(
                f"label {label!r} is reserved on histograms and would be added to {_join(names)} "
                f"({self._label_origin(label)}); prometheus_client refuses it"
            )
        if errors:
            raise ConfigError("\n".join(errors))

        self.series_limits: Final = SeriesLimits(
            max_series=_positive_cap(
                "prometheus_metrics_max_series_per_metric", settings.prometheus_metrics_max_series_per_metric, warnings
            ),
            ttl_seconds=_positive_ttl(
                "prometheus_metrics_ttl_seconds", settings.prometheus_metrics_ttl_seconds, warnings
            ),
            cleanup_interval_seconds=self._cleanup_interval(
                settings.prometheus_metrics_cleanup_interval_seconds, warnings
            ),
        )
        end_user_max = settings.prometheus_end_user_metrics_max_series_per_metric
        end_user_cleanup = settings.prometheus_end_user_metrics_cleanup_interval_seconds
        self.end_user_series_limits: Final = SeriesLimits(
            # LiteLLM evicts while ``len(series) > max_series`` and treats max_series <= 0 as no cap.
            max_series=None if end_user_max is None or end_user_max <= 0 else math.floor(end_user_max),
            ttl_seconds=(
                None
                if settings.prometheus_end_user_metrics_ttl_seconds is None
                else float(settings.prometheus_end_user_metrics_ttl_seconds)
            ),
            cleanup_interval_seconds=0.0
            if end_user_cleanup is None or end_user_cleanup <= 0
            else float(end_user_cleanup),
        )
        #: ``end_user`` label values are real ids (not ``None``) only with this opt-in.
        self.end_user_tracking: Final[bool] = (
            settings.enable_end_user_cost_tracking_prometheus_only is True
            and not settings.disable_end_user_cost_tracking
        )
        self.warnings: Final[tuple[str, ...]] = tuple(warnings)
        for warning in self.warnings:
            logger.warning("%s", warning)

    # ---- construction helpers

    @classmethod
    def from_litellm_settings(cls, settings: Mapping[str, object]) -> MetricsConfig:
        """Resolve a ``litellm_settings`` mapping (other keys are ignored)."""
        if not isinstance(settings, Mapping):
            raise ConfigError(f"litellm_settings must be a mapping, not {type(settings).__name__}")
        try:
            parsed = PrometheusSettings.model_validate(dict(settings))
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc)) from None
        return cls(parsed)

    @classmethod
    def from_config_file(cls, path: str | Path) -> MetricsConfig:
        """Resolve the ``litellm_settings`` of a proxy ``config.yaml``."""
        return cls.from_litellm_settings(load_litellm_settings(path))

    @staticmethod
    def _cleanup_interval(value: float | None, warnings: list[str]) -> float:
        if value is None:
            return 0.0
        if value >= 0:
            return float(value)
        warnings.append(
            "prometheus_metrics_cleanup_interval_seconds is ignored because it is not a number of at least 0 "
            f"(got {value!r}); idle series are checked every {_DEFAULT_CLEANUP_INTERVAL_SECONDS:g} seconds"
        )
        return _DEFAULT_CLEANUP_INTERVAL_SECONDS

    def _resolve_get_labels(self, name: str, source: tuple[str, ...]) -> tuple[str, ...]:
        """``PrometheusMetricLabels.get_labels(name)`` with these settings."""
        default_labels = list(source)
        if name in CALLER_IDENTITY_METRICS:
            alias_index = default_labels.index(_API_KEY_ALIAS)
            if self.caller_identity == "user_email":
                default_labels[alias_index] = _USER_EMAIL
            elif self.caller_identity == "both":
                default_labels.insert(alias_index + 1, _USER_EMAIL)
        custom_labels = [
            label
            for label in map(sanitize_label_name, self.settings.custom_prometheus_metadata_labels)
            if label not in default_labels
        ]
        # Tag labels are not deduplicated at all.
        custom_labels.extend(tag_label_name(tag) for tag in self.settings.custom_prometheus_tags)
        if name in STREAM_LABEL_METRICS and self._emit_stream:
            # Checked against the default labels only.
            custom_labels.extend(label for label in STREAM_LABELS if label not in default_labels)
        optional: list[tuple[str, ...]] = []
        if name in RATE_LIMIT_LABEL_METRICS and self._emit_rate_limit:
            optional.append(RATE_LIMIT_LABELS)
        if name in USER_BUDGET_EMAIL_ALIAS_METRICS and self._user_budget_email_alias:
            optional.append(USER_BUDGET_EMAIL_ALIAS_LABELS)
        if name in ORG_LABEL_METRICS:
            optional.append(ORG_LABELS)
        for labels in optional:
            for label in labels:
                if label not in default_labels and label not in custom_labels:
                    custom_labels.append(label)
        trailing: list[str] = []
        if name in INPUT_SEQUENCE_LENGTH_METRICS and self._emit_input_sequence_length:
            # Checked against the custom labels only.
            trailing = [label for label in INPUT_SEQUENCE_LENGTH_LABELS if label not in custom_labels]
        return (*default_labels, *custom_labels, *trailing)

    def _include_label_errors(self, name: str, include_labels: list[str]) -> list[str]:
        valid = self._get_labels.get(name)
        if valid is None:
            # LiteLLM raises AttributeError: PrometheusMetricLabels has no entry for this metric.
            return [
                f"include_labels for {name}: LiteLLM {LITELLM_VERSION} defines no labels for this metric; "
                "remove include_labels for it"
            ]
        unknown = [label for label in include_labels if label not in valid]
        if not unknown:
            return []
        noun = "label" if len(unknown) == 1 else "labels"
        message = (
            f"include_labels for {name}: unknown {noun} {', '.join(repr(label) for label in unknown)}; "
            f"valid labels: {_join(valid)}"
        )
        if name in CALLER_IDENTITY_METRICS and any(label in (_API_KEY_ALIAS, _USER_EMAIL) for label in unknown):
            message += (
                " (the caller-identity label on this metric is set by "
                f"prometheus_deployment_and_latency_caller_identity={self.caller_identity!r})"
            )
        return [message]

    def _label_origin(self, label: str) -> str:
        origins = [
            f"custom_prometheus_metadata_labels entry {entry!r}"
            for entry in self.settings.custom_prometheus_metadata_labels
            if sanitize_label_name(entry) == label
        ]
        origins.extend(
            f"custom_prometheus_tags entry {tag!r}"
            for tag in self.settings.custom_prometheus_tags
            if tag_label_name(tag) == label
        )
        if label in STREAM_LABELS and self._emit_stream:
            origins.append("prometheus_emit_stream_label")
        if label in INPUT_SEQUENCE_LENGTH_LABELS and self._emit_input_sequence_length:
            origins.append("prometheus_emit_input_sequence_length_label")
        return "from " + " and ".join(origins) if origins else "a built-in label"

    # ---- queries

    def enabled(self, name: str) -> bool:
        """Whether LiteLLM creates the metric (a real collector, not a ``NoOpMetric``)."""
        if name not in CATALOG:
            raise KeyError(f"unknown metric {name!r}")
        if name in self.excluded_metric_names:
            return False
        return self.enabled_metric_names is None or name in self.enabled_metric_names

    def labels(self, name: str) -> tuple[str, ...]:
        """The label names the metric is registered with, in LiteLLM's order (also for a disabled
        metric: what it would have)."""
        try:
            return self._labels[name]
        except KeyError:
            raise KeyError(f"unknown metric {name!r}") from None

    def rule_labels(self, name: str) -> tuple[str, ...]:
        """What LiteLLM's ``get_labels_for_metric(name)`` returns, for any name it has a label list
        for. Equal to ``labels(name)`` for every catalog metric with ``uses_label_rules``."""
        try:
            return self._rule_labels[name]
        except KeyError:
            raise KeyError(f"LiteLLM has no label list for {name!r}") from None

    def buckets(self, name: str) -> tuple[float, ...]:
        """The histogram's upper bounds as prometheus_client registers them (``+Inf`` last)."""
        definition = CATALOG.get(name)
        if definition is None:
            raise KeyError(f"unknown metric {name!r}")
        if definition.buckets is None:
            raise ValueError(f"{name} is a {definition.kind}, not a histogram")
        if definition.buckets == "latency":
            return self.latency_buckets
        return definition.buckets

    def metric(self, name: str) -> MetricDef:
        """The catalog definition with this configuration's labels and buckets."""
        definition = CATALOG.get(name)
        if definition is None:
            raise KeyError(f"unknown metric {name!r}")
        return replace(
            definition,
            labels=self._labels[name],
            buckets=self.buckets(name) if definition.kind == "histogram" else None,
        )

    def metrics(self) -> list[MetricDef]:
        """The enabled metrics in LiteLLM's registration order, with this configuration's labels and
        buckets (``buckets`` is always a tuple for histograms here, never the ``"latency"`` marker)."""
        return [self.metric(name) for name in CATALOG if self.enabled(name)]


def _first_by_label(entries: Iterable[str], to_label: Callable[[str], str]) -> Mapping[str, str]:
    result: dict[str, str] = {}
    for entry in entries:
        result.setdefault(to_label(entry), entry)
    return result
