"""A real HTTP server on 127.0.0.1 speaking the OpenAI, Anthropic and custom REST protocols, for tests.

Answers come from ``responder(path, body) -> str`` (default: a fixed python
block). Misbehaviour is scripted: ``server.script`` is a queue of actions the
next requests get, in order, before normal answers resume:

- ``("status", code, retry_after_or_None)``: that HTTP status (429, 500, 401...)
- ``("slow", seconds)``: sleep, then answer normally (a client timeout fires first)
- ``("malformed",)``: 200 with a body that is not JSON
- ``("echo_auth", code)``: that status with the received credentials in the body,
  like a careless server; the client must not repeat them

Every request is recorded (path, headers with lower-case names, JSON body); ``max_in_flight`` is the
highest number of requests handled at once. ``delay_s`` slows every answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

DEFAULT_TEXT = "Here is the code:\n```python\nprint('migrated')\n```\n"


class FakeLLMServer:
    def __init__(self, responder: Callable[[str, dict], str] | None = None, delay_s: float = 0.0):
        self.responder = responder or (lambda path, body: DEFAULT_TEXT)
        self.delay_s = delay_s
        self.script: deque = deque()
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def calls(self) -> int:
        return len(self.requests)

    def start(self) -> "FakeLLMServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (idempotent): afterwards connections to :attr:`url` are refused."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_action(self) -> tuple | None:
        with self._lock:
            return self.script.popleft() if self.script else None

    def answer(self, path: str, body: dict) -> dict:
        text = self.responder(path, body)
        if path.endswith("/chat/completions"):
            return {"id": "fake", "object": "chat.completion", "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
        if path.endswith("/v1/messages"):
            return {"id": "fake", "type": "message", "role": "assistant", "model": body.get("model"),
                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                    "usage": {"input_tokens": 12, "output_tokens": 6}}
        if path.endswith("/generate"):
            return {"text": text}
        if path.endswith("/logits"):
            return {"logits": [0.5, -1.0, 2.0]}
        raise KeyError(path)


def _handler(server: FakeLLMServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            with server._lock:
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append({"path": self.path, "headers": headers, "body": body})
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                self._respond(body)
            finally:
                with server._lock:
                    server.in_flight -= 1

        def _respond(self, body: Any) -> None:
            action = server._next_action()
            if server.delay_s:
                time.sleep(server.delay_s)
            if action and action[0] == "status":
                _, code, retry_after = action
                headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
                self._send(code, json.dumps({"error": {"message": f"status {code}"}}).encode(), headers)
                return
            if action and action[0] == "echo_auth":
                creds = self.headers.get("Authorization") or self.headers.get("x-api-key") or ""
                self._send(action[1], json.dumps({"error": f"invalid credentials: {creds}"}).encode())
                return
            if action and action[0] == "malformed":
                self._send(200, b'{"choices": [ this is not json')
                return
            if action and action[0] == "slow":
                time.sleep(action[1])
            if not isinstance(body, dict):
                self._send(400, b'{"error": "body is not a JSON object"}')
                return
            try:
                payload = server.answer(self.path, body)
            except KeyError:
                self._send(404, b'{"error": "unknown path"}')
                return
            self._send(200, json.dumps(payload).encode())

    return Handler
