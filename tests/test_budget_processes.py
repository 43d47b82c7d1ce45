"""Three refresh processes (``python -m aggregator.budgets run``) on a 1-second schedule against one
LiteLLM database and one Redis: the refresh never runs twice at once (the fencing epochs of the
accepted writes prove it), the gauges equal the database, deleted keys disappear; a holder
killed mid-run is replaced once its lease expires; a frozen (SIGSTOP) holder is replaced and
cannot write when it resumes. Every process is stopped in ``finally``."""

from __future__ import annotations

import hashlib
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aggregator.engine import Engine
from aggregator.litellm_config import MetricsConfig
from tests.budget_db import (
    LiteLLMDb,
    Runner,
    lease_holder,
    runner_env,
    status,
    stored_gauge,
    wait_until,
    writes_log,
)

pytestmark = pytest.mark.fault

ENGINE = Engine(MetricsConfig.from_litellm_settings({}))
KEY_REMAINING = "litellm_remaining_api_key_budget_metric"
KEY_MAX = "litellm_api_key_max_budget_metric"
TEAM_REMAINING = "litellm_remaining_team_budget_metric"
N_KEYS = 1500
LEASE = 2.0
ENV = {
    "LSM_BUDGET_REFRESH_INTERVAL_SECONDS": "1",
    "LSM_BUDGET_JITTER_SECONDS": "0.2",
    "LSM_BUDGET_LEASE_SECONDS": str(LEASE),
    "LSM_BUDGET_PAGE_SIZE": "25",  # a run of ~70 pages: long enough to be caught mid-run
    "LSM_BUDGET_SOURCE_TIMEOUT": "5",
    "LSM_BUDGET_CONNECT_TIMEOUT": "2",
    "LSM_SOCKET_TIMEOUT": "2",
}


