"""List and replay dead letters (``python -m aggregator dead-letters``).

A dead letter keeps the original entry's fields (``orig_*``) next to why it was not applied.
Replaying one, once its cause is fixed (an aggregator upgraded past an ``unknown_major``
entry, a bug behind an ``engine_error``, a raised ``LSM_MAX_ENTRY_BYTES``, a crash loop over),
writes the original fields back to the shard's stream and deletes the dead letter, in one
script: the aggregators then apply it like any entry.

A replayed entry cannot keep its producer and sequence number: a dead-lettered entry whose
header was readable counts as processed, so its ``(producer, seq)`` would be skipped as a
duplicate. It travels as producer ``dead-letter-replay`` with the shard's next replay sequence
number instead. Because that number is taken in the same script that deletes the dead letter,
two operators replaying the same dead letter at once replay it once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from producer.keys import Keys
from producer.wire import F_COUNT, F_PRODUCER, F_SEQ

REPLAY_PRODUCER = "dead-letter-replay"
_ORIG = "orig_"

# KEYS: dead-letter stream, event stream, shard stats, replay sequence counter.
# ARGV: dead letter id, replay producer.
# Returns the new entry's id, or false when the dead letter is gone (replayed already) or holds
# no original fields.
_REPLAY = f"""
local rows = redis.call("XRANGE", KEYS[1], ARGV[1], ARGV[1])
if #rows == 0 then return false end
local f = rows[1][2]
local fields, has_producer, has_seq = {{}}, false, false
local seq = nil
for k = 1, #f, 2 do
  local name = f[k]
  if string.sub(name, 1, {len(_ORIG)}) == "{_ORIG}" then
    name = string.sub(name, {len(_ORIG) + 1})
    local value = f[k + 1]
    if name == "{F_PRODUCER}" then
      value = ARGV[2]; has_producer = true
    elseif name == "{F_SEQ}" then
      seq = seq or redis.call("INCR", KEYS[4])
      value = tostring(seq); has_seq = true
    end
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
end
if #fields == 0 then return false end
if not has_producer then fields[#fields + 1] = "{F_PRODUCER}"; fields[#fields + 1] = ARGV[2] end
if not has_seq then
  seq = redis.call("INCR", KEYS[4])
  fields[#fields + 1] = "{F_SEQ}"; fields[#fields + 1] = tostring(seq)
end
local id = redis.call("XADD", KEYS[2], "*", unpack(fields))
redis.call("XDEL", KEYS[1], ARGV[1])
redis.call("HINCRBY", KEYS[3], "replayed_dead_letters", 1)
return id
"""


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, as stored in ``<ns>:{sN}:dead``."""

    id: str
    entry_id: str
    reason: str
    detail: str
    dead_at: str
    producer: str | None
    seq: str | None
    events: str | None
    has_payload: bool

    def line(self) -> str:
        who = f"{self.producer} seq {self.seq}" if self.producer else "unknown producer"
        events = f"{self.events} events" if self.events else "? events"
        payload = "" if self.has_payload else " (no payload: cannot be replayed)"
        return f"{self.id}  {self.reason}: {self.detail}  [entry {self.entry_id}, {who}, {events}]{payload}"


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode(errors="replace")


def _dead_letter(raw_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    def get(name: str) -> str | None:
        return _text(fields.get(name.encode()))

    return DeadLetter(
        id=raw_id.decode(),
        entry_id=get("dead_entry_id") or "?",
        reason=get("dead_reason") or "?",
        detail=get("dead_detail") or "",
        dead_at=get("dead_at") or "",
        producer=get(_ORIG + F_PRODUCER),
        seq=get(_ORIG + F_SEQ),
        events=get(_ORIG + F_COUNT),
        has_payload=any(k.startswith(_ORIG.encode()) for k in fields),
    )


def iter_dead_letters(client: redis.Redis, keys: Keys, shard: int, page: int = 500) -> Iterator[DeadLetter]:
    """Every dead letter of the shard, oldest first."""
    start = "-"
    while True:
        rows: Any = client.xrange(keys.dead_letters(shard), min=start, count=page)
        for raw_id, fields in rows:
            yield _dead_letter(raw_id, fields)
        if len(rows) < page:
            return
        start = "(" + rows[-1][0].decode()


def select(
    letters: Iterator[DeadLetter], reasons: Collection[str] = (), ids: Collection[str] = ()
) -> Iterator[DeadLetter]:
    """The dead letters with one of ``reasons`` or one of ``ids`` (dead letter or entry id);
    every one when both are empty."""
    everything = not reasons and not ids
    for letter in letters:
        if everything or letter.reason in reasons or letter.id in ids or letter.entry_id in ids:
            yield letter


def replay(
    client: redis.Redis,
    keys: Keys,
    shard: int,
    letters: Collection[DeadLetter],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, str | None]:
    """Write each dead letter's original entry back to the shard's stream and delete the dead
    letter. Returns dead letter id -> new entry id (None: already replayed or no payload)."""
    script = client.register_script(_REPLAY)
    stream_keys = [keys.dead_letters(shard), keys.stream(shard), keys.shard_stats(shard), keys.replay_sequence(shard)]
    out: dict[str, str | None] = {}
    for i, letter in enumerate(letters, 1):
        new_id = script(keys=stream_keys, args=[letter.id, REPLAY_PRODUCER])
        out[letter.id] = None if new_id is None else _text(new_id)
        if progress is not None:
            progress(i, len(letters))
    return out
