"""Rows -> gauge writes, with exactly the metric keys, label names and label values the event
path produces (the engine's label rules), so a value from the database and a value from a
request land on the same series and the newer one wins.

What is written for one row (``None`` = remove the series, at the row's read time):

- max budget gauge: the max budget, or removed when the row has none;
- remaining budget gauge: ``max_budget - spend`` when both are known, else removed (LiteLLM
  reports ``+Inf`` or the full budget there; an unknown value is never reported);
- "hours until reset" gauge: the stored reset time (converted to hours when scraped), or
  removed when the row has none;
- team members (teams): the member count when known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aggregator.budgets.model import BudgetRow, Counts, finite
from aggregator.schema import MetricSchema, sanitize
from aggregator.state import format_number


@dataclass(frozen=True, slots=True)
class KindMetrics:
    remaining: str
    max_budget: str
    hours: str
    members: str | None = None


KIND_METRICS: Mapping[str, KindMetrics] = {
    "keys": KindMetrics(
        "litellm_remaining_api_key_budget_metric",
        "litellm_api_key_max_budget_metric",
        "litellm_api_key_budget_remaining_hours_metric",
    ),
    "teams": KindMetrics(
        "litellm_remaining_team_budget_metric",
        "litellm_team_max_budget_metric",
        "litellm_team_budget_remaining_hours_metric",
        "litellm_team_members_metric",
    ),
    "users": KindMetrics(
        "litellm_remaining_user_budget_metric",
        "litellm_user_max_budget_metric",
        "litellm_user_budget_remaining_hours_metric",
    ),
    "orgs": KindMetrics(
        "litellm_remaining_org_budget_metric",
        "litellm_org_max_budget_metric",
        "litellm_org_budget_remaining_hours_metric",
    ),
    "customers": KindMetrics(
        "litellm_remaining_customer_budget_metric",
        "litellm_customer_max_budget_metric",
        "litellm_customer_budget_remaining_hours_metric",
    ),
}
COUNT_METRICS = ("litellm_total_users", "litellm_active_users", "litellm_teams_count")

#: One gauge write: (metric key, series field, value text or None to remove).
Op = tuple[str, str, str | None]


def _labels(kind: str, row: BudgetRow) -> dict[str, str]:
    """Label values as LiteLLM's budget code passes them: aliases (and e-mail) ``""`` when unset."""
    if kind == "keys":
        return {"hashed_api_key": sanitize(row.entity_id), "api_key_alias": sanitize(row.alias or "")}
    if kind == "teams":
        return {"team": sanitize(row.entity_id), "team_alias": sanitize(row.alias or "")}
    if kind == "users":
        return {
            "user": sanitize(row.entity_id),
            "user_email": sanitize(row.email or ""),
            "user_alias": sanitize(row.alias or ""),
        }
    if kind == "orgs":
        return {"org_id": sanitize(row.entity_id), "org_alias": sanitize(row.alias or "")}
    if kind == "customers":
        return {"end_user": sanitize(row.entity_id)}
    raise ValueError(f"unknown entity kind {kind!r}")


class GaugeBuilder:
    """Gauge writes for one metrics configuration."""

    def __init__(self, schema: MetricSchema) -> None:
        self.schema = schema
        #: Rows whose value of a label had to be truncated (LSM_MAX_LABEL_VALUE_LENGTH), by label
        #: name, since ``take_truncated`` was last called.
        self.truncated: dict[str, int] = {}

    def take_truncated(self) -> dict[str, int]:
        """The truncation counts gathered so far (and start counting afresh)."""
        counts, self.truncated = self.truncated, {}
        return counts

    def metric_keys(self, kind: str) -> list[str]:
        """Metric keys of the enabled gauges a refresh of ``kind`` owns (and sweeps)."""
        km = KIND_METRICS[kind]
        names = [km.remaining, km.max_budget, km.hours] + ([km.members] if km.members else [])
        return [mk for n in names if (mk := self.schema.metric_key(n)) is not None]

    def enabled(self, kind: str) -> bool:
        """Whether a refresh of ``kind`` has anything to do. Customer gauges need LiteLLM's
        end-user opt-in, as in LiteLLM (without it ``end_user`` is never a real id)."""
        if kind == "customers" and not self.schema.config.end_user_tracking:
            return False
        return bool(self.metric_keys(kind))

    def counts_enabled(self) -> bool:
        return any(self.schema.metric_key(n) is not None for n in COUNT_METRICS)

    def _series(
        self, name: str, labels: Mapping[str, str], truncated: set[str] | None = None
    ) -> tuple[str, str] | None:
        mkey = self.schema.metric_key(name)
        if mkey is None:
            return None
        # The engine's own rule (label order, defaults "None"/"false" for the custom metadata and
        # tag labels LiteLLM adds to budget gauges, long values truncated), so both paths write
        # the same field.
        series = self.schema.series(name, labels, truncated)
        return None if series is None else (mkey, series)

    def row_ops(self, kind: str, rows: Iterable[BudgetRow]) -> list[Op]:
        km = KIND_METRICS[kind]
        ops: list[Op] = []
        for row in rows:
            labels = _labels(kind, row)
            spend, max_budget = finite(row.spend), finite(row.max_budget)
            remaining = None if spend is None or max_budget is None else max_budget - spend
            values: list[tuple[str, float | None]] = [
                (km.max_budget, max_budget),
                (km.remaining, remaining),
                (km.hours, finite(row.reset_at)),
            ]
            if km.members is not None and row.members is not None:
                values.append((km.members, float(row.members)))
            truncated: set[str] = set()
            for name, value in values:
                target = self._series(name, labels, truncated)
                if target is not None:
                    ops.append((target[0], target[1], None if value is None else format_number(value)))
            for label in truncated:
                self.truncated[label] = self.truncated.get(label, 0) + 1
        return ops

    def count_ops(self, counts: Counts) -> list[Op]:
        ops: list[Op] = []
        for name, value in zip(COUNT_METRICS, (counts.total_users, counts.active_users, counts.teams), strict=True):
            target = self._series(name, {})
            if target is not None and value is not None:
                ops.append((target[0], target[1], format_number(float(value))))
        return ops
