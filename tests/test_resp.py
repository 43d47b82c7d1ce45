"""The writer's own command packing (producer/resp.py), against the test Redis: what it writes
is what redis-py would write, replies come back in order, and a failed command leaves no
unread reply behind for the next write."""

from __future__ import annotations

import hashlib
import time

import orjson
import pytest
import redis

from producer.emitter import create_client
from producer.resp import CommandBatch
from producer.wire import CODEC_JSON, decode_entry, encode_entry, encode_event, entry_header
from tests.support import settings_for


def events(n: int) -> list[bytes]:
    return [encode_event({"kind": "x", "t": float(i), "text": "é\r\n$*" * (i % 3)}) for i in range(n)]


def run(client: redis.Redis, commands: CommandBatch) -> list[object]:
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        return commands.execute(connection)
    finally:
        pool.release(connection)


@pytest.fixture
def client(redis_url: str, namespace: str) -> redis.Redis:
    return create_client(settings_for(redis_url, namespace))


@pytest.mark.parametrize("n", [1, 2, 500])
def test_an_entry_written_from_its_events_equals_the_joined_entry(
    client: redis.Redis, redis_client: redis.Redis, namespace: str, n: int
) -> None:
    evs = events(n)
    stream = f"{namespace}:stream"
    commands = CommandBatch()
    header = entry_header("host:1:abc", 7, n, CODEC_JSON, 1.5)
    commands.xadd(stream, 0, header, evs, sum(map(len, evs)))
    commands.xadd(stream, 0, encode_entry("host:1:abc", 8, evs, 1.5))
    replies = run(client, commands)
    assert len(replies) == 2
    (id1, streamed), (id2, joined) = redis_client.xrange(stream)
    assert [id1, id2] == replies
    assert streamed == {**joined, b"s": b"7"}
    assert len(decode_entry(streamed).events) == n


def test_a_compressed_entry_and_small_commands(client: redis.Redis, redis_client: redis.Redis, namespace: str) -> None:
    evs = [encode_event({"kind": "x", "t": float(i), "id": hashlib.sha256(b"%d" % i).hexdigest()}) for i in range(300)]
    stream = f"{namespace}:stream"
    fields = encode_entry("p", 1, evs, 0.0, compress_min_bytes=1)
    assert len(fields["d"]) > 4096  # sent without copying
    commands = CommandBatch()
    commands.xadd(stream, 0, fields)
    commands.command(b"HSET", f"{namespace}:h", "text", "é", "int", 12, "float", 0.1, b"raw", b"\x00\xff")
    commands.command(b"ZADD", f"{namespace}:z", time.time(), "member")
    _id, hset, zadd = run(client, commands)
    assert (hset, zadd) == (4, 1)
    [(_, stored)] = redis_client.xrange(stream)
    assert stored[b"c"] == b"zjson"
    assert decode_entry(stored).events == [orjson.loads(e) for e in evs]
    assert redis_client.hgetall(f"{namespace}:h") == {
        b"text": "é".encode(),
        b"int": b"12",
        b"float": b"0.1",
        b"raw": b"\x00\xff",
    }


def test_maxlen_trims_the_stream(client: redis.Redis, redis_client: redis.Redis, namespace: str) -> None:
    stream = f"{namespace}:stream"
    commands = CommandBatch()
    for seq in range(1, 2001):
        commands.xadd(stream, 100, entry_header("p", seq, 1, CODEC_JSON, 0.0), events(1), len(events(1)[0]))
    run(client, commands)
    # Approximate trimming (MAXLEN ~) keeps at least 100 and far fewer than 2,000 entries.
    assert 100 <= redis_client.xlen(stream) < 2000


def test_an_error_reply_raises_and_leaves_no_reply_unread(
    client: redis.Redis, redis_client: redis.Redis, namespace: str
) -> None:
    redis_client.set(f"{namespace}:not-a-stream", "x")
    commands = CommandBatch()
    commands.xadd(f"{namespace}:not-a-stream", 0, {"a": b"1"})
    commands.command(b"INCR", f"{namespace}:counter")
    commands.command(b"INCR", f"{namespace}:counter")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        run(client, commands)
    # The pool's connection was dropped: the next write reads its own replies, not stale ones.
    again = CommandBatch()
    again.command(b"INCR", f"{namespace}:other")
    assert run(client, again) == [1]


def test_a_bool_is_refused() -> None:
    with pytest.raises(TypeError):
        CommandBatch().command(b"SET", "k", True)
