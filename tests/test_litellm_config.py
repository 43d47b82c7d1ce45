"""aggregator.litellm_config / aggregator.catalog resolve LiteLLM's metric settings exactly as LiteLLM 1.110.2.

Every configuration of the matrix is applied both to our ``MetricsConfig`` and to the real
``litellm`` module, then LiteLLM's real ``PrometheusLogger`` is constructed and compared metric by
metric: enabled or ``NoOpMetric``, the label names registered in prometheus_client, HELP text,
type and buckets, and ``get_labels_for_metric`` for every defined name. Each construction's
collectors are unregistered again and every ``litellm`` attribute restored.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm.integrations.prometheus import PrometheusLogger
from litellm.types.integrations.prometheus import (
    NoOpMetric,
    sanitize_prometheus_label_name,
    validate_caller_identity_settings,
)
from prometheus_client import REGISTRY

from aggregator import catalog_data
from aggregator.catalog import (
    ALL_LABEL_NAMES,
    BATCH_DURATION_BUCKETS,
    BY_FAMILY,
    CATALOG,
    DEFAULT_BUCKETS,
    DEFINED_METRIC_NAMES,
    LABEL_SOURCES,
    LATENCY_BUCKETS,
    NOT_CREATED,
    get_metric,
)
from aggregator.litellm_config import (
    ConfigError,
    MetricsConfig,
    PrometheusSettings,
    load_config_file,
    load_litellm_settings,
    sanitize_label_name,
)

ROOT = Path(__file__).resolve().parents[1]
SETTING_KEYS = (*PrometheusSettings.model_fields, "suppress_startup_output")

# --------------------------------------------------------------------------------------------
# The real LiteLLM logger


@contextmanager
def litellm_settings_applied(settings: Mapping[str, Any]) -> Iterator[None]:
    """Set the settings on the litellm module as the proxy's load_config does; restore afterwards."""
    saved = {key: getattr(litellm, key) for key in SETTING_KEYS}
    try:
        litellm.suppress_startup_output = True
        # load_config validates the caller identity (and stores it) before any other key.
        validate_caller_identity_settings(settings)
        for key, value in settings.items():
            setattr(litellm, key, copy.deepcopy(value))
        yield
    finally:
        for key, value in saved.items():
            setattr(litellm, key, value)


@contextmanager
def real_logger(settings: Mapping[str, Any]) -> Iterator[tuple[PrometheusLogger, dict[str, Any]]]:
    """LiteLLM's PrometheusLogger built from the settings, and the collectors it registered by family."""
    before = set(REGISTRY._names_to_collectors.values())
    try:
        with litellm_settings_applied(settings):
            logger = PrometheusLogger()
            added = {c for c in REGISTRY._names_to_collectors.values() if c not in before}
            yield logger, {collector._name: collector for collector in added}
    finally:
        for collector in {c for c in REGISTRY._names_to_collectors.values() if c not in before}:
            REGISTRY.unregister(collector)


def litellm_error(settings: Mapping[str, Any]) -> BaseException | None:
    """What constructing LiteLLM's logger (after the proxy's caller-identity check) raises, if anything."""
    try:
        with real_logger(settings):
            return None
    except Exception as exc:
        return exc


def assert_same_as_litellm(settings: Mapping[str, Any]) -> MetricsConfig:
    ours = MetricsConfig.from_litellm_settings(settings)
    with real_logger(settings) as (logger, registered):
        assert set(registered) == {m.family for m in ours.metrics()}
        for definition in CATALOG.values():
            name = definition.name
            enabled = definition.family in registered
            assert ours.enabled(name) is enabled, name
            if enabled:
                collector = registered[definition.family]
                assert collector._type == definition.kind, name
                assert collector._documentation == definition.documentation, name
                assert tuple(collector._labelnames) == ours.labels(name), name
                if definition.kind == "histogram":
                    assert tuple(collector._upper_bounds) == ours.buckets(name), name
        for name in DEFINED_METRIC_NAMES:
            if LABEL_SOURCES[name] is not None:
                assert tuple(logger.get_labels_for_metric(name)) == ours.rule_labels(name), name
        noops = [value for value in vars(logger).values() if isinstance(value, NoOpMetric)]
        assert len(noops) == len(CATALOG) - len(ours.metrics())
        assert ours.latency_buckets == tuple(float(b) for b in logger.latency_buckets) + (
            () if float(logger.latency_buckets[-1]) == math.inf else (math.inf,)
        )
        limits = logger._series_limits
        assert ours.series_limits.max_series == limits.max_series
        assert ours.series_limits.ttl_seconds == limits.ttl_seconds
        expected_cleanup = 0.0 if limits.cleanup_interval_seconds is None else limits.cleanup_interval_seconds
        assert ours.series_limits.cleanup_interval_seconds == expected_cleanup
    return ours


# --------------------------------------------------------------------------------------------
# Catalogue


