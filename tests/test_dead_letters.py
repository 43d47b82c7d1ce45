"""Dead letters can be listed and, once their cause is fixed, replayed: exactly once, by the
real aggregator, into the same totals (``python -m aggregator dead-letters``)."""

from __future__ import annotations

import asyncio
import zlib

import pytest
import redis

from aggregator.__main__ import main
from aggregator.daemon import Aggregator
from aggregator.dead_letters import REPLAY_PRODUCER, iter_dead_letters, replay
from aggregator.local_server import LocalServer
from aggregator.settings import AggregatorSettings
from aggregator.snapshot import read_families
from tests.support import aggregator_reading
from tests.test_poison import Stream, success, valid_fields, wait_drained

NS = "lsmreplay"


async def drain(url: str, max_entry_bytes: int) -> Aggregator:
    """Run one aggregator until the stream is drained."""
    settings = AggregatorSettings(
        redis_url=url,
        namespace=NS,
        consumer_name="replay-test",
        block_seconds=0.1,
        housekeeping_interval=0.2,
        max_entry_bytes=max_entry_bytes,
    )
    agg = Aggregator(settings)
    task = asyncio.create_task(agg.run())
    client = redis.Redis.from_url(url)
    try:
        await aggregator_reading(agg)
        await wait_drained(client, Stream(client, NS).stream)
    finally:
        agg.stop.set()
        await asyncio.wait_for(task, 10)
        client.close()
    return agg


def requests_by_key(client: redis.Redis, agg: Aggregator) -> dict[str, float]:
    names = agg.engine.label_names("litellm_requests_metric")
    counters = read_families(client, Stream(client, NS).keys, agg.engine)["litellm_requests_metric"].counters
    return {labels[names.index("hashed_api_key")]: v for labels, v in counters.items()}


async def test_dead_letters_are_listed_and_replayed_once(
    private_server: LocalServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(private_server.url)
    s = Stream(client, NS)
    s.good("proxy-1", [success(key="good")])
    # Too large for this aggregator's LSM_MAX_ENTRY_BYTES (raised later).
    big = [success(key="big", team="t" * 3000) for _ in range(4)]
    too_large = s.bad("too_large", valid_fields(big, producer="proxy-1", seq=2))
    # A header a buggy producer wrote: unreadable sequence number, the events themselves fine.
    bad_header = s.bad("bad_header", {**valid_fields([success(key="header")]), "s": "abc"})
    # Written by a newer producer than this aggregator understands: stays dead.
    unknown = s.bad("unknown_major", {**valid_fields([success(key="future")], seq=3), "v": "3.0"})
    await drain(private_server.url, max_entry_bytes=8 * 1024)
    assert [d.reason for d in iter_dead_letters(client, s.keys, 0)] == ["too_large", "bad_header", "unknown_major"]

    monkeypatch.setenv("LSM_REDIS_URL", private_server.url)
    monkeypatch.setenv("LSM_NAMESPACE", NS)
    assert main(["dead-letters", "list"]) == 0
    out = capsys.readouterr().out
    assert "3 dead letters" in out
    for entry_id in (too_large, bad_header, unknown):
        assert entry_id in out
    assert "too_large: " in out and "proxy-1 seq 2, 4 events" in out

    # Nothing is written by a dry run, nor without saying what to replay.
    assert main(["dead-letters", "replay", "--reason", "too_large", "--dry-run"]) == 0
    assert "1 dead letters would be replayed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["dead-letters", "replay"])
    assert len(list(iter_dead_letters(client, s.keys, 0))) == 3

    # Replay the two whose cause is fixed, by reason and by original entry id.
    assert main(["dead-letters", "replay", "--reason", "too_large", bad_header]) == 0
    assert "2 dead letters replayed as producer 'dead-letter-replay'" in capsys.readouterr().out
    agg = await drain(private_server.url, max_entry_bytes=1024 * 1024)
    assert requests_by_key(client, agg) == {"good": 1, "big": 4, "header": 1}
    left = list(iter_dead_letters(client, s.keys, 0))
    assert [(d.entry_id, d.reason) for d in left] == [(unknown, "unknown_major")]
    stats = {k.decode(): int(v) for k, v in client.hgetall(s.keys.shard_stats(0)).items()}
    assert stats["replayed_dead_letters"] == 2
    assert stats["events_applied"] == 1 + 4 + 1
    assert client.hget(s.keys.applied_by_producer(0), REPLAY_PRODUCER) == b"5"

    # A second replay of the same dead letters finds nothing; two replays racing for one dead
    # letter write it once.
    assert main(["dead-letters", "replay", too_large, bad_header]) == 0
    assert "0 dead letters replayed" in capsys.readouterr().out
    racing = s.bad("too_large", valid_fields(big, producer="proxy-2", seq=1))
    await drain(private_server.url, max_entry_bytes=8 * 1024)
    letter = next(d for d in iter_dead_letters(client, s.keys, 0) if d.entry_id == racing)
    first = replay(client, s.keys, 0, [letter])
    second = replay(client, s.keys, 0, [letter])
    assert first[letter.id] is not None and second == {letter.id: None}
    agg = await drain(private_server.url, max_entry_bytes=1024 * 1024)
    assert requests_by_key(client, agg)["big"] == 8
    client.close()


def test_replay_writes_the_original_payload_back(private_server: LocalServer) -> None:
    """The replayed entry is the original one, byte for byte, except its producer and sequence."""
    client = redis.Redis.from_url(private_server.url)
    s = Stream(client, "lsmreplay2")
    fields = {**valid_fields([success(key="k")], producer="p", seq=7), "c": "zjson"}
    fields["d"] = zlib.compress(fields["d"] if isinstance(fields["d"], bytes) else fields["d"].encode())
    s.raw(fields)
    original = client.xrange(s.stream)[0]  # type: ignore[index]
    client.xadd(
        s.keys.dead_letters(0),
        {
            "dead_entry_id": original[0],
            "dead_reason": "engine_error",
            **{b"orig_" + k: v for k, v in original[1].items()},
        },
    )
    letters = list(iter_dead_letters(client, s.keys, 0))
    result = replay(client, s.keys, 0, letters)
    new_id = result[letters[0].id]
    assert new_id is not None
    replayed = dict(client.xrange(s.stream, min=new_id, max=new_id)[0][1])  # type: ignore[index]
    assert replayed == {**original[1], b"p": REPLAY_PRODUCER.encode(), b"s": b"1"}
    assert list(replayed) == list(original[1])  # field order kept
    assert list(iter_dead_letters(client, s.keys, 0)) == []
    client.close()
