"""Events to SQLite rows and back, and filters to SQL conditions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from gen.edgebot.v1 import event_pb2
from mesh.timeutil import ns_to_ts, ts_to_ns
from storage_svc.query import EventFilter, GroupBy, severity_level
from storage_svc.sinks.base import BatchWrite, StoredEvent

INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (id, ts_ns, observed_ns, type, source, host, service, "
    "severity, message, attributes, tags, raw, batch_id, created_ns) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_DEAD_LETTER = (
    "INSERT INTO dead_letters (event_index, event_id, field, reason, stage, agent_id, "
    "batch_id, event, stored_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_QUARANTINED = (
    "INSERT INTO quarantine (event_index, event_id, processor, reason, agent_id, batch_id, "
    "event, stored_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
SELECTED_COLUMNS = (
    "seq",
    "id",
    "ts_ns",
    "observed_ns",
    "type",
    "source",
    "host",
    "service",
    "severity",
    "message",
    "attributes",
    "tags",
    "raw",
)
SELECT_EVENT = f"SELECT {', '.join(SELECTED_COLUMNS)} FROM events"
GROUP_COLUMNS = {
    GroupBy.NONE: "''",
    GroupBy.TYPE: "type",
    GroupBy.SOURCE: "source",
    GroupBy.SERVICE: "service",
    GroupBy.SEVERITY: "COALESCE(CAST(severity AS TEXT), '')",
    GroupBy.HOST: "host",
}

Row = tuple[Any, ...]


def _json(values: Mapping[str, str]) -> str:
    return json.dumps(dict(values), separators=(",", ":"), ensure_ascii=False)


def event_row(event: event_pb2.Event, batch_id: str, created_ns: int) -> Row:
    return (
        event.id,
        ts_to_ns(event.time),
        ts_to_ns(event.observed_time) if event.HasField("observed_time") else None,
        event.type,
        event.source,
        event.host,
        event.service,
        severity_level(event.severity),
        event.message,
        _json(event.attributes),
        _json(event.tags),
        event.raw if event.HasField("raw") else None,
        batch_id,
        created_ns,
    )


def dead_letter_rows(batch: BatchWrite, stored_ns: int) -> list[Row]:
    return [
        (
            letter.error.index,
            letter.error.event_id or letter.event.id,
            letter.error.field,
            letter.error.reason,
            letter.stage,
            letter.agent_id or batch.agent_id,
            letter.batch_id or batch.batch_id,
            letter.event.SerializeToString(),
            stored_ns,
        )
        for letter in batch.dead_letters
    ]


def quarantine_rows(batch: BatchWrite, stored_ns: int) -> list[Row]:
    return [
        (
            item.index,
            item.event.id,
            item.processor,
            item.reason,
            batch.agent_id,
            batch.batch_id,
            item.event.SerializeToString(),
            stored_ns,
        )
        for item in batch.quarantined
    ]


def stored_event(row: Row) -> StoredEvent:
    """A row selected with SELECT_EVENT as the Event it was written from."""
    seq, event_id, ts_ns, observed_ns, type_, source, host, service = row[:8]
    severity, message, attributes, tags, raw = row[8:]
    event = event_pb2.Event(
        id=event_id,
        type=type_,
        source=source,
        host=host,
        service=service,
        severity=cast("event_pb2.Severity.ValueType", 0 if severity is None else severity + 1),
        message=message,
        attributes=json.loads(attributes),
        tags=json.loads(tags),
    )
    if ts_ns:
        ns_to_ts(ts_ns, event.time)
    if observed_ns is not None:
        ns_to_ts(observed_ns, event.observed_time)
    if raw is not None:
        event.raw = raw
    return StoredEvent(seq, event)


def where(selection: EventFilter) -> tuple[str, list[Any]]:
    """SQL conditions (joined with AND, "1" when empty) and their parameters."""
    conditions: list[str] = []
    params: list[Any] = []

    def add(condition: str, *values: Any) -> None:
        conditions.append(condition)
        params.extend(values)

    if selection.start_ns is not None:
        add("ts_ns >= ?", selection.start_ns)
    if selection.end_ns is not None:
        add("ts_ns < ?", selection.end_ns)
    for column, values in (
        ("type", selection.types),
        ("source", selection.sources),
        ("host", selection.hosts),
        ("service", selection.services),
    ):
        if values:
            add(f"{column} IN ({', '.join('?' * len(values))})", *values)
    if selection.max_level is not None:
        add("severity <= ?", selection.max_level)
    if selection.text:
        add("message LIKE ? ESCAPE '\\'", f"%{_escape_like(selection.text)}%")
    for column, wanted in (("tags", selection.tags), ("attributes", selection.attributes)):
        for key, value in wanted.items():
            # Quoted path members: keys such as "net.src_ip" contain dots.
            add(f"json_extract({column}, ?) = ?", f'$."{key}"', value)
    return (" AND ".join(conditions) or "1"), params


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
