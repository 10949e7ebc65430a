"""Protobuf messages as the JSON the console's pages read (names, not enum numbers)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from gen.edgebot.v1 import anomaly_pb2, event_pb2, storage_pb2
from mesh.timeutil import is_set, ns_to_iso, ts_to_ns

SEVERITIES = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")
STATUSES = {"open": 1, "acknowledged": 2, "resolved": 3}
LABELS = {"": 0, "true_positive": 1, "false_positive": 2}
DATASETS = {"events": 1, "anomalies": 2, "labels": 3}
FORMATS = {"jsonl": 1, "csv": 2, "parquet": 3}
EXPORT_STATES = {0: "unspecified", 1: "pending", 2: "running", 3: "succeeded", 4: "failed"}
MODEL_STATES = {0: "unspecified", 1: "loaded", 2: "refused", 3: "retired"}
ALERT_KINDS = {0: "unspecified", 1: "new", 2: "escalated"}
SINK_HEALTH = {0: "unknown", 1: "up", 2: "degraded", 3: "down"}


def _name(mapping: dict[str, int], value: int) -> str:
    for name, number in mapping.items():
        if number == value:
            return name
    return "unspecified"


def severity_name(value: int) -> str:
    """A Severity enum value (syslog level + 1) as its name; '' when unset."""
    return SEVERITIES[value - 1] if 1 <= value <= len(SEVERITIES) else ""


def severity_value(name: str) -> int:
    """The Severity enum value of a name such as 'warning'."""
    return SEVERITIES.index(name) + 1


def time_iso(ts: Timestamp) -> str | None:
    return ns_to_iso(ts_to_ns(ts)) if is_set(ts) else None


def parse_time(value: str, field: str) -> Timestamp:
    """An ISO 8601 time with a zone (``Z`` or an offset) as a Timestamp; ValueError names it."""
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{field}: not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{field}: needs a time zone (e.g. Z): {value!r}")
    ts = Timestamp()
    ts.FromDatetime(parsed.astimezone(dt.UTC))
    return ts


def anomaly_json(anomaly: anomaly_pb2.Anomaly) -> dict[str, Any]:
    return {
        "id": anomaly.id,
        "agent": anomaly.agent,
        "host": anomaly.host,
        "type": anomaly.type,
        "time": time_iso(anomaly.time),
        "severity": severity_name(anomaly.severity),
        "confidence": anomaly.confidence,
        "description": anomaly.description,
        "features": dict(sorted(anomaly.features.items(), key=lambda kv: -abs(kv[1]))),
        "status": _name(STATUSES, anomaly.status),
        "resolution": anomaly.resolution,
        "notes": anomaly.notes,
        "label": _name(LABELS, anomaly.label) or "none",
        "dedupe_key": anomaly.dedupe_key,
        "count": anomaly.count,
        "first_seen": time_iso(anomaly.first_seen_time),
        "last_seen": time_iso(anomaly.last_seen_time),
        "created": time_iso(anomaly.create_time),
        "updated": time_iso(anomaly.update_time),
        "model_version": anomaly.model_version,
        "event_ids": list(anomaly.event_ids),
    }


def alert_json(alert: anomaly_pb2.Alert) -> dict[str, Any]:
    return {
        "alert_id": alert.alert_id,
        "kind": ALERT_KINDS.get(alert.kind, "unspecified"),
        "time": time_iso(alert.time),
        "anomaly": anomaly_json(alert.anomaly),
    }


def event_json(event: event_pb2.Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": time_iso(event.time),
        "type": event.type,
        "source": event.source,
        "host": event.host,
        "service": event.service,
        "severity": severity_name(event.severity),
        "message": event.message,
        "attributes": dict(event.attributes),
        "tags": dict(event.tags),
    }


def model_json(model: anomaly_pb2.ModelInfo) -> dict[str, Any]:
    return {
        "agent": model.agent,
        "version": model.version,
        "state": MODEL_STATES.get(model.state, "unspecified"),
        "pinned": model.pinned,
        "loaded": time_iso(model.load_time),
        "data_start": time_iso(model.data_start_time),
        "data_end": time_iso(model.data_end_time),
        "metrics": dict(sorted(model.metrics.items())),
        "features": len(model.feature_names),
        "threshold": model.threshold,
        "error": model.error,
    }


def agent_json(agent: anomaly_pb2.AgentInfo) -> dict[str, Any]:
    return {
        "name": agent.name,
        "enabled": agent.enabled,
        "services": list(agent.services),
        "model_version": agent.model_version,
        "anomalies_found": agent.anomalies_found,
        "last_run": time_iso(agent.last_run_time),
        "last_error": agent.last_error,
    }


def export_json(export: anomaly_pb2.Export) -> dict[str, Any]:
    spec = export.spec
    return {
        "id": export.id,
        "datasets": [_name(DATASETS, d) for d in spec.datasets],
        "format": _name(FORMATS, spec.format),
        "gzip": spec.gzip,
        "start": time_iso(spec.filter.start_time),
        "end": time_iso(spec.filter.end_time),
        "state": EXPORT_STATES.get(export.state, "unspecified"),
        "progress": export.progress,
        "rows": export.rows_written,
        "bytes": export.bytes_written,
        "parts": [
            {
                "index": part.index,
                "name": part.name,
                "dataset": _name(DATASETS, part.dataset),
                "rows": part.rows,
                "bytes": part.size_bytes,
                "sha256": part.sha256,
            }
            for part in export.parts
        ],
        "error": export.error,
        "created": time_iso(export.create_time),
        "completed": time_iso(export.complete_time),
        "expires": time_iso(export.expire_time),
    }


def sink_json(sink: storage_pb2.SinkState) -> dict[str, Any]:
    return {
        "name": sink.name,
        "kind": sink.kind,
        "primary": sink.primary,
        "health": SINK_HEALTH.get(sink.health, "unknown"),
        "written": sink.written,
        "failed": sink.failed,
        "outbox_depth": sink.outbox_depth,
        "outbox_lag_s": sink.outbox_lag.ToTimedelta().total_seconds(),
        "last_error": sink.last_error,
    }
