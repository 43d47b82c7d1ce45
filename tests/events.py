"""The one place tests build wire events and stream entries (the format: producer/wire.py).

Every builder in the test modules starts here: a success event is ``success_event(...)`` (the
object form the aggregator decodes, every field of ``wire.SUCCESS_FIELDS`` present) or its
positional form ``positional(...)`` (what the producer writes); other kinds are plain objects
with ``kind`` and ``t``; ``entry_fields`` makes the fields of one stream entry. The modules only
choose the values their scenario needs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from producer import wire

#: Index of each success field in the positional form.
SUCCESS_INDEX = {name: i for i, name in enumerate(wire.SUCCESS_FIELDS)}


#: What a success event may hold: the wire's fields, and the latencies a reader derives from its
#: times (``wire.derive_latencies``; the 1.x fields), which the engine reads.
_SUCCESS_NAMES = frozenset(wire.SUCCESS_FIELDS) | frozenset(wire.SUCCESS_FIELDS_V1)


def success_event(**fields: Any) -> dict[str, Any]:
    """A success event in object form: every wire field, null unless given."""
    unknown = set(fields) - _SUCCESS_NAMES
    if unknown:
        raise KeyError(f"not success event fields: {sorted(unknown)}")
    event: dict[str, Any] = dict.fromkeys(wire.SUCCESS_FIELDS)
    event["kind"] = wire.SUCCESS
    event.update(fields)
    return event


def positional(event: Mapping[str, Any]) -> list[Any]:
    """A success event in the positional form the producer writes (``SUCCESS_FIELDS`` order)."""
    return [event.get(name) for name in wire.SUCCESS_FIELDS]


def event(kind: str, t: float | None = None, **fields: Any) -> dict[str, Any]:
    """An event of another kind (object form)."""
    return {"kind": kind, "t": time.time() if t is None else t, **fields}


def entry_fields(
    producer: str, seq: int, events: Sequence[Mapping[str, Any] | Sequence[Any]], t: float | None = None
) -> dict[str, bytes]:
    """The fields of one stream entry holding ``events``, as the producer writes it."""
    encoded = [wire.encode_event(e) for e in events]
    return dict(wire.encode_entry(producer, seq, encoded, time.time() if t is None else t))
