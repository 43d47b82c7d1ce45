"""Fenced checkpoints: an owner's state changes and its stream position committed as one step.

The owner of a shard (aggregator/ownership.py) applies entries in memory
(aggregator/shard_memory.py) and, every checkpoint, commits what changed together with the
position of the last entry covered. Redis refuses the commit unless

- the shard's lease still holds the owner's token, and its fencing epoch is still the owner's
  (``WATCH`` on the epoch key: an acquisition by another process increments it, and the
  transaction then does nothing; the lease key itself is not watched, because the owner's own
  renewals touch it), and
- the stored checkpoint is the one the owner started from (``WATCH`` on the checkpoint key),

so a paused former owner cannot overwrite its successor, and two processes never both commit
for one shard. A crash at any point leaves Redis at the previous checkpoint: the next owner
loads it and reads the stream again from its position; applying is deterministic, so the
result is the same.

One checkpoint is one ``MULTI``/``EXEC``: Redis runs nothing else meanwhile, so its size is
bounded (:data:`MAX_FIELDS`); the owner checkpoints early when its changes reach the bound.
Every key of a commit carries the shard's hash tag, so it is one slot on a Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection as AsyncConnection
from redis.exceptions import WatchError

from aggregator.shard_memory import Changes
from producer.keys import Keys
from producer.resp import CommandBatch

#: Fields and members one checkpoint may write. Redis spends about 0.4 µs per field of a
#: multi-field HSET inside MULTI (docs/benchmarks.md): about 20 ms for the whole transaction.
MAX_FIELDS = 50_000
#: Fields per HSET command within a checkpoint.
HSET_CHUNK = 1000
#: Approximate length bound of a shard's dead-letter stream.
DEAD_LETTERS_MAXLEN = 100_000
#: The position before the first entry of a stream.
START = "0-0"


class Fenced(RuntimeError):
    """The commit was refused: the writer no longer owns the shard, or another commit moved the
    checkpoint since the writer loaded it. Nothing was written."""


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint: the last stream entry covered, by which owner epoch, when."""

    position: str = START
    epoch: int = 0
    number: int = 0
    committed_at: float = 0.0


@dataclass(frozen=True)
class GroupPosition:
    """Move a consumer group to the checkpoint's position (``XGROUP SETID``, with
    ``ENTRIESREAD`` when known), so the group's lag and the trimming below it follow what is
    committed. Without ``entries_read`` Redis reports the lag as unknown until the group has
    caught up with the stream."""

    group: str
    entries_read: int | None = None


async def load(client: aioredis.Redis, keys: Keys, shard: int) -> Checkpoint:
    """The shard's committed checkpoint (the start of the stream when there is none)."""
    raw: Any = await client.hgetall(keys.checkpoint(shard))
    return _parse(raw)


def _parse(raw: dict[Any, Any]) -> Checkpoint:
    if not raw:
        return Checkpoint()
    f = {_text(k): _text(v) for k, v in raw.items()}
    return Checkpoint(f["position"], int(f["epoch"]), int(f["number"]), float(f["committed_at"]))


