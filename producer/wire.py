"""The wire format: how events travel from the producer to the aggregator.

One Redis stream entry carries a batch of events. Its fields (all values are bytes):

=====  ===============================================================================
``v``  envelope version ``MAJOR.MINOR``. A reader rejects an unknown MAJOR; a higher MINOR
       only adds optional fields and is read as usual.
``p``  producer instance id (unique per producer process start)
``s``  per-producer sequence number of this entry (1, 2, ...). A retried write reuses it,
       so ``(p, s)`` identifies a duplicate.
``n``  number of events in ``d``
``c``  codec of ``d``: ``json`` (a JSON array of event objects) or ``zjson`` (the same,
       zlib-compressed)
``d``  the events
``t``  producer wall-clock time when the entry was first built (seconds since the epoch)
=====  ===============================================================================

Each event is a JSON object with ``kind`` and ``t`` (event time, seconds since the epoch) and
the fields listed for its kind in ``docs/wire-format.md``. Absent optional fields mean ``None``.
"""

from __future__ import annotations

import enum
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

WIRE_MAJOR = 2
WIRE_MINOR = 3
#: Majors this reader decodes: 1.x entries (from producers before 2.0) are still read.
READABLE_MAJORS = (1, 2)
WIRE_VERSION = f"{WIRE_MAJOR}.{WIRE_MINOR}"

CODEC_JSON = "json"
CODEC_ZLIB_JSON = "zjson"

# Stream entry field names.
F_VERSION = "v"
F_PRODUCER = "p"
F_SEQ = "s"
F_COUNT = "n"
F_CODEC = "c"
F_DATA = "d"
F_BUILT_AT = "t"

# Event kinds (the ``kind`` field of an event).
SUCCESS = "success"
FAILURE = "failure"
POST_CALL_FAILURE = "post_call_failure"
FALLBACK_SUCCESS = "fallback_success"
FALLBACK_FAILURE = "fallback_failure"
DEPLOYMENT_STATE = "deployment_state"
DEPLOYMENT_COOLED_DOWN = "deployment_cooled_down"
PROVIDER_BUDGET = "provider_budget"
CALLBACK_FAILURE = "callback_failure"
GUARDRAIL = "guardrail"
TEAM_MEMBERS = "team_members"
SPEND_CAPTURE_RATE = "spend_capture_rate"
MANAGED_BATCH_CREATED = "managed_batch_created"
MANAGED_FILE_CREATED = "managed_file_created"
MANAGED_FILE_DELETED = "managed_file_deleted"
MANAGED_FILE_SIZE = "managed_file_size"
MANAGED_BATCH_DURATION = "managed_batch_duration"
CHECK_BATCH_COST_RUN = "check_batch_cost_run"
CHECK_BATCH_COST_ERROR = "check_batch_cost_error"

EVENT_KINDS = frozenset(
    {
        SUCCESS,
        FAILURE,
        POST_CALL_FAILURE,
        FALLBACK_SUCCESS,
        FALLBACK_FAILURE,
        DEPLOYMENT_STATE,
        DEPLOYMENT_COOLED_DOWN,
        PROVIDER_BUDGET,
        CALLBACK_FAILURE,
        GUARDRAIL,
        TEAM_MEMBERS,
        SPEND_CAPTURE_RATE,
        MANAGED_BATCH_CREATED,
        MANAGED_FILE_CREATED,
        MANAGED_FILE_DELETED,
        MANAGED_FILE_SIZE,
        MANAGED_BATCH_DURATION,
        CHECK_BATCH_COST_RUN,
        CHECK_BATCH_COST_ERROR,
    }
)


