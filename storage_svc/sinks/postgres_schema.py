"""The PostgreSQL schema as numbered migrations, and the day partitions of ``events``.

Migrations run at open, one transaction per step, each under a transaction-level advisory
lock, so replicas starting together apply every step exactly once. ``events`` is a
TimescaleDB hypertable with 1-day chunks when that extension can be created, otherwise a
table RANGE-partitioned by day on ``ts`` whose partitions are created ahead of time and on
demand (there is no DEFAULT partition: a day's partition can then always be created later).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from enum import StrEnum

import asyncpg  # no stubs or py.typed (asyncpg 0.32)

log = logging.getLogger(__name__)

# Arbitrary constants naming this schema's advisory locks (pg_advisory_xact_lock keys).
MIGRATION_LOCK = 0x45_44_47_45_01
PARTITION_LOCK = 0x45_44_47_45_02
SEQ_LOCK = 0x45_44_47_45_03

PARTITION_PREFIX = "events_p"
DAY = dt.timedelta(days=1)


class Partitioning(StrEnum):
    NATIVE = "native"
    TIMESCALE = "timescale"


# ts is the event time truncated to microseconds (partitioning, humans, Grafana); ts_ns is
# the exact time that filters, ordering and buckets use. COLLATE "C" orders event ids
# bytewise, as SQLite does.
EVENTS_COLUMNS = """
    seq bigint NOT NULL,
    event_id text COLLATE "C" NOT NULL,
    ts timestamptz NOT NULL,
    ts_ns bigint NOT NULL,
    observed_ns bigint,
    type text NOT NULL,
    source text NOT NULL,
    host text NOT NULL,
    service text NOT NULL,
    severity smallint,
    message text NOT NULL,
    attributes jsonb NOT NULL,
    tags jsonb NOT NULL,
    raw bytea,
    batch_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
