"""Which environment variables set which setting: one rule for the producer and the aggregator.

A setting ``name`` is read from ``LSM_<NAME>``; a field may declare more variables after it,
as :class:`Alias` in its annotation (``redis_url: Annotated[str, Alias("REDIS_URL")]``), each
with an optional conversion: variables of other programs that mean the same thing (LiteLLM's
``DATABASE_URL``, its budget refresh interval in minutes, the common ``REDIS_URL``).
``LSM_<NAME>`` always wins; an alias only fills in a setting nothing else set (neither
``LSM_<NAME>`` nor, for the aggregator, its settings file). An empty variable counts as not set
(an unset compose variable expands to "").

Both settings classes (the producer's and the aggregator's) are pydantic models built by
:func:`build`: pydantic parses the text of a variable as the field's type and checks its bounds;
an error names the variable it came from. (LiteLLM itself requires pydantic 2, so the producer
adds nothing to the proxy by using it.)
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

PREFIX = "LSM_"

Model = TypeVar("Model", bound=BaseModel)


class SettingsError(ValueError):
    """Invalid settings; the message names each variable (or setting) and what is wrong."""


class AliasError(SettingsError):
    """An alias variable holds a value its conversion rejects; the message names the variable."""


@dataclass(frozen=True)
class Alias:
    """Another variable for a setting; ``convert`` turns its raw text into the setting's text
    (it raises ValueError with a message for a value it cannot convert)."""

    variable: str
    convert: Callable[[str], str] | None = None


def aliases(info: FieldInfo) -> tuple[Alias, ...]:
    """The aliases declared on a pydantic field (``Annotated[..., Alias(...)]``)."""
    return tuple(m for m in info.metadata if isinstance(m, Alias))


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


def build(cls: type[Model], environ: Mapping[str, str], given: Mapping[str, Any] | None = None) -> Model:
    """``cls`` from ``given`` (a settings file's values, say), overridden by the ``LSM_*``
    variables and filled in by the aliases. Raises :class:`SettingsError` naming every variable
    whose value is refused (with the value when it is a number or boolean: never a secret)."""
    values = dict(given or {})
    fields = cls.model_fields
    found = read(((name, aliases(info)) for name, info in fields.items()), environ, values)
    values.update({name: raw for name, (_variable, raw) in found.items()})
    try:
        return cls(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            name = str(err["loc"][0]) if err["loc"] else None
            if name is None or name not in fields:
                problems.append(message)
                continue
            variable = primary(name)
            if name in found and found[name][0] != variable:
                variable += f" (from {found[name][0]})"
            if _shown(fields[name].annotation) and isinstance(err.get("input"), str):
                variable += f"={err['input']!r}"
            problems.append(f"{variable}: {message}")
        raise SettingsError("; ".join(problems)) from None


def _shown(annotation: object) -> bool:
    """Whether a refused value of this type may be shown: numbers and booleans are never secrets."""
    plain = {int, float, bool, type(None)}
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set(typing.get_args(annotation)) <= plain
    return annotation in plain
