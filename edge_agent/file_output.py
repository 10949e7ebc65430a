"""File output: spooled batches as rotating, gzip-compressed JSON Lines of events.

For sites with no link home, or an archive beside the stream. Each line is one event in
protobuf's JSON mapping, with the batch it belongs to::

    {"agent_id": "site-a", "batch_id": "...", "seq": 7, "batch_size": 500, "index": 0,
     "event": {"id": "...", "message": "...", ...}}

A batch is compressed with a sync flush and fsynced before ``write`` returns, so the spool
may let it go then. A crash can cut a file only inside the batch being written; on the
next start that file is rewritten up to its last whole line and closed properly. Replay
sends a batch only when it has every one of its ``batch_size`` lines, and keeps the
original ``batch_id``, so storage's ledger stores each batch once however often it is
written or replayed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import itertools
import json
import logging
import os
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format

from edge_agent import metrics
from edge_agent.config import FileOutputSection
from edge_agent.spool import SpooledBatch
from gen.edgebot.v1 import event_pb2

log = logging.getLogger(__name__)

OPEN_SUFFIX = ".part"
FILE_SUFFIX = ".jsonl.gz"
READ_CHUNK_BYTES = 1 << 16


class FileOutputError(Exception):
    """A batch could not be written durably; it stays in the spool."""


class BatchFileWriter:
    """Appends whole batches to the current file and rotates by size and age."""

    def __init__(self, settings: FileOutputSection, agent_id: str) -> None:
        self.settings = settings
        self.agent_id = agent_id
        self.directory = settings.directory
        self._raw: IO[bytes] | None = None
        self._gzip: gzip.GzipFile | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._names = itertools.count()

    def open(self) -> None:
        """Create the directory and close properly any file a crash left open."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for part in sorted(self.directory.glob(f"*{FILE_SUFFIX}{OPEN_SUFFIX}")):
            kept = recover_open_file(part)
            log.warning("file output: recovered %s (%d whole lines) after a crash", part, kept)

    def write(self, batch: SpooledBatch) -> None:
        """Write the batch whole and fsync it; raise FileOutputError if that fails."""
        try:
            self._rotate_if_due()
            gz, raw = self._current()
            gz.write(encode_batch(batch, self.agent_id))
            gz.flush(zlib.Z_SYNC_FLUSH)
            raw.flush()
            os.fsync(raw.fileno())
        except OSError as error:
            metrics.FILE_OUTPUT_ERRORS.inc()
            self._abandon()
            raise FileOutputError(f"file output {self.directory}: {error}") from error
        metrics.FILE_OUTPUT_BATCHES.inc()
        metrics.FILE_OUTPUT_EVENTS.inc(len(batch.events))

    def close(self) -> None:
        try:
            self._finish()
        except OSError as error:
            log.error("file output: could not close %s: %s", self._path, error)

    def _current(self) -> tuple[gzip.GzipFile, IO[bytes]]:
        if self._gzip is None or self._raw is None:
            self._start_file()
        assert self._gzip is not None
        assert self._raw is not None
        return self._gzip, self._raw

    def _start_file(self) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{self.agent_id}-{stamp}-{next(self._names):04d}{FILE_SUFFIX}{OPEN_SUFFIX}"
        self._path = self.directory / name
        self._raw = open(self._path, "xb")  # noqa: SIM115 - closed by _finish
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)
        self._opened_at = time.monotonic()

    def _rotate_if_due(self) -> None:
        if self._raw is None:
            return
        too_big = self._raw.tell() >= self.settings.max_file_bytes
        too_old = time.monotonic() - self._opened_at >= self.settings.rotate_interval_s
        if too_big or too_old:
            self._finish()

    def _finish(self) -> None:
        """Close the gzip stream, fsync, and drop the open-file suffix."""
        if self._gzip is None or self._raw is None or self._path is None:
            return
        self._gzip.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        final = self._path.with_name(self._path.name.removesuffix(OPEN_SUFFIX))
        self._path.rename(final)
        _fsync_directory(self.directory)
        metrics.FILE_OUTPUT_FILES.inc()
        log.info("file output: closed %s", final)
        self._gzip = self._raw = self._path = None

    def _abandon(self) -> None:
        """After a failed write the file may be cut mid-batch: leave it for recovery."""
        for stream in (self._gzip, self._raw):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._gzip = self._raw = self._path = None


