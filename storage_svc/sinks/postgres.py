"""The PostgreSQL primary sink: an asyncpg pool, binary COPY, a batch ledger.

One transaction per group of batches (group commit): claim the batch_ids in the ledger (a
batch seen before is a duplicate and writes nothing), claim the event ids in ``event_ids``
(ids stored before are skipped), then COPY the new events, dead letters and quarantined
events. A small group without refusals does the same in one call of the schema's
``store_batches`` function: one round trip instead of seven. Concurrent writers of one
batch_id or one event id wait on the primary key and then find it taken.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg  # no stubs or py.typed (asyncpg 0.32)

from gen.edgebot.v1 import event_pb2
from mesh.coalescing import Coalescer
from mesh.timeutil import NS_PER_S, now_ns
from storage_svc import metrics
from storage_svc.config import PostgresSection
from storage_svc.query import (
    BucketCount,
    EventFilter,
    GroupBy,
    PagePosition,
    PageRequest,
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
from storage_svc.sinks.postgres_feed import CommitFeed, notify_channel
from storage_svc.sinks.postgres_rows import (
    DEAD_LETTER_COLUMNS,
    EVENT_COLUMNS,
    QUARANTINE_COLUMNS,
    RECORD_ID,
    RECORD_TS,
    SELECT_EVENT,
    Conditions,
    Record,
    Statement,
    aggregate_statement,
    dead_letter_records,
    event_record,
    events_after_statement,
    ns_to_timestamptz,
    page_statement,
    quarantine_records,
    stored_event,
)
from storage_svc.sinks.postgres_schema import (
    DAY,
    SCHEMA_VERSION,
    SEQ_LOCK,
    Partitioning,
    create_partitions,
    drop_chunks_before,
    drop_partitions_before,
    migrate,
    partitioning,
)

log = logging.getLogger(__name__)
HOUR_NS = 3600 * NS_PER_S
# InternalClientError: asyncpg's state after the server vanished mid-COPY, for one.
DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# Keys are claimed in sorted order, by every writer (store_batches too): two transactions
# waiting on each other's uncommitted keys would otherwise deadlock.
CLAIM_BATCHES = (
    "INSERT INTO batches (batch_id, agent_id, seq, event_count, written, duplicates) "
    "SELECT b, a, s, n, n, 0 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::integer[]) "
    "AS t(b, a, s, n) ORDER BY b ON CONFLICT DO NOTHING RETURNING batch_id"
)
CLAIM_EVENT_IDS = (
    "INSERT INTO event_ids (event_id, ts) SELECT * FROM unnest($1::text[], $2::timestamptz[]) "
    "AS t(i, ts) ORDER BY i ON CONFLICT DO NOTHING RETURNING event_id"
)
# Held from numbering until commit, so commits become visible in seq order (the tail
# cursor relies on it); taken last, after every row lock, so it cannot deadlock.
RESERVE_SEQS = (
    "WITH locked AS (SELECT pg_advisory_xact_lock($1)), "
    "reserved AS (SELECT setval('event_sequence', nextval('event_sequence') + $2 - 1) AS last "
    "FROM locked) "
    "SELECT last, pg_notify($3, last::text) FROM reserved"
)
ID_COLUMNS = ("event_id", "ts")
MAX_CLAIMED_BY_INSERT = 256
"""Batches up to this many events claim their ids with one INSERT rather than a COPY."""
STORE_BATCHES = (
    "SELECT fresh_writes, kept, last_seq FROM store_batches("
    + ", ".join(f"${n}" for n in range(1, 21))
    + ")"
)
UPDATE_LEDGER = "UPDATE batches SET written = $1, duplicates = $2 WHERE batch_id = $3"
TOTALS = """SELECT
    (SELECT COALESCE(SUM(written), 0) FROM batches),
    (SELECT COUNT(*) FROM events WHERE ts >= $1 AND ts_ns >= $2),
    (SELECT COALESCE(SUM(duplicates), 0) FROM batches),
    (SELECT COUNT(*) FROM batches),
    (SELECT COUNT(*) FROM dead_letters),
    (SELECT COUNT(*) FROM quarantine)"""


def dsn_secrets(dsn: str) -> list[str]:
    """The passwords a DSN holds, in its user info or as a ?password= parameter."""
    parts = urlsplit(dsn)
    found = [parts.password] if parts.password else []
    found += [value for key, value in parse_qsl(parts.query) if key == "password" and value]
    return found


def redacted(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def session_options(config: PostgresSection) -> dict[str, Any]:
    """asyncpg connection options of every EdgeBot session: timeouts, schema, UTC."""
    return {
        "command_timeout": config.command_timeout_s,
        "server_settings": {
            "application_name": "edgebot-storage",
            # public last: where extensions such as timescaledb put their functions.
            "search_path": f"{config.schema_name}, public",
            "statement_timeout": str(config.statement_timeout_ms),
            "gin_pending_list_limit": str(config.gin_pending_list_limit_kb),
            "timezone": "UTC",
        },
    }


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


Stored = tuple[int, int, frozenset[str]]
"""Events a batch added, the last seq its transaction used (0: none), ids it skipped."""


@dataclass(frozen=True)
class PendingWrite:
    batch: BatchWrite
    records: list[Record]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset query when a connection returns to the pool (asyncpg's default costs a
    round trip per write): the sink takes only transaction-level advisory locks, never
    LISTENs, SETs or keeps cursors on a pool connection, and asyncpg itself still rolls
    back a transaction left open."""


