"""Invariants 1-3 (nothing lost, nothing counted twice, restart-proof) under failures.

Three aggregator processes (``python -m aggregator run``) consume one shard while a producer
process streams synthetic success events through the real ``Emitter``. Each scenario ends when
the group has nothing pending and nothing left to deliver; then the totals in Redis must equal
exactly what the producer produced:

1. aggregators are killed with SIGKILL at random moments, several times each, and restarted,
   sometimes under the same consumer name (it drains its own pending entries), sometimes under
   a new one (the dead consumer's entries are taken over with XAUTOCLAIM);
2. the same, with the producer behind a proxy that forwards some writes and then drops the reply
   and the connection: the producer resends the same ``(producer, seq)`` and duplicates land in
   the stream;
3. the same, with Redis itself killed (SIGKILL) and restarted on the same port mid-run
   (append-only file, fsync always).

The workload is built so that the expected totals are exact: 200 keys x 20 models (4,000
series), costs that are multiples of 1/1024 (float sums are exact and order-independent),
integer token counts. Every second or two the test prints its progress (``pytest -s``).

The test module is also the producer's program: ``python -m tests.test_aggregator_crash
produce URL NAMESPACE EVENTS RATE OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from aggregator.local_server import LocalServer
from aggregator.snapshot import read_families
from producer.keys import Keys
from producer.wire import SUCCESS_FIELDS
from tests.events import positional, success_event
from tests.support import ReplyLosingProxy

pytestmark = [pytest.mark.fault, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
GROUP = "aggregators"
N_KEYS = 200
N_MODELS = 20
T0 = 1_700_000_000.0
_I = {name: i for i, name in enumerate(SUCCESS_FIELDS)}

# Aggregator settings for the chaos runs: a dead consumer's entries are taken over after 2 s.
# Batches stay at the default size (100 entries, here 50,000 events, several seconds to apply on
# a loaded machine): a live consumer keeps its batch claimed while it works on it.
AGGREGATOR_ENV = {
    "LSM_CLAIM_MIN_IDLE": "2",
    "LSM_CLAIM_INTERVAL": "0.5",
    "LSM_BLOCK_SECONDS": "0.2",
    "LSM_HOUSEKEEPING_INTERVAL": "1",
    "LSM_SOCKET_TIMEOUT": "3",
    "LSM_CONNECT_TIMEOUT": "0.5",
    "LSM_LOG_LEVEL": "INFO",
    "LSM_HTTP_PORT": "0",
    "LSM_METRICS_BEARER_TOKEN": "test-token",
    # LSM_MAX_DELIVERIES / LSM_MAX_ISOLATED_ATTEMPTS stay at their defaults: the chaos kills an
    # aggregator about every second, so on a slow machine a batch can die with its consumers more
    # than five times; its entries must then be applied alone, never dead-lettered.
}


# -- the workload ---------------------------------------------------------------------------------


def combo(i: int) -> tuple[int, int]:
    """(key, model) of event ``i``: every one of the 4,000 combinations, 50 events each per 200k."""
    return i % N_KEYS, (i // N_KEYS) % N_MODELS


def cost_of(i: int) -> float:
    return ((i * 37) % 1024) / 1024  # exact in binary: sums do not depend on the order


def tokens_of(i: int) -> tuple[int, int]:
    return i % 1000, i % 77  # prompt, completion


def synthetic_event(i: int) -> list[Any]:
    """Success event ``i`` in the positional wire format (``SUCCESS_FIELDS`` order)."""
    key, model = combo(i)
    prompt, completion = tokens_of(i)
    return positional(
        success_event(
            t=T0 + i / 1000,
            hashed_api_key=f"{key:064x}",
            api_key_alias=f"key-{key}",
            team=f"team-{key % 10}",
            model_group=f"group-{model}",
            model_id=f"deployment-{model}",
            api_provider="openai",
            stream=False,
            response_cost=cost_of(i),
            total_tokens=prompt + completion,
            prompt_tokens=prompt,
            completion_tokens=completion,
            model=f"model-{model}",
        )
    )


def labels_of(key: int, model: int) -> dict[str, str]:
    """The label values LiteLLM renders for a (key, model) combination (None -> "None")."""
    labels = dict.fromkeys(
        ("end_user", "team_alias", "user", "user_email", "client_ip", "user_agent", "org_id", "org_alias"), "None"
    )
    labels.update(
        hashed_api_key=f"{key:064x}",
        api_key_alias=f"key-{key}",
        team=f"team-{key % 10}",
        model=f"model-{model}",
        requested_model=f"group-{model}",
        model_id=f"deployment-{model}",
        api_provider="openai",
        service_tier="None",
    )
    return labels


CHECKED = (
    "litellm_requests_metric",
    "litellm_spend_metric",
    "litellm_total_tokens_metric",
    "litellm_input_tokens_metric",
    "litellm_output_tokens_metric",
)


def expected_totals(n: int | Iterable[int], engine: Engine) -> dict[str, dict[tuple[str, ...], float]]:
    """Per metric, per series: what events 0..n-1 (or the events numbered in ``n``) must add up to."""
    sums: dict[tuple[int, int], list[float]] = {}
    for i in range(n) if isinstance(n, int) else n:
        prompt, completion = tokens_of(i)
        s = sums.setdefault(combo(i), [0.0, 0.0, 0.0, 0.0, 0.0])
        s[0] += 1
        s[1] += cost_of(i)
        s[2] += prompt + completion
        s[3] += prompt
        s[4] += completion
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for k, metric in enumerate(CHECKED):
        names = engine.label_names(metric)
        series = out[metric] = {}
        for (key, model), s in sums.items():
            labels = labels_of(key, model)
            series[tuple(labels[name] for name in names)] = s[k]
    return out


# -- the producer process -------------------------------------------------------------------------


def produce(url: str, namespace: str, events: int, rate: float, out: str) -> int:
    """Offer ``events`` synthetic events at about ``rate``/s, close, write the counters to ``out``.

    The buffer is kept far below its bound (no event may be dropped: the totals must be exact)."""
    from producer.emitter import Emitter
    from producer.settings import ProducerSettings
    from producer.wire import encode_event

    settings = ProducerSettings(
        redis_url=url,
        namespace=namespace,
        flush_interval=0.02,
        connect_timeout=0.5,
        socket_timeout=1.0,
        backoff_base=0.01,
        backoff_max=0.3,
        stats_interval=0.5,
        shutdown_timeout=120.0,
    )
    em = Emitter(settings)
    started = time.monotonic()
    for i in range(events):
        if i % 500 == 0:
            while em.buffered() > 20_000:
                time.sleep(0.005)
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        if not em.offer(encode_event(synthetic_event(i))):
            print(f"event {i} dropped: {em.counters.dropped}", file=sys.stderr)
            return 1
    closed = em.close()
    c = em.counters
    result = {
        "producer_id": em.producer_id,
        "closed": closed,
        "accepted": c.accepted,
        "sent": c.sent,
        "entries_sent": c.entries_sent,
        "dropped": c.dropped,
        "flush_errors": c.flush_errors,
        "last_error": c.last_error,
        "seconds": time.monotonic() - started,
    }
    Path(out).write_text(json.dumps(result))
    return 0 if closed else 1


# -- processes under test -------------------------------------------------------------------------


@dataclass
class Slot:
    index: int
    name: str
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0


class Fleet:
    """Aggregator processes, one per slot; killed with SIGKILL and restarted by the test."""

    def __init__(self, url: str, namespace: str, logdir: Path, env: dict[str, str], size: int = 3) -> None:
        self.url = url
        self.namespace = namespace
        self.logdir = logdir
        self.env = {**AGGREGATOR_ENV, **env}
        self.slots = [Slot(i, f"agg{i}") for i in range(size)]
        self.starts = 0
        self.exits: list[tuple[str, int]] = []  # (consumer, code) of processes that ended by themselves

    def start(self, slot: Slot) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env.update(LSM_REDIS_URL=self.url, LSM_NAMESPACE=self.namespace, LSM_CONSUMER_NAME=slot.name)
        log = open(self.logdir / f"{slot.name}.log", "ab")  # noqa: SIM115 - owned by the process
        slot.process = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1

    def start_all(self) -> None:
        for slot in self.slots:
            self.start(slot)

    def kill(self, slot: Slot) -> None:
        p = slot.process
        if p is not None:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        slot.process = None

    def check_alive(self) -> None:
        """An aggregator must never exit by itself (e.g. while Redis is down)."""
        for slot in self.slots:
            p = slot.process
            if p is not None and p.poll() is not None:
                self.exits.append((slot.name, p.returncode))
                slot.process = None

    def stop_all(self) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)
        for slot in self.slots:
            if slot.process is not None:
                try:
                    slot.process.wait(15)
                except subprocess.TimeoutExpired:
                    slot.process.kill()
                    slot.process.wait(10)
                slot.process = None

    def log_tail(self, n: int = 3000) -> str:
        parts = []
        for path in sorted(self.logdir.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-n:]}")
        return "\n".join(parts)


def start_producer(url: str, namespace: str, events: int, rate: float, out: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.test_aggregator_crash",
                "produce",
                url,
                namespace,
                str(events),
                str(rate),
                str(out),
            ],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# -- the chaos run --------------------------------------------------------------------------------


@dataclass
class Chaos:
    """What a run did to the processes."""

    kills: int = 0
    same_name_restarts: int = 0
    new_name_restarts: int = 0
    # Entries pending at a killed consumer when it died, by how it came back.
    orphaned_same_name: int = 0
    orphaned_new_name: int = 0
    kills_per_slot: dict[int, int] = field(default_factory=dict)
    redis_restarts: int = 0
    restarts_while_redis_down: int = 0
    log: list[str] = field(default_factory=list)


@dataclass
class Run:
    name: str
    server: LocalServer
    namespace: str
    events: int
    rate: float
    tmp: Path
    producer_url: str | None = None
    min_kills: int = 9  # aggregator kills in all
    min_kills_per_slot: int = 2
    redis_kills: int = 0
    seed: int = 0
    timeout: float = 180.0
    aggregator_env: dict[str, str] = field(default_factory=dict)  # on top of AGGREGATOR_ENV
    chaos: Chaos = field(default_factory=Chaos)


def _group(client: redis.Redis, stream: str) -> dict[str, Any] | None:
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    for g in groups:
        if g["name"] in (GROUP, GROUP.encode()):
            return dict(g)
    return None


def drained(client: redis.Redis, stream: str) -> bool:
    """Nothing pending and nothing left to deliver."""
    g = _group(client, stream)
    if g is None:
        return False
    info: Any = client.xinfo_stream(stream)
    last = info["last-generated-id"]
    return int(g["pending"]) == 0 and g["last-delivered-id"] == last and g.get("lag") in (0, None)


def consumer_pending(client: redis.Redis, stream: str, name: str) -> int:
    try:
        consumers: Any = client.xinfo_consumers(stream, GROUP)
    except redis.ResponseError:
        return 0
    for c in consumers:
        if c["name"] in (name, name.encode()):
            return int(c["pending"])
    return 0


def more_kills_needed(run: Run, fleet: Fleet) -> bool:
    per_slot = [run.chaos.kills_per_slot.get(s.index, 0) for s in fleet.slots]
    return run.chaos.kills < run.min_kills or min(per_slot) < run.min_kills_per_slot


def _quiet(fn: Callable[[], Any], default: Any) -> Any:
    """``fn()``, or ``default`` while Redis is down."""
    try:
        return fn()
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return default


def chaos_run(run: Run) -> dict[str, Any]:
    """Produce, consume, kill; return the producer's counters once everything is applied."""
    rng = random.Random(run.seed)
    keys = Keys(run.namespace)
    stream = keys.stream(0)
    client = redis.Redis.from_url(run.server.url, socket_timeout=5, socket_connect_timeout=1)
    fleet = Fleet(run.server.url, run.namespace, run.tmp, run.aggregator_env)
    out = run.tmp / "producer.json"
    chaos = run.chaos
    started = time.monotonic()

    def say(msg: str) -> None:
        line = f"[{run.name} +{time.monotonic() - started:5.1f}s] {msg}"
        chaos.log.append(line)
        print(line, flush=True)

    pending_restarts: list[tuple[float, Slot]] = []

    def kill_aggregator(slot: Slot, restart_in: float, same: bool | None = None) -> None:
        """SIGKILL, then back after ``restart_in`` s under the same or a new consumer name."""
        fleet.kill(slot)
        chaos.kills += 1
        chaos.kills_per_slot[slot.index] = chaos.kills_per_slot.get(slot.index, 0) + 1
        held = _quiet(lambda: consumer_pending(client, stream, slot.name), -1)
        pending_restarts.append((time.monotonic() + restart_in, slot))
        if same is None:
            # Both recovery paths must be exercised: when the dead consumer left entries behind,
            # take the path that has recovered fewer entries so far.
            if held > 0 and chaos.orphaned_same_name != chaos.orphaned_new_name:
                same = chaos.orphaned_same_name < chaos.orphaned_new_name
            else:
                same = rng.random() < 0.5
        if same:
            chaos.same_name_restarts += 1
            chaos.orphaned_same_name += max(held, 0)
        else:
            slot.generation += 1
            slot.name = f"agg{slot.index}-g{slot.generation}"
            chaos.new_name_restarts += 1
            chaos.orphaned_new_name += max(held, 0)
        say(f"killed aggregator slot {slot.index} holding {held} pending entries; back as {slot.name}")

    fleet.start_all()
    producer = start_producer(
        run.producer_url or run.server.url, run.namespace, run.events, run.rate, out, run.tmp / "producer.log"
    )
    next_kill = time.monotonic() + rng.uniform(0.5, 1.5)
    redis_kill_times = sorted(rng.uniform(1.5, max(2.0, run.events / run.rate - 0.5)) for _ in range(run.redis_kills))
    redis_down_until: float | None = None
    next_print = 0.0
    last_applied, last_t = 0, time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if now - started > run.timeout:
                raise AssertionError(f"{run.name}: not drained after {run.timeout} s\n{fleet.log_tail()}")
            fleet.check_alive()
            producing = producer.poll() is None
            redis_up = redis_down_until is None
            # Redis: kill -9 and restart on the same port. The first outage is long enough for an
            # aggregator killed with it to come back while Redis is still down.
            if redis_up and redis_kill_times and now - started >= redis_kill_times[0]:
                redis_kill_times.pop(0)
                run.server.kill()
                first = chaos.redis_restarts == 0
                redis_down_until = now + (2.5 if first else rng.uniform(0.3, 1.0))
                chaos.redis_restarts += 1
                say("redis killed (SIGKILL)")
                if first:
                    candidates = [s for s in fleet.slots if s.process is not None]
                    if candidates:
                        kill_aggregator(rng.choice(candidates), 0.1, same=True)
            elif redis_down_until is not None and now >= redis_down_until:
                run.server.start()
                redis_down_until = None
                say("redis restarted")
            # Aggregators: kill -9 a random one, restart it a little later.
            busy = {s.index for _, s in pending_restarts}
            if (producing or more_kills_needed(run, fleet)) and now >= next_kill:
                candidates = [s for s in fleet.slots if s.index not in busy and s.process is not None]
                if candidates and not producing:  # make up the per-slot minimum first
                    least = min(chaos.kills_per_slot.get(s.index, 0) for s in candidates)
                    candidates = [s for s in candidates if chaos.kills_per_slot.get(s.index, 0) == least]
                if candidates:
                    kill_aggregator(rng.choice(candidates), rng.uniform(0.0, 1.0))
                next_kill = now + rng.uniform(0.4, 1.4)
            for due, slot in list(pending_restarts):
                if now >= due:
                    pending_restarts.remove((due, slot))
                    fleet.start(slot)
                    if redis_down_until is not None:
                        chaos.restarts_while_redis_down += 1
            for slot in fleet.slots:  # an aggregator that exited by itself is restarted too
                if slot.process is None and all(s is not slot for _, s in pending_restarts):
                    fleet.start(slot)
            # Progress.
            if now >= next_print:
                stats = _quiet(lambda: client.hgetall(keys.shard_stats(0)), {})
                applied = int(stats.get(b"events_applied", 0))
                rate = (applied - last_applied) / max(now - last_t, 1e-6)
                last_applied, last_t = applied, now
                g = _quiet(lambda: _group(client, stream), None) or {}
                say(
                    f"applied {applied:,}/{run.events:,} events ({rate:,.0f}/s), pending {g.get('pending', '?')}, "
                    f"lag {g.get('lag', '?')}, dup entries {int(stats.get(b'duplicate_entries', 0))}, "
                    f"kills {chaos.kills}, producer {'running' if producing else 'done'}"
                )
                next_print = now + 2.0
            if (
                not producing
                and redis_up
                and not redis_kill_times
                and not pending_restarts
                and not more_kills_needed(run, fleet)
                and _quiet(lambda: drained(client, stream), False)
            ):
                break
            time.sleep(0.05)
        assert producer.wait(5) == 0, (run.tmp / "producer.log").read_text(errors="replace")[-3000:]
        assert not fleet.exits, f"aggregators exited by themselves: {fleet.exits}\n{fleet.log_tail()}"
        say(f"drained in {time.monotonic() - started:.1f} s")
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait(10)
        if run.server.process is None:
            run.server.start()
        fleet.stop_all()
        client.close()
    return dict(json.loads(out.read_text()))