def test_catalog_matches_a_fresh_generation() -> None:
    spec = importlib.util.spec_from_file_location("gen_catalog", ROOT / "scripts" / "gen_catalog.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.collect()
    for key, value in fresh.items():
        assert getattr(catalog_data, key) == value, key
    assert module.render(fresh) == (ROOT / "aggregator" / "catalog_data.py").read_text()


def test_catalog_shape() -> None:
    assert len(CATALOG) == 83
    assert len(DEFINED_METRIC_NAMES) == 85
    not_created = set(NOT_CREATED)
    assert not_created == {
        "litellm_pod_lock_manager_size",
        "litellm_in_memory_daily_spend_update_queue_size",
        "litellm_redis_daily_spend_update_queue_size",
        "litellm_in_memory_spend_update_queue_size",
        "litellm_redis_spend_update_queue_size",
        "litellm_in_flight_requests",
    }
    not_selectable = {m.name for m in CATALOG.values() if not m.selectable}
    assert not_selectable == {
        "litellm_provider_remaining_budget_metric",
        "litellm_total_users",
        "litellm_active_users",
        "litellm_teams_count",
    }
    zero_cost = CATALOG["litellm_zero_cost_requests_total"]
    assert (zero_cost.family, zero_cost.kind) == ("litellm_zero_cost_requests", "counter")
    assert get_metric("litellm_zero_cost_requests") is zero_cost
    assert BY_FAMILY["litellm_mcp_tool_calls"].name == "litellm_mcp_tool_calls_total"
    assert CATALOG["litellm_requests_metric"].labels == (
        "end_user",
        "hashed_api_key",
        "api_key_alias",
        "model",
        "team",
        "team_alias",
        "user",
        "user_email",
        "client_ip",
        "user_agent",
        "requested_model",
        "model_id",
        "api_provider",
        "org_id",
        "org_alias",
    )
    assert CATALOG["litellm_request_total_latency_metric"].buckets == "latency"
    assert CATALOG["litellm_guardrail_latency_seconds"].buckets == "latency"
    assert CATALOG["litellm_deployment_latency_per_output_token"].buckets == DEFAULT_BUCKETS
    assert CATALOG["litellm_managed_batch_duration_seconds"].buckets == BATCH_DURATION_BUCKETS
    assert CATALOG["litellm_spend_metric"].buckets is None
    assert LATENCY_BUCKETS[-1] == DEFAULT_BUCKETS[-1] == BATCH_DURATION_BUCKETS[-1] == math.inf
    fixed = {m.name for m in CATALOG.values() if not m.uses_label_rules}
    assert fixed == {
        "litellm_guardrail_latency_seconds",
        "litellm_guardrail_errors_total",
        "litellm_guardrail_requests_total",
        "litellm_provider_remaining_budget_metric",
        "litellm_callback_logging_failures_metric",
        "litellm_total_users",
        "litellm_active_users",
        "litellm_teams_count",
        "litellm_managed_batch_created_total",
        "litellm_managed_file_size_bytes",
        "litellm_managed_batch_duration_seconds",
        "litellm_managed_file_created_total",
        "litellm_managed_file_deleted_total",
        "litellm_check_batch_cost_jobs_polled",
        "litellm_check_batch_cost_jobs_processed_total",
        "litellm_check_batch_cost_errors_total",
        "litellm_check_batch_cost_last_run_timestamp",
    }
    assert "reason" not in ALL_LABEL_NAMES and "guardrail_name" in ALL_LABEL_NAMES


def test_catalog_without_litellm() -> None:
    """The aggregator's config modules never import LiteLLM (nor prometheus_client)."""
    code = (
        "import sys\n"
        "from aggregator.litellm_config import MetricsConfig\n"
        "config = MetricsConfig.from_litellm_settings({'custom_prometheus_tags': ['prod']})\n"
        "assert len(config.metrics()) == 83\n"
        "print(','.join(m for m in ('litellm', 'prometheus_client') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    "label",
    ["metadata.tenant", "metadata.foo.bar", "User-Agent: curl/*", "1st", "", "_x", "a-b c", "Ünïcode", "tag_ok"],
)
def test_sanitize_label_name_is_litellms(label: str) -> None:
    assert sanitize_label_name(label) == sanitize_prometheus_label_name(label)


# --------------------------------------------------------------------------------------------
# Equality matrix

GROUPS: list[dict[str, Any]] = [
    {
        "group": "tokens",
        "metrics": ["litellm_total_tokens_metric", "litellm_spend_metric"],
        "include_labels": ["model", "team", "org_id"],
    },
    {"group": "deployments", "metrics": ["litellm_deployment_state"], "include_labels": ["model_id"]},
    {
        "group": "latency",
        "metrics": ["litellm_request_total_latency_metric", "litellm_guardrail_latency_seconds"],
    },
    {
        "group": "misc",
        "metrics": [
            "litellm_zero_cost_requests_total",
            "litellm_in_flight_requests",
            "litellm_pod_lock_manager_size",
            "litellm_managed_file_deleted_total",
        ],
        "include_labels": None,
    },
]

CUSTOM_LABELS = ["metadata.tenant", "metadata.foo.bar", "team", "1st", "a-b c", "user_email"]
CUSTOM_TAGS = ["prod", "User-Agent: curl/*", "env:staging", "Ünïcode"]

MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "explicit defaults": {
        "prometheus_metrics_config": None,
        "prometheus_exclude_metrics": None,
        "prometheus_exclude_labels": None,
        "custom_prometheus_metadata_labels": [],
        "custom_prometheus_tags": [],
        "prometheus_emit_stream_label": False,
        "prometheus_deployment_and_latency_caller_identity": "api_key_alias",
        "prometheus_latency_buckets": None,
    },
    "groups with include_labels": {"prometheus_metrics_config": GROUPS},
    "include_labels of the last group wins, [] means no filter": {
        "prometheus_metrics_config": [
            {"group": "a", "metrics": ["litellm_requests_metric"], "include_labels": ["model", "team"]},
            {"group": "b", "metrics": ["litellm_requests_metric"], "include_labels": ["user"]},
            {"group": "c", "metrics": ["litellm_spend_metric"], "include_labels": ["model"]},
            {"group": "d", "metrics": ["litellm_spend_metric"], "include_labels": []},
            {"group": "e", "metrics": ["litellm_cache_hits_metric"], "include_labels": ["model", "model", "team"]},
        ]
    },
    "groups without metrics enable everything": {
        "prometheus_metrics_config": [{"group": "empty", "metrics": [], "include_labels": ["model"]}]
    },
    "empty metrics config": {"prometheus_metrics_config": []},
    "include_labels on a fixed-label metric, custom label": {
        "custom_prometheus_metadata_labels": ["metadata.tenant"],
        "prometheus_metrics_config": [
            {"group": "g", "metrics": ["litellm_guardrail_requests_total"], "include_labels": ["metadata_tenant"]},
            {"group": "r", "metrics": ["litellm_requests_metric"], "include_labels": ["metadata_tenant", "model"]},
        ],
    },
    "exclude metrics": {
        "prometheus_exclude_metrics": [
            "litellm_requests_metric",
            "litellm_guardrail_errors_total",
            "litellm_in_flight_requests",
            "litellm_mcp_tool_calls_total",
            "litellm_check_batch_cost_jobs_polled",
        ]
    },
    "exclude wins over metrics config": {
        "prometheus_metrics_config": GROUPS,
        "prometheus_exclude_metrics": ["litellm_spend_metric", "litellm_guardrail_latency_seconds"],
    },
    "exclude labels": {
        "prometheus_exclude_labels": [
            "end_user",
            "hashed_api_key",
            "model",
            "guardrail_name",
            "result",
            "callback_name",
            "user_alias",
            "org_alias",
            "tag",
        ]
    },
    "exclude every label of a fixed metric": {"prometheus_exclude_labels": ["callback_name", "api_provider"]},
    # LiteLLM then registers a label-less gauge whose every update raises ("No label names were set").
    "exclude every label of a rule metric": {
        "prometheus_exclude_labels": ["litellm_model_name", "model_id", "api_base", "api_provider"]
    },
    "custom metadata labels": {"custom_prometheus_metadata_labels": CUSTOM_LABELS},
    "custom metadata label equal to org label": {"custom_prometheus_metadata_labels": ["org_id", "metadata.x"]},
    "custom tags": {"custom_prometheus_tags": CUSTOM_TAGS},
    "custom labels and tags, some excluded": {
        "custom_prometheus_metadata_labels": CUSTOM_LABELS,
        "custom_prometheus_tags": CUSTOM_TAGS,
        "prometheus_exclude_labels": ["metadata_foo_bar", "tag_User_Agent__curl__", "team"],
    },
    "stream label": {"prometheus_emit_stream_label": True},
    "rate limit labels": {"prometheus_emit_rate_limit_labels": True},
    "rate limit label also a custom label": {
        "prometheus_emit_rate_limit_labels": True,
        "custom_prometheus_metadata_labels": ["rate_limit_type"],
    },
    "user budget email and alias": {"prometheus_user_budget_label_include_email_alias": True},
    "user budget email alias with custom user_email": {
        "prometheus_user_budget_label_include_email_alias": True,
        "custom_prometheus_metadata_labels": ["user_email"],
    },
    "input sequence length": {"prometheus_emit_input_sequence_length_label": True},
    "input sequence length also a custom label": {
        "prometheus_emit_input_sequence_length_label": True,
        "custom_prometheus_metadata_labels": ["input_sequence_length"],
    },
    "flags given as null": {
        "prometheus_emit_stream_label": None,
        "prometheus_emit_rate_limit_labels": None,
        "prometheus_user_budget_label_include_email_alias": None,
        "prometheus_emit_input_sequence_length_label": None,
    },
    "caller identity user_email": {"prometheus_deployment_and_latency_caller_identity": "user_email"},
    "caller identity both": {"prometheus_deployment_and_latency_caller_identity": "both"},
    "caller identity both with custom user_email": {
        "prometheus_deployment_and_latency_caller_identity": "both",
        "custom_prometheus_metadata_labels": ["user_email", "metadata.tenant"],
    },
    "caller identity user_email with include_labels": {
        "prometheus_deployment_and_latency_caller_identity": "user_email",
        "prometheus_metrics_config": [
            {
                "group": "deployments",
                "metrics": ["litellm_deployment_total_requests", "litellm_overhead_latency_metric"],
                "include_labels": ["model_group", "user_email", "model_id"],
            }
        ],
    },
    "latency buckets": {"prometheus_latency_buckets": [0.1, 1, 10]},
    "latency buckets ending in +Inf": {"prometheus_latency_buckets": [0.5, 2.0, math.inf]},
    "series caps": {
        "prometheus_metrics_max_series_per_metric": 500,
        "prometheus_metrics_ttl_seconds": 120,
        "prometheus_metrics_cleanup_interval_seconds": 5,
    },
    "series caps with exclusions": {
        "prometheus_metrics_max_series_per_metric": 10,
        "prometheus_metrics_cleanup_interval_seconds": None,
        "prometheus_exclude_labels": ["end_user", "callback_name"],
    },
    "series caps LiteLLM ignores": {
        "prometheus_metrics_max_series_per_metric": 0,
        "prometheus_metrics_ttl_seconds": -1,
        "prometheus_metrics_cleanup_interval_seconds": -5,
    },
    "whole-number float cap": {"prometheus_metrics_max_series_per_metric": 20.0},
    "everything": {
        "custom_prometheus_metadata_labels": CUSTOM_LABELS,
        "custom_prometheus_tags": CUSTOM_TAGS,
        "prometheus_emit_stream_label": True,
        "prometheus_emit_rate_limit_labels": True,
        "prometheus_user_budget_label_include_email_alias": True,
        "prometheus_emit_input_sequence_length_label": True,
        "prometheus_deployment_and_latency_caller_identity": "both",
        "prometheus_latency_buckets": [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64],
        "prometheus_exclude_labels": ["client_ip", "tag_prod"],
        "prometheus_exclude_metrics": ["litellm_llm_api_failed_requests_metric"],
        "prometheus_metrics_config": [
            {
                "group": "proxy",
                "metrics": ["litellm_proxy_total_requests_metric"],
                "include_labels": ["requested_model", "stream", "metadata_tenant", "tag_prod"],
            },
            {
                "group": "proxy failures",
                "metrics": ["litellm_proxy_failed_requests_metric", "litellm_llm_api_failed_requests_metric"],
                "include_labels": ["hashed_api_key", "team", "metadata_tenant", "tag_prod"],
            },
            {
                "group": "latency",
                "metrics": [
                    "litellm_llm_api_latency_metric",
                    "litellm_request_total_latency_metric",
                    "litellm_deployment_latency_per_output_token",
                    "litellm_guardrail_latency_seconds",
                ],
            },
            {
                "group": "user budgets",
                "metrics": ["litellm_remaining_user_budget_metric"],
                "include_labels": ["user", "user_alias", "metadata_tenant"],
            },
            {"group": "team budgets", "metrics": ["litellm_remaining_team_budget_metric"]},
        ],
    },
    "everything, all metrics": {
        "custom_prometheus_metadata_labels": CUSTOM_LABELS,
        "custom_prometheus_tags": CUSTOM_TAGS,
        "prometheus_emit_stream_label": True,
        "prometheus_emit_rate_limit_labels": True,
        "prometheus_user_budget_label_include_email_alias": True,
        "prometheus_emit_input_sequence_length_label": True,
        "prometheus_deployment_and_latency_caller_identity": "user_email",
    },
}


