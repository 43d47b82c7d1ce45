"""Spend reconciliation (aggregator/budgets/reconcile.py) against a real PostgreSQL with
LiteLLM's schema and a real Redis: events that match the database, then spend the database has
and no event carried (events lost on purpose), spend the database lacks past the flush delay, a
budget reset, and the ``status`` line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from aggregator.budgets.jobs import BudgetJobs
from aggregator.budgets.reconcile import KeyRecord, Summary
from aggregator.status import collect, render
from producer.keys import Keys
from tests.budget_db import LiteLLMDb, engine_of
from tests.test_budget_refresh import apply_events, h, make_jobs, make_settings, refresh
from tests.test_engine import success

FLUSH_DELAY = 1.0
KEY_A, KEY_B = h("sk-a"), h("sk-b")


@pytest.fixture
def db(litellm_db: str) -> Iterator[LiteLLMDb]:
    d = LiteLLMDb(litellm_db)
    yield d
    d.close()


def spend_event(key: str, alias: str, cost: float, **changes: Any) -> dict[str, Any]:
    return success(hashed_api_key=key, api_key_alias=alias, response_cost=cost, t=time.time(), **changes)


class Traffic:
    """Events through the real apply path, spread over both shards."""

    def __init__(self, aclient: aioredis.Redis, namespace: str, jobs: BudgetJobs) -> None:
        self.aclient, self.namespace, self.engine = aclient, namespace, engine_of(jobs)
        self.seq = 0

    async def send(self, *events: dict[str, Any]) -> None:
        for i, event in enumerate(events):
            self.seq += 1
            await apply_events(self.aclient, self.namespace, self.engine, [event], shard=i % 2, seq=self.seq)


def summary(jobs: BudgetJobs) -> Summary:
    assert jobs.reconciled is not None
    return jobs.reconciled


def value(jobs: BudgetJobs, name: str, **labels: str) -> float | None:
    return jobs.registry.get_sample_value(name, labels or None)


def key_missing(jobs: BudgetJobs, key: str, alias: str, side: str) -> float | None:
    return value(jobs, "lsm_spend_reconciliation_key_missing_usd", hashed_api_key=key, api_key_alias=alias, side=side)


async def settled_refresh(jobs: BudgetJobs) -> Summary:
    """A refresh at least the flush delay after the previous one (its snapshots settle)."""
    await asyncio.sleep(FLUSH_DELAY + 0.05)
    await refresh(jobs)
    return summary(jobs)


async def test_matching_spend_then_lost_events_then_a_lagging_database(
    db: LiteLLMDb, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    db.add_key(KEY_A, alias="a", spend=3.0)  # spend from before the pipeline was installed
    db.add_key(KEY_B, alias="b", spend=0.0)
    settings = make_settings(
        redis_url, namespace, db.url, shards=2, reconcile_flush_delay_seconds=FLUSH_DELAY, reconcile_tolerance_usd=0.001
    )
    jobs = make_jobs(aclient, settings)
    traffic = Traffic(aclient, namespace, jobs)
    await traffic.send(spend_event(KEY_A, "a", 1.0))  # counted before the comparison starts

    # First run: the baselines. Nothing to compare yet.
    await refresh(jobs)
    s = summary(jobs)
    assert (s.keys, s.drifted, s.events_usd, s.database_usd) == (2, 0, 0.0, 0.0)

    # Traffic that LiteLLM records too: both sides agree, whatever the shard.
    await traffic.send(*(spend_event(KEY_A, "a", 0.25) for _ in range(4)), spend_event(KEY_B, "b", 0.5))
    db.execute('UPDATE "LiteLLM_VerificationToken" SET spend = spend + 1.0 WHERE token = %s', (KEY_A,))
    db.execute('UPDATE "LiteLLM_VerificationToken" SET spend = spend + 0.5 WHERE token = %s', (KEY_B,))
    s = await settled_refresh(jobs)
    assert s.events_usd == pytest.approx(1.5) and s.database_usd == pytest.approx(1.5)
    assert (s.drifted, s.missing_in_events_usd, s.missing_in_database_usd) == (0, 0.0, 0.0)
    assert value(jobs, "lsm_spend_reconciliation_keys", state="drifted") == 0
    assert value(jobs, "lsm_spend_reconciliation_events_usd") == pytest.approx(1.5)

    # Spend LiteLLM recorded that no event carried (events lost on purpose): seen at once.
    db.execute('UPDATE "LiteLLM_VerificationToken" SET spend = spend + 2.0 WHERE token = %s', (KEY_A,))
    await refresh(jobs)
    s = summary(jobs)
    assert s.missing_in_events_usd == pytest.approx(2.0) and s.drifted == 1
    assert [(k.hashed_api_key, k.api_key_alias) for k in s.top] == [(KEY_A, "a")]
    assert value(jobs, "lsm_spend_reconciliation_missing_usd", side="events") == pytest.approx(2.0)
    assert key_missing(jobs, KEY_A, "a", "events") == pytest.approx(2.0)
    # Another process (not the one that ran the refresh) exports the same, read from Redis.
    other = make_jobs(aclient, settings)
    await other._read_status()
    assert value(other, "lsm_spend_reconciliation_missing_usd", side="events") == pytest.approx(2.0)
    # The status command says so.
    text = render(collect(redis_client, settings, max_age=3600), settings)
    assert "spend reconciliation: 2 keys, 1 drifted; missing in events 2.0000 USD" in text
    assert "warning: spend reconciliation: 1 key(s) differ" in text and "a (events lack 2.0000" in text

    # A budget reset (the database spend goes back to 0) starts the key's comparison again.
    db.execute('UPDATE "LiteLLM_VerificationToken" SET spend = 0 WHERE token = %s', (KEY_A,))
    s = await settled_refresh(jobs)
    assert (s.drifted, s.missing_in_events_usd) == (0, 0.0)
    assert key_missing(jobs, KEY_A, "a", "events") is None

    # Spend counted from events that the database does not have: not reported while it may
    # still be on its way (younger than the flush delay), reported once it is older.
    await traffic.send(spend_event(KEY_B, "b", 0.7))
    for _ in range(2):  # two runs within the flush delay: the second one's previous run saw it
        await refresh(jobs)
        assert summary(jobs).missing_in_database_usd == 0.0
    s = await settled_refresh(jobs)
    s = await settled_refresh(jobs) if s.missing_in_database_usd == 0.0 else s
    assert s.missing_in_database_usd == pytest.approx(0.7) and s.drifted == 1
    assert [k.hashed_api_key for k in s.top] == [KEY_B]
    # LiteLLM writes it late: the difference is gone.
    db.execute('UPDATE "LiteLLM_VerificationToken" SET spend = spend + 0.7 WHERE token = %s', (KEY_B,))
    s = await settled_refresh(jobs)
    assert (s.drifted, s.missing_in_database_usd, s.missing_in_events_usd) == (0, 0.0, 0.0)


async def test_new_keys_start_from_zero_and_unknown_keys_are_named(
    db: LiteLLMDb, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    settings = make_settings(redis_url, namespace, db.url, shards=2, reconcile_flush_delay_seconds=FLUSH_DELAY)
    jobs = make_jobs(aclient, settings)
    traffic = Traffic(aclient, namespace, jobs)
    await refresh(jobs)  # the first run, with no key at all
    # A key created since: all of its spend is compared (nothing was counted before it existed).
    db.add_key(KEY_A, alias="a", spend=0.5)
    await traffic.send(spend_event(KEY_A, "a", 0.5), spend_event(h("sk-deleted"), "gone", 0.25))
    await refresh(jobs)
    s = summary(jobs)
    assert (s.keys, s.drifted, s.events_usd, s.database_usd) == (1, 0, 0.5, 0.5)
    assert (s.not_in_database, s.not_in_database_usd) == (1, 0.25)
    records = Keys(namespace).budget_reconcile()
    record = KeyRecord.decode(redis_client.hget(records, KEY_A) or b"")
    assert record is not None and (record.d0, record.e0, record.d) == (0.0, 0.0, 0.5)
    # A key deleted from the database takes its record with it.
    db.add_key(KEY_B, alias="b", spend=1.0)
    await refresh(jobs)
    assert set(redis_client.hkeys(records)) == {KEY_A.encode(), KEY_B.encode()}
    db.execute('DELETE FROM "LiteLLM_VerificationToken" WHERE token = %s', (KEY_A,))
    await refresh(jobs)
    assert set(redis_client.hkeys(records)) == {KEY_B.encode()}
    assert not redis_client.exists(records + ":next")


async def test_off_without_the_spend_metric_or_when_disabled(
    db: LiteLLMDb, aclient: aioredis.Redis, redis_url: str, namespace: str
) -> None:
    settings = make_settings(redis_url, namespace, db.url)
    off = make_jobs(aclient, settings.model_copy(update={"reconcile_spend": False}))
    assert not off.reconciling and off.reconcile_metrics is None
    no_metric = make_jobs(
        aclient, settings, {"prometheus_metrics_config": [{"group": "g", "metrics": ["litellm_requests_metric"]}]}
    )
    assert not no_metric.reconciling
    on = BudgetJobs(settings, engine_of(make_jobs(aclient, settings)).schema, CollectorRegistry(), client=aclient)
    assert on.reconciling and "keys" in on.kinds
