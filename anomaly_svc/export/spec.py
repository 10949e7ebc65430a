"""What an export is: its spec, its state, its parts and its validation report."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gen.edgebot.v1 import storage_pb2


class Dataset(StrEnum):
    EVENTS = "events"
    ANOMALIES = "anomalies"
    LABELS = "labels"


class Format(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


FINISHED = (State.SUCCEEDED, State.FAILED)


@dataclass(frozen=True)
class ExportSpec:
    datasets: tuple[Dataset, ...]
    event_filter: storage_pb2.EventFilter
    """Events: the whole filter. Anomalies and labels: its time range, hosts, min severity."""
    format: Format = Format.JSONL
    gzip: bool = False
    batch_size: int = 1000
    max_part_bytes: int = 0
    """0: one part per dataset."""
    agents: tuple[str, ...] = ()


@dataclass(frozen=True)
class Part:
    index: int
    name: str
    dataset: Dataset
    rows: int
    size_bytes: int
    sha256: str


@dataclass
class Report:
    """Row counts per dataset, rows missing a field (``dataset.field``), time range."""

    row_counts: dict[str, int] = field(default_factory=dict)
    missing_fields: dict[str, int] = field(default_factory=dict)
    min_time_ns: int = 0
    max_time_ns: int = 0

    def add_rows(self, dataset: Dataset, rows: int) -> None:
        self.row_counts[dataset] = self.row_counts.get(dataset, 0) + rows

    def add_missing(self, dataset: Dataset, name: str, rows: int) -> None:
        if rows:
            key = f"{dataset}.{name}"
            self.missing_fields[key] = self.missing_fields.get(key, 0) + rows

    def add_times(self, times_ns: list[int]) -> None:
        present = [t for t in times_ns if t]
        if not present:
            return
        low, high = min(present), max(present)
        self.min_time_ns = low if not self.min_time_ns else min(self.min_time_ns, low)
        self.max_time_ns = max(self.max_time_ns, high)


@dataclass
class ExportRecord:
    id: str
    spec: ExportSpec
    state: State
    create_ns: int
    progress: float = 0.0
    rows_written: int = 0
    bytes_written: int = 0
    parts: list[Part] = field(default_factory=list)
    report: Report = field(default_factory=Report)
    error: str = ""
    complete_ns: int = 0
    expire_ns: int = 0


class ExportError(Exception):
    """Base of the errors the servicer maps to status codes."""


class ExportNotFound(ExportError):
    pass


class InvalidSpec(ExportError):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


class NotReady(ExportError):
    """The export has not succeeded (yet), so there is nothing to download."""


class QueueFull(ExportError):
    pass


class PartCorrupt(ExportError):
    """A part's bytes on disk no longer match its recorded checksum."""
