"""LiteLLM's management API as the budget source, for deployments that give the aggregator no
database access: ``/key/list``, ``/v2/team/list``, ``/user/list``, ``/organization/list``,
``/customer/list`` with the proxy's master key (admin view: every entity).

The API paginates by offset (at most 100 rows a page). Values read that way are good, but a
row created or deleted during the listing shifts the pages, so a missing row proves nothing
unless the listing is consistent: the total count did not change between the first and the
last page and the rows seen add up to it. When that cannot be shown the run keeps the values
and leaves the removal of vanished series to a later run (:class:`IncompleteListing`).

Requests run in a worker thread (``urllib``): no HTTP client dependency for an optional source.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode

from aggregator.budgets.model import BudgetRow, Counts, IncompleteListing, Page, SourceError, finite, to_epoch

MAX_PAGE = 100  # LiteLLM's limit on page sizes


def _members(value: object) -> int | None:
    return len(value) if isinstance(value, list) else None


def _budget_table(item: Mapping[str, Any]) -> Mapping[str, Any]:
    table = item.get("litellm_budget_table")
    return table if isinstance(table, Mapping) else {}


class ApiSource:
    name = "api"

    def __init__(self, base_url: str, master_key: str, *, page_size: int = 100, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._master_key = master_key
        self.page_size = max(1, min(page_size, MAX_PAGE))
        self.timeout = timeout
        self._deactivated_users: int | None = None

    async def open(self) -> None:
        self._deactivated_users = None

    async def close(self) -> None:
        return None

    def _get_sync(self, path: str, params: Mapping[str, Any]) -> Any:
        url = f"{self.base_url}{path}?{urlencode(params)}" if params else f"{self.base_url}{path}"
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {self._master_key}", "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read(300).decode(errors="replace")
            raise SourceError(f"GET {path} answered HTTP {exc.code}: {body}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SourceError(f"GET {path} failed: {type(exc).__name__}: {exc}") from None

    async def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(self._get_sync, path, params or {})

    async def _paged(
        self, kind: str, path: str, list_field: str, total_field: str, params: Mapping[str, Any]
    ) -> AsyncIterator[tuple[float, list[Mapping[str, Any]]]]:
        page, seen, first_total = 1, 0, None
        while True:
            read_at = time.time()
            body = await self._get(path, {**params, "page": page, self._size_param(path): self.page_size})
            items = body.get(list_field) if isinstance(body, Mapping) else None
            total = body.get(total_field) if isinstance(body, Mapping) else None
            if not isinstance(items, list) or not isinstance(total, int):
                raise SourceError(f"GET {path}: unexpected answer (no '{list_field}' list or '{total_field}')")
            first_total = total if first_total is None else first_total
            rows = [i for i in items if isinstance(i, Mapping)]
            seen += len(rows)
            yield read_at, rows
            if len(items) < self.page_size or seen >= total:
                break
            page += 1
        # The listing is consistent only if nothing was added or removed meanwhile.
        end = await self._get(path, {**params, "page": 1, self._size_param(path): 1})
        end_total = end.get(total_field) if isinstance(end, Mapping) else None
        if seen != first_total or end_total != first_total:
            raise IncompleteListing(
                f"{kind}: the listing changed while it was read ({first_total} then {end_total} rows, {seen} seen)"
            )

    @staticmethod
    def _size_param(path: str) -> str:
        return "size" if path == "/key/list" else "page_size"

    async def pages(self, kind: str) -> AsyncIterator[Page]:
        if kind == "keys":
            params = {"return_full_object": "true", "sort_by": "token", "sort_order": "asc"}
            async for t, items in self._paged(kind, "/key/list", "keys", "total_count", params):
                yield Page(
                    kind,
                    t,
                    [
                        BudgetRow(
                            str(i["token"]),
                            alias=i.get("key_alias"),
                            spend=finite(i.get("spend")),
                            max_budget=finite(i.get("max_budget")),
                            reset_at=to_epoch(i.get("budget_reset_at")),
                        )
                        for i in items
                        if i.get("token") and i.get("team_id") != "litellm-dashboard"
                    ],
                )
        elif kind == "teams":
            params = {"sort_by": "team_id", "sort_order": "asc"}
            async for t, items in self._paged(kind, "/v2/team/list", "teams", "total", params):
                yield Page(
                    kind,
                    t,
                    [
                        BudgetRow(
                            str(i["team_id"]),
                            alias=i.get("team_alias"),
                            spend=finite(i.get("spend")),
                            max_budget=finite(i.get("max_budget")),
                            reset_at=to_epoch(i.get("budget_reset_at")),
                            members=_members(i.get("members_with_roles")),
                        )
                        for i in items
                        if i.get("team_id")
                    ],
                )
        elif kind == "users":
            deactivated = 0
            params = {"sort_by": "user_id", "sort_order": "asc"}
            async for t, items in self._paged(kind, "/user/list", "users", "total", params):
                rows = []
                for i in items:
                    if not i.get("user_id"):
                        continue
                    meta = i.get("metadata")
                    if isinstance(meta, Mapping) and meta.get("scim_active") is False:
                        deactivated += 1
                    rows.append(
                        BudgetRow(
                            str(i["user_id"]),
                            alias=i.get("user_alias"),
                            email=i.get("user_email"),
                            spend=finite(i.get("spend")),
                            max_budget=finite(i.get("max_budget")),
                            reset_at=to_epoch(i.get("budget_reset_at")),
                        )
                    )
                yield Page(kind, t, rows)
            self._deactivated_users = deactivated
        elif kind == "orgs":
            read_at = time.time()
            body = await self._get("/organization/list")
            if not isinstance(body, list):
                raise SourceError("GET /organization/list: unexpected answer (not a list)")
            rows = [
                BudgetRow(
                    str(i["organization_id"]),
                    alias=i.get("organization_alias"),
                    spend=finite(i.get("spend")),
                    max_budget=finite(_budget_table(i).get("max_budget")),
                    reset_at=to_epoch(_budget_table(i).get("budget_reset_at")),
                )
                for i in body
                if isinstance(i, Mapping) and i.get("organization_id")
            ]
            yield Page(kind, read_at, rows)
        elif kind == "customers":
            page, pages = 1, 0
            while True:
                read_at = time.time()
                body = await self._get("/customer/list", {"page": page, "page_size": self.page_size})
                if not isinstance(body, list):
                    raise SourceError("GET /customer/list: unexpected answer (not a list)")
                rows = [
                    BudgetRow(
                        str(i["user_id"]),
                        alias=i.get("alias"),
                        spend=finite(i.get("spend")),
                        max_budget=finite(_budget_table(i).get("max_budget")),
                        reset_at=to_epoch(_budget_table(i).get("budget_reset_at")),
                    )
                    for i in body
                    if isinstance(i, Mapping) and i.get("user_id") and _budget_table(i)
                ]
                pages += 1
                yield Page(kind, read_at, rows)
                if len(body) < self.page_size:
                    break
                page += 1
            if pages > 1:
                # No total to check an offset listing against.
                raise IncompleteListing("customers: listed over several pages, absence not proven")
        else:
            raise ValueError(f"unknown entity kind {kind!r}")

    async def counts(self) -> Counts:
        read_at = time.time()
        users = await self._get("/user/list", {"page": 1, "page_size": 1})
        teams = await self._get("/v2/team/list", {"page": 1, "page_size": 1})
        total_users = users.get("total") if isinstance(users, Mapping) else None
        total_teams = teams.get("total") if isinstance(teams, Mapping) else None
        if not isinstance(total_users, int) or not isinstance(total_teams, int):
            raise SourceError("counts: unexpected answer from /user/list or /v2/team/list")
        active = None if self._deactivated_users is None else max(0, total_users - self._deactivated_users)
        return Counts(total_users, active, total_teams, read_at)
