"""The Sink interface, and the read path a primary sink adds to it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gen.edgebot.v1 import event_pb2
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
