"""Exports of events, anomalies and operator labels for training elsewhere."""

from anomaly_svc.export.manager import Chunk, ExportManager
from anomaly_svc.export.spec import (
    Dataset,
    ExportError,
    ExportNotFound,
    ExportRecord,
    ExportSpec,
    Format,
    InvalidSpec,
    NotReady,
    Part,
    PartCorrupt,
    QueueFull,
    Report,
    State,
)

__all__ = [
    "Chunk",
    "Dataset",
    "ExportError",
    "ExportManager",
    "ExportNotFound",
    "ExportRecord",
    "ExportSpec",
    "Format",
    "InvalidSpec",
    "NotReady",
    "Part",
    "PartCorrupt",
    "QueueFull",
    "Report",
    "State",
]
