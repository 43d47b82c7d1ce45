"""Spend counted from events, reconciled with the spend LiteLLM's database holds, per key.

Each budget refresh sums the spend counter (``litellm_spend_metric``) by ``hashed_api_key`` over
every shard, then compares it with each key's ``spend`` as the refresh reads it from the source.
The two totals never start together (the database counts since the key was created, the events
since this pipeline was installed) and the database resets a key's spend when its budget resets,
so each key is compared from a *baseline* (its database and event spend when the comparison
started, or restarted):

- ``database`` = D - D0 and ``events`` = E - E0, the spend each side saw since the baseline;
- **missing in events** = database - events, when positive: spend LiteLLM recorded that no event
  carried (a proxy without the callback, events dropped by a producer, a lost stream);
- **missing in the database** = events counted at least ``reconcile_flush_delay_seconds`` ago
  (the last snapshot that old, "settled") minus database, when positive: spend the events saw
  that LiteLLM has still not written (its spend updates are batched: ``proxy_batch_write_at``,
  and with Redis a transaction buffer that a failed write can lose).

A key whose either side exceeds ``reconcile_tolerance_usd`` is *drifted*. A key's baseline starts
again when its database spend went down (budget reset) or its event spend went down (its series
was folded into the overflow series by a cap, or the state was reset). A key never seen before
starts at zero on both sides (it had no spend at the last run), except on the very first run.

State: one hash field per key with spend (``<ns>:{s0}:budget:reconcile``: "D0 E0 D E_pending
T_pending E_settled": the event spend is snapshotted per key, and a snapshot becomes the settled
one once it is at least the flush delay old). A run reads the records of the last complete run
and writes the new ones into a second hash that replaces the first (RENAME) once every key was
read: the records of keys the source no longer lists go with it, and a run that fails half-way
leaves the last complete run's records as they were. Written while the refresh holds its lease;
the run's summary in the budget status hash (fenced), from which every process exports
``lsm_spend_reconciliation_*``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Gauge

from aggregator.budgets.model import BudgetRow
from aggregator.budgets.writer import hscan
from aggregator.schema import MetricSchema
from aggregator.series_limits import OVERFLOW_VALUE
from aggregator.state import decode_series
from producer.keys import Keys

SPEND_METRIC = "litellm_spend_metric"
KEY_LABEL = "hashed_api_key"
# Status hash fields (the budget status hash).
SUMMARY_FIELD = "reconcile:summary"
LAST_RUN = "reconcile:last_run"


@dataclass
class EventSpend:
    """Spend counted from events: by key, and what no key can be named for (series of the
    overflow series, requests without a key, or a spend metric configured without the key label)."""

    by_key: dict[str, float] = field(default_factory=dict)
    unattributed: float = 0.0


async def events_spend(client: aioredis.Redis, keys: Keys, schema: MetricSchema, shards: int) -> EventSpend | None:
    """The spend counter summed by key over every shard; None when the spend metric is off."""
    mkey = schema.metric_key(SPEND_METRIC)
    if mkey is None:
        return None
    names = schema.label_names(SPEND_METRIC)
    at = names.index(KEY_LABEL) if KEY_LABEL in names else None
    out = EventSpend()
    by_key = out.by_key
    for shard in range(shards):
        async for chunk in hscan(client, keys.metric(shard, "c", mkey)):
            for raw_field, raw_value in chunk:
                value = float(raw_value)
                key = decode_series(raw_field)[at] if at is not None else None
                if key is None or key in ("None", "", OVERFLOW_VALUE):
                    out.unattributed += value
                else:
                    by_key[key] = by_key.get(key, 0.0) + value
    return out


@dataclass
class KeyRecord:
    d0: float
    e0: float
    d: float
    e_pending: float
    t_pending: float
    e_settled: float

    def encode(self) -> str:
        return " ".join(repr(v) for v in (self.d0, self.e0, self.d, self.e_pending, self.t_pending, self.e_settled))

    @classmethod
    def decode(cls, raw: bytes | str) -> KeyRecord | None:
        try:
            values = [float(v) for v in (raw.decode() if isinstance(raw, bytes) else raw).split()]
            return cls(*values) if len(values) == 6 else None
        except ValueError:
            return None


@dataclass
class DriftedKey:
    hashed_api_key: str
    api_key_alias: str
    missing_in_database: float
    missing_in_events: float


@dataclass
class Summary:
    """One run's reconciliation, as exported and shown by ``status``."""

    at: float = 0.0
    keys: int = 0
    drifted: int = 0
    events_usd: float = 0.0
    database_usd: float = 0.0
    missing_in_database_usd: float = 0.0
    missing_in_events_usd: float = 0.0
    unattributed_usd: float = 0.0
    # Keys with event spend that the source's listing does not hold (deleted keys, the UI's
    # session keys, which LiteLLM's refresh skips too), and their event spend.
    not_in_database: int = 0
    not_in_database_usd: float = 0.0
    flush_delay: float = 0.0
    top: list[DriftedKey] = field(default_factory=list)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str | None) -> Summary | None:
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
            top = [DriftedKey(**k) for k in doc.pop("top", [])]
            return cls(**doc, top=top)
        except (orjson.JSONDecodeError, TypeError):
            return None