@pytest.mark.parametrize("settings", list(MATRIX.values()), ids=list(MATRIX))
def test_same_metrics_labels_and_buckets_as_litellm(settings: dict[str, Any]) -> None:
    assert_same_as_litellm(settings)


def test_matrix_covers_each_rule() -> None:
    """Spot checks that the matrix exercises what it claims (orders from LiteLLM's get_labels)."""
    config = MetricsConfig.from_litellm_settings(MATRIX["everything, all metrics"])
    assert config.labels("litellm_request_total_latency_metric") == (
        "model_group",
        "end_user",
        "hashed_api_key",
        "user_email",
        "requested_model",
        "team",
        "team_alias",
        "user",
        "model",
        "model_id",
        "api_provider",
        "service_tier",
        "metadata_tenant",
        "metadata_foo_bar",
        "_1st",
        "a_b_c",
        "tag_prod",
        "tag_User_Agent__curl__",
        "tag_env_staging",
        "tag__n_code",
        "org_id",
        "org_alias",
        "input_sequence_length",
    )
    assert config.labels("litellm_proxy_total_requests_metric")[-5:] == (
        "tag_env_staging",
        "tag__n_code",
        "stream",
        "org_id",
        "org_alias",
    )
    # user_email is already a custom metadata label there, so the flag only adds user_alias, last.
    assert config.labels("litellm_remaining_user_budget_metric") == (
        "user",
        "metadata_tenant",
        "metadata_foo_bar",
        "team",
        "_1st",
        "a_b_c",
        "user_email",
        "tag_prod",
        "tag_User_Agent__curl__",
        "tag_env_staging",
        "tag__n_code",
        "user_alias",
    )
    assert config.labels("litellm_guardrail_requests_total") == ("guardrail_name", "status", "hook_type")
    org_first = MetricsConfig.from_litellm_settings(MATRIX["custom metadata label equal to org label"])
    assert org_first.labels("litellm_requests_metric")[-3:] == ("org_id", "metadata_x", "org_alias")
    assert org_first.custom_metadata_labels == {"org_id": "org_id", "metadata_x": "metadata.x"}
    tags = MetricsConfig.from_litellm_settings(MATRIX["custom tags"])
    assert tags.custom_tag_labels["tag_User_Agent__curl__"] == "User-Agent: curl/*"