async def commit(
    client: aioredis.Redis,
    keys: Keys,
    shard: int,
    token: str,
    epoch: int,
    start: Checkpoint,
    position: str,
    changes: Changes,
    dead_letters: Sequence[dict[str, Any]] = (),
    group: GroupPosition | None = None,
    before_exec: Callable[[], Awaitable[None]] | None = None,
    max_fields: int = MAX_FIELDS,
) -> Checkpoint:
    """Commit ``changes`` and ``position`` if the writer (lease ``token``, fencing ``epoch``)
    still owns the shard and the stored checkpoint is still ``start``; raises :class:`Fenced`
    otherwise (nothing written). ``dead_letters``: field maps to append to the shard's
    dead-letter stream in the same step. ``before_exec``: a test's hook, run between the checks
    and the transaction. ``max_fields``: the bound (raised only for the changes of one entry
    that alone exceed :data:`MAX_FIELDS`: they cannot be split)."""
    size = changes.fields() + len(dead_letters)
    if size > max_fields:
        raise ValueError(f"a checkpoint of {size} fields is above {max_fields}: checkpoint earlier")
    lease_key = keys.shard_owner(shard)
    epoch_key = f"{lease_key}:epoch"
    checkpoint_key = keys.checkpoint(shard)
    done = Checkpoint(position, epoch, start.number + 1, time.time())
    async with client.pipeline(transaction=True) as transaction:
        pipe: Any = transaction  # redis-py's pipeline methods are untyped
        await pipe.watch(epoch_key, checkpoint_key)
        held_by = _text(await pipe.get(lease_key))
        current_epoch = int(await pipe.get(epoch_key) or 0)
        stored = _parse(await pipe.hgetall(checkpoint_key))
        if held_by != token or current_epoch != epoch:
            await pipe.reset()
            raise Fenced(f"shard {shard}: the lease is no longer this owner's (epoch {current_epoch}, ours {epoch})")
        if stored != start:
            await pipe.reset()
            raise Fenced(f"shard {shard}: the checkpoint moved ({stored.number}, expected {start.number})")
        if before_exec is not None:
            await before_exec()
        record = {
            "position": done.position,
            "epoch": str(done.epoch),
            "number": str(done.number),
            "committed_at": repr(done.committed_at),
        }
        setid: tuple[Any, ...] | None = None
        if group is not None:
            setid = ("XGROUP", "SETID", keys.stream(shard), group.group, position)
            if group.entries_read is not None:
                setid += ("ENTRIESREAD", group.entries_read)
        connection = getattr(pipe, "connection", None)
        if isinstance(connection, AsyncConnection):
            # One server: the transaction packed here (redis-py's Python encoder costs ~1.3 µs
            # per argument; a checkpoint has tens of thousands), sent on the watching connection.
            batch = _pack(keys.dead_letters(shard), changes, dead_letters, checkpoint_key, record, setid)
            applied = await _exec(connection, batch)
        else:
            pipe.multi()
            _queue(pipe, changes)
            for fields in dead_letters:
                pipe.xadd(keys.dead_letters(shard), fields, maxlen=DEAD_LETTERS_MAXLEN, approximate=True)
            pipe.hset(checkpoint_key, mapping=record)
            if setid is not None:
                pipe.execute_command(*setid)
            try:
                await pipe.execute()
                applied = True
            except WatchError:
                applied = False
        if not applied:
            raise Fenced(f"shard {shard}: another owner took the shard, or committed, during this commit")
    return done


def _pack(
    dead_key: str,
    changes: Changes,
    dead_letters: Sequence[dict[str, Any]],
    checkpoint_key: str,
    record: dict[str, str],
    setid: tuple[Any, ...] | None,
) -> CommandBatch:
    """``MULTI``, the checkpoint's commands (as :func:`_queue` queues them), ``EXEC``."""
    batch = CommandBatch()
    batch.command(b"MULTI")
    for key, values in changes.hset.items():
        items = list(values.items())
        for i in range(0, len(items), HSET_CHUNK):
            batch.hset(key, dict(items[i : i + HSET_CHUNK]))
    for key, names in changes.hdel.items():
        for i in range(0, len(names), HSET_CHUNK):
            batch.command(b"HDEL", key, *names[i : i + HSET_CHUNK])
    for key, members in changes.zadd.items():
        batch.command(b"ZADD", key, *[x for member, score in members.items() for x in (score, member)])
    for key, gone in changes.zrem.items():
        batch.command(b"ZREM", key, *gone)
    for key, increments in changes.hincrby.items():
        for name, n in increments.items():
            batch.command(b"HINCRBY", key, name, n)
    for fields in dead_letters:
        flat = [x for kv in fields.items() for x in kv]
        batch.command(b"XADD", dead_key, b"MAXLEN", b"~", DEAD_LETTERS_MAXLEN, b"*", *flat)
    batch.hset(checkpoint_key, record)
    if setid is not None:
        batch.command(*setid)
    batch.command(b"EXEC")
    return batch


async def _exec(connection: AsyncConnection, batch: CommandBatch) -> bool:
    """Send the packed transaction and read its replies; False when ``EXEC`` refused it (a
    watched key changed). Any failure disconnects the connection: no reply is left unread."""
    try:
        await connection.send_packed_command(batch.packed(), check_health=False)
        reply: Any = None
        for _ in range(batch.commands):
            reply = await connection.read_response()
    except BaseException:
        await connection.disconnect()
        raise
    if reply is None:
        return False
    errors = [r for r in reply if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    return True


def _queue(pipe: Any, changes: Changes) -> None:
    for key, values in changes.hset.items():
        items = list(values.items())
        for i in range(0, len(items), HSET_CHUNK):
            pipe.hset(key, mapping=dict(items[i : i + HSET_CHUNK]))
    for key, names in changes.hdel.items():
        for i in range(0, len(names), HSET_CHUNK):
            pipe.hdel(key, *names[i : i + HSET_CHUNK])
    for key, members in changes.zadd.items():
        pipe.zadd(key, members)
    for key, gone in changes.zrem.items():
        pipe.zrem(key, *gone)
    for key, increments in changes.hincrby.items():
        for name, n in increments.items():
            pipe.hincrby(key, name, n)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else "" if value is None else str(value)