def h(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@pytest.fixture
def db(litellm_db: str) -> Iterator[LiteLLMDb]:
    d = LiteLLMDb(litellm_db)
    d.add_keys(
        (h(f"k{i}"), f"alias-{i}" if i % 3 else None, float(i % 7), 100.0 if i % 5 else None) for i in range(N_KEYS)
    )
    for i in range(20):
        d.add_team(f"team-{i}", alias=f"Team {i}", spend=float(i), max_budget=1000.0, members=i % 4)
    yield d
    d.close()


@pytest.fixture
def runners(redis_url: str, namespace: str, db: LiteLLMDb, tmp_path: Path) -> Iterator[list[Runner]]:
    env = runner_env(redis_url, namespace, db.url, **ENV)
    procs = [Runner(env, tmp_path, f"agg{i}") for i in range(3)]
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


def expected_remaining(db: LiteLLMDb) -> dict[tuple[str | None, ...], float]:
    rows = db.execute('SELECT token, key_alias, spend, max_budget FROM "LiteLLM_VerificationToken"')
    return {(t, a or ""): m - s for t, a, s, m in rows if m is not None}


def completed_run_after(client: redis.Redis, namespace: str, t: float) -> dict[str, str] | None:
    """The status once a run that started after ``t`` has completed."""
    st = status(client, namespace)
    started, finished = float(st.get("run:started", 0)), float(st.get("run:finished", 0))
    return st if started > t and finished >= started else None


def owner_of(runners: list[Runner], owner: str) -> Runner:
    pid = int(owner.rsplit(":", 1)[1])
    return next(r for r in runners if r.pid == pid)


def assert_fenced_order(log: list[dict[str, object]]) -> None:
    """Accepted writes come in epoch order and each epoch belongs to one process: no refresh
    ever wrote while another one (older or newer) was writing."""
    epochs = [int(str(w["epoch"])) for w in log]
    assert epochs == sorted(epochs), epochs
    owners: dict[int, set[str]] = {}
    for w in log:
        owners.setdefault(int(str(w["epoch"])), set()).add(str(w["owner"]))
    assert all(len(o) == 1 for o in owners.values()), owners


def test_three_processes_one_refresh_at_a_time(
    runners: list[Runner], db: LiteLLMDb, redis_client: redis.Redis, namespace: str
) -> None:
    wait_until(lambda: completed_run_after(redis_client, namespace, 0), 30, what="a first refresh")
    rng = random.Random(7)
    deleted: set[str] = set()
    for round_ in range(5):
        victims = [h(f"k{i}") for i in rng.sample(range(N_KEYS), 30)]
        db.execute('DELETE FROM "LiteLLM_VerificationToken" WHERE token = ANY(%s)', (victims,))
        deleted.update(victims)
        db.execute('UPDATE "LiteLLM_VerificationToken" SET spend = spend + 1 WHERE random() < 0.2')
        db.add_key(h(f"new{round_}"), alias="new", spend=1.0, max_budget=5.0)
        time.sleep(1.0)
    db.execute('DELETE FROM "LiteLLM_TeamTable" WHERE team_id = %s', ("team-3",))
    changed = time.time()
    wait_until(lambda: completed_run_after(redis_client, namespace, changed), 20, what="a refresh after the changes")

    remaining = stored_gauge(redis_client, namespace, ENGINE, KEY_REMAINING)
    assert remaining == expected_remaining(db)
    assert not {k for k, _ in remaining} & deleted
    assert len(stored_gauge(redis_client, namespace, ENGINE, KEY_MAX)) == len(remaining)
    assert ("team-3", "Team 3") not in stored_gauge(redis_client, namespace, ENGINE, TEAM_REMAINING)

    log = writes_log(redis_client, namespace)
    assert_fenced_order(log)
    metrics = [r.metrics() for r in runners]
    epochs = {int(str(w["epoch"])) for w in log}
    assert len(epochs) >= 5  # one refresh about every second
    assert sum(m["lsm_budget_lease_acquisitions_total"] for m in metrics) >= len(epochs)
    # No refresh ever lost its lease or had a write refused: none overlapped another.
    for m in metrics:
        assert m["lsm_budget_lease_losses_total"] == 0
        assert m["lsm_budget_fenced_writes_rejected_total"] == 0
        assert m['lsm_budget_runs_total{outcome="error"}'] == 0
        assert m['lsm_budget_staleness_seconds{kind="keys"}'] < 10


def freeze_holder_mid_run(
    runners: list[Runner], redis_client: redis.Redis, namespace: str, timeout: float = 30
) -> tuple[Runner, str, int, int]:
    """SIGSTOP a lease holder that has written at least one page of its run and still holds the
    lease once frozen: (runner, owner, epoch, lease ms left)."""
    lease_key = f"{namespace}:{{s0}}:lease:budget"

    def mid_run() -> tuple[str, int] | None:
        held = lease_holder(redis_client, namespace)
        if held is None:
            return None
        last = redis_client.xrevrange(f"{namespace}:{{s0}}:budget:writes", count=1)
        return held if last and int(last[0][1][b"epoch"]) == held[1] else None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owner, epoch = wait_until(mid_run, timeout, interval=0.005, what="a holder in the middle of a refresh")
        runner = owner_of(runners, owner)
        runner.kill(signal.SIGSTOP)
        pttl = int(redis_client.pttl(lease_key))
        st = status(redis_client, namespace)
        # Its run must not be over: at least its final status write is still to come (a process
        # frozen between that write and releasing the lease has nothing left to be rejected).
        finished = st.get("run:epoch") == str(epoch) and float(st.get("run:finished", 0)) >= float(
            st.get("run:started", 0)
        )
        if lease_holder(redis_client, namespace) == (owner, epoch) and pttl > 0 and not finished:
            return runner, owner, epoch, pttl
        runner.kill(signal.SIGCONT)  # it finished its run meanwhile: try again
    raise AssertionError("no holder could be frozen in the middle of a refresh")


def test_holder_killed_mid_run_is_replaced_after_its_lease_expires(
    runners: list[Runner], db: LiteLLMDb, redis_client: redis.Redis, namespace: str
) -> None:
    wait_until(lambda: completed_run_after(redis_client, namespace, 0), 30, what="a first refresh")
    victim, owner, epoch, pttl = freeze_holder_mid_run(runners, redis_client, namespace)
    killed = time.time()
    victim.kill(signal.SIGKILL)
    expires_ms = (killed + pttl / 1000) * 1000
    db.execute('UPDATE "LiteLLM_VerificationToken" SET spend = spend + 2')
    st = wait_until(
        lambda: completed_run_after(redis_client, namespace, killed), 20, what="a refresh by another process"
    )
    assert int(st["run:epoch"]) > epoch and st["run:owner"] != owner
    log = writes_log(redis_client, namespace)
    assert_fenced_order(log)
    later = [w for w in log if int(str(w["epoch"])) > epoch]
    # Nobody wrote while the dead holder's lease could still be alive.
    assert later and min(int(str(w["ms"])) for w in later) >= expires_ms - 50
    assert stored_gauge(redis_client, namespace, ENGINE, KEY_REMAINING) == expected_remaining(db)


def test_frozen_holder_is_replaced_and_its_writes_are_rejected(
    runners: list[Runner], db: LiteLLMDb, redis_client: redis.Redis, namespace: str
) -> None:
    wait_until(lambda: completed_run_after(redis_client, namespace, 0), 30, what="a first refresh")
    frozen, owner, epoch, _ = freeze_holder_mid_run(runners, redis_client, namespace)
    try:
        db.execute('UPDATE "LiteLLM_VerificationToken" SET spend = spend + 3')
        changed = time.time()
        st = wait_until(
            lambda: completed_run_after(redis_client, namespace, changed), 20, what="a refresh by another process"
        )
        assert int(st["run:epoch"]) > epoch and st["run:owner"] != owner
        newest = max(int(str(w["epoch"])) for w in writes_log(redis_client, namespace))
    finally:
        frozen.kill(signal.SIGCONT)

    # The resumed process finds its lease gone (a fenced write refused, or its renewal failing)
    # or, when its connection timed out while it was frozen, fails the run with a Redis error;
    # either way its run ends and none of its writes lands.
    def run_ended() -> bool:
        m = frozen.metrics()
        stopped = m['lsm_budget_runs_total{outcome="lease_lost"}'] + m['lsm_budget_runs_total{outcome="error"}']
        return stopped >= 1 and m["lsm_budget_lease_held"] == 0

    wait_until(run_ended, 10, what="the frozen one's run to end")
    print(frozen.log()[-1500:])  # which check stopped it: the local clock, Redis's fence or a timeout
    log = writes_log(redis_client, namespace)
    assert_fenced_order(log)  # so no write of the frozen epoch after the newer epochs' writes
    assert max(int(str(w["epoch"])) for w in log) >= newest
    assert stored_gauge(redis_client, namespace, ENGINE, KEY_REMAINING) == expected_remaining(db)
