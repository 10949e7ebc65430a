"""The Loki sink: the push API (``/loki/api/v1/push``, JSON), one push per outbox batch.

Stream labels come only from a small low-cardinality set (source, type, service, severity,
and the tags site and env); ids, hosts, addresses and other attributes go into structured
metadata (or, with ``line_format: json``, the line). 429, 5xx, other non-2xx answers and
network errors are retried with backoff by the worker; 400, 413 and 422 (out of order, too
old, bad labels, too large) are recorded and not retried: retrying would fail the same way.
Loki keeps the acceptable entries of a push it answers 400, but this sink cannot tell which,
so it counts the whole push as rejected.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx

from gen.edgebot.v1 import event_pb2
from mesh.timeutil import ts_to_ns
from storage_svc.sinks.base import (
    BatchWrite,
    SecondarySink,
    SinkOpenError,
    SinkWriteError,
    WriteOutcome,
)
from storage_svc.sinks.event_json import event_json, severity_name
from storage_svc.sinks.secrets import SecretUnavailable, read_secret
from storage_svc.sinks_config import LokiSinkSection

NOT_RETRIED = frozenset({400, 413, 422})
TAG_LABELS = frozenset({"site", "env"})
MAX_LABEL_VALUE = 256
FALLBACK_LABELS = {"type": "unknown"}
_METADATA_NAME = re.compile(r"[^A-Za-z0-9_]")
ERROR_TEXT_LIMIT = 300

Labels = tuple[tuple[str, str], ...]


def stream_labels(event: event_pb2.Event, names: Sequence[str]) -> dict[str, str]:
    values = {
        "source": event.source,
        "type": event.type,
        "service": event.service,
        "severity": severity_name(event.severity),
    }
    labels = {}
    for name in names:
        value = event.tags.get(name, "") if name in TAG_LABELS else values[name]
        if value:
            labels[name] = value[:MAX_LABEL_VALUE]
    return labels or dict(FALLBACK_LABELS)


def metadata_name(key: str) -> str:
    """A structured-metadata name Loki accepts: letters, digits and '_' (net.src_ip ->
    net_src_ip)."""
    name = _METADATA_NAME.sub("_", key)
    return f"_{name}" if name[:1].isdigit() else name


def structured_metadata(event: event_pb2.Event, label_names: Iterable[str]) -> dict[str, str]:
    metadata = {"event_id": event.id}
    if event.host:
        metadata["host"] = event.host
    for key, value in event.attributes.items():
        metadata[metadata_name(key)] = value
    labelled = TAG_LABELS.intersection(label_names)
    for key, value in event.tags.items():
        if key not in labelled:
            metadata[metadata_name(f"tag_{key}")] = value
    return metadata


def push_body(events: Sequence[event_pb2.Event], settings: LokiSinkSection) -> dict[str, Any]:
    """The push request: one stream per label set, its entries in time order."""
    streams: dict[Labels, list[tuple[int, list[Any]]]] = {}
    for event in events:
        labels = stream_labels(event, settings.labels)
        ts_ns = ts_to_ns(event.time)
        line = event_json(event) if settings.line_format == "json" else event.message
        entry: list[Any] = [str(ts_ns), line]
        if settings.structured_metadata:
            entry.append(structured_metadata(event, labels))
        streams.setdefault(tuple(sorted(labels.items())), []).append((ts_ns, entry))
    return {
        "streams": [
            {"stream": dict(labels), "values": [entry for _, entry in sorted(entries, key=_time)]}
            for labels, entries in streams.items()
        ]
    }


def _time(item: tuple[int, list[Any]]) -> int:
    return item[0]


class LokiSink(SecondarySink):
    kind = "loki"

    def __init__(self, settings: LokiSinkSection) -> None:
        super().__init__(settings.name, settings.down_after_failures)
        self.settings = settings
        self.url = f"{settings.url}{settings.push_path}"
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        try:
            self._auth_header()
        except SecretUnavailable as exc:
            raise SinkOpenError(f"loki sink {self.name}: {exc}") from None
        self._client = httpx.AsyncClient(timeout=self.settings.timeout_s)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _auth_header(self) -> dict[str, str]:
        settings = self.settings
        token = read_secret("bearer_token", settings.bearer_token_file, settings.bearer_token_env)
        if token is not None:
            return {"Authorization": f"Bearer {token}"}
        password = read_secret("password", settings.password_file, settings.password_env)
        if password is None or settings.username is None:
            return {}
        pair = base64.b64encode(f"{settings.username}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {pair}"}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.settings.tenant is not None:
            headers["X-Scope-OrgID"] = self.settings.tenant
        if self.settings.gzip:
            headers["Content-Encoding"] = "gzip"
        try:
            headers.update(self._auth_header())
        except SecretUnavailable as exc:
            raise SinkWriteError(f"loki sink {self.name}: {exc}") from None
        return headers

    async def deliver(self, batch: BatchWrite) -> WriteOutcome:
        if self._client is None:
            raise SinkWriteError(f"loki sink {self.name} is not open")
        started = time.perf_counter()
        body = json.dumps(push_body(batch.events, self.settings), separators=(",", ":")).encode()
        if self.settings.gzip:
            body = gzip.compress(body, compresslevel=5)
        try:
            response = await self._client.post(self.url, content=body, headers=self._headers())
        except httpx.HTTPError as exc:
            raise SinkWriteError(
                f"loki push to {self.url} failed: {type(exc).__name__}: {exc}"
            ) from exc
        seconds = time.perf_counter() - started
        count = len(batch.events)
        if response.is_success:
            return WriteOutcome(False, count, 0, seconds)
        answer = f"loki answered {response.status_code}: {_error_text(response.text)}"
        if response.status_code in NOT_RETRIED:
            self.record_rejection(f"{answer} ({count} events not retried)")
            return WriteOutcome(False, 0, 0, seconds, rejected=count)
        raise SinkWriteError(answer)


def _error_text(text: str) -> str:
    text = " ".join(text.split())
    return text[:ERROR_TEXT_LIMIT] + ("…" if len(text) > ERROR_TEXT_LIMIT else "")
