"""The HTTP endpoints: ``/metrics`` (authenticated), ``/healthz`` and ``/readyz`` (open).

The open endpoints answer with a status word and a short reason only: no host, port, key name
or namespace (the details go to the log, and to the authenticated ``/metrics``).

``/healthz`` (liveness) answers 503 only when a shard consumer has been stuck for
``liveness_timeout`` seconds for a reason other than Redis being unavailable; ``/readyz``
(readiness) answers 503 whenever Redis or a consumer group is missing.

The server runs in its own threads (``ThreadingHTTPServer``) with a synchronous Redis client,
so rendering a large exposition never blocks the event loop that consumes the stream.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Generic, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

from aggregator.auth import MetricsAuth
from aggregator.settings import AggregatorConfigError, AggregatorSettings

log = logging.getLogger("litellm_stream_metrics.aggregator")

T = TypeVar("T")
# Body parts are written in sends of about this size.
_WRITE_CHUNK = 256 * 1024


class MetricsSource(Protocol):
    """What the server needs from the aggregator process."""

    def render(self, accept: str | None, names: frozenset[str] | None) -> tuple[Sequence[bytes], str]:
        """The exposition body (parts written one after the other) and its content type."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): Redis reachable and every shard's consumer group in place. The reason
        is served to anyone: a few words, nothing about where Redis is or what its keys are."""
        ...

    def liveness(self) -> tuple[bool, str]:
        """(alive, reason): False when the process is stuck in a way a restart may fix."""
        ...


@dataclass(frozen=True)
class ServerAddress:
    """Where the server listens (``host`` as bound: ``0.0.0.0`` for every interface)."""

    host: str
    port: int
    scheme: str

    @property
    def all_interfaces(self) -> bool:
        return self.host in ("0.0.0.0", "", "::")

    @property
    def metrics_url(self) -> str:
        """A URL of ``/metrics`` that works from this host (the loopback address when the server
        listens on every interface)."""
        host = ("::1" if self.host == "::" else "127.0.0.1") if self.all_interfaces else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}/metrics"

    def describe(self) -> str:
        """What the start log says: the address really bound, then a URL to use."""
        host = f"[{self.host}]" if ":" in self.host else self.host or "0.0.0.0"
        where = f"{host}:{self.port}"
        if self.all_interfaces:
            return f"{where} (all interfaces; from this host: {self.metrics_url})"
        return f"{where} ({self.metrics_url})"


def _tls_context(settings: AggregatorSettings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise AggregatorConfigError(
            f"cannot load the TLS certificate {settings.tls_cert_file} / key {settings.tls_key_file}: {exc}"
        ) from exc
    return ctx


def _accepts_gzip(header: str | None) -> bool:
    if not header:
        return False
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip()
            if not q.startswith("q="):
                return True
            try:
                return float(q[2:]) > 0
            except ValueError:  # a malformed weight: ignore the whole entry
                return False
    return False


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may stay silent (slow or stuck clients)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            alive, reason = self.server.source.liveness()
            self._reply(200 if alive else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
        elif url.path == "/readyz":
            ready, reason = self.server.source.readiness()
            self._reply(200 if ready else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
        elif url.path == "/metrics":
            self._metrics(url.query)
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

    def _metrics(self, query: str) -> None:
        auth = self.server.auth
        if not auth.allows(self.headers.get("Authorization")):
            self._reply(401, b"unauthorized\n", "text/plain; charset=utf-8", {"WWW-Authenticate": auth.challenge})
            return
        names = parse_qs(query).get("name[]")
        try:
            body, content_type = self.server.source.render(
                self.headers.get("Accept"), frozenset(names) if names else None
            )
        except Exception as exc:  # a scrape must get an answer, and the server must keep running
            log.exception("rendering /metrics failed")
            self._reply(503, f"cannot render metrics: {type(exc).__name__}: {exc}\n".encode(), "text/plain")
            return
        extra = {}
        if _accepts_gzip(self.headers.get("Accept-Encoding")):
            gz = zlib.compressobj(5, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
            body = [*(gz.compress(part) for part in body), gz.flush()]
            extra["Content-Encoding"] = "gzip"
        self._reply(200, body, content_type, extra)

    def _reply(
        self, code: int, body: bytes | Sequence[bytes], content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        parts = [body] if isinstance(body, bytes) else body
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sum(map(len, parts))))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            # Small parts go out together (few sends); a large one on its own (no copy).
            pending: list[bytes] = []
            size = 0
            for part in parts:
                if size + len(part) > _WRITE_CHUNK and pending:
                    self.wfile.write(b"".join(pending))
                    pending, size = [], 0
                pending.append(part)
                size += len(part)
            if pending:
                self.wfile.write(b"".join(pending) if len(pending) > 1 else pending[0])

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], source: MetricsSource, auth: MetricsAuth) -> None:
        self.source = source
        self.auth = auth
        super().__init__(address, _Handler)


class MetricsServer:
    """Serves the endpoints from a background thread until ``close``."""

    def __init__(self, settings: AggregatorSettings, source: MetricsSource) -> None:
        self.auth = MetricsAuth(settings)
        tls = _tls_context(settings)
        try:
            self._server = _Server((settings.http_host, settings.http_port), source, self.auth)
        except OSError as exc:
            raise AggregatorConfigError(
                f"cannot listen on {settings.http_host}:{settings.http_port} (LSM_HTTP_HOST/LSM_HTTP_PORT): {exc}"
            ) from exc
        if tls is not None:
            # The handshake happens in the request's own thread (on first read), so a client that
            # never completes it cannot hold up the accept loop.
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        host, port = self._server.server_address[:2]
        self.address = ServerAddress(str(host), int(port), "https" if tls else "http")
        self._thread = threading.Thread(target=self._server.serve_forever, name="lsm-http", daemon=True)

    def start(self) -> ServerAddress:
        self._thread.start()
        log.info("serving /metrics, /healthz, /readyz on %s", self.address.describe())
        return self.address

    def close(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever: only when it runs
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


class RenderCache(Generic[T]):
    """Reuses a rendered body for at most ``max_age`` seconds, per (format, names, generation).

    ``generation`` changes whenever what may be exported changes (e.g. leadership), so a body
    rendered under an earlier leadership is never served."""

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[object, ...], tuple[float, T]] = {}
        self.hits = 0

    def get_or_render(self, key: tuple[object, ...], render: Callable[[], T]) -> T:
        if self.max_age <= 0:
            return render()
        with self._lock:  # one render per key at a time: concurrent scrapes share it
            now = self._clock()
            cached = self._entries.get(key)
            if cached is not None and now - cached[0] <= self.max_age:
                self.hits += 1
                return cached[1]
            body = render()
            # Only a handful of keys exist (formats x name filters); drop stale ones.
            self._entries = {k: v for k, v in self._entries.items() if now - v[0] <= self.max_age}
            self._entries[key] = (now, body)
            return body
