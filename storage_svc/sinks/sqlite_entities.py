"""The entity graph in the SQLite primary's database (tables ``entities`` and
``entity_events``, created by the primary's migrations), on connections of its own."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from storage_svc.config import SqliteSection
from storage_svc.entities import (
    Edge,
    Entity,
    EntityKind,
    EntityRef,
    Neighbor,
    TimeRange,
    entity_rows,
)
from storage_svc.query import PagePosition, PageRequest
from storage_svc.sinks.base import QueryPage, SinkError, SinkOpenError, SinkWriteError
from storage_svc.sinks.sqlite_rows import SELECTED_COLUMNS, Row, stored_event

INSERT_EDGE = (
    "INSERT OR IGNORE INTO entity_events (kind, key, ts_ns, event_id, relation) "
    "VALUES (?, ?, ?, ?, ?)"
)
UPSERT_ENTITY = (
    "INSERT INTO entities (kind, key, first_ns, last_ns) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (kind, key) DO UPDATE SET first_ns = MIN(first_ns, excluded.first_ns), "
    "last_ns = MAX(last_ns, excluded.last_ns)"
)
EVENT_COLUMNS = ", ".join(f"e.{column}" for column in SELECTED_COLUMNS)


def _span(span: TimeRange, column: str) -> tuple[str, list[Any]]:
    conditions, params = [], []
    if span.start_ns is not None:
        conditions.append(f"{column} >= ?")
        params.append(span.start_ns)
    if span.end_ns is not None:
        conditions.append(f"{column} < ?")
        params.append(span.end_ns)
    return "".join(f" AND {c}" for c in conditions), params


class SqliteEntityStore:
    def __init__(self, config: SqliteSection) -> None:
        self.config = config
        self.path = Path(config.path).absolute()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            self._writer = await self._connect()
            self._reader = await self._connect()
            await self._read("SELECT 1 FROM entities LIMIT 1", [])
        except (sqlite3.Error, OSError, SinkError) as exc:
            await self.close()
            raise SinkOpenError(f"entity graph in {self.path}: {exc}") from exc

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_ms)}")
        await db.execute(f"PRAGMA synchronous = {self.config.synchronous}")
        return db

    async def close(self) -> None:
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._reader = self._writer = None

    async def add(self, edges: Sequence[Edge]) -> None:
        # Shielded: a timed-out caller must not leave the transaction open.
        await asyncio.shield(self._add(edges))

    async def _add(self, edges: Sequence[Edge]) -> None:
        edge_rows = [(e.kind.value, e.key, e.ts_ns, e.event_id, e.relation.value) for e in edges]
        entity_params = [(e.kind.value, e.key, e.first_ns, e.last_ns) for e in entity_rows(edges)]
        async with self._lock:
            db = self._open(self._writer)
            try:
                await db.execute("BEGIN IMMEDIATE")
                await db.executemany(INSERT_EDGE, edge_rows)
                await db.executemany(UPSERT_ENTITY, entity_params)
                await db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise SinkWriteError(f"entity graph write failed: {exc}") from exc

    async def entity(self, ref: EntityRef) -> Entity | None:
        rows = await self._read(
            "SELECT first_ns, last_ns FROM entities WHERE kind = ? AND key = ?",
            [ref.kind.value, ref.key],
        )
        return Entity(ref.kind, ref.key, rows[0][0], rows[0][1]) if rows else None

    async def count(self, ref: EntityRef, span: TimeRange) -> int:
        within, params = _span(span, "ts_ns")
        rows = await self._read(
            f"SELECT COUNT(*) FROM entity_events WHERE kind = ? AND key = ?{within}",
            [ref.kind.value, ref.key, *params],
        )
        return int(rows[0][0])

    async def events(self, ref: EntityRef, span: TimeRange, page: PageRequest) -> QueryPage:
        within, params = _span(span, "x.ts_ns")
        if page.after is not None:
            within += " AND (x.ts_ns, x.event_id) < (?, ?)"
            params += [page.after.ts_ns, page.after.event_id]
        rows = await self._read(
            f"SELECT {EVENT_COLUMNS} FROM entity_events x JOIN events e ON e.id = x.event_id "
            f"WHERE x.kind = ? AND x.key = ?{within} "
            "ORDER BY x.ts_ns DESC, x.event_id DESC LIMIT ?",
            [ref.kind.value, ref.key, *params, page.size + 1],
        )
        events = [stored_event(row).event for row in rows[: page.size]]
        if len(rows) <= page.size:
            return QueryPage(events, None)
        return QueryPage(events, PagePosition(rows[page.size - 1][2], events[-1].id))

    async def neighbors(self, ref: EntityRef, span: TimeRange, limit: int) -> list[Neighbor]:
        within, params = _span(span, "x.ts_ns")
        rows = await self._read(
            "SELECT n.kind, n.key, COUNT(*) AS shared, en.first_ns, en.last_ns "
            "FROM entity_events x JOIN entity_events n ON n.event_id = x.event_id "
            "JOIN entities en ON en.kind = n.kind AND en.key = n.key "
            f"WHERE x.kind = ? AND x.key = ?{within} "
            "AND NOT (n.kind = x.kind AND n.key = x.key) "
            "GROUP BY n.kind, n.key ORDER BY shared DESC, n.kind, n.key LIMIT ?",
            [ref.kind.value, ref.key, *params, limit],
        )
        return [
            Neighbor(Entity(EntityKind(kind), key, first_ns, last_ns), shared)
            for kind, key, shared, first_ns, last_ns in rows
        ]

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Row]:
        db = self._open(self._reader)
        try:
            async with db.execute(sql, params) as cursor:
                return [tuple(row) for row in await cursor.fetchall()]
        except sqlite3.Error as exc:
            raise SinkError(f"entity graph read failed: {exc}") from exc

    def _open(self, db: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if db is None:
            raise SinkError(f"entity graph in {self.path} is not open")
        return db
