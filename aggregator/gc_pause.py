"""Keeping Python's cyclic garbage collector away from batches in flight.

A batch allocates hundreds of thousands of containers (decoded events, delta entries) that live
until it is applied, and none of them form reference cycles. If the collector runs while they
are alive, it walks them all: one collection after a batch of 25,000 events took 0.6 s of the
aggregator's CPU (~13 us per event), measured in ``bench/aggregator_bench.py``. So the collector
is paused from the moment a batch is read until it is applied and dropped (then its objects are
freed by reference counting, and the collector resumes with only the survivors to look at).

The pause is process-wide and held by any number of holders at once (batches overlap, and
several shards run in one process): the collector resumes when the last holder releases it. So
that a busy aggregator (always a batch in flight) still collects cyclic garbage, a release after
``max_paused_seconds`` of uninterrupted pause runs one collection of the young generations.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
import weakref
from collections.abc import Iterator


class GcPause:
    def __init__(self, max_paused_seconds: float = 30.0) -> None:
        self.max_paused_seconds = max_paused_seconds
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False
        self._since = 0.0
        #: collections run because the pause lasted longer than max_paused_seconds
        self.forced_collections = 0

    @property
    def holders(self) -> int:
        return self._holders

    def hold(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
                self._since = time.monotonic()
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            if self._holders <= 0:
                raise RuntimeError("GcPause.release() without a matching hold()")
            self._holders -= 1
            if self._holders == 0:
                if self._was_enabled:
                    gc.enable()
                return
            collect = self._was_enabled and time.monotonic() - self._since > self.max_paused_seconds
            if collect:
                self.forced_collections += 1
                self._since = time.monotonic()
        if collect:
            # Outside the lock: the collection may free a batch held by hold_while_alive (one in
            # a reference cycle, e.g. through an exception's traceback), whose finalizer calls
            # release() on this very thread.
            gc.collect(1)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.hold()
        try:
            yield
        finally:
            self.release()

    def hold_while_alive(self, obj: object) -> weakref.finalize[[], object]:
        """Hold the pause until ``obj`` is freed (whatever path drops it) or the returned
        finalizer is called, whichever comes first (the release happens once).

        Call the finalizer when done with ``obj``: an exception's traceback can keep it alive in
        a reference cycle, which only the (paused) collector would free."""
        self.hold()
        return weakref.finalize(obj, self.release)


GC_PAUSE = GcPause()


def paused_gc() -> contextlib.AbstractContextManager[None]:
    """Pause the cyclic collector for a block (see the module docstring)."""
    return GC_PAUSE.paused()
