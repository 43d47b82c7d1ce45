"""LiteLLM's own PostgreSQL database as the budget source (tables as LiteLLM's Prisma schema in
``litellm-proxy-extras`` defines them), read-only.

Reads use keyset pagination on each table's primary key: one short statement per page in its
own implicit transaction (autocommit), so that a million keys neither sit in memory nor hold a
snapshot or locks for the whole refresh. The session is read-only
(``default_transaction_read_only``) with a statement timeout.

Rows are selected as LiteLLM's own refresh selects them, minus its bugs: every key except the
UI's session keys (``team_id = 'litellm-dashboard'``) -- including keys without a team, which
LiteLLM's ``team_id <> ...`` filter drops; every team, user and organization (its budget from
the joined budget table); customers with a budget of their own, or all of them when the proxy
configures a default customer budget (``litellm_settings.max_end_user_budget_id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

import psycopg

from aggregator.budgets.model import BudgetRow, Counts, Page, SourceError, finite, to_epoch
from producer.urls import passwords_in, safe_url

UI_SESSION_TOKEN_TEAM_ID = "litellm-dashboard"  # litellm.constants.UI_SESSION_TOKEN_TEAM_ID

# libpq's URI parameters; Prisma's own (connection_limit, pool_timeout, pgbouncer, schema...)
# make libpq refuse the URL. ``schema`` becomes the search path.
_LIBPQ_PARAMS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "connect_timeout",
        "options",
        "application_name",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "target_session_attrs",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "gssencmode",
        "channel_binding",
    }
)


def libpq_url(url: str) -> tuple[str, str | None]:
    """LiteLLM's (Prisma) DATABASE_URL as a libpq URL, and the schema it names, if any."""
    base, _, query = url.partition("?")
    schema: str | None = None
    kept: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "schema":
            schema = value or None
        elif name in _LIBPQ_PARAMS:
            kept.append((name, value))
    return (f"{base}?{urlencode(kept)}" if kept else base), schema


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_KEYS = """
SELECT token, key_alias, spend, max_budget, budget_reset_at
FROM "LiteLLM_VerificationToken"
WHERE token > %(after)s AND (team_id IS NULL OR team_id <> %(ui)s)
ORDER BY token LIMIT %(n)s
"""
_TEAMS = """
SELECT team_id, team_alias, spend, max_budget, budget_reset_at,
       CASE WHEN jsonb_typeof(members_with_roles) = 'array'
            THEN jsonb_array_length(members_with_roles) ELSE 0 END
FROM "LiteLLM_TeamTable"
WHERE team_id > %(after)s
ORDER BY team_id LIMIT %(n)s
"""
_USERS = """
SELECT user_id, user_alias, user_email, spend, max_budget, budget_reset_at
FROM "LiteLLM_UserTable"
WHERE user_id > %(after)s
ORDER BY user_id LIMIT %(n)s
"""
_ORGS = """
SELECT o.organization_id, o.organization_alias, o.spend, b.max_budget, b.budget_reset_at
FROM "LiteLLM_OrganizationTable" o
LEFT JOIN "LiteLLM_BudgetTable" b ON b.budget_id = o.budget_id
WHERE o.organization_id > %(after)s
ORDER BY o.organization_id LIMIT %(n)s
"""
_CUSTOMERS = """
SELECT e.user_id, e.alias, e.spend, b.budget_id IS NOT NULL, b.max_budget, b.budget_reset_at
FROM "LiteLLM_EndUserTable" e
LEFT JOIN "LiteLLM_BudgetTable" b ON b.budget_id = e.budget_id
WHERE e.user_id > %(after)s AND (%(all)s OR e.budget_id IS NOT NULL)
ORDER BY e.user_id LIMIT %(n)s
"""
_DEFAULT_CUSTOMER_BUDGET = 'SELECT max_budget, budget_reset_at FROM "LiteLLM_BudgetTable" WHERE budget_id = %s'
# LiteLLM: total users; billable ("active") users = total minus those SCIM deactivated
# (metadata.scim_active = false); teams.
_COUNTS = """
SELECT (SELECT count(*) FROM "LiteLLM_UserTable"),
       (SELECT count(*) FROM "LiteLLM_UserTable" WHERE metadata -> 'scim_active' = 'false'::jsonb),
       (SELECT count(*) FROM "LiteLLM_TeamTable")
"""


def _key_row(r: Sequence[Any]) -> BudgetRow:
    return BudgetRow(r[0], alias=r[1], spend=finite(r[2]), max_budget=finite(r[3]), reset_at=to_epoch(r[4]))


def _team_row(r: Sequence[Any]) -> BudgetRow:
    return BudgetRow(
        r[0], alias=r[1], spend=finite(r[2]), max_budget=finite(r[3]), reset_at=to_epoch(r[4]), members=int(r[5])
    )


