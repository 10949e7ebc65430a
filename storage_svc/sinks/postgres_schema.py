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
# A small group of batches in one statement, so one round trip (storage and the database
# each wake once instead of seven times). Per write (w_*): ledger key, agent, seq and event
# count; per event (e_*): the write it belongs to (1-based) and its columns. The same steps
# as the sink's COPY transaction: claim the batch ids (a batch_id given twice is claimed by
# its first write), claim the event ids of the claimed writes (first occurrence wins; keys
# are claimed in sorted order, as every writer does, so racing writers cannot deadlock),
# number the new events under SEQ_LOCK (held to commit, so commits become visible in seq
# order) and insert them, then correct the ledger of writes that skipped stored ids.
STORE_BATCHES_FUNCTION = """
CREATE FUNCTION store_batches(
    w_batch_ids text[], w_agent_ids text[], w_seqs bigint[], w_counts integer[],
    e_writes integer[], e_ids text[], e_times timestamptz[], e_times_ns bigint[],
    e_observed_ns bigint[], e_types text[], e_sources text[], e_hosts text[],
    e_services text[], e_severities smallint[], e_messages text[], e_attributes text[],
    e_tags text[], e_raws bytea[], seq_lock bigint, channel text,
    OUT fresh_writes integer[], OUT kept integer[], OUT last_seq bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    claimed text[];
    new_count integer;
BEGIN
    WITH inserted AS (
        INSERT INTO batches (batch_id, agent_id, seq, event_count, written, duplicates)
        SELECT b, a, s, n, n, 0 FROM unnest(w_batch_ids, w_agent_ids, w_seqs, w_counts)
            AS t(b, a, s, n) ORDER BY b
        ON CONFLICT DO NOTHING RETURNING batch_id)
    SELECT array_agg(batch_id) INTO claimed FROM inserted;
    SELECT COALESCE(array_agg(w ORDER BY w), '{}') INTO fresh_writes FROM (
        SELECT min(o)::integer AS w FROM unnest(w_batch_ids) WITH ORDINALITY AS t(b, o)
        WHERE b = ANY(claimed) GROUP BY b) AS firsts;
    WITH inserted AS (
        INSERT INTO event_ids (event_id, ts)
        SELECT i, t FROM unnest(e_ids, e_times, e_writes) WITH ORDINALITY AS e(i, t, w, o)
        WHERE w = ANY(fresh_writes) ORDER BY i
        ON CONFLICT DO NOTHING RETURNING event_id)
    SELECT COALESCE(array_agg(o ORDER BY o), '{}') INTO kept FROM (
        SELECT min(e.o)::integer AS o
        FROM unnest(e_ids, e_writes) WITH ORDINALITY AS e(i, w, o)
        JOIN inserted ON inserted.event_id = e.i
        WHERE e.w = ANY(fresh_writes) GROUP BY e.i) AS firsts;
    new_count := cardinality(kept);
    last_seq := 0;
    IF new_count > 0 THEN
        PERFORM pg_advisory_xact_lock(seq_lock);
        last_seq := setval('event_sequence', nextval('event_sequence') + new_count - 1);
        PERFORM pg_notify(channel, last_seq::text);
        INSERT INTO events (seq, event_id, ts, ts_ns, observed_ns, type, source, host,
                            service, severity, message, attributes, tags, raw, batch_id)
        SELECT last_seq - new_count + k.n, e.i, e.t, e.t_ns, e.obs, e.ty, e.src, e.h,
               e.svc, e.sev, e.msg, e.attrs::jsonb, e.tg::jsonb, e.r, w_batch_ids[e.w]
        FROM unnest(kept) WITH ORDINALITY AS k(o, n)
        JOIN unnest(e_ids, e_times, e_times_ns, e_observed_ns, e_types, e_sources, e_hosts,
                    e_services, e_severities, e_messages, e_attributes, e_tags, e_raws,
                    e_writes) WITH ORDINALITY
            AS e(i, t, t_ns, obs, ty, src, h, svc, sev, msg, attrs, tg, r, w, o)
            ON e.o = k.o
        ORDER BY k.n;
    END IF;
    IF new_count < (SELECT COALESCE(sum(w_counts[w]), 0) FROM unnest(fresh_writes) AS f(w)) THEN
        UPDATE batches SET written = COALESCE(c.stored, 0),
                           duplicates = w_counts[f.w] - COALESCE(c.stored, 0)
        FROM unnest(fresh_writes) AS f(w)
        LEFT JOIN (SELECT e.w, count(*)::integer AS stored
                   FROM unnest(e_writes) WITH ORDINALITY AS e(w, o)
                   JOIN unnest(kept) AS k(o) ON k.o = e.o GROUP BY e.w) AS c ON c.w = f.w
        WHERE batches.batch_id = w_batch_ids[f.w] AND COALESCE(c.stored, 0) < w_counts[f.w];
    END IF;
END
$$
"""
SCHEMA_VERSION = 3


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


async def _schema_v3(conn: asyncpg.Connection) -> None:
    """store_batches: small groups of batches written in one round trip."""
    await conn.execute(STORE_BATCHES_FUNCTION)


MIGRATIONS = (_schema_v1, _schema_v2, _schema_v3)
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
