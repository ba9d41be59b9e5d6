"""A local fake OpenAI-compatible server for the AI factory's tests (stdlib ``http.server`` in a
thread on 127.0.0.1). Each ``POST /v1/chat/completions`` pops the next scripted :class:`Act`;
when the script is empty the ``default`` act answers. Every request body is kept for asserts."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Act:
    """One scripted reply. ``kind``: ``reply`` (a completion whose content is ``text``), ``status``
    (HTTP ``status`` with ``headers``), ``raw`` (``body`` bytes with ``content_type``), ``stall``
    (sleep ``delay_s``, then reply)."""

    kind: str = "reply"
    text: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str = "application/json"
    delay_s: float = 0.0
    usage: bool = True


def code_reply(code: str, prose: str = "Here is the kernel.") -> Act:
    return Act(text=f"{prose}\n\n```python\n{code.strip()}\n```\n")


def completion(text: str, model: str, usage: bool = True, prompt_chars: int = 0) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }  # fmt: skip
    if usage:
        tin, tout = max(1, prompt_chars // 4), max(1, len(text) // 4)
        d["usage"] = {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}
    return d


class FakeOpenAI:
    def __init__(self, default: Act | None = None) -> None:
        self.script: deque[Act] = deque()
        self.default = default or Act(kind="status", status=500)
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(
                self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(n) or b"{}")
                with fake._lock:
                    fake.requests.append(req)
                    fake.times.append(time.monotonic())
                    act = fake.script.popleft() if fake.script else fake.default
                chars = sum(len(m.get("content") or "") for m in req.get("messages", []))
                if act.kind == "stall":
                    fake._closing.wait(act.delay_s)
                if act.kind == "status":
                    body = json.dumps(
                        {"error": {"message": f"scripted {act.status}", "type": "fake"}}
                    ).encode()
                    self._send(act.status, body, "application/json", act.headers)
                elif act.kind == "raw":
                    self._send(act.status, act.body, act.content_type, act.headers)
                else:
                    body = json.dumps(completion(act.text, req.get("model", "?"), act.usage, chars)).encode()
                    self._send(200, body, "application/json", act.headers)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def push(self, *acts: Act) -> FakeOpenAI:
        with self._lock:
            self.script.extend(acts)
        return self

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