def _write_alone(error: BaseException) -> bool:
    """A group commit that failed in the database: each batch then tries alone, so one
    batch's fault is not every batch's."""
    return isinstance(error, asyncpg.PostgresError)


class PostgresSink:
    name = "postgres"
    kind = "postgres"
    primary = True

    def __init__(
        self,
        config: PostgresSection,
        on_commit: CommitListener,
        listening: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self._secrets = dsn_secrets(config.dsn)
        self.where = redacted(config.dsn, self._secrets)
        self._pool: asyncpg.Pool | None = None
        self._channel = notify_channel(config.schema_name)
        self._feed = CommitFeed(
            self._channel,
            self._connect,
            self.events_after,
            self.last_seq,
            on_commit,
            listening,
            config.tail_poll_interval_s,
        )
        self._partitioning = Partitioning.NATIVE
        self._days: set[dt.date] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._health = Health.DOWN
        self._written = 0
        self._failed = 0
        self._last_error = ""
        self._group: Coalescer[PendingWrite, Stored | None] = Coalescer(
            self._commit,
            lambda write: len(write.records),
            config.max_group_events,
            config.max_concurrent_writes,
            _write_alone,
        )

    @property
    def writes_waiting(self) -> int:
        """Batches queued for a write transaction (all max_concurrent_writes are busy)."""
        return len(self._group.waiting)

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.config.dsn, timeout=self.config.connect_timeout_s, **self._session()
        )
        return conn

    def _session(self) -> dict[str, Any]:
        return session_options(self.config)

    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self.config.dsn,
                min_size=self.config.pool_min_size,
                max_size=self.config.pool_max_size,
                timeout=self.config.connect_timeout_s,
                reset=_keep_session,
                **self._session(),
            )
        except (*DB_ERRORS, ValueError) as exc:
            self._last_error = redacted(f"{type(exc).__name__}: {exc}", self._secrets)
            # Not chained: the original message may quote the DSN with its password.
            raise SinkOpenError(
                f"cannot connect to PostgreSQL at {self.where}: {self._last_error}"
            ) from None
        try:
            found, cursor = await self._prepare(pool)
        except (*DB_ERRORS, RuntimeError) as exc:
            await pool.close()
            self._last_error = redacted(f"{type(exc).__name__}: {exc}", self._secrets)
            raise SinkOpenError(
                f"cannot prepare PostgreSQL database {self.where}: {self._last_error}"
            ) from exc
        self._pool = pool
        self._feed.start(cursor)
        self._maintenance = asyncio.create_task(self._maintain_forever(), name="pg-maintenance")
        self._health = Health.UP
        log.info(
            "postgres sink open",
            extra={
                "database": self.where,
                "partitioning": self._partitioning.value,
                "schema_from": found,
                "schema": SCHEMA_VERSION,
            },
        )

    async def _prepare(self, pool: asyncpg.Pool) -> tuple[int, int]:
        """Migrate, create the partitions ahead; the schema version found and newest seq."""
        async with pool.acquire() as conn:
            found = await migrate(conn, self.config.schema_name)
            self._partitioning = await partitioning(conn)
            await self._create_ahead(conn, utc_today())
            cursor: int = await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM events")
        return found, cursor

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
            self._maintenance = None
        await self._feed.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
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
        # Shielded: a caller that goes away must not cut a transaction off mid-commit.
        return await asyncio.shield(self._write(batch))

    async def _write(self, batch: BatchWrite) -> WriteOutcome:
        started = time.perf_counter()
        pool = self._open_pool()
        # Built before taking a connection, so that this CPU work overlaps the COPY of
        # batches written at the same time.
        records = [event_record(event, batch.batch_id) for event in batch.events]
        try:
            await self._ensure_partitions(pool, records)
            stored = await self._group.submit(PendingWrite(batch, records))
        except DB_ERRORS as exc:
            raise self._write_failed(batch, exc) from exc
        seconds = time.perf_counter() - started
        self._health = Health.UP
        if stored is None:
            return WriteOutcome(True, 0, len(batch.events), seconds)
        written, last_seq, skipped = stored
        self._written += written
        if written:
            self._feed.committed(last_seq)
        return WriteOutcome(False, written, len(batch.events) - written, seconds, skipped)

    async def _commit(self, writes: list[PendingWrite]) -> list[Stored | None]:
        metrics.GROUP_COMMIT_BATCHES.observe(len(writes))
        async with self._open_pool().acquire() as conn:
            if _stored_by_one_statement(writes):
                return await _one_statement(conn, writes, self._channel)
            return await _transaction(conn, writes, self._channel)

    async def _ensure_partitions(self, pool: asyncpg.Pool, records: list[Record]) -> None:
        if self._partitioning is not Partitioning.NATIVE:
            return
        days = {record[RECORD_TS].date() for record in records}
        if days <= self._days:
            return
        async with pool.acquire() as conn:
            self._days = await create_partitions(conn, days | self._days)

    def _write_failed(self, batch: BatchWrite, exc: BaseException) -> SinkWriteError:
        self._failed += 1
        self._health = Health.DEGRADED
        self._last_error = redacted(f"{type(exc).__name__}: {exc}", self._secrets)
        if isinstance(exc, asyncpg.CheckViolationError):
            # Most likely retention dropped a day partition this batch needs: look again.
            self._days = set()
        log.warning("batch %s not written, rolled back: %s", batch.batch_id, self._last_error)
        return SinkWriteError(
            f"postgres write of batch {batch.batch_id!r} failed and was rolled back "
            f"({self._last_error}); retry the batch"
        )

    async def maintain(self, today: dt.date) -> list[str]:
        """Create the partitions ahead of ``today``, apply retention; what was dropped."""
        async with self._open_pool().acquire() as conn:
            await self._create_ahead(conn, today)
            if self.config.retention_days is None:
                return []
            cutoff = today - dt.timedelta(days=self.config.retention_days)
            if self._partitioning is Partitioning.TIMESCALE:
                return await drop_chunks_before(conn, cutoff)
            dropped = await drop_partitions_before(conn, cutoff)
        self._days = {day for day in self._days if day >= cutoff}
        if dropped:
            log.info("retention dropped partitions", extra={"partitions": dropped})
        return dropped

    async def _create_ahead(self, conn: asyncpg.Connection, today: dt.date) -> None:
        if self._partitioning is Partitioning.NATIVE:
            ahead = _days_between(today - DAY, today + self.config.partitions_ahead_days * DAY)
            self._days = await create_partitions(conn, ahead)

    async def _maintain_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.maintenance_interval_s)
            try:
                await self.maintain(utc_today())
            except (*DB_ERRORS, SinkError) as exc:
                log.warning("postgres maintenance failed, retrying later: %s", exc)

    async def query(self, selection: EventFilter, page: PageRequest) -> QueryPage:
        rows = await self._run(page_statement(selection, page))
        events = [stored_event(row).event for row in rows[: page.size]]
        if len(rows) <= page.size:
            return QueryPage(events, None)
        last = events[-1]
        return QueryPage(events, PagePosition(rows[page.size - 1][2], last.id))

    async def aggregate(
        self, selection: EventFilter, bucket_ns: int, group_by: GroupBy
    ) -> list[BucketCount]:
        rows = await self._run(aggregate_statement(selection, bucket_ns, group_by))
        return [BucketCount(start, str(key), count) for start, key, count in rows]

    async def events_after(self, seq: int, selection: EventFilter, limit: int) -> list[StoredEvent]:
        rows = await self._run(events_after_statement(seq, selection, limit))
        return [stored_event(row) for row in rows]

    async def last_seq(self) -> int:
        rows = await self._read("SELECT COALESCE(MAX(seq), 0) FROM events", [])
        return int(rows[0][0])

    async def totals(self) -> StoreTotals:
        since_ns = now_ns() - HOUR_NS
        rows = await self._read(TOTALS, [ns_to_timestamptz(since_ns), since_ns])
        return StoreTotals(*(int(value) for value in rows[0]))

    async def batch_events(
        self, batch_id: str, start_ns: int, end_ns: int, limit: int
    ) -> list[event_pb2.Event]:
        conditions = Conditions()
        # The ts bounds let the planner look at the batch's partitions only.
        conditions.add(f"ts >= {conditions.param(ns_to_timestamptz(start_ns))}")
        conditions.add(f"ts <= {conditions.param(ns_to_timestamptz(end_ns))}")
        conditions.add(f"batch_id = {conditions.param(batch_id)}")
        sql = (
            f"{SELECT_EVENT} WHERE {conditions.sql()} ORDER BY seq LIMIT {conditions.param(limit)}"
        )
        return [stored_event(row).event for row in await self._read(sql, conditions.params)]

    async def _run(self, statement: Statement) -> list[asyncpg.Record]:
        return await self._read(statement.sql, statement.params)

    async def _read(self, sql: str, params: Sequence[Any]) -> list[asyncpg.Record]:
        """Rows of one read, planned for its own parameters.

        asyncpg prepares every statement once per connection, and after five executions
        PostgreSQL may keep a generic plan for it. For ``attributes @> $1`` that plan walks
        the time index and filters every row, so a rare value (the reason to ask) cost
        seven times the GIN index's plan, growing with the table. Planning each read
        costs well under a millisecond; the writes keep their cached plans.
        """
        pool = self._open_pool()
        try:
            async with pool.acquire() as conn, conn.transaction(readonly=True):
                await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                rows: list[asyncpg.Record] = await conn.fetch(sql, *params)
        except DB_ERRORS as exc:
            raise SinkError(f"postgres read failed: {type(exc).__name__}: {exc}") from exc
        return rows

    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise SinkError(f"postgres database {self.where} is not open")
        return self._pool


