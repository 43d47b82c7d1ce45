"""``python -m aggregator status``: the pipeline's health at a glance, from Redis alone.

Per shard the stream, the backlog and its age, pending entries, consumers and the durable
apply counters; the exporter lease; the budget refresh; per producer sent / applied / dropped /
lost. Problems (something is wrong now) make the command exit 1, so it serves as a probe or a
cron check; warnings (something went wrong before and shows in the counters) do not.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.cluster import RedisCluster

from aggregator.budgets.reconcile import SUMMARY_FIELD, Summary
from aggregator.cluster_slots import ClusterView, crowded
from aggregator.leadership import exporter_lease_key
from aggregator.selfmetrics import ProducerHealth, producer_health, shard_health
from aggregator.settings import AggregatorSettings
from producer.keys import Keys
from producer.urls import passwords_in, safe_url

# Producers that reported within this window are listed (the self-metrics use the same window).
PRODUCER_WINDOW_SECONDS = 24 * 3600.0


@dataclass
class ShardStatus:
    shard: int
    stream_length: int
    group_exists: bool
    backlog: int | None
    backlog_age_seconds: float
    pending: int
    oldest_pending_age_seconds: float
    consumers: int
    stats: dict[str, int]
    #: On a Redis Cluster, the master serving the shard's slot (host:port); else None.
    node: str | None = None
    #: The "owner" ingest: the aggregator holding the shard's lease, and its last checkpoint.
    owner: str | None = None
    checkpoint_age_seconds: float | None = None


@dataclass
class ProducerStatus:
    producer: str
    events_sent: int
    events_applied: int
    events_dropped: int
    lost_entries: int
    last_report_age_seconds: float
    closed: bool
    events_unreplicated: int = 0


@dataclass
class Status:
    namespace: str
    shards: list[ShardStatus]
    exporter: str | None
    exporter_lease_seconds_left: float | None
    budget_last_success_age_seconds: float | None
    producers: list[ProducerStatus]
    #: The last spend reconciliation (aggregator/budgets/reconcile.py), if one ran.
    reconciliation: Summary | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _age_of_entry(entry_id: str, now: float) -> float:
    return max(0.0, now - int(entry_id.partition("-")[0]) / 1000)


def _shard(client: redis.Redis, keys: Keys, shard: int, group: str, now: float, owned: bool) -> ShardStatus:
    h = shard_health(client, keys, shard, group, now)
    stream = keys.stream(shard)
    last_delivered: str | None = None
    try:
        for g in client.xinfo_groups(stream):  # type: ignore[union-attr]
            if _text(g["name"]) == group:
                last_delivered = _text(g["last-delivered-id"])
    except redis.ResponseError:  # no stream yet
        pass
    backlog_age = 0.0
    if last_delivered is not None:
        after: Any = client.xrange(stream, min="(" + last_delivered, count=1)
        if after:
            backlog_age = _age_of_entry(_text(after[0][0]), now)
    owner: str | None = None
    checkpoint_age: float | None = None
    if owned:
        holder = client.get(keys.shard_owner(shard))
        owner = _text(holder).rsplit(":", 1)[0] if holder is not None else None
        committed: Any = client.hget(keys.checkpoint(shard), "committed_at")
        checkpoint_age = round(max(0.0, now - float(committed)), 3) if committed is not None else None
    return ShardStatus(
        shard=shard,
        stream_length=h.stream_length,
        group_exists=last_delivered is not None,
        backlog=h.lag,
        backlog_age_seconds=round(backlog_age, 3),
        pending=h.pending,
        oldest_pending_age_seconds=round(h.oldest_pending_age, 3),
        consumers=h.consumers,
        stats=h.stats,
        node=node_of(client, stream),
        owner=owner,
        checkpoint_age_seconds=checkpoint_age,
    )


def node_of(client: redis.Redis, key: str) -> str | None:
    """The cluster master serving ``key`` (host:port), or None with a single server."""
    if isinstance(client, RedisCluster):
        return str(client.get_node_from_key(key).name)
    return None


def _producer(p: ProducerHealth, closed: bool, now: float) -> ProducerStatus:
    return ProducerStatus(
        producer=p.producer_id,
        events_sent=p.events_sent,
        events_applied=p.events_applied,
        events_dropped=p.events_dropped,
        lost_entries=p.lost_entries,
        last_report_age_seconds=round(max(0.0, now - p.last_report), 3),
        closed=closed,
        events_unreplicated=p.events_unreplicated,
    )


def collect(client: redis.Redis, settings: AggregatorSettings, max_age: float, now: float | None = None) -> Status:
    """Read everything the report shows; decide the problems (``max_age``: how old the oldest
    undelivered or pending entry may be) and warnings."""
    now = time.time() if now is None else now
    keys = settings.keys
    owned = settings.ingest == "owner"
    shards = [_shard(client, keys, s, settings.group, now, owned) for s in range(settings.shards)]
    lease_key = exporter_lease_key(keys)
    holder = client.get(lease_key)
    ttl_ms = int(client.pttl(lease_key)) if holder is not None else -2
    exporter = _text(holder).rsplit(":", 1)[0] if holder is not None else None
    budget_raw = {_text(k): _text(v) for k, v in client.hgetall(keys.budget_status()).items()}
    successes = [float(v) for k, v in budget_raw.items() if k.endswith(":last_success")]
    producers = []
    for p in producer_health(client, keys):
        if now - p.last_report > PRODUCER_WINDOW_SECONDS:
            continue
        closed = bool(client.hexists(keys.producer_stats(p.producer_id), "closed_at"))
        producers.append(_producer(p, closed, now))
    status = Status(
        namespace=settings.namespace,
        shards=shards,
        exporter=exporter,
        exporter_lease_seconds_left=round(ttl_ms / 1000, 3) if ttl_ms > 0 else None,
        budget_last_success_age_seconds=round(now - max(successes), 3) if successes else None,
        producers=producers,
        reconciliation=Summary.decode(budget_raw.get(SUMMARY_FIELD)),
    )
    _judge(status, max_age, owned)
    if isinstance(client, RedisCluster):
        _judge_spread(status, client, keys)
    return status


def _judge_spread(status: Status, client: RedisCluster, keys: Keys) -> None:
    """A warning when one master serves more shards than an even spread would give it."""
    try:
        view = ClusterView(client)
    except redis.exceptions.NoPermissionError as exc:
        status.warnings.append(f"cannot see how the shards are spread over the cluster's masters: {exc}")
        return
    for master, shards in crowded(keys, view.ranges, view.masters).items():
        names = ", ".join(str(s) for s in shards)
        status.warnings.append(
            f"master {master} serves shards {names} of {keys.shards} over {len(view.masters)} masters: "
            "python -m aggregator spread-shards moves them apart"
        )


def _judge(status: Status, max_age: float, owned: bool = False) -> None:
    for s in status.shards:
        where = f"shard {s.shard}"
        if not s.group_exists and s.stream_length:
            status.problems.append(f"{where}: no consumer group: no aggregator has read this stream")
        if s.backlog_age_seconds > max_age:
            status.problems.append(f"{where}: entries wait {s.backlog_age_seconds:.0f} s to be read (max {max_age:g})")
        if s.oldest_pending_age_seconds > max_age:
            status.problems.append(
                f"{where}: an entry has been pending {s.oldest_pending_age_seconds:.0f} s (max {max_age:g})"
            )
        if owned and s.owner is None:
            status.problems.append(f"{where}: no aggregator owns the shard: its entries are not applied")
        elif not owned and s.group_exists and s.consumers == 0:
            status.problems.append(f"{where}: the group has no consumers")
        dead = {k: v for k, v in s.stats.items() if k.startswith("dead_") and v}
        if dead:
            status.warnings.append(f"{where}: dead letters {dead} (python -m aggregator dead-letters list)")
        for stat in ("lost_entries", "events_lost_unclean_exit", "state_resets"):
            if s.stats.get(stat):
                status.warnings.append(f"{where}: {stat} = {s.stats[stat]:,}")
    if status.exporter is None:
        status.problems.append("no aggregator holds the exporter lease: nobody exports LiteLLM's series")
    r = status.reconciliation
    if r is not None and r.drifted:
        largest = ", ".join(
            f"{k.api_key_alias or k.hashed_api_key[:12]} (events lack {k.missing_in_events:.4f}, "
            f"database lacks {k.missing_in_database:.4f})"
            for k in r.top[:3]
        )
        status.warnings.append(
            f"spend reconciliation: {r.drifted:,} key(s) differ from LiteLLM's database beyond the tolerance; "
            f"largest: {largest} (docs/spend-reconciliation.md)"
        )
    for p in status.producers:
        if p.events_dropped:
            status.warnings.append(f"producer {p.producer}: {p.events_dropped:,} events dropped")
        if p.events_unreplicated:
            status.warnings.append(
                f"producer {p.producer}: {p.events_unreplicated:,} events written while fewer than "
                "LSM_WAIT_REPLICAS replicas confirmed them (a failover of their master may lose them)"
            )


def _seconds(value: float | None) -> str:
    if value is None:
        return "never"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def render(status: Status, settings: AggregatorSettings) -> str:
    lines = [
        f"namespace {status.namespace}, {len(status.shards)} shard(s), group {settings.group}, Redis "
        f"{safe_url(settings.redis_url, passwords_in(settings.redis_url))}"
    ]
    if status.exporter is None:
        lines.append("exporter: none")
    else:
        lines.append(f"exporter: {status.exporter} (lease {_seconds(status.exporter_lease_seconds_left)} left)")
    if status.budget_last_success_age_seconds is None:
        lines.append("budget refresh: no success recorded")
    else:
        lines.append(f"budget refresh: last success {_seconds(status.budget_last_success_age_seconds)} ago")
    r = status.reconciliation
    if r is not None:
        lines.append(
            f"spend reconciliation: {r.keys:,} keys, {r.drifted:,} drifted; missing in events "
            f"{r.missing_in_events_usd:.4f} USD, missing in the database {r.missing_in_database_usd:.4f} USD "
            f"(keys read {_seconds(max(0.0, time.time() - r.at))} ago)"
        )
    for s in status.shards:
        st = s.stats
        backlog = "unknown" if s.backlog is None else f"{s.backlog:,}"
        where = f" on {s.node}" if s.node else ""
        lines.append(
            f"shard {s.shard}{where}: stream {s.stream_length:,} entries, backlog {backlog} "
            f"(oldest {_seconds(s.backlog_age_seconds)}), "
            + (
                f"owner {s.owner or 'none'}, last checkpoint {_seconds(s.checkpoint_age_seconds)} ago"
                if settings.ingest == "owner"
                else f"pending {s.pending:,} (oldest {_seconds(s.oldest_pending_age_seconds)}), "
                f"{s.consumers} consumer(s)"
            )
        )
        lines.append(
            f"  applied {st.get('events_applied', 0):,} events in {st.get('entries_applied', 0):,} entries; "
            f"duplicates {st.get('duplicate_entries', 0):,}; dead letters "
            f"{sum(v for k, v in st.items() if k.startswith('dead_')):,}; lost entries {st.get('lost_entries', 0):,}; "
            f"lost at unclean exits {st.get('events_lost_unclean_exit', 0):,}"
        )
    lines.append(f"producers reporting in the last 24 h: {len(status.producers)}")
    for p in sorted(status.producers, key=lambda p: p.last_report_age_seconds):
        state = "closed" if p.closed else "running"
        lines.append(
            f"  {p.producer}  sent {p.events_sent:,}  applied {p.events_applied:,}  dropped {p.events_dropped:,}  "
            f"lost entries {p.lost_entries:,}  last report {_seconds(p.last_report_age_seconds)} ago  {state}"
        )
    lines += [f"warning: {w}" for w in status.warnings]
    lines += [f"PROBLEM: {p}" for p in status.problems] or ["no problems"]
    return "\n".join(lines)
