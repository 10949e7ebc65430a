"""PostgreSQL helpers the benchmarks share: a throwaway server, the storage schema, raw COPY.

The server is the test suite's (tests/storage_svc/pg_server.py): its own data dir and port,
thrown away at the end. ``start_server(durable=True)`` turns fsync and full-page writes
back on, so a commit the benchmark counts is on disk, as an acknowledged batch must be.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "storage_svc"), str(ROOT / "tests")]

import pg_server  # noqa: E402
from pg_server import PgSchema, PgServer  # noqa: E402

from gen.edgebot.v1 import event_pb2  # noqa: E402
from storage_svc.config import PostgresSection  # noqa: E402
from storage_svc.sinks.postgres import PostgresSink  # noqa: E402
from storage_svc.sinks.postgres_rows import EVENT_COLUMNS, Record, event_record  # noqa: E402

__all__ = ["EVENT_COLUMNS", "PgSchema", "PgServer", "Record"]


def start_server(durable: bool) -> PgServer:
    if durable:
        # The suite runs without fsync for speed; a benchmark of durable acks may not.
        # A new cluster has no WAL segments to recycle, so the backend that fills one
        # writes the next 16 MB of zeros before its commit (a ~50 ms stall every ~2 s at
        # 5,000 events/s); a server that has run through checkpoints reuses old segments
        # instead. wal_init_zero off gives the fresh server that steady state.
        pg_server.SETTINGS.update(fsync="on", full_page_writes="on", wal_init_zero="off")
    server = PgServer.create()
    server.start()
    return server


async def prepared_schema(server: PgServer) -> PgSchema:
    """A fresh schema with the storage service's tables, migrated by the sink itself."""
    store = server.fresh_schema()
    sink = PostgresSink(
        PostgresSection(dsn=store.dsn, schema_name=store.schema), on_commit=lambda _: None
    )
    await sink.open()
    await sink.close()
    return store


def event_records(events: Sequence[event_pb2.Event], size: int) -> list[list[Record]]:
    """COPY records of ``events`` (seq first, as storage numbers them) in chunks of ``size``."""
    records = [(seq, *event_record(event, "bench-batch")) for seq, event in enumerate(events, 1)]
    return [records[i : i + size] for i in range(0, len(records), size)]


async def raw_copy_rate(
    store: PgSchema, chunks: list[list[Record]], columns: Sequence[str], writers: int = 1
) -> float:
    """Rows/s of binary COPY, one chunk per transaction, ``writers`` connections at once."""
    connections = [await store.connect() for _ in range(writers)]
    queue = list(reversed(chunks))

    async def writer(conn: asyncpg.Connection) -> None:
        while queue:
            await conn.copy_records_to_table("events", records=queue.pop(), columns=columns)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(writer(conn) for conn in connections))
        elapsed = time.perf_counter() - started
    finally:
        for conn in connections:
            await conn.close()
    return sum(len(records) for records in chunks) / elapsed


async def server_version(server: PgServer) -> str:
    conn = await asyncpg.connect(server.dsn())
    try:
        version: str = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return f"PostgreSQL {version}"


async def checkpoint(server: PgServer) -> None:
    """Write out what earlier parts left dirty, so their checkpoint does not run during the
    next measured phase (the limit part alone writes over a GB of WAL)."""
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


@dataclass(frozen=True)
class RowCount:
    rows: int
    distinct_ids: int


async def count_events(store: PgSchema) -> RowCount:
    conn = await store.connect()
    try:
        rows, distinct = await conn.fetchrow(
            "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events"
        )
    finally:
        await conn.close()
    return RowCount(rows, distinct)
