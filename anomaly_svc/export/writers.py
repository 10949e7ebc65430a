"""Writing batches into part files: JSONL, CSV (each optionally gzip) and Parquet.

Every byte that reaches a file also goes through its SHA-256, so a part's checksum is known
the moment it is closed. With ``max_part_bytes`` set, a JSONL or CSV part never grows past
it — even gzipped: before a row goes in, the worst case of the compressed size (what is on
disk, plus a deflate bound of what the compressor still holds, plus the trailer) is
checked, and only when that bound says no is the compressor sync-flushed to learn the real
size — so a part is only over the limit when one row alone is bigger than it. A Parquet part
is closed as soon as it reaches the limit, so it can exceed it by one batch (a row group)
and its footer. Writers are used from one worker thread at a time.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from anomaly_svc.export.rows import COLUMNS, Batch, Column, Kind
from anomaly_svc.export.spec import Dataset, Format, Part

GZIP_WBITS = 31  # zlib: gzip header and trailer
GZIP_TRAILER_BYTES = 8
# A deflate stream's end (final empty block) plus the sync-flush marker.
DEFLATE_END_BYTES = 16


def rfc3339(ns: int) -> str:
    """Protobuf JSON's Timestamp text: 'Z', and 0, 3, 6 or 9 fraction digits."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def deflate_bound(size: int) -> int:
    """More than deflate can ever emit for ``size`` input bytes (zlib's deflateBound)."""
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 13


class PartFile:
    """One file being written: size on disk, rows, running SHA-256, optional gzip."""

    def __init__(self, path: Path, compress: bool) -> None:
        self.path = path
        self.handle: BinaryIO = path.open("wb")
        self.sha = hashlib.sha256()
        self.size = 0
        self.rows = 0
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, GZIP_WBITS) if compress else None
        self._pending = 0

    def _emit(self, data: bytes) -> None:
        if data:
            self.handle.write(data)
            self.sha.update(data)
            self.size += len(data)

    def write(self, data: bytes) -> None:
        if self._compressor is None:
            self._emit(data)
            return
        self._emit(self._compressor.compress(data))
        self._pending += len(data)

    def fits(self, extra: int, limit: int) -> bool:
        """Whether ``extra`` more bytes of content keep the closed file within ``limit``."""
        if self._compressor is None:
            return self.size + extra <= limit
        if self._bound(extra) <= limit:
            return True
        self._emit(self._compressor.flush(zlib.Z_SYNC_FLUSH))
        self._pending = 0
        return self._bound(extra) <= limit

    def _bound(self, extra: int) -> int:
        return (
            self.size + deflate_bound(self._pending + extra) + DEFLATE_END_BYTES
            + GZIP_TRAILER_BYTES
        )  # fmt: skip

    def abort(self) -> None:
        """Close the file without finishing it (the job failed or was cancelled)."""
        self.handle.close()

    def close(self) -> str:
        if self._compressor is not None:
            self._emit(self._compressor.flush(zlib.Z_FINISH))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        return self.sha.hexdigest()


class PartWriter(ABC):
    """Writes one dataset into ``<dir>/<dataset>-NNNN.<ext>`` parts."""

    extension: str

    def __init__(
        self, directory: Path, dataset: Dataset, first_index: int, max_part_bytes: int
    ) -> None:
        self.directory = directory
        self.dataset = dataset
        self.columns = COLUMNS[dataset]
        self.next_index = first_index
        self.max_part_bytes = max_part_bytes
        self.closed: list[Part] = []
        self.bytes_closed = 0

    @abstractmethod
    def write(self, batch: Batch) -> None:
        """Append the batch's rows, starting new parts as the size limit requires."""

    @abstractmethod
    def close(self) -> None:
        """Close the open part; every dataset gets at least one (possibly empty) part."""

    @abstractmethod
    def abort(self) -> None:
        """Close any open file without recording it as a part."""

    @property
    @abstractmethod
    def bytes_written(self) -> int:
        """Bytes on disk so far, closed parts and the open one."""

    def take_closed(self) -> list[Part]:
        parts, self.closed = self.closed, []
        return parts

    def _record(self, index: int, part: PartFile, rows: int, sha256: str) -> None:
        self.closed.append(Part(index, part.path.name, self.dataset, rows, part.size, sha256))
        self.bytes_closed += part.size