def test_enabled_and_labels_of_the_selection() -> None:
    config = assert_same_as_litellm(MATRIX["groups with include_labels"])
    selected = {
        "litellm_request_total_latency_metric",
        "litellm_spend_metric",
        "litellm_total_tokens_metric",
        "litellm_guardrail_latency_seconds",
        "litellm_deployment_state",
        "litellm_zero_cost_requests_total",
        "litellm_managed_file_deleted_total",
    }
    assert [m.name for m in config.metrics()] == [name for name in CATALOG if name in selected]
    # Names outside DEFINED_PROMETHEUS_METRICS can never be selected, so a selection drops them.
    assert not config.enabled("litellm_total_users")
    assert not config.enabled("litellm_provider_remaining_budget_metric")
    assert config.labels("litellm_total_tokens_metric") == ("model", "team", "org_id")
    assert config.labels("litellm_deployment_state") == ("model_id",)
    resolved = config.metric("litellm_request_total_latency_metric")
    assert resolved.buckets == LATENCY_BUCKETS
    assert resolved.labels == config.labels("litellm_request_total_latency_metric")


def test_buckets() -> None:
    config = MetricsConfig.from_litellm_settings({"prometheus_latency_buckets": [1, 2.5]})
    assert config.buckets("litellm_llm_api_latency_metric") == (1.0, 2.5, math.inf)
    assert config.buckets("litellm_guardrail_latency_seconds") == (1.0, 2.5, math.inf)
    assert config.buckets("litellm_deployment_latency_per_output_token") == DEFAULT_BUCKETS
    assert config.buckets("litellm_managed_batch_duration_seconds") == BATCH_DURATION_BUCKETS
    with pytest.raises(ValueError, match="not a histogram"):
        config.buckets("litellm_spend_metric")
    with pytest.raises(KeyError):
        config.buckets("litellm_nope")


