"""Exports between protobuf and the domain: the servicer's translation, kept beside it."""

from __future__ import annotations

from anomaly_svc.export.spec import Dataset, ExportRecord, ExportSpec, Format, InvalidSpec, State
from gen.edgebot.v1 import anomaly_pb2
from mesh.timeutil import ns_to_ts

_DATASETS = {
    anomaly_pb2.EXPORT_DATASET_EVENTS: Dataset.EVENTS,
    anomaly_pb2.EXPORT_DATASET_ANOMALIES: Dataset.ANOMALIES,
    anomaly_pb2.EXPORT_DATASET_LABELS: Dataset.LABELS,
}
_DATASETS_TO_PROTO = {value: key for key, value in _DATASETS.items()}
_FORMATS = {
    anomaly_pb2.EXPORT_FORMAT_UNSPECIFIED: Format.JSONL,
    anomaly_pb2.EXPORT_FORMAT_JSONL: Format.JSONL,
    anomaly_pb2.EXPORT_FORMAT_CSV: Format.CSV,
    anomaly_pb2.EXPORT_FORMAT_PARQUET: Format.PARQUET,
}
_FORMATS_TO_PROTO = {
    Format.JSONL: anomaly_pb2.EXPORT_FORMAT_JSONL,
    Format.CSV: anomaly_pb2.EXPORT_FORMAT_CSV,
    Format.PARQUET: anomaly_pb2.EXPORT_FORMAT_PARQUET,
}
_STATES_TO_PROTO = {
    State.PENDING: anomaly_pb2.EXPORT_STATE_PENDING,
    State.RUNNING: anomaly_pb2.EXPORT_STATE_RUNNING,
    State.SUCCEEDED: anomaly_pb2.EXPORT_STATE_SUCCEEDED,
    State.FAILED: anomaly_pb2.EXPORT_STATE_FAILED,
}


def spec_from_proto(spec: anomaly_pb2.ExportSpec) -> ExportSpec:
    """The domain spec (format unspecified = JSONL); raises InvalidSpec naming the field."""
    datasets = []
    for position, value in enumerate(spec.datasets):
        if value not in _DATASETS:
            raise InvalidSpec(f"spec.datasets[{position}]", "must be EVENTS, ANOMALIES or LABELS")
        datasets.append(_DATASETS[value])
    if spec.format not in _FORMATS:
        raise InvalidSpec("spec.format", "must be JSONL, CSV or PARQUET")
    for position, agent in enumerate(spec.agents):
        if not agent:
            raise InvalidSpec(f"spec.agents[{position}]", "must not be empty")
    flt = type(spec.filter)()
    flt.CopyFrom(spec.filter)
    return ExportSpec(
        datasets=tuple(datasets),
        event_filter=flt,
        format=_FORMATS[spec.format],
        gzip=spec.gzip,
        batch_size=spec.batch_size,
        max_part_bytes=spec.max_part_bytes,
        agents=tuple(spec.agents),
    )


def spec_to_proto(spec: ExportSpec) -> anomaly_pb2.ExportSpec:
    return anomaly_pb2.ExportSpec(
        datasets=[_DATASETS_TO_PROTO[d] for d in spec.datasets],
        filter=spec.event_filter,
        format=_FORMATS_TO_PROTO[spec.format],
        gzip=spec.gzip,
        batch_size=spec.batch_size,
        max_part_bytes=spec.max_part_bytes,
        agents=list(spec.agents),
    )


def export_to_proto(record: ExportRecord) -> anomaly_pb2.Export:
    report = record.report
    message = anomaly_pb2.Export(
        id=record.id,
        spec=spec_to_proto(record.spec),
        state=_STATES_TO_PROTO[record.state],
        progress=record.progress,
        rows_written=record.rows_written,
        bytes_written=record.bytes_written,
        parts=[
            anomaly_pb2.ExportPart(
                index=p.index,
                name=p.name,
                dataset=_DATASETS_TO_PROTO[p.dataset],
                rows=p.rows,
                size_bytes=p.size_bytes,
                sha256=p.sha256,
            )
            for p in record.parts
        ],
        report=anomaly_pb2.ValidationReport(
            row_counts=report.row_counts, missing_fields=report.missing_fields
        ),
        error=record.error,
    )
    for ns, target in (
        (report.min_time_ns, message.report.min_time),
        (report.max_time_ns, message.report.max_time),
        (record.create_ns, message.create_time),
        (record.complete_ns, message.complete_time),
        (record.expire_ns, message.expire_time),
    ):
        if ns:
            ns_to_ts(ns, target)
    return message