def assert_exact(run: Run, produced: dict[str, Any]) -> dict[str, int]:
    """The totals in Redis are exactly what the producer produced; returns the shard stats."""
    n = run.events
    assert produced["accepted"] == produced["sent"] == n, produced
    assert sum(produced["dropped"].values()) == 0, produced
    keys = Keys(run.namespace)
    client = redis.Redis.from_url(run.server.url, socket_timeout=10)
    try:
        stats = {k.decode(): int(v) for k, v in client.hgetall(keys.shard_stats(0)).items()}
        applied_by = {k.decode(): int(v) for k, v in client.hgetall(keys.applied_by_producer(0)).items()}
        pstats = {
            k.decode(): v.decode() for k, v in client.hgetall(keys.producer_stats(produced["producer_id"])).items()
        }
        dead = client.xrange(keys.dead_letters(0), count=5)
        engine = Engine(MetricsConfig.from_litellm_settings({}))
        families = read_families(client, keys, engine.schema)
    finally:
        client.close()
    if dead:  # the reasons, without the payloads
        pytest.fail(
            "dead-lettered: "
            + ", ".join(
                f"{f[b'dead_entry_id'].decode()} {f[b'dead_reason'].decode()} ({f[b'dead_detail'].decode()})"
                for _, f in dead
            )
        )
    assert stats["events_applied"] == n, stats
    assert stats["entries_applied"] == produced["entries_sent"], stats
    assert stats.get("events_applied_success") == n, stats
    assert not {k: v for k, v in stats.items() if k.startswith(("dead_", "events_rejected_", "lost_"))}, stats
    assert applied_by == {produced["producer_id"]: n}
    assert int(pstats["events_sent"]) == n and int(pstats["buffer_events"]) == 0, pstats
    expected = expected_totals(n, engine)
    for metric in CHECKED:
        got = families[metric].counters
        want = expected[metric]
        if got != want:
            missing = {s: v for s, v in want.items() if got.get(s) != v}
            extra = {s: v for s, v in got.items() if s not in want}
            sample = list(missing.items())[:3]
            raise AssertionError(
                f"{metric}: {len(missing)} of {len(want)} series differ, {len(extra)} unexpected; e.g. "
                + ", ".join(f"{s[1][:8]}/{s[3]}: want {v}, got {got.get(s)}" for s, v in sample)
            )
    assert len(expected["litellm_requests_metric"]) == N_KEYS * N_MODELS
    assert sum(families["litellm_requests_metric"].counters.values()) == n
    return stats


