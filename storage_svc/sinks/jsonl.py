"""The JSONL file sink: one JSON document per line, rotating files, for archives.

Events go to ``<prefix>.jsonl``; when it reaches ``max_bytes``, or ``rotate_every_s`` after its
first line, it is renamed ``<prefix>-<UTC time>-<n>.jsonl`` and (with ``gzip``) compressed to
``.jsonl.gz``. A batch is written with one ``write`` and fsynced; a failed write is cut off
again, and a partial last line left by a crash is removed at open, so every line is a
whole document. Delivery is at-least-once: after a crash between a write and the outbox's
ack, the batch's lines appear twice (each carries the event ``id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import os
import re
import shutil
import time
from pathlib import Path
from typing import BinaryIO

from mesh.timeutil import NS_PER_S, now_ns
from storage_svc.sinks.base import (
    BatchWrite,
    SecondarySink,
    SinkOpenError,
    SinkWriteError,
    WriteOutcome,
)
from storage_svc.sinks.event_json import event_json
from storage_svc.sinks_config import FileSinkSection

COPY_CHUNK = 1024 * 1024


class JsonlFileSink(SecondarySink):
    kind = "file"

    def __init__(self, settings: FileSinkSection) -> None:
        super().__init__(settings.name, settings.down_after_failures)
        self.settings = settings
        self.directory = Path(settings.directory).absolute()
        self.active_path = self.directory / f"{settings.prefix}.jsonl"
        self._rotated = re.compile(
            rf"^{re.escape(settings.prefix)}-\d{{8}}T\d{{6}}Z-\d{{4}}\.jsonl(\.gz)?$"
        )
        self._file: BinaryIO | None = None
        self._size = 0
        self._first_line_ns: int | None = None

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._open)
        except OSError as exc:
            raise SinkOpenError(
                f"file sink {self.name}: cannot open {self.active_path}: {exc}"
            ) from exc

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cut_partial_line()
        self._file = self.active_path.open("ab")
        self._size = self._file.tell()
        self._first_line_ns = now_ns() if self._size else None
        self._finish_rotations()

    def _cut_partial_line(self) -> None:
        """Drop bytes after the last newline (a write a crash interrupted)."""
        if not self.active_path.exists():
            return
        with self.active_path.open("r+b") as file:
            size = file.seek(0, os.SEEK_END)
            end = size
            while end > 0:
                step = min(COPY_CHUNK, end)
                file.seek(end - step)
                chunk = file.read(step)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    end = end - step + newline + 1
                    break
                end -= step
            if end != size:
                file.truncate(end)

    async def close(self) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    async def deliver(self, batch: BatchWrite) -> WriteOutcome:
        started = time.perf_counter()
        data = "".join([event_json(event) + "\n" for event in batch.events]).encode()
        try:
            await asyncio.to_thread(self._append, data)
        except OSError as exc:
            raise SinkWriteError(
                f"file sink {self.name}: cannot write {self.active_path}: {exc}"
            ) from exc
        return WriteOutcome(False, len(batch.events), 0, time.perf_counter() - started)

    def _append(self, data: bytes) -> None:
        if self._file is None:
            raise OSError("the sink is not open")
        if self._rotation_due(len(data)):
            self._rotate()
        file = self._file
        try:
            file.write(data)
            file.flush()
            if self.settings.fsync:
                os.fsync(file.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                file.truncate(self._size)
            raise
        self._size += len(data)
        if self._first_line_ns is None:
            self._first_line_ns = now_ns()

    def _rotation_due(self, incoming: int) -> bool:
        if not self._size:
            return False
        if self._size + incoming > self.settings.max_bytes:
            return True
        every_s = self.settings.rotate_every_s
        started = self._first_line_ns
        return (
            every_s is not None and started is not None and now_ns() - started >= every_s * NS_PER_S
        )

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        target = self._rotated_name()
        self.active_path.rename(target)
        self._sync_directory()
        self._file = self.active_path.open("ab")
        self._size = 0
        self._first_line_ns = None
        self._finish_rotations()

    def _rotated_name(self) -> Path:
        """A name after every rotated file's (numbers continue past deleted files, so
        names keep sorting by age)."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        same_second = [p.name for p in self.rotated_files() if f"-{stamp}-" in p.name]
        numbers = [int(name.split("-")[-1].split(".")[0]) for name in same_second]
        number = max(numbers, default=-1) + 1
        if number > 9999:
            raise OSError(f"more than 10,000 rotations within {stamp} in {self.directory}")
        return self.directory / f"{self.settings.prefix}-{stamp}-{number:04d}.jsonl"

    def rotated_files(self) -> list[Path]:
        """Rotated files, oldest first (their names sort by time)."""
        return sorted(p for p in self.directory.iterdir() if self._rotated.match(p.name))

    def _finish_rotations(self) -> None:
        """Compress rotated files not compressed yet (also after a crash), then apply
        keep_files."""
        for leftover in self.directory.glob(f"{self.settings.prefix}-*.jsonl.gz.tmp"):
            leftover.unlink()
        if self.settings.gzip:
            for path in self.rotated_files():
                if path.suffix == ".jsonl":
                    self._compress(path)
        keep = self.settings.keep_files
        if keep is not None:
            for path in self.rotated_files()[:-keep]:
                path.unlink()

    def _compress(self, path: Path) -> None:
        final = path.with_suffix(".jsonl.gz")
        if not final.exists():
            partial = path.with_suffix(".jsonl.gz.tmp")
            with path.open("rb") as source, gzip.open(partial, "wb") as target:
                shutil.copyfileobj(source, target, COPY_CHUNK)
            if self.settings.fsync:
                with partial.open("rb") as written:
                    os.fsync(written.fileno())
            partial.rename(final)
            self._sync_directory()
        path.unlink()

    def _sync_directory(self) -> None:
        if not self.settings.fsync:
            return
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
