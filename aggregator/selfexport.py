"""The aggregator's self-metrics as Prometheus families (``lsm_*``).

Two kinds, so that summing across pods stays right:
- per process (every pod exports its own): batches, entries and events this process applied,
  apply latency, errors, leadership state, render timings and cache hits;
- shared (exported only by the leader, like the business series, because every pod would see
  the same values): stream length, group lag, pending entries and their age, the durable apply
  counters per shard, producers' events sent vs applied.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from aggregator.consumer import ShardConsumer
from aggregator.leadership import Leadership
from aggregator.owner import Owners
from aggregator.selfmetrics import producer_health, shard_health
from producer.keys import Keys

# Producers that have not reported for this long are not exported (their ids would pile up).
PRODUCER_REPORT_WINDOW = 24 * 3600.0


@dataclass
class RenderStats:
    """Timings of this process's /metrics renders, by format (updated from the HTTP threads)."""

    seconds_sum: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    last_bytes: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    # Label sets per metric in the last full render, and series skipped (unreadable) since start.
    series: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    # Renders that failed ("error") or left families out ("too_large"); the last render's state.
    errors: dict[str, int] = field(default_factory=dict)
    incomplete: bool = False
    omitted: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(
        self,
        fmt: str,
        seconds: float,
        size: int,
        series: dict[str, int],
        skipped: int,
        omitted: dict[str, int] | None = None,
        failed: bool = False,
    ) -> None:
        with self.lock:
            self.seconds_sum[fmt] = self.seconds_sum.get(fmt, 0.0) + seconds
            self.count[fmt] = self.count.get(fmt, 0) + 1
            self.last_bytes[fmt] = size
            self.series = dict(series)
            self.skipped = skipped
            self.omitted = dict(omitted or {})
            self.incomplete = failed or bool(self.omitted)
            for reason, happened in (("error", failed), ("too_large", bool(self.omitted))):
                if happened:
                    self.errors[reason] = self.errors.get(reason, 0) + 1

    def standby(self) -> None:
        """Not the exporter: no business series are missing from this process's answers."""
        with self.lock:
            self.incomplete = False
            self.omitted = {}