@pytest.fixture
def aof_server() -> Iterator[LocalServer]:
    """A private server that fsyncs every write: what it acknowledged survives kill -9."""
    server = LocalServer(appendonly=True).start()
    try:
        yield server
    finally:
        server.close()


def _ns() -> str:
    return f"lsmcrash-{uuid.uuid4().hex[:10]}"


def test_aggregators_killed_at_random_apply_everything_exactly_once(
    private_server: LocalServer, tmp_path: Path
) -> None:
    run = Run("kill", private_server, _ns(), events=200_000, rate=25_000, tmp=tmp_path, min_kills=12, seed=1)
    produced = chaos_run(run)
    stats = assert_exact(run, produced)
    c = run.chaos
    isolated = applied_alone(tmp_path)
    print(
        f"[kill] {c.kills} kills, {c.same_name_restarts} same-name / {c.new_name_restarts} new-name restarts, "
        f"orphaned entries {c.orphaned_same_name} / {c.orphaned_new_name}, entries applied alone after "
        f"more than 5 deliveries {isolated}; stats {stats}"
    )
    assert c.kills >= 12 and len(c.kills_per_slot) == 3 and min(c.kills_per_slot.values()) >= 2, c.kills_per_slot
    assert c.same_name_restarts and c.new_name_restarts
    assert c.orphaned_same_name > 0 and c.orphaned_new_name > 0, "a recovery path was not exercised"


