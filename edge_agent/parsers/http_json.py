"""A JSON API response into events through the configured mapping: never raises.

Paths with ``[]`` make one event per item of that list; other paths read the whole
document (shared by every item). A body that is not JSON, or nested deeper than allowed,
becomes one ``raw`` event whose ``parse.error`` says why.
"""

from __future__ import annotations

import datetime as dt
import json
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


def map_response(
    response: Response, mapping: HttpMappingConfig, max_depth: int, max_events: int
) -> Mapped:
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
        if len(events) >= max_events:
            skipped += 1
            continue
        events.append(_event(response, mapping, document, item))
    return Mapped(events, skipped)


def _items_prefix(mapping: HttpMappingConfig) -> tuple[str | int, ...] | None:
    paths = [*mapping.attributes.values(), *([mapping.time] if mapping.time else [])]
    for template in (mapping.message, mapping.host, mapping.service):
        paths.extend(template_paths(template))
    prefixes = [parse_path(path).items_prefix for path in paths]
    return next((prefix for prefix in prefixes if prefix is not None), None)


def _event(
    response: Response, mapping: HttpMappingConfig, document: Any, item: Any
) -> event_pb2.Event:
    attributes = {"http.url": response.url, "http.status": str(response.status)}
    for key, path in mapping.attributes.items():
        text = as_text(resolve(parse_path(path), document, item))
        if text is not None:
            attributes[key] = text
    time_ns = response.received_ns
    if mapping.time:
        value = resolve(parse_path(mapping.time), document, item)
        parsed = _time_ns(value)
        if parsed is None and value is not MISSING:
            attributes["http.time_error"] = f"unreadable time {as_text(value)!r}"[:200]
        time_ns = parsed or time_ns
    event = event_pb2.Event(
        id=uuid7(),
        type="http",
        source=response.source,
        host=render(mapping.host, document, item) or response.host,
        service=render(mapping.service, document, item) or response.service,
        severity=event_pb2.Severity.ValueType(SEVERITIES.index(mapping.severity) + 1),
        message=_message(mapping.message, document, item),
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
        seconds = value / 1000 if abs(value) > MILLISECONDS_THRESHOLD else value
        return int(seconds * NS_PER_S) if abs(seconds) < 253_402_300_799 else None
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
