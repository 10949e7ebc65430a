"""The anomaly service reading an existing ``log_entries`` table, as the original AI service did.

syslog-ng fills the table (device_id, device_ip, timestamp, log_level, process_name, message,
raw_message, structured_data, and optionally pushed_to_ai/pushed_at/push_attempts/
last_push_error). Every ``poll_interval_s`` the feed reads the rows it has not analysed yet,
oldest id first, hands them to every enabled agent as one window (Scheduler.analyze_events),
and then records its progress:

- **bookkeeping** — when the table has ``pushed_to_ai`` and ``write_dsn`` names a role that may
  update it: analysed rows get ``pushed_to_ai = true``, ``pushed_at``, ``push_attempts + 1``;
  a row that cannot be analysed gets ``push_attempts + 1`` and ``last_push_error``, and is not
  read again once ``max_push_attempts`` is reached;
- **high-water mark** — otherwise: the highest id analysed, kept in a local SQLite file, so a
  restart does not analyse the same rows again.

Reads go through a pool whose sessions are read-only (``default_transaction_read_only``),
whatever the role could do. Only the columns of ``columns`` are read; optional ones the table
lacks are left out unless the configuration names them explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import sqlite3
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from prometheus_client import Counter
from pydantic import Field, field_validator, model_validator

from anomaly_svc.agents.base import EventView
from mesh.backoff import backoff_delay
from mesh.config import Section
from mesh.timeutil import datetime_to_ns, now_ns

if TYPE_CHECKING:
    from anomaly_svc.scheduler import CycleResult

log = logging.getLogger(__name__)
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$"
TABLE_NAME = r"^([A-Za-z_][A-Za-z0-9_$]{0,62}\.)?[A-Za-z_][A-Za-z0-9_$]{0,62}$"
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
REQUIRED_COLUMNS = ("id", "timestamp", "message")
LEVELS = {
    "emerg": 0, "emergency": 0, "panic": 0, "alert": 1, "crit": 2, "critical": 2,
    "err": 3, "error": 3, "warning": 4, "warn": 4, "notice": 5, "info": 6,
    "informational": 6, "debug": 7,
}  # fmt: skip
_PID_SUFFIX = re.compile(r"\[\d+\]$")
NO_ROW_YET = -(2**63)
ORIGIN = "log_entries"

ROWS = Counter(
    "edgebot_anomaly_log_entries_rows_total",
    "Rows read from the log_entries table: analysed, or unusable (see last_push_error).",
    ["outcome"],
)
CYCLES = Counter(
    "edgebot_anomaly_log_entries_cycles_total",
    "Polls of the log_entries table: ok, idle (nothing new), deferred (machine busy), error.",
    ["result"],
)


class LogEntriesColumns(Section):
    """Which column of the table holds what; null leaves an optional field out."""

    id: str = Field(
        "id", pattern=IDENTIFIER, description="Increasing integer key: progress and identity."
    )
    timestamp: str = Field("timestamp", pattern=IDENTIFIER, description="When it was logged.")
    message: str = Field("message", pattern=IDENTIFIER, description="The log message.")
    raw_message: str | None = Field(
        "raw_message", pattern=IDENTIFIER, description="Used when the message is empty."
    )
    device_ip: str | None = Field(
        "device_ip", pattern=IDENTIFIER, description="The sending device; the event's host."
    )
    device_id: str | None = Field(
        "device_id", pattern=IDENTIFIER, description="Kept as attribute device.id."
    )
    log_level: str | None = Field(
        "log_level", pattern=IDENTIFIER, description="Syslog severity name or number."
    )
    process_name: str | None = Field(
        "process_name", pattern=IDENTIFIER, description="Program; the event's service."
    )
    structured_data: str | None = Field(
        "structured_data", pattern=IDENTIFIER, description="JSON object, kept as sd.* attributes."
    )


class BookkeepingColumns(Section):
    """The original AI service's push bookkeeping; used when present and writable."""

    pushed_to_ai: str = Field("pushed_to_ai", pattern=IDENTIFIER, description="Analysed flag.")
    pushed_at: str | None = Field("pushed_at", pattern=IDENTIFIER, description="When.")
    push_attempts: str | None = Field(
        "push_attempts", pattern=IDENTIFIER, description="Attempts so far."
    )
    last_push_error: str | None = Field(
        "last_push_error", pattern=IDENTIFIER, description="Why the last attempt failed."
    )