def applied_alone(logdir: Path) -> int:
    """Entries the aggregators applied alone (delivered more than LSM_MAX_DELIVERIES times)."""
    return sum(p.read_text(errors="replace").count("applying it alone") for p in logdir.glob("agg*.log"))


def test_lost_producer_replies_are_not_counted_twice(private_server: LocalServer, tmp_path: Path) -> None:
    """Also exercises the isolation of redelivered entries under the same chaos: every entry
    delivered more than once is applied alone (LSM_MAX_DELIVERIES=1)."""
    rng = random.Random(2)
    proxy = ReplyLosingProxy(private_server.port, lambda: rng.random() < 0.15)
    try:
        run = Run(
            "lost-replies",
            private_server,
            _ns(),
            events=200_000,
            rate=25_000,
            tmp=tmp_path,
            producer_url=proxy.url,
            min_kills=6,
            seed=2,
            aggregator_env={"LSM_MAX_DELIVERIES": "1", "LSM_MAX_ISOLATED_ATTEMPTS": "10"},
        )
        produced = chaos_run(run)
    finally:
        proxy.close()
    stats = assert_exact(run, produced)
    c = run.chaos
    isolated = applied_alone(tmp_path)
    print(
        f"[lost-replies] {proxy.dropped_replies} replies dropped, producer flush errors "
        f"{produced['flush_errors']}, duplicate entries {stats.get('duplicate_entries', 0)}, "
        f"entries applied alone {isolated} (orphaned by kills {c.orphaned_same_name + c.orphaned_new_name})"
    )
    assert proxy.dropped_replies > 0
    assert stats.get("duplicate_entries", 0) > 0
    assert isolated > 0 or c.orphaned_same_name + c.orphaned_new_name == 0


