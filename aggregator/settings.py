"""Aggregator settings: environment variables ``LSM_*`` (or a YAML file), validated by pydantic.

The LiteLLM metric configuration (which metrics, which labels, buckets) is not here: it is
read from the proxy's own ``config.yaml`` (``litellm_settings``), so one file configures both
the proxy and the aggregator.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from producer import envvars
from producer.envvars import Alias, minutes_to_seconds
from producer.keys import Keys, validate_namespace
from producer.settings import DEFAULT_REDIS_URL
from producer.urls import passwords_in, safe_url

#: Default of ``LSM_MAX_LABEL_VALUE_LENGTH`` (the engine's own default).
DEFAULT_MAX_LABEL_VALUE_LENGTH = 1024
#: Default of ``LSM_MAX_SEQ_JUMP``.
DEFAULT_MAX_SEQ_JUMP = 100_000
#: Default of ``LSM_MAX_SERIES_PER_METRIC``.
DEFAULT_MAX_SERIES_PER_METRIC = 20_000
#: Default of ``LSM_RENDER_MAX_FIELDS``.
# About 1.4 KiB of the exporter's memory per field at render: fits the Deployment's 1 GiB limit.
DEFAULT_RENDER_MAX_FIELDS = 400_000


@lru_cache(maxsize=64)
def _keys(namespace: str, shards: int) -> Keys:
    return Keys(namespace, shards)


class AggregatorConfigError(ValueError):
    """Invalid aggregator settings; the message names the setting."""


def parse_otlp_headers(raw: str | None) -> dict[str, str]:
    """``key=value,key2=value2`` (the form of OTEL_EXPORTER_OTLP_HEADERS) -> dict. A malformed
    part is named by its position only (the value may be a secret)."""
    out: dict[str, str] = {}
    for i, part in enumerate((raw or "").split(","), 1):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"otlp_headers: part {i} is not key=value")
        out[name.strip()] = value.strip()
    return out


class AggregatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: Annotated[str, Alias("REDIS_URL")] = DEFAULT_REDIS_URL
    # A Redis Cluster at redis_url (any of its nodes): true, false, or unset to ask the server
    # (INFO cluster) when a client is first opened.
    redis_cluster: bool | None = None
    namespace: str = "lsm"
    shards: int = Field(1, ge=1, le=1024)
    group: str = Field("aggregators", min_length=1, max_length=128)
    consumer_name: str = Field(default_factory=lambda: f"{socket.gethostname()}")
    # How shards are applied: "group" (every process reads every shard through the consumer
    # group, one apply script per batch) or "owner" (experimental: one process owns each shard,
    # keeps its state in memory and commits fenced checkpoints; docs/architecture.md).
    ingest: Literal["group", "owner"] = "group"
    # The "owner" ingest: a shard's lease (a dead owner's shards are taken over after it), and
    # the time between checkpoints.
    owner_lease_seconds: float = Field(10.0, ge=1, le=600)
    checkpoint_interval: float = Field(0.25, gt=0, le=10)
    # Path of the LiteLLM proxy config.yaml whose litellm_settings configure the metrics.
    litellm_config: str | None = None
    # Reading: entries per read, blocking time (must stay below the socket timeout).
    read_count: int = Field(100, ge=1, le=10_000)
    # Events per apply script, about (entries are never split): Redis runs nothing else while a
    # script runs, so fewer entries are read at a time when entries are large.
    apply_max_events: int = Field(5_000, ge=1)
    block_seconds: float = Field(1.0, gt=0)
    socket_timeout: float = Field(5.0, gt=0)
    connect_timeout: float = Field(2.0, gt=0)
    # Recovery from dead consumers.
    claim_min_idle: float = Field(30.0, gt=0)
    claim_interval: float = Field(5.0, gt=0)
    # An entry delivered more than max_deliveries times is applied alone, ahead of its batch; one
    # not applied after max_isolated_attempts more deliveries (alone) is dead-lettered.
    max_deliveries: int = Field(5, ge=1)
    max_isolated_attempts: int = Field(3, ge=1)
    dead_consumer_idle: float = Field(3600.0, gt=0)
    housekeeping_interval: float = Field(10.0, gt=0)
    # A producer silent this long without having reported a clean close ended uncleanly: what
    # its last report counted as buffered is counted as lost (events_lost_unclean_exit).
    producer_gone_seconds: float = Field(120.0, gt=0)
    max_entry_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # An entry whose sequence number is more than this above its producer's high-water mark is
    # suspect (forged, or a producer gone wrong): dead-lettered as suspect_sequence, it leaves the
    # producer's bookkeeping alone. A producer writes at most its buffer (100,000 events by
    # default, several per entry) ahead of what is applied.
    max_seq_jump: int = Field(DEFAULT_MAX_SEQ_JUMP, ge=1, le=2**40)
    # A gauge's removal record (which stops older writes from bringing the series back) is kept
    # this long, then forgotten.
    gauge_removal_memory_seconds: float = Field(86400.0, gt=0)
    # Longest label value exported, in UTF-8 bytes: a longer one is cut and ends with "...#" and
    # 16 hex digits of its SHA-256 (deterministic, and distinct long values stay distinct).
    max_label_value_length: int = Field(DEFAULT_MAX_LABEL_VALUE_LENGTH, ge=64, le=65536)
    # Series cap (label sets per shard) of the metrics with a label a client chooses (user agent,
    # client IP, route, MCP tool, custom metadata labels) when litellm_settings has no valid
    # prometheus_metrics_max_series_per_metric; 0: no cap.
    max_series_per_metric: int = Field(DEFAULT_MAX_SERIES_PER_METRIC, ge=0)
    # /healthz fails when a shard consumer has made no progress for this long while Redis was
    # available (failures because Redis is down, loading or out of memory never count): a restart
    # may help. A Redis outage, however long, only fails /readyz.
    liveness_timeout: float = Field(300.0, ge=1)
    # /metrics, /healthz, /readyz.
    http_host: str = "0.0.0.0"
    http_port: int = Field(9464, ge=0, le=65535)
    # Credentials for /metrics: a bearer token and/or basic auth. Without any, /metrics refuses
    # to start unless metrics_allow_unauthenticated is set (then a warning is logged).
    metrics_bearer_token: SecretStr | None = None
    metrics_basic_auth_username: str | None = None
    metrics_basic_auth_password: SecretStr | None = None
    metrics_allow_unauthenticated: bool = False
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # A rendered exposition is reused for at most this long (keep it below the scrape interval).
    render_cache_seconds: float = Field(2.0, ge=0, le=60)
    # Hash fields read per scrape at most (about one per counter/gauge series, a histogram series
    # its non-empty buckets + 2); families beyond are left out whole, the smallest kept. 0: none.
    render_max_fields: int = Field(DEFAULT_RENDER_MAX_FIELDS, ge=0)
    # Leadership of the business series: lease time to live (renewed every third of it).
    leader_lease_seconds: float = Field(15.0, ge=1, le=600)
    # Budget refresh jobs.
    # Where the budget gauges are refreshed from: "database" (LiteLLM's PostgreSQL, read-only),
    # "api" (the proxy's management API with the master key), "none", or "auto": "database" when
    # a database URL is set, else "api" when an API base and master key are set, else "none".
    budget_source: str = "auto"
    # LiteLLM's database; LSM_DATABASE_URL, else LiteLLM's own DATABASE_URL variable.
    # LiteLLM's own variable fills in when neither LSM_DATABASE_URL nor the settings file sets it.
    database_url: Annotated[SecretStr | None, Alias("DATABASE_URL")] = None
    # Seconds between refreshes; default PROMETHEUS_BUDGET_METRICS_REFRESH_INTERVAL_MINUTES x 60
    # (LiteLLM's variable), else 300. Jitter: at most this many seconds early or late (default:
    # a tenth of the interval, at most 30 s) so that pods do not all wake at once.
    # LiteLLM's variable (minutes) fills in when nothing else sets it.
    budget_refresh_interval_seconds: Annotated[
        float, Alias("PROMETHEUS_BUDGET_METRICS_REFRESH_INTERVAL_MINUTES", minutes_to_seconds)
    ] = Field(300.0, ge=0.1, le=7 * 86400)
    budget_jitter_seconds: float | None = Field(None, ge=0)
    # The refresh lease: time to live (renewed every third of it while a refresh runs).
    budget_lease_seconds: float = Field(60.0, ge=0.5, le=3600)
    # Rows per page (database) or per request (API: at most 100, LiteLLM's limit).
    budget_page_size: int = Field(1000, ge=1, le=100_000)
    # Per-query (database statement timeout) or per-request time limit, and connect timeout.
    budget_source_timeout: float = Field(60.0, gt=0)
    budget_connect_timeout: float = Field(10.0, gt=0)
    # Removal records of deleted series are kept this long (they stop older writes from bringing
    # a deleted key back), then forgotten.
    budget_tombstone_seconds: float = Field(86400.0, ge=0)
    # Spend reconciliation (aggregator/budgets/reconcile.py): each refresh compares the spend
    # counted from events with each key's spend in the source. Event spend older than the flush
    # delay that the source still lacks counts as missing there (LiteLLM batches its spend
    # writes); a key whose difference exceeds the tolerance (USD) is drifted; at most
    # reconcile_max_keys drifted keys are exported by name (the largest).
    reconcile_spend: bool = True
    reconcile_flush_delay_seconds: float = Field(120.0, ge=0)
    reconcile_tolerance_usd: float = Field(0.01, ge=0)
    reconcile_max_keys: int = Field(20, ge=0, le=10_000)
    # OTLP push of the business series (aggregator/otlp_push.py): the OTLP/HTTP metrics endpoint
    # (e.g. http://otel-collector:4318/v1/metrics; unset: no push), the seconds between pushes,
    # the time limit of one request, and headers "key=value,key2=value2" (e.g. an API key).
    otlp_endpoint: str | None = None
    otlp_interval_seconds: float = Field(60.0, ge=0.1, le=86400)
    otlp_timeout_seconds: float = Field(10.0, gt=0, le=600)
    otlp_headers: SecretStr | None = None
    # The "api" source: the proxy's base URL and its master key.
    litellm_api_base: str | None = None
    litellm_master_key: SecretStr | None = None

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            return None
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("an OTLP/HTTP URL, e.g. http://otel-collector:4318/v1/metrics")
        return v

    @field_validator("otlp_headers")
    @classmethod
    def _otlp_headers(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            parse_otlp_headers(v.get_secret_value())
        return v

    @field_validator("budget_source")
    @classmethod
    def _budget_source(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in ("auto", "none", "database", "api"):
            raise ValueError(f"{v!r} is not one of auto, none, database, api")
        return v

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// (or postgres://) URL, as LiteLLM's DATABASE_URL")
        return v

    @model_validator(mode="after")
    def _budget_source_complete(self) -> AggregatorSettings:
        if self.budget_source == "database" and self.database_url is None:
            raise ValueError("budget_source 'database' needs database_url (LSM_DATABASE_URL or DATABASE_URL)")
        if self.budget_source == "api" and (self.litellm_api_base is None or self.litellm_master_key is None):
            raise ValueError("budget_source 'api' needs litellm_api_base and litellm_master_key")
        if self.litellm_api_base is not None and not self.litellm_api_base.startswith(("http://", "https://")):
            shown = safe_url(self.litellm_api_base, passwords_in(self.litellm_api_base))
            raise ValueError(f"litellm_api_base {shown!r} is not an http:// or https:// URL")
        return self

    @property
    def keys(self) -> Keys:
        """The Redis key names of this namespace and shard count, shared by every component."""
        return _keys(self.namespace, self.shards)

    @property
    def effective_budget_source(self) -> str:
        """``budget_source`` with "auto" resolved."""
        if self.budget_source != "auto":
            return self.budget_source
        if self.database_url is not None:
            return "database"
        if self.litellm_api_base is not None and self.litellm_master_key is not None:
            return "api"
        return "none"

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return validate_namespace(v)

    @field_validator("redis_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{safe_url(v, passwords_in(v))!r} is not a redis://, rediss:// or unix:// URL")
        return v

    @model_validator(mode="after")
    def _auth_and_tls(self) -> AggregatorSettings:
        if (self.metrics_basic_auth_username is None) != (self.metrics_basic_auth_password is None):
            raise ValueError("metrics_basic_auth_username and metrics_basic_auth_password must be set together")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        return self

    @model_validator(mode="after")
    def _liveness_above_a_round(self) -> AggregatorSettings:
        # A command may take a socket or connect timeout, 4 times (the client retries 3 times).
        round_max = self.block_seconds + 4 * max(self.socket_timeout, self.connect_timeout)
        if self.liveness_timeout <= round_max:
            raise ValueError(
                f"liveness_timeout ({self.liveness_timeout}) must be above block_seconds + 4 x the larger of "
                f"socket_timeout and connect_timeout ({round_max}): a round of the consumer may take that long"
            )
        return self

    @model_validator(mode="after")
    def _block_below_timeout(self) -> AggregatorSettings:
        if self.block_seconds >= self.socket_timeout:
            raise ValueError(
                f"block_seconds ({self.block_seconds}) must be below socket_timeout ({self.socket_timeout}): "
                "a blocking read longer than the socket timeout would be cut off as a timeout error"
            )
        return self

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, yaml_path: str | Path | None = None) -> AggregatorSettings:
        """Settings from a YAML file (``LSM_SETTINGS_FILE``) overridden by ``LSM_*`` variables."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = yaml_path or env.get("LSM_SETTINGS_FILE") or None
        if path:
            import yaml

            try:
                loaded = yaml.safe_load(Path(path).read_text()) or {}
            except yaml.MarkedYAMLError as exc:
                # Not str(exc): it quotes the offending line, which may hold a URL with its password.
                mark = exc.problem_mark or exc.context_mark
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
                what = "; ".join(p for p in (exc.context, exc.problem) if p)
                raise AggregatorConfigError(f"cannot read settings file {path}: {what}{where}") from None
            except (OSError, yaml.YAMLError) as exc:
                raise AggregatorConfigError(f"cannot read settings file {path}: {safe_url(str(exc))}") from exc
            if not isinstance(loaded, dict):
                raise AggregatorConfigError(f"settings file {path} must hold a mapping of setting: value")
            values.update(loaded)
        try:
            return envvars.build(cls, env, values)
        except envvars.SettingsError as exc:
            hidden = url_secrets(values) + [p for url in _env_urls(env) for p in passwords_in(url)]
            raise AggregatorConfigError(safe_url(f"invalid aggregator settings: {exc}", hidden)) from None


def _env_urls(environ: Mapping[str, str]) -> list[str]:
    """The URL settings' variables (``LSM_<NAME>`` and aliases) the environment sets."""
    found = []
    for name in URL_SETTINGS:
        info = AggregatorSettings.model_fields[name]
        for variable in (envvars.primary(name), *(a.variable for a in envvars.aliases(info))):
            if variable in environ:
                found.append(environ[variable])
    return found


URL_SETTINGS = ("redis_url", "database_url", "litellm_api_base")


def url_secrets(values: Mapping[str, Any]) -> list[str]:
    """The passwords in the URL settings among ``values`` (raw values or ``AggregatorSettings``
    fields), for ``safe_url(message, hide=...)``."""
    found: list[str] = []
    for name in URL_SETTINGS:
        value = values.get(name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            found += passwords_in(value)
    return found
