"""Labelled training data: Loghub BGL, Loghub/LogAI HDFS, and EdgeBot event exports (JSONL).

Each loader returns a :class:`Dataset` of groups — one line each (mode ``line``) or all lines
of one session (mode ``session``) — with a label and a time per group, so training can split
chronologically. Files ending in ``.gz`` are read through gzip. A label file may name an id
more than once (an event inside several labelled anomalies): any positive label wins.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from anomaly_svc.models.features import LogLine, Mode

DataFormat = Literal["bgl", "hdfs", "export"]
Unlabelled = Literal["error", "normal"]
"""What an export event that no label names is: an error, or a normal event."""
HDFS_BLOCK = r"blk_-?\d+"
# BGL and HDFS log levels as syslog levels.
LEVELS = {
    "FATAL": 2, "FAILURE": 2, "SEVERE": 3, "ERROR": 3, "WARNING": 4, "WARN": 4,
    "INFO": 6, "DEBUG": 7,
}  # fmt: skip
SEVERITY_NAMES = {
    "SEVERITY_EMERGENCY": 0, "SEVERITY_ALERT": 1, "SEVERITY_CRITICAL": 2, "SEVERITY_ERROR": 3,
    "SEVERITY_WARNING": 4, "SEVERITY_NOTICE": 5, "SEVERITY_INFORMATIONAL": 6,
    "SEVERITY_DEBUG": 7,
}  # fmt: skip
POSITIVE_LABELS = {"1", "true", "anomaly", "abnormal", "true_positive"}
_HDFS_LINE = re.compile(r"^(\d{6}) (\d{6}) (\d+) (\w+) ([^:]+): (.*)$")


class DatasetError(ValueError):
    """Training data that cannot be read; the message names the file and line."""


@dataclass
class Dataset:
    mode: Mode
    groups: list[list[LogLine]]
    labels: list[int]
    times_ns: list[int]
    session_pattern: str = ""

    def chronological(self) -> Dataset:
        order = sorted(range(len(self.groups)), key=lambda i: (self.times_ns[i], i))
        return Dataset(
            self.mode,
            [self.groups[i] for i in order],
            [self.labels[i] for i in order],
            [self.times_ns[i] for i in order],
            self.session_pattern,
        )


def load(
    data: Path,
    data_format: DataFormat,
    labels: Path | None = None,
    unlabelled: Unlabelled = "error",
) -> Dataset:
    if data_format == "bgl":
        return load_bgl(data)
    if data_format == "hdfs":
        return load_hdfs(data, labels)
    return load_export(data, labels, unlabelled)


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return path.open(encoding="utf-8", errors="replace", newline="")


def _reason(exc: OSError | EOFError) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with _open_text(path) as handle:
            for number, raw in enumerate(handle, start=1):
                text = raw.rstrip("\r\n")
                if text.strip():
                    yield number, text
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: {_reason(exc)}") from None


def load_bgl(path: Path) -> Dataset:
    """Loghub BGL: ``LABEL EPOCH DATE NODE TIME NODE TYPE COMPONENT LEVEL message``."""
    groups: list[list[LogLine]] = []
    labels: list[int] = []
    times: list[int] = []
    for number, text in _lines(path):
        parts = text.split(" ", 9)
        if len(parts) < 9 or not parts[1].isdigit():
            raise DatasetError(f"{path}:{number}: not a BGL line")
        time_ns = int(parts[1]) * 1_000_000_000
        line = LogLine(
            message=parts[9] if len(parts) > 9 else "",
            component=parts[7],
            level=LEVELS.get(parts[8].upper(), 6),
            time_ns=time_ns,
        )
        groups.append([line])
        labels.append(0 if parts[0] == "-" else 1)
        times.append(time_ns)
    return Dataset("line", groups, labels, times)


def _hdfs_paths(data: Path, labels: Path | None) -> tuple[Path, Path]:
    if data.is_dir():
        logs = sorted(data.glob("*.log"))
        if not logs:
            raise DatasetError(f"{data}: no *.log file in this folder")
        data = logs[0]
        if labels is None:
            found = sorted(data.parent.glob("*block_labels*.csv"))
            labels = found[0] if found else None
    if labels is None:
        raise DatasetError("--labels is required for hdfs data (a BlockId,Label CSV)")
    return data, labels


def load_hdfs(data: Path, labels: Path | None) -> Dataset:
    """HDFS lines grouped into sessions by block id; labels per block (``BlockId,Label``)."""
    log_path, label_path = _hdfs_paths(data, labels)
    block_labels = _read_labels(label_path, key_column="BlockId")
    block = re.compile(HDFS_BLOCK)
    sessions: dict[str, list[LogLine]] = {}
    for number, text in _lines(log_path):
        match = _HDFS_LINE.match(text)
        if match is None:
            raise DatasetError(f"{log_path}:{number}: not an HDFS line")
        date, clock, _, level, component, message = match.groups()
        stamp = dt.datetime.strptime(date + clock, "%y%m%d%H%M%S").replace(tzinfo=dt.UTC)
        time_ns = int(stamp.timestamp()) * 1_000_000_000
        for block_id in dict.fromkeys(block.findall(message)):
            sessions.setdefault(block_id, []).append(
                LogLine(message, component, LEVELS.get(level.upper(), 6), time_ns, block_id)
            )
    known = [b for b in sessions if b in block_labels]
    if not known:
        raise DatasetError(f"{label_path}: no block id of {log_path} has a label")
    return Dataset(
        "session",
        [sessions[b] for b in known],
        [block_labels[b] for b in known],
        [min(line.time_ns for line in sessions[b]) for b in known],
        HDFS_BLOCK,
    )


def _read_labels(path: Path, key_column: str) -> dict[str, int]:
    try:
        with _open_text(path) as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or len(reader.fieldnames) < 2:
                raise DatasetError(f"{path}: expected a header with an id and a label column")
            key = key_column if key_column in reader.fieldnames else reader.fieldnames[0]
            label = "Label" if "Label" in reader.fieldnames else reader.fieldnames[-1]
            labels: dict[str, int] = {}
            for row in reader:
                value = int(row[label].strip().lower() in POSITIVE_LABELS)
                labels[row[key]] = max(value, labels.get(row[key], 0))
            return labels
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: {_reason(exc)}") from None


def load_export(data: Path, labels: Path | None, unlabelled: Unlabelled = "error") -> Dataset:
    """Events as JSON lines (protobuf JSON of ``Event``), one group per event.

    Labels come from a CSV (``id,...,label``, such as an export's labels part) or from each
    event's ``label`` attribute; with ``unlabelled="normal"`` an event neither names is
    normal (operators label what was flagged; the rest of the stream counts as normal).
    """
    by_id = _read_labels(labels, key_column="id") if labels is not None else {}
    groups: list[list[LogLine]] = []
    label_list: list[int] = []
    times: list[int] = []
    for number, text in _lines(data):
        try:
            event = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{data}:{number}: not JSON: {exc.msg}") from None
        event_id = str(event.get("id", ""))
        attributes = event.get("attributes") or {}
        raw_label = by_id.get(event_id)
        if raw_label is None and "label" in attributes:
            raw_label = int(str(attributes["label"]).lower() in POSITIVE_LABELS)
        if raw_label is None:
            if unlabelled == "error":
                raise DatasetError(
                    f"{data}:{number}: event {event_id!r} has no label "
                    "(--unlabelled normal counts such events as normal)"
                )
            raw_label = 0
        time_ns = _export_time(event.get("time"), data, number)
        groups.append(
            [
                LogLine(
                    message=str(event.get("message", "")),
                    component=str(event.get("service", "")),
                    level=SEVERITY_NAMES.get(str(event.get("severity", "")), 6),
                    time_ns=time_ns,
                )
            ]
        )
        label_list.append(raw_label)
        times.append(time_ns)
    return Dataset("line", groups, label_list, times)


def _export_time(value: object, path: Path, number: int) -> int:
    if not isinstance(value, str):
        raise DatasetError(f"{path}:{number}: missing time")
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DatasetError(f"{path}:{number}: time {value!r} is not ISO 8601") from None
    return int(stamp.timestamp() * 1_000_000_000)