def test_series_limits_are_plain_values() -> None:
    default = MetricsConfig.from_litellm_settings({})
    assert (default.series_limits.max_series, default.series_limits.ttl_seconds) == (None, None)
    assert not default.series_limits.enabled
    assert default.series_limits.cleanup_interval_seconds == 60.0
    assert default.end_user_series_limits.max_series == litellm.prometheus_end_user_metrics_max_series_per_metric
    assert default.end_user_series_limits.ttl_seconds == litellm.prometheus_end_user_metrics_ttl_seconds
    assert default.end_user_series_limits.cleanup_interval_seconds == 60.0
    assert default.warnings == ()
    assert default.end_user_tracking is False

    ignored = MetricsConfig.from_litellm_settings(MATRIX["series caps LiteLLM ignores"])
    assert ignored.series_limits.max_series is None and ignored.series_limits.ttl_seconds is None
    assert ignored.series_limits.cleanup_interval_seconds == 60.0
    assert len(ignored.warnings) == 3

    end_user = MetricsConfig.from_litellm_settings(
        {
            "prometheus_end_user_metrics_max_series_per_metric": 0,
            "prometheus_end_user_metrics_ttl_seconds": None,
            "prometheus_end_user_metrics_cleanup_interval_seconds": None,
            "enable_end_user_cost_tracking_prometheus_only": True,
        }
    )
    assert end_user.end_user_series_limits.max_series is None  # LiteLLM: max_series <= 0 means no cap
    assert not end_user.end_user_series_limits.enabled
    assert end_user.end_user_series_limits.cleanup_interval_seconds == 0.0
    assert end_user.end_user_tracking is True
    assert (
        MetricsConfig.from_litellm_settings(
            {"enable_end_user_cost_tracking_prometheus_only": True, "disable_end_user_cost_tracking": True}
        ).end_user_tracking
        is False
    )
    assert (
        MetricsConfig.from_litellm_settings(
            {"prometheus_end_user_metrics_max_series_per_metric": 7.5}
        ).end_user_series_limits.max_series
        == 7
    )


# --------------------------------------------------------------------------------------------
# Invalid configurations: LiteLLM raises, so do we

