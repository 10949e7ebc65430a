"""A JSON API response into events through the configured mapping: never raises.

Paths with ``[]`` make one event per item of that list; other paths read the whole
document (shared by every item). A body that is not JSON, or nested deeper than allowed,
becomes one ``raw`` event whose ``parse.error`` says why. Mapped text is cut to the
configured sizes (named in ``http.truncated``), and lone surrogates, which JSON allows as
escapes but UTF-8 cannot hold, become U+FFFD.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from edge_agent.config_polling import SEVERITIES, HttpMappingConfig
from edge_agent.parsers.json_path import (
    MISSING,
    as_text,
    iterate_items,
    json_depth,
    parse_path,
    render,
    resolve,
    template_paths,
)
from gen.edgebot.v1 import event_pb2
from mesh.ids import uuid7
from mesh.timeutil import NS_PER_S, datetime_to_ns, ns_to_ts

DEFAULT_MESSAGE_CHARS = 1024
# Unix times above this are taken as milliseconds.
MILLISECONDS_THRESHOLD = 100_000_000_000
# Nanoseconds a Timestamp can hold: years 0001 to 9999.
MIN_TIME_NS = -62_135_596_800 * NS_PER_S
MAX_TIME_NS = 253_402_300_799 * NS_PER_S
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class MappingLimits:
    max_depth: int
    max_events: int
    max_field_bytes: int
    max_message_bytes: int


@dataclass(frozen=True)
class Response:
    """One answer of the polled API and where it came from."""

    body: bytes
    status: int
    url: str  # without its query string, which may hold an API key
    source: str
    host: str
    service: str
    received_ns: int


@dataclass
class Mapped:
    events: list[event_pb2.Event]
    skipped: int = 0
    error: str | None = None
    # Why there is no mapped event: invalid_json or too_deep (the metric's outcome).
    failure: str = ""


def map_response(response: Response, mapping: HttpMappingConfig, limits: MappingLimits) -> Mapped:
    max_depth = limits.max_depth
    try:
        document = json.loads(response.body)
    except RecursionError:
        return _raw(response, "too_deep", f"JSON nested deeper than {max_depth} levels")
    except ValueError as error:
        return _raw(response, "invalid_json", f"invalid JSON: {error}")
    if json_depth(document, max_depth) > max_depth:
        return _raw(response, "too_deep", f"JSON nested deeper than {max_depth} levels")
    prefix = _items_prefix(mapping)
    events: list[event_pb2.Event] = []
    skipped = 0
    for item in iterate_items(document, prefix):
        if len(events) >= limits.max_events:
            skipped += 1
            continue
        events.append(_event(response, mapping, limits, document, item))
    return Mapped(events, skipped)


def _items_prefix(mapping: HttpMappingConfig) -> tuple[str | int, ...] | None:
    paths = [*mapping.attributes.values(), *([mapping.time] if mapping.time else [])]
    for template in (mapping.message, mapping.host, mapping.service):
        paths.extend(template_paths(template))
    prefixes = [parse_path(path).items_prefix for path in paths]
    return next((prefix for prefix in prefixes if prefix is not None), None)


class _Cutter:
    """Cuts mapped text to its limit and remembers which fields it cut."""

    def __init__(self, limits: MappingLimits) -> None:
        self.limits = limits
        self.cut: list[str] = []

    def field(self, name: str, text: str) -> str:
        return self._fit(name, text, self.limits.max_field_bytes)

    def message(self, text: str) -> str:
        return self._fit("message", text, self.limits.max_message_bytes)

    def _fit(self, name: str, text: str, limit: int) -> str:
        text = _SURROGATE.sub("\ufffd", text)
        if len(text) * 4 <= limit:
            return text
        encoded = text.encode()
        if len(encoded) <= limit:
            return text
        self.cut.append(name)
        return encoded[:limit].decode("utf-8", "ignore")


def _event(
    response: Response,
    mapping: HttpMappingConfig,
    limits: MappingLimits,
    document: Any,
    item: Any,
) -> event_pb2.Event:
    cutter = _Cutter(limits)
    attributes = {"http.url": response.url, "http.status": str(response.status)}
    for key, path in mapping.attributes.items():
        text = as_text(resolve(parse_path(path), document, item))
        if text is not None:
            attributes[key] = cutter.field(f"attributes.{key}", text)
    time_ns = response.received_ns
    if mapping.time:
        value = resolve(parse_path(mapping.time), document, item)
        parsed = _time_ns(value)
        if parsed is None and value is not MISSING:
            shown = cutter.field("time", f"unreadable time {as_text(value)!r}"[:200])
            attributes["http.time_error"] = shown
        time_ns = parsed or time_ns
    host = cutter.field("host", render(mapping.host, document, item)) or response.host
    service = cutter.field("service", render(mapping.service, document, item))
    message = cutter.message(_message(mapping.message, document, item))
    if cutter.cut:
        attributes["http.truncated"] = ",".join(cutter.cut)
    event = event_pb2.Event(
        id=uuid7(),
        type="http",
        source=response.source,
        host=host,
        service=service or response.service,
        severity=event_pb2.Severity.ValueType(SEVERITIES.index(mapping.severity) + 1),
        message=message,
        attributes=attributes,
    )
    ns_to_ts(time_ns, event.time)
    ns_to_ts(response.received_ns, event.observed_time)
    return event


def _message(template: str, document: Any, item: Any) -> str:
    if template:
        return render(template, document, item)
    text = as_text(document if item is MISSING else item) or ""
    return text[:DEFAULT_MESSAGE_CHARS]


def _time_ns(value: Any) -> int | None:
    """ISO 8601 text (UTC when it has no offset) or Unix seconds / milliseconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        # Integers stay integers: JSON allows ones far beyond a float's range.
        per_unit = NS_PER_S // 1000 if abs(value) > MILLISECONDS_THRESHOLD else NS_PER_S
        scaled = value * per_unit
        if isinstance(scaled, float) and not math.isfinite(scaled):
            return None
        ns = int(scaled)
        return ns if MIN_TIME_NS <= ns <= MAX_TIME_NS else None
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return datetime_to_ns(parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC))
    return None


def _raw(response: Response, failure: str, reason: str) -> Mapped:
    event = event_pb2.Event(
        id=uuid7(),
        type="raw",
        source=response.source,
        host=response.host,
        service=response.service,
        severity=event_pb2.SEVERITY_WARNING,
        message=response.body[:DEFAULT_MESSAGE_CHARS].decode("utf-8", errors="replace"),
        attributes={
            "parse.error": reason[:500],
            "http.url": response.url,
            "http.status": str(response.status),
        },
        raw=response.body,
    )
    ns_to_ts(response.received_ns, event.time)
    ns_to_ts(response.received_ns, event.observed_time)
    return Mapped([event], error=reason, failure=failure)
