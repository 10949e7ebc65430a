"""The embedded SQLite primary sink: one writer connection, one reader, WAL mode.

A batch, its ledger row, its dead letters and its quarantined events commit in one
transaction, so a re-sent batch is recognised by its batch_id and never stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from gen.edgebot.v1 import event_pb2
from mesh.timeutil import NS_PER_S, now_ns
from storage_svc.config import SqliteSection
from storage_svc.query import (
    BucketCount,
    EventFilter,
    GroupBy,
    PagePosition,
    PageRequest,
    SortOrder,
)
from storage_svc.sinks.base import (
    BatchWrite,
    CommitListener,
    Health,
    QueryPage,
    SinkError,
    SinkOpenError,
    SinkState,
    SinkWriteError,
    StoredEvent,
    StoreTotals,
    WriteOutcome,
)
from storage_svc.sinks.sqlite_rows import (
    GROUP_COLUMNS,
    INSERT_DEAD_LETTER,
    INSERT_EVENT,
    INSERT_QUARANTINED,
    SELECT_EVENT,
    Row,
    dead_letter_rows,
    event_row,
    quarantine_rows,
    stored_event,
    where,
)
from storage_svc.sinks.sqlite_schema import SCHEMA_VERSION, migrate

log = logging.getLogger(__name__)
HOUR_NS = 3600 * NS_PER_S
INSERT_LEDGER = (
    "INSERT OR IGNORE INTO batches (batch_id, agent_id, seq, event_count, written, "
    "duplicates, stored_ns) VALUES (?, ?, ?, ?, 0, 0, ?)"
)
UPDATE_LEDGER = "UPDATE batches SET written = ?, duplicates = ? WHERE batch_id = ?"
TOTALS = """SELECT
    (SELECT COUNT(*) FROM events),
    (SELECT COUNT(*) FROM events WHERE ts_ns >= ?),
    (SELECT COALESCE(SUM(duplicates), 0) FROM batches),
    (SELECT COUNT(*) FROM batches),
    (SELECT COUNT(*) FROM dead_letters),
    (SELECT COUNT(*) FROM quarantine)"""


class SqliteSink:
    name = "sqlite"
    kind = "sqlite"
    primary = True

    def __init__(self, config: SqliteSection, on_commit: CommitListener) -> None:
        self.config = config
        self.path = Path(config.path).absolute()
        self._on_commit = on_commit
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # One transaction at a time on the writer connection; also keeps commit order
        # (and so tail order) equal to sequence order.
        self._write_lock = asyncio.Lock()
        self._health = Health.DOWN
        self._written = 0
        self._failed = 0
        self._last_error = ""

    async def open(self) -> None:
        try:
            self._writer = await self._connect()
            found = await migrate(self._writer)
            self._reader = await self._connect()
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            await self.close()
            self._last_error = str(exc)
            raise SinkOpenError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._health = Health.UP
        log.info(
            "sqlite sink open",
            extra={"path": str(self.path), "schema_from": found, "schema": SCHEMA_VERSION},
        )

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_ms)}")
            async with db.execute("PRAGMA journal_mode = WAL") as cursor:
                mode = await cursor.fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                raise sqlite3.OperationalError(f"WAL journal mode refused (got {mode})")
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
        self._health = Health.DOWN

    def state(self) -> SinkState:
        return SinkState(
            name=self.name,
            kind=self.kind,
            primary=self.primary,
            health=self._health,
            written=self._written,
            failed=self._failed,
            last_error=self._last_error,
        )

    async def write(self, batch: BatchWrite) -> WriteOutcome:
        # Shielded: a caller that goes away (deadline, cancel) must not interrupt a commit
        # between the database and the tail subscribers.
        return await asyncio.shield(self._write(batch))

    async def _write(self, batch: BatchWrite) -> WriteOutcome:
        started = time.perf_counter()
        async with self._write_lock:
            db = self._connection(self._writer)
            try:
                stored = await self._transaction(db, batch)
            except sqlite3.Error as exc:
                await self._rollback(db)
                raise self._write_failed(batch, exc) from exc
            except BaseException:
                await self._rollback(db)
                raise
            if stored is not None:
                self._committed(stored)
        seconds = time.perf_counter() - started
        if stored is None:
            return WriteOutcome(True, 0, len(batch.events), seconds)
        duplicates = len(batch.events) - len(stored)
        return WriteOutcome(
            False, len(stored), duplicates, seconds, _skipped_ids(batch, stored, duplicates)
        )

    async def _transaction(
        self, db: aiosqlite.Connection, batch: BatchWrite
    ) -> list[StoredEvent] | None:
        """The batch's new events, or None when its batch_id is already in the ledger."""
        stored_ns = now_ns()
        await db.execute("BEGIN IMMEDIATE")
        ledger = (batch.batch_id, batch.agent_id, batch.seq, len(batch.events), stored_ns)
        async with db.execute(INSERT_LEDGER, ledger) as cursor:
            if cursor.rowcount == 0:
                await db.execute("ROLLBACK")
                return None
        floor = await _scalar(db, "SELECT COALESCE(MAX(seq), 0) FROM events")
        rows = [event_row(event, batch.batch_id, stored_ns) for event in batch.events]
        await db.executemany(INSERT_EVENT, rows)
        if batch.dead_letters:
            await db.executemany(INSERT_DEAD_LETTER, dead_letter_rows(batch, stored_ns))
        if batch.quarantined:
            await db.executemany(INSERT_QUARANTINED, quarantine_rows(batch, stored_ns))
        stored = await _new_events(db, floor, batch.events)
        duplicates = len(batch.events) - len(stored)
        await db.execute(UPDATE_LEDGER, (len(stored), duplicates, batch.batch_id))
        await db.execute("COMMIT")
        return stored

    async def _rollback(self, db: aiosqlite.Connection) -> None:
        # Nothing to roll back when BEGIN itself failed or SQLite already rolled back.
        with contextlib.suppress(sqlite3.Error):
            await db.execute("ROLLBACK")

    def _write_failed(self, batch: BatchWrite, exc: sqlite3.Error) -> SinkWriteError:
        self._failed += 1
        self._health = Health.DEGRADED
        self._last_error = f"{type(exc).__name__}: {exc}"
        log.warning("batch %s not written, rolled back: %s", batch.batch_id, self._last_error)
        return SinkWriteError(
            f"sqlite write of batch {batch.batch_id!r} failed and was rolled back "
            f"({self._last_error}); retry the batch"
        )

    def _committed(self, stored: list[StoredEvent]) -> None:
        self._written += len(stored)
        self._health = Health.UP
        if not stored:
            return
        try:
            self._on_commit(stored)
        except Exception:
            log.exception("commit listener failed; the batch is stored")

    async def query(self, selection: EventFilter, page: PageRequest) -> QueryPage:
        conditions, params = where(selection)
        newest_first = page.order is SortOrder.NEWEST_FIRST
        direction = "DESC" if newest_first else "ASC"
        if page.after is not None:
            conditions += f" AND (ts_ns, id) {'<' if newest_first else '>'} (?, ?)"
            params += [page.after.ts_ns, page.after.event_id]
        sql = (
            f"{SELECT_EVENT} WHERE {conditions} ORDER BY ts_ns {direction}, id {direction} LIMIT ?"
        )
        rows = await self._read(sql, [*params, page.size + 1])
        events = [stored_event(row).event for row in rows[: page.size]]
        if len(rows) <= page.size:
            return QueryPage(events, None)
        last = events[-1]
        return QueryPage(events, PagePosition(rows[page.size - 1][2], last.id))

    async def aggregate(
        self, selection: EventFilter, bucket_ns: int, group_by: GroupBy
    ) -> list[BucketCount]:
        conditions, params = where(selection)
        # A true modulo (SQLite's % truncates) so times before 1970 align too.
        bucket = "ts_ns - ((ts_ns % ?) + ?) % ?"
        sql = (
            f"SELECT {bucket} AS bucket, {GROUP_COLUMNS[group_by]} AS key, COUNT(*) "
            f"FROM events WHERE {conditions} GROUP BY bucket, key ORDER BY bucket, key"
        )
        rows = await self._read(sql, [bucket_ns, bucket_ns, bucket_ns, *params])
        return [BucketCount(start, str(key), count) for start, key, count in rows]

    async def events_after(self, seq: int, selection: EventFilter, limit: int) -> list[StoredEvent]:
        conditions, params = where(selection)
        sql = f"{SELECT_EVENT} WHERE seq > ? AND {conditions} ORDER BY seq LIMIT ?"
        rows = await self._read(sql, [seq, *params, limit])
        return [stored_event(row) for row in rows]

    async def last_seq(self) -> int:
        rows = await self._read("SELECT COALESCE(MAX(seq), 0) FROM events", [])
        return int(rows[0][0])

    async def totals(self) -> StoreTotals:
        rows = await self._read(TOTALS, [now_ns() - HOUR_NS])
        return StoreTotals(*(int(value) for value in rows[0]))

    async def batch_events(
        self, batch_id: str, start_ns: int, end_ns: int, limit: int
    ) -> list[event_pb2.Event]:
        sql = (
            f"{SELECT_EVENT} WHERE ts_ns >= ? AND ts_ns <= ? AND batch_id = ? ORDER BY seq LIMIT ?"
        )
        rows = await self._read(sql, [start_ns, end_ns, batch_id, limit])
        return [stored_event(row).event for row in rows]

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Row]:
        db = self._connection(self._reader)
        try:
            async with db.execute(sql, params) as cursor:
                return [tuple(row) for row in await cursor.fetchall()]
        except sqlite3.Error as exc:
            raise SinkError(f"sqlite read failed: {type(exc).__name__}: {exc}") from exc

    def _connection(self, db: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if db is None:
            raise SinkError(f"sqlite database {self.path} is not open")
        return db


def _skipped_ids(
    batch: BatchWrite, stored: Sequence[StoredEvent], duplicates: int
) -> frozenset[str]:
    if not duplicates:
        return frozenset()
    return frozenset(event.id for event in batch.events) - {s.event.id for s in stored}


async def _scalar(db: aiosqlite.Connection, sql: str) -> int:
    async with db.execute(sql) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _new_events(
    db: aiosqlite.Connection, floor: int, events: Sequence[event_pb2.Event]
) -> list[StoredEvent]:
    """The events this transaction inserted (its rows are the ones above ``floor``)."""
    by_id: dict[str, event_pb2.Event] = {}
    for event in events:
        # INSERT OR IGNORE keeps the first of repeated ids in a batch.
        by_id.setdefault(event.id, event)
    async with db.execute("SELECT seq, id FROM events WHERE seq > ? ORDER BY seq", (floor,)) as c:
        return [StoredEvent(seq, by_id[event_id]) for seq, event_id in await c.fetchall()]