class ProcessCollector:
    """Per-process self-metrics."""

    def __init__(
        self,
        consumers: Sequence[ShardConsumer],
        leader: Leadership,
        render: RenderStats,
        owners: Owners | None = None,
    ) -> None:
        self.consumers = consumers
        self.leader = leader
        self.render = render
        self.owners = owners

    def describe(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily | SummaryMetricFamily]:
        return list(self.collect())  # cheap: process memory only

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily | SummaryMetricFamily]:
        counters = {
            "batches": ("batches", "Batches this process applied"),
            "entries_read": ("entries_read", "Stream entries this process read"),
            "entries_applied": ("entries_applied", "Stream entries this process applied"),
            "events_applied": ("events_applied", "Events this process applied"),
            "duplicate_entries": ("duplicate_entries", "Entries found to be already applied (producer retries)"),
            "dead_entries": ("dead_entries", "Entries this process dead-lettered"),
            "claimed_entries": ("claimed_entries", "Entries this process claimed from idle consumers"),
            "isolated_entries": (
                "isolated_entries",
                "Entries delivered more than LSM_MAX_DELIVERIES times, applied (or dead-lettered) alone",
            ),
            "not_owned_entries": ("not_owned_entries", "Entries claimed away from this process before it applied"),
            "state_resets": (
                "state_resets",
                "Resets of the shard's state in Redis (restarted empty) this process found and recovered from",
            ),
            "errors": ("errors", "Errors while reading or applying (retried)"),
        }
        for attr, (name, doc) in counters.items():
            fam = CounterMetricFamily(f"lsm_consumer_{name}", doc, labels=["shard"])
            for c in self.consumers:
                fam.add_metric([str(c.shard)], float(getattr(c.counters, attr)))
            yield fam
        engine_errors = CounterMetricFamily(
            "lsm_engine_errors",
            "Exceptions of the engine (bugs, not bad events) in this process; each entry hit is dead-lettered "
            "as engine_error",
            labels=["shard"],
        )
        for c in self.consumers:
            engine_errors.add_metric([str(c.shard)], float(c.counters.engine_errors))
        for shard, owner in sorted(self.owners.owners.items()) if self.owners is not None else ():
            engine_errors.add_metric([str(shard)], float(owner.counters.engine_errors))
        yield engine_errors
        apply = SummaryMetricFamily("lsm_apply_seconds", "Time to decode, build and apply a batch", labels=["shard"])
        batch = SummaryMetricFamily("lsm_batch_entries", "Entries per batch", labels=["shard"])
        for c in self.consumers:
            apply.add_metric([str(c.shard)], count_value=c.counters.batches, sum_value=c.counters.apply_seconds_sum)
            batch.add_metric([str(c.shard)], count_value=c.counters.batches, sum_value=c.counters.entries_read)
        yield apply
        yield batch
        if self.owners is not None:
            yield from self._owner_families(self.owners)
        leader = GaugeMetricFamily("lsm_leader", "1 while this process exports the business series")
        leader.add_metric([], 1.0 if self.leader.is_leader() else 0.0)
        yield leader
        epoch = self.leader.epoch
        fam = GaugeMetricFamily("lsm_leader_epoch", "Fencing epoch of this process's current or last lease")
        fam.add_metric([], float(epoch or 0))
        yield fam
        for name, value, doc in (
            ("lsm_leader_acquisitions", self.leader.acquisitions, "Times this process became the exporter"),
            ("lsm_leader_losses", self.leader.losses, "Times this process lost the exporter lease"),
            ("lsm_leader_errors", self.leader.errors, "Redis errors while acquiring or renewing the lease"),
        ):
            fam = CounterMetricFamily(name, doc)
            fam.add_metric([], float(value))
            yield fam
        r = self.render
        with r.lock:
            render = SummaryMetricFamily("lsm_render_seconds", "Time to render /metrics", labels=["format"])
            size = GaugeMetricFamily("lsm_render_bytes", "Size of the last rendered /metrics body", labels=["format"])
            for fmt, n in sorted(r.count.items()):
                render.add_metric([fmt], count_value=n, sum_value=r.seconds_sum[fmt])
                size.add_metric([fmt], float(r.last_bytes[fmt]))
            hits = CounterMetricFamily("lsm_render_cache_hits", "Scrapes answered from the render cache")
            hits.add_metric([], float(r.cache_hits))
            series = GaugeMetricFamily(
                "lsm_series", "Label sets per metric in this process's last full render", labels=["metric"]
            )
            for metric, n in sorted(r.series.items()):
                series.add_metric([metric], float(n))
            skipped = CounterMetricFamily(
                "lsm_render_skipped_series", "Stored series left out of renders because they could not be read"
            )
            skipped.add_metric([], float(r.skipped))
            errors = CounterMetricFamily(
                "lsm_render_errors",
                "Business renders that failed (error: served without the business series) or left families out "
                "(too_large: over LSM_RENDER_MAX_FIELDS)",
                labels=["reason"],
            )
            for reason in ("error", "too_large"):
                errors.add_metric([reason], float(r.errors.get(reason, 0)))
            incomplete = GaugeMetricFamily(
                "lsm_render_incomplete", "1 when this process's last business render left series out (see errors)"
            )
            incomplete.add_metric([], 1.0 if r.incomplete else 0.0)
            omitted = GaugeMetricFamily(
                "lsm_render_omitted_fields",
                "Stored fields of each family the last render left out (over LSM_RENDER_MAX_FIELDS)",
                labels=["metric"],
            )
            for metric, n in sorted(r.omitted.items()):
                omitted.add_metric([metric], float(n))
        yield from (render, size, hits, series, skipped, errors, incomplete, omitted)

    @staticmethod
    def _owner_families(owners: Owners) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        """The "owner" ingest: which shards this process owns, and its checkpoints."""
        owned = GaugeMetricFamily("lsm_shard_owner", "1 for each shard this process owns", labels=["shard", "epoch"])
        for shard, epoch in sorted(owners.ownership.owned().items()):
            owned.add_metric([str(shard), str(epoch)], 1.0)
        yield owned
        families = {
            "checkpoints": CounterMetricFamily("lsm_checkpoints", "Checkpoints committed", labels=["shard"]),
            "takeovers": CounterMetricFamily(
                "lsm_owner_takeovers", "Takeovers of the shard (state loaded)", labels=["shard"]
            ),
            "refused": CounterMetricFamily("lsm_checkpoints_refused", "Checkpoints refused (fenced)", labels=["shard"]),
            "events_applied": CounterMetricFamily(
                "lsm_owner_events_applied", "Events applied in memory", labels=["shard"]
            ),
        }
        seconds = GaugeMetricFamily("lsm_checkpoint_seconds_max", "Longest checkpoint commit", labels=["shard"])
        for shard, owner in sorted(owners.owners.items()):
            for attr, fam in families.items():
                fam.add_metric([str(shard)], float(getattr(owner.counters, attr)))
            seconds.add_metric([str(shard)], owner.counters.checkpoint_seconds_max)
        yield from families.values()
        yield seconds


