"""The entity graph in the PostgreSQL primary's schema (tables ``entities`` and
``entity_events``, created by the primary's migrations), on a small pool of its own.

Rows are written in primary-key order, so replicas adding overlapping edges at once wait for
each other instead of deadlocking."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg  # no stubs or py.typed (asyncpg 0.32)

from storage_svc.config import PostgresSection
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
from storage_svc.sinks.postgres import DB_ERRORS, dsn_secrets, redacted, session_options
from storage_svc.sinks.postgres_rows import (
    SELECTED_COLUMNS,
    Conditions,
    ns_to_timestamptz,
    stored_event,
)

POOL_SIZE = 2
INSERT_EDGES = (
    "INSERT INTO entity_events (kind, key, ts_ns, event_id, relation) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[]) "
    "ON CONFLICT DO NOTHING"
)
UPSERT_ENTITIES = (
    "INSERT INTO entities (kind, key, first_ns, last_ns) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) "
    "ON CONFLICT (kind, key) DO UPDATE SET "
    "first_ns = LEAST(entities.first_ns, excluded.first_ns), "
    "last_ns = GREATEST(entities.last_ns, excluded.last_ns)"
)
EVENT_COLUMNS = ", ".join(f"e.{column}" for column in SELECTED_COLUMNS)


def _span(span: TimeRange, conditions: Conditions, column: str) -> None:
    if span.start_ns is not None:
        conditions.add(f"{column} >= {conditions.param(span.start_ns)}")
    if span.end_ns is not None:
        conditions.add(f"{column} < {conditions.param(span.end_ns)}")


def _of(ref: EntityRef, conditions: Conditions, alias: str) -> None:
    conditions.add(f"{alias}.kind = {conditions.param(ref.kind.value)}")
    conditions.add(f"{alias}.key = {conditions.param(ref.key)}")


class PostgresEntityStore:
    def __init__(self, config: PostgresSection) -> None:
        self.config = config
        self._secrets = dsn_secrets(config.dsn)
        self.where = redacted(config.dsn, self._secrets)
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self.config.dsn,
                min_size=1,
                max_size=POOL_SIZE,
                timeout=self.config.connect_timeout_s,
                **session_options(self.config),
            )
        except (*DB_ERRORS, ValueError) as exc:
            error = redacted(f"{type(exc).__name__}: {exc}", self._secrets)
            raise SinkOpenError(f"entity graph in {self.where}: {error}") from None
        try:
            await pool.fetchval("SELECT 1 FROM entities LIMIT 1")
        except DB_ERRORS as exc:
            await pool.close()
            error = redacted(f"{type(exc).__name__}: {exc}", self._secrets)
            raise SinkOpenError(f"entity graph in {self.where}: {error}") from None
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def add(self, edges: Sequence[Edge]) -> None:
        # Shielded: a timed-out caller must not cut the transaction off mid-commit.
        await asyncio.shield(self._add(edges))

    async def _add(self, edges: Sequence[Edge]) -> None:
        ordered = sorted(edges, key=lambda e: (e.kind.value, e.key, e.ts_ns, e.event_id))
        entities = entity_rows(edges)
        edge_columns = [
            [e.kind.value for e in ordered],
            [e.key for e in ordered],
            [e.ts_ns for e in ordered],
            [e.event_id for e in ordered],
            [e.relation.value for e in ordered],
        ]
        entity_columns = [
            [e.kind.value for e in entities],
            [e.key for e in entities],
            [e.first_ns for e in entities],
            [e.last_ns for e in entities],
        ]
        try:
            async with self._open().acquire() as conn, conn.transaction():
                await conn.execute(INSERT_EDGES, *edge_columns)
                await conn.execute(UPSERT_ENTITIES, *entity_columns)
        except DB_ERRORS as exc:
            error = redacted(f"{type(exc).__name__}: {exc}", self._secrets)
            raise SinkWriteError(f"entity graph write failed: {error}") from exc

    async def entity(self, ref: EntityRef) -> Entity | None:
        rows = await self._read(
            "SELECT first_ns, last_ns FROM entities WHERE kind = $1 AND key = $2",
            [ref.kind.value, ref.key],
        )
        return Entity(ref.kind, ref.key, rows[0][0], rows[0][1]) if rows else None

    async def count(self, ref: EntityRef, span: TimeRange) -> int:
        conditions = Conditions()
        _of(ref, conditions, "x")
        _span(span, conditions, "x.ts_ns")
        rows = await self._read(
            f"SELECT COUNT(*) FROM entity_events x WHERE {conditions.sql()}", conditions.params
        )
        return int(rows[0][0])

    async def events(self, ref: EntityRef, span: TimeRange, page: PageRequest) -> QueryPage:
        conditions = Conditions()
        _of(ref, conditions, "x")
        _span(span, conditions, "x.ts_ns")
        # The ts bounds let the planner skip the day partitions outside the range.
        if span.start_ns is not None:
            conditions.add(f"e.ts >= {conditions.param(ns_to_timestamptz(span.start_ns))}")
        if span.end_ns is not None:
            conditions.add(f"e.ts <= {conditions.param(ns_to_timestamptz(span.end_ns))}")
        if page.after is not None:
            after_ts = conditions.param(page.after.ts_ns)
            after_id = conditions.param(page.after.event_id)
            conditions.add(f"(x.ts_ns, x.event_id) < ({after_ts}, {after_id})")
        limit = conditions.param(page.size + 1)
        rows = await self._read(
            f"SELECT {EVENT_COLUMNS} FROM entity_events x JOIN events e "
            "ON e.ts_ns = x.ts_ns AND e.event_id = x.event_id "
            f"WHERE {conditions.sql()} ORDER BY x.ts_ns DESC, x.event_id DESC LIMIT {limit}",
            conditions.params,
        )
        events = [stored_event(row).event for row in rows[: page.size]]
        if len(rows) <= page.size:
            return QueryPage(events, None)
        return QueryPage(events, PagePosition(rows[page.size - 1][2], events[-1].id))

    async def neighbors(self, ref: EntityRef, span: TimeRange, limit: int) -> list[Neighbor]:
        conditions = Conditions()
        _of(ref, conditions, "x")
        _span(span, conditions, "x.ts_ns")
        conditions.add("NOT (n.kind = x.kind AND n.key = x.key)")
        rows = await self._read(
            "SELECT n.kind, n.key, COUNT(*) AS shared, en.first_ns, en.last_ns "
            "FROM entity_events x JOIN entity_events n ON n.event_id = x.event_id "
            "JOIN entities en ON en.kind = n.kind AND en.key = n.key "
            f"WHERE {conditions.sql()} GROUP BY n.kind, n.key, en.first_ns, en.last_ns "
            f"ORDER BY shared DESC, n.kind, n.key LIMIT {conditions.param(limit)}",
            conditions.params,
        )
        return [
            Neighbor(Entity(EntityKind(kind), key, first_ns, last_ns), shared)
            for kind, key, shared, first_ns, last_ns in rows
        ]

    async def _read(self, sql: str, params: Sequence[Any]) -> list[asyncpg.Record]:
        try:
            rows: list[asyncpg.Record] = await self._open().fetch(sql, *params)
        except DB_ERRORS as exc:
            error = redacted(f"{type(exc).__name__}: {exc}", self._secrets)
            raise SinkError(f"entity graph read failed: {error}") from exc
        return rows

    def _open(self) -> asyncpg.Pool:
        if self._pool is None:
            raise SinkError(f"entity graph in {self.where} is not open")
        return self._pool
