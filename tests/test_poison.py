"""Poison in the stream: an aggregator fed malformed entries and hostile events mixed with good
ones dead-letters the bad entries (with their reason and original fields), rejects and counts
bad events inside good entries, applies the good events exactly, and keeps consuming.

Runs the real daemon (``aggregator.daemon.Aggregator``) against a private server.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from aggregator.apply import PendingEntry
from aggregator.consumer import ShardConsumer
from aggregator.daemon import Aggregator
from aggregator.housekeeping import Housekeeper
from aggregator.local_server import LocalServer
from aggregator.schema import truncate_label_value
from aggregator.settings import AggregatorSettings
from aggregator.snapshot import read_families
from aggregator.state import Delta
from producer.keys import Keys
from producer.wire import SUCCESS_FIELDS, as_object, derive_latencies
from tests.events import entry_fields, positional, success_event
from tests.support import aggregator_reading, wait_until

GROUP = "aggregators"
MAX_ENTRY_BYTES = 256 * 1024
_I = {name: i for i, name in enumerate(SUCCESS_FIELDS)}

# Label values a hostile or merely odd client can put in metadata, and how LiteLLM renders them
# (sanitize_prometheus_label_value: newlines become spaces, CR/U+2028/U+2029 vanish, then
# backslashes and double quotes are escaped), then cut to 1024 bytes (docs/compatibility.md, 10).
HOSTILE = [
    ('quote"d', 'quote\\"d'),
    ("back\\slash", "back\\\\slash"),
    ("new\nline\r\n", "new line "),
    ("line\u2028sep\u2029para", "lineseppara"),
    ('all"of\\them\n\u2028', 'all\\"of\\\\them '),
    ("x" * 10_000, truncate_label_value("x" * 10_000, 1024)),  # cut to LSM_MAX_LABEL_VALUE_LENGTH
    ("\u00e9\u4e2d\U0001f600", "\u00e9\u4e2d\U0001f600"),
    ("}{[]\x00\x1f", "}{[]\x00\x1f"),
]


def success(team: str = "team-a", key: str = "k1", cost: Any = 0.25, tokens: Any = 10, **fields: Any) -> list[Any]:
    values: dict[str, Any] = {
        "t": time.time(),
        "hashed_api_key": key,
        "team": team,
        "model": "gpt-x",
        "model_group": "gpt-x",
        "response_cost": cost,
        "total_tokens": tokens,
        "prompt_tokens": 4,
        "completion_tokens": 6,
    }
    return positional(success_event(**{**values, **fields}))


def success_object(**fields: Any) -> dict[str, Any]:
    """``success()`` as the object a reader decodes it to (the wire also carries event objects)."""
    ev = as_object(success(**fields), SUCCESS_FIELDS)
    assert ev is not None
    derive_latencies(ev)
    return ev


class Stream:
    """Writes entries and remembers what a correct aggregator must end up with."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.stream = self.keys.stream(0)
        self.seq: dict[str, int] = {}
        self.requests: dict[tuple[str, str], int] = {}  # (key, rendered team) -> count
        self.spend: dict[tuple[str, str], float] = {}
        self.events_in_applied_entries = 0
        self.dead: dict[str, tuple[str, dict[bytes, bytes]]] = {}  # entry id -> (reason, fields)
        self.rejected: dict[str, int] = {}
        self.unclassifiable = ""
        self.written: dict[str, dict[bytes, bytes]] = {}  # entry id -> fields as stored

    def raw(self, fields: Mapping[str, str | bytes]) -> str:
        entry_id: str = self.client.xadd(self.stream, dict(fields)).decode()  # type: ignore[arg-type,union-attr]
        self.written[entry_id] = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}
        return entry_id

    def entry(self, producer: str, events: list[Any], seq: int | None = None, **override: str | bytes) -> str:
        if seq is None:
            seq = self.seq[producer] = self.seq.get(producer, 0) + 1
        fields: dict[str, bytes | str] = dict(entry_fields(producer, seq, events))
        fields.update(override)
        return self.raw(fields)

    def good(self, producer: str, events: list[Any], rendered_teams: list[str] | None = None) -> str:
        """An entry that must be applied; ``rendered_teams`` = the team label of each success
        event that must count (None: every event is a good success event with a plain team)."""
        entry_id = self.entry(producer, events)
        self.events_in_applied_entries += len(events)
        if rendered_teams is None:
            rendered_teams = [e[_I["team"]] for e in events]
        for ev, team in zip(events, rendered_teams, strict=True):
            if team is None:
                continue
            k = (ev[_I["hashed_api_key"]], team)
            self.requests[k] = self.requests.get(k, 0) + 1
            self.spend[k] = self.spend.get(k, 0.0) + ev[_I["response_cost"]]
        return entry_id

    def bad(self, reason: str, fields: Mapping[str, str | bytes]) -> str:
        entry_id = self.raw(fields)
        self.dead[entry_id] = (reason, self.written[entry_id])
        return entry_id


