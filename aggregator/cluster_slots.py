"""Where the shards live on a Redis Cluster, and moving them so they spread over the masters.

Each shard's keys share one hash tag (``{s0}``, ``{s1}``, ...), so each shard is one slot. Which
master serves a slot depends on how the cluster's slots were divided, not on us: with three
masters splitting the slots evenly, shards 0, 1, 4 and 5 of six all hash to the third master.
``python -m aggregator spread-shards`` plans the fewest slot moves that leave every master with
``shards / masters`` shards (give or take one) and migrates those slots the way
``redis-cli --cluster reshard`` does (IMPORTING/MIGRATING, ``MIGRATE`` of the slot's keys a few at
a time, then ``SETSLOT NODE`` on every master). Producers and aggregators keep running meanwhile:
their cluster clients follow the ASK and MOVED replies.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from producer.keys import Keys

#: ``run(node, *command)``: one command on one node (host:port), not routed by slot.
NodeCommand = Callable[..., Any]


@dataclass(frozen=True)
class Move:
    slot: int
    shards: tuple[int, ...]
    source: str
    target: str

    def line(self) -> str:
        names = ", ".join(str(s) for s in self.shards)
        return f"shard {names} (slot {self.slot}): {self.source} -> {self.target}"


def shard_slots(keys: Keys) -> dict[int, tuple[int, ...]]:
    """Slot -> the shards whose hash tag falls in it (two tags may share a slot)."""
    slots: dict[int, list[int]] = {}
    for shard in range(keys.shards):
        slots.setdefault(key_slot(keys.shard_tag(shard).encode()), []).append(shard)
    return {slot: tuple(shards) for slot, shards in slots.items()}


def slot_owners(cluster_slots_reply: Iterable[Sequence[Any]]) -> list[tuple[int, int, str]]:
    """``CLUSTER SLOTS`` as (first slot, last slot, master host:port)."""
    ranges = []
    for start, end, master, *_replicas in cluster_slots_reply:
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        ranges.append((int(start), int(end), f"{host}:{int(master[1])}"))
    return ranges


def master_of(ranges: Sequence[tuple[int, int, str]], slot: int) -> str:
    for start, end, master in ranges:
        if start <= slot <= end:
            return master
    raise LookupError(f"no master serves slot {slot}: is the cluster's state ok (CLUSTER INFO)?")


def placement(keys: Keys, ranges: Sequence[tuple[int, int, str]]) -> dict[int, str]:
    """Shard -> the master serving it."""
    return {shard: master_of(ranges, slot) for slot, shards in shard_slots(keys).items() for shard in shards}


def crowded(keys: Keys, ranges: Sequence[tuple[int, int, str]], masters: Sequence[str]) -> dict[str, list[int]]:
    """Masters that an even spread over ``masters`` would take shards from (master -> the
    shards it serves now); empty when the shards are spread as evenly as their slots allow."""
    where = placement(keys, ranges)
    slots = shard_slots(keys)
    sources = {m.source for m in plan(slots, {slot: where[shards[0]] for slot, shards in slots.items()}, masters)}
    return {m: [s for s, held in sorted(where.items()) if held == m] for m in sorted(sources, key=_address_order)}


def plan(slots: Mapping[int, tuple[int, ...]], owner: Mapping[int, str], masters: Sequence[str]) -> list[Move]:
    """The fewest moves (one slot each) after which no master holds more than one shard more
    than any other: repeatedly move a slot from the fullest master to the emptiest, as long as
    that narrows the gap. Deterministic: ties go to the lowest shard and the first master."""
    if not masters:
        raise ValueError("the cluster has no master")
    where = dict(owner)
    moves: list[Move] = []
    while True:
        load = Counter({m: 0 for m in masters})
        for slot, master in where.items():
            load[master] += len(slots[slot])
        fullest = max(masters, key=lambda m: (load[m], -masters.index(m)))
        emptiest = min(masters, key=lambda m: (load[m], masters.index(m)))
        candidates = sorted((slot for slot, master in where.items() if master == fullest), key=lambda slot: slots[slot])
        movable = [s for s in candidates if load[emptiest] + len(slots[s]) < load[fullest]]
        if not movable:
            return moves
        slot = movable[0]
        moves.append(Move(slot, slots[slot], fullest, emptiest))
        where[slot] = emptiest


def migrate_slot(
    run: NodeCommand,
    move: Move,
    masters: Sequence[str],
    *,
    auth: Sequence[str] = (),
    keys_per_step: int = 100,
    pause: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Move ``move.slot`` from its source to its target master, as ``redis-cli --cluster
    reshard`` does; returns the number of keys moved. ``auth``: ``AUTH password`` or ``AUTH2 user
    password`` arguments for ``MIGRATE`` when the target needs them. ``pause``: seconds between
    steps (tests keep a slot in migration longer)."""
    target_host, _, target_port = move.target.rpartition(":")
    source_id = _text(run(move.source, "CLUSTER", "MYID"))
    target_id = _text(run(move.target, "CLUSTER", "MYID"))
    run(move.target, "CLUSTER", "SETSLOT", move.slot, "IMPORTING", source_id)
    run(move.source, "CLUSTER", "SETSLOT", move.slot, "MIGRATING", target_id)
    moved = 0
    while True:
        names: Any = run(move.source, "CLUSTER", "GETKEYSINSLOT", move.slot, keys_per_step)
        if not names:
            break
        run(move.source, "MIGRATE", target_host, int(target_port), "", 0, 60_000, *auth, "KEYS", *names)
        moved += len(names)
        if progress is not None:
            progress(moved)
        time.sleep(pause)
    others = [m for m in masters if m not in (move.source, move.target)]
    for node in [move.target, move.source, *others]:
        run(node, "CLUSTER", "SETSLOT", move.slot, "NODE", target_id)
    return moved