ERRORS: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (settings, fragment of LiteLLM's message, fragment of ours)
    "unknown metric": (
        {"prometheus_metrics_config": [{"group": "g", "metrics": ["litellm_foo"]}]},
        "Invalid metric name: litellm_foo",
        "prometheus_metrics_config: unknown metric 'litellm_foo'; valid metrics: litellm_api_key_budget_remaining",
    ),
    "unknown include label": (
        {
            "prometheus_metrics_config": [
                {"group": "g", "metrics": ["litellm_requests_metric"], "include_labels": ["x"]}
            ]
        },
        "Invalid labels for metric 'litellm_requests_metric': ['x']",
        "include_labels for litellm_requests_metric: unknown label 'x'; valid labels: end_user, hashed_api_key,",
    ),
    "two unknown include labels": (
        {
            "prometheus_metrics_config": [
                {"group": "g", "metrics": ["litellm_spend_metric"], "include_labels": ["model", "x", "y"]}
            ]
        },
        "Invalid labels for metric 'litellm_spend_metric': ['x', 'y']",
        "include_labels for litellm_spend_metric: unknown labels 'x', 'y'; valid labels:",
    ),
    "include label of a custom label that is not configured": (
        {
            "prometheus_metrics_config": [
                {"group": "g", "metrics": ["litellm_requests_metric"], "include_labels": ["metadata_tenant"]}
            ]
        },
        "Invalid labels for metric 'litellm_requests_metric'",
        "unknown label 'metadata_tenant'",
    ),
    "include label of a fixed-label metric": (
        {
            "prometheus_metrics_config": [
                {"group": "g", "metrics": ["litellm_guardrail_requests_total"], "include_labels": ["guardrail_name"]}
            ]
        },
        "Invalid labels for metric 'litellm_guardrail_requests_total'",
        "include_labels for litellm_guardrail_requests_total: unknown label 'guardrail_name'; valid labels: (none)",
    ),
    "include labels for a metric without a label list": (
        {
            "prometheus_metrics_config": [
                {"group": "g", "metrics": ["litellm_in_flight_requests"], "include_labels": ["x"]}
            ]
        },
        "litellm_in_flight_requests",
        "include_labels for litellm_in_flight_requests: LiteLLM 1.110.2 defines no labels for this metric",
    ),
    "caller identity removes the included api_key_alias": (
        {
            "prometheus_deployment_and_latency_caller_identity": "user_email",
            "prometheus_metrics_config": [
                {"group": "g", "metrics": ["litellm_deployment_total_requests"], "include_labels": ["api_key_alias"]}
            ],
        },
        "replaces that label on these metrics",
        "prometheus_deployment_and_latency_caller_identity='user_email'",
    ),
    "invalid caller identity": (
        {"prometheus_deployment_and_latency_caller_identity": "email"},
        "Invalid prometheus_deployment_and_latency_caller_identity='email'",
        "prometheus_deployment_and_latency_caller_identity: Input should be 'api_key_alias', 'user_email' or 'both'",
    ),
    "null caller identity": (
        {"prometheus_deployment_and_latency_caller_identity": None},
        "Invalid prometheus_deployment_and_latency_caller_identity=None",
        "prometheus_deployment_and_latency_caller_identity",
    ),
    "exclude unknown metric": (
        {"prometheus_exclude_metrics": ["litellm_total_users"]},
        "Invalid metric name in prometheus_exclude_metrics: litellm_total_users",
        "prometheus_exclude_metrics: unknown metric 'litellm_total_users'; valid metrics:",
    ),
    "exclude unknown label": (
        {"prometheus_exclude_labels": ["reason"]},
        "Invalid label name in prometheus_exclude_labels: reason",
        "prometheus_exclude_labels: unknown label 'reason'; valid labels: api_base,",
    ),
    "exclude a custom label that is not configured": (
        {"prometheus_exclude_labels": ["tag_prod"], "custom_prometheus_tags": ["dev"]},
        "Invalid label name in prometheus_exclude_labels: tag_prod",
        "unknown label 'tag_prod'",
    ),
    "unsorted latency buckets": (
        {"prometheus_latency_buckets": [1, 0.5]},
        "Buckets not in sorted order",
        "prometheus_latency_buckets: bounds must be strictly increasing",
    ),
    "latency buckets only +Inf": (
        {"prometheus_latency_buckets": [math.inf]},
        "Must have at least two buckets",
        "prometheus_latency_buckets: needs at least one finite bound",
    ),
    "empty latency buckets": (
        {"prometheus_latency_buckets": []},
        "Must have at least two buckets",
        "prometheus_latency_buckets: must not be empty",
    ),
    "latency buckets not a list": (
        {"prometheus_latency_buckets": 5},
        "not iterable",
        "prometheus_latency_buckets: Input should be a valid list",
    ),
    "custom label le on latency histograms": (
        {"custom_prometheus_metadata_labels": ["le"]},
        "Reserved label",
        "label 'le' is reserved on histograms and would be added to litellm_request_total_latency_metric, "
        "litellm_llm_api_latency_metric, ",
    ),
    "group without metrics key": (
        {"prometheus_metrics_config": [{"group": "g"}]},
        "metrics",
        "prometheus_metrics_config.0.metrics: Field required",
    ),
    "group with an unknown key": (
        {"prometheus_metrics_config": [{"group": "g", "metrics": [], "labels": ["model"]}]},
        "labels",
        "prometheus_metrics_config.0.labels: Extra inputs are not permitted",
    ),
    "null custom labels": (
        {"custom_prometheus_metadata_labels": None},
        "",
        "custom_prometheus_metadata_labels: Input should be a valid list",
    ),
    "null custom tags": (
        {"custom_prometheus_tags": None},
        "",
        "custom_prometheus_tags: Input should be a valid list",
    ),
    "custom label not a string": (
        {"custom_prometheus_metadata_labels": [42]},
        "",
        "custom_prometheus_metadata_labels.0: Input should be a valid string",
    ),
}


@pytest.mark.parametrize(("settings", "theirs", "ours"), list(ERRORS.values()), ids=list(ERRORS))
def test_invalid_configuration_raises_like_litellm(settings: dict[str, Any], theirs: str, ours: str) -> None:
    error = litellm_error(settings)
    assert error is not None, "LiteLLM accepted it"
    assert theirs in str(error)
    with pytest.raises(ConfigError) as raised:
        MetricsConfig.from_litellm_settings(settings)
    assert ours in str(raised.value)


def test_every_error_is_reported_at_once() -> None:
    settings = {
        "prometheus_metrics_config": [
            {"group": "g", "metrics": ["litellm_foo", "litellm_spend_metric"], "include_labels": ["x"]}
        ],
        "prometheus_exclude_metrics": ["litellm_bar"],
        "prometheus_exclude_labels": ["nope"],
    }
    with pytest.raises(ConfigError) as raised:
        MetricsConfig.from_litellm_settings(settings)
    lines = str(raised.value).splitlines()
    assert [line.split(";")[0] for line in lines] == [
        "prometheus_metrics_config: unknown metric 'litellm_foo'",
        "include_labels for litellm_spend_metric: unknown label 'x'",
        "prometheus_exclude_metrics: unknown metric 'litellm_bar'",
        "prometheus_exclude_labels: unknown label 'nope'",
    ]
    assert isinstance(raised.value, ValueError)


