"""A stand-in for an OpenAI-compatible chat-completions API, over real HTTP on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GOOD_ANSWER = {
    "category": "authentication",
    "summary": "Repeated failed SSH logins",
    "tags": ["ssh", "brute-force"],
    "confidence": 0.93,
}


class FakeLlm:
    """Answers per ``mode``: ok, low, invalid, not_json, slow, error. Records requests."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay_s = 2.0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.url = ""

    def answer(self) -> tuple[int, bytes]:
        if self.mode == "error":
            return 500, b'{"error": "overloaded"}'
        if self.mode == "slow":
            time.sleep(self.delay_s)
        content: Any = dict(GOOD_ANSWER)
        if self.mode == "low":
            content["confidence"] = 0.4
        elif self.mode == "invalid":
            content["severity"] = "high"
        elif self.mode == "not_json":
            content = "Sure! Here is the JSON you asked for"
        text = content if isinstance(content, str) else json.dumps(content)
        body = {"choices": [{"message": {"role": "assistant", "content": text}}]}
        return 200, json.dumps(body).encode()


def _handler(fake: FakeLlm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            request = json.loads(self.rfile.read(length))
            with fake.lock:
                fake.requests.append(request)
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
            status, body = fake.answer()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            with suppress(BrokenPipeError):
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def fake_llm_server() -> Iterator[FakeLlm]:
    fake = FakeLlm()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    server.block_on_close = False
    fake.url = f"http://127.0.0.1:{server.server_port}/v1"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
