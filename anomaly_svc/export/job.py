"""One export job: read each dataset in batches, write its parts, report progress.

Memory stays bounded by the batch size: events come from StorageService.QueryEvents one
page at a time (oldest first), anomalies and labels from the anomaly store by keyset pages,
and each batch is encoded, written and dropped before the next is read. Encoding and file
I/O run in a worker thread so RPCs stay responsive. Progress is rows done over the rows
counted at the start (AggregateEvents for events, a count for anomalies), stored after
every batch together with the parts that batch closed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from anomaly_svc.export.registry import ExportRegistry
from anomaly_svc.export.rows import (
    CHECKED_FIELDS,
    Batch,
    anomalies_batch,
    events_batch,
    labels_batch,
)
from anomaly_svc.export.spec import Dataset, ExportRecord, Report
from anomaly_svc.export.writers import PartWriter, make_writer
from anomaly_svc.store import AnomalyQuery, AnomalyRecord, AnomalyStore, Label
from gen.edgebot.v1 import event_pb2, storage_pb2, storage_pb2_grpc
from mesh.timeutil import is_set, ts_to_ns

# One bucket spanning any stored time range: AggregateEvents then returns the total count.
COUNT_BUCKET = dt.timedelta(days=365 * 200)
R = TypeVar("R")


class JobFailed(Exception):
    """The export cannot complete; the message says why."""


@dataclass(frozen=True)
class JobLimits:
    max_export_bytes: int
    storage_timeout_s: float


async def in_thread(function: Callable[[], R]) -> R:
    """Run ``function`` in a worker thread; on cancellation wait for it before re-raising,
    so nothing still writes a file that the canceller is about to delete."""
    future = asyncio.ensure_future(asyncio.to_thread(function))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


def anomaly_query(record: ExportRecord, labelled: bool) -> AnomalyQuery:
    flt = record.spec.event_filter
    return AnomalyQuery(
        agents=record.spec.agents,
        hosts=list(flt.hosts),
        max_level=flt.min_severity - 1 if flt.min_severity else None,
        start_ns=ts_to_ns(flt.start_time) if is_set(flt.start_time) else None,
        end_ns=ts_to_ns(flt.end_time) if is_set(flt.end_time) else None,
        labels=(Label.TRUE_POSITIVE, Label.FALSE_POSITIVE) if labelled else (),
    )


class ExportJob:
    def __init__(
        self,
        record: ExportRecord,
        directory: Path,
        storage: storage_pb2_grpc.StorageServiceAsyncStub,
        store: AnomalyStore,
        registry: ExportRegistry,
        limits: JobLimits,
    ) -> None:
        self.record = record
        self.spec = record.spec
        self.directory = directory
        self.storage = storage
        self.store = store
        self.registry = registry
        self.limits = limits
        self.report = Report()
        self.rows = 0
        self.units_done = 0
        self.units_total = 0
        self.bytes_before = 0
        self._writer: PartWriter | None = None

    async def run(self) -> Report:
        await in_thread(lambda: self.directory.mkdir(parents=True, exist_ok=True))
        self.units_total = await self._count()
        next_index = 0
        for dataset in self.spec.datasets:
            writer = make_writer(
                self.directory, dataset, self.spec.format, self.spec.gzip, next_index,
                self.spec.max_part_bytes,
            )  # fmt: skip
            self._writer = writer
            try:
                async for batch, units in self._batches(dataset):
                    await in_thread(functools.partial(writer.write, batch))
                    self._account(batch, units)
                    await self._checkpoint(writer)
                await in_thread(writer.close)
            except BaseException:
                await in_thread(writer.abort)
                raise
            self._writer = None
            await self._checkpoint(writer)
            self.bytes_before += writer.bytes_written
            next_index = writer.next_index
            self.report.row_counts.setdefault(str(dataset), 0)
        return self.report

    def _account(self, batch: Batch, units: int) -> None:
        self.rows += batch.rows
        self.units_done += units
        self.report.add_rows(batch.dataset, batch.rows)
        for name in CHECKED_FIELDS[batch.dataset]:
            self.report.add_missing(batch.dataset, name, batch.missing(name))
        self.report.add_times(batch.times_ns)

    async def _checkpoint(self, writer: PartWriter) -> None:
        size = self.bytes_before + writer.bytes_written
        if size > self.limits.max_export_bytes:
            raise JobFailed(
                f"the export grew past exports.max_export_bytes ({self.limits.max_export_bytes} "
                "bytes); narrow the time range or filters"
            )
        progress = min(0.99, self.units_done / self.units_total) if self.units_total else 0.0
        await self.registry.progress(
            self.record.id, progress, self.rows, size, self.report, writer.take_closed()
        )

    async def _count(self) -> int:
        total = 0
        for dataset in self.spec.datasets:
            if dataset == Dataset.EVENTS:
                total += await self._count_events()
            else:
                total += await self.store.count(
                    anomaly_query(self.record, dataset == Dataset.LABELS)
                )
        return total

    async def _count_events(self) -> int:
        request = storage_pb2.AggregateEventsRequest(filter=self.spec.event_filter)
        request.bucket.FromTimedelta(COUNT_BUCKET)
        try:
            reply = await self.storage.AggregateEvents(
                request, timeout=self.limits.storage_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise JobFailed(_storage_error("AggregateEvents", exc)) from None
        return sum(count.count for count in reply.counts)

    async def _batches(self, dataset: Dataset) -> AsyncIterator[tuple[Batch, int]]:
        """Batches of rows, each with the progress units it covers."""
        if dataset == Dataset.EVENTS:
            async for events in self._event_pages():
                yield events_batch(events), len(events)
            return
        labelled = dataset == Dataset.LABELS
        async for anomalies in self._anomaly_pages(labelled):
            if labelled:
                self.report.add_missing(
                    dataset, "event_ids", sum(1 for a in anomalies if not a.event_ids)
                )
                yield labels_batch(anomalies), len(anomalies)
            else:
                yield anomalies_batch(anomalies), len(anomalies)

    async def _event_pages(self) -> AsyncIterator[list[event_pb2.Event]]:
        """Up to batch_size events at a time, gathered from as many pages as that takes."""
        request = storage_pb2.QueryEventsRequest(
            filter=self.spec.event_filter,
            page_size=self.spec.batch_size,
            order=storage_pb2.SORT_ORDER_OLDEST_FIRST,
        )
        pending: list[event_pb2.Event] = []
        while True:
            request.page_size = self.spec.batch_size - len(pending)
            try:
                page = await self.storage.QueryEvents(
                    request, timeout=self.limits.storage_timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                raise JobFailed(_storage_error("QueryEvents", exc)) from None
            pending.extend(page.events)
            if len(pending) >= self.spec.batch_size or not page.next_page_token:
                if pending:
                    yield pending
                pending = []
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def _anomaly_pages(self, labelled: bool) -> AsyncIterator[list[AnomalyRecord]]:
        query = anomaly_query(self.record, labelled)
        after: tuple[int, str] | None = None
        while True:
            page = await self.store.scan(query, after, self.spec.batch_size)
            if not page:
                return
            yield page
            after = (page[-1].time_ns, page[-1].id)


def _storage_error(method: str, exc: grpc.aio.AioRpcError) -> str:
    return f"storage {method} failed: {exc.code().name}: {exc.details()}"