def migrate_auth(username: str | None, password: str | None) -> list[str]:
    """The ``MIGRATE`` arguments that log in to the target with the clients' own credentials."""
    if password is None:
        return []
    if username and username != "default":
        return ["AUTH2", username, password]
    return ["AUTH", password]


def live_masters(cluster_nodes_reply: Any) -> list[str]:
    """``CLUSTER NODES`` -> the reachable masters (host:port), sorted; a master without slots
    (just added) is one of them, so shards can be spread onto it."""
    masters = []
    for line in _text(cluster_nodes_reply).splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = set(fields[2].split(","))
        if "master" in flags and not flags & {"fail", "fail?", "handshake", "noaddr"} and fields[7] == "connected":
            masters.append(fields[1].split("@")[0].split(",")[0])
    return sorted(masters, key=_address_order)


class ClusterView:
    """The slot map and the masters of a cluster, read through redis-py's cluster client, with
    a way to send one command to one node (``run``)."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        any_node = client.get_default_node()  # type: ignore[no-untyped-call]
        self.ranges = slot_owners(self._on(any_node, "CLUSTER", "SLOTS"))
        self.masters = live_masters(self._on(any_node, "CLUSTER", "NODES"))
        kwargs = any_node.redis_connection.connection_pool.connection_kwargs if any_node.redis_connection else {}
        self.auth = migrate_auth(kwargs.get("username"), kwargs.get("password"))

    def run(self, name: str, *args: Any) -> Any:
        node = self.client.get_node(node_name=name)  # type: ignore[no-untyped-call]
        if node is None:
            host, _, port = name.rpartition(":")
            node = self.client.get_node(host=host, port=int(port))  # type: ignore[no-untyped-call]
        if node is None:
            self.client.nodes_manager.initialize()
            node = self.client.get_node(node_name=name)  # type: ignore[no-untyped-call]
        if node is None:
            raise LookupError(f"the cluster client does not know node {name}")
        return self._on(node, *args)

    def _on(self, node: ClusterNode, *args: Any) -> Any:
        connection = self.client.get_redis_connection(node)
        return connection.execute_command(*args)  # type: ignore[no-untyped-call]


def _address_order(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
