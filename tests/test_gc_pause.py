"""The cyclic collector is paused while batches are in flight, and never stays paused."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from aggregator.apply import PendingEntry
from aggregator.consumer import ShardConsumer
from aggregator.gc_pause import GC_PAUSE, GcPause
from aggregator.state import Delta
from producer.keys import Keys
from tests.test_apply import GROUP, count_events, settings, totals, xadd


@pytest.fixture(autouse=True)
def gc_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    assert GC_PAUSE.holders == 0, "a GC pause was left held"
    if not was:
        gc.disable()


def test_paused_until_the_last_holder_releases() -> None:
    pause = GcPause()
    pause.hold()
    other = threading.Thread(target=pause.hold)
    other.start()
    other.join()
    assert not gc.isenabled()
    pause.release()
    assert not gc.isenabled(), "resumed while another holder still holds the pause"
    pause.release()
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        pause.release()


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    pause = GcPause()
    with pause.paused():
        pass
    assert not gc.isenabled()


def test_a_long_uninterrupted_pause_still_collects() -> None:
    collected: list[int] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            collected.append(info["generation"])

    pause = GcPause(max_paused_seconds=0.0)
    gc.callbacks.append(on_gc)
    try:
        pause.hold()
        pause.hold()
        collected.clear()
        pause.release()  # another holder remains, but the pause has lasted long enough
        assert pause.forced_collections == 1 and 1 in collected
        assert not gc.isenabled()
        pause.release()
        assert gc.isenabled()
    finally:
        gc.callbacks.remove(on_gc)


def test_a_forced_collection_that_frees_a_held_batch_does_not_deadlock() -> None:
    """A batch in a reference cycle (say, reachable from an exception's traceback) is freed only
    by a collection, and its finalizer releases the pause on the thread that runs the collection:
    the forced collection must not run while the pause's lock is held."""

    class Batch:
        def __init__(self) -> None:
            self.me = self  # a cycle: reference counting alone never frees it

    pause = GcPause(max_paused_seconds=0.0)
    pause.hold_while_alive(Batch())
    pause.hold()
    pause.hold()
    done = threading.Event()

    def release() -> None:
        pause.release()  # two holders left: a forced collection, which frees the cyclic batch
        done.set()

    worker = threading.Thread(target=release, daemon=True)
    worker.start()
    assert done.wait(10), "release() deadlocked in the forced collection"
    assert pause.forced_collections >= 1 and pause.holders == 1  # the batch's hold went with it
    pause.release()
    assert pause.holders == 0 and gc.isenabled()


def test_hold_while_alive_releases_when_the_object_goes() -> None:
    class Batch:
        pass

    pause = GcPause()
    batch = Batch()
    pause.hold_while_alive(batch)
    assert not gc.isenabled() and pause.holders == 1
    del batch
    assert gc.isenabled() and pause.holders == 0


async def test_a_batch_keeps_the_collector_paused_until_applied(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    keys = Keys(namespace)
    consumer = ShardConsumer(aclient, settings(redis_url, namespace), 0, count_events)
    await consumer.ensure_group()
    xadd(redis_client, keys, "p1", 1, [2, 3])
    raw = await aclient.xreadgroup(GROUP, "c1", {keys.stream(0): ">"}, count=10)
    batch = await consumer._prepare_batch(raw[0][1], {})
    assert not gc.isenabled(), "decoded and built, not applied: its objects must not be walked"
    await consumer._apply(batch)
    assert totals(redis_client, keys) == {'["p1"]': 5.0}
    del batch
    assert gc.isenabled()


async def test_the_consumer_loop_leaves_no_pause_behind(
    aclient: aioredis.Redis, redis_client: redis.Redis, redis_url: str, namespace: str
) -> None:
    """Batches overlap in the loop (one applied while the next is built); once it is done and
    stopped, every hold is released, including after a batch that failed to build."""
    keys = Keys(namespace)
    failed = False

    def flaky(entries: Sequence[PendingEntry]) -> Delta:
        nonlocal failed
        if not failed:
            failed = True
            raise RuntimeError("engine bug")
        return count_events(entries)

    consumer = ShardConsumer(aclient, settings(redis_url, namespace, read_count=2, block_seconds=0.05), 0, flaky)
    for seq in range(1, 11):
        xadd(redis_client, keys, "p1", seq, [1])
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    for _ in range(1000):
        if sum(totals(redis_client, keys).values()) == 10.0:
            break
        await asyncio.sleep(0.02)
    assert sum(totals(redis_client, keys).values()) == 10.0
    stop.set()
    await task
    gc.collect()  # nothing but reference counting should be needed; make sure cycles do not hide a hold
    assert GC_PAUSE.holders == 0 and gc.isenabled()
