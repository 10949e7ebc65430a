"""Events to PostgreSQL COPY records and back, filters to SQL conditions, and the SQL
statements the sink's reads run (built without a connection, so their plans can be shown)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring as _quoted  # the C implementation
from typing import Any, cast

from gen.edgebot.v1 import event_pb2
from mesh.timeutil import ns_to_ts, ts_to_ns
from storage_svc.query import EventFilter, GroupBy, PageRequest, SortOrder, severity_level
from storage_svc.sinks.base import BatchWrite, StoredEvent

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NS_PER_US = 1000

EVENT_COLUMNS = (
    "seq",
    "event_id",
    "ts",
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
    "batch_id",
)
DEAD_LETTER_COLUMNS = (
    "event_index",
    "event_id",
    "field",
    "reason",
    "stage",
    "agent_id",
    "batch_id",
    "event",
)
QUARANTINE_COLUMNS = (
    "event_index",
    "event_id",
    "processor",
    "reason",
    "agent_id",
    "batch_id",
    "event",
)
SELECTED_COLUMNS = (
    "seq",
    "event_id",
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
    GroupBy.SEVERITY: "COALESCE(severity::text, '')",
    GroupBy.HOST: "host",
}

Record = tuple[Any, ...]
RECORD_ID = 0
RECORD_TS = 1


def ns_to_timestamptz(ns: int) -> dt.datetime:
    """The time truncated (floored) to PostgreSQL's microseconds."""
    return EPOCH + dt.timedelta(microseconds=ns // NS_PER_US)


def _json(values: Mapping[str, str]) -> str:
    """A flat string map as a JSON object, twice as fast as json.dumps on a protobuf map
    (whose items() iterates in Python; its keys do not)."""
    if not values:
        return "{}"
    return "{" + ",".join([_quoted(key) + ":" + _quoted(values[key]) for key in values]) + "}"


def event_record(event: event_pb2.Event, batch_id: str) -> Record:
    """The COPY record of ``event`` without its leading seq (numbered at commit)."""
    ts_ns = ts_to_ns(event.time)
    return (
        event.id,
        ns_to_timestamptz(ts_ns),
        ts_ns,
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
    )


def dead_letter_records(batch: BatchWrite) -> list[Record]:
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
        )
        for letter in batch.dead_letters
    ]


def quarantine_records(batch: BatchWrite) -> list[Record]:
    return [
        (
            item.index,
            item.event.id,
            item.processor,
            item.reason,
            batch.agent_id,
            batch.batch_id,
            item.event.SerializeToString(),
        )
        for item in batch.quarantined
    ]


def stored_event(row: Sequence[Any]) -> StoredEvent:
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


@dataclass(frozen=True)
class Statement:
    """One SQL statement and its numbered ($n) parameters, as the sink sends them."""

    sql: str
    params: tuple[Any, ...]


class Conditions:
    """SQL conditions joined with AND, and their numbered ($n) parameters."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def add(self, condition: str) -> None:
        self.parts.append(condition)

    def sql(self) -> str:
        return " AND ".join(self.parts) or "TRUE"

    def statement(self, sql: str) -> Statement:
        """``sql`` (which placed these conditions and parameters) with the parameters."""
        return Statement(sql, tuple(self.params))


def where(selection: EventFilter, conditions: Conditions | None = None) -> Conditions:
    found = conditions if conditions is not None else Conditions()
    # The ts bounds repeat the exact ts_ns ones so the planner can skip whole partitions.
    if selection.start_ns is not None:
        found.add(f"ts >= {found.param(ns_to_timestamptz(selection.start_ns))}")
        found.add(f"ts_ns >= {found.param(selection.start_ns)}")
    if selection.end_ns is not None:
        found.add(f"ts <= {found.param(ns_to_timestamptz(selection.end_ns))}")
        found.add(f"ts_ns < {found.param(selection.end_ns)}")
    for column, values in (
        ("type", selection.types),
        ("source", selection.sources),
        ("host", selection.hosts),
        ("service", selection.services),
    ):
        if values:
            found.add(f"{column} = ANY({found.param(list(values))}::text[])")
    if selection.max_level is not None:
        found.add(f"severity <= {found.param(selection.max_level)}")
    if selection.text:
        found.add(f"strpos(lower(message), lower({found.param(selection.text)})) > 0")
    for column, wanted in (("tags", selection.tags), ("attributes", selection.attributes)):
        if wanted:
            found.add(f"{column} @> {found.param(_json(wanted))}::jsonb")
    return found


def page_statement(selection: EventFilter, page: PageRequest) -> Statement:
    """One page of the selected events in (time, id) order, and one more row that tells
    whether another page follows."""
    conditions = where(selection)
    newest_first = page.order is SortOrder.NEWEST_FIRST
    direction = "DESC" if newest_first else "ASC"
    if page.after is not None:
        after_ts = conditions.param(page.after.ts_ns)
        after_id = conditions.param(page.after.event_id)
        conditions.add(f"(ts_ns, event_id) {'<' if newest_first else '>'} ({after_ts}, {after_id})")
    limit = conditions.param(page.size + 1)
    return conditions.statement(
        f"{SELECT_EVENT} WHERE {conditions.sql()} "
        f"ORDER BY ts_ns {direction}, event_id {direction} LIMIT {limit}"
    )


def aggregate_statement(selection: EventFilter, bucket_ns: int, group_by: GroupBy) -> Statement:
    """Counts of the selected events per time bucket and group, rows (bucket, key, count)."""
    conditions = where(selection)
    width = conditions.param(bucket_ns)
    # A true modulo (% truncates toward zero) so times before 1970 align too.
    bucket = f"ts_ns - ((ts_ns % {width}) + {width}) % {width}"
    return conditions.statement(
        f"SELECT {bucket} AS bucket, {GROUP_COLUMNS[group_by]} AS key, COUNT(*) "
        f"FROM events WHERE {conditions.sql()} GROUP BY bucket, key ORDER BY bucket, key"
    )


def events_after_statement(seq: int, selection: EventFilter, limit: int) -> Statement:
    """The first ``limit`` selected events stored after ``seq``, in seq order."""
    conditions = Conditions()
    conditions.add(f"seq > {conditions.param(seq)}")
    where(selection, conditions)
    return conditions.statement(
        f"{SELECT_EVENT} WHERE {conditions.sql()} ORDER BY seq LIMIT {conditions.param(limit)}"
    )
