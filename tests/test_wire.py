"""The wire format: entries round-trip, and anything unreadable fails with a stable reason."""

from __future__ import annotations

import datetime as dt
import enum
import zlib
from decimal import Decimal

import orjson
import pytest

from producer.emitter import new_producer_id
from producer.wire import (
    CODEC_JSON,
    CODEC_ZLIB_JSON,
    DECODED_SUCCESS_FIELDS,
    F_BUILT_AT,
    F_CODEC,
    F_COUNT,
    F_DATA,
    F_PRODUCER,
    F_SEQ,
    F_VERSION,
    MAX_PRODUCER_ID,
    PRODUCER_ID,
    SUCCESS,
    SUCCESS_FIELDS,
    SUCCESS_FIELDS_V1,
    SUCCESS_TIME_FIELDS,
    WIRE_MAJOR,
    WIRE_MINOR,
    WIRE_VERSION,
    WireError,
    decode_entry,
    encode_entry,
    encode_event,
)

EVENTS = [
    {"kind": "success", "t": 1700000000.25, "model": "gpt-4o", "tokens": 12, "tags": ["a", "b"]},
    {"kind": "failure", "t": 1700000001.5, "model": None, "exception_class": "RateLimitError"},
    {"kind": "success", "t": 1700000002.0, "label": "ünïcødé ✓", "nested": {"x": [1, 2.5, True]}},
]


def _as_redis(fields: dict[str, bytes]) -> dict[bytes, bytes]:
    """What redis-py returns for an entry: bytes keys and values."""
    return {k.encode(): v for k, v in fields.items()}


def _entry(events=EVENTS, seq=7, compress_min_bytes=0, producer="host:1:abcd", built_at=1700000003.125):
    encoded = [encode_event(e) for e in events]
    return _as_redis(encode_entry(producer, seq, encoded, built_at, compress_min_bytes))


# -- round trip ----------------------------------------------------------------------------------


def test_round_trip_json_codec() -> None:
    fields = _entry()
    assert fields[F_CODEC.encode()] == CODEC_JSON.encode()
    assert fields[F_VERSION.encode()] == WIRE_VERSION.encode()
    assert fields[F_COUNT.encode()] == b"3"
    assert fields[F_SEQ.encode()] == b"7"
    # Uncompressed data is the plain JSON array.
    assert orjson.loads(fields[F_DATA.encode()]) == EVENTS

    entry = decode_entry(fields)
    assert (entry.major, entry.minor) == (WIRE_MAJOR, WIRE_MINOR)
    assert entry.producer_id == "host:1:abcd"
    assert entry.seq == 7
    assert entry.built_at == 1700000003.125
    assert entry.events == EVENTS


def test_round_trip_zlib_codec() -> None:
    fields = _entry(compress_min_bytes=1)
    assert fields[F_CODEC.encode()] == CODEC_ZLIB_JSON.encode()
    # The data really is zlib-compressed JSON.
    assert orjson.loads(zlib.decompress(fields[F_DATA.encode()])) == EVENTS
    entry = decode_entry(fields)
    assert entry.events == EVENTS
    assert entry.seq == 7


def test_compress_threshold_is_inclusive_and_zero_disables() -> None:
    encoded = [encode_event(e) for e in EVENTS]
    plain_len = len(b"[" + b",".join(encoded) + b"]")

    at = encode_entry("p", 1, encoded, 0.0, compress_min_bytes=plain_len)
    below = encode_entry("p", 1, encoded, 0.0, compress_min_bytes=plain_len + 1)
    off = encode_entry("p", 1, encoded, 0.0, compress_min_bytes=0)
    assert at[F_CODEC] == CODEC_ZLIB_JSON.encode()
    assert below[F_CODEC] == CODEC_JSON.encode()
    assert off[F_CODEC] == CODEC_JSON.encode()
    assert len(below[F_DATA]) == plain_len
    for fields in (at, below, off):
        assert decode_entry(_as_redis(fields)).events == EVENTS


