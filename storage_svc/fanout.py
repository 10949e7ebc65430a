"""Fan-out: the primary write bracketed by its outbox intent, and one worker per secondary
sink that drains the outbox into it.

A secondary sink that is down never blocks the primary (its worker retries on its own, with
backoff and jitter) nor another sink (each has its own worker and cursor); it catches up from
its cursor when it returns. See ``storage_svc.outbox`` for how a crash between the primary's
commit and the outbox's loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from gen.edgebot.v1 import event_pb2
from mesh.backoff import backoff_delay
from mesh.timeutil import NS_PER_S, now_ns
from storage_svc import metrics
from storage_svc.config import OutboxSection
from storage_svc.outbox import Entry, Intent, Outbox, OutboxError, events_to_enqueue
from storage_svc.sinks.base import (
    BatchWrite,
    Health,
    PrimarySink,
    SecondarySink,
    SinkError,
    SinkOpenError,
    SinkState,
    WriteOutcome,
)
from storage_svc.sinks_config import SecondarySinkSection

log = logging.getLogger(__name__)
HealthListener = Callable[[str, Health], Awaitable[None]]
T = TypeVar("T")


class SinkWorker:
    """Feeds one secondary sink from the outbox, in order, at least once."""

    def __init__(
        self,
        sink: SecondarySink,
        settings: SecondarySinkSection,
        outbox: Outbox,
        poll_interval_s: float,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.outbox = outbox
        self.poll_interval_s = poll_interval_s
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.sink.name

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    async def stop(self) -> None:
        """Stop at once: what was not acknowledged stays in the outbox for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.sink.close()

    async def _run(self) -> None:
        await self._open()
        cursor = await self._retrying(functools.partial(self.outbox.cursor, self.name))
        while True:
            entries = await self._retrying(functools.partial(self._next_batch, cursor))
            await self._deliver(entries)
            cursor = entries[-1].seq
            await self._retrying(functools.partial(self.outbox.ack, self.name, cursor))

    async def _open(self) -> None:
        attempt = 0
        while True:
            try:
                await self.sink.open()
            except SinkOpenError as exc:
                self.sink.record_open_failure(str(exc))
            else:
                self.sink.opened()
                return
            await self._pause(attempt)
            attempt += 1

    async def _retrying(self, step: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await step()
            except OutboxError as exc:
                log.error("sink %s: outbox: %s", self.name, exc)
            await self._pause(attempt)
            attempt += 1

    async def _next_batch(self, cursor: int) -> list[Entry]:
        """The next entries after ``cursor``: once the batch is full, or its first entry
        waited ``batch_wait_s``; sleeps while there are none."""
        settings = self.settings
        while True:
            self.wake.clear()
            entries, full = await self.outbox.read(
                cursor, settings.batch_max_events, settings.batch_max_bytes
            )
            if not entries:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self.wake.wait()
                continue
            waited_s = (now_ns() - entries[0].enqueued_ns) / NS_PER_S
            if full or waited_s >= settings.batch_wait_s:
                return entries
            await asyncio.sleep(settings.batch_wait_s - waited_s)

    async def _deliver(self, entries: Sequence[Entry]) -> None:
        """Write until the sink takes the batch (or refuses it for good)."""
        batch = BatchWrite(
            batch_id=f"outbox-{entries[0].seq}-{entries[-1].seq}",
            agent_id="",
            seq=entries[-1].seq,
            events=[event_pb2.Event.FromString(entry.event) for entry in entries],
        )
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.settings.write_timeout_s):
                    await self.sink.write(batch)
                return
            except SinkError:
                pass  # counted and logged by the sink
            except TimeoutError:
                self.sink.record_failure(f"write timed out after {self.settings.write_timeout_s}s")
            except Exception as exc:
                log.exception("sink %s: write failed unexpectedly", self.name)
                self.sink.record_failure(f"{type(exc).__name__}: {exc}")
            await self._pause(attempt)
            attempt += 1

    async def _pause(self, attempt: int) -> None:
        settings = self.settings
        await asyncio.sleep(backoff_delay(attempt, settings.retry_initial_s, settings.retry_max_s))


