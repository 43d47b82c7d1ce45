#!/usr/bin/env python
"""Generate ``aggregator/catalog_data.py``: LiteLLM's Prometheus metric catalogue as plain data.

The aggregator must never import LiteLLM, so it carries a static copy of what LiteLLM's
``PrometheusLogger`` registers. This script reads it from the installed LiteLLM (it may import
it; the aggregator never does):

* it constructs a real ``PrometheusLogger`` with default settings, recording every call to its
  metric factories (name, type, HELP text, label names, buckets) and whether the label names came
  from ``get_labels_for_metric`` (then the metric gets custom metadata labels, tag labels and the
  other extras of ``PrometheusMetricLabels.get_labels``) or were hard-coded;
* it checks that against what ``prometheus_client`` actually registered;
* it reads ``DEFINED_PROMETHEUS_METRICS``, the per-metric label lists of
  ``PrometheusMetricLabels``, the label-name enum, and finds by probing ``get_labels`` which
  metrics each opt-in flag changes.

Usage (from the repository root, with the reference LiteLLM installed)::

    LITELLM_LOCAL_MODEL_COST_MAP=True python scripts/gen_catalog.py [--check]

``--check`` exits 1 if the committed file differs from what would be generated.
The collected data is also available as ``collect()`` for tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "aggregator" / "catalog_data.py"

# get_labels() flags probed one at a time: setting -> (data key of the metrics it changes, data key
# of the labels it adds).
_FLAG_PROBES: tuple[tuple[str, str, str], ...] = (
    ("prometheus_emit_stream_label", "STREAM_LABEL_METRICS", "STREAM_LABELS"),
    ("prometheus_emit_rate_limit_labels", "RATE_LIMIT_LABEL_METRICS", "RATE_LIMIT_LABELS"),
    (
        "prometheus_user_budget_label_include_email_alias",
        "USER_BUDGET_EMAIL_ALIAS_METRICS",
        "USER_BUDGET_EMAIL_ALIAS_LABELS",
    ),
    (
        "prometheus_emit_input_sequence_length_label",
        "INPUT_SEQUENCE_LENGTH_METRICS",
        "INPUT_SEQUENCE_LENGTH_LABELS",
    ),
)


@contextmanager
def _litellm_attrs(values: dict[str, Any]) -> Iterator[None]:
    import litellm

    saved = {name: getattr(litellm, name) for name in values}
    try:
        for name, value in values.items():
            setattr(litellm, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(litellm, name, value)


def _record_logger_metrics() -> list[dict[str, Any]]:
    """Construct a default PrometheusLogger, recording every metric its factories create."""
    from litellm.integrations.prometheus import PrometheusLogger
    from litellm.types.integrations.prometheus import BATCH_DURATION_BUCKETS
    from prometheus_client import REGISTRY, Counter, Gauge, Histogram

    kinds = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}
    records: list[dict[str, Any]] = []
    original_factory = PrometheusLogger._create_metric_factory

    def recording_factory(self: Any, metric_class: Any, shares_overflow_series: bool = True) -> Callable[..., Any]:
        inner = original_factory(self, metric_class, shares_overflow_series=shares_overflow_series)

        def factory(*args: Any, **kwargs: Any) -> Any:
            if len(args) > 2 or set(kwargs) - {"name", "documentation", "labelnames", "buckets"}:
                raise RuntimeError(f"unexpected factory call {args!r} {sorted(kwargs)!r}")
            name = str(args[0] if args else kwargs["name"])
            documentation = str(args[1] if len(args) > 1 else kwargs["documentation"])
            labelnames = kwargs.get("labelnames")
            kind = kinds[metric_class]
            buckets: str | None = None
            if kind == "histogram":
                given = kwargs.get("buckets")
                if given is None:
                    buckets = "default"
                elif given is self.latency_buckets:
                    buckets = "latency"
                elif tuple(given) == tuple(BATCH_DURATION_BUCKETS):
                    buckets = "batch"
                else:
                    raise RuntimeError(f"{name}: unknown buckets {given!r}")
            records.append(
                {
                    "name": name,
                    "kind": kind,
                    "documentation": documentation,
                    "labels": tuple(labelnames or ()),
                    "buckets": buckets,
                    # get_labels_for_metric caches and returns the same list object.
                    "uses_label_rules": labelnames is not None and labelnames is self._cached_metric_labels.get(name),
                }
            )
            return inner(*args, **kwargs)

        return factory

    before = set(REGISTRY._names_to_collectors.values())
    PrometheusLogger._create_metric_factory = recording_factory
    try:
        with _litellm_attrs({"suppress_startup_output": True}):
            PrometheusLogger()
    finally:
        PrometheusLogger._create_metric_factory = original_factory
        added = {id(c): c for c in REGISTRY._names_to_collectors.values() if c not in before}
        registered = list(added.values())
        for collector in registered:
            REGISTRY.unregister(collector)

    by_name = {}
    for collector in registered:
        by_name[collector._name] = collector
    for record in records:
        family = record["name"]
        if record["kind"] == "counter" and family.endswith("_total"):
            family = family[: -len("_total")]
        collector = by_name.pop(family)
        record["family"] = family
        if (collector._type, collector._documentation, tuple(collector._labelnames)) != (
            record["kind"],
            record["documentation"],
            record["labels"],
        ):
            raise RuntimeError(f"{family}: registry disagrees with the factory call")
    if by_name:
        raise RuntimeError(f"registered but not recorded: {sorted(by_name)}")
    return records


def collect() -> dict[str, Any]:
    """Everything catalog_data.py holds, read from the installed LiteLLM."""
    from importlib.metadata import version
    from typing import get_args

    from litellm.integrations import prometheus as prometheus_module
    from litellm.types.integrations import prometheus as types_module
    from prometheus_client import Histogram

    labels_class = types_module.PrometheusMetricLabels
    defined = tuple(get_args(types_module.DEFINED_PROMETHEUS_METRICS))
    if len(set(defined)) != len(defined):
        raise RuntimeError("DEFINED_PROMETHEUS_METRICS has duplicates")

    label_sources: dict[str, tuple[str, ...] | None] = {}
    for name in defined:
        value = getattr(labels_class, name, None)
        label_sources[name] = None if value is None else tuple(value)

    data: dict[str, Any] = {
        "LITELLM_VERSION": version("litellm"),
        "PROMETHEUS_CLIENT_VERSION": version("prometheus_client"),
        "LATENCY_BUCKETS": tuple(types_module.LATENCY_BUCKETS),
        "DEFAULT_BUCKETS": tuple(Histogram.DEFAULT_BUCKETS),
        "BATCH_DURATION_BUCKETS": tuple(types_module.BATCH_DURATION_BUCKETS),
        "DEFINED_METRIC_NAMES": defined,
        "ENUM_LABEL_NAMES": tuple(label.value for label in types_module.UserAPIKeyLabelNames),
        "NON_ENUM_METRIC_LABELS": tuple(sorted(prometheus_module._NON_ENUM_METRIC_LABELS)),
        "LABEL_SOURCES": label_sources,
        "ORG_LABEL_METRICS": tuple(sorted(labels_class._org_label_metrics)),
        "ORG_LABELS": (
            types_module.UserAPIKeyLabelNames.ORG_ID.value,
            types_module.UserAPIKeyLabelNames.ORG_ALIAS.value,
        ),
        "CALLER_IDENTITY_METRICS": tuple(
            sorted(types_module.PROMETHEUS_DEPLOYMENT_AND_LATENCY_CALLER_IDENTITY_METRICS)
        ),
        "CALLER_IDENTITY_VALUES": tuple(types_module.PROMETHEUS_DEPLOYMENT_AND_LATENCY_CALLER_IDENTITY_VALUES),
    }
    # Which metrics each get_labels() flag changes, and which labels it adds (in order).
    with _litellm_attrs(
        {
            "custom_prometheus_metadata_labels": [],
            "custom_prometheus_tags": [],
            "prometheus_emit_stream_label": False,
            "prometheus_emit_rate_limit_labels": False,
            "prometheus_user_budget_label_include_email_alias": False,
            "prometheus_emit_input_sequence_length_label": False,
            "prometheus_deployment_and_latency_caller_identity": "api_key_alias",
        }
    ):
        baseline = {n: labels_class.get_labels(n) for n in defined if label_sources[n] is not None}
        for flag, metrics_key, labels_key in _FLAG_PROBES:
            with _litellm_attrs({flag: True}):
                changed: dict[str, tuple[str, ...]] = {}
                for name, labels in baseline.items():
                    now = labels_class.get_labels(name)
                    if now != labels:
                        new = tuple(label for label in now if label not in labels)
                        if [label for label in now if label not in new] != labels:
                            raise RuntimeError(f"{flag} did not only add labels to {name}")
                        changed[name] = new
            added = set(changed.values())
            if len(added) != 1:
                raise RuntimeError(f"{flag}: expected one added label list, got {added}")
            data[metrics_key] = tuple(sorted(changed))
            data[labels_key] = added.pop()

    records = _record_logger_metrics()
    metrics = []
    for record in records:
        name = record["name"]
        base = label_sources.get(name) if record["uses_label_rules"] else record["labels"]
        if base is None:
            raise RuntimeError(f"{name}: no PrometheusMetricLabels entry")
        metrics.append(
            {
                "name": name,
                "family": record["family"],
                "kind": record["kind"],
                "documentation": record["documentation"],
                "labels": record["labels"],
                "buckets": record["buckets"],
                "uses_label_rules": record["uses_label_rules"],
                "base_labels": tuple(base),
            }
        )
    data["METRICS"] = tuple(metrics)
    return data


_HEADER = '''\
# ruff: noqa: E501
"""LiteLLM's Prometheus metric catalogue as plain data. GENERATED by scripts/gen_catalog.py: do not edit.