# The success event, built on the request path of every call, travels as a JSON *array* in this
# field order (kind first) instead of an object: smaller and cheaper to build and encode.
# Readers turn it into an object with these names. New fields are only ever appended; a reader
# treats missing trailing fields as null and ignores fields beyond the ones it knows.
#
# Wire 1.x shipped the four latencies computed; 2.x ships LiteLLM's times as they are (ISO 8601
# text, naive local time or with an offset, microseconds) and the reader derives the latencies
# (``derive_latencies``): the subtractions left the request path. Decoded events of both majors
# have the same names (``DECODED_SUCCESS_FIELDS``).
#: Success-event fields the producer copies from the SLP's ``metadata``: (field, metadata key).
SUCCESS_FROM_SLP_METADATA = (
    ("hashed_api_key", "user_api_key_hash"),
    ("api_key_alias", "user_api_key_alias"),
    ("team", "user_api_key_team_id"),
    ("team_alias", "user_api_key_team_alias"),
    ("user", "user_api_key_user_id"),
    ("user_email", "user_api_key_user_email"),
    ("org_id", "user_api_key_org_id"),
    ("org_alias", "user_api_key_org_alias"),
    ("project_id", "user_api_key_project_id"),
    ("project_alias", "user_api_key_project_alias"),
    ("route", "user_api_key_request_route"),
    ("client_ip", "requester_ip_address"),
    ("user_agent", "user_agent"),
)
#: Success-event fields the producer copies from the SLP itself: (field, SLP key).
SUCCESS_FROM_SLP = (
    ("model_group", "model_group"),
    ("model_id", "model_id"),
    ("api_base", "api_base"),
    ("api_provider", "custom_llm_provider"),
    ("stream", "stream"),
    ("cache_hit", "cache_hit"),
    ("response_cost", "response_cost"),
    ("total_tokens", "total_tokens"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
)
SUCCESS_FIELDS_V1 = (
    "kind",
    "t",
    *(name for name, _ in SUCCESS_FROM_SLP_METADATA),
    *(name for name, _ in SUCCESS_FROM_SLP),
    # resolved by the producer
    "end_user",
    "model",
    "original_model_group",
    "service_tier",
    "latency_total",
    "latency_api",
    "latency_ttft",
    "latency_queue",
    "latency_per_token_basis",
    "usage",
    "has_deployment",
    "deployment_provider",
    "deployment_model_id",
    "deployment_tpm",
    "deployment_rpm",
    "overhead_ms",
    "guardrail_overhead",
    "headers",
    "key_model_group",
    "key_remaining_requests",
    "key_remaining_tokens",
    "budget",
    "custom_labels",
    "tag_labels",
    "input_sequence_length",
    "zero_cost_reason",
    "mcp_tool",
    "mcp_server",
    # 2.3: the request's trace id, for exemplars (sent only with LSM_EXEMPLARS; producer/events.py).
    "trace_id",
)
_V1_LATENCIES = ("latency_total", "latency_api", "latency_ttft", "latency_queue", "latency_per_token_basis")
_at = SUCCESS_FIELDS_V1.index("latency_total")
#: The raw times of a 2.x success event, in this order, where 1.x had the latencies.
SUCCESS_TIME_FIELDS = (
    "end_time",  # kwargs end_time, else the hook's end_time, else the producer's clock
    "start_time",  # kwargs start_time (null: not a datetime)
    "api_call_start_time",  # kwargs api_call_start_time
    "completion_start_time",  # kwargs completion_start_time; only sent for streamed calls
    "streamed",  # kwargs stream is True
    "hook_start_time",  # the hook's start_time: null = the same as start_time, false = not a datetime
    "hook_end_time",  # the hook's end_time: null = the same as end_time, false = not a datetime
    "latency_queue",
)
SUCCESS_FIELDS = (
    *SUCCESS_FIELDS_V1[:_at],
    *SUCCESS_TIME_FIELDS,
    *SUCCESS_FIELDS_V1[_at + len(_V1_LATENCIES) :],
)
#: The names of a decoded success event (both majors).
DECODED_SUCCESS_FIELDS = SUCCESS_FIELDS_V1
# The compact ``usage`` list of a success event (SLP metadata ``usage_object``), in this order.
USAGE_FIELDS = (
    "cached_tokens",  # prompt_tokens_details.cached_tokens
    "cache_write_tokens",  # prompt_tokens_details.cache_write_tokens, else .cache_creation_tokens (ints)
    "input_audio_tokens",  # prompt_tokens_details.audio_tokens
    "reasoning_tokens",  # completion_tokens_details.reasoning_tokens
    "output_audio_tokens",  # completion_tokens_details.audio_tokens
    "duration_seconds",
    "output_image_count",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
# The ``headers`` list of a success event: these response headers, in this order (absent = null);
# null when the call had no additional headers at all.
V3_RATE_LIMITS = (
    ("api_key", "requests", "requests"),
    ("api_key", "tokens", "tokens"),
    ("team", "requests", "requests"),
    ("team", "tokens", "tokens"),
    ("model_per_project", "requests", "requests"),
    ("model_per_project", "tokens", "tokens"),
    ("model_per_project_itpm", "tokens", "input_tokens"),
    ("model_per_project_otpm", "tokens", "output_tokens"),
)
HEADER_FIELDS = (
    "x_ratelimit_remaining_requests",
    "x_ratelimit_remaining_tokens",
    "x-ratelimit-model_per_key-remaining-requests",
    "x-ratelimit-model_per_key-remaining-tokens",
    *(f"x-ratelimit-{d}-{part}-{h}" for d, h, _t in V3_RATE_LIMITS for part in ("limit", "remaining")),
)
# The ``budget`` list of a success event: these request-metadata keys, raw (absent = null), in
# this order. Readers resolve them as LiteLLM does (its ``_set_*_budget_metrics_after_api_request``;
# docs/compatibility.md, divergences 3 and 6): spend excludes this call's cost; a
# max budget falls back to the ``table`` value auth carried. Reset times are ISO 8601 text or
# numbers as the proxy carried them (a datetime without offset is UTC).
BUDGET_FIELDS = (
    "user_api_key_spend",
    "user_api_key_max_budget",
    "user_api_key_budget_reset_at",
    "user_api_key_team_spend",
    "user_api_key_team_max_budget",
    "user_api_key_team_table_max_budget",
    "user_api_key_team_budget_reset_at",
    "user_api_key_user_spend",
    "user_api_key_user_max_budget",
    "user_api_key_user_table_max_budget",
    "user_api_key_user_budget_reset_at",
    "user_api_key_user_alias",
    "user_api_key_org_spend",
    "user_api_key_org_max_budget",
)
# The request-metadata keys of LiteLLM's user budget snapshot (``UserBudgetSnapshot``): auth
# writes all three (values may be null) when it resolved the user; custom auth or a skipped
# budget check writes none. With the snapshot LiteLLM labels the user budget gauges with the
# request's user email and the snapshot's alias; without one it looks the user up (no database:
# both labels empty).
USER_SNAPSHOT_KEYS = (
    "user_api_key_user_budget_reset_at",
    "user_api_key_user_table_max_budget",
    "user_api_key_user_alias",
)
# Flags after the ``budget`` list's metadata values: 1 when the request carried LiteLLM's budget
# snapshot of that entity as LiteLLM's logger validates it (producer/snapshots.py), else 0.
# ``user_snapshot`` since 2.1, the others since 2.2. Absent (an older producer): read as carried.
BUDGET_FLAGS = ("user_snapshot", "key_snapshot", "team_snapshot", "org_snapshot")


def headers_as_dict(values: object) -> dict[str, Any]:
    """The ``headers`` list of a success event as a name -> value mapping (set values only)."""
    if not isinstance(values, list):
        return {}
    return {k: v for k, v in zip(HEADER_FIELDS, values, strict=False) if v is not None}


def as_object(event: object, names: tuple[str, ...]) -> dict[str, Any] | None:
    """A positional event as an object (missing trailing fields are null, extra ones ignored)."""
    if not isinstance(event, list):
        return None
    if len(event) == len(names):  # the usual case: one C call, ~40% faster than the general one
        return dict(zip(names, event, strict=True))
    out = dict.fromkeys(names)
    out.update(zip(names, event, strict=False))
    return out


def _time(value: object) -> datetime | None:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _seconds(end: datetime | None, start: datetime | None) -> float | None:
    if end is None or start is None:
        return None
    try:
        return (end - start).total_seconds()
    except TypeError:  # one with an offset, one without: no latency (LiteLLM's would raise)
        return None


def derive_latencies(event: dict[str, Any]) -> None:
    """Replace the raw times of a decoded 2.x success event by the 1.x latency fields, computed
    exactly as LiteLLM's logger computes them (``PrometheusLogger.async_log_success_event``)."""
    end = _time(event.pop("end_time", None))
    start = _time(event.pop("start_time", None))
    api_start = _time(event.pop("api_call_start_time", None))
    completion_start = _time(event.pop("completion_start_time", None))
    streamed = event.pop("streamed", None) is True
    hook_start_raw = event.pop("hook_start_time", None)
    hook_end_raw = event.pop("hook_end_time", None)
    hook_start = start if hook_start_raw is None else _time(hook_start_raw)
    hook_end = end if hook_end_raw is None else _time(hook_end_raw)
    event["latency_total"] = _seconds(end, start)
    event["latency_api"] = _seconds(end, api_start)
    event["latency_ttft"] = _seconds(completion_start, api_start) if streamed else None
    # The basis of latency per output token uses the hook's positional times; for a streamed
    # call the time to the first chunk, unless that is zero.
    basis = _seconds(hook_end, hook_start)
    if basis is not None and streamed and completion_start is not None:
        basis = _seconds(completion_start, hook_start) or basis
    event["latency_per_token_basis"] = basis


class WireError(ValueError):
    """An entry that cannot be read. ``reason`` is a short stable code for dead-lettering."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _default(value: object) -> object:
    # Anything orjson cannot serialise natively (Decimal, enums, custom objects) becomes text;
    # an event must never fail to encode because a label value has an odd type.
    return str(value)


# What orjson writes: integers in [-2**63, 2**64 - 1], UTF-8 text, at most 254 nested containers.
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_MAX_DEPTH = 254


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _usable_text(value: str) -> str:
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:  # lone surrogates (e.g. a "\ud800" escape in a request's JSON)
        return _SURROGATE.sub("\ufffd", value)


def _usable_int(value: int) -> float | None:
    try:
        return float(value)
    except OverflowError:  # beyond any float: like an infinite float, which orjson writes as null
        return None


def _usable_key(key: object) -> object:
    if isinstance(key, str):
        return _usable_text(key)
    if isinstance(key, int) and not isinstance(key, bool) and not _INT_MIN <= key <= _INT_MAX:
        return repr(_usable_int(key))  # a key stays a key (its digits may exceed Python's str limit)
    return key


def _usable(value: object, depth: int = 0) -> object:
    """A copy of ``value`` with what JSON (orjson) cannot carry replaced, everything else as is:
    an integer beyond 64 bits becomes the nearest float (what a JSON reader, orjson included,
    makes of its digits anyway; null beyond the float range), text with lone surrogates gets
    U+FFFD in their place, a container nested deeper than 254 levels (or a cycle) becomes null."""
    if isinstance(value, str):
        return _usable_text(value)
    if isinstance(value, enum.Enum):
        return _usable(value.value, depth)
    if isinstance(value, int) and not isinstance(value, bool):
        return value if _INT_MIN <= value <= _INT_MAX else _usable_int(value)
    if isinstance(value, (dict, list, tuple)):
        if depth >= _MAX_DEPTH:
            return None
        if isinstance(value, dict):
            return {_usable_key(k): _usable(v, depth + 1) for k, v in value.items()}
        return [_usable(v, depth + 1) for v in value]
    return value


def _usable_default(value: object) -> object:
    return _usable_text(str(value))


def encode_event(event: Mapping[str, Any] | list[Any]) -> bytes:
    """Serialise one event. Non-string keys and exotic values are stringified, values JSON
    cannot carry are replaced (``_usable``): an event is never rejected for one odd value.

    The usual event takes the first ``dumps`` alone; the others only run when it fails."""
    try:
        return orjson.dumps(event)
    except TypeError:
        pass
    try:
        return orjson.dumps(event, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits, lone surrogates, depth
        return orjson.dumps(_usable(event), default=_usable_default, option=orjson.OPT_NON_STR_KEYS)


def entry_header(producer_id: str, seq: int, count: int, codec: str, built_at: float) -> dict[str, bytes]:
    """Every field of a stream entry except the events (``d``)."""
    return {
        F_VERSION: WIRE_VERSION.encode(),
        F_PRODUCER: producer_id.encode(),
        F_SEQ: str(seq).encode(),
        F_COUNT: str(count).encode(),
        F_CODEC: codec.encode(),
        F_BUILT_AT: repr(built_at).encode(),
    }


def array_length(events_bytes: int, count: int) -> int:
    """Length of the JSON array of ``count`` encoded events of ``events_bytes`` in all."""
    return events_bytes + count + 1 if count else 2


def compresses(data_length: int, compress_min_bytes: int) -> bool:
    """Whether an entry whose JSON array is ``data_length`` bytes long is stored compressed."""
    return bool(compress_min_bytes) and data_length >= compress_min_bytes


def encode_entry(
    producer_id: str,
    seq: int,
    events: Sequence[bytes],
    built_at: float,
    compress_min_bytes: int = 0,
) -> dict[str, bytes]:
    """Build the fields of one stream entry from already-encoded events."""
    data = b"[" + b",".join(events) + b"]"
    codec = CODEC_JSON
    if compresses(len(data), compress_min_bytes):
        data = zlib.compress(data, 1)
        codec = CODEC_ZLIB_JSON
    fields = entry_header(producer_id, seq, len(events), codec, built_at)
    fields[F_DATA] = data
    return fields


@dataclass(frozen=True)
class Entry:
    """A decoded stream entry."""

    major: int
    minor: int
    producer_id: str
    seq: int
    built_at: float
    events: list[dict[str, Any]]


def _field(fields: Mapping[bytes, bytes], name: str) -> bytes:
    value = fields.get(name.encode())
    if value is None:
        raise WireError("missing_field", f"entry has no {name!r} field")
    return value


def parse_version(raw: bytes) -> tuple[int, int]:
    try:
        major_s, _, minor_s = raw.decode().partition(".")
        return int(major_s), int(minor_s or "0")
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError("bad_version", f"unreadable version {raw[:32]!r}") from exc


#: Longest producer id a reader accepts; the producer's own are ``<host (<= 64)>:<pid>:<8 hex>``.
MAX_PRODUCER_ID = 200
#: A producer id: printable, no spaces or control characters (it names Redis keys and fields).
PRODUCER_ID = re.compile(rf"[!-~\u00a1-\U0010ffff]{{1,{MAX_PRODUCER_ID}}}")


def decode_entry(fields: Mapping[bytes, bytes], max_decoded_bytes: int = 64 * 1024 * 1024) -> Entry:
    """Decode a stream entry, raising ``WireError`` for anything that cannot be applied."""
    major, minor = parse_version(_field(fields, F_VERSION))
    if major not in READABLE_MAJORS:
        known = ", ".join(f"{m}.x" for m in READABLE_MAJORS)
        raise WireError("unknown_major", f"wire version {major}.{minor}; this reader knows {known}")
    try:
        producer_id = _field(fields, F_PRODUCER).decode()
        seq = int(_field(fields, F_SEQ))
        count = int(_field(fields, F_COUNT))
        built_at = float(fields.get(F_BUILT_AT.encode(), b"0"))
        codec = _field(fields, F_CODEC).decode()
    except WireError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError("bad_header", str(exc)) from exc
    if seq < 1:
        raise WireError("bad_header", f"sequence must be >= 1, got {seq}")
    if not PRODUCER_ID.fullmatch(producer_id):
        raise WireError("bad_header", f"producer id {producer_id[:80]!r}: 1-{MAX_PRODUCER_ID} printable characters")
    data = _field(fields, F_DATA)
    if codec == CODEC_ZLIB_JSON:
        try:
            decompressor = zlib.decompressobj()
            data = decompressor.decompress(data, max_decoded_bytes)
            if decompressor.unconsumed_tail:
                raise WireError("too_large", f"decoded entry exceeds {max_decoded_bytes} bytes")
        except zlib.error as exc:
            raise WireError("undecodable", f"zlib: {exc}") from exc
    elif codec != CODEC_JSON:
        raise WireError("unknown_codec", f"codec {codec!r}")
    try:
        events = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WireError("undecodable", f"json: {exc}") from exc
    if not isinstance(events, list):
        raise WireError("invalid", "payload is not a list of events")
    v1 = major == 1
    for i, e in enumerate(events):
        if isinstance(e, list):
            if not e or e[0] != SUCCESS:
                raise WireError("invalid", f"event {i}: unknown positional event kind")
            if v1:
                events[i] = as_object(e, SUCCESS_FIELDS_V1)
            else:
                ev = as_object(e, SUCCESS_FIELDS)
                derive_latencies(ev)  # type: ignore[arg-type]
                events[i] = ev
        elif not isinstance(e, dict):
            raise WireError("invalid", f"event {i} is neither an object nor a positional event")
    if len(events) != count:
        raise WireError("count_mismatch", f"header says {count} events, payload has {len(events)}")
    return Entry(major, minor, producer_id, seq, built_at, events)
