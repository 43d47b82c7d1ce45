"""Which environment variables set which setting: one rule for the producer and the aggregator.

A setting ``name`` is read from ``LSM_<NAME>``; a field may declare more variables after it,
as :class:`Alias` in its annotation (``redis_url: Annotated[str, Alias("REDIS_URL")]``, on the
producer's dataclass and the aggregator's pydantic model alike), each with an optional conversion: variables of other
programs that mean the same thing (LiteLLM's ``DATABASE_URL``, its budget refresh interval in
minutes, the common ``REDIS_URL``). ``LSM_<NAME>`` always wins; an alias only fills in a
setting nothing else set (neither ``LSM_<NAME>`` nor, for the aggregator, its settings file).
An empty variable counts as not set (an unset compose variable expands to "").
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

PREFIX = "LSM_"


class AliasError(ValueError):
    """An alias variable holds a value its conversion rejects; the message names the variable."""


@dataclass(frozen=True)
class Alias:
    """Another variable for a setting; ``convert`` turns its raw text into the setting's text
    (it raises ValueError with a message for a value it cannot convert)."""

    variable: str
    convert: Callable[[str], str] | None = None


def declared(hint: object) -> tuple[type, tuple[Alias, ...]]:
    """A field's type and aliases from its annotation (``typing.get_type_hints(..., include_extras=True)``)."""
    if typing.get_origin(hint) is typing.Annotated:
        base, *extras = typing.get_args(hint)
        return base, tuple(e for e in extras if isinstance(e, Alias))
    return hint, ()  # type: ignore[return-value]


def primary(name: str) -> str:
    """The setting's own variable: ``LSM_<NAME>``."""
    return PREFIX + name.upper()


def read(
    fields: Iterable[tuple[str, tuple[Alias, ...]]],
    environ: Mapping[str, str],
    already_set: Iterable[str] = (),
) -> dict[str, tuple[str, str]]:
    """``{setting: (variable, raw text)}`` for each setting some variable sets. ``already_set``:
    settings given another way (a file), which aliases do not override."""
    given = set(already_set)
    out: dict[str, tuple[str, str]] = {}
    for name, aliases in fields:
        raw = environ.get(primary(name), "").strip()
        if raw:
            out[name] = (primary(name), raw)
            continue
        if name in given:
            continue
        for alias in aliases:
            raw = environ.get(alias.variable, "").strip()
            if raw:
                try:
                    out[name] = (alias.variable, alias.convert(raw) if alias.convert else raw)
                except ValueError as exc:
                    raise AliasError(f"{alias.variable}: {exc}") from None
                break
    return out


def minutes_to_seconds(raw: str) -> str:
    try:
        return str(float(raw) * 60)
    except ValueError:
        raise ValueError(f"{raw!r} is not a number (minutes)") from None
