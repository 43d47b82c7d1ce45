"""Producer settings, read from environment variables (``LSM_*``).

The producer runs inside the LiteLLM proxy, so it reads no files of its own and depends on
nothing heavier than the standard library for its configuration. An invalid value fails at
proxy start with a message that names the variable and what it accepts.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated

from producer import envvars
from producer.envvars import Alias
from producer.keys import validate_namespace
from producer.urls import passwords_in, safe_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ProducerConfigError(ValueError):
    """A producer setting has an invalid value."""


@dataclass(frozen=True)
class ProducerSettings:
    """Everything the producer can be told. Durations are in seconds."""

    redis_url: Annotated[str, Alias("REDIS_URL")] = DEFAULT_REDIS_URL
    namespace: str = "lsm"
    shards: int = 1
    # Buffer bounds: an event that would exceed either is dropped (reason buffer_full_*).
    buffer_max_events: int = 100_000
    buffer_max_bytes: int = 64 * 1024 * 1024
    max_event_bytes: int = 256 * 1024
    # One stream entry carries at most this many events / bytes (before compression).
    batch_max_events: int = 500
    batch_max_bytes: int = 1024 * 1024
    flush_interval: float = 0.1
    connect_timeout: float = 1.0
    socket_timeout: float = 2.0
    backoff_base: float = 0.05
    backoff_max: float = 5.0
    shutdown_timeout: float = 5.0
    stats_interval: float = 5.0
    # 0 disables the cap. With a cap, Redis may trim entries the aggregator has not read yet;
    # the aggregator detects the gap through the per-producer sequence numbers.
    stream_maxlen: int = 0
    # Entries whose JSON is at least this long are zlib-compressed; 0 (the default) disables it.
    # Compression saves Redis memory but costs the proxy CPU (docs/benchmarks.md).
    compress_min_bytes: int = 0
    # Serve the proxy's own /metrics (process-local families such as litellm_in_flight_requests),
    # as LiteLLM does with its prometheus callback (producer/proxy_metrics.py).
    proxy_metrics_endpoint: bool = True
    # Level of the producer's own log lines (start, shutdown, Redis errors) in the proxy's output.
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        try:
            validate_namespace(self.namespace)
        except ValueError as exc:
            raise ProducerConfigError(f"LSM_NAMESPACE: {exc}") from exc
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            shown = safe_url(self.redis_url, passwords_in(self.redis_url))
            raise ProducerConfigError(f"LSM_REDIS_URL: {shown!r} is not a redis://, rediss:// or unix:// URL")
        positive = (
            "shards",
            "buffer_max_events",
            "buffer_max_bytes",
            "max_event_bytes",
            "batch_max_events",
            "batch_max_bytes",
            "flush_interval",
            "connect_timeout",
            "socket_timeout",
            "backoff_base",
            "backoff_max",
            "shutdown_timeout",
            "stats_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ProducerConfigError(f"{_env_name(name)} must be > 0, got {getattr(self, name)!r}")
        for name in ("stream_maxlen", "compress_min_bytes"):
            if getattr(self, name) < 0:
                raise ProducerConfigError(f"{_env_name(name)} must be >= 0, got {getattr(self, name)!r}")
        if self.max_event_bytes > self.batch_max_bytes:
            raise ProducerConfigError(
                f"LSM_MAX_EVENT_BYTES ({self.max_event_bytes}) must not exceed "
                f"LSM_BATCH_MAX_BYTES ({self.batch_max_bytes})"
            )
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ProducerConfigError(f"LSM_LOG_LEVEL={self.log_level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if self.backoff_base > self.backoff_max:
            raise ProducerConfigError("LSM_BACKOFF_BASE must not exceed LSM_BACKOFF_MAX")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProducerSettings:
        """Read ``LSM_<FIELD>`` variables and the aliases declared on the fields (producer/envvars.py)."""
        env = os.environ if environ is None else environ
        hints = {f.name: envvars.declared(typing.get_type_hints(cls, include_extras=True)[f.name]) for f in fields(cls)}
        found = envvars.read(((name, aliases) for name, (_kind, aliases) in hints.items()), env)
        values = {name: _parse(variable, hints[name][0], raw) for name, (variable, raw) in found.items()}
        return cls(**values)  # type: ignore[arg-type]


def _env_name(field_name: str) -> str:
    return envvars.primary(field_name)


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _parse(variable: str, kind: type, raw: str) -> object:
    """``raw`` as the field's type (``bool``, ``int``, ``float`` or ``str``)."""
    if kind is bool:
        value = _BOOLEANS.get(raw.lower())
        if value is None:
            raise ProducerConfigError(f"{variable}={raw!r} is not a boolean (use true or false)")
        return value
    try:
        if kind is int:
            return int(raw.replace("_", ""))
        if kind is float:
            return float(raw)
    except ValueError:
        raise ProducerConfigError(f"{variable}={raw!r} is not a valid {kind.__name__}") from None
    if kind is not str:
        raise TypeError(f"no parser for settings of type {kind!r}")
    return raw