def valid_fields(events: list[Any], producer: str = "evil", seq: int = 1) -> dict[str, bytes | str]:
    return dict(entry_fields(producer, seq, events))


def write_poison(s: Stream) -> None:
    """Good entries, bad entries and bad events, interleaved (they share read batches)."""
    ok = success()
    s.good("good", [success(key="k1"), success(key="k2", cost=0.5)])
    # -- entries that cannot be applied ------------------------------------------------------------
    f = valid_fields([ok])
    s.bad("missing_field", {k: v for k, v in f.items() if k != "d"})
    s.bad("missing_field", {"hello": "world"})
    s.bad("unknown_major", {**f, "v": "3.0"})
    s.bad("bad_version", {**f, "v": "one.zero"})
    s.bad("bad_version", {**f, "v": b"\xff\xfe"})
    s.bad("bad_header", {**f, "s": "abc"})
    s.bad("bad_header", {**f, "s": "0"})
    s.bad("bad_header", {**f, "s": "-3"})
    s.bad("bad_header", {**f, "n": "many"})
    s.bad("bad_header", {**f, "p": b"\xff\xfe\xfd"})
    s.bad("bad_header", {**f, "p": "x" * 5000})  # would name Redis keys and fields
    s.bad("unknown_codec", {**f, "c": "gzip"})
    s.bad("undecodable", {**f, "d": "{nope"})
    s.bad("undecodable", {**f, "d": b"\xff\xfe"})
    s.bad("undecodable", {**f, "d": "[NaN]", "n": "1"})
    s.bad("undecodable", {**f, "d": orjson.dumps([ok]).replace(b"0.25", b"1e400")})  # infinite cost
    s.bad("undecodable", {**f, "d": "[" * 5000 + "]" * 5000, "n": "1"})  # nesting bomb
    s.bad("undecodable", {**f, "c": "zjson", "d": b"not zlib at all"})
    s.bad("too_large", {**f, "c": "zjson", "d": zlib.compress(b"[" + b" " * (4 * MAX_ENTRY_BYTES) + b"]", 9)})
    big = [success(team="t" * 50_000) for _ in range(8)]  # 400 kB of plain JSON > MAX_ENTRY_BYTES
    s.bad("too_large", valid_fields(big, seq=2))
    s.bad("invalid", {**f, "d": "{}", "n": "1"})
    s.bad("invalid", {**f, "d": '"events"', "n": "1"})
    s.bad("invalid", {**f, "d": "[1, 2]", "n": "2"})
    s.bad("invalid", {**f, "d": '[["failure", 1]]', "n": "1"})
    s.bad("invalid", {**f, "d": "[[]]", "n": "1"})
    s.bad("invalid", {**f, "d": "[null]", "n": "1"})
    s.bad("count_mismatch", {**f, "n": "3"})
    s.good("good", [success(key="k3"), success(key="k1", cost=0.125)])
    # -- a newer minor version with fields this reader does not know: read as usual ----------------
    entry_id = s.entry("good", [[*success(key="k2"), "future field"]], v="1.9", x="new envelope field")
    s.events_in_applied_entries += 1
    s.requests[("k2", "team-a")] = s.requests.get(("k2", "team-a"), 0) + 1
    s.spend[("k2", "team-a")] = s.spend.get(("k2", "team-a"), 0.0) + 0.25
    assert entry_id
    # -- bad events inside good entries: rejected one by one, counted by reason --------------------
    bad_events: list[tuple[Any, str]] = [
        (success(cost=-1), "invalid_response_cost"),
        (success(cost=1e300), "invalid_response_cost"),
        (success(cost="0.5"), "invalid_response_cost"),
        (success(cost=True), "invalid_response_cost"),
        (success(cost=[1]), "invalid_response_cost"),
        (success(tokens=-5), "invalid_tokens"),
        (success(tokens=10**19), "invalid_tokens"),
        (success(tokens=1e16), "invalid_tokens"),
        (success(t=None), "invalid_time"),
        (success(t="yesterday"), "invalid_time"),
        (success(t=-1.0), "invalid_time"),
        (success(t=1e300), "invalid_time"),
        # Latencies are derived from times by the reader (2.x); an object event carries them as is.
        ({**success_object(), "latency_total": 1e300}, "invalid_latency"),
        ({"kind": "bogus", "t": 1.0}, "unknown_kind"),
        ({"t": 1.0}, "unknown_kind"),
        ({"kind": 42, "t": 1.0}, "unknown_kind"),
        ({"kind": None}, "unknown_kind"),
    ]
    events: list[Any] = []
    teams: list[str | None] = []
    for i, (ev, reason) in enumerate(bad_events):
        events += [ev, success(key=f"mixed{i % 3}")]
        teams += [None, "team-a"]
        s.rejected[reason] = s.rejected.get(reason, 0) + 1
    s.good("good", events, teams)
    # -- hostile label values: applied, rendered as LiteLLM renders them ---------------------------
    s.good("good", [success(key="hostile", team=raw) for raw, _ in HOSTILE], [r for _, r in HOSTILE])
    # -- an event whose kind is not even a string (see the test below) ------------------------------
    s.unclassifiable = s.entry("odd", [{"kind": ["success"], "t": 1.0}])
    s.good("good", [success(key="k4")])
    s.good("other-producer", [success(key="k4", cost=0.75), success(key="k5")])


