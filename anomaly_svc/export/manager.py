"""Export jobs: queued, run in the background, kept in the registry, downloaded, expired.

CreateExport stores a PENDING record and returns; ``max_concurrent`` workers take jobs in
creation order. A job that ends (either way) expires ``retention_s`` later and the cleanup
loop deletes its files and record. After a restart, jobs still PENDING are queued again and
jobs that were RUNNING are marked FAILED ("interrupted by a restart") with their partial
files removed: re-reading a half-written part to resume would trust a file whose last
batch may be torn, and an export is cheap to ask for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from anomaly_svc import metrics
from anomaly_svc.config import ExportsSection
from anomaly_svc.export.job import ExportJob, JobFailed, JobLimits, in_thread
from anomaly_svc.export.registry import ExportRegistry
from anomaly_svc.export.spec import (
    FINISHED,
    ExportNotFound,
    ExportRecord,
    ExportSpec,
    InvalidSpec,
    NotReady,
    PartCorrupt,
    QueueFull,
    Report,
    State,
)
from anomaly_svc.store import AnomalyStore
from gen.edgebot.v1 import storage_pb2_grpc
from mesh.ids import uuid7
from mesh.timeutil import NS_PER_S, is_set, now_ns, ts_to_ns

log = logging.getLogger(__name__)
REGISTRY_FILE = "exports.db"
RESTART_ERROR = "interrupted by a restart of the anomaly service; create the export again"


@dataclass(frozen=True)
class Chunk:
    data: bytes
    offset: int
    sha256: str
    """Set on the last chunk only."""
    last: bool


class ExportManager:
    def __init__(
        self,
        settings: ExportsSection,
        directory: Path,
        storage: storage_pb2_grpc.StorageServiceAsyncStub,
        store: AnomalyStore,
        storage_timeout_s: float,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.storage = storage
        self.store = store
        self.limits = JobLimits(settings.max_export_bytes, storage_timeout_s)
        self.registry = ExportRegistry(directory / REGISTRY_FILE)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        await self.registry.open()
        await self._recover()
        await self.cleanup()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"export-worker-{n}")
            for n in range(self.settings.max_concurrent)
        ]
        self._tasks.append(asyncio.create_task(self._cleanup_loop(), name="export-cleanup"))

    async def close(self) -> None:
        for task in [*self._tasks, *self._running.values()]:
            task.cancel()
        for task in [*self._tasks, *self._running.values()]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.registry.close()

    def validate(self, spec: ExportSpec) -> ExportSpec:
        """The spec with defaults applied; raises InvalidSpec naming the field."""
        settings = self.settings
        if not spec.datasets:
            raise InvalidSpec("spec.datasets", "name at least one of EVENTS, ANOMALIES, LABELS")
        if len(set(spec.datasets)) != len(spec.datasets):
            raise InvalidSpec("spec.datasets", "lists a dataset twice")
        batch_size = spec.batch_size or settings.default_batch_size
        if batch_size > settings.max_batch_size:
            raise InvalidSpec(
                "spec.batch_size", f"at most exports.max_batch_size ({settings.max_batch_size})"
            )
        if spec.max_part_bytes and spec.max_part_bytes < settings.min_part_bytes:
            raise InvalidSpec(
                "spec.max_part_bytes",
                f"0 (no limit) or at least exports.min_part_bytes ({settings.min_part_bytes})",
            )
        start, end = spec.event_filter.start_time, spec.event_filter.end_time
        if is_set(start) and is_set(end) and ts_to_ns(end) <= ts_to_ns(start):
            raise InvalidSpec("spec.filter.end_time", "must be after start_time")
        return ExportSpec(
            spec.datasets, spec.event_filter, spec.format, spec.gzip, batch_size,
            spec.max_part_bytes, spec.agents,
        )  # fmt: skip

    async def create(self, spec: ExportSpec) -> ExportRecord:
        spec = self.validate(spec)
        if len(self._pending) >= self.settings.max_pending:
            raise QueueFull(
                f"{len(self._pending)} exports are already queued "
                f"(exports.max_pending {self.settings.max_pending}); try again later"
            )
        record = ExportRecord(uuid7(), spec, State.PENDING, now_ns())
        await self.registry.add(record)
        self._enqueue(record.id)
        log.info(
            "export created",
            extra={"export_id": record.id, "datasets": [str(d) for d in spec.datasets]},
        )
        return record

    async def get(self, export_id: str) -> ExportRecord:
        record = await self.registry.get(export_id)
        if record is None:
            raise ExportNotFound(f"no export with id {export_id!r}")
        return record

    async def page(self, page_size: int, page_token: str) -> tuple[list[ExportRecord], str]:
        records = await self.registry.page(page_token, page_size + 1)
        more = len(records) > page_size
        records = records[:page_size]
        return records, records[-1].id if more and records else ""

    async def delete(self, export_id: str) -> None:
        await self.get(export_id)
        self._pending.discard(export_id)
        task = self._running.get(export_id)
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self._remove(export_id)
        log.info("export deleted", extra={"export_id": export_id})

    async def cleanup(self) -> list[str]:
        """Delete every export whose retention ended; returns their ids."""
        expired = await self.registry.expired(now_ns())
        for export_id in expired:
            await self._remove(export_id)
        if expired:
            log.info("expired exports deleted", extra={"export_ids": expired})
        return expired

    async def download(self, export_id: str, part_index: int) -> AsyncIterator[Chunk]:
        """The part's bytes in chunks, re-hashed on the way: a part whose bytes no longer
        match its checksum ends with PartCorrupt instead of a last chunk."""
        record = await self.get(export_id)
        if record.state != State.SUCCEEDED:
            raise NotReady(f"export {export_id} is {record.state}; only a succeeded one downloads")
        part = next((p for p in record.parts if p.index == part_index), None)
        if part is None:
            raise InvalidSpec(
                "part_index", f"export {export_id} has parts 0..{len(record.parts) - 1}"
            )
        path = self._directory(export_id) / part.name
        try:
            handle: BinaryIO = await in_thread(lambda: path.open("rb"))
        except OSError as exc:
            raise PartCorrupt(f"part {part.name} cannot be read: {exc.strerror}") from None
        digest = hashlib.sha256()
        offset = 0
        try:
            while True:
                data = await in_thread(lambda: handle.read(self.settings.download_chunk_bytes))
                digest.update(data)
                last = offset + len(data) >= part.size_bytes or not data
                if last:
                    if digest.hexdigest() != part.sha256 or offset + len(data) != part.size_bytes:
                        raise PartCorrupt(f"part {part.name} no longer matches its checksum")
                    yield Chunk(data, offset, part.sha256, True)
                    return
                yield Chunk(data, offset, "", False)
                offset += len(data)
        finally:
            handle.close()

    def _directory(self, export_id: str) -> Path:
        return self.directory / export_id

    def _enqueue(self, export_id: str) -> None:
        self._pending.add(export_id)
        self._queue.put_nowait(export_id)

    async def _remove(self, export_id: str) -> None:
        await self._remove_files(export_id)
        await self.registry.delete(export_id)

    async def _remove_files(self, export_id: str) -> None:
        directory = self._directory(export_id)
        await in_thread(functools.partial(shutil.rmtree, directory, ignore_errors=True))

    async def _recover(self) -> None:
        for record in await self.registry.in_states((State.PENDING, State.RUNNING)):
            if record.state == State.PENDING:
                self._enqueue(record.id)
                continue
            await self._remove_files(record.id)
            await self._finish(record.id, State.FAILED, record.report, RESTART_ERROR)
            log.warning("export interrupted by a restart", extra={"export_id": record.id})

    async def _worker(self) -> None:
        while True:
            export_id = await self._queue.get()
            if export_id not in self._pending:
                continue  # deleted while queued
            self._pending.discard(export_id)
            record = await self.registry.get(export_id)
            if record is None or record.state in FINISHED:
                continue
            task = asyncio.create_task(self._run(record), name=f"export-{export_id}")
            self._running[export_id] = task
            try:
                await asyncio.wait([task])
            finally:
                self._running.pop(export_id, None)

    async def _run(self, record: ExportRecord) -> None:
        await self.registry.set_state(record.id, State.RUNNING)
        job = ExportJob(
            record, self._directory(record.id), self.storage, self.store, self.registry,
            self.limits,
        )  # fmt: skip
        try:
            report = await job.run()
        except JobFailed as exc:
            await self._fail(record.id, job.report, str(exc))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("export job crashed", extra={"export_id": record.id})
            await self._fail(record.id, job.report, f"internal error: {exc}")
            return
        await self._finish(record.id, State.SUCCEEDED, report, "")
        metrics.EXPORTS.labels("succeeded").inc()
        log.info(
            "export succeeded",
            extra={"export_id": record.id, "rows": job.rows, "row_counts": report.row_counts},
        )

    async def _fail(self, export_id: str, report: Report, error: str) -> None:
        await self._remove_files(export_id)
        await self._finish(export_id, State.FAILED, report, error)
        metrics.EXPORTS.labels("failed").inc()
        log.error("export failed", extra={"export_id": export_id, "error": error})

    async def _finish(self, export_id: str, state: State, report: Report, error: str) -> None:
        ended = now_ns()
        expire = ended + int(self.settings.retention_s * NS_PER_S)
        await self.registry.finish(export_id, state, report, error, ended, expire)

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cleanup_interval_s)
            try:
                await self.cleanup()
            except Exception:
                log.exception("export cleanup failed")