class FanOut:
    """The write path of the storage service: the primary, then the outbox, then the sinks."""

    def __init__(
        self,
        primary: PrimarySink,
        outbox: Outbox | None,
        workers: Sequence[SinkWorker],
        config: OutboxSection,
        on_health: HealthListener | None = None,
    ) -> None:
        self.primary = primary
        self.outbox = outbox
        self.workers = list(workers)
        self.config = config
        self._on_health = on_health
        self._reported: dict[str, Health] = {}
        self._in_flight: set[int] = set()
        self._intent_lock = asyncio.Lock()
        self._monitor: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Open the outbox, resolve what a crash left, start the workers (the primary is
        open already). Raises OutboxError when the outbox file cannot be opened."""
        if self.outbox is None:
            return
        await self.outbox.open()
        await self.resolve_orphans()
        for worker in self.workers:
            worker.start()
        await self.refresh()
        self._monitor = asyncio.create_task(self._monitor_forever(), name="outbox-monitor")

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        for worker in self.workers:
            await worker.stop()
        if self.outbox is not None:
            await self.outbox.close()

    async def write(self, batch: BatchWrite) -> WriteOutcome:
        if self.outbox is None:
            return await self.primary.write(batch)
        # Shielded: once the primary committed, the outbox must hear of it.
        return await asyncio.shield(self._write(self.outbox, batch))

    async def _write(self, outbox: Outbox, batch: BatchWrite) -> WriteOutcome:
        intent = await self._intend(outbox, batch)
        try:
            try:
                outcome = await self.primary.write(batch)
            except SinkError:
                if intent is not None:
                    await self._quietly(outbox.abandon(intent))
                raise
            if outcome.duplicate_batch:
                events = []
            else:
                events = events_to_enqueue(batch, outcome.skipped_ids)
            await self._enqueue(outbox, intent, batch.batch_id, events)
        finally:
            if intent is not None:
                self._in_flight.discard(intent)
        return outcome

    async def _intend(self, outbox: Outbox, batch: BatchWrite) -> int | None:
        async with self._intent_lock:
            try:
                intent = await outbox.intend(batch)
            except OutboxError as exc:
                log.error("outbox: %s; writing the batch to the primary regardless", exc)
                return None
            self._in_flight.add(intent)
        return intent

    async def _enqueue(
        self,
        outbox: Outbox,
        intent: int | None,
        batch_id: str,
        events: Sequence[event_pb2.Event],
    ) -> None:
        if not events:
            if intent is not None:
                await self._quietly(outbox.abandon(intent))
            return
        try:
            dropped = await outbox.commit(intent, batch_id, events)
        except OutboxError as exc:
            if intent is not None:
                log.warning("outbox: %s; the batch will be read back from the primary", exc)
                return
            log.error("outbox: %s; the secondary sinks miss %d events", exc, len(events))
            self._count_dropped({w.name: len(events) for w in self.workers}, "outbox_error")
            return
        self._count_dropped(dropped, "full")
        self._wake_workers()

    async def resolve_orphans(self) -> None:
        """Append what the primary stored for intents no write is working on any more."""
        assert self.outbox is not None
        async with self._intent_lock:
            orphans = [i for i in await self.outbox.intents() if i.id not in self._in_flight]
        for intent in orphans:
            await self._resolve(self.outbox, intent)

    async def _resolve(self, outbox: Outbox, intent: Intent) -> None:
        if await outbox.holds_batch(intent.batch_id):
            await outbox.abandon(intent.id)
            return
        events = await self.primary.batch_events(
            intent.batch_id, intent.start_ns, intent.end_ns, self.config.recovery_batch_events
        )
        dropped = await outbox.commit(intent.id, intent.batch_id, events)
        self._count_dropped(dropped, "full")
        if events:
            log.info(
                "outbox: batch %s read back from the primary (%d events)",
                intent.batch_id,
                len(events),
            )
            self._wake_workers()

    async def _quietly(self, step: Awaitable[None]) -> None:
        try:
            await step
        except OutboxError as exc:
            log.warning("outbox: %s", exc)

    def _wake_workers(self) -> None:
        for worker in self.workers:
            worker.wake.set()

    def _count_dropped(self, dropped: dict[str, int], reason: str) -> None:
        for sink, count in dropped.items():
            metrics.OUTBOX_DROPPED.labels(sink, reason).inc(count)
            if reason == "full":
                log.warning("outbox full: %d events dropped for sink %s", count, sink)

    async def states(self) -> list[SinkState]:
        """The primary's state and each secondary's, with its outbox backlog."""
        states = [self.primary.state()]
        if self.outbox is None:
            return states
        now = now_ns()
        for worker in self.workers:
            backlog = await self.outbox.backlog(worker.name)
            lag_s = 0.0 if backlog.oldest_ns is None else max(0, now - backlog.oldest_ns) / NS_PER_S
            states.append(
                dataclasses.replace(
                    worker.sink.state(),
                    outbox_depth=backlog.depth,
                    outbox_lag_s=lag_s,
                    dropped=backlog.dropped,
                )
            )
        return states

    async def refresh(self) -> None:
        """Update the outbox gauges and report health changes of the secondaries."""
        for state in (await self.states())[1:]:
            metrics.OUTBOX_DEPTH.labels(state.name).set(state.outbox_depth)
            metrics.OUTBOX_LAG.labels(state.name).set(state.outbox_lag_s)
            if self._on_health is not None and self._reported.get(state.name) != state.health:
                await self._on_health(state.name, state.health)
                self._reported[state.name] = state.health

    async def _monitor_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            try:
                await self.resolve_orphans()
                await self.refresh()
            except (OutboxError, SinkError) as exc:
                log.warning("outbox monitor: %s", exc)
            except Exception:
                # A monitor that died would freeze the gauges and the sinks' health entries.
                log.exception(
                    "outbox monitor: unexpected error; next pass in %ss",
                    self.config.stats_interval_s,
                )