@pytest.fixture
async def running(private_server: LocalServer) -> AsyncIterator[tuple[Aggregator, redis.Redis, Stream]]:
    namespace = "lsmpoison"
    settings = AggregatorSettings(
        redis_url=private_server.url,
        namespace=namespace,
        consumer_name="poison-test",
        block_seconds=0.1,
        claim_min_idle=0.5,
        claim_interval=0.2,
        housekeeping_interval=0.2,
        max_entry_bytes=MAX_ENTRY_BYTES,
    )
    client = redis.Redis.from_url(private_server.url, socket_timeout=10)
    stream = Stream(client, namespace)
    agg = Aggregator(settings)
    task = asyncio.create_task(agg.run())
    try:
        yield agg, client, stream
    finally:
        agg.stop.set()
        await asyncio.wait_for(task, 10)
        client.close()


async def wait_drained(client: redis.Redis, stream: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = client.xinfo_stream(stream)["last-generated-id"]  # type: ignore[index]
    while time.monotonic() < deadline:
        groups: Any = client.xinfo_groups(stream)
        if groups and groups[0]["pending"] == 0 and groups[0]["last-delivered-id"] == last:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not drained after {timeout} s: {client.xinfo_groups(stream)}")


def check_totals(agg: Aggregator, client: redis.Redis, s: Stream) -> dict[str, int]:
    families = read_families(client, s.keys, agg.schema)
    names = agg.engine.label_names("litellm_requests_metric")
    requests = {
        (labels[names.index("hashed_api_key")], labels[names.index("team")]): v
        for labels, v in families["litellm_requests_metric"].counters.items()
    }
    assert requests == s.requests
    spend_names = agg.engine.label_names("litellm_spend_metric")
    spend = {
        (labels[spend_names.index("hashed_api_key")], labels[spend_names.index("team")]): v
        for labels, v in families["litellm_spend_metric"].counters.items()
    }
    assert spend == s.spend
    stats = {k.decode(): int(v) for k, v in client.hgetall(s.keys.shard_stats(0)).items()}
    # Rejected events are not applied: only the good events of the applied entries count.
    assert stats["events_applied"] == s.events_in_applied_entries - sum(s.rejected.values())
    assert stats["events_applied_success"] == sum(s.requests.values())
    return stats


async def test_an_entry_mixing_good_and_bad_events_counts_only_the_good_ones_as_applied(
    running: tuple[Aggregator, redis.Redis, Stream],
) -> None:
    """14 events in one entry, 10 of them rejected: the shard's ``events_applied``, the
    producer's applied total and the process counter all say 4, not 14."""
    agg, client, s = running
    bad = [success(cost=-1)] * 4 + [success(tokens=-5)] * 3 + [{"kind": "bogus", "t": 1.0}] * 3
    events = [success(key="mix1"), *bad[:5], success(key="mix2"), success(key="mix3"), *bad[5:], success(key="mix4")]
    assert len(events) == 14
    s.entry("mixed", events)
    s.good("clean", [success(key="clean")])
    await wait_drained(client, s.stream)
    stats = {k.decode(): int(v) for k, v in client.hgetall(s.keys.shard_stats(0)).items()}
    rejected = {k: v for k, v in stats.items() if k.startswith("events_rejected_")}
    assert rejected == {
        "events_rejected_invalid_response_cost": 4,
        "events_rejected_invalid_tokens": 3,
        "events_rejected_unknown_kind": 3,
    }
    assert stats["entries_applied"] == 2
    assert stats["events_applied"] == stats["events_applied_success"] == 4 + 1
    assert client.hget(s.keys.applied_by_producer(0), "mixed") == b"4"
    assert client.hget(s.keys.applied_by_producer(0), "clean") == b"1"
    assert agg.consumers[0].counters.events_applied == 5
    families = read_families(client, s.keys, agg.schema)
    assert sum(families["litellm_requests_metric"].counters.values()) == 5


async def test_poison_is_dead_lettered_or_rejected_and_the_worker_keeps_going(
    running: tuple[Aggregator, redis.Redis, Stream],
) -> None:
    agg, client, s = running
    # The aggregator is already waiting on the (empty) stream; everything below arrives while it
    # reads, in batches that mix poison and good entries.
    await aggregator_reading(agg)
    write_poison(s)
    await wait_drained(client, s.stream)

    # An event with an unhashable kind: the engine should reject it as unknown_kind; an engine
    # that raises instead costs its entry (dead-lettered as engine_error), never the batch.
    if client.hget(s.keys.applied_by_producer(0), "odd"):
        s.rejected["unknown_kind"] += 1
        s.events_in_applied_entries += 1
    else:
        s.dead[s.unclassifiable] = ("engine_error", s.written[s.unclassifiable])
    stats = check_totals(agg, client, s)
    # Bad events: rejected one by one and counted by reason, their neighbours applied.
    rejected = {k.removeprefix("events_rejected_"): v for k, v in stats.items() if k.startswith("events_rejected_")}
    assert rejected == s.rejected
    # Bad entries: in the dead-letter stream with the reason and every original field.
    dead = {
        f[b"dead_entry_id"].decode(): (f[b"dead_reason"].decode(), f) for _, f in client.xrange(s.keys.dead_letters(0))
    }
    assert {i: reason for i, (reason, _) in dead.items()} == {i: reason for i, (reason, _) in s.dead.items()}
    for entry_id, (_, original) in s.dead.items():
        fields = dead[entry_id][1]
        assert {k[5:]: v for k, v in fields.items() if k.startswith(b"orig_")} == original, entry_id
        assert fields[b"dead_detail"] and len(fields[b"dead_detail"]) <= 500
    reasons: dict[str, int] = {}
    for reason, _ in s.dead.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    assert {k[5:]: v for k, v in stats.items() if k.startswith("dead_")} == reasons
    assert client.xpending(s.stream, GROUP)["pending"] == 0  # type: ignore[index]
    families = read_families(client, s.keys, agg.schema)
    hostile = {labels for labels in families["litellm_requests_metric"].counters if "hostile" in labels}
    assert len(hostile) == len(HOSTILE)

    # The worker is still consuming: more good entries are applied exactly.
    s.good("good", [success(key="after", cost=0.5) for _ in range(3)])
    s.good("late-producer", [success(key="after", cost=0.25)])
    await wait_drained(client, s.stream)
    check_totals(agg, client, s)
    assert s.requests[("after", "team-a")] == 4
    assert agg.consumers[0].counters.errors == 0


async def test_enormous_sequence_numbers_do_not_stop_the_worker(
    running: tuple[Aggregator, redis.Redis, Stream],
) -> None:
    """Lua numbers are doubles: a sequence number above 2**53 - 1 would be rounded (two entries
    taken for one, a gap counted wrongly, HINCRBY overflowing half-way through the gap script):
    such entries are dead-lettered as bad headers. One below that bound but far above the
    producer's mark (LSM_MAX_SEQ_JUMP) is suspect: dead-lettered too, it neither counts a gap of
    9e15 lost entries nor moves the producer's mark."""
    agg, client, s = running
    await aggregator_reading(agg)
    s.good("good", [success(key="k1")])
    suspect = [s.entry("huge-seq", [success(key="huge")], seq=seq) for seq in (10**15 + 1, 2**53 - 1)]
    too_big = [
        s.bad("bad_header", valid_fields([success(key="huge")], producer="huge-seq", seq=seq))
        for seq in (2**53, 2**53 + 1, 10**18, 2**63 - 1, 2**64 - 1)
    ]
    s.good("good", [success(key="k2")])
    await wait_drained(client, s.stream)
    rounds = agg.consumers[0].housekeeper.rounds
    await wait_until(lambda: agg.consumers[0].housekeeper.rounds >= rounds + 2, what="two housekeeping rounds")
    s.good("good", [success(key="k3")])
    await wait_drained(client, s.stream)
    families = read_families(client, s.keys, agg.schema)
    names = agg.engine.label_names("litellm_requests_metric")
    by_key = {
        labels[names.index("hashed_api_key")]: v for labels, v in families["litellm_requests_metric"].counters.items()
    }
    assert by_key == {"k1": 1, "k2": 1, "k3": 1}
    dead = {f[b"dead_entry_id"].decode(): f[b"dead_reason"] for _, f in client.xrange(s.keys.dead_letters(0))}
    assert dead == {**dict.fromkeys(too_big, b"bad_header"), **dict.fromkeys(suspect, b"suspect_sequence")}
    stats = {k.decode(): int(v) for k, v in client.hgetall(s.keys.shard_stats(0)).items()}
    assert stats.get("lost_entries", 0) == 0
    assert stats["dead_suspect_sequence"] == 2
    assert client.hget(s.keys.high_water_marks(0), "huge-seq") is None
    assert client.xpending(s.stream, GROUP)["pending"] == 0  # type: ignore[index]
    assert agg.consumers[0].counters.errors == 0


async def test_a_forged_sequence_number_cannot_hide_a_producers_next_entries(
    running: tuple[Aggregator, redis.Redis, Stream],
) -> None:
    """Anyone who can XADD to the stream can write an entry with a real producer's id: with a
    sequence number far above the producer's mark it would have made every later real entry a
    "duplicate" (discarded), and the gap below it "lost". Beyond LSM_MAX_SEQ_JUMP it is
    dead-lettered as suspect_sequence instead, and the producer's next entries count."""
    agg, client, s = running
    await aggregator_reading(agg)
    for seq in (1, 2, 3):
        s.entry("proxy-a", [success(key="real")], seq=seq)
    await wait_drained(client, s.stream)
    forged = s.entry("proxy-a", [success(key="forged")], seq=3 + 10**9)
    # A forged entry that is dead-lettered for its payload must not move the bookkeeping either.
    forged_bad = s.bad(
        "undecodable", {**valid_fields([success(key="forged")], producer="proxy-a", seq=3 + 10**12), "d": b"{"}
    )
    for seq in (4, 5, 6):
        s.entry("proxy-a", [success(key="real")], seq=seq)
    await wait_drained(client, s.stream)
    # Within the bound a jump is an ordinary gap: the entry counts; the gap is housekeeping's.
    s.entry("proxy-a", [success(key="real")], seq=6 + 50)
    await wait_drained(client, s.stream)
    # Housekeeping declares seqs 7 .. 55 lost (nothing older is pending) and moves the mark.
    mark = s.keys.high_water_marks(0)
    await wait_until(lambda: client.hget(mark, "proxy-a") == b"56", what="the gap below seq 56 declared lost")
    families = read_families(client, s.keys, agg.schema)
    names = agg.engine.label_names("litellm_requests_metric")
    by_key = {
        labels[names.index("hashed_api_key")]: v for labels, v in families["litellm_requests_metric"].counters.items()
    }
    assert by_key == {"real": 7}
    dead = {f[b"dead_entry_id"].decode(): f for _, f in client.xrange(s.keys.dead_letters(0))}
    assert {i: f[b"dead_reason"] for i, f in dead.items()} == {forged: b"suspect_sequence", forged_bad: b"undecodable"}
    assert b"1000000003" in dead[forged][b"dead_detail"] and b"LSM_MAX_SEQ_JUMP" in dead[forged][b"dead_detail"]
    stats = {k.decode(): int(v) for k, v in client.hgetall(s.keys.shard_stats(0)).items()}
    assert stats["lost_entries"] == 49  # seqs 7 .. 55, and nothing of the forged gaps
    assert client.hget(s.keys.high_water_marks(0), "proxy-a") == b"56"


def _count_or_raise(entries: Sequence[PendingEntry]) -> Delta:
    """A delta builder with a bug: it raises on events marked ``boom``."""
    d = Delta()
    for e in entries:
        for ev in e.events:
            if ev.get("boom"):
                raise ZeroDivisionError("engine bug")
            d.inc("events:0", '["all"]', 1.0)
    return d


async def run_consumer(
    private_server: LocalServer, namespace: str, **kw: Any
) -> tuple[ShardConsumer, asyncio.Event, asyncio.Task[None]]:
    settings = AggregatorSettings(
        redis_url=private_server.url, namespace=namespace, consumer_name="c1", block_seconds=0.1, **kw
    )
    aclient = aioredis.Redis.from_url(private_server.url)
    consumer = ShardConsumer(aclient, settings, 0, _count_or_raise)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    return consumer, stop, task


async def test_an_engine_exception_costs_its_entry_not_the_batch(private_server: LocalServer) -> None:
    client = redis.Redis.from_url(private_server.url)
    s = Stream(client, "lsmpoison2")
    for i in range(30):  # one read batch: the bad entry sits among good ones
        events = [{"kind": "x", "t": 1.0}, {"kind": "x", "t": 1.0, "boom": i == 15}]
        if i == 15:
            s.bad("engine_error", valid_fields(events, producer="p", seq=i + 1))
        else:
            s.entry("p", events, seq=i + 1)
    consumer, stop, task = await run_consumer(private_server, "lsmpoison2", claim_min_idle=0.3, claim_interval=0.1)
    try:
        await wait_drained(client, s.stream, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await consumer.client.aclose()
    assert client.hget(s.keys.metric(0, "c", "events:0"), '["all"]') == b"58"
    dead = [(f[b"dead_reason"], f[b"dead_detail"]) for _, f in client.xrange(s.keys.dead_letters(0))]
    # The detail names the event that raised (the second of the entry) for the bug report.
    assert dead == [(b"engine_error", b"ZeroDivisionError: engine bug, event 1 (kind 'x')")]
    assert consumer.counters.engine_errors == 1  # lsm_engine_errors_total
    assert consumer.counters.errors == 0
    client.close()


async def test_failing_periodic_jobs_do_not_stop_consumption(
    private_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("housekeeping is broken")

    monkeypatch.setattr(Housekeeper, "run_once", broken)
    monkeypatch.setattr(ShardConsumer, "_claim_stale", broken)
    client = redis.Redis.from_url(private_server.url)
    s = Stream(client, "lsmpoison3")
    consumer, stop, task = await run_consumer(
        private_server, "lsmpoison3", claim_interval=0.05, housekeeping_interval=0.05
    )
    try:
        for seq in range(1, 21):
            s.entry("p", [{"kind": "x", "t": 1.0}], seq=seq)
            await asyncio.sleep(0.05)
        await wait_drained(client, s.stream, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await consumer.client.aclose()
    assert client.hget(s.keys.metric(0, "c", "events:0"), '["all"]') == b"20"
    assert consumer.counters.errors > 0
    client.close()


async def test_an_entry_delivered_too_many_times_is_applied_alone_then_dead_lettered(
    private_server: LocalServer,
) -> None:
    """Entries whose consumers keep dying (here: read and never acknowledged, as by workers killed
    while holding them) are applied one by one, ahead of the rest, once delivered more than
    ``max_deliveries`` times; one still not applied after ``max_isolated_attempts`` more
    deliveries is dead-lettered with its payload, unbuilt."""
    client = redis.Redis.from_url(private_server.url)
    s = Stream(client, "lsmpoison4")
    client.xgroup_create(s.stream, GROUP, id="0", mkstream=True)
    event = {"kind": "x", "t": 1.0}
    normal = s.entry("p", [event], seq=1)
    alone_first = s.entry("p", [event], seq=2)
    alone_last = s.entry("p", [event], seq=3)
    over = s.bad("too_many_deliveries", valid_fields([{**event, "boom": True}], producer="p", seq=4))
    # Consumers that died holding them: delivery 1, then re-reads and claims (each one counts).
    client.xreadgroup(GROUP, "crashed", {s.stream: ">"})
    for entry_id, more in ((alone_first, 4), (alone_last, 6), (over, 7)):
        for _ in range(more):
            client.xclaim(s.stream, GROUP, "crashed", 0, [entry_id])
    pending = {
        r["message_id"].decode(): r["times_delivered"] for r in client.xpending_range(s.stream, GROUP, "-", "+", 10)
    }
    assert pending == {normal: 1, alone_first: 5, alone_last: 7, over: 8}
    # The aggregator claims them (one more delivery each): up to 5 in a batch, 6 to 8 alone, 9 never.
    consumer, stop, task = await run_consumer(
        private_server,
        "lsmpoison4",
        claim_min_idle=0.2,
        claim_interval=0.05,
        max_deliveries=5,
        max_isolated_attempts=3,
    )
    try:
        await wait_drained(client, s.stream, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await consumer.client.aclose()
    assert client.hget(s.keys.metric(0, "c", "events:0"), '["all"]') == b"3"
    assert consumer.counters.isolated_entries == 3
    assert consumer.counters.batches == 4  # three entries alone, then the rest
    dead = [(f[b"dead_entry_id"].decode(), f) for _, f in client.xrange(s.keys.dead_letters(0))]
    assert [(i, f[b"dead_reason"], f[b"dead_detail"]) for i, f in dead] == [
        (over, b"too_many_deliveries", b"9 deliveries; not applied in 3 attempts alone")
    ]
    assert {k[5:]: v for k, v in dead[0][1].items() if k.startswith(b"orig_")} == s.written[over]
    stats = {k.decode(): int(v) for k, v in client.hgetall(s.keys.shard_stats(0)).items()}
    assert stats["dead_too_many_deliveries"] == 1 and stats["events_applied"] == 3
    assert client.xpending(s.stream, GROUP)["pending"] == 0  # type: ignore[index]
    client.close()
