"""Producer settings, read from environment variables (``LSM_*``).

The producer runs inside the LiteLLM proxy, so it reads no files of its own. The settings are a
pydantic model built by the same rule as the aggregator's (producer/envvars.py): pydantic parses
each variable as its field's type; an invalid value fails at proxy start with a message that
names the variable and what it accepts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from producer import envvars
from producer.envvars import Alias
from producer.keys import validate_namespace
from producer.urls import passwords_in, safe_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ProducerConfigError(envvars.SettingsError):
    """A producer setting has an invalid value."""


class ProducerSettings(BaseModel):
    """Everything the producer can be told. Durations are in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    redis_url: Annotated[str, Alias("REDIS_URL")] = DEFAULT_REDIS_URL
    # A Redis Cluster at redis_url (any of its nodes): true, false, or unset to ask the server
    # (INFO cluster) when the writer first connects (in its thread, never on a request).
    redis_cluster: bool | None = None
    namespace: str = "lsm"
    shards: int = Field(1, gt=0)
    # Buffer bounds: an event that would exceed either is dropped (reason buffer_full_*).
    buffer_max_events: int = Field(100_000, gt=0)
    buffer_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_event_bytes: int = Field(256 * 1024, gt=0)
    # One stream entry carries at most this many events / bytes (before compression).
    batch_max_events: int = Field(500, gt=0)
    batch_max_bytes: int = Field(1024 * 1024, gt=0)
    flush_interval: float = Field(0.1, gt=0)
    connect_timeout: float = Field(1.0, gt=0)
    socket_timeout: float = Field(2.0, gt=0)
    backoff_base: float = Field(0.05, gt=0)
    backoff_max: float = Field(5.0, gt=0)
    shutdown_timeout: float = Field(5.0, gt=0)
    stats_interval: float = Field(5.0, gt=0)
    # 0 disables the cap. With a cap, Redis may trim entries the aggregator has not read yet;
    # the aggregator detects the gap through the per-producer sequence numbers.
    stream_maxlen: int = Field(0, ge=0)
    # Entries whose JSON is at least this long are zlib-compressed; 0 (the default) disables it.
    # Compression saves Redis memory but costs the proxy CPU (docs/benchmarks.md).
    compress_min_bytes: int = Field(0, ge=0)
    # Serve the proxy's own /metrics (process-local families such as litellm_in_flight_requests),
    # as LiteLLM does with its prometheus callback (producer/proxy_metrics.py).
    proxy_metrics_endpoint: bool = True
    # Wait (Redis WAIT) until this many replicas hold each write, at most wait_timeout seconds,
    # in the writer thread (requests never wait). 0, the default: replication as Redis does it,
    # asynchronous. Events written but not confirmed by the replicas in time are counted
    # (events_unreplicated): what a failover of their master may lose (docs/operations.md).
    wait_replicas: int = Field(0, ge=0, le=16)
    wait_timeout: float = Field(0.5, gt=0, le=60)
    # Ship each request's trace id with its success event, for the exemplars of the latency
    # histograms and the request/spend counters (docs/exemplars.md): the OpenTelemetry span
    # LiteLLM's otel callback made, else the W3C traceparent header, else LiteLLM's trace id.
    exemplars: bool = False
    # Level of the producer's own log lines (start, shutdown, Redis errors) in the proxy's output.
    log_level: str = "INFO"

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

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.upper() not in _LOG_LEVELS:
            raise ValueError(f"{v!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return v

    @model_validator(mode="after")
    def _bounds_agree(self) -> ProducerSettings:
        if self.max_event_bytes > self.batch_max_bytes:
            raise ValueError(
                f"LSM_MAX_EVENT_BYTES ({self.max_event_bytes}) must not exceed "
                f"LSM_BATCH_MAX_BYTES ({self.batch_max_bytes})"
            )
        if self.wait_replicas and self.wait_timeout >= self.socket_timeout:
            raise ValueError(
                f"LSM_WAIT_TIMEOUT ({self.wait_timeout}) must be below LSM_SOCKET_TIMEOUT ({self.socket_timeout}): "
                "the writer would give up on the reply before Redis sends it"
            )
        if self.backoff_base > self.backoff_max:
            raise ValueError(
                f"LSM_BACKOFF_BASE ({self.backoff_base}) must not exceed LSM_BACKOFF_MAX ({self.backoff_max})"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProducerSettings:
        """Read ``LSM_<FIELD>`` variables and the aliases declared on the fields (producer/envvars.py)."""
        try:
            return envvars.build(cls, os.environ if environ is None else environ)
        except envvars.SettingsError as exc:
            raise ProducerConfigError(str(exc)) from None