class SharedCollector:
    """Cluster-wide health read from Redis; the leader exports it."""

    def __init__(self, client: redis.Redis, keys: Keys, group: str) -> None:
        self.client = client
        self.keys = keys
        self.group = group

    @staticmethod
    def _families() -> dict[str, CounterMetricFamily | GaugeMetricFamily]:
        shard = ["shard"]
        fams: list[CounterMetricFamily | GaugeMetricFamily] = [
            GaugeMetricFamily("lsm_stream_length", "Entries in the shard's stream", labels=shard),
            GaugeMetricFamily("lsm_group_lag", "Entries not yet delivered to the group", labels=shard),
            GaugeMetricFamily("lsm_pending_entries", "Entries delivered, not yet applied", labels=shard),
            GaugeMetricFamily("lsm_oldest_pending_age_seconds", "Age of the oldest pending entry", labels=shard),
            GaugeMetricFamily("lsm_group_consumers", "Consumers in the group", labels=shard),
            CounterMetricFamily(
                "lsm_shard_stat",
                "Durable apply counters of the shard (entries/events applied, duplicates, dead letters by reason, "
                "rejected events, lost entries, state resets)",
                labels=["shard", "stat"],
            ),
            CounterMetricFamily(
                "lsm_series_overflow",
                "Updates sent to the metric's overflow series because it reached its series cap",
                labels=["metric"],
            ),
            CounterMetricFamily(
                "lsm_series_dropped",
                "Gauge updates dropped because the metric reached its series cap",
                labels=["metric"],
            ),
            CounterMetricFamily(
                "lsm_label_values_truncated",
                "Events (and budget refresh rows) whose value of this label was longer than "
                "LSM_MAX_LABEL_VALUE_LENGTH and was truncated",
                labels=["label"],
            ),
            CounterMetricFamily("lsm_producer_events_sent", "Events the producer reports sent", labels=["producer"]),
            CounterMetricFamily("lsm_producer_events_applied", "Events applied", labels=["producer"]),
            CounterMetricFamily(
                "lsm_producer_events_dropped", "Events the producer had to drop (all reasons)", labels=["producer"]
            ),
            CounterMetricFamily(
                "lsm_producer_lost_entries",
                "Entries removed from the stream before being applied",
                labels=["producer"],
            ),
            CounterMetricFamily(
                "lsm_producer_events_unreplicated",
                "Events written while fewer than LSM_WAIT_REPLICAS replicas confirmed them in time "
                "(what a failover of their master may lose)",
                labels=["producer"],
            ),
        ]
        return {f.name: f for f in fams}

    def describe(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        """The families without reading Redis (lets ``name[]`` select them)."""
        return list(self._families().values())

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        now = time.time()
        f = self._families()
        # Shard stats "<kind>:<name>" summed over shards into one family each, labelled by name.
        by_name: dict[str, str] = {
            "series_overflow": "lsm_series_overflow",
            "series_dropped": "lsm_series_dropped",
            "label_truncated": "lsm_label_values_truncated",
        }
        named_stats: dict[str, dict[str, int]] = {kind: {} for kind in by_name}
        for shard in range(self.keys.shards):
            h = shard_health(self.client, self.keys, shard, self.group, now)
            s = str(shard)
            f["lsm_stream_length"].add_metric([s], float(h.stream_length))
            if h.lag is not None:
                f["lsm_group_lag"].add_metric([s], float(h.lag))
            f["lsm_pending_entries"].add_metric([s], float(h.pending))
            f["lsm_oldest_pending_age_seconds"].add_metric([s], h.oldest_pending_age)
            f["lsm_group_consumers"].add_metric([s], float(h.consumers))
            for stat, value in sorted(h.stats.items()):
                kind, _, name = stat.partition(":")
                if name and kind in named_stats:
                    totals = named_stats[kind]
                    totals[name] = totals.get(name, 0) + value
                else:
                    f["lsm_shard_stat"].add_metric([s, stat], float(value))
        for kind, totals in named_stats.items():
            for name, value in sorted(totals.items()):
                f[by_name[kind]].add_metric([name], float(value))
        for p in producer_health(self.client, self.keys):
            if now - p.last_report > PRODUCER_REPORT_WINDOW:
                continue
            f["lsm_producer_events_sent"].add_metric([p.producer_id], float(p.events_sent))
            f["lsm_producer_events_applied"].add_metric([p.producer_id], float(p.events_applied))
            f["lsm_producer_events_dropped"].add_metric([p.producer_id], float(p.events_dropped))
            f["lsm_producer_lost_entries"].add_metric([p.producer_id], float(p.lost_entries))
            f["lsm_producer_events_unreplicated"].add_metric([p.producer_id], float(p.events_unreplicated))
        return list(f.values())