def test_redis_killed_and_restarted_mid_run(aof_server: LocalServer, tmp_path: Path) -> None:
    run = Run(
        "redis-restart",
        aof_server,
        _ns(),
        events=200_000,
        rate=25_000,
        tmp=tmp_path,
        min_kills=4,
        redis_kills=3,
        seed=3,
    )
    produced = chaos_run(run)
    stats = assert_exact(run, produced)
    print(
        f"[redis-restart] {run.chaos.redis_restarts} redis restarts, producer flush errors "
        f"{produced['flush_errors']}, duplicate entries {stats.get('duplicate_entries', 0)}"
    )
    assert run.chaos.redis_restarts == 3
    assert run.chaos.restarts_while_redis_down >= 1
    assert produced["flush_errors"] > 0


def test_owners_with_redis_killed_and_restarted_mid_run(aof_server: LocalServer, tmp_path: Path) -> None:
    """The same run with the owner ingest (LSM_INGEST=owner): three processes, one owning the
    shard and two spares, killed and restarted at random, and Redis (AOF, fsync always) killed
    and restarted three times: every total exact (the state Redis kept is a consistent
    checkpoint; the owners start again from it)."""
    run = Run(
        "owner-redis-restart",
        aof_server,
        _ns(),
        events=200_000,
        rate=25_000,
        tmp=tmp_path,
        min_kills=4,
        redis_kills=3,
        seed=4,
        aggregator_env={"LSM_INGEST": "owner", "LSM_OWNER_LEASE_SECONDS": "2"},
    )
    produced = chaos_run(run)
    stats = assert_exact(run, produced)
    print(
        f"[owner-redis-restart] {run.chaos.redis_restarts} redis restarts, {run.chaos.kills} owner kills, "
        f"producer flush errors {produced['flush_errors']}, duplicate entries {stats.get('duplicate_entries', 0)}"
    )
    assert run.chaos.redis_restarts == 3 and produced["flush_errors"] > 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.test_aggregator_crash")
    sub = p.add_subparsers(dest="command", required=True)
    prod = sub.add_parser("produce")
    prod.add_argument("url")
    prod.add_argument("namespace")
    prod.add_argument("events", type=int)
    prod.add_argument("rate", type=float)
    prod.add_argument("out")
    args = p.parse_args(argv)
    return produce(args.url, args.namespace, args.events, args.rate, args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
