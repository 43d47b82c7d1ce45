"""The event time of a success event is LiteLLM's end_time, in epoch seconds, on both paths."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from producer import events, wire


class _Logger:
    """success_event only calls the logger for calls with an exception."""


def _event_time(end: datetime) -> float:
    kwargs = {"standard_logging_object": {"metadata": {}}, "end_time": end, "start_time": end - timedelta(seconds=1)}
    ev = events.success_event(_Logger(), kwargs, None, None, None)
    assert ev is not None
    return float(ev[wire.SUCCESS_FIELDS.index("t")])


@pytest.mark.parametrize("local_is_utc", [True, False])
def test_naive_and_aware_end_times(monkeypatch: pytest.MonkeyPatch, local_is_utc: bool) -> None:
    monkeypatch.setattr(events, "_LOCAL_IS_UTC", local_is_utc and events._LOCAL_IS_UTC)
    naive = datetime(2026, 11, 27, 10, 0, 0, 123456)
    assert _event_time(naive) == pytest.approx(naive.timestamp(), abs=1e-6)
    aware = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert _event_time(aware) == pytest.approx(aware.timestamp(), abs=1e-6)


def _latencies(kwargs: dict[str, object], start_time: object, end_time: object) -> dict[str, object]:
    """The latencies a reader derives from the success event the producer builds."""
    ev = events.success_event(
        _Logger(), {"standard_logging_object": {"metadata": {}}, **kwargs}, None, start_time, end_time
    )
    entry = wire.encode_entry("p", 1, [wire.encode_event(ev)], 0.0)
    [decoded] = wire.decode_entry({k.encode(): v for k, v in entry.items()}).events
    return {k: v for k, v in decoded.items() if k.startswith("latency_") and k != "latency_queue"}


T0 = datetime(2026, 11, 27, 10, 0, 0)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_latencies_of_a_streamed_call_with_the_hooks_own_times() -> None:
    kwargs = {
        "start_time": T0,
        "end_time": _at(5.0),
        "api_call_start_time": _at(0.5),
        "completion_start_time": _at(1.5),
        "stream": True,
    }
    # The hook's times are the kwargs' objects (what LiteLLM passes).
    assert _latencies(kwargs, kwargs["start_time"], kwargs["end_time"]) == {
        "latency_total": 5.0,
        "latency_api": 4.5,
        "latency_ttft": 1.0,
        "latency_per_token_basis": 1.5,
    }
    # Other positional times: the basis is measured from the hook's start.
    got = _latencies(kwargs, _at(1.0), _at(4.0))
    assert got["latency_per_token_basis"] == 0.5
    # Not datetimes: no basis, the other latencies stand.
    got = _latencies(kwargs, None, None)
    assert got == {"latency_total": 5.0, "latency_api": 4.5, "latency_ttft": 1.0, "latency_per_token_basis": None}


def test_latencies_of_a_plain_call() -> None:
    kwargs = {"start_time": T0, "end_time": _at(2.0), "api_call_start_time": _at(0.25), "stream": False}
    assert _latencies(kwargs, _at(0.0), _at(2.0)) == {
        "latency_total": 2.0,
        "latency_api": 1.75,
        "latency_ttft": None,
        "latency_per_token_basis": 2.0,
    }
    # No start time in kwargs: no total, and a string is not a time.
    got = _latencies({"end_time": _at(2.0), "start_time": "2026-11-27T10:00:00"}, None, None)
    assert got["latency_total"] is None
