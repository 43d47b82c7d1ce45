"""Which budget snapshots a request carried, decided as LiteLLM's logger decides it.

LiteLLM's auth pins one snapshot per entity (key, team, user, org) into the request metadata;
its Prometheus logger reads each back with pydantic (``KeyBudgetSnapshot.from_metadata`` and
the others in ``litellm/types/proxy/carried_budget_state.py``): a snapshot that does not validate
counts as not carried, and the logger then does without its values (a look-up instead, which
finds nothing without a database). Every field is required (``None`` allowed where typed so),
typed (a time, a number, a text), and may be given under its metadata alias or, since the
models populate by name, under its plain field name.

Doing that validation on every request would cost more than the rest of the hook, so a quick
test decides the shapes auth writes (aliases present, values ``None``, numbers, texts, and
times as pydantic dumps them); anything else is left to LiteLLM's own classes. When a snapshot
validates that way, its validated values replace the raw ones in the event, so the reader sees
what LiteLLM uses.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, MutableSequence
from datetime import datetime
from typing import Any

from producer import wire

# Field kinds of the snapshot models.
TIME, OPTIONAL_NUMBER, NUMBER, OPTIONAL_TEXT = "time", "optional number", "number", "optional text"

#: Per snapshot: its flag in ``wire.BUDGET_FLAGS``, the model's class name, and its fields as
#: (metadata alias, field name, kind).
SNAPSHOTS: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("key_snapshot", "KeyBudgetSnapshot", (("user_api_key_budget_reset_at", "budget_reset_at", TIME),)),
    (
        "team_snapshot",
        "TeamBudgetSnapshot",
        (
            ("user_api_key_team_budget_reset_at", "budget_reset_at", TIME),
            ("user_api_key_team_table_max_budget", "max_budget", OPTIONAL_NUMBER),
        ),
    ),
    (
        "user_snapshot",
        "UserBudgetSnapshot",
        (
            ("user_api_key_user_budget_reset_at", "budget_reset_at", TIME),
            ("user_api_key_user_table_max_budget", "max_budget", OPTIONAL_NUMBER),
            ("user_api_key_user_alias", "user_alias", OPTIONAL_TEXT),
        ),
    ),
    (
        "org_snapshot",
        "OrgBudgetSnapshot",
        (
            ("user_api_key_org_spend", "spend", NUMBER),
            ("user_api_key_org_max_budget", "max_budget", OPTIONAL_NUMBER),
        ),
    ),
)
_FIELDS = {model: fields for _flag, model, fields in SNAPSHOTS}
# (model, ((alias, kind), ...)) in wire.BUDGET_FLAGS order: what carried() walks.
_IN_FLAG_ORDER = tuple(
    (model, tuple((alias, kind) for alias, _name, kind in fields))
    for flag in wire.BUDGET_FLAGS
    for f, model, fields in SNAPSHOTS
    if f == flag
)
#: Plain field names: where any is in the metadata, LiteLLM may read a snapshot from it.
PLAIN_NAMES = frozenset(name for _, _, fields in SNAPSHOTS for _, name, _ in fields)
_MISSING = object()
# A time as pydantic writes one in JSON (what auth puts in the metadata).
_JSON_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?")


def _quick(value: object, kind: str) -> bool | None:
    """True: pydantic accepts it; False: it refuses it; None: ask pydantic."""
    if value is None:
        return kind is not NUMBER
    t = type(value)
    if kind == TIME:
        if t is datetime:
            return True
        return _json_time(value) if t is str and len(value) <= 40 else None  # type: ignore[arg-type]
    if kind == OPTIONAL_TEXT:
        return True if t is str else None
    return True if t is float or t is int else None


@functools.lru_cache(maxsize=4096)
def _json_time(value: str) -> bool | None:
    """A time as pydantic dumps one: True (every request of a key carries the same reset time,
    hence the cache); anything else: None (LiteLLM's model decides)."""
    if not _JSON_TIME.fullmatch(value):
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return None
    return True


def carried(metadata: Mapping[str, Any], budget: MutableSequence[Any]) -> list[int]:
    """The flags (``wire.BUDGET_FLAGS`` order) of the snapshots ``metadata`` carries; where
    LiteLLM's own validation had to decide, its validated values are written into ``budget``
    (``wire.BUDGET_FIELDS`` order)."""
    plain = False
    for name in PLAIN_NAMES:  # a few look-ups (the metadata holds dozens of keys)
        if name in metadata:
            plain = True
            break
    flags = []
    get = metadata.get
    for model, fields in _IN_FLAG_ORDER:
        verdict: bool | None = None if plain else True
        if verdict:
            for alias, kind in fields:
                value = get(alias, _MISSING)
                if value is None and kind is not NUMBER:
                    continue  # the usual null: allowed
                verdict = False if value is _MISSING else _quick(value, kind)
                if not verdict:
                    break
        if verdict is None:
            verdict = _validate(model, metadata, budget)
        flags.append(1 if verdict else 0)
    return flags


def _validate(model: str, metadata: Mapping[str, Any], budget: MutableSequence[Any]) -> bool:
    """LiteLLM's decision (its snapshot model), the validated values copied into ``budget``."""
    fields = _FIELDS[model]
    from_metadata = _model(model)
    if from_metadata is None:
        return all(alias in metadata for alias, _, _ in fields)  # a LiteLLM without snapshots
    snapshot = from_metadata(metadata)
    if snapshot is None:
        return False
    for alias, name, _kind in fields:
        value = getattr(snapshot, name)
        budget[wire.BUDGET_FIELDS.index(alias)] = value.isoformat() if isinstance(value, datetime) else value
    return True


_MODELS: dict[str, Callable[[Mapping[str, Any]], Any] | None] = {}


def _model(name: str) -> Callable[[Mapping[str, Any]], Any] | None:
    if name not in _MODELS:
        try:
            from litellm.types.proxy import carried_budget_state
        except ImportError:
            _MODELS[name] = None
        else:
            _MODELS[name] = getattr(carried_budget_state, name).from_metadata
    return _MODELS[name]
