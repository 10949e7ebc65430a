"""The Sink interface, the read path a primary sink adds to it, and the accounting every
secondary sink shares."""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from gen.edgebot.v1 import event_pb2
from storage_svc import metrics
from storage_svc.query import BucketCount, EventFilter, GroupBy, PagePosition, PageRequest


class SinkOpenError(Exception):
    """The sink cannot be opened; the message says where and why."""


class SinkError(Exception):
    """The sink failed an operation it may succeed at later (locked, I/O error, closed)."""


class SinkWriteError(SinkError):
    """A batch was not written (and nothing of it was kept); the writer should retry."""


class Health(StrEnum):
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True)
class BatchWrite:
    """One batch and the refused events that travel with it."""

    batch_id: str
    agent_id: str
    seq: int
    events: Sequence[event_pb2.Event]
    dead_letters: Sequence[event_pb2.DeadLetter] = ()
    quarantined: Sequence[event_pb2.QuarantinedEvent] = ()


@dataclass(frozen=True)
class WriteOutcome:
    duplicate_batch: bool
    written: int
    duplicates: int
    seconds: float
    skipped_ids: frozenset[str] = frozenset()
    """Ids of the batch's events not stored because an event with that id already was."""
    rejected: int = 0
    """Events the sink refused for good (a secondary's 400): recorded, never retried."""


@dataclass(frozen=True)
class StoredEvent:
    """An event with its insertion sequence number (the tail cursor)."""

    seq: int
    event: event_pb2.Event


@dataclass(frozen=True)
class SinkState:
    name: str
    kind: str
    primary: bool
    health: Health
    written: int
    failed: int
    last_error: str
    rejected: int = 0
    outbox_depth: int = 0
    outbox_lag_s: float = 0.0
    dropped: int = 0


@dataclass(frozen=True)
class QueryPage:
    events: list[event_pb2.Event]
    next_position: PagePosition | None


@dataclass(frozen=True)
class StoreTotals:
    total_inserts: int
    events_last_hour: int
    duplicates: int
    batches: int
    dead_letters: int
    quarantined: int


CommitListener = Callable[[Sequence[StoredEvent]], None]
"""Called with the newly stored events right after each commit, in commit order."""


class Sink(Protocol):
    name: str
    kind: str
    primary: bool

    async def open(self) -> None:
        """Connect (and migrate); raise SinkOpenError naming the cause."""

    async def close(self) -> None: ...

    async def write(self, batch: BatchWrite) -> WriteOutcome:
        """Store the batch atomically, or raise SinkWriteError having stored none of it."""

    def state(self) -> SinkState: ...


class PrimarySink(Sink, Protocol):
    """The sink whose commit the ack waits for, and which answers the read path."""

    async def query(self, selection: EventFilter, page: PageRequest) -> QueryPage: ...

    async def aggregate(
        self, selection: EventFilter, bucket_ns: int, group_by: GroupBy
    ) -> list[BucketCount]: ...

    async def events_after(self, seq: int, selection: EventFilter, limit: int) -> list[StoredEvent]:
        """Stored events with a sequence number above ``seq``, oldest first."""

    async def last_seq(self) -> int: ...

    async def totals(self) -> StoreTotals: ...

    async def batch_events(
        self, batch_id: str, start_ns: int, end_ns: int, limit: int
    ) -> list[event_pb2.Event]:
        """The events stored by batch ``batch_id`` (all timed within [start_ns, end_ns])."""


@dataclass
class SinkCounters:
    health: Health = Health.DOWN
    written: int = 0
    failed: int = 0
    rejected: int = 0
    last_error: str = ""
    consecutive_failures: int = field(default=0, repr=False)


class SecondarySink(abc.ABC):
    """A sink fed from the outbox. ``write`` is at-least-once: a batch may come again after
    a failure or a restart, so a sink deduplicates where its peer lets it (NATS msg ids).

    Subclasses implement ``open``, ``close`` and ``deliver``; this class keeps the counts,
    the health (UP after a write went through, DEGRADED after a failure, DOWN after
    ``down_after_failures`` in a row or while not open) and the write metrics.
    """

    kind: str
    primary = False

    def __init__(self, name: str, down_after_failures: int) -> None:
        self.name = name
        self.down_after_failures = down_after_failures
        self.counters = SinkCounters()
        self._log = logging.getLogger(f"{__name__}.{self.kind}")

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect; raise SinkOpenError naming the peer and the cause."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def deliver(self, batch: BatchWrite) -> WriteOutcome:
        """Hand the batch to the peer; raise SinkWriteError when it may go through later."""

    async def write(self, batch: BatchWrite) -> WriteOutcome:
        try:
            outcome = await self.deliver(batch)
        except SinkError as exc:
            self.record_failure(str(exc))
            raise
        self._record(outcome)
        return outcome

    def opened(self) -> None:
        self.counters.health = Health.UP
        self._log.info("sink %s open", self.name)

    def record_open_failure(self, error: str) -> None:
        self.counters.health = Health.DOWN
        self.counters.last_error = error
        self._log.warning("sink %s cannot open, retrying: %s", self.name, error)

    def record_failure(self, error: str) -> None:
        """A write (or an open) that failed; also called by the worker on a timeout."""
        counters = self.counters
        counters.failed += 1
        counters.consecutive_failures += 1
        counters.last_error = error
        down = counters.consecutive_failures >= self.down_after_failures
        counters.health = Health.DOWN if down else Health.DEGRADED
        metrics.DATABASE_WRITES.labels(self.name, "failed").inc()
        self._log.warning("sink %s: write failed: %s", self.name, error)

    def _record(self, outcome: WriteOutcome) -> None:
        counters = self.counters
        counters.written += outcome.written
        counters.rejected += outcome.rejected
        counters.consecutive_failures = 0
        counters.health = Health.UP
        metrics.DATABASE_WRITES.labels(self.name, "rejected" if outcome.rejected else "ok").inc()
        metrics.EVENTS_WRITTEN.labels(self.name, "stored").inc(outcome.written)
        metrics.EVENTS_WRITTEN.labels(self.name, "duplicate").inc(outcome.duplicates)
        metrics.EVENTS_WRITTEN.labels(self.name, "rejected").inc(outcome.rejected)

    def record_rejection(self, error: str) -> None:
        """The peer refused a batch for good; it is counted and not sent again."""
        self.counters.last_error = error
        self._log.warning("sink %s: batch refused, not retried: %s", self.name, error)

    def state(self) -> SinkState:
        counters = self.counters
        return SinkState(
            name=self.name,
            kind=self.kind,
            primary=False,
            health=counters.health,
            written=counters.written,
            failed=counters.failed,
            last_error=counters.last_error,
            rejected=counters.rejected,
        )