def _days_between(first: dt.date, last: dt.date) -> Iterable[dt.date]:
    day = first
    while day <= last:
        yield day
        day += DAY


async def _transaction(
    conn: asyncpg.Connection, writes: list[PendingWrite], channel: str
) -> list[Stored | None]:
    """Each write's events, ledger entry and refusals, in one transaction.

    Per write: None when its batch_id is in the ledger (or earlier in ``writes``), else
    how many events it added, the last seq the transaction used and the ids it skipped as
    stored before."""
    async with conn.transaction():
        claimed = await _claim_batches(conn, [write.batch for write in writes])
        new = [write for write, fresh_batch in zip(writes, claimed, strict=True) if fresh_batch]
        records = [record for write in new for record in write.records]
        fresh = await _claim_new_events(conn, records)
        last = 0
        if fresh:
            last = await conn.fetchval(RESERVE_SEQS, SEQ_LOCK, len(fresh), channel)
            numbered = [(seq, *record) for seq, record in enumerate(fresh, last - len(fresh) + 1)]
            await conn.copy_records_to_table("events", records=numbered, columns=EVENT_COLUMNS)
        await _copy_refused(conn, [write.batch for write in new])
        kept_ids = None if fresh is records else {id(record) for record in fresh}
        stored: list[Stored | None] = []
        for write, fresh_batch in zip(writes, claimed, strict=True):
            stored.append(await _account(conn, write, kept_ids, last) if fresh_batch else None)
    return stored


