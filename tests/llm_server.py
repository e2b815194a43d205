"""A local OpenAI-compatible chat-completions server for tests (stdlib http.server on 127.0.0.1).

Script what it answers, one response per request, in order:

    with LlmServer() as server:
        server.reply_json({"intent": "other", ...})   # good structured output
        server.reply_text("not json {")                # invalid JSON as the model's content
        server.fail(429)                               # HTTP error with an OpenAI-style error body
        config = Config(llm_base_url=server.base_url)

When the queue is empty it answers with `responder(request_body)` if one is set
(for end-to-end tests that send many requests), else HTTP 500 "no scripted
response" so an unexpected call fails loudly. Every request body is recorded in
`server.requests`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Scripted", "LlmServer"]


@dataclass(frozen=True)
class Scripted:
    """One scripted answer: an HTTP status with an error, or a completion whose content is `content`."""

    status: int = 200
    content: str = ""
    prompt_tokens: int = 11
    completion_tokens: int = 7
    delay: float = 0.0  # seconds to wait before answering (timeouts)
    model: str | None = None  # reported model; default: the requested one


Responder = Callable[[dict[str, Any]], Scripted]


class LlmServer:
    def __init__(self, responder: Responder | None = None) -> None:
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self._queue: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ scripting

    def push(self, scripted: Scripted) -> None:
        with self._lock:
            self._queue.append(scripted)

    def reply_json(self, obj: Any, **options: Any) -> None:
        self.push(Scripted(content=json.dumps(obj), **options))

    def reply_text(self, text: str, **options: Any) -> None:
        self.push(Scripted(content=text, **options))

    def fail(self, status: int, **options: Any) -> None:
        self.push(Scripted(status=status, **options))

    def _next(self, body: dict[str, Any]) -> Scripted:
        with self._lock:
            self.requests.append(body)
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            return self.responder(body)
        return Scripted(status=500, content="no scripted response")

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> LlmServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(
                        400, {"error": {"message": "request body is not JSON", "type": "invalid_request"}}
                    )
                    return
                scripted = server._next(body)
                if scripted.delay:
                    time.sleep(scripted.delay)
                if scripted.status != 200:
                    message = scripted.content or f"scripted HTTP {scripted.status}"
                    self._send(
                        scripted.status, {"error": {"message": message, "type": "scripted", "code": None}}
                    )
                    return
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-test-{len(server.requests)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": scripted.model or body.get("model", "test-model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": scripted.content,
                                    "refusal": None,
                                },
                                "finish_reason": "stop",
                                "logprobs": None,
                            }
                        ],
                        "usage": {
                            "prompt_tokens": scripted.prompt_tokens,
                            "completion_tokens": scripted.completion_tokens,
                            "total_tokens": scripted.prompt_tokens + scripted.completion_tokens,
                        },
                    },
                )

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.05,), name="llm-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LlmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