def test_large_repetitive_entry_compresses_and_round_trips() -> None:
    events = [{"kind": "success", "t": float(i), "model": "gpt-4o-mini", "team": "team-a"} for i in range(2000)]
    fields = _entry(events=events, compress_min_bytes=8192)
    assert fields[F_CODEC.encode()] == CODEC_ZLIB_JSON.encode()
    raw_len = len(orjson.dumps(events))
    assert len(fields[F_DATA.encode()]) < raw_len / 5
    assert decode_entry(fields).events == events


def test_empty_batch_round_trips() -> None:
    entry = decode_entry(_entry(events=[]))
    assert entry.events == []


def test_built_at_is_optional() -> None:
    fields = _entry()
    del fields[F_BUILT_AT.encode()]
    assert decode_entry(fields).built_at == 0.0


# -- versions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [b"3.0", b"0.9", f"{WIRE_MAJOR + 1}.{WIRE_MINOR}".encode(), b"3"])
def test_unknown_major_is_rejected(version: bytes) -> None:
    fields = _entry()
    fields[F_VERSION.encode()] = version
    with pytest.raises(WireError) as info:
        decode_entry(fields)
    assert info.value.reason == "unknown_major"


@pytest.mark.parametrize("version", [f"{WIRE_MAJOR}.{WIRE_MINOR + 1}", f"{WIRE_MAJOR}.99", f"{WIRE_MAJOR}"])
def test_newer_minor_is_accepted(version: str) -> None:
    fields = _entry()
    fields[F_VERSION.encode()] = version.encode()
    # A newer minor may add optional fields: unknown extra fields are ignored.
    fields[b"zz_future_field"] = b"whatever"
    entry = decode_entry(fields)
    assert entry.major == WIRE_MAJOR
    assert entry.minor == int(version.partition(".")[2] or "0")
    assert entry.events == EVENTS


@pytest.mark.parametrize("version", [b"one.zero", b"", b"\xff\xfe", b"1.x"])
def test_unreadable_version(version: bytes) -> None:
    fields = _entry()
    fields[F_VERSION.encode()] = version
    with pytest.raises(WireError) as info:
        decode_entry(fields)
    assert info.value.reason == "bad_version"


# -- malformed entries ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [F_VERSION, F_PRODUCER, F_SEQ, F_COUNT, F_CODEC, F_DATA])
def test_missing_required_field(name: str) -> None:
    fields = _entry()
    del fields[name.encode()]
    with pytest.raises(WireError) as info:
        decode_entry(fields)
    assert info.value.reason == "missing_field"
    assert repr(name) in info.value.detail


@pytest.mark.parametrize("seq", [b"0", b"-1", b"abc", b"1.5", b""])
def test_bad_sequence_number(seq: bytes) -> None:
    fields = _entry()
    fields[F_SEQ.encode()] = seq
    with pytest.raises(WireError) as info:
        decode_entry(fields)
    assert info.value.reason == "bad_header"


@pytest.mark.parametrize(
    "field_name,value",
    [
        (F_COUNT, b"three"),
        (F_BUILT_AT, b"yesterday"),
        (F_PRODUCER, b"\xff"),
        (F_PRODUCER, b""),
        (F_PRODUCER, b"two words"),
        (F_PRODUCER, b"line\nbreak"),
        (F_PRODUCER, b"p" * 201),
    ],
)
def test_bad_header_values(field_name: str, value: bytes) -> None:
    fields = _entry()
    fields[field_name.encode()] = value
    with pytest.raises(WireError) as info:
        decode_entry(fields)
    assert info.value.reason == "bad_header"


def test_the_producers_own_ids_are_valid() -> None:
    assert PRODUCER_ID.fullmatch(new_producer_id())
    assert PRODUCER_ID.fullmatch("h" * 64 + ":4194304:0123abcd")
    fields = _entry()
    fields[F_PRODUCER.encode()] = b"p" * MAX_PRODUCER_ID
    assert decode_entry(fields).producer_id == "p" * MAX_PRODUCER_ID


@pytest.mark.parametrize("count", [b"2", b"4", b"0"])
def test_count_mismatch(count: bytes) -> None:
    fields = _entry()
    fields[F_COUNT.encode()] = count
    with pytest.raises(WireError) as info:
        decode_entry(fields)
    assert info.value.reason == "count_mismatch"