class LogEntriesSection(Section):
    enabled: bool = Field(False, description="Read the table and analyse its new rows.")
    dsn: str = Field(
        "postgresql://127.0.0.1:5432/syslog",
        description="libpq URI of the database, for a role that may SELECT the table; its "
        "sessions are made read-only. A password in it is never logged.",
    )
    write_dsn: str | None = Field(
        None,
        description="Role allowed to UPDATE the bookkeeping columns; null never writes (the "
        "progress is then a local high-water mark).",
    )
    table: str = Field(
        "log_entries", pattern=TABLE_NAME, description="Table, optionally schema-qualified."
    )
    sslmode: SslMode = Field(
        "prefer", description="libpq sslmode; verify-ca/verify-full check ssl_root_cert."
    )
    ssl_root_cert: Path | None = Field(None, description="CA bundle of the server certificate.")
    ssl_cert: Path | None = Field(None, description="Client certificate, if the server asks.")
    ssl_key: Path | None = Field(None, description="Client key for ssl_cert.")
    columns: LogEntriesColumns = Field(default_factory=LogEntriesColumns)
    bookkeeping: BookkeepingColumns = Field(default_factory=BookkeepingColumns)
    max_push_attempts: int = Field(
        5, ge=1, description="Rows that failed this often are not read again (bookkeeping)."
    )
    timezone: str = Field("UTC", description="Zone of timestamps stored without one.")
    event_type: str = Field("syslog", min_length=1, description="Type the agents see.")
    poll_interval_s: float = Field(30.0, gt=0, description="Seconds between polls.")
    batch_rows: int = Field(5000, ge=1, le=100_000, description="Rows per query.")
    max_rows_per_cycle: int = Field(
        50_000, ge=1, description="Rows analysed as one window at most; more wait for the next."
    )
    pool_min_size: int = Field(0, ge=0, description="Connections kept open.")
    pool_max_size: int = Field(2, ge=1, description="Most connections opened.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Opening one connection.")
    command_timeout_s: float = Field(30.0, gt=0, description="One statement.")
    retry_initial_s: float = Field(1.0, gt=0, description="First wait after a failed poll.")
    retry_max_s: float = Field(60.0, gt=0, description="Waits double up to this.")
    state_path: Path | None = Field(
        None,
        description="SQLite file of the high-water mark; null: log-entries-state.db next to "
        "store.path.",
    )
    replaces_storage: bool = Field(
        False,
        description="Run no scheduled StorageService windows: the table is the only source "
        "(RunAnalysis on demand still reads StorageService).",
    )

    @model_validator(mode="after")
    def _tls_files(self) -> LogEntriesSection:
        if self.sslmode in ("verify-ca", "verify-full") and self.ssl_root_cert is None:
            raise ValueError(f"ssl_root_cert: required with sslmode {self.sslmode}")
        if (self.ssl_cert is None) != (self.ssl_key is None):
            raise ValueError("ssl_cert and ssl_key go together")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class Analyzer(Protocol):
    async def analyze_events(
        self, events: Sequence[EventView], origin: str
    ) -> list[CycleResult] | None: ...


class SourceError(Exception):
    """The table cannot be read as configured; the message names the key."""


