"""A private Redis Cluster on 127.0.0.1 (masters with replicas), for the tests and benchmarks.

Formed with CLUSTER commands over the nodes' own connections (``ADDSLOTSRANGE``, ``MEET``,
``REPLICATE``), so it needs only the server binary (valkey-server from the ``embedded`` extra,
or redis-server 7+), not ``redis-cli --cluster``. Slots are split evenly over the masters in
order. A short ``cluster-node-timeout`` lets a test kill a master and watch its replica take over
within seconds.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import redis

from aggregator.cluster_slots import Move, migrate_slot
from aggregator.connections import open_url
from aggregator.local_server import LocalServer, ServerError

SLOTS = 16384


class LocalCluster:
    """``masters`` masters, each with ``replicas`` replicas, on free local ports."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master")
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[LocalServer] = []
        for _ in range(masters * (1 + replicas)):
            port = cluster_port()
            args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(node_timeout_ms),
                # A replica may take over whatever its replication lag: a test kills masters.
                "--cluster-replica-validity-factor",
                "0",
            ]
            self.nodes.append(LocalServer(port=port, extra_args=args))
        self.masters = self.nodes[:masters]
        self.replica_groups = [
            self.nodes[masters + i * replicas : masters + (i + 1) * replicas] for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """A URL of one node: a cluster client discovers the others from it."""
        return self.nodes[0].url

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def client(self, server: LocalServer) -> redis.Redis:
        return open_url(server.url)

    def command(self, server: LocalServer, *args: str | int) -> Any:
        """One command on one node (not routed: CLUSTER commands, INFO)."""
        client = self.client(server)
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for node in self.nodes:
            node.start()
        try:
            self._form(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _form(self, timeout: float) -> None:
        ids = {n.port: self.command(n, "CLUSTER", "MYID").decode() for n in self.nodes}
        step = SLOTS // len(self.masters)
        for i, master in enumerate(self.masters):
            last = SLOTS - 1 if i == len(self.masters) - 1 else (i + 1) * step - 1
            self.command(master, "CLUSTER", "ADDSLOTSRANGE", i * step, last)
        for node in self.nodes[1:]:
            self.command(self.nodes[0], "CLUSTER", "MEET", "127.0.0.1", node.port)
        self._wait(lambda: all(len(self._known(n)) == len(self.nodes) for n in self.nodes), timeout, "meet")
        for master, group in zip(self.masters, self.replica_groups, strict=True):
            for replica in group:
                self._wait(
                    partial(self.command, replica, "CLUSTER", "REPLICATE", ids[master.port]), timeout, "replicate"
                )
        self._wait(self.healthy, timeout, "cluster_state:ok with every replica in sync")

    def healthy(self) -> bool:
        """Every node says the cluster is ok, and every master has its replicas connected and
        in sync (``online``)."""
        for node in self.nodes:
            if node.process is None:
                continue
            info: Any = self.command(node, "CLUSTER", "INFO")
            if b"cluster_state:ok" not in info:
                return False
        for master, group in zip(self.masters, self.replica_groups, strict=True):
            if master.process is None:
                continue
            repl: Any = self.command(master, "INFO", "replication")
            if repl.get("role") != "master" or int(repl.get("connected_slaves", 0)) < len(group):
                return False
            # Connected is not enough: a replica still loading the first copy confirms no write.
            if any(repl.get(f"slave{i}", {}).get("state") != "online" for i in range(len(group))):
                return False
        return True

    def move_slot(self, slot: int, target: LocalServer, keys_per_step: int = 10, pause: float = 0.0) -> None:
        """Migrate ``slot`` to master ``target`` the way ``redis-cli --cluster reshard`` does
        (aggregator/cluster_slots.py), while clients go on: they meet ASK and MOVED replies
        meanwhile. ``pause``: seconds between steps, to keep the slot in migration longer."""
        source = self.master_of_slot(slot)
        if source is target:
            return
        move = Move(slot, (), _name(source), _name(target))
        masters = [_name(m) for m in self.masters if m.process is not None]
        migrate_slot(self.run, move, masters, keys_per_step=keys_per_step, pause=pause)
        self._wait(lambda: all(self._owner_seen_by(n, slot) == target.port for n in self.masters), 30, "slot map")

    def run(self, node: str, *args: str | int) -> Any:
        """One command on the node named ``host:port`` (cluster_slots.NodeCommand)."""
        port = int(node.rpartition(":")[2])
        return self.command(next(n for n in self.nodes if n.port == port), *args)

    def _owner_seen_by(self, node: LocalServer, slot: int) -> int | None:
        """The port of the master serving ``slot`` as ``node`` sees it."""
        reply: Any = self.command(node, "CLUSTER", "SLOTS")
        for start, end, master, *_replicas in reply:
            if int(start) <= slot <= int(end):
                return int(master[1])
        return None

    def _known(self, node: LocalServer) -> list[str]:
        """The nodes ``node`` knows (its CLUSTER NODES lines)."""
        raw: Any = self.command(node, "CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return [line for line in text.splitlines() if line.strip()]

    def replicated(self, index: int) -> bool:
        """Every replica of master ``index`` has received everything the master wrote so far."""
        master: Any = self.command(self.masters[index], "INFO", "replication")
        offset = int(master["master_repl_offset"])
        for replica in self.replica_groups[index]:
            if replica.process is None:
                continue  # killed earlier and not started again
            info: Any = self.command(replica, "INFO", "replication")
            if int(info.get("slave_repl_offset", -1)) < offset:
                return False
        return True

    def kill_master(self, index: int, timeout: float = 30.0, synced: bool = True, rejoin: bool = True) -> LocalServer:
        """SIGKILL master ``index`` and wait until one of its replicas has taken over; returns the
        new master. ``synced``: first wait until the replicas have everything (else what they
        had not received yet is lost, as in a real crash: asynchronous replication). ``rejoin``:
        then start the killed node again and wait until it serves as the new master's replica
        (the cluster back at full strength)."""
        old = self.masters[index]
        group = self.replica_groups[index]
        if not group:
            raise ServerError("a master without replicas cannot fail over")
        if synced:
            self._wait(lambda: self.replicated(index), timeout, "replicas in sync")
        old.kill()

        def promoted() -> LocalServer | None:
            for replica in group:
                role: Any = _try(partial(self.command, replica, "INFO", "replication"))
                if role and role.get("role") == "master":
                    return replica
            return None

        self._wait(lambda: promoted() is not None, timeout, "a replica promoted")
        new = promoted()
        assert new is not None
        self.masters[index] = new
        self.replica_groups[index] = [r for r in group if r is not new] + [old]
        self._wait(lambda: b"cluster_state:ok" in self.command(new, "CLUSTER", "INFO"), timeout, "ok")
        self._wait(lambda: all(self._serves_without(n, old.port) for n in self.masters), timeout, "slots moved")
        if rejoin:
            old.start()
            self._wait(self.healthy, timeout, "the killed node back as a replica")
        return new

    def _serves_without(self, node: LocalServer, port: int) -> bool:
        """``node`` sees no slot served by the node on ``port``."""
        reply: Any = self.command(node, "CLUSTER", "SLOTS")
        return all(int(master[1]) != port for _start, _end, master, *_replicas in reply)

    def master_of_slot(self, slot: int) -> LocalServer:
        """The node serving ``slot`` now (as a live master sees it)."""
        for node in self.masters:
            reply: Any = _try(partial(self.command, node, "CLUSTER", "SLOTS"))
            for start, end, master, *_replicas in reply or []:
                if int(start) <= slot <= int(end):
                    port = int(master[1])
                    return next(x for x in self.nodes if x.port == port)
        raise ServerError(f"no master serves slot {slot}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _try(predicate):
                return
            time.sleep(0.05)
        raise ServerError(f"local cluster: {what} not reached within {timeout} s")


def _name(node: LocalServer) -> str:
    return f"127.0.0.1:{node.port}"


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so at most 55535)."""
    for _ in range(200):
        port = random.randrange(20000, 55535)
        if _free(port) and _free(port + 10000):
            return port
    raise ServerError("no free pair of ports (port, port + 10000) for a cluster node")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _try(action: Callable[[], Any]) -> Any:
    """The action's result, or None while the node is not ready for it (a Redis error)."""
    try:
        return action()
    except (redis.RedisError, OSError):
        return None