class Reconciler:
    """One run's comparison: :meth:`start` (event spend and the previous snapshots' times),
    :meth:`page` for every page of keys, :meth:`finish` for the summary and status fields."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        tolerance: float,
        flush_delay: float,
        max_keys: int,
    ) -> None:
        self.client = client
        self.key = keys.budget_reconcile()
        self.next_key = self.key + ":next"
        self.tolerance = tolerance
        self.flush_delay = flush_delay
        self.max_keys = max_keys
        self.events = EventSpend()
        self.summary = Summary(flush_delay=flush_delay)
        self._last_run = 0.0
        self._first = True
        self._now = 0.0
        self._at: float | None = None
        self._drifted: list[DriftedKey] = []

    async def start(self, events: EventSpend, status: Mapping[str, float], now: float) -> None:
        """Before the keys are read: ``events`` summed just now, ``status`` the budget status hash."""
        await self.client.delete(self.next_key)  # what a run that did not finish left
        self.events = events
        self.summary.unattributed_usd = events.unattributed
        last = status.get(LAST_RUN)
        self._first = last is None
        self._last_run = last or 0.0
        self._now = now

    async def page(self, rows: Iterable[BudgetRow], read_at: float) -> None:
        """Compare one page of keys and store their records."""
        rows = [r for r in rows if r.spend is not None and math.isfinite(r.spend)]
        if not rows:
            return
        self._at = read_at if self._at is None else self._at
        raw = await self.client.hmget(self.key, [r.entity_id for r in rows])
        sets: dict[Any, Any] = {}
        for row, stored in zip(rows, raw, strict=True):
            record = self._compare(row, None if stored is None else KeyRecord.decode(stored))
            if not record.d == record.d0 == record.e0 == record.e_pending == 0:  # else: no record needed
                sets[row.entity_id] = record.encode()
        if sets:
            await self.client.hset(self.next_key, mapping=sets)

    def _compare(self, row: BudgetRow, record: KeyRecord | None) -> KeyRecord:
        d = float(row.spend or 0.0)
        e = self.events.by_key.pop(row.entity_id, 0.0)
        tol, now = self.tolerance, self._now
        if record is None:
            # First run: the comparison starts now. Later: the key had no spend at the last run
            # (it would have a record), so it starts from zero then.
            first = self._first
            record = KeyRecord(d, e, d, e, now, e) if first else KeyRecord(0.0, 0.0, d, 0.0, self._last_run, 0.0)
        elif d < record.d - tol or e < record.e_pending - tol:
            record = KeyRecord(d, e, d, e, now, e)  # budget reset, or its series folded: start again
        if now - record.t_pending >= self.flush_delay:
            # The pending snapshot is old enough: it becomes the settled one; a new one starts.
            record.e_settled, record.e_pending, record.t_pending = record.e_pending, e, now
        record.d = d
        s = self.summary
        s.keys += 1
        events, database = e - record.e0, d - record.d0
        s.events_usd += events
        s.database_usd += database
        in_events = max(0.0, database - events)
        # The settled snapshot is the baseline itself until one is the flush delay old: 0 then.
        in_database = max(0.0, record.e_settled - record.e0 - database)
        s.missing_in_events_usd += in_events
        s.missing_in_database_usd += in_database
        if in_events > tol or in_database > tol:
            s.drifted += 1
            self._drifted.append(DriftedKey(row.entity_id, row.alias or "", in_database, in_events))
        return record

    async def finish(self, now: float) -> list[str]:
        """Once every key was read: this run's records replace the last run's; returns the
        status fields to write (the summary is kept in ``self.summary``)."""
        if await self.client.exists(self.next_key):
            await self.client.rename(self.next_key, self.key)
        else:
            await self.client.delete(self.key)
        s = self.summary
        s.at = self._at if self._at is not None else now
        s.not_in_database = len(self.events.by_key)
        s.not_in_database_usd = sum(self.events.by_key.values())
        self._drifted.sort(key=lambda k: -(k.missing_in_database + k.missing_in_events))
        s.top = self._drifted[: self.max_keys]
        return [SUMMARY_FIELD, s.encode().decode(), LAST_RUN, repr(self._now)]


class ReconcileMetrics:
    """``lsm_spend_reconciliation_*``, from the last run's summary (every process exports the
    same values, read from Redis; aggregate with ``max``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.events = Gauge(
            "lsm_spend_reconciliation_events_usd",
            "Spend counted from events since each key's baseline, summed over the keys compared",
            registry=r,
        )
        self.database = Gauge(
            "lsm_spend_reconciliation_database_usd",
            "Spend the budget source (LiteLLM's database) recorded since each key's baseline, summed",
            registry=r,
        )
        self.missing = Gauge(
            "lsm_spend_reconciliation_missing_usd",
            "Spend one side lacks, summed over keys: side=events (recorded by LiteLLM, no event carried it), "
            "side=database (counted from events longer ago than the flush delay, not in the database)",
            ["side"],
            registry=r,
        )
        self.unattributed = Gauge(
            "lsm_spend_reconciliation_unattributed_usd",
            "Spend counted from events that names no key (overflow series, requests without a key)",
            registry=r,
        )
        self.keys = Gauge(
            "lsm_spend_reconciliation_keys",
            "Keys by state: compared, drifted (a side lacks more than the tolerance), not_in_database "
            "(event spend for a key the source does not list)",
            ["state"],
            registry=r,
        )
        self.timestamp = Gauge(
            "lsm_spend_reconciliation_timestamp_seconds",
            "When the keys of the last reconciliation were read",
            registry=r,
        )
        self.key_missing = Gauge(
            "lsm_spend_reconciliation_key_missing_usd",
            "Spend one side lacks for one drifted key (the largest drifted keys, LSM_RECONCILE_MAX_KEYS)",
            ["hashed_api_key", "api_key_alias", "side"],
            registry=r,
        )

    def update(self, s: Summary) -> None:
        self.events.set(s.events_usd)
        self.database.set(s.database_usd)
        self.missing.labels("events").set(s.missing_in_events_usd)
        self.missing.labels("database").set(s.missing_in_database_usd)
        self.unattributed.set(s.unattributed_usd)
        self.keys.labels("compared").set(s.keys)
        self.keys.labels("drifted").set(s.drifted)
        self.keys.labels("not_in_database").set(s.not_in_database)
        self.timestamp.set(s.at)
        self.key_missing.clear()
        for k in s.top:
            self.key_missing.labels(k.hashed_api_key, k.api_key_alias, "events").set(k.missing_in_events)
            self.key_missing.labels(k.hashed_api_key, k.api_key_alias, "database").set(k.missing_in_database)
