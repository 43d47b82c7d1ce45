"""Redis key names shared by the producer and the aggregator.

Every key starts with the configured namespace. A shard's keys share one hash tag (``{s0}``,
``{s1}``, ...) so that its stream and its metric state live in one Redis Cluster slot and can
be changed atomically by one server-side script.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# How long a producer's counters survive in Redis after its last report; the aggregator forgets
# producers (registry entries, exit records) after the same time.
PRODUCER_STATS_TTL_SECONDS = 7 * 24 * 3600


def validate_namespace(namespace: str) -> str:
    """Return ``namespace`` or raise ``ValueError`` naming what is allowed."""
    if not _NAMESPACE_RE.match(namespace):
        raise ValueError(
            f"invalid namespace {namespace!r}: use 1-64 characters from A-Z a-z 0-9 _ . - "
            "(no braces, colons or spaces; the namespace prefixes every Redis key)"
        )
    return namespace


@dataclass(frozen=True)
class Keys:
    """Key names for one namespace."""

    namespace: str
    shards: int = 1

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)
        if self.shards < 1 or self.shards > 1024:
            raise ValueError(f"shards must be between 1 and 1024, got {self.shards}")

    def shard_tag(self, shard: int) -> str:
        return f"{{s{shard}}}"

    def stream(self, shard: int) -> str:
        """The event stream of ``shard``."""
        return f"{self.namespace}:{self.shard_tag(shard)}:events"

    def shard_for_producer(self, producer_id: str) -> int:
        """The shard a producer writes to: fixed per producer, so its entries stay ordered."""
        return zlib.crc32(producer_id.encode()) % self.shards

    def producer_stats(self, producer_id: str) -> str:
        """Hash of one producer's counters (absolute values, rewritten on every flush)."""
        return f"{self.namespace}:producer:{producer_id}"

    def producer_registry(self) -> str:
        """Sorted set of producer ids scored by the time of their last report."""
        return f"{self.namespace}:producers"

    def ended_producers(self, shard: int) -> str:
        """Sorted set of the shard's producers found to have stopped reporting (scored by when),
        so that what an unclean exit left unsent is counted once."""
        return self._shard_key(shard, "producers:ended")

    # -- aggregator state: every key of a shard carries the shard's hash tag -------------------

    def _shard_key(self, shard: int, suffix: str) -> str:
        return f"{self.namespace}:{self.shard_tag(shard)}:{suffix}"

    def dead_letters(self, shard: int) -> str:
        """Stream of entries that could not be applied, with the reason and the original fields."""
        return self._shard_key(shard, "dead")

    def replay_sequence(self, shard: int) -> str:
        """Counter: the last sequence number given to a replayed dead letter (aggregator/dead_letters.py)."""
        return self._shard_key(shard, "replayseq")

    def shard_stats(self, shard: int) -> str:
        """Hash of the shard's apply counters (events/entries applied, duplicates, dead, lost)."""
        return self._shard_key(shard, "stats")

    def applied_by_producer(self, shard: int) -> str:
        """Hash producer id -> events applied, to compare with the producer's ``events_sent``."""
        return self._shard_key(shard, "applied")

    def lost_by_producer(self, shard: int) -> str:
        """Hash producer id -> entries that were removed from the stream before being applied."""
        return self._shard_key(shard, "lost")

    def high_water_marks(self, shard: int) -> str:
        """Hash producer id -> highest sequence number below which every entry was applied."""
        return self._shard_key(shard, "hwm")

    def seen_above_mark(self, shard: int, producer_id: str) -> str:
        """Sorted set of the producer's applied sequence numbers above its high-water mark."""
        return self._shard_key(shard, f"seen:{producer_id}")

    def metric(self, shard: int, kind: str, metric_key: str) -> str:
        """Hash holding the series of one metric (``kind``: c, h, g or gt for gauge times)."""
        return self._shard_key(shard, f"{kind}:{metric_key}")

    def shard_state(self, shard: int) -> str:
        """Hash identifying the shard's state (id, created_at): a different id, or none, tells a
        running aggregator that the state was reset (Redis restarted empty)."""
        return self._shard_key(shard, "state")

    def schemas(self, shard: int) -> str:
        """Hash metric key -> JSON label names of the series stored under it."""
        return self._shard_key(shard, "schemas")

    # -- leases and the budget refresh job: on shard 0's hash tag, so a fenced script can check
    # the lease together with shard 0's metric state in one Redis Cluster slot ---------------

    def lease(self, name: str) -> str:
        """The lease (leadership) key ``name``; its fencing epoch counter is ``<key>:epoch``."""
        return self._shard_key(0, f"lease:{name}")

    def shard_owner(self, shard: int) -> str:
        """The lease of the one process that owns the shard (its fencing epoch: ``<key>:epoch``),
        on the shard's own hash tag so a checkpoint can check it with the shard's state."""
        return self._shard_key(shard, "owner")

    def checkpoint(self, shard: int) -> str:
        """Hash of the shard's last committed checkpoint (position, epoch, number, committed_at)."""
        return self._shard_key(shard, "checkpoint")

    def owner_registry(self) -> str:
        """Sorted set of the live aggregator processes that own shards (score: last heartbeat,
        Redis server time), from which each works out its fair share."""
        return self._shard_key(0, "owners")

    def budget_status(self) -> str:
        """Hash of the budget refresh job's progress: last run, last success per entity kind."""
        return self._shard_key(0, "budget:status")

    def otlp_start(self) -> str:
        """When the namespace's totals started (nanoseconds): the start time of OTLP's cumulative points."""
        return self._shard_key(0, "otlp:start")

    def budget_reconcile(self) -> str:
        """Hash of the spend reconciliation's per-key baselines and snapshots."""
        return self._shard_key(0, "budget:reconcile")

    def budget_writes(self) -> str:
        """Stream (bounded) of the budget refresh job's accepted writes: epoch, owner, kind."""
        return self._shard_key(0, "budget:writes")