def _stored_by_one_statement(writes: list[PendingWrite]) -> bool:
    """Small groups without refusals go through ``store_batches``: one round trip. A large
    one is cheaper as COPY, whose extra round trips it amortises."""
    if sum(len(write.records) for write in writes) > MAX_CLAIMED_BY_INSERT:
        return False
    return not any(write.batch.dead_letters or write.batch.quarantined for write in writes)


async def _one_statement(
    conn: asyncpg.Connection, writes: list[PendingWrite], channel: str
) -> list[Stored | None]:
    """What ``_transaction`` does, as one call of the ``store_batches`` function."""
    positions = [n for n, write in enumerate(writes, 1) for _ in write.records]
    columns = list(zip(*(r for write in writes for r in write.records), strict=True)) or [
        () for _ in EVENT_COLUMNS[1:]
    ]
    row = await conn.fetchrow(
        STORE_BATCHES,
        *_ledger_columns([write.batch for write in writes]),
        positions,
        *columns[:-1],  # the batch id of each event is the write's
        SEQ_LOCK,
        channel,
    )
    fresh_writes, kept, last = set(row[0]), set(row[1]), row[2]
    stored: list[Stored | None] = []
    first = 1
    for n, write in enumerate(writes, 1):
        ordinals = range(first, first + len(write.records))
        first += len(write.records)
        if n not in fresh_writes:
            stored.append(None)
            continue
        ids = [record[RECORD_ID] for record in write.records]
        stored_ids = [ids[o - ordinals.start] for o in ordinals if o in kept]
        stored.append((len(stored_ids), last, frozenset(ids) - frozenset(stored_ids)))
    return stored