def test_unknown_codec() -> None:
    fields = _entry()
    fields[F_CODEC.encode()] = b"snappy"
    with pytest.raises(WireError) as info:
        decode_entry(fields)
    assert info.value.reason == "unknown_codec"


def test_garbage_zlib() -> None:
    fields = _entry(compress_min_bytes=1)
    fields[F_DATA.encode()] = b"this is not zlib at all"
    with pytest.raises(WireError) as info:
        decode_entry(fields)
    assert info.value.reason == "undecodable"


def test_truncated_zlib_stream() -> None:
    fields = _entry(compress_min_bytes=1)
    fields[F_DATA.encode()] = fields[F_DATA.encode()][:-8]
    with pytest.raises(WireError) as info:
        decode_entry(fields)
    # A truncated stream decompresses to a JSON prefix that does not parse.
    assert info.value.reason == "undecodable"


def test_garbage_json() -> None:
    fields = _entry()
    fields[F_DATA.encode()] = b"[{not json"
    with pytest.raises(WireError) as info:
        decode_entry(fields)
    assert info.value.reason == "undecodable"


@pytest.mark.parametrize("payload", [b'{"kind": "success"}', b"42", b'"text"', b"null", b"[1, 2]", b'[{"a": 1}, []]'])
def test_payload_not_a_list_of_objects(payload: bytes) -> None:
    fields = _entry()
    fields[F_DATA.encode()] = payload
    fields[F_COUNT.encode()] = b"1"
    with pytest.raises(WireError) as info:
        decode_entry(fields)
    assert info.value.reason == "invalid"


def test_zip_bomb_is_rejected_as_too_large() -> None:
    # ~8 MiB of zeros inside one JSON string compresses to a few KiB.
    payload = b'[{"kind":"success","t":0,"pad":"' + b"0" * (8 * 1024 * 1024) + b'"}]'
    compressed = zlib.compress(payload, 9)
    assert len(compressed) < 64 * 1024
    fields = _entry(compress_min_bytes=1)
    fields[F_DATA.encode()] = compressed
    fields[F_COUNT.encode()] = b"1"
    with pytest.raises(WireError) as info:
        decode_entry(fields, max_decoded_bytes=1024 * 1024)
    assert info.value.reason == "too_large"
    # The same entry decodes with a limit that fits it, so the limit (not the data) was the cause.
    assert len(decode_entry(fields, max_decoded_bytes=16 * 1024 * 1024).events) == 1


def test_decoded_size_limit_is_exact() -> None:
    fields = _entry(compress_min_bytes=1)
    size = len(zlib.decompress(fields[F_DATA.encode()]))
    assert decode_entry(fields, max_decoded_bytes=size).events == EVENTS
    with pytest.raises(WireError) as info:
        decode_entry(fields, max_decoded_bytes=size - 1)
    assert info.value.reason == "too_large"


def test_wire_error_is_a_value_error_with_reason_in_message() -> None:
    err = WireError("count_mismatch", "detail text")
    assert isinstance(err, ValueError)
    assert str(err) == "count_mismatch: detail text"


# -- encode_event --------------------------------------------------------------------------------


class _Color(enum.Enum):
    RED = "red"


class _Odd:
    def __str__(self) -> str:
        return "odd-object"


def test_encode_event_handles_odd_values() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    event = {
        "kind": "success",
        "t": 1.0,
        "spend": Decimal("0.000123"),
        "when": when,
        "day": dt.date(2024, 5, 6),
        "color": _Color.RED,
        "obj": _Odd(),
        "labels": {1: "one", None: "none", 2.5: "float", False: "bool"},
        "raw": b"bytes-value",
        "set": {"only"},
        "tuple": (1, "x"),
    }
    data = encode_event(event)
    decoded = orjson.loads(data)
    assert decoded["kind"] == "success"
    assert decoded["spend"] == "0.000123"
    assert decoded["when"].startswith("2024-05-06T07:08:09")
    assert decoded["day"] == "2024-05-06"
    assert decoded["color"] == "red"
    assert decoded["obj"] == "odd-object"
    assert decoded["labels"] == {"1": "one", "null": "none", "2.5": "float", "false": "bool"}
    assert decoded["raw"] == "b'bytes-value'"
    assert decoded["set"] == "{'only'}"
    assert decoded["tuple"] == [1, "x"]
    # Odd events still travel in an entry.
    fields = _as_redis(encode_entry("p", 1, [data], 0.0))
    assert decode_entry(fields).events == [decoded]


