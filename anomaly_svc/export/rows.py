"""The columns of each dataset, and batches of rows as typed columns.

A batch is column-major (``{name: [values]}``) so Parquet takes it as it is; JSONL and CSV
walk it row by row. Times are integer nanoseconds (0 = unset); maps are dicts. Events and
anomalies keep the protobuf JSON field names and enum names, so a JSONL line parses back
into an ``Event`` or ``Anomaly`` with ``json_format.Parse``.

Labels are one row per (event id, labelled anomaly): ``id`` is the event id and ``label``
(the last column) is ``true_positive`` or ``false_positive`` — the ``id,...,label`` CSV that
``edgebot train --labels`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from anomaly_svc.export.spec import Dataset
from anomaly_svc.store import AnomalyRecord, Label, Status
from gen.edgebot.v1 import anomaly_pb2, event_pb2
from mesh.timeutil import ts_to_ns


class Kind(StrEnum):
    STRING = "string"
    TIME = "time"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    BYTES = "bytes"
    STRING_MAP = "string_map"
    FLOAT_MAP = "float_map"
    STRING_LIST = "string_list"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind


S, T = Kind.STRING, Kind.TIME
EVENT_COLUMNS = (
    Column("id", S), Column("time", T), Column("observed_time", T), Column("type", S),
    Column("source", S), Column("host", S), Column("service", S), Column("severity", S),
    Column("message", S), Column("attributes", Kind.STRING_MAP),
    Column("tags", Kind.STRING_MAP), Column("raw", Kind.BYTES),
)  # fmt: skip
ANOMALY_COLUMNS = (
    Column("id", S), Column("agent", S), Column("host", S), Column("time", T),
    Column("type", S), Column("severity", S), Column("confidence", Kind.FLOAT),
    Column("description", S), Column("features", Kind.FLOAT_MAP), Column("status", S),
    Column("synced", Kind.BOOL), Column("create_time", T), Column("update_time", T),
    Column("resolution", S), Column("notes", S), Column("label", S),
    Column("dedupe_key", S), Column("count", Kind.INT), Column("first_seen_time", T),
    Column("last_seen_time", T), Column("model_version", S),
    Column("event_ids", Kind.STRING_LIST),
)  # fmt: skip
LABEL_COLUMNS = (
    Column("id", S), Column("anomaly_id", S), Column("agent", S), Column("anomaly_type", S),
    Column("host", S), Column("time", T), Column("label", S),
)  # fmt: skip
COLUMNS: dict[Dataset, tuple[Column, ...]] = {
    Dataset.EVENTS: EVENT_COLUMNS,
    Dataset.ANOMALIES: ANOMALY_COLUMNS,
    Dataset.LABELS: LABEL_COLUMNS,
}
# Fields whose absence makes a row less useful; the validation report counts them.
CHECKED_FIELDS: dict[Dataset, tuple[str, ...]] = {
    Dataset.EVENTS: ("time", "type", "source", "host", "service", "severity", "message"),
    Dataset.ANOMALIES: ("time", "host", "description", "event_ids"),
    Dataset.LABELS: ("time", "host"),
}
_SEVERITY = {value: name for name, value in event_pb2.Severity.items()}
_STATUS = {
    Status.OPEN: "ANOMALY_STATUS_OPEN",
    Status.ACKNOWLEDGED: "ANOMALY_STATUS_ACKNOWLEDGED",
    Status.RESOLVED: "ANOMALY_STATUS_RESOLVED",
}
_LABEL = {
    label: anomaly_pb2.OperatorLabel.Name(value)
    for label, value in (
        (Label.NONE, anomaly_pb2.OPERATOR_LABEL_UNSPECIFIED),
        (Label.TRUE_POSITIVE, anomaly_pb2.OPERATOR_LABEL_TRUE_POSITIVE),
        (Label.FALSE_POSITIVE, anomaly_pb2.OPERATOR_LABEL_FALSE_POSITIVE),
    )
}


@dataclass
class Batch:
    dataset: Dataset
    columns: dict[str, list[Any]]
    rows: int

    @property
    def times_ns(self) -> list[int]:
        times: list[int] = self.columns["time"]
        return times

    def missing(self, name: str) -> int:
        """Rows where ``name`` is empty (unset severity counts as empty)."""
        values = self.columns[name]
        if name == "severity":
            return sum(1 for v in values if v == "SEVERITY_UNSPECIFIED")
        return sum(1 for v in values if not v)


def _severity_name(level: int) -> str:
    return _SEVERITY[event_pb2.Severity.ValueType(min(7, max(0, level)) + 1)]


def _empty(dataset: Dataset) -> dict[str, list[Any]]:
    return {column.name: [] for column in COLUMNS[dataset]}


def events_batch(events: Sequence[event_pb2.Event]) -> Batch:
    columns = _empty(Dataset.EVENTS)
    for event in events:
        columns["id"].append(event.id)
        columns["time"].append(ts_to_ns(event.time))
        columns["observed_time"].append(ts_to_ns(event.observed_time))
        columns["type"].append(event.type)
        columns["source"].append(event.source)
        columns["host"].append(event.host)
        columns["service"].append(event.service)
        columns["severity"].append(_SEVERITY.get(event.severity, "SEVERITY_UNSPECIFIED"))
        columns["message"].append(event.message)
        columns["attributes"].append(dict(event.attributes))
        columns["tags"].append(dict(event.tags))
        columns["raw"].append(event.raw if event.HasField("raw") else None)
    return Batch(Dataset.EVENTS, columns, len(events))


def anomalies_batch(anomalies: Sequence[AnomalyRecord]) -> Batch:
    columns = _empty(Dataset.ANOMALIES)
    for a in anomalies:
        for name, value in (
            ("id", a.id), ("agent", a.agent), ("host", a.host), ("time", a.time_ns),
            ("type", a.type), ("severity", _severity_name(a.severity)),
            ("confidence", a.confidence), ("description", a.description),
            ("features", dict(a.features)), ("status", _STATUS[a.status]),
            ("synced", a.synced), ("create_time", a.created_ns), ("update_time", a.updated_ns),
            ("resolution", a.resolution), ("notes", a.notes), ("label", _LABEL[a.label]),
            ("dedupe_key", a.dedupe_key), ("count", a.count),
            ("first_seen_time", a.first_seen_ns), ("last_seen_time", a.last_seen_ns),
            ("model_version", a.model_version), ("event_ids", list(a.event_ids)),
        ):  # fmt: skip
            columns[name].append(value)
    return Batch(Dataset.ANOMALIES, columns, len(anomalies))


def labels_batch(anomalies: Sequence[AnomalyRecord]) -> Batch:
    """One row per event of each labelled anomaly (unlabelled anomalies give none)."""
    columns = _empty(Dataset.LABELS)
    rows = 0
    for a in anomalies:
        if a.label == Label.NONE:
            continue
        for event_id in a.event_ids:
            for name, value in (
                ("id", event_id), ("anomaly_id", a.id), ("agent", a.agent),
                ("anomaly_type", a.type), ("host", a.host), ("time", a.time_ns),
                ("label", str(a.label)),
            ):  # fmt: skip
                columns[name].append(value)
            rows += 1
    return Batch(Dataset.LABELS, columns, rows)
