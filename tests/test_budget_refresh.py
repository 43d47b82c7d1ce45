"""The budget refresh job in-process, against a real PostgreSQL with LiteLLM's schema (created
from litellm-proxy-extras' migrations) and a real Redis: values, labels, deletions, the
reconciliation with per-request values, fencing, and a database that is down or slow."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio as aioredis
import yaml
from prometheus_client import CollectorRegistry

from aggregator.apply import PendingEntry, ShardApplier
from aggregator.budgets.jobs import BudgetJobs
from aggregator.budgets.model import BudgetSource, Counts, Page
from aggregator.budgets.source_db import DatabaseSource, libpq_url
from aggregator.budgets.writer import Fenced, FencedWriter
from aggregator.engine import Engine
from aggregator.lease import Lease
from aggregator.litellm_config import MetricsConfig
from aggregator.settings import AggregatorConfigError, AggregatorSettings
from aggregator.snapshot import read_families
from producer.keys import Keys
from tests.budget_db import LiteLLMDb, TcpProxy, engine_of, stored_gauge, stored_times, writes_log
from tests.events import entry_fields
from tests.test_engine import budget, success

KEY_REMAINING = "litellm_remaining_api_key_budget_metric"
KEY_MAX = "litellm_api_key_max_budget_metric"
KEY_HOURS = "litellm_api_key_budget_remaining_hours_metric"
TEAM_REMAINING = "litellm_remaining_team_budget_metric"
TEAM_MAX = "litellm_team_max_budget_metric"
TEAM_HOURS = "litellm_team_budget_remaining_hours_metric"
TEAM_MEMBERS = "litellm_team_members_metric"
USER_REMAINING = "litellm_remaining_user_budget_metric"
USER_MAX = "litellm_user_max_budget_metric"
ORG_REMAINING = "litellm_remaining_org_budget_metric"
ORG_MAX = "litellm_org_max_budget_metric"
ORG_HOURS = "litellm_org_budget_remaining_hours_metric"
CUST_REMAINING = "litellm_remaining_customer_budget_metric"
CUST_MAX = "litellm_customer_max_budget_metric"
CUST_HOURS = "litellm_customer_budget_remaining_hours_metric"
RESET = 1_900_000_000.0  # 2030-03-17


def h(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@pytest.fixture
def db(litellm_db: str) -> Iterator[LiteLLMDb]:
    d = LiteLLMDb(litellm_db)
    yield d
    d.close()


def make_settings(redis_url: str, namespace: str, database_url: str, **kw: Any) -> AggregatorSettings:
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "namespace": namespace,
        "database_url": database_url,
        "consumer_name": "test",
        "budget_refresh_interval_seconds": 0.1,
        "budget_lease_seconds": 10,
        "budget_page_size": 3,  # several pages even with a handful of rows
        "budget_source_timeout": 5,
        "budget_connect_timeout": 2,
    }
    base.update(kw)
    return AggregatorSettings(**base)


def make_jobs(
    aclient: aioredis.Redis,
    settings: AggregatorSettings,
    litellm_settings: dict[str, Any] | None = None,
    source: BudgetSource | None = None,
) -> BudgetJobs:
    engine = Engine(MetricsConfig.from_litellm_settings(litellm_settings or {}))
    return BudgetJobs(settings, engine.schema, CollectorRegistry(), client=aclient, source=source)


async def refresh(jobs: BudgetJobs, expect: str = "success") -> Any:
    await asyncio.sleep(jobs.interval / 2 + 0.01)  # past the "another process just did it" window
    report = await jobs.tick()
    assert report.outcome == expect, report
    return report


def sample(jobs: BudgetJobs, name: str, **labels: str) -> float:
    value = jobs.registry.get_sample_value(name, labels or None)
    assert value is not None, name
    return float(value)


async def apply_events(
    aclient: aioredis.Redis,
    namespace: str,
    engine: Engine,
    events: list[dict[str, Any]],
    shard: int = 0,
    seq: int = 1,
    **applier: Any,
) -> None:
    """Through the real event path: a stream entry, the consumer group, the apply script."""
    keys = Keys(namespace, 2)
    stream = keys.stream(shard)
    with contextlib.suppress(redis.ResponseError):
        await aclient.xgroup_create(stream, "g", id="0", mkstream=True)
    await aclient.xadd(stream, entry_fields("p", seq, events))
    raw = await aclient.xreadgroup("g", "c", {stream: ">"})
    batch = [PendingEntry(eid.decode(), "p", seq, events) for eid, _ in raw[0][1]]
    result = await ShardApplier(aclient, keys, shard, "g", "c", **applier).apply(
        batch, [], engine.build_delta, time.time()
    )
    assert result.applied_entries == 1


# -- values ----------------------------------------------------------------------------------------


async def test_values_equal_the_database(
    db: LiteLLMDb, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    db.add_team("t1", alias="Team One", spend=20.0, max_budget=200.0, reset_at=RESET, members=3)
    db.add_team("t2", spend=1.0)  # no budget, no alias
    db.add_key(h("k1"), alias="one", team_id="t1", spend=10.0, max_budget=100.0, reset_at=RESET)
    db.add_key(h("k2"), spend=5.0, max_budget=50.0)  # no team: LiteLLM never emits it (#37292)
    db.add_key(h("k3"), alias='we"ird\nalias', spend=1.5)  # no max budget
    db.add_key(h("ui"), team_id="litellm-dashboard", spend=1.0, max_budget=10.0)  # UI session key
    for i in range(4):
        db.add_key(h(f"bulk{i}"), spend=float(i), max_budget=10.0)
    db.add_user("u1", alias="Ursula", email="u1@example.com", spend=3.0, max_budget=30.0, reset_at=RESET)
    db.add_user("u2", metadata={"scim_active": False})
    db.add_budget("b-org", 1000.0, reset_at=RESET)
    db.add_org("o1", "Org One", "b-org", spend=250.0)
    jobs = make_jobs(aclient, make_settings(redis_url, namespace, db.url))

    report = await refresh(jobs)
    assert report.rows == {"keys": 7, "teams": 2, "users": 2, "orgs": 1}

    engine = engine_of(jobs)
    assert stored_gauge(redis_client, namespace, engine, KEY_REMAINING) == {
        (h("k1"), "one"): 90.0,
        (h("k2"), ""): 45.0,
        **{(h(f"bulk{i}"), ""): 10.0 - i for i in range(4)},
    }
    assert stored_gauge(redis_client, namespace, engine, KEY_MAX) == {
        (h("k1"), "one"): 100.0,
        (h("k2"), ""): 50.0,
        **{(h(f"bulk{i}"), ""): 10.0 for i in range(4)},
    }
    # The reset time is stored; hours are computed when scraped.
    assert stored_gauge(redis_client, namespace, engine, KEY_HOURS) == {(h("k1"), "one"): RESET}
    assert stored_gauge(redis_client, namespace, engine, TEAM_REMAINING) == {("t1", "Team One"): 180.0}
    assert stored_gauge(redis_client, namespace, engine, TEAM_MAX) == {("t1", "Team One"): 200.0}
    assert stored_gauge(redis_client, namespace, engine, TEAM_HOURS) == {("t1", "Team One"): RESET}
    assert stored_gauge(redis_client, namespace, engine, TEAM_MEMBERS) == {("t1", "Team One"): 3.0, ("t2", ""): 0.0}
    assert stored_gauge(redis_client, namespace, engine, USER_REMAINING) == {("u1",): 27.0}
    assert stored_gauge(redis_client, namespace, engine, USER_MAX) == {("u1",): 30.0}
    assert stored_gauge(redis_client, namespace, engine, ORG_REMAINING) == {("o1", "Org One"): 750.0}
    assert stored_gauge(redis_client, namespace, engine, ORG_MAX) == {("o1", "Org One"): 1000.0}
    assert stored_gauge(redis_client, namespace, engine, ORG_HOURS) == {("o1", "Org One"): RESET}
    assert stored_gauge(redis_client, namespace, engine, "litellm_total_users") == {(): 2.0}
    assert stored_gauge(redis_client, namespace, engine, "litellm_active_users") == {(): 1.0}
    assert stored_gauge(redis_client, namespace, engine, "litellm_teams_count") == {(): 2.0}

    # As exported: label values rendered like LiteLLM's, hours from now.
    families = read_families(redis_client, Keys(namespace), engine.schema)
    now = time.time()
    hours = families[KEY_HOURS].samples(now)
    assert [(s[1], round(s[2], 6)) for s in hours] == [
        ({"hashed_api_key": h("k1"), "api_key_alias": "one"}, round((RESET - now) / 3600, 6))
    ]
    # The UI session key and the key without a max budget have no remaining/max series at all.
    assert all(s[1]["hashed_api_key"] not in (h("ui"), h("k3")) for s in families[KEY_REMAINING].samples(now))

    # The run is recorded: status per kind, fenced writes in the audit stream with this epoch.
    assert sample(jobs, "lsm_budget_runs_total", outcome="success") == 1
    assert sample(jobs, "lsm_budget_rows_read_total", kind="keys") == 7
    assert sample(jobs, "lsm_budget_staleness_seconds", kind="keys") < 5
    assert {w["epoch"] for w in writes_log(redis_client, namespace)} == {report.epoch}


async def test_labels_and_customers_follow_the_proxy_config(
    db: LiteLLMDb, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    db.add_user("u1", alias="Ursula", email="u1@example.com", spend=3.0, max_budget=30.0)
    db.add_user("u2", spend=1.0, max_budget=5.0)
    db.add_budget("b-own", 40.0, reset_at=RESET)
    db.add_budget("b-default", 10.0)
    db.add_customer("c-own", spend=4.0, budget_id="b-own")
    db.add_customer("c-default", spend=2.5)
    litellm_settings = {
        "prometheus_user_budget_label_include_email_alias": True,
        "enable_end_user_cost_tracking_prometheus_only": True,
        "custom_prometheus_metadata_labels": ["metadata.tenant"],
        "max_end_user_budget_id": "b-default",
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"litellm_settings": litellm_settings}))
    settings = make_settings(redis_url, namespace, db.url, litellm_config=str(config))
    jobs = make_jobs(aclient, settings, litellm_settings)
    await refresh(jobs)
    engine = engine_of(jobs)
    # LiteLLM's label order: custom metadata labels before the user e-mail and alias.
    assert engine.label_names(USER_REMAINING) == ("user", "metadata_tenant", "user_email", "user_alias")
    assert stored_gauge(redis_client, namespace, engine, USER_REMAINING) == {
        ("u1", "None", "u1@example.com", "Ursula"): 27.0,
        ("u2", "None", "", ""): 4.0,
    }
    # Customers: their own budget, else the proxy's default customer budget.
    assert stored_gauge(redis_client, namespace, engine, CUST_REMAINING) == {
        ("c-own", "None"): 36.0,
        ("c-default", "None"): 7.5,
    }
    assert stored_gauge(redis_client, namespace, engine, CUST_MAX) == {
        ("c-own", "None"): 40.0,
        ("c-default", "None"): 10.0,
    }
    assert stored_gauge(redis_client, namespace, engine, CUST_HOURS) == {("c-own", "None"): RESET}

    # Without a default budget only customers with a budget count; without the end-user opt-in none.
    jobs2 = make_jobs(aclient, make_settings(redis_url, namespace + "b", db.url), litellm_settings)
    await refresh(jobs2)
    assert stored_gauge(redis_client, namespace + "b", engine, CUST_REMAINING) == {("c-own", "None"): 36.0}
    jobs3 = make_jobs(aclient, make_settings(redis_url, namespace + "c", db.url))
    assert "customers" not in jobs3.kinds
    await refresh(jobs3)
    for ns in (namespace + "b", namespace + "c"):
        for key in redis_client.scan_iter(match=f"{ns}:*"):
            redis_client.delete(key)


# -- one series per entity, newest value wins --------------------------------------------------------


async def test_database_and_events_write_the_same_series_and_the_newest_wins(
    db: LiteLLMDb, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    key = h("sk-shared")
    db.add_key(key, alias="shared", team_id="team-1", spend=7.0, max_budget=10.0, reset_at=RESET)
    db.add_team("team-1", alias="Team One", spend=5.0, max_budget=50.0)
    jobs = make_jobs(aclient, make_settings(redis_url, namespace, db.url))
    engine = engine_of(jobs)
    event = success(hashed_api_key=key, api_key_alias="shared", user=None, org_id=None, response_cost=0.5)
    # An older request (its spend 2.0 + 0.5): the database read afterwards is newer and wins.
    await apply_events(aclient, namespace, engine, [{**event, "t": time.time() - 60}], seq=1)
    assert stored_gauge(redis_client, namespace, engine, KEY_REMAINING) == {(key, "shared"): 7.5}
    await refresh(jobs)
    assert stored_gauge(redis_client, namespace, engine, KEY_REMAINING) == {(key, "shared"): 3.0}
    assert stored_gauge(redis_client, namespace, engine, TEAM_REMAINING) == {("team-1", "Team One"): 45.0}
    # A request newer than the read wins over it, and a later refresh does not undo that unless
    # the database has been read after the request.
    newer = {**event, "t": time.time() + 30, "budget": budget(user_api_key_spend=8.0)}
    await apply_events(aclient, namespace, engine, [newer], seq=2)
    assert stored_gauge(redis_client, namespace, engine, KEY_REMAINING) == {(key, "shared"): 1.5}
    await refresh(jobs)
    assert stored_gauge(redis_client, namespace, engine, KEY_REMAINING) == {(key, "shared"): 1.5}
    # Still one series per key and metric (same metric key, labels, label rendering).
    assert len(redis_client.hgetall(Keys(namespace).metric(0, "g", engine.metric_key(KEY_MAX) or ""))) == 1


async def test_long_aliases_are_cut_like_the_event_path_cuts_them(
    db: LiteLLMDb, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    key, alias = h("sk-long"), "team alias " + "x" * 5000
    db.add_key(key, alias=alias, team_id="team-1", spend=7.0, max_budget=10.0)
    db.add_team("team-1", alias=alias, spend=5.0, max_budget=50.0)
    jobs = make_jobs(aclient, make_settings(redis_url, namespace, db.url))
    engine = engine_of(jobs)
    event = success(hashed_api_key=key, api_key_alias=alias, team_alias=alias, user=None, org_id=None)
    await apply_events(aclient, namespace, engine, [{**event, "t": time.time() - 60}], seq=1)
    await refresh(jobs)
    # One series per key and team: the refresh cut the alias exactly as the event did.
    [(stored_key, cut)] = stored_gauge(redis_client, namespace, engine, KEY_REMAINING)
    assert stored_key == key and len(cut) == 1024 and cut.startswith("team alias xxx") and "...#" in cut
    assert stored_gauge(redis_client, namespace, engine, TEAM_REMAINING) == {("team-1", cut): 45.0}
    # Counted where the event path counts (shard 0 stats): the event, then the key row or the team row.
    stats = redis_client.hgetall(Keys(namespace).shard_stats(0))
    assert int(stats[b"label_truncated:api_key_alias"]) == 2
    assert int(stats[b"label_truncated:team_alias"]) == 2


async def test_deleted_entities_and_unknown_budgets_disappear_from_every_shard(
    db: LiteLLMDb, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    keep, gone, unbudgeted = h("keep"), h("gone"), h("unbudgeted")
    db.add_key(keep, spend=1.0, max_budget=10.0)
    db.add_key(gone, spend=2.0, max_budget=10.0, reset_at=RESET)
    db.add_key(unbudgeted, spend=3.0, max_budget=10.0)
    db.add_team("team-gone", max_budget=5.0)
    db.add_user("user-gone", max_budget=5.0)
    jobs = make_jobs(aclient, make_settings(redis_url, namespace, db.url, shards=2))
    engine = engine_of(jobs)
    # Per-request values of the same keys arrived on shard 1 (another producer's shard) earlier.
    old = time.time() - 30
    for i, k in enumerate((gone, unbudgeted)):
        ev = success(hashed_api_key=k, api_key_alias=None, team=None, user=None, org_id=None, t=old)
        await apply_events(aclient, namespace, engine, [ev], shard=1, seq=i + 1)
    assert set(stored_gauge(redis_client, namespace, engine, KEY_REMAINING, shard=1)) == {(gone, ""), (unbudgeted, "")}
    await refresh(jobs)
    assert set(stored_gauge(redis_client, namespace, engine, KEY_REMAINING)) == {
        (keep, ""),
        (gone, ""),
        (unbudgeted, ""),
    }

    db.execute('DELETE FROM "LiteLLM_VerificationToken" WHERE token = %s', (gone,))
    db.execute('UPDATE "LiteLLM_VerificationToken" SET max_budget = NULL WHERE token = %s', (unbudgeted,))
    db.execute('DELETE FROM "LiteLLM_TeamTable"')
    db.execute('DELETE FROM "LiteLLM_UserTable"')
    report = await refresh(jobs)
    for shard in (0, 1):
        assert set(stored_gauge(redis_client, namespace, engine, KEY_REMAINING, shard)) <= {(keep, "")}
        assert set(stored_gauge(redis_client, namespace, engine, KEY_MAX, shard)) <= {(keep, "")}
        assert stored_gauge(redis_client, namespace, engine, KEY_HOURS, shard) == {}
    assert stored_gauge(redis_client, namespace, engine, TEAM_MAX) == {}
    assert stored_gauge(redis_client, namespace, engine, TEAM_MEMBERS) == {}
    assert stored_gauge(redis_client, namespace, engine, USER_MAX) == {}
    assert report.writes.removed >= 9
    families = read_families(redis_client, Keys(namespace, 2), engine.schema)
    assert [s[1]["hashed_api_key"] for s in families[KEY_REMAINING].samples(time.time())] == [keep]
    # A late request of the deleted key, older than the removal, does not bring it back...
    late = success(hashed_api_key=gone, api_key_alias=None, team=None, user=None, org_id=None, t=time.time() - 5)
    await apply_events(aclient, namespace, engine, [late], shard=0, seq=3)
    assert (gone, "") not in stored_gauge(redis_client, namespace, engine, KEY_REMAINING)
    # ...and the removal record is forgotten after the tombstone time.
    gone_field = f'["{gone}",""]'
    assert gone_field in stored_times(redis_client, namespace, engine, KEY_REMAINING)
    forget = make_jobs(aclient, make_settings(redis_url, namespace, db.url, shards=2, budget_tombstone_seconds=0))
    await refresh(forget)
    assert gone_field not in stored_times(redis_client, namespace, engine, KEY_REMAINING)


# -- fencing ---------------------------------------------------------------------------------------


class PausingSource:
    """The real database source, paused after its first page until ``resume`` is set: a refresh
    frozen mid-run, like a paused process."""

    def __init__(self, inner: DatabaseSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def pages(self, kind: str) -> AsyncIterator[Page]:
        async for page in self.inner.pages(kind):
            yield page
            if not self.paused.is_set():
                self.paused.set()
                await self.resume.wait()

    async def counts(self) -> Counts:
        return await self.inner.counts()


async def test_a_former_holder_cannot_overwrite_newer_values(
    db: LiteLLMDb, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    for i in range(6):
        db.add_key(h(f"k{i}"), spend=1.0, max_budget=10.0)
    settings = make_settings(redis_url, namespace, db.url, budget_lease_seconds=30)
    source = PausingSource(DatabaseSource(db.url, page_size=3))
    frozen = make_jobs(aclient, settings, source=source)
    run = asyncio.create_task(frozen.tick())
    await asyncio.wait_for(source.paused.wait(), 10)
    # The lease disappears from Redis (expiry while frozen, a failover...) and another process
    # refreshes with new values.
    keys = Keys(namespace)
    await aclient.delete(keys.lease("budget"))
    db.execute('UPDATE "LiteLLM_VerificationToken" SET spend = 4.0')
    other = make_jobs(aclient, settings)
    await asyncio.sleep(0.06)
    assert (await other.tick()).outcome == "success"
    engine = engine_of(frozen)
    fresh = stored_gauge(redis_client, namespace, engine, KEY_REMAINING)
    assert set(fresh.values()) == {6.0}
    # The frozen one resumes, still believing in its lease: its next write is refused in Redis.
    assert frozen.kinds and run.done() is False
    source.resume.set()
    report = await asyncio.wait_for(run, 10)
    assert report.outcome == "lease_lost"
    assert sample(frozen, "lsm_budget_fenced_writes_rejected_total") == 1
    assert sample(frozen, "lsm_budget_lease_losses_total") == 1
    assert stored_gauge(redis_client, namespace, engine, KEY_REMAINING) == fresh
    epochs = [w["epoch"] for w in writes_log(redis_client, namespace)]
    assert epochs == sorted(epochs) and epochs[0] < epochs[-1]


async def test_writer_refuses_with_a_stale_epoch(
    aclient: aioredis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    writer = FencedWriter(aclient, keys, "w")
    a = Lease(aclient, keys.lease("budget"), 30, "a")
    b = Lease(aclient, keys.lease("budget"), 30, "b")
    assert await a.acquire()
    await writer.write(a, "keys", 100.0, [("m:1", '["x"]', "1")])
    await aclient.delete(a.key)
    assert await b.acquire()
    await writer.write(b, "keys", 50.0, [("m:1", '["y"]', "2")])
    with pytest.raises(Fenced):
        await writer.write(a, "keys", 200.0, [("m:1", '["x"]', "3"), ("m:1", '["y"]', None)])
    assert redis_client.hgetall(keys.metric(0, "g", "m:1")) == {b'["x"]': b"1", b'["y"]': b"2"}


# -- a database that is down or slow -------------------------------------------------------------------


async def test_database_down_keeps_values_shows_staleness_and_recovers(
    db: LiteLLMDb, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    db.add_key(h("k"), spend=1.0, max_budget=10.0)
    db.add_team("t", spend=1.0, max_budget=10.0)
    proxy = TcpProxy(db.url)
    try:
        jobs = make_jobs(aclient, make_settings(redis_url, namespace, proxy.url_for(db.url)))
        engine = engine_of(jobs)
        await refresh(jobs)
        before = stored_gauge(redis_client, namespace, engine, KEY_REMAINING)
        assert before == {(h("k"), ""): 9.0}
        proxy.down()
        db.execute('UPDATE "LiteLLM_VerificationToken" SET spend = 2.0')
        await refresh(jobs, expect="error")
        await refresh(jobs, expect="error")
        assert sample(jobs, "lsm_budget_source_errors_total", kind="keys") == 2
        assert sample(jobs, "lsm_budget_runs_total", outcome="error") == 2
        assert stored_gauge(redis_client, namespace, engine, KEY_REMAINING) == before  # last values kept
        stale = sample(jobs, "lsm_budget_staleness_seconds", kind="keys")
        await asyncio.sleep(0.3)
        assert sample(jobs, "lsm_budget_staleness_seconds", kind="keys") >= stale + 0.3
        proxy.up()
        await refresh(jobs)
        assert stored_gauge(redis_client, namespace, engine, KEY_REMAINING) == {(h("k"), ""): 8.0}
        assert sample(jobs, "lsm_budget_staleness_seconds", kind="keys") < 2
    finally:
        proxy.close()


async def test_slow_table_fails_alone_and_recovers(
    db: LiteLLMDb, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    db.add_key(h("k"), spend=1.0, max_budget=10.0)
    db.add_team("t", spend=1.0, max_budget=10.0)
    jobs = make_jobs(aclient, make_settings(redis_url, namespace, db.url, budget_source_timeout=0.5))
    engine = engine_of(jobs)
    await refresh(jobs)
    keys_success = sample(jobs, "lsm_budget_last_success_timestamp_seconds", kind="keys")
    locker = psycopg.connect(db.url)
    try:
        locker.execute('LOCK TABLE "LiteLLM_VerificationToken" IN ACCESS EXCLUSIVE MODE')
        db.execute('UPDATE "LiteLLM_TeamTable" SET spend = 3.0')
        report = await refresh(jobs, expect="partial")
        assert set(report.errors) == {"keys"} and "timeout" in report.errors["keys"]
        assert sample(jobs, "lsm_budget_source_errors_total", kind="keys") == 1
        assert stored_gauge(redis_client, namespace, engine, KEY_REMAINING) == {(h("k"), ""): 9.0}
        assert stored_gauge(redis_client, namespace, engine, TEAM_REMAINING) == {("t", ""): 7.0}
        assert sample(jobs, "lsm_budget_last_success_timestamp_seconds", kind="keys") == keys_success
    finally:
        locker.rollback()
        locker.close()
    db.execute('UPDATE "LiteLLM_VerificationToken" SET spend = 5.0')
    await refresh(jobs)
    assert stored_gauge(redis_client, namespace, engine, KEY_REMAINING) == {(h("k"), ""): 5.0}
    assert sample(jobs, "lsm_budget_last_success_timestamp_seconds", kind="keys") > keys_success


# -- configuration -----------------------------------------------------------------------------------


def test_settings_read_litellm_variables() -> None:
    env = {
        "DATABASE_URL": "postgresql://u:p@db:5432/litellm?schema=litellm&connection_limit=5",
        "PROMETHEUS_BUDGET_METRICS_REFRESH_INTERVAL_MINUTES": "2",
    }
    s = AggregatorSettings.load(env)
    assert s.effective_budget_source == "database"
    assert s.budget_refresh_interval_seconds == 120.0
    assert s.database_url is not None and "p@db" in s.database_url.get_secret_value()
    assert "p@db" not in repr(s)  # a secret
    s2 = AggregatorSettings.load(
        {**env, "LSM_DATABASE_URL": "postgresql://other/db", "LSM_BUDGET_REFRESH_INTERVAL_SECONDS": "7"}
    )
    assert s2.database_url is not None and s2.database_url.get_secret_value() == "postgresql://other/db"
    assert s2.budget_refresh_interval_seconds == 7.0
    assert AggregatorSettings.load({}).effective_budget_source == "none"
    assert AggregatorSettings.load({}).budget_refresh_interval_seconds == 300.0
    api = {"LSM_LITELLM_API_BASE": "http://proxy:4000", "LSM_LITELLM_MASTER_KEY": "sk-1234"}
    assert AggregatorSettings.load(api).effective_budget_source == "api"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LSM_BUDGET_SOURCE": "db"}, "LSM_BUDGET_SOURCE"),
        ({"LSM_BUDGET_SOURCE": "database"}, "needs database_url"),
        ({"LSM_BUDGET_SOURCE": "api", "LSM_LITELLM_API_BASE": "http://x"}, "litellm_master_key"),
        ({"LSM_DATABASE_URL": "mysql://x/y"}, "LSM_DATABASE_URL"),
        ({"PROMETHEUS_BUDGET_METRICS_REFRESH_INTERVAL_MINUTES": "five"}, "PROMETHEUS_BUDGET_METRICS"),
        ({"LSM_BUDGET_LEASE_SECONDS": "0"}, "LSM_BUDGET_LEASE_SECONDS"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(AggregatorConfigError, match=message):
        AggregatorSettings.load(env)


def test_prisma_url_parameters(litellm_db: str) -> None:
    url, schema = libpq_url("postgresql://u:p@h:5/db?schema=litellm&connection_limit=5&pool_timeout=3&sslmode=require")
    assert (url, schema) == ("postgresql://u:p@h:5/db?sslmode=require", "litellm")
    # LiteLLM's own URL form (Prisma parameters) connects after the conversion.
    sep = "&" if "?" in litellm_db else "?"
    real, schema = libpq_url(f"{litellm_db}{sep}schema=public&connection_limit=5&pool_timeout=10")
    assert schema == "public"
    with psycopg.connect(real) as conn:
        assert conn.execute('SELECT count(*) FROM "LiteLLM_VerificationToken"').fetchone() == (0,)


async def test_schema_search_path(db: LiteLLMDb, aclient: aioredis.Redis, redis_url: str, namespace: str) -> None:
    db.execute("ALTER SCHEMA public RENAME TO litellm")
    db.execute("CREATE SCHEMA public")
    db.execute(
        'INSERT INTO litellm."LiteLLM_VerificationToken" (token, spend, max_budget) VALUES (%s, 1, 3)', (h("s"),)
    )
    sep = "&" if "?" in db.url else "?"
    jobs = make_jobs(aclient, make_settings(redis_url, namespace, f"{db.url}{sep}schema=litellm"))
    report = await refresh(jobs)
    assert report.rows["keys"] == 1


def test_unknown_values_are_never_reported() -> None:
    from aggregator.budgets.gauges import GaugeBuilder
    from aggregator.budgets.model import BudgetRow

    builder = GaugeBuilder(Engine(MetricsConfig.from_litellm_settings({})).schema)
    ops = builder.row_ops(
        "keys", [BudgetRow("k", spend=None, max_budget=10.0), BudgetRow("j", spend=1, max_budget=math.nan)]
    )
    by_metric = {(mkey.split(":")[0], field): value for mkey, field, value in ops}
    assert by_metric[(KEY_MAX, '["k",""]')] == "10"
    assert by_metric[(KEY_REMAINING, '["k",""]')] is None  # unknown spend: removed, not "10"
    assert by_metric[(KEY_MAX, '["j",""]')] is None and by_metric[(KEY_REMAINING, '["j",""]')] is None
