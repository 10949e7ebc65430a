"""An event as a JSON document: the shape the JSONL files, NATS messages and Loki's JSON
lines share."""

from __future__ import annotations

import base64
import json
from typing import Any

from gen.edgebot.v1 import event_pb2
from mesh.timeutil import ns_to_iso, ts_to_ns
from storage_svc.query import severity_level

SEVERITY_NAMES: dict[int, str] = {
    int(value): name.removeprefix("SEVERITY_").lower()
    for name, value in event_pb2.Severity.items()
    if value != event_pb2.SEVERITY_UNSPECIFIED
}


def severity_name(severity: int) -> str:
    """ "error", "warning", ...; "" when unspecified."""
    return SEVERITY_NAMES.get(severity, "")


def event_document(event: event_pb2.Event) -> dict[str, Any]:
    """Every field of the event; times as RFC 3339 (microseconds) and exact nanoseconds."""
    ts_ns = ts_to_ns(event.time)
    document: dict[str, Any] = {
        "id": event.id,
        "time": ns_to_iso(ts_ns),
        "time_ns": ts_ns,
        "type": event.type,
        "source": event.source,
        "host": event.host,
        "service": event.service,
        "severity": severity_name(event.severity),
        "level": severity_level(event.severity),
        "message": event.message,
        "attributes": dict(event.attributes),
        "tags": dict(event.tags),
    }
    if event.HasField("observed_time"):
        document["observed_time_ns"] = ts_to_ns(event.observed_time)
    if event.HasField("raw"):
        document["raw_base64"] = base64.b64encode(event.raw).decode("ascii")
    return document


def event_json(event: event_pb2.Event) -> str:
    return json.dumps(event_document(event), separators=(",", ":"), ensure_ascii=False)