def test_reserved_label_only_matters_on_enabled_histograms() -> None:
    # LiteLLM only fails when it builds a latency histogram carrying the label.
    settings = {
        "custom_prometheus_metadata_labels": ["le"],
        "prometheus_metrics_config": [{"group": "g", "metrics": ["litellm_spend_metric"]}],
    }
    assert assert_same_as_litellm(settings).labels("litellm_spend_metric")[-3:] == ("le", "org_id", "org_alias")
    excluded = {"custom_prometheus_metadata_labels": ["le"], "prometheus_exclude_labels": ["le"]}
    assert_same_as_litellm(excluded)


# --------------------------------------------------------------------------------------------
# Where we refuse what LiteLLM accepts (documented divergences)

DUPLICATES: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (settings, a metric LiteLLM registers with a duplicate label, the label)
    "two metadata keys with one label name": (
        {"custom_prometheus_metadata_labels": ["metadata.a", "metadata_a"]},
        "litellm_requests_metric",
        "metadata_a",
    ),
    "two tags with one label name": (
        {"custom_prometheus_tags": ["a b", "a-b"]},
        "litellm_spend_metric",
        "tag_a_b",
    ),
    "metadata label equal to a tag label": (
        {"custom_prometheus_metadata_labels": ["tag_x"], "custom_prometheus_tags": ["x"]},
        "litellm_deployment_state",
        "tag_x",
    ),
    "metadata label stream with the stream label": (
        {"custom_prometheus_metadata_labels": ["stream"], "prometheus_emit_stream_label": True},
        "litellm_proxy_total_requests_metric",
        "stream",
    ),
}


@pytest.mark.parametrize(("settings", "metric", "label"), list(DUPLICATES.values()), ids=list(DUPLICATES))
def test_duplicate_label_names_are_refused(settings: dict[str, Any], metric: str, label: str) -> None:
    with real_logger(settings) as (logger, registered):
        labels = list(logger.get_labels_for_metric(metric))
        assert labels.count(label) == 2
        family = CATALOG[metric].family
        assert list(registered[family]._labelnames) == labels
        # Every update of that metric fails: prometheus_client wants each name once.
        with pytest.raises(ValueError, match="Incorrect label names"):
            registered[family].labels(**dict.fromkeys(labels, "v"))
    with pytest.raises(ConfigError) as raised:
        MetricsConfig.from_litellm_settings(settings)
    message = str(raised.value)
    assert message.startswith(f"label {label!r} would appear twice on ")
    assert metric in message.split(" (from ")[0]
    assert len(message.splitlines()) == 1


def test_duplicate_on_a_disabled_metric_is_fine() -> None:
    settings = {
        "custom_prometheus_metadata_labels": ["stream"],
        "prometheus_emit_stream_label": True,
        "prometheus_exclude_metrics": ["litellm_proxy_total_requests_metric"],
    }
    assert_same_as_litellm(settings)


STRICTER: dict[str, dict[str, Any]] = {
    "repeated latency bucket": {"prometheus_latency_buckets": [1, 1, 2]},
    "unsorted buckets while no latency histogram is enabled": {
        "prometheus_latency_buckets": [2, 1],
        "prometheus_metrics_config": [{"group": "g", "metrics": ["litellm_spend_metric"]}],
    },
    "flag as a string": {"prometheus_emit_stream_label": "true"},
    "unquoted YAML tag (a mapping)": {"custom_prometheus_tags": [{"User-Agent": "curl/*"}]},
    "bool series cap": {"prometheus_metrics_max_series_per_metric": True},
    "string series cap": {"prometheus_metrics_max_series_per_metric": "many"},
}


@pytest.mark.parametrize("settings", list(STRICTER.values()), ids=list(STRICTER))
def test_stricter_than_litellm(settings: dict[str, Any]) -> None:
    assert litellm_error(settings) is None
    with pytest.raises(ConfigError):
        MetricsConfig.from_litellm_settings(settings)


def test_unquoted_yaml_tag_is_a_mapping() -> None:
    parsed = yaml.safe_load("custom_prometheus_tags:\n  - User-Agent: curl/*\n")
    assert parsed["custom_prometheus_tags"] == [{"User-Agent": "curl/*"}]
    with pytest.raises(ConfigError, match=r"custom_prometheus_tags\.0: Input should be a valid string"):
        MetricsConfig.from_litellm_settings(parsed)