class TextWriter(PartWriter):
    """JSONL and CSV: rows are encoded one by one, so parts split between rows."""

    def __init__(
        self,
        directory: Path,
        dataset: Dataset,
        first_index: int,
        max_part_bytes: int,
        output_format: Format,
        compress: bool,
    ) -> None:
        super().__init__(directory, dataset, first_index, max_part_bytes)
        self.format = output_format
        self.compress = compress
        self.extension = ("jsonl" if output_format == Format.JSONL else "csv") + (
            ".gz" if compress else ""
        )
        self._open: tuple[int, PartFile] | None = None
        self._parts_opened = 0
        self._header = self._csv_line([c.name for c in self.columns])

    def _start(self) -> PartFile:
        self._parts_opened += 1
        index = self.next_index
        self.next_index += 1
        path = self.directory / f"{self.dataset}-{self._parts_opened:04d}.{self.extension}"
        part = PartFile(path, self.compress)
        if self.format == Format.CSV:
            part.write(self._header)
        self._open = (index, part)
        return part

    def write(self, batch: Batch) -> None:
        for line in self._lines(batch):
            part = self._open[1] if self._open else self._start()
            if self.max_part_bytes and part.rows and not part.fits(len(line), self.max_part_bytes):
                self._finish()
                part = self._start()
            part.write(line)
            part.rows += 1

    def _finish(self) -> None:
        assert self._open is not None
        index, part = self._open
        self._record(index, part, part.rows, part.close())
        self._open = None

    def close(self) -> None:
        if self._open is None and self._parts_opened == 0:
            self._start()
        if self._open is not None:
            self._finish()

    def abort(self) -> None:
        if self._open is not None:
            self._open[1].abort()
            self._open = None

    @property
    def bytes_written(self) -> int:
        return self.bytes_closed + (self._open[1].size if self._open else 0)

    def _lines(self, batch: Batch) -> Iterator[bytes]:
        names = [c.name for c in self.columns]
        values = [batch.columns[n] for n in names]
        for row in range(batch.rows):
            cells = [column[row] for column in values]
            if self.format == Format.JSONL:
                yield _json_line(self.columns, cells)
            else:
                yield self._csv_line(
                    [_csv_cell(c.kind, v) for c, v in zip(self.columns, cells, strict=True)]
                )

    @staticmethod
    def _csv_line(cells: list[str]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(cells)
        return buffer.getvalue().encode()


def _json_line(columns: tuple[Column, ...], cells: list[Any]) -> bytes:
    record: dict[str, Any] = {}
    for column, value in zip(columns, cells, strict=True):
        if column.kind == Kind.TIME:
            if value:
                record[column.name] = rfc3339(value)
        elif column.kind == Kind.BYTES:
            if value is not None:
                record[column.name] = base64.b64encode(value).decode()
        else:
            record[column.name] = value
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _csv_cell(kind: Kind, value: Any) -> str:
    if kind == Kind.TIME:
        return rfc3339(value) if value else ""
    if kind == Kind.BYTES:
        return base64.b64encode(value).decode() if value is not None else ""
    if kind in (Kind.STRING_MAP, Kind.FLOAT_MAP, Kind.STRING_LIST):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    if kind == Kind.BOOL:
        return "true" if value else "false"
    return str(value)


_ARROW_TYPES = {
    Kind.STRING: pa.string(),
    Kind.TIME: pa.timestamp("ns", tz="UTC"),
    Kind.INT: pa.int64(),
    Kind.FLOAT: pa.float64(),
    Kind.BOOL: pa.bool_(),
    Kind.BYTES: pa.binary(),
    Kind.STRING_MAP: pa.map_(pa.string(), pa.string()),
    Kind.FLOAT_MAP: pa.map_(pa.string(), pa.float64()),
    Kind.STRING_LIST: pa.list_(pa.string()),
}


def arrow_schema(dataset: Dataset) -> pa.Schema:
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.kind]) for c in COLUMNS[dataset]])


class _HashingFile(io.RawIOBase):
    """A write-only file that feeds its bytes through a PartFile (size and SHA-256)."""

    def __init__(self, part: PartFile) -> None:
        self.part = part

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.part.write(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.part.size


class ParquetWriter(PartWriter):
    """One row group per batch; ``gzip`` picks Parquet's own GZIP codec (default Snappy)."""

    extension = "parquet"

    def __init__(
        self,
        directory: Path,
        dataset: Dataset,
        first_index: int,
        max_part_bytes: int,
        compress: bool,
    ) -> None:
        super().__init__(directory, dataset, first_index, max_part_bytes)
        self.schema = arrow_schema(dataset)
        self.codec = "gzip" if compress else "snappy"
        self._open: tuple[int, PartFile, pq.ParquetWriter] | None = None
        self._parts_opened = 0

    def _start(self) -> tuple[int, PartFile, pq.ParquetWriter]:
        self._parts_opened += 1
        index = self.next_index
        self.next_index += 1
        path = self.directory / f"{self.dataset}-{self._parts_opened:04d}.{self.extension}"
        part = PartFile(path, compress=False)
        writer = pq.ParquetWriter(_HashingFile(part), self.schema, compression=self.codec)
        self._open = (index, part, writer)
        return self._open

    def write(self, batch: Batch) -> None:
        if batch.rows == 0:
            return
        _, part, writer = self._open or self._start()
        writer.write_table(self._table(batch))
        part.rows += batch.rows
        if self.max_part_bytes and part.size >= self.max_part_bytes:
            self._finish()

    def _table(self, batch: Batch) -> pa.Table:
        arrays = []
        for column in self.columns:
            values = batch.columns[column.name]
            if column.kind == Kind.TIME:
                values = [v if v else None for v in values]
            elif column.kind in (Kind.STRING_MAP, Kind.FLOAT_MAP):
                values = [list(v.items()) for v in values]
            arrays.append(pa.array(values, type=_ARROW_TYPES[column.kind]))
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _finish(self) -> None:
        assert self._open is not None
        index, part, writer = self._open
        writer.close()
        self._record(index, part, part.rows, part.close())
        self._open = None

    def close(self) -> None:
        if self._open is None and self._parts_opened == 0:
            self._start()
        if self._open is not None:
            self._finish()

    def abort(self) -> None:
        if self._open is not None:
            self._open[1].abort()
            self._open = None

    @property
    def bytes_written(self) -> int:
        return self.bytes_closed + (self._open[1].size if self._open else 0)


def make_writer(
    directory: Path,
    dataset: Dataset,
    output_format: Format,
    compress: bool,
    first_index: int,
    max_part_bytes: int,
) -> PartWriter:
    # Labels are always CSV: the file `edgebot train --labels` reads.
    if dataset == Dataset.LABELS:
        output_format = Format.CSV
    if output_format == Format.PARQUET:
        return ParquetWriter(directory, dataset, first_index, max_part_bytes, compress)
    return TextWriter(directory, dataset, first_index, max_part_bytes, output_format, compress)