def test_encode_event_never_raises_on_unserialisable_str() -> None:
    class Broken:
        def __str__(self) -> str:
            return "broken"

        def __repr__(self) -> str:  # pragma: no cover - must not be needed
            raise RuntimeError("no repr")

    assert orjson.loads(encode_event({"kind": "success", "x": Broken()}))["x"] == "broken"


class _Huge(enum.IntEnum):
    BIG = 2**70


def test_encode_event_replaces_only_what_json_cannot_carry() -> None:
    """orjson refuses integers beyond 64 bits, lone surrogates and nesting deeper than 254: the
    value is replaced, the event still travels with everything else as it was."""
    cyclic: dict[str, object] = {}
    cyclic["self"] = cyclic
    deep: list[object] = ["bottom"]
    for _ in range(300):
        deep = [deep]
    event = [
        SUCCESS,
        1.5,
        2**64 - 1,  # the limits themselves are fine
        -(2**63),
        2**64,
        -(2**63) - 1,
        10**400,  # beyond any float: null, like an infinite float
        -(10**5000),  # more digits than Python's int -> str conversion allows
        _Huge.BIG,
        "a\ud800b\udfff",
        {2**70: "huge key", "k\ud800": "surrogate key", 3: "int key"},
        (1, 2**70),
        cyclic,
        deep,
        Decimal("0.5"),
        dt.datetime(2024, 5, 6, 7, 8, 9),
    ]
    decoded = orjson.loads(encode_event(event))
    assert decoded[:10] == [
        SUCCESS,
        1.5,
        2**64 - 1,
        -(2**63),
        float(2**64),
        float(-(2**63) - 1),
        None,
        None,
        float(2**70),
        "a\ufffdb\ufffd",
    ]
    assert decoded[10] == {repr(float(2**70)): "huge key", "k\ufffd": "surrogate key", "3": "int key"}
    assert decoded[11] == [1, float(2**70)]
    level, depth = decoded[12], 1
    while level is not None:
        level, depth = level["self"], depth + 1
    assert depth == 254  # the cycle is cut where orjson's nesting limit is
    level, depth = decoded[13], 1
    while isinstance(level, list) and level != ["bottom"]:
        level, depth = level[0], depth + 1
    assert level is None and depth == 254
    assert decoded[14:] == ["0.5", "2024-05-06T07:08:09"]
    # And the entry decodes.
    fields = _as_redis(encode_entry("p", 1, [encode_event(event)], 0.0))
    assert decode_entry(fields).events[0]["t"] == 1.5


def test_encode_event_usual_events_take_the_plain_encoding() -> None:
    event = [SUCCESS, 1.5, "key", 12, None, dt.datetime(2024, 5, 6, 7, 8, 9), [1, None]]
    assert encode_event(event) == orjson.dumps(event)


@pytest.mark.parametrize("extra", [0, -20, 3])
def test_positional_1x_success_events_decode_to_every_field(extra: int) -> None:
    """Exactly as many values as fields (the usual case), fewer (missing trailing fields are
    null) or more (extra values, from a newer producer, are ignored)."""
    n = len(SUCCESS_FIELDS_V1)
    row = [SUCCESS, *range(1, n + extra)]
    fields = _entry(events=[row])
    fields[F_VERSION.encode()] = b"1.0"
    [event] = decode_entry(fields).events
    assert list(event) == list(SUCCESS_FIELDS_V1)
    assert event["kind"] == SUCCESS
    values = [event[name] for name in SUCCESS_FIELDS_V1[1:]]
    expected = list(range(1, n + extra))[: n - 1]
    assert values == expected + [None] * (n - 1 - len(expected))


