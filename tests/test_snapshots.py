"""The producer decides which budget snapshots a request carried exactly as LiteLLM's logger
does (its pydantic models, ``from_metadata``), quick path or not, and hands on the validated
values where LiteLLM would have converted them."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any

import pytest
from litellm.types.proxy import carried_budget_state as litellm_snapshots

from producer import snapshots, wire

MODELS = {flag: getattr(litellm_snapshots, model) for flag, model, _ in snapshots.SNAPSHOTS}

# Values a field may hold in request metadata: what auth writes, and what custom code may.
TIMES = [None, "2026-12-01T00:00:00Z", "2026-12-01T00:00:00.123456+02:00", datetime(2026, 1, 2, tzinfo=timezone.utc)]
TIMES += ["2026-12-01", "1700000000", "not a time", "2026-13-45T00:00:00Z", 1700000000, True, [], {}]
NUMBERS = [None, 10.0, 7, "10", "ten", True, float("inf"), [], {}]
TEXTS = [None, "Alice", "", 5, True, []]
KINDS = {snapshots.TIME: TIMES, snapshots.OPTIONAL_NUMBER: NUMBERS, snapshots.NUMBER: NUMBERS}
KINDS[snapshots.OPTIONAL_TEXT] = TEXTS
MISSING = object()


def metadatas() -> list[dict[str, Any]]:
    """For each snapshot, each field alone through every odd value (the others as auth writes
    them), each field missing, and a few with the plain field names."""
    base = {
        "user_api_key_spend": 1.0,
        "user_api_key_budget_reset_at": "2026-12-01T00:00:00Z",
        "user_api_key_team_budget_reset_at": None,
        "user_api_key_team_table_max_budget": 500.0,
        "user_api_key_user_budget_reset_at": "2026-12-31T00:00:00+00:00",
        "user_api_key_user_table_max_budget": None,
        "user_api_key_user_alias": "Ann",
        "user_api_key_org_spend": 3.0,
        "user_api_key_org_max_budget": 100.0,
    }
    out = [dict(base)]
    for _flag, _model, fields in snapshots.SNAPSHOTS:
        for alias, _name, kind in fields:
            for value in [*KINDS[kind], MISSING]:
                md = dict(base)
                if value is MISSING:
                    del md[alias]
                else:
                    md[alias] = value
                out.append(md)
    for plain, value in itertools.product(sorted(snapshots.PLAIN_NAMES), [None, 5.0, "x", "2026-12-01T00:00:00Z"]):
        md = {k: v for k, v in base.items() if "user_alias" not in k}
        md[plain] = value
        out.append(md)
    return out


@pytest.mark.parametrize("md", metadatas(), ids=lambda md: str(len(md)))
def test_the_same_decision_as_litellm(md: dict[str, Any]) -> None:
    budget = [md.get(k) for k in wire.BUDGET_FIELDS]
    flags = dict(zip(wire.BUDGET_FLAGS, snapshots.carried(md, budget), strict=True))
    # Asked again (the decision may now come from the cache of quick decisions): the same.
    again = [md.get(k) for k in wire.BUDGET_FIELDS]
    assert snapshots.carried(md, again) == [flags[f] for f in wire.BUDGET_FLAGS] and again == budget
    for flag, model in MODELS.items():
        snapshot = model.from_metadata(md)
        assert flags[flag] == (snapshot is not None), (flag, md)
        if snapshot is None:
            continue
        # Where LiteLLM converts (a number in text, a time from plain field names), the event
        # carries what LiteLLM uses.
        fields = next(f for fl, _m, f in snapshots.SNAPSHOTS if fl == flag)
        for alias, name, _kind in fields:
            got = budget[wire.BUDGET_FIELDS.index(alias)]
            want = getattr(snapshot, name)
            if isinstance(want, datetime):
                parsed = datetime.fromisoformat(got.replace("Z", "+00:00")) if isinstance(got, str) else got
                assert parsed == want, (flag, name, got, want)
            else:
                assert got == want, (flag, name, got, want)


def test_the_quick_path_decides_what_auth_writes() -> None:
    """Auth's own metadata never needs LiteLLM's models (the hook stays cheap)."""
    md = {
        "user_api_key_budget_reset_at": "2026-12-01T00:00:00Z",
        "user_api_key_team_budget_reset_at": None,
        "user_api_key_team_table_max_budget": 500.0,
        "user_api_key_user_budget_reset_at": "2026-12-31T00:00:00.5+00:00",
        "user_api_key_user_table_max_budget": 3,
        "user_api_key_user_alias": None,
        "user_api_key_org_spend": 3.0,
        "user_api_key_org_max_budget": None,
    }
    calls: list[str] = []
    saved = dict(snapshots._MODELS)
    try:
        for name in ("KeyBudgetSnapshot", "TeamBudgetSnapshot", "UserBudgetSnapshot", "OrgBudgetSnapshot"):
            snapshots._MODELS[name] = lambda m, n=name: calls.append(n)  # type: ignore[misc]
        assert snapshots.carried(md, [md.get(k) for k in wire.BUDGET_FIELDS]) == [1, 1, 1, 1]
        assert snapshots.carried({}, [None] * len(wire.BUDGET_FIELDS)) == [0, 0, 0, 0]
    finally:
        snapshots._MODELS.clear()
        snapshots._MODELS.update(saved)
    assert calls == []