def _user_row(r: Sequence[Any]) -> BudgetRow:
    return BudgetRow(r[0], alias=r[1], email=r[2], spend=finite(r[3]), max_budget=finite(r[4]), reset_at=to_epoch(r[5]))


def _org_row(r: Sequence[Any]) -> BudgetRow:
    return BudgetRow(r[0], alias=r[1], spend=finite(r[2]), max_budget=finite(r[3]), reset_at=to_epoch(r[4]))


class DatabaseSource:
    """Reads one refresh's pages over one connection (opened per run, so a restarted or failed
    over database is picked up without restarting the aggregator)."""

    name = "database"

    def __init__(
        self,
        url: str,
        *,
        page_size: int = 1000,
        statement_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        default_customer_budget_id: str | None = None,
    ) -> None:
        self.url, self.schema = libpq_url(url)
        self._secrets = passwords_in(url)  # masked in every message (libpq may quote them)
        self.page_size = page_size
        self.statement_timeout = statement_timeout
        self.connect_timeout = connect_timeout
        self.default_customer_budget_id = default_customer_budget_id
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def open(self) -> None:
        options = f"-c default_transaction_read_only=on -c statement_timeout={int(self.statement_timeout * 1000)}"
        if self.schema:
            options += f" -c search_path={_quote_ident(self.schema)}"
        try:
            self._conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=max(2, int(self.connect_timeout)),
                    options=options,
                    application_name="litellm-stream-metrics budget refresh",
                ),
                self.connect_timeout + 1,
            )
        except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
            raise SourceError(f"cannot connect to the LiteLLM database: {_describe(exc, self._secrets)}") from exc

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(conn.close(), 5)

    async def _fetch(self, query: str, params: Any) -> list[tuple[Any, ...]]:
        if self._conn is None:
            await self.open()  # dropped after an error: one new try
        conn = self._conn
        assert conn is not None
        try:
            # The statement timeout covers a slow server; this covers a silent network.
            return await asyncio.wait_for(self._run(conn, query, params), self.statement_timeout + 5)
        except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
            # The connection may be unusable now (cancelled mid-statement): drop it.
            await self.close()
            raise SourceError(f"reading the LiteLLM database failed: {_describe(exc, self._secrets)}") from exc

    @staticmethod
    async def _run(conn: psycopg.AsyncConnection[Any], query: str, params: Any) -> list[tuple[Any, ...]]:
        cur = await conn.execute(query, params)
        return await cur.fetchall()

    async def _keyset(
        self, kind: str, query: str, extra: dict[str, Any], convert: Callable[[Sequence[Any]], BudgetRow]
    ) -> AsyncIterator[Page]:
        after = ""
        while True:
            read_at = time.time()
            rows = await self._fetch(query, {"after": after, "n": self.page_size, **extra})
            # Always one page, even empty: its read time is when the table was seen.
            yield Page(kind, read_at, [convert(r) for r in rows])
            if len(rows) < self.page_size:
                return
            after = rows[-1][0]

    async def pages(self, kind: str) -> AsyncIterator[Page]:
        if kind == "keys":
            async for p in self._keyset(kind, _KEYS, {"ui": UI_SESSION_TOKEN_TEAM_ID}, _key_row):
                yield p
        elif kind == "teams":
            async for p in self._keyset(kind, _TEAMS, {}, _team_row):
                yield p
        elif kind == "users":
            async for p in self._keyset(kind, _USERS, {}, _user_row):
                yield p
        elif kind == "orgs":
            async for p in self._keyset(kind, _ORGS, {}, _org_row):
                yield p
        elif kind == "customers":
            default: tuple[Any, ...] | None = None
            if self.default_customer_budget_id is not None:
                found = await self._fetch(_DEFAULT_CUSTOMER_BUDGET, (self.default_customer_budget_id,))
                default = found[0] if found else None

            def customer(r: Sequence[Any]) -> BudgetRow:
                # LiteLLM: the customer's own budget row, else the default budget row.
                max_budget, reset_at = (r[4], r[5]) if r[3] or default is None else (default[0], default[1])
                return BudgetRow(
                    r[0], alias=r[1], spend=finite(r[2]), max_budget=finite(max_budget), reset_at=to_epoch(reset_at)
                )

            async for p in self._keyset(kind, _CUSTOMERS, {"all": default is not None}, customer):
                yield p
        else:
            raise ValueError(f"unknown entity kind {kind!r}")

    async def counts(self) -> Counts:
        read_at = time.time()
        rows = await self._fetch(_COUNTS, None)
        total, deactivated, teams = rows[0]
        return Counts(int(total), max(0, int(total) - int(deactivated)), int(teams), read_at)


def _describe(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    text = str(exc).strip().splitlines()
    # libpq may quote the connection string it could not use, password included.
    return safe_url(f"{type(exc).__name__}: {text[0] if text else ''}", secrets)
