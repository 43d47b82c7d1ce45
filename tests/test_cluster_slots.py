"""Planning where shards go on a Redis Cluster (aggregator/cluster_slots.py): pure functions,
no server. The moves themselves run on a real cluster in tests/test_cluster.py."""

from __future__ import annotations

from collections import Counter

import pytest

from aggregator.cluster_slots import Move, crowded, live_masters, migrate_auth, placement, plan, shard_slots
from producer.keys import Keys

THREE = [(0, 5460, "10.0.0.1:6379"), (5461, 10921, "10.0.0.2:6379"), (10922, 16383, "10.0.0.3:6379")]
MASTERS = ["10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"]


def spread_after(keys: Keys, ranges: list[tuple[int, int, str]], masters: list[str]) -> tuple[list[Move], Counter[str]]:
    where = placement(keys, ranges)
    slots = shard_slots(keys)
    owner = {slot: where[shards[0]] for slot, shards in slots.items()}
    moves = plan(slots, owner, masters)
    for move in moves:
        assert owner[move.slot] == move.source
        owner[move.slot] = move.target
    load: Counter[str] = Counter({m: 0 for m in masters})
    for slot, master in owner.items():
        load[master] += len(slots[slot])
    return moves, load


def test_six_shards_on_three_evenly_split_masters_crowd_one_and_two_moves_fix_it() -> None:
    keys = Keys("lsm", 6)
    where = placement(keys, THREE)
    # {s0}, {s1}, {s4} and {s5} all hash into the third master's slots.
    assert [s for s, m in sorted(where.items()) if m == MASTERS[2]] == [0, 1, 4, 5]
    assert crowded(keys, THREE, MASTERS) == {MASTERS[2]: [0, 1, 4, 5]}
    moves, load = spread_after(keys, THREE, MASTERS)
    assert len(moves) == 2 and all(m.source == MASTERS[2] for m in moves)
    assert sorted(load.values()) == [2, 2, 2]


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 5, 6, 8, 12, 16, 64, 100])
@pytest.mark.parametrize("masters", [1, 2, 3, 5])
def test_after_the_moves_no_master_holds_two_shards_more_than_another(shards: int, masters: int) -> None:
    keys = Keys("lsm", shards)
    names = [f"10.0.0.{i}:6379" for i in range(masters)]
    step = 16384 // masters
    ranges = [(i * step, 16383 if i == masters - 1 else (i + 1) * step - 1, names[i]) for i in range(masters)]
    moves, load = spread_after(keys, ranges, names)
    assert max(load.values()) - min(load.values()) <= 1, load
    assert sum(load.values()) == shards
    # The plan is short: no slot moves twice, and nothing moves when the spread is already even.
    assert len({m.slot for m in moves}) == len(moves)
    assert (crowded(keys, ranges, names) == {}) == (moves == [])
    moves_again, _ = spread_after(keys, ranges, names)
    assert moves_again == moves  # deterministic


def test_a_master_added_without_slots_receives_shards() -> None:
    keys = Keys("lsm", 6)
    four = [*MASTERS, "10.0.0.4:6379"]
    moves, load = spread_after(keys, THREE, four)
    assert load["10.0.0.4:6379"] >= 1 and max(load.values()) - min(load.values()) <= 1
    assert any(m.target == "10.0.0.4:6379" for m in moves)


def test_shards_sharing_a_slot_move_together() -> None:
    slots = {100: (0, 3), 200: (1,), 300: (2,)}
    owner = {100: "a:1", 200: "a:1", 300: "a:1"}
    moves = plan(slots, owner, ["a:1", "b:1"])
    load = Counter({"a:1": 4, "b:1": 0})
    for m in moves:
        load[m.source] -= len(slots[m.slot])
        load[m.target] += len(slots[m.slot])
    assert load == Counter({"a:1": 2, "b:1": 2})
    assert [m.line() for m in moves if m.slot == 100] in ([], ["shard 0, 3 (slot 100): a:1 -> b:1"])


def test_live_masters_reads_cluster_nodes() -> None:
    text = (
        "e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460\n"
        "67ed 127.0.0.1:30002@40002,host-b master - 0 1 2 connected 5461-10922\n"
        "292f 127.0.0.1:30003@40003 master,fail - 0 1 3 disconnected 10923-16383\n"
        "6ec2 127.0.0.1:30004@40004 slave e7d1 0 1 1 connected\n"
        "824f 127.0.0.1:30005@40005 master - 0 1 5 connected\n"
    )
    assert live_masters(text.encode()) == ["127.0.0.1:30001", "127.0.0.1:30002", "127.0.0.1:30005"]


def test_migrate_logs_in_with_the_clients_credentials() -> None:
    assert migrate_auth(None, None) == []
    assert migrate_auth(None, "pw") == ["AUTH", "pw"]
    assert migrate_auth("default", "pw") == ["AUTH", "pw"]
    assert migrate_auth("lsm", "pw") == ["AUTH2", "lsm", "pw"]