class RowError(Exception):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def ssl_option(section: LogEntriesSection) -> ssl.SSLContext | str | bool:
    """asyncpg's ``ssl`` for a libpq sslmode and certificate files."""
    mode = section.sslmode
    if mode == "disable":
        return False
    verify = mode in ("verify-ca", "verify-full") or (
        mode == "require" and section.ssl_root_cert is not None
    )
    if not verify and section.ssl_cert is None:
        return mode
    if verify and section.ssl_root_cert is None:
        raise SourceError(f"log_entries.ssl_root_cert: required with sslmode {mode}")
    context = ssl.create_default_context(
        cafile=str(section.ssl_root_cert) if section.ssl_root_cert else None
    )
    context.check_hostname = mode == "verify-full"
    if not verify:
        context.verify_mode = ssl.CERT_NONE
    if section.ssl_cert is not None:
        key = str(section.ssl_key) if section.ssl_key else None
        context.load_cert_chain(str(section.ssl_cert), key)
    return context


def safe_dsn(dsn: str) -> str:
    """host:port/database of a DSN, without user or password (for logs and the state key)."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or ''}:{parts.port or 5432}{parts.path or '/'}"


@dataclass(frozen=True)
class TableLayout:
    """The configured columns the table has; resolved when connecting."""

    table: str
    columns: dict[str, str]
    bookkeeping: dict[str, str] = field(default_factory=dict)

    @property
    def select_list(self) -> str:
        return ", ".join(f"{quote(column)} AS {name}" for name, column in self.columns.items())


async def inspect_table(connection: asyncpg.Connection, section: LogEntriesSection) -> TableLayout:
    schema, _, name = section.table.rpartition(".")
    rows = await connection.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = COALESCE(NULLIF($1, ''), current_schema()) AND table_name = $2",
        schema,
        name,
    )
    if not rows:
        raise SourceError(f"log_entries.table: {section.table!r} not found or not readable")
    types = {row["column_name"]: row["data_type"] for row in rows}
    table = ".".join(quote(part) for part in section.table.split("."))
    columns = _present(section.columns, types, "columns", required=REQUIRED_COLUMNS)
    if types[columns["id"]] not in INTEGER_TYPES:
        raise SourceError(
            f"log_entries.columns.id: {columns['id']!r} must be an integer column "
            f"(it is {types[columns['id']]})"
        )
    bookkeeping = _present(section.bookkeeping, types, "bookkeeping", required=())
    if "pushed_to_ai" not in bookkeeping:
        bookkeeping = {}
    return TableLayout(table, columns, bookkeeping)


def _present(
    mapping: Section, types: dict[str, str], key: str, required: Sequence[str]
) -> dict[str, str]:
    """The configured columns the table has; a missing one is an error when it is required
    or was named explicitly, and is left out when it is only the default name."""
    found: dict[str, str] = {}
    for name, column in mapping.model_dump().items():
        if column is None:
            continue
        if column in types:
            found[name] = column
        elif name in required or name in mapping.model_fields_set:
            have = ", ".join(sorted(types))
            raise SourceError(
                f"log_entries.{key}.{name}: column {column!r} not found (the table has: {have})"
            )
    return found


def level_of(value: Any) -> int:
    if isinstance(value, int) and 0 <= value <= 7:
        return value
    text = str(value or "").strip().lower()
    if text.isdigit() and int(text) <= 7:
        return int(text)
    return LEVELS.get(text, 6)


def row_event(
    row: asyncpg.Record, layout: TableLayout, zone: dt.tzinfo, event_type: str, prefix: str
) -> EventView:
    """One row as the agents see it; RowError names the field it cannot use."""
    values = {name: row[name] for name in layout.columns}
    message = values.get("message") or values.get("raw_message") or ""
    if not isinstance(message, str):
        raise RowError("message", f"not text ({type(message).__name__})")
    attributes = {f"{prefix}.id": str(values["id"])}
    if values.get("device_id") is not None:
        attributes["device.id"] = str(values["device_id"])
    host = str(values.get("device_ip") or "")
    if host:
        attributes["device.ip"] = host
    attributes.update(_structured(values.get("structured_data")))
    service = _PID_SUFFIX.sub("", str(values.get("process_name") or "").strip())
    return EventView(
        id=f"{prefix}:{values['id']}",
        time_ns=_time_ns(values["timestamp"], zone),
        host=host or attributes.get("device.id", ""),
        service=service,
        level=level_of(values.get("log_level")),
        message=message,
        type=event_type,
        attributes=attributes,
    )


def _time_ns(value: Any, zone: dt.tzinfo) -> int:
    if value is None:
        raise RowError("timestamp", "null")
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise RowError("timestamp", f"not an ISO 8601 time: {value[:40]!r}") from None
    if not isinstance(value, dt.datetime):
        raise RowError("timestamp", f"not a time ({type(value).__name__})")
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return datetime_to_ns(value)


def _structured(value: Any) -> dict[str, str]:
    if value is None or value == "":
        return {}
    parsed = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {"sd": value}
    if not isinstance(parsed, dict):
        return {"sd": json.dumps(parsed)}
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(f"{prefix}.{key}", child)
        elif node is not None:
            flat[prefix] = node if isinstance(node, str) else json.dumps(node)

    walk("sd", parsed)
    return flat


class Progress:
    """The high-water mark per table, in a small SQLite file (WAL, synchronous FULL)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS progress (source TEXT PRIMARY KEY, "
            "last_id INTEGER NOT NULL, updated_ns INTEGER NOT NULL)"
        )
        return db

    def last_id(self, source: str) -> int | None:
        with contextlib.closing(self._connect()) as db:
            row = db.execute("SELECT last_id FROM progress WHERE source = ?", (source,)).fetchone()
        return None if row is None else int(row[0])

    def advance(self, source: str, last_id: int) -> None:
        with contextlib.closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO progress (source, last_id, updated_ns) VALUES (?, ?, ?) "
                "ON CONFLICT(source) DO UPDATE SET last_id = excluded.last_id, "
                "updated_ns = excluded.updated_ns WHERE excluded.last_id > progress.last_id",
                (source, last_id, now_ns()),
            )


