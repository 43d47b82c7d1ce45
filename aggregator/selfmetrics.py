"""The aggregator's own health figures, read from Redis (shared by every aggregator process).

What a user needs to prove end to end that what was sent was applied, and to see a backlog
building up: per shard the stream length, the group's lag and pending count, the age of the
oldest pending entry, the apply counters (events/entries applied, duplicates, dead letters and
rejected events by reason, lost entries), and per producer ``events_sent`` (the producer's own
report) against ``events_applied``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from producer.keys import Keys


@dataclass
class ProducerHealth:
    producer_id: str
    events_sent: int
    events_applied: int
    events_dropped: int
    events_accepted: int
    last_report: float
    lost_entries: int = 0
    events_unreplicated: int = 0

    @property
    def in_flight(self) -> int:
        """Sent but not applied yet (in the stream, pending, or lost)."""
        return self.events_sent - self.events_applied


@dataclass
class ShardHealth:
    shard: int
    stream_length: int = 0
    lag: int | None = None  # None when Redis cannot tell (after entries were deleted)
    pending: int = 0
    oldest_pending_age: float = 0.0
    consumers: int = 0
    stats: dict[str, int] = field(default_factory=dict)


def reported(stats: Mapping[str, str], field: str) -> float:
    """A number from a producer's counters, 0 when absent or not a finite non-negative number:
    anyone who can write the counters could write anything there."""
    try:
        value = float(stats.get(field, 0) or 0)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value >= 0 else 0.0


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


# 1 when the stream holds an entry after ARGV[1] (an entry not yet delivered to the group), else 0;
# the entry itself stays in Redis (entries can be large).
_UNDELIVERED = "return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', 1)"


def shard_health(client: redis.Redis, keys: Keys, shard: int, group: str, now: float | None = None) -> ShardHealth:
    now = time.time() if now is None else now
    h = ShardHealth(shard)
    stream = keys.stream(shard)
    h.stream_length = int(client.xlen(stream))
    h.stats = {_text(k): int(float(v)) for k, v in client.hgetall(keys.shard_stats(shard)).items()}
    try:
        groups: list[dict[str, Any]] = client.xinfo_groups(stream)  # type: ignore[assignment]
    except redis.ResponseError:
        return h
    for g in groups:
        if _text(g["name"]) != group:
            continue
        h.pending = int(g["pending"])
        h.consumers = int(g["consumers"])
        lag = g.get("lag")
        h.lag = None if lag is None else int(lag)
        if h.lag != 0:
            # Redis derives the lag from counters that a restart (or a group recreated after
            # one) can leave behind the truth: it then reports a lag, or none, though every entry
            # was delivered. Nothing after the last delivered entry means a lag of 0.
            last = _text(g["last-delivered-id"])
            if not int(client.eval(_UNDELIVERED, 1, stream, last)):  # type: ignore[arg-type]
                h.lag = 0
    if h.pending:
        summary: Any = client.xpending(stream, group)
        oldest = _text(summary["min"])
        h.oldest_pending_age = max(0.0, now - _entry_ms(oldest) / 1000)
    return h


def producer_health(client: redis.Redis, keys: Keys) -> list[ProducerHealth]:
    applied: dict[str, int] = {}
    lost: dict[str, int] = {}
    for shard in range(keys.shards):
        for k, v in client.hgetall(keys.applied_by_producer(shard)).items():
            applied[_text(k)] = applied.get(_text(k), 0) + int(v)
        for k, v in client.hgetall(keys.lost_by_producer(shard)).items():
            lost[_text(k)] = lost.get(_text(k), 0) + int(v)
    out = []
    registry: Any = client.zrange(keys.producer_registry(), 0, -1, withscores=True)
    for raw_id, score in registry:
        pid = _text(raw_id)
        stats = {_text(k): _text(v) for k, v in client.hgetall(keys.producer_stats(pid)).items()}
        dropped = sum(int(reported(stats, k)) for k in stats if k.startswith("events_dropped_"))
        out.append(
            ProducerHealth(
                producer_id=pid,
                events_sent=int(reported(stats, "events_sent")),
                events_applied=applied.get(pid, 0),
                events_dropped=dropped,
                events_accepted=int(reported(stats, "events_accepted")),
                last_report=float(score),
                lost_entries=lost.get(pid, 0),
                events_unreplicated=int(reported(stats, "events_unreplicated")),
            )
        )
    return out