def test_queries_reject_unknown_names() -> None:
    config = MetricsConfig.from_litellm_settings({})
    for query in (config.enabled, config.labels, config.metric):
        with pytest.raises(KeyError):
            query("litellm_nope")
    with pytest.raises(KeyError):
        config.rule_labels("litellm_in_flight_requests")
    assert config.rule_labels("litellm_pod_lock_manager_size") == ()
    with pytest.raises(ConfigError, match="must be a mapping"):
        MetricsConfig.from_litellm_settings(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_include_labels_on_fixed_metric_warns() -> None:
    config = MetricsConfig.from_litellm_settings(MATRIX["include_labels on a fixed-label metric, custom label"])
    assert config.labels("litellm_guardrail_requests_total") == ("guardrail_name", "status", "hook_type")
    assert any("include_labels for litellm_guardrail_requests_total has no effect" in w for w in config.warnings)


# --------------------------------------------------------------------------------------------
# config.yaml

CONFIG_YAML = textwrap.dedent(
    """\
    model_list:
      - model_name: gpt-4o
        litellm_params:
          model: openai/gpt-4o
          api_key: os.environ/OPENAI_API_KEY
          rpm: 100
        model_info:
          id: gpt-4o-primary
    include:
      - more_models.yaml
    router_settings:
      routing_strategy: simple-shuffle
      num_retries: 2
    general_settings:
      master_key: sk-1234
      database_url: os.environ/DATABASE_URL
    litellm_settings:
      drop_params: true
      callbacks: ["producer.stream_metrics_logger"]
      success_callback: []
      request_timeout: 600
      custom_prometheus_metadata_labels: ["metadata.tenant", "metadata.foo.bar"]
      custom_prometheus_tags:
        - prod
        - "User-Agent: curl/*"
      prometheus_emit_stream_label: true
      prometheus_deployment_and_latency_caller_identity: both
      prometheus_latency_buckets: [0.1, 0.5, 1, 5, 30, .inf]
      prometheus_exclude_labels: [client_ip]
      prometheus_metrics_config:
        - group: proxy
          metrics:
            - litellm_proxy_total_requests_metric
          include_labels: [requested_model, status_code, stream, metadata_tenant, tag_prod]
        - group: failures
          metrics: [litellm_proxy_failed_requests_metric]
        - group: latency
          metrics: [litellm_request_total_latency_metric, litellm_llm_api_latency_metric]
      prometheus_end_user_metrics_max_series_per_metric: 500
    """
)

MORE_MODELS_YAML = textwrap.dedent(
    """\
    model_list:
      - model_name: claude
        litellm_params:
          model: anthropic/claude-3-5-sonnet
    environment_variables:
      FOO: bar
    """
)


def test_load_real_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_YAML)
    (tmp_path / "more_models.yaml").write_text(MORE_MODELS_YAML)

    whole = load_config_file(path)
    models = whole["model_list"]
    assert isinstance(models, list)
    assert [m["model_name"] for m in models] == ["gpt-4o", "claude"]
    assert "include" not in whole and whole["environment_variables"] == {"FOO": "bar"}
    settings = load_litellm_settings(path)
    assert settings["prometheus_latency_buckets"] == [0.1, 0.5, 1, 5, 30, math.inf]

    config = MetricsConfig.from_config_file(path)
    assert [m.name for m in config.metrics()] == [
        "litellm_proxy_failed_requests_metric",
        "litellm_proxy_total_requests_metric",
        "litellm_request_total_latency_metric",
        "litellm_llm_api_latency_metric",
    ]
    assert config.labels("litellm_proxy_total_requests_metric") == (
        "requested_model",
        "status_code",
        "metadata_tenant",
        "tag_prod",
        "stream",
    )
    assert config.buckets("litellm_llm_api_latency_metric") == (0.1, 0.5, 1.0, 5.0, 30.0, math.inf)
    assert config.end_user_series_limits.max_series == 500
    assert "client_ip" not in config.labels("litellm_request_total_latency_metric")
    assert "user_email" in config.labels("litellm_request_total_latency_metric")

    # The proxy would set exactly these keys on the litellm module: LiteLLM agrees.
    assert_same_as_litellm({k: v for k, v in settings.items() if k in PrometheusSettings.model_fields})


def test_includes_merge_like_the_proxy(tmp_path: Path) -> None:
    from litellm.proxy.common_utils.config_includes import resolve_include_file_path, resolve_includes

    (tmp_path / "sub").mkdir()
    (tmp_path / "config.yaml").write_text(
        "include: [sub/a.yaml, b.yaml]\nmodel_list: [{model_name: m0}]\nlitellm_settings: {drop_params: true}\n"
    )
    (tmp_path / "sub" / "a.yaml").write_text(
        "include: [c.yaml]\nmodel_list: [{model_name: m1}]\n"
        "litellm_settings: {custom_prometheus_tags: [a], prometheus_emit_stream_label: true}\n"
    )
    (tmp_path / "sub" / "c.yaml").write_text("model_list: [{model_name: m3}]\ngeneral_settings: {x: 1}\n")
    (tmp_path / "b.yaml").write_text("model_list: [{model_name: m2}]\n")
    (tmp_path / "empty.yaml").write_text("")
    root = tmp_path / "config.yaml"

    async def read(location: str) -> Mapping[str, object]:
        loaded = yaml.safe_load(Path(location).read_text()) or {}
        assert isinstance(loaded, dict)
        return loaded

    def resolve(entry: str, declared_in: str) -> str:
        return str(resolve_include_file_path(entry, declared_in, str(root)))

    theirs = asyncio.run(
        resolve_includes(config=yaml.safe_load(root.read_text()), location=str(root), resolve=resolve, read=read)
    )
    assert load_config_file(root) == theirs
    models = theirs["model_list"]
    assert isinstance(models, list)
    assert [m["model_name"] for m in models] == ["m0", "m1", "m2", "m3"]
    # A mapping is replaced, not merged: the included litellm_settings wins whole.
    assert load_litellm_settings(root) == {"custom_prometheus_tags": ["a"], "prometheus_emit_stream_label": True}

    (tmp_path / "config.yaml").write_text("include: [empty.yaml]\nlitellm_settings:\n")
    assert load_litellm_settings(root) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("[1, 2]", "is not a YAML mapping"),
        ("litellm_settings: [1]\n", "litellm_settings in"),
        ("a: [\n", "is not valid YAML"),
        ("include: missing.yaml\n", "'include' must be a list of file paths"),
        ("include: [missing.yaml]\n", "included file not found"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_litellm_settings(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read LiteLLM config"):
        MetricsConfig.from_config_file(tmp_path / "nope.yaml")
