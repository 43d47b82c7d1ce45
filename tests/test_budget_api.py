"""The management-API budget source against an HTTP server that answers like LiteLLM 1.110.2's
``/key/list``, ``/v2/team/list``, ``/user/list``, ``/organization/list`` and ``/customer/list``
(response shapes and pagination parameters from LiteLLM's endpoint code; a real proxy with a
database needs Prisma's engine binaries, which cannot be fetched here)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from aggregator.budgets.jobs import BudgetJobs
from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.settings import AggregatorSettings
from tests.budget_db import engine_of, stored_gauge

MASTER_KEY = "sk-master-test"
RESET_ISO = "2030-03-17T17:46:40Z"
RESET = 1_900_000_000.0


class FakeLiteLLM:
    """The listing endpoints over in-memory rows; ``on_page`` runs before each answer."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.teams: list[dict[str, Any]] = []
        self.users: list[dict[str, Any]] = []
        self.orgs: list[dict[str, Any]] = []
        self.customers: list[dict[str, Any]] = []
        self.on_page: Callable[[str, int], None] = lambda path, page: None
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {MASTER_KEY}":
                    self._send(401, {"error": {"message": "Authentication Error, Invalid proxy server token"}})
                    return
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                page = int(q.get("page", 1))
                fake.on_page(url.path, page)
                if url.path == "/key/list":
                    size = int(q.get("size", 10))
                    rows = sorted(fake.keys, key=lambda r: r["token"])
                    rows = [r for r in rows if r.get("team_id") != "litellm-dashboard"]
                    chunk = rows[(page - 1) * size : page * size]
                    body: Any = {
                        "keys": chunk,
                        "total_count": len(rows),
                        "current_page": page,
                        "total_pages": -(-len(rows) // size),
                    }
                elif url.path in ("/v2/team/list", "/user/list"):
                    size = int(q.get("page_size", 10))
                    name, field = ("teams", "team_id") if url.path == "/v2/team/list" else ("users", "user_id")
                    rows = sorted(getattr(fake, name), key=lambda r: r[field])
                    body = {
                        name: rows[(page - 1) * size : page * size],
                        "total": len(rows),
                        "page": page,
                        "page_size": size,
                        "total_pages": -(-len(rows) // size),
                    }
                elif url.path == "/organization/list":
                    body = fake.orgs
                elif url.path == "/customer/list":
                    size = int(q.get("page_size", 50))
                    rows = sorted(fake.customers, key=lambda r: r["user_id"])
                    body = rows[(page - 1) * size : page * size]
                else:
                    self._send(404, {"detail": "Not Found"})
                    return
                self._send(200, body)

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def key(token: str, spend: float, max_budget: float | None, **kw: Any) -> dict[str, Any]:
    """A key as ``/key/list?return_full_object=true`` returns it (a UserAPIKeyAuth dump)."""
    return {
        "token": token,
        "key_alias": None,
        "spend": spend,
        "max_budget": max_budget,
        "budget_reset_at": None,
        "team_id": None,
        "models": [],
        "metadata": {},
        **kw,
    }


@pytest.fixture
def fake() -> Iterator[FakeLiteLLM]:
    f = FakeLiteLLM()
    yield f
    f.close()


def make_jobs(
    aclient: aioredis.Redis, redis_url: str, namespace: str, base: str, master_key: str = MASTER_KEY, page_size: int = 2
) -> BudgetJobs:
    settings = AggregatorSettings(
        redis_url=redis_url,
        namespace=namespace,
        consumer_name="api-test",
        litellm_api_base=base,
        litellm_master_key=master_key,  # type: ignore[arg-type]
        budget_refresh_interval_seconds=0.1,
        budget_page_size=page_size,
        budget_source_timeout=5,
    )
    assert settings.effective_budget_source == "api"
    engine = Engine(MetricsConfig.from_litellm_settings({"enable_end_user_cost_tracking_prometheus_only": True}))
    return BudgetJobs(settings, engine.schema, CollectorRegistry(), client=aclient)


async def refresh(jobs: BudgetJobs) -> Any:
    await asyncio.sleep(0.06)
    return await jobs.tick()


async def test_api_source_values(
    fake: FakeLiteLLM, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    fake.keys = [
        key("k1", 10.0, 100.0, key_alias="one", team_id="t1", budget_reset_at=RESET_ISO),
        key("k2", 5.0, 50.0),
        key("k3", 1.0, None),
        key("ui", 1.0, 10.0, team_id="litellm-dashboard"),
    ]
    fake.teams = [
        {
            "team_id": "t1",
            "team_alias": "Team One",
            "spend": 20.0,
            "max_budget": 200.0,
            "budget_reset_at": RESET_ISO,
            "members_with_roles": [{"user_id": "a", "role": "admin"}, {"user_id": "b", "role": "user"}],
        },
    ]
    fake.users = [
        {
            "user_id": "u1",
            "user_alias": None,
            "user_email": "u1@x",
            "spend": 3.0,
            "max_budget": 30.0,
            "budget_reset_at": None,
            "metadata": {},
        },
        {"user_id": "u2", "spend": 0.0, "max_budget": None, "metadata": {"scim_active": False}},
    ]
    fake.orgs = [
        {
            "organization_id": "o1",
            "organization_alias": "Org",
            "spend": 5.0,
            "litellm_budget_table": {"max_budget": 50.0, "budget_reset_at": RESET_ISO},
        },
    ]
    fake.customers = [
        {"user_id": "c1", "spend": 1.0, "litellm_budget_table": {"max_budget": 4.0, "budget_reset_at": None}},
        {"user_id": "c2", "spend": 1.0, "litellm_budget_table": None},
    ]
    # Customers come without a total: only a listing that fits one page proves absence.
    jobs = make_jobs(aclient, redis_url, namespace, fake.url, page_size=3)
    report = await refresh(jobs)
    assert report.outcome == "success", report
    e = engine_of(jobs)
    assert stored_gauge(redis_client, namespace, e, "litellm_remaining_api_key_budget_metric") == {
        ("k1", "one"): 90.0,
        ("k2", ""): 45.0,
    }
    assert stored_gauge(redis_client, namespace, e, "litellm_api_key_budget_remaining_hours_metric") == {
        ("k1", "one"): RESET
    }
    assert stored_gauge(redis_client, namespace, e, "litellm_remaining_team_budget_metric") == {
        ("t1", "Team One"): 180.0
    }
    assert stored_gauge(redis_client, namespace, e, "litellm_team_members_metric") == {("t1", "Team One"): 2.0}
    assert stored_gauge(redis_client, namespace, e, "litellm_remaining_user_budget_metric") == {("u1",): 27.0}
    assert stored_gauge(redis_client, namespace, e, "litellm_remaining_org_budget_metric") == {("o1", "Org"): 45.0}
    assert stored_gauge(redis_client, namespace, e, "litellm_remaining_customer_budget_metric") == {("c1",): 3.0}
    assert stored_gauge(redis_client, namespace, e, "litellm_total_users") == {(): 2.0}
    assert stored_gauge(redis_client, namespace, e, "litellm_active_users") == {(): 1.0}
    assert stored_gauge(redis_client, namespace, e, "litellm_teams_count") == {(): 1.0}
    # Pages of 3 (LiteLLM's sizes cap at 100), sorted by a unique column, with the master key.
    assert any("/key/list?" in r and "size=3" in r and "sort_by=token" in r for r in fake.requests)


async def test_api_listing_that_changed_keeps_values_and_removes_nothing(
    fake: FakeLiteLLM, aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    fake.keys = [key(f"k{i}", float(i), 10.0) for i in range(5)]
    jobs = make_jobs(aclient, redis_url, namespace, fake.url)
    assert (await refresh(jobs)).outcome == "success"
    name = "litellm_remaining_api_key_budget_metric"
    assert len(stored_gauge(redis_client, namespace, engine_of(jobs), name)) == 5

    # k0 is deleted while page 2 is being read: offset pages shift, k2 is never seen.
    def delete_k0(path: str, page: int) -> None:
        if path == "/key/list" and page == 2:
            fake.keys = [k for k in fake.keys if k["token"] != "k0"]

    fake.on_page = delete_k0
    for k in fake.keys:
        k["spend"] += 1
    report = await refresh(jobs)
    assert report.outcome == "partial" and "changed" in report.errors["keys"]
    values = stored_gauge(redis_client, namespace, engine_of(jobs), name)
    assert ("k2", "") in values  # not seen this time, but absence was not proven: kept
    assert values[("k1", "")] == 8.0  # a value read this time is written
    fake.on_page = lambda path, page: None
    assert (await refresh(jobs)).outcome == "success"
    assert set(stored_gauge(redis_client, namespace, engine_of(jobs), name)) == {(f"k{i}", "") for i in range(1, 5)}


async def test_api_errors_are_counted(
    fake: FakeLiteLLM, aclient: aioredis.Redis, redis_url: str, namespace: str
) -> None:
    jobs = make_jobs(aclient, redis_url, namespace, fake.url, master_key="sk-wrong")
    report = await refresh(jobs)
    assert report.outcome == "error"
    assert "HTTP 401" in report.errors["keys"]
    assert jobs.registry.get_sample_value("lsm_budget_source_errors_total", {"kind": "keys"}) == 1
    assert "sk-wrong" not in json.dumps(report.errors)
