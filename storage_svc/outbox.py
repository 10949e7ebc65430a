"""The durable outbox between the primary sink and the secondary sinks (one SQLite file).

Each event the primary stored is appended once (``entries``, numbered by ``seq``); every
secondary sink has a cursor, the last seq it took. Entries every cursor has passed are
deleted. The outbox is bounded: a commit that would take it past ``max_events`` drops the
oldest entries, and each sink whose cursor had not reached them has them counted as dropped
(a sink that keeps up never loses anything to a slow one).

How the append relates to the primary's commit, so that a crash between the two loses
nothing for the secondaries: before the primary writes a batch, an *intent* naming the
batch (its id and time range) is committed here; after the primary committed, the stored
events are appended and the intent deleted in one transaction. An intent that outlives its
write (a crash, or an outbox error after the primary's commit) is resolved from the primary
itself: the events the primary holds under that batch id are appended (none when the
primary never committed it, and then the edge re-sends the batch anyway). A batch the
primary answers as a duplicate appends nothing, so a batch written twice reaches each sink
once. Re-deriving from the primary costs one small commit per batch, but works with several
storage replicas sharing one PostgreSQL (each replica's outbox feeds its own writes) where
"everything after the outbox's last primary seq" would not. Delivery is at-least-once: an
entry handed to a sink whose ack did not reach the cursor before a crash is handed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from gen.edgebot.v1 import event_pb2
from mesh.timeutil import now_ns, ts_to_ns
from storage_svc.config import OutboxSection
from storage_svc.sinks.base import BatchWrite

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        batch_id TEXT NOT NULL,
        event BLOB NOT NULL,
        enqueued_ns INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS cursors (
        sink TEXT PRIMARY KEY,
        acked_seq INTEGER NOT NULL,
        dropped INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS intents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        batch_id TEXT NOT NULL,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        created_ns INTEGER NOT NULL
    )""",
)
INSERT_ENTRY = "INSERT INTO entries (batch_id, event, enqueued_ns) VALUES (?, ?, ?)"
LAST_SEQ = "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'entries'), 0)"


class OutboxError(Exception):
    """The outbox file could not be read or written."""


@dataclass(frozen=True)
class Entry:
    seq: int
    event: bytes
    enqueued_ns: int


@dataclass(frozen=True)
class Intent:
    id: int
    batch_id: str
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class Backlog:
    """What a sink has not taken yet."""

    depth: int
    oldest_ns: int | None
    dropped: int


def events_to_enqueue(batch: BatchWrite, skipped_ids: frozenset[str]) -> list[event_pb2.Event]:
    """The batch's events the primary stored: the first of each id, minus those it skipped."""
    seen: set[str] = set()
    chosen = []
    for event in batch.events:
        if event.id in seen or event.id in skipped_ids:
            continue
        seen.add(event.id)
        chosen.append(event)
    return chosen


def time_range(events: Iterable[event_pb2.Event]) -> tuple[int, int]:
    times = [ts_to_ns(event.time) for event in events]
    return (min(times), max(times)) if times else (0, 0)