@dataclass
class Batch:
    """Rows read in one poll: the events, the unusable rows with why, the highest id."""

    events: list[EventView] = field(default_factory=list)
    analysed_ids: list[int] = field(default_factory=list)
    unusable: dict[int, str] = field(default_factory=dict)
    last_id: int | None = None
    rows: int = 0


class LogEntriesFeed:
    def __init__(self, section: LogEntriesSection, state_path: Path) -> None:
        self.section = section
        self.progress = Progress(state_path)
        self.source_key = f"{safe_dsn(section.dsn)}/{section.table}"
        self.prefix = section.table.rpartition(".")[2]
        self.zone = ZoneInfo(section.timezone)
        self.ssl = ssl_option(section)
        self.layout: TableLayout | None = None
        self.marks = False
        self.last_error = ""
        self._reader: asyncpg.Pool | None = None
        self._writer: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def replaces_storage(self) -> bool:
        return self.section.replaces_storage

    def start(self, scheduler: Analyzer) -> None:
        self._task = asyncio.create_task(self._run(scheduler), name="log-entries-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_pools()

    async def _run(self, analyzer: Analyzer) -> None:
        failures = 0
        while True:
            try:
                full = await self.cycle(analyzer)
                failures = 0
                self.last_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(exc, failures)
                delay = backoff_delay(
                    failures, self.section.retry_initial_s, self.section.retry_max_s
                )
                failures += 1
                await asyncio.sleep(delay)
                continue
            if not full:
                await asyncio.sleep(self.section.poll_interval_s)

    async def _failed(self, exc: BaseException, failures: int) -> None:
        CYCLES.labels("error").inc()
        text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SourceError) else str(exc)
        expected = isinstance(
            exc, SourceError | OSError | asyncpg.PostgresError | asyncpg.InterfaceError
        )
        if text != self.last_error or failures == 0:
            log.error(
                "log_entries: poll failed: %s",
                text,
                exc_info=None if expected else exc,
                extra={"source": self.source_key},
            )
        self.last_error = text
        # Start again from fresh connections and a fresh look at the table.
        await self._close_pools()

    # Connections ----------------------------------------------------------------------
    async def _pool(self, dsn: str, read_only: bool, max_size: int) -> asyncpg.Pool:
        settings = {"application_name": "edgebot-anomaly", "TimeZone": "UTC"}
        if read_only:
            settings["default_transaction_read_only"] = "on"
        section = self.section
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=min(section.pool_min_size, max_size),
            max_size=max_size,
            timeout=section.connect_timeout_s,
            command_timeout=section.command_timeout_s,
            ssl=self.ssl,
            server_settings=settings,
        )
        return pool

    async def open(self) -> TableLayout:
        """Connect, read the table's layout and decide how progress is recorded."""
        if self.layout is not None:
            return self.layout
        await self._close_pools()
        section = self.section
        try:
            self._reader = await self._pool(section.dsn, True, section.pool_max_size)
            async with self._reader.acquire() as connection:
                layout = await inspect_table(connection, section)
            self.marks = bool(layout.bookkeeping) and await self._may_write(layout)
        except BaseException:
            await self._close_pools()
            raise
        self.layout = layout
        log.info(
            "log_entries: reading %s",
            section.table,
            extra={"source": self.source_key, "columns": sorted(layout.columns),
                   "progress": "bookkeeping columns" if self.marks else "local high-water mark"},
        )  # fmt: skip
        return layout

    async def _may_write(self, layout: TableLayout) -> bool:
        if self.section.write_dsn is None:
            return False
        self._writer = await self._pool(self.section.write_dsn, False, 1)
        async with self._writer.acquire() as connection:
            allowed = await connection.fetchval(
                "SELECT bool_and(has_column_privilege($1, c, 'UPDATE')) FROM unnest($2::text[]) c",
                layout.table,
                list(layout.bookkeeping.values()),
            )
        if not allowed:
            log.warning(
                "log_entries: the write_dsn role may not update %s; tracking progress locally",
                ", ".join(layout.bookkeeping.values()),
            )
        return bool(allowed)

    async def _close_pools(self) -> None:
        for pool in (self._reader, self._writer):
            if pool is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pool.close(), 5)
        self._reader = self._writer = None
        self.layout = None

    # One poll -------------------------------------------------------------------------
    async def cycle(self, analyzer: Analyzer) -> bool:
        """Read, analyse, record progress; True when it stopped at max_rows_per_cycle."""
        layout = await self.open()
        batch = await self._read(layout)
        if batch.rows == 0:
            CYCLES.labels("idle").inc()
            return False
        began = time.monotonic()
        try:
            results = await analyzer.analyze_events(batch.events, ORIGIN)
        except Exception as exc:
            if self.marks:
                await self._mark_failed(layout, [*batch.analysed_ids, *batch.unusable], str(exc))
            raise SourceError(f"log_entries: analysis failed, rows kept for later: {exc}") from exc
        if results is None:
            CYCLES.labels("deferred").inc()
            return False
        await self._record(layout, batch)
        ROWS.labels("analysed").inc(len(batch.events))
        ROWS.labels("unusable").inc(len(batch.unusable))
        CYCLES.labels("ok").inc()
        log.info(
            "log_entries: rows analysed",
            extra={"rows": batch.rows, "unusable": len(batch.unusable),
                   "anomalies": sum(r.anomalies_found for r in results),
                   "seconds": round(time.monotonic() - began, 3)},
        )  # fmt: skip
        return batch.rows >= self.section.max_rows_per_cycle

    async def _read(self, layout: TableLayout) -> Batch:
        assert self._reader is not None
        section = self.section
        after = NO_ROW_YET
        if not self.marks:
            mark = await asyncio.to_thread(self.progress.last_id, self.source_key)
            after = NO_ROW_YET if mark is None else mark
        query, fixed = self._query(layout)
        batch = Batch()
        while batch.rows < section.max_rows_per_cycle:
            limit = min(section.batch_rows, section.max_rows_per_cycle - batch.rows)
            rows = await self._reader.fetch(query, after, limit, *fixed)
            for row in rows:
                self._take(row, layout, batch)
            batch.rows += len(rows)
            if len(rows) < limit:
                break
            after = batch.last_id if batch.last_id is not None else after
        return batch

    def _query(self, layout: TableLayout) -> tuple[str, list[Any]]:
        id_column = quote(layout.columns["id"])
        where = [f"{id_column} > $1::bigint"]
        fixed: list[Any] = []
        if self.marks:
            where.append(f"{quote(layout.bookkeeping['pushed_to_ai'])} IS NOT TRUE")
            if "push_attempts" in layout.bookkeeping:
                fixed.append(self.section.max_push_attempts)
                where.append(f"COALESCE({quote(layout.bookkeeping['push_attempts'])}, 0) < $3")
        query = (
            f"SELECT {layout.select_list} FROM {layout.table} WHERE {' AND '.join(where)} "
            f"ORDER BY {id_column} LIMIT $2"
        )
        return query, fixed

    def _take(self, row: asyncpg.Record, layout: TableLayout, batch: Batch) -> None:
        row_id = int(row["id"])
        batch.last_id = row_id
        try:
            batch.events.append(
                row_event(row, layout, self.zone, self.section.event_type, self.prefix)
            )
            batch.analysed_ids.append(row_id)
        except RowError as exc:
            batch.unusable[row_id] = str(exc)
            log.warning("log_entries: row %s not analysed: %s", row_id, exc)

    async def _record(self, layout: TableLayout, batch: Batch) -> None:
        if not self.marks:
            assert batch.last_id is not None
            await asyncio.to_thread(self.progress.advance, self.source_key, batch.last_id)
            return
        await self._mark_analysed(layout, batch.analysed_ids)
        for row_id, reason in batch.unusable.items():
            await self._mark_failed(layout, [row_id], reason)

    async def _mark_analysed(self, layout: TableLayout, ids: list[int]) -> None:
        book = layout.bookkeeping
        sets = [f"{quote(book['pushed_to_ai'])} = TRUE"]
        if "pushed_at" in book:
            sets.append(f"{quote(book['pushed_at'])} = now()")
        if "push_attempts" in book:
            sets.append(_increment(book["push_attempts"]))
        if "last_push_error" in book:
            sets.append(f"{quote(book['last_push_error'])} = NULL")
        await self._update(layout, sets, ids, ())

    async def _mark_failed(self, layout: TableLayout, ids: list[int], reason: str) -> None:
        book = layout.bookkeeping
        sets = []
        params: tuple[Any, ...] = ()
        if "push_attempts" in book:
            sets.append(_increment(book["push_attempts"]))
        if "last_push_error" in book:
            params = (reason[:2000],)
            sets.append(f"{quote(book['last_push_error'])} = $2")
        if sets and ids:
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await self._update(layout, sets, ids, params)

    async def _update(
        self, layout: TableLayout, sets: list[str], ids: list[int], params: tuple[Any, ...]
    ) -> None:
        assert self._writer is not None
        statement = (
            f"UPDATE {layout.table} SET {', '.join(sets)} "
            f"WHERE {quote(layout.columns['id'])} = ANY($1::bigint[])"
        )
        async with self._writer.acquire() as connection, connection.transaction():
            for start in range(0, len(ids), self.section.batch_rows):
                await connection.execute(
                    statement, ids[start : start + self.section.batch_rows], *params
                )


def _increment(column: str) -> str:
    return f"{quote(column)} = COALESCE({quote(column)}, 0) + 1"


def log_entries_feeds(section: LogEntriesSection, store_path: Path) -> list[LogEntriesFeed]:
    """The feed of the anomaly configuration (none when the section is disabled)."""
    if not section.enabled:
        return []
    state = section.state_path or store_path.parent / "log-entries-state.db"
    return [LogEntriesFeed(section, state)]