@pytest.mark.parametrize("extra", [0, -30, 3])
def test_positional_2x_success_events_decode_to_the_1x_names(extra: int) -> None:
    n = len(SUCCESS_FIELDS)
    row: list[object] = [SUCCESS, *range(1, n + extra)]
    for name in SUCCESS_TIME_FIELDS[:-1]:  # raw times: none set
        if SUCCESS_FIELDS.index(name) < len(row):
            row[SUCCESS_FIELDS.index(name)] = None
    [event] = decode_entry(_entry(events=[row])).events
    assert sorted(event) == sorted(DECODED_SUCCESS_FIELDS)
    for name in DECODED_SUCCESS_FIELDS[1:]:
        if name in SUCCESS_FIELDS and name not in SUCCESS_TIME_FIELDS[:-1]:
            i = SUCCESS_FIELDS.index(name)
            assert event[name] == (row[i] if i < len(row) else None), name
    assert event["latency_total"] is None and event["latency_per_token_basis"] is None


T0 = dt.datetime(2026, 11, 27, 10, 0, 0)


def _s(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _times(**raw: object) -> dict[str, object]:
    """Decode a 2.x success event carrying these raw time fields; return its latency fields."""
    row: list[object] = [SUCCESS] + [None] * (len(SUCCESS_FIELDS) - 1)
    for name, value in raw.items():
        row[SUCCESS_FIELDS.index(name)] = value
    [event] = decode_entry(_entry(events=[row])).events
    return {k: v for k, v in event.items() if k.startswith("latency_") and k != "latency_queue"}


def test_latencies_of_a_plain_call() -> None:
    start, end, api = T0, _s(2.5), _s(0.25)
    assert _times(end_time=end, start_time=start, api_call_start_time=api) == {
        "latency_total": 2.5,
        "latency_api": 2.25,
        "latency_ttft": None,  # not streamed
        "latency_per_token_basis": 2.5,  # the hook's times are the same objects
    }


def test_latencies_of_a_streamed_call() -> None:
    start, end, api, first = T0, _s(4.0), _s(0.5), _s(1.25)
    common = {"end_time": end, "start_time": start, "api_call_start_time": api, "streamed": True}
    assert _times(**common, completion_start_time=first) == {
        "latency_total": 4.0,
        "latency_api": 3.5,
        "latency_ttft": 0.75,
        "latency_per_token_basis": 1.25,  # to the first chunk
    }
    # No first-chunk time: no time to first token, the basis is the whole call.
    assert _times(**common) == {
        "latency_total": 4.0,
        "latency_api": 3.5,
        "latency_ttft": None,
        "latency_per_token_basis": 4.0,
    }
    # A first chunk at the very start: zero is not a basis, the whole call is.
    assert _times(**common, completion_start_time=start)["latency_per_token_basis"] == 4.0


def test_latencies_from_the_hooks_own_times() -> None:
    start, end = T0, _s(3.0)
    got = _times(end_time=end, start_time=start, hook_start_time=_s(1.0), hook_end_time=_s(2.5))
    assert got["latency_total"] == 3.0
    assert got["latency_per_token_basis"] == 1.5
    # false: the hook's time was not a datetime, so there is no basis.
    assert _times(end_time=end, start_time=start, hook_start_time=False)["latency_per_token_basis"] is None


def test_latencies_keep_microseconds_and_offsets() -> None:
    utc = dt.timezone.utc
    start = dt.datetime(2026, 1, 1, 23, 59, 59, 999_999, tzinfo=utc)
    end = dt.datetime(2026, 1, 2, 1, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    got = _times(end_time=end, start_time=start)
    assert got["latency_total"] == (end - start).total_seconds() == 0.000002
    # One aware and one naive time cannot be subtracted: no latency rather than an error.
    assert _times(end_time=end, start_time=T0)["latency_total"] is None
    # Unreadable text: no latency.
    assert _times(end_time="yesterday", start_time=T0)["latency_total"] is None