class Outbox:
    def __init__(self, config: OutboxSection, sinks: Sequence[str]) -> None:
        self.config = config
        self.path = Path(config.path).absolute()
        self.sinks = tuple(sinks)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Create the file and tables; give new sinks a cursor at the end, drop the cursors
        of sinks no longer configured (they would hold entries forever)."""
        try:
            self._writer = await self._connect()
            for statement in SCHEMA:
                await self._writer.execute(statement)
            self._reader = await self._connect()
            async with self._transaction() as db:
                last = await _scalar(db, LAST_SEQ)
                placeholders = ", ".join("?" * len(self.sinks))
                await db.execute(
                    f"DELETE FROM cursors WHERE sink NOT IN ({placeholders})", self.sinks
                )
                await db.executemany(
                    "INSERT OR IGNORE INTO cursors (sink, acked_seq) VALUES (?, ?)",
                    [(sink, last) for sink in self.sinks],
                )
                await _prune(db)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_ms)}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA synchronous = {self.config.synchronous}")
        except BaseException:
            await db.close()
            raise
        return db

    async def close(self) -> None:
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._reader = self._writer = None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            db = self._open(self._writer)
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise

    def _open(self, db: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if db is None:
            raise OutboxError(f"outbox {self.path} is not open")
        return db

    async def intend(self, batch: BatchWrite) -> int:
        """Record that ``batch`` is about to be written to the primary; the intent's id."""
        start_ns, end_ns = time_range(batch.events)
        try:
            async with self._transaction() as db:
                cursor = await db.execute(
                    "INSERT INTO intents (batch_id, start_ns, end_ns, created_ns) "
                    "VALUES (?, ?, ?, ?)",
                    (batch.batch_id, start_ns, end_ns, now_ns()),
                )
                intent_id = cursor.lastrowid
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox intent for batch {batch.batch_id!r}: {exc}") from exc
        assert intent_id is not None
        return intent_id

    async def commit(
        self, intent_id: int | None, batch_id: str, events: Sequence[event_pb2.Event]
    ) -> dict[str, int]:
        """Append the events the primary stored and resolve the intent (if one was
        recorded), in one transaction.

        Returns, per sink, how many entries it lost because the outbox was full."""
        enqueued_ns = now_ns()
        rows = [(batch_id, event.SerializeToString(), enqueued_ns) for event in events]
        try:
            async with self._transaction() as db:
                await db.executemany(INSERT_ENTRY, rows)
                await db.execute("DELETE FROM intents WHERE id = ?", (intent_id,))
                return await self._drop_overflow(db) if rows else {}
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox append of batch {batch_id!r}: {exc}") from exc

    async def abandon(self, intent_id: int) -> None:
        """The primary stored nothing new for this intent's batch."""
        try:
            async with self._transaction() as db:
                await db.execute("DELETE FROM intents WHERE id = ?", (intent_id,))
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox intent {intent_id}: {exc}") from exc

    async def _drop_overflow(self, db: aiosqlite.Connection) -> dict[str, int]:
        last = await _scalar(db, LAST_SEQ)
        cut = last - self.config.max_events
        first = await _scalar(db, "SELECT COALESCE(MIN(seq), 0) FROM entries")
        if cut < first or not first:
            return {}
        dropped: dict[str, int] = {}
        async with db.execute(
            "SELECT sink, acked_seq FROM cursors WHERE acked_seq < ?", (cut,)
        ) as c:
            for sink, acked in await c.fetchall():
                dropped[sink] = cut - max(acked, first - 1)
        await db.executemany(
            "UPDATE cursors SET acked_seq = ?, dropped = dropped + ? WHERE sink = ?",
            [(cut, count, sink) for sink, count in dropped.items()],
        )
        await db.execute("DELETE FROM entries WHERE seq <= ?", (cut,))
        return dropped

    async def intents(self) -> list[Intent]:
        rows = await self._read("SELECT id, batch_id, start_ns, end_ns FROM intents ORDER BY id")
        return [Intent(*row) for row in rows]

    async def holds_batch(self, batch_id: str) -> bool:
        rows = await self._read("SELECT 1 FROM entries WHERE batch_id = ? LIMIT 1", batch_id)
        return bool(rows)

    async def cursor(self, sink: str) -> int:
        rows = await self._read("SELECT acked_seq FROM cursors WHERE sink = ?", sink)
        if not rows:
            raise OutboxError(f"outbox has no cursor for sink {sink!r}")
        return int(rows[0][0])

    async def read(self, after: int, max_events: int, max_bytes: int) -> tuple[list[Entry], bool]:
        """Entries after ``after``, oldest first, within both limits (at least one); and
        whether a limit was reached (the batch is full)."""
        rows = await self._read(
            "SELECT seq, event, enqueued_ns FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
            after,
            max_events,
        )
        entries: list[Entry] = []
        size = 0
        for seq, event, enqueued_ns in rows:
            size += len(event)
            if entries and size > max_bytes:
                return entries, True
            entries.append(Entry(seq, event, enqueued_ns))
        return entries, len(entries) == max_events or size >= max_bytes

    async def ack(self, sink: str, seq: int) -> None:
        """``sink`` took every entry up to ``seq``; delete what every sink has taken."""
        try:
            async with self._transaction() as db:
                await db.execute(
                    "UPDATE cursors SET acked_seq = MAX(acked_seq, ?) WHERE sink = ?", (seq, sink)
                )
                await _prune(db)
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox cursor of {sink!r}: {exc}") from exc

    async def backlog(self, sink: str) -> Backlog:
        rows = await self._read(
            f"SELECT ({LAST_SEQ}) - acked_seq, dropped, "
            "(SELECT enqueued_ns FROM entries WHERE seq > acked_seq ORDER BY seq LIMIT 1) "
            "FROM cursors WHERE sink = ?",
            sink,
        )
        if not rows:
            return Backlog(0, None, 0)
        depth, dropped, oldest_ns = rows[0]
        return Backlog(int(depth), oldest_ns, int(dropped))

    async def size(self) -> int:
        rows = await self._read("SELECT COUNT(*) FROM entries")
        return int(rows[0][0])

    async def _read(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        db = self._open(self._reader)
        try:
            async with db.execute(sql, params) as cursor:
                return [tuple(row) for row in await cursor.fetchall()]
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox read failed: {exc}") from exc


async def _scalar(db: aiosqlite.Connection, sql: str) -> int:
    async with db.execute(sql) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


async def _prune(db: aiosqlite.Connection) -> None:
    await db.execute("DELETE FROM entries WHERE seq <= (SELECT MIN(acked_seq) FROM cursors)")