async def _account(
    conn: asyncpg.Connection, write: PendingWrite, kept_ids: set[int] | None, last: int
) -> Stored:
    """What ``write`` stored; ``kept_ids`` (object ids of the fresh records) is None when
    every record was."""
    if kept_ids is None:
        return len(write.records), last, frozenset()
    kept = [record for record in write.records if id(record) in kept_ids]
    duplicates = len(write.batch.events) - len(kept)
    if not duplicates:
        return len(kept), last, frozenset()
    await conn.execute(UPDATE_LEDGER, len(kept), duplicates, write.batch.batch_id)
    skipped = frozenset(r[RECORD_ID] for r in write.records) - {r[RECORD_ID] for r in kept}
    return len(kept), last, skipped


def _ledger_columns(batches: list[BatchWrite]) -> tuple[list[str], list[str], list[int], list[int]]:
    """The ledger's batch_id, agent_id, seq and event count columns, one entry per batch."""
    return (
        [b.batch_id for b in batches],
        [b.agent_id for b in batches],
        [b.seq for b in batches],
        [len(b.events) for b in batches],
    )


async def _claim_batches(conn: asyncpg.Connection, batches: list[BatchWrite]) -> list[bool]:
    """Per batch, whether this transaction put its batch_id in the ledger (a batch_id
    given twice is claimed by its first write)."""
    rows = await conn.fetch(CLAIM_BATCHES, *_ledger_columns(batches))
    unclaimed = {row[0] for row in rows}
    claimed = []
    for batch in batches:
        claimed.append(batch.batch_id in unclaimed)
        unclaimed.discard(batch.batch_id)
    return claimed


async def _claim_new_events(conn: asyncpg.Connection, records: list[Record]) -> list[Record]:
    """The events whose ids were not stored before, first occurrence of each, in order.

    A large batch usually has no id seen before and a COPY claims them all; if one was,
    the savepoint is rolled back and a slower INSERT .. ON CONFLICT claims the others. A
    small batch goes straight to the INSERT: one round trip instead of four.
    """
    if not records:
        return records
    id_rows = sorted((record[RECORD_ID], record[RECORD_TS]) for record in records)
    if len(records) > MAX_CLAIMED_BY_INSERT:
        try:
            async with conn.transaction():
                await conn.copy_records_to_table("event_ids", records=id_rows, columns=ID_COLUMNS)
            return records
        except asyncpg.UniqueViolationError:
            pass
    ids, times = zip(*id_rows, strict=True)
    claimed = {row[0] for row in await conn.fetch(CLAIM_EVENT_IDS, ids, times)}
    if len(claimed) == len(records):
        return records
    fresh: list[Record] = []
    for record in records:
        if record[RECORD_ID] in claimed:
            claimed.discard(record[RECORD_ID])
            fresh.append(record)
    return fresh


async def _copy_refused(conn: asyncpg.Connection, batches: list[BatchWrite]) -> None:
    letters = [record for batch in batches for record in dead_letter_records(batch)]
    if letters:
        await conn.copy_records_to_table(
            "dead_letters", records=letters, columns=DEAD_LETTER_COLUMNS
        )
    quarantined = [record for batch in batches for record in quarantine_records(batch)]
    if quarantined:
        await conn.copy_records_to_table(
            "quarantine", records=quarantined, columns=QUARANTINE_COLUMNS
        )
