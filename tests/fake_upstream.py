"""A fake OpenAI-compatible upstream for the proxy integration test.

``POST /v1/chat/completions`` answers according to the requested (upstream) model name, so every
test request has a deterministic outcome:

* ``fail-429`` / ``fail-429-*``: HTTP 429 (rate limited), with rate-limit headers;
* ``fail-500`` / ``fail-500-*``: HTTP 500, with rate-limit headers;
* anything else: a successful completion, as JSON, or as SSE chunks when ``"stream": true``
  (with a final usage chunk when ``stream_options.include_usage`` is set).

Every answer carries ``x-ratelimit-{limit,remaining}-{requests,tokens}`` headers. The server
runs the standard library's threading HTTP server in a daemon thread on 127.0.0.1 and records
each request (path, model, stream flag) in ``requests`` for the test to inspect.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Content the upstream answers with: the test checks that it never reaches Redis.
DEFAULT_COMPLETION = "fake upstream says hello"

LIMIT_REQUESTS = 1000
LIMIT_TOKENS = 100000
REMAINING_REQUESTS = 997
REMAINING_TOKENS = 99000
PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7


def _rate_limit_headers(remaining_requests: int, remaining_tokens: int) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(LIMIT_REQUESTS),
        "x-ratelimit-limit-tokens": str(LIMIT_TOKENS),
        "x-ratelimit-remaining-requests": str(remaining_requests),
        "x-ratelimit-remaining-tokens": str(remaining_tokens),
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-reset-tokens": "1s",
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeUpstreamServer

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
        return

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, headers: dict[str, str], content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers or {}, "application/json")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # -- routes -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send_json(200, {"object": "list", "data": []})
        else:
            self._send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
            return
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        model = str(body.get("model", ""))
        stream = body.get("stream") is True
        self.server.record({"path": self.path, "model": model, "stream": stream, "time": time.time()})
        if model.startswith("fail-429"):
            headers = _rate_limit_headers(0, 0)
            headers["retry-after"] = "1"
            self._send_json(
                429,
                {
                    "error": {
                        "message": "Rate limit reached for requests (fake upstream)",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                },
                headers,
            )
        elif model.startswith("fail-500"):
            self._send_json(
                500,
                {
                    "error": {
                        "message": "The server had an error while processing your request (fake upstream)",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                _rate_limit_headers(REMAINING_REQUESTS, REMAINING_TOKENS),
            )
        elif stream:
            self._stream_completion(model, body)
        else:
            self._completion(model)

    def _completion(self, model: str) -> None:
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.server.completion_text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            },
        }
        self._send_json(200, payload, _rate_limit_headers(REMAINING_REQUESTS, REMAINING_TOKENS))

    def _stream_completion(self, model: str, body: dict[str, Any]) -> None:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for name, value in _rate_limit_headers(REMAINING_REQUESTS, REMAINING_TOKENS).items():
            self.send_header(name, value)
        self.end_headers()
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> None:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = usage
            self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

        words = self.server.completion_text.split(" ")
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for i, word in enumerate(words):
            time.sleep(0.01)
            text = word if i == 0 else " " + word
            chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if include_usage:
            chunk(
                [],
                {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": COMPLETION_TOKENS,
                    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
                },
            )
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")  # end of the chunked body


class FakeUpstreamServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, completion_text: str = DEFAULT_COMPLETION) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.completion_text = completion_text
        self.requests: list[dict[str, Any]] = []
        self._requests_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def record(self, request: dict[str, Any]) -> None:
        with self._requests_lock:
            self.requests.append(request)

    def calls(self, model: str) -> int:
        with self._requests_lock:
            return sum(1 for r in self.requests if r["model"] == model)

    def start(self) -> FakeUpstreamServer:
        self._thread = threading.Thread(target=self.serve_forever, name="fake-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)