"""
EVENTS_INDEXES = (
    "CREATE INDEX events_time ON events (ts_ns, event_id)",
    "CREATE INDEX events_seq ON events (seq)",
    "CREATE INDEX events_type_time ON events (type, ts_ns DESC)",
    "CREATE INDEX events_source_time ON events (source, ts_ns DESC)",
    "CREATE INDEX events_host_time ON events (host, ts_ns DESC)",
    "CREATE INDEX events_service_time ON events (service, ts_ns DESC)",
    "CREATE INDEX events_attributes ON events USING gin (attributes jsonb_path_ops)",
    "CREATE INDEX events_tags ON events USING gin (tags jsonb_path_ops)",
)
LEDGER_TABLES = (
    "CREATE SEQUENCE event_sequence AS bigint",
    # Event-id uniqueness across all partitions (a partitioned table's unique index would
    # have to include ts); ts lets retention forget the ids of dropped events.
    'CREATE TABLE event_ids (event_id text COLLATE "C" PRIMARY KEY, ts timestamptz NOT NULL)',
    """CREATE TABLE batches (
        batch_id text PRIMARY KEY,
        agent_id text NOT NULL,
        seq bigint NOT NULL,
        event_count integer NOT NULL,
        written integer NOT NULL,
        duplicates integer NOT NULL,
        stored_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE dead_letters (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_index integer NOT NULL,
        event_id text NOT NULL,
        field text NOT NULL,
        reason text NOT NULL,
        stage text NOT NULL,
        agent_id text NOT NULL,
        batch_id text NOT NULL,
        event bytea NOT NULL,
        stored_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE quarantine (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_index integer NOT NULL,
        event_id text NOT NULL,
        processor text NOT NULL,
        reason text NOT NULL,
        agent_id text NOT NULL,
        batch_id text NOT NULL,
        event bytea NOT NULL,
        stored_at timestamptz NOT NULL DEFAULT now()
    )""",
)
ENTITY_TABLES = (
    """CREATE TABLE entities (
        kind text NOT NULL,
        key text COLLATE "C" NOT NULL,
        first_ns bigint NOT NULL,
        last_ns bigint NOT NULL,
        PRIMARY KEY (kind, key)
    )""",
    """CREATE TABLE entity_events (
        kind text NOT NULL,
        key text COLLATE "C" NOT NULL,
        ts_ns bigint NOT NULL,
        event_id text COLLATE "C" NOT NULL,
        relation text NOT NULL,
        PRIMARY KEY (kind, key, ts_ns, event_id)
    )""",
    "CREATE INDEX entity_events_event ON entity_events (event_id)",
)
SCHEMA_VERSION = 2


async def timescale_available(conn: asyncpg.Connection) -> bool:
    found = await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    return found is not None


async def _create_events(conn: asyncpg.Connection) -> Partitioning:
    if await timescale_available(conn):
        try:
            async with conn.transaction():
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                await conn.execute(f"CREATE TABLE events ({EVENTS_COLUMNS})")
                await conn.execute(
                    "SELECT create_hypertable('events', 'ts', "
                    "chunk_time_interval => INTERVAL '1 day')"
                )
            return Partitioning.TIMESCALE
        except asyncpg.PostgresError as exc:
            log.warning("timescaledb is available but unusable (%s); using native partitions", exc)
    await conn.execute(f"CREATE TABLE events ({EVENTS_COLUMNS}) PARTITION BY RANGE (ts)")
    return Partitioning.NATIVE


async def _schema_v1(conn: asyncpg.Connection) -> None:
    await _create_events(conn)
    for statement in (*EVENTS_INDEXES, *LEDGER_TABLES):
        await conn.execute(statement)


async def _schema_v2(conn: asyncpg.Connection) -> None:
    """The entity graph (the entities sink): entities and their edges to events."""
    for statement in ENTITY_TABLES:
        await conn.execute(statement)


MIGRATIONS = (_schema_v1, _schema_v2)
assert len(MIGRATIONS) == SCHEMA_VERSION


async def migrate(conn: asyncpg.Connection, schema: str) -> int:
    """Bring ``schema`` (the session's search_path) to SCHEMA_VERSION. Idempotent.

    Returns the version found.
    """
    found = await _apply_step(conn, schema, None)
    for version in range(found + 1, SCHEMA_VERSION + 1):
        await _apply_step(conn, schema, version)
    return found


async def _apply_step(conn: asyncpg.Connection, schema: str, version: int | None) -> int:
    """Apply ``version`` unless another process did; with None only read the version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current: int = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {current} is newer than this build knows "
                f"({SCHEMA_VERSION}); upgrade EdgeBot"
            )
        if version is not None and current < version:
            await MIGRATIONS[version - 1](conn)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
            log.info("postgres schema migrated", extra={"schema": version})
        return current


async def partitioning(conn: asyncpg.Connection) -> Partitioning:
    kind = await conn.fetchval("SELECT relkind::text FROM pg_class WHERE oid = 'events'::regclass")
    return Partitioning.NATIVE if kind == "p" else Partitioning.TIMESCALE


def partition_name(day: dt.date) -> str:
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def day_of_partition(name: str) -> dt.date | None:
    if not name.startswith(PARTITION_PREFIX):
        return None
    try:
        return dt.datetime.strptime(name.removeprefix(PARTITION_PREFIX), "%Y%m%d").date()
    except ValueError:
        return None


async def existing_partitions(conn: asyncpg.Connection) -> set[dt.date]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass"
    )
    days = (day_of_partition(row[0]) for row in rows)
    return {day for day in days if day is not None}


async def create_partitions(conn: asyncpg.Connection, days: Iterable[dt.date]) -> set[dt.date]:
    """Make sure a partition exists for each day; returns every day that has one.

    One transaction under an advisory lock: replicas creating the same day at once wait
    for each other instead of failing on the catalog's unique index.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        present = await existing_partitions(conn)
        for day in sorted(set(days) - present):
            start = dt.datetime.combine(day, dt.time(), dt.UTC)
            await conn.execute(
                f"CREATE TABLE {partition_name(day)} PARTITION OF events "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{(start + DAY).isoformat()}')"
            )
            present.add(day)
            log.info("postgres partition created", extra={"partition": partition_name(day)})
    return present


async def drop_partitions_before(conn: asyncpg.Connection, cutoff: dt.date) -> list[str]:
    """Drop every day partition wholly before ``cutoff``; their names."""
    dropped: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        for day in sorted(await existing_partitions(conn)):
            if day < cutoff:
                await conn.execute(f"DROP TABLE {partition_name(day)}")
                dropped.append(partition_name(day))
        await _forget_ids_before(conn, cutoff)
    return dropped


async def drop_chunks_before(conn: asyncpg.Connection, cutoff: dt.date) -> list[str]:
    """TimescaleDB: drop every chunk wholly before ``cutoff``; their names."""
    start = dt.datetime.combine(cutoff, dt.time(), dt.UTC)
    async with conn.transaction():
        rows = await conn.fetch("SELECT drop_chunks('events', older_than => $1)", start)
        await _forget_ids_before(conn, cutoff)
    return [str(row[0]) for row in rows]


async def _forget_ids_before(conn: asyncpg.Connection, cutoff: dt.date) -> None:
    """Forget the event ids and entity-graph edges of the events retention dropped, and the
    entities seen only before."""
    start = dt.datetime.combine(cutoff, dt.time(), dt.UTC)
    await conn.execute("DELETE FROM event_ids WHERE ts < $1", start)
    start_ns = int(start.timestamp()) * 1_000_000_000
    await conn.execute("DELETE FROM entity_events WHERE ts_ns < $1", start_ns)
    await conn.execute("DELETE FROM entities WHERE last_ns < $1", start_ns)