def encode_batch(batch: SpooledBatch, agent_id: str) -> bytes:
    lines = []
    for index, data in enumerate(batch.events):
        event = json_format.MessageToDict(
            event_pb2.Event.FromString(data), preserving_proto_field_name=True
        )
        record = {
            "agent_id": agent_id,
            "batch_id": batch.batch_id,
            "seq": batch.seq,
            "batch_size": len(batch.events),
            "index": index,
            "event": event,
        }
        lines.append(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def recover_open_file(part: Path) -> int:
    """Rewrite a file cut short by a crash as a closed gzip file of its whole lines."""
    final = part.with_name(part.name.removesuffix(OPEN_SUFFIX))
    staging = part.with_name(part.name + ".recovering")
    kept = 0
    with open(staging, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        for line in _whole_lines(_decompressed(part)):
            out.write(line)
            kept += 1
    with open(staging, "rb") as done:
        os.fsync(done.fileno())
    staging.rename(final)
    part.unlink()
    _fsync_directory(part.parent)
    return kept


@dataclass
class ReplayBatch:
    agent_id: str
    batch_id: str
    seq: int
    events: list[event_pb2.Event]


@dataclass
class ReadReport:
    """What reading output files found; incomplete batches are not replayed."""

    batches: list[ReplayBatch] = field(default_factory=list)
    lines: int = 0
    bad_lines: list[str] = field(default_factory=list)
    incomplete_batches: list[str] = field(default_factory=list)


def read_batches(paths: Iterable[Path]) -> ReadReport:
    """The whole batches in output files (open or closed, even cut short), in file order."""
    report = ReadReport()
    partial: dict[str, dict[int, event_pb2.Event]] = {}
    headers: dict[str, tuple[str, int, int]] = {}
    done: set[str] = set()
    for path in paths:
        for number, line in enumerate(_whole_lines(_decompressed(path)), start=1):
            report.lines += 1
            try:
                record = _parse_line(line)
            except ValueError as error:
                report.bad_lines.append(f"{path}:{number}: {error}")
                continue
            batch_id = record["batch_id"]
            if batch_id in done:
                continue
            headers.setdefault(batch_id, (record["agent_id"], record["seq"], record["size"]))
            events = partial.setdefault(batch_id, {})
            events[record["index"]] = record["event"]
            agent_id, seq, size = headers[batch_id]
            if len(events) == size:
                ordered = [events[i] for i in range(size)]
                report.batches.append(ReplayBatch(agent_id, batch_id, seq, ordered))
                done.add(batch_id)
                del partial[batch_id]
    report.incomplete_batches = sorted(partial)
    return report


def _parse_line(line: bytes) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    for key, kind in (("agent_id", str), ("batch_id", str), ("seq", int), ("index", int)):
        if not isinstance(record.get(key), kind):
            raise ValueError(f"{key}: missing or not a {kind.__name__}")
    size = record.get("batch_size")
    if not isinstance(size, int) or not 0 <= record["index"] < size:
        raise ValueError("batch_size: missing, or index outside the batch")
    fields = record.get("event")
    if not isinstance(fields, dict):
        raise ValueError("event: missing or not a JSON object")
    try:
        event = json_format.ParseDict(fields, event_pb2.Event())
    except (json_format.ParseError, TypeError) as error:
        raise ValueError(f"event: {error}") from None
    return {**record, "size": size, "event": event}


def _decompressed(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of a gzip file, tolerating a cut-off end (a crash mid-write)."""
    inflater = zlib.decompressobj(wbits=31)
    with open(path, "rb") as raw:
        while chunk := raw.read(READ_CHUNK_BYTES):
            while chunk:
                yield inflater.decompress(chunk)
                if not inflater.eof:
                    break
                # A new gzip member follows (files can be concatenated).
                chunk = inflater.unused_data
                inflater = zlib.decompressobj(wbits=31)


def _whole_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Complete lines only: a trailing fragment without its newline is dropped."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line:
                yield line + b"\n"


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
