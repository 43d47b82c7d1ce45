"""Series caps and idle-series retirement (LiteLLM's ``prometheus_metrics_max_series_per_metric``,
``prometheus_metrics_ttl_seconds`` and the end-user cap/TTL; docs/metrics-endpoint.md), enforced in Redis.

A limited metric keeps an index hash per shard, ``ix:<metric key>`` (``ixe:`` for series that
carry an end user): series -> time of its last update. The apply script admits a new series only
while the index holds fewer than the cap; past it, a counter or histogram update goes to the
overflow series (every label ``"other"``, as LiteLLM does) so totals stay exact, and a gauge
update is dropped (as LiteLLM does). Housekeeping retires series idle for longer than the TTL:
a retired counter's or histogram's value is folded into the overflow series in the same atomic
step, so the metric's sum never goes down; a retired gauge is removed.

Caps are per shard: with several shards a metric may hold up to ``shards x cap`` series.

Unlike LiteLLM (no cap unless configured), metrics with a label whose values a client chooses
(user agent, client IP, route, MCP tool, custom metadata labels) have a cap by default
(``LSM_MAX_SERIES_PER_METRIC``), used when ``prometheus_metrics_max_series_per_metric`` is not set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis

from aggregator.litellm_config import MetricsConfig, SeriesLimits
from aggregator.scripts import script
from aggregator.state import encode_series
from producer.keys import Keys

if TYPE_CHECKING:  # the engine imports the apply module, which imports this one
    from aggregator.schema import MetricSchema

_RETIRE = script("retire.lua")
OVERFLOW_VALUE = "other"
# Series looked at per HSCAN step, and retired per script call (bounded script time).
SCAN_COUNT = 1000


@dataclass(frozen=True)
class Limit:
    """One cap/TTL applying to a group of series of a metric."""

    index_kind: str  # "ix" or "ixe": the index hash's kind in Keys.metric
    cap: int  # 0: no cap
    ttl: float | None


@dataclass(frozen=True)
class MetricLimits:
    """The limits of one metric key: ``general`` for series without an end user, ``end_user``
    for series whose end_user label is set (only with end-user tracking on)."""

    name: str
    kind: str  # counter, histogram, gauge
    mkey: str
    overflow: str  # the overflow series field
    general: Limit | None
    end_user: Limit | None
    end_user_index: int | None  # position of the end_user label in the series
    histogram_parts: tuple[str, ...] = ()

    def limit_for(self, series: str) -> Limit | None:
        if self.end_user is not None and self.end_user_index is not None:
            values = orjson.loads(series)
            value = values[self.end_user_index]
            if value is not None and value != "None":
                return self.end_user
        return self.general


#: Labels a client of the proxy sets at will (the request's headers, address, path, MCP tool).
REQUEST_LABELS = ("user_agent", "client_ip", "route", "mcp_tool_name", "mcp_server_name")


def _limit(kind: str, limits: SeriesLimits, default_cap: int = 0) -> Limit | None:
    cap = limits.max_series if limits.max_series is not None else default_cap
    if not cap and limits.ttl_seconds is None:
        return None
    return Limit(kind, cap or 0, limits.ttl_seconds)


def request_labels(config: MetricsConfig) -> frozenset[str]:
    """Labels whose values the caller of the proxy chooses (any client with a key can make new
    ones at will), as opposed to values from the proxy's own configuration and database (keys,
    teams, users, models, deployments): the custom metadata labels (request metadata), and the
    end user when exported without LiteLLM's end-user cap."""
    labels = set(REQUEST_LABELS) | set(config.custom_metadata_labels)
    if config.end_user_tracking and not config.end_user_series_limits.enabled:
        labels.add("end_user")
    return frozenset(labels)


def build_limits(schema: MetricSchema, default_cap: int) -> dict[str, MetricLimits]:
    """metric key -> its limits, for every enabled metric that has any.

    ``default_cap`` (``LSM_MAX_SERIES_PER_METRIC``; 0: none) caps, when ``litellm_settings`` set
    no valid ``prometheus_metrics_max_series_per_metric``, every metric that carries a label a
    client chooses (:func:`request_labels`): those grow without bound under a scanner or a
    hostile client. The other metrics' label values come from the proxy's configuration and are
    left uncapped (a cap costs the apply script an index write per update). Series with an end
    user under their own cap (end-user tracking on) keep that one."""
    config = schema.config
    general_all = _limit("ix", config.series_limits)
    general_default = _limit("ix", config.series_limits, default_cap)
    controlled = request_labels(config)
    end_user = _limit("ixe", config.end_user_series_limits) if config.end_user_tracking else None
    out: dict[str, MetricLimits] = {}
    for mdef in config.metrics():
        mkey = schema.metric_key(mdef.name)
        if mkey is None:
            continue
        labels = schema.label_names(mdef.name)
        general = general_default if controlled.intersection(labels) else general_all
        eu_index = labels.index("end_user") if "end_user" in labels else None
        eu = end_user if eu_index is not None else None
        if general is None and eu is None:
            continue
        parts: tuple[str, ...] = ()
        if mdef.kind == "histogram":
            nb = len(schema.upper_bounds(mdef.name)) + 1
            parts = (*(f"b{i}" for i in range(nb)), "s", "c")
        out[mkey] = MetricLimits(
            name=mdef.name,
            kind=mdef.kind,
            mkey=mkey,
            overflow=encode_series([OVERFLOW_VALUE] * len(labels)),
            general=general,
            end_user=eu,
            end_user_index=eu_index,
            histogram_parts=parts,
        )
    return out


_VALUE_KIND = {"counter": "c", "histogram": "h", "gauge": "g"}


async def retire_idle(
    client: aioredis.Redis, keys: Keys, shard: int, limits: dict[str, MetricLimits], now: float | None = None
) -> int:
    """Retire the shard's series idle for longer than their TTL; returns how many."""
    now = time.time() if now is None else now
    script = client.register_script(_RETIRE)
    retired = 0
    for ml in limits.values():
        for limit in (ml.general, ml.end_user):
            if limit is None or limit.ttl is None:
                continue
            index = keys.metric(shard, limit.index_kind, ml.mkey)
            cutoff = now - limit.ttl
            cursor: Any = 0
            while True:
                reply: Any = await client.hscan(index, cursor, count=SCAN_COUNT)
                cursor, page = reply
                idle = [f for f, t in page.items() if float(t) < cutoff]
                if idle:
                    vkind = _VALUE_KIND[ml.kind]
                    script_keys = [
                        index,
                        keys.metric(shard, vkind, ml.mkey),
                        keys.metric(shard, "gt", ml.mkey),
                        keys.metric(shard, "x", ml.mkey),
                    ]
                    args = [vkind, repr(cutoff), repr(now), ml.overflow, *ml.histogram_parts, "--", *idle]
                    retired += int(await script(keys=script_keys, args=args))
                if int(cursor) == 0:
                    break
    return retired
