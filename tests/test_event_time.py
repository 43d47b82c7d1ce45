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
