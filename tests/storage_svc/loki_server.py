"""A stand-in for Loki (no Loki binary can be installed here): a real HTTP server on
127.0.0.1 that speaks the push API and checks each request the way Loki's distributor does
(path, content type, gzip, tenant, credentials, the JSON push shape, label and structured
metadata names). It answers scripted statuses, so tests can make it throttle or refuse."""

from __future__ import annotations

import gzip
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PUSH_PATH = "/loki/api/v1/push"
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class Received:
    status: int
    headers: dict[str, str]
    body: dict[str, Any] | None

    def entries(self) -> list[tuple[dict[str, str], list[Any]]]:
        """(labels, value) for every entry of the push."""
        assert self.body is not None
        return [(s["stream"], value) for s in self.body["streams"] for value in s["values"]]


@dataclass
class FakeLoki:
    port: int = 0
    tenant: str | None = None
    authorization: str | None = None
    answers: deque[tuple[int, str]] = field(default_factory=deque)
    """Statuses to answer to the next well-formed pushes (then 204)."""
    received: list[Received] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeLoki:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer(self, *statuses: int, text: str = "") -> None:
        self.answers.extend((status, text or f"scripted {status}") for status in statuses)

    def accepted(self) -> list[Received]:
        return [r for r in self.received if r.status == 204]

    def accepted_entries(self) -> list[tuple[dict[str, str], list[Any]]]:
        return [entry for push in self.accepted() for entry in push.entries()]

    def accepted_ids(self) -> list[str]:
        return [value[2]["event_id"] for _, value in self.accepted_entries()]

    def handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, str]:
        problem, body = self._check(method, path, headers, raw)
        if problem:
            self.violations.append(problem)
            status, text = (404 if path != PUSH_PATH else 400), problem
        elif self.tenant is not None and headers.get("x-scope-orgid") != self.tenant:
            status, text = 401, "no org id"
        elif self.authorization is not None and headers.get("authorization") != self.authorization:
            status, text = 401, "unauthorized"
        elif self.answers:
            status, text = self.answers.popleft()
        else:
            status, text = 204, ""
        self.received.append(Received(status, headers, body))
        return status, text

    def _check(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[str, dict[str, Any] | None]:
        if method != "POST" or path != PUSH_PATH:
            return f"{method} {path}: not the push API", None
        if headers.get("content-type") != "application/json":
            return f"unsupported Content-Type {headers.get('content-type')!r}", None
        if headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return f"body is not JSON: {exc}", None
        return _push_problem(body), body


def _push_problem(body: Any) -> str:
    if (
        not isinstance(body, dict)
        or set(body) != {"streams"}
        or not isinstance(body["streams"], list)
    ):
        return 'body must be {"streams": [...]}'
    for stream in body["streams"]:
        if not isinstance(stream, dict) or set(stream) != {"stream", "values"}:
            return f"a stream must have exactly stream and values: {stream!r}"
        problem = _names_problem(stream["stream"], "label") or _values_problem(stream["values"])
        if problem:
            return problem
        if not stream["stream"]:
            return "a stream needs at least one label"
    return ""


def _names_problem(pairs: Any, what: str) -> str:
    if not isinstance(pairs, dict):
        return f"{what}s must be an object"
    for name, value in pairs.items():
        if not LABEL_NAME.match(name):
            return f"invalid {what} name {name!r}"
        if not isinstance(value, str) or (what == "label" and not value):
            return f"{what} {name!r} must have a non-empty string value"
    return ""


def _values_problem(values: Any) -> str:
    if not isinstance(values, list) or not values:
        return "values must be a non-empty list"
    previous = -1
    for value in values:
        if not isinstance(value, list) or len(value) not in (2, 3):
            return f"an entry is [ts, line] or [ts, line, metadata]: {value!r}"
        if not isinstance(value[0], str) or not value[0].isdigit():
            return f"entry timestamp must be a string of nanoseconds: {value[0]!r}"
        if not isinstance(value[1], str):
            return "entry line must be a string"
        if len(value) == 3 and (problem := _names_problem(value[2], "structured metadata")):
            return problem
        if int(value[0]) < previous:
            return "entries of a stream out of order"
        previous = int(value[0])
    return ""


def _handler(loki: FakeLoki) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            self._serve("GET")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, text = loki.handle(method, self.path, headers, raw)
            payload = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
