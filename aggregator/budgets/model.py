"""What a budget source yields: pages of entity rows stamped with the time they were read."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

#: Entity kinds in the order a refresh reads them.
KINDS: tuple[str, ...] = ("keys", "teams", "users", "orgs", "customers")


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """One key / team / user / org / customer as the source knows it. ``None`` = unknown or not
    set (no budget, no reset time); never replaced by 0 or by the budget."""

    entity_id: str
    alias: str | None = None
    email: str | None = None  # users only
    spend: float | None = None
    max_budget: float | None = None
    reset_at: float | None = None  # seconds since the epoch
    members: int | None = None  # teams only


@dataclass(frozen=True, slots=True)
class Page:
    """Rows read by one query; ``read_at`` (wall clock, taken before the query was sent) is the
    time of every gauge written from them: last write wins by time against the events."""

    kind: str
    read_at: float
    rows: list[BudgetRow]


@dataclass(frozen=True, slots=True)
class Counts:
    total_users: int | None
    active_users: int | None
    teams: int | None
    read_at: float


class SourceError(RuntimeError):
    """The source could not be read (database down, timeout, HTTP error, bad answer)."""


class IncompleteListing(SourceError):
    """Every page was read, but the listing may have missed rows (e.g. offset pagination over
    a table that changed meanwhile): values are good, absence proves nothing."""


class BudgetSource(Protocol):
    """A read-only view of LiteLLM's entities. One run opens it, reads it, closes it."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def pages(self, kind: str) -> AsyncIterator[Page]:
        """Every row of ``kind`` in pages; raises :class:`SourceError` on failure."""
        ...

    async def counts(self) -> Counts: ...


def finite(value: object) -> float | None:
    """A usable number, else None (NULL, NaN, infinities, text)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def to_epoch(value: object) -> float | None:
    """A reset time as seconds since the epoch. Prisma stores ``timestamp without time zone`` in
    UTC; ISO text from the API may carry an offset or ``Z``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