Read from litellm=={litellm} with prometheus_client=={prometheus_client}. Use ``aggregator.catalog``,
which wraps this in typed objects.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

INF: Final = float("inf")


class MetricRecord(TypedDict):
    name: str
    family: str
    kind: Literal["counter", "gauge", "histogram"]
    documentation: str
    labels: tuple[str, ...]
    buckets: Literal["latency", "default", "batch"] | None
    uses_label_rules: bool
    base_labels: tuple[str, ...]

'''

_TYPES = {
    "LITELLM_VERSION": "str",
    "PROMETHEUS_CLIENT_VERSION": "str",
    "LATENCY_BUCKETS": "tuple[float, ...]",
    "DEFAULT_BUCKETS": "tuple[float, ...]",
    "BATCH_DURATION_BUCKETS": "tuple[float, ...]",
    "DEFINED_METRIC_NAMES": "tuple[str, ...]",
    "ENUM_LABEL_NAMES": "tuple[str, ...]",
    "NON_ENUM_METRIC_LABELS": "tuple[str, ...]",
    "LABEL_SOURCES": "dict[str, tuple[str, ...] | None]",
    "ORG_LABEL_METRICS": "tuple[str, ...]",
    "ORG_LABELS": "tuple[str, ...]",
    "CALLER_IDENTITY_METRICS": "tuple[str, ...]",
    "CALLER_IDENTITY_VALUES": "tuple[str, ...]",
    "METRICS": "tuple[MetricRecord, ...]",
}


def _literal(value: Any) -> str:
    if isinstance(value, float) and value == float("inf"):
        return "INF"
    if isinstance(value, tuple):
        inner = ", ".join(_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    raise TypeError(f"cannot render {type(value).__name__}")


def render(data: dict[str, Any]) -> str:
    lines = [_HEADER.format(litellm=data["LITELLM_VERSION"], prometheus_client=data["PROMETHEUS_CLIENT_VERSION"])]
    for key, value in data.items():
        annotation = _TYPES.get(key, "tuple[str, ...]")
        lines.append(f"{key}: Final[{annotation}] = {_literal(value)}\n")
    source = "\n".join(lines)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalog_data.py"
        path.write_text(source)
        subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--quiet", "--config", str(ROOT / "pyproject.toml"), str(path)],
            check=True,
        )
        return path.read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed file is out of date")
    args = parser.parse_args()
    text = render(collect())
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run scripts/gen_catalog.py", file=sys.stderr)
            return 1
        print(f"{OUTPUT.relative_to(ROOT)} is up to date")
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
