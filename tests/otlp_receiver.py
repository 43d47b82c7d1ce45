"""An OTLP/HTTP metrics receiver for the tests: a real HTTP server that decodes every request
with OpenTelemetry's protobuf classes (``opentelemetry-proto``) and keeps what arrived."""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

# (metric name, label items) -> value | (bucket counts, sum, count)
Series = dict[tuple[str, tuple[tuple[str, str], ...]], Any]


@dataclass
class Push:
    at: float
    request: ExportMetricsServiceRequest
    headers: dict[str, str]

    def resource(self) -> dict[str, str]:
        (rm,) = self.request.resource_metrics
        return {a.key: a.value.string_value for a in rm.resource.attributes}

    def metrics(self) -> list[Any]:
        return [m for rm in self.request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]


@dataclass
class Decoded:
    """Every point of one or more requests (one logical push may span several)."""

    kinds: dict[str, str] = field(default_factory=dict)
    series: Series = field(default_factory=dict)
    start_times: set[int] = field(default_factory=set)
    descriptions: dict[str, str] = field(default_factory=dict)
    monotonic: dict[str, bool] = field(default_factory=dict)
    temporality: dict[str, int] = field(default_factory=dict)
    bounds: dict[str, list[float]] = field(default_factory=dict)
    min_max_set: bool = False

    def add(self, push: Push) -> None:
        for m in push.metrics():
            kind = m.WhichOneof("data")
            self.kinds[m.name] = kind
            self.descriptions[m.name] = m.description
            if kind == "sum":
                self.monotonic[m.name] = m.sum.is_monotonic
                self.temporality[m.name] = m.sum.aggregation_temporality
                for p in m.sum.data_points:
                    self.start_times.add(p.start_time_unix_nano)
                    self.series[(m.name, _labels(p))] = p.as_double
            elif kind == "gauge":
                for p in m.gauge.data_points:
                    self.series[(m.name, _labels(p))] = p.as_double
            elif kind == "histogram":
                self.temporality[m.name] = m.histogram.aggregation_temporality
                for p in m.histogram.data_points:
                    self.start_times.add(p.start_time_unix_nano)
                    self.bounds[m.name] = list(p.explicit_bounds)
                    self.min_max_set |= p.HasField("min") or p.HasField("max")
                    self.series[(m.name, _labels(p))] = (list(p.bucket_counts), p.sum, p.count)


def _labels(point: Any) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((a.key, a.value.string_value) for a in point.attributes))


class Receiver:
    """``url`` takes OTLP/HTTP metric exports; ``status`` is what it answers (200, or e.g. 503)."""

    def __init__(self) -> None:
        self.pushes: list[Push] = []
        self.status = 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if receiver.status != 200:
                    self.send_response(receiver.status)
                    self.end_headers()
                    return
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                with receiver.lock:
                    receiver.pushes.append(Push(time.time(), request, dict(self.headers)))
                reply = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/metrics"

    def received(self) -> list[Push]:
        with self.lock:
            return list(self.pushes)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
