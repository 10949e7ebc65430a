"""The durable spool: events wait here, committed to SQLite, until ingest acknowledges them.

An event counts as accepted once its transaction committed (WAL, ``synchronous=FULL``).
Batches are recorded when they are formed, so a batch re-sent after a RETRY ack, a
reconnect or a restart keeps its ``batch_id`` and ``seq`` (storage's ledger relies on it).
Forming a batch and a plain acknowledgement commit without an fsync of their own
(``synchronous=NORMAL``; the next accepting commit syncs them too): a process crash keeps
them, and a power loss can only undo them, so the events are sent again, in a new batch
if the formed one was lost, and storage's event-id dedupe keeps them from being stored
twice. That takes one of the two fsyncs off each batch's way to the mothership.
A batch is always the oldest events not yet in one, so it is recorded as a range of row
ids: forming it writes one row, not every event again.
Every SQLite call runs on one dedicated thread, so the event loop never blocks on disk.

When the byte quota is reached, inputs that can wait (TCP, files) retry until space frees;
inputs that cannot (datagrams, polls) may, under the ``drop_lowest_severity`` policy, evict
the least severe events not yet in a batch to make room for a more severe one. Events in a
batch are never evicted: they may already be on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from edge_agent import metrics
from gen.edgebot.v1 import encoded_pb2, event_pb2
from mesh.ids import uuid7
from mesh.timeutil import now_ns

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    appended_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    data BLOB NOT NULL,
    level INTEGER NOT NULL DEFAULT 5
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    formed_ns INTEGER NOT NULL,
    first_rowid INTEGER NOT NULL DEFAULT 0,
    last_rowid INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    status TEXT NOT NULL,
    field TEXT NOT NULL,
    reason TEXT NOT NULL,
    data BLOB NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS file_checkpoints (
    input TEXT NOT NULL,
    identity TEXT NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    fingerprint BLOB NOT NULL,
    updated_ns INTEGER NOT NULL,
    PRIMARY KEY (input, identity)
);
"""
# The eviction order: least severe (highest syslog level) first, oldest first among equals.
LEVEL_INDEX = "CREATE INDEX IF NOT EXISTS events_by_level ON events (level DESC, rowid)"
VICTIM_QUERY = (
    "SELECT rowid, size, level FROM events INDEXED BY events_by_level "
    "WHERE level > ? AND rowid > ? ORDER BY level DESC, rowid"
)
# Disk bytes one byte of event data may take while spooled: WAL frames (whole pages per
# transaction), index entries, page slack (about 3 measured with small transactions).
DISK_BYTES_PER_EVENT_BYTE = 3
# Pages the WAL collects before they are copied into the database. The free-space reserve
# must hold them (the copy can grow the file), so it is kept small: 1 MiB at 4 KiB pages.
WAL_CHECKPOINT_PAGES = 256
# The WAL is cut back to this size after a checkpoint, so a burst does not keep its space.
WAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
# EventBatch overhead beyond its events: ids, seq, flags (generous).
BATCH_HEADER_BYTES = 256
# Without a severity an event ranks as user.notice, the priority RFC 3164 gives a
# message that carries none.
UNSPECIFIED_LEVEL = 5
OverflowPolicy = Literal["drop_newest", "drop_lowest_severity"]


SEVERITY_NAMES = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")


def severity_name(level: int) -> str:
    return SEVERITY_NAMES[level] if 0 <= level < len(SEVERITY_NAMES) else str(level)


def syslog_level(event: event_pb2.Event) -> int:
    """The event's syslog level (0 emergency ... 7 debug); the enum is level + 1."""
    return event.severity - 1 if event.severity else UNSPECIFIED_LEVEL


@dataclass(frozen=True)
class AppendResult:
    """How many of the offered events were committed; the rest were refused (quota).

    ``evicted`` counts events committed earlier that were dropped to make room for more
    severe ones. ``dropped_levels`` says how many of the refused and evicted events had
    each syslog level; ``refused_reason`` which limit refused them (``spool_full``: the
    quota, ``disk_full``: the disk's free-space reserve).
    """

    accepted: int
    refused: int
    evicted: int = 0
    dropped_levels: Mapping[int, int] = field(default_factory=dict)
    refused_reason: str = "spool_full"

    @property
    def spool_full(self) -> bool:
        return self.refused > 0 or self.evicted > 0


@dataclass(frozen=True)
class SpooledBatch:
    batch_id: str
    seq: int
    events: tuple[bytes, ...]

    def fill(self, batch: encoded_pb2.EncodedEventBatch, agent_id: str, is_retry: bool) -> None:
        """Write this batch into ``batch``, its events as spooled: encoded, not parsed."""
        batch.batch_id, batch.agent_id, batch.seq = self.batch_id, agent_id, self.seq
        batch.is_retry = is_retry
        batch.events.extend(self.events)


@dataclass(frozen=True)
class DeadLetterRow:
    event: event_pb2.Event
    batch_id: str
    status: str
    field: str
    reason: str


@dataclass(frozen=True)
class Waiting:
    """Events not yet in a batch: how many (counted up to a bound) and the oldest's age."""

    count: int
    oldest_appended_ns: int | None


@dataclass(frozen=True)
class FileCheckpoint:
    """How far a file input has committed one file, named by its identity (device:inode).

    ``fingerprint`` is the file's first bytes (up to a fixed length) when it was read, so
    a reused inode or a rewritten file is told apart from the one checkpointed.
    """

    input: str
    identity: str
    path: str
    offset: int
    fingerprint: bytes


@dataclass(frozen=True)
class FileInputState:
    """What the spool remembers of a file input: whether it ever ran, and its checkpoints."""

    started: bool
    checkpoints: dict[str, FileCheckpoint]


class SpoolClosedError(RuntimeError):
    pass


def encoded_size(size: int) -> int:
    """Bytes one event of ``size`` takes inside a batch: tag, length varint, payload."""
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


class Spool:
    def __init__(
        self,
        path: Path,
        max_bytes: int,
        overflow_policy: OverflowPolicy = "drop_newest",
        min_free_disk_bytes: int = 0,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.overflow_policy: OverflowPolicy = overflow_policy
        self.min_free_disk_bytes = min_free_disk_bytes
        self._page_size = 4096
        # Events with a row id above this are not in a batch yet.
        self._batched_upto = 0
        # Those events, kept current by the spool thread so that asking costs no query.
        self._unbatched = Waiting(0, None)
        self.appended = asyncio.Event()
        self.events = 0
        self.bytes = 0
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        await self._run(self._open_sync)
        self._publish()
        log.info(
            "spool open",
            extra={"path": str(self.path), "events": self.events, "bytes": self.bytes},
        )

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def append(
        self,
        events: Sequence[event_pb2.Event],
        checkpoints: Sequence[FileCheckpoint | None] = (),
    ) -> AppendResult:
        """Commit events in one transaction; those beyond the byte quota are refused.

        The accepted events are always a prefix of ``events``, so an input that waits can
        offer the rest again. ``checkpoints[i]``, when given, is the file position just
        after event ``i``: the latest one per file among the accepted events is saved in
        the same transaction.
        """
        rows = [(e.id, syslog_level(e), e.SerializeToString()) for e in events]
        result = await self._run(
            lambda: _unless_disk_full(rows, lambda: self._append_sync(rows, checkpoints))
        )
        if result.accepted:
            self.appended.set()
        self._publish()
        return result

    async def offer(self, events: Sequence[event_pb2.Event]) -> AppendResult:
        """Commit events from an input that cannot wait, applying the overflow policy.

        Under ``drop_lowest_severity`` an event that does not fit evicts waiting events
        strictly less severe than itself (least severe, then oldest, first); otherwise,
        and under ``drop_newest``, it is refused.
        """
        if self.overflow_policy == "drop_newest":
            return await self.append(events)
        rows = [(e.id, syslog_level(e), e.SerializeToString()) for e in events]
        result = await self._run(
            lambda: _unless_disk_full(rows, lambda: self._offer_evicting_sync(rows))
        )
        if result.accepted:
            self.appended.set()
        self._publish()
        return result

    async def import_batch(
        self, batch_id: str, seq: int, events: Sequence[event_pb2.Event]
    ) -> bool:
        """Add an already formed batch (a replayed one) keeping its id and seq.

        The quota does not apply: the events exist on disk already. False when the spool
        holds that batch id (a resumed replay) and nothing was added.
        """
        rows = [(e.id, syslog_level(e), e.SerializeToString()) for e in events]
        added = await self._run(lambda: self._import_sync(batch_id, seq, rows))
        self._publish()
        return added

    async def waiting(self, bound: int) -> Waiting:
        """The events not yet in a batch, counted up to ``bound``: no query and no hop to
        the spool thread, which updates the figures whenever it adds or batches events."""
        unbatched = self._unbatched
        return Waiting(min(unbatched.count, bound), unbatched.oldest_appended_ns)

    async def form_batch(self, max_events: int, max_bytes: int) -> SpooledBatch | None:
        """Claim the oldest events not yet in a batch as a new batch (None if there are none)."""
        return await self._run(lambda: self._form_batch_sync(max_events, max_bytes))

    async def pending_batches(self) -> list[SpooledBatch]:
        """Batches formed but not yet acknowledged, oldest first."""
        return await self._run(self._pending_sync)

    async def ack(self, batch_id: str) -> int:
        """Drop an acknowledged batch; returns how many events left the spool."""
        removed = await self._run(lambda: self._ack_sync(batch_id, {}, "ok"))
        self._publish()
        return removed

    async def ack_partial(self, batch_id: str, errors: Sequence[event_pb2.EventError]) -> int:
        """Move the refused events to dead letters with their reasons, drop the rest."""
        reasons = {e.index: (e.field, e.reason) for e in errors}
        removed = await self._run(lambda: self._ack_sync(batch_id, reasons, "partial"))
        self._publish()
        return removed

    async def reject(self, batch_id: str, message: str) -> int:
        """Move a whole refused batch to dead letters."""
        removed = await self._run(lambda: self._reject_sync(batch_id, message))
        self._publish()
        return removed

    async def dead_letters(self) -> list[DeadLetterRow]:
        return await self._run(self._dead_letters_sync)

    async def file_input_state(self, input_name: str) -> FileInputState:
        return await self._run(lambda: self._file_input_state_sync(input_name))

    async def save_file_checkpoints(
        self,
        input_name: str,
        save: Sequence[FileCheckpoint] = (),
        forget: Sequence[str] = (),
    ) -> None:
        """Save and drop checkpoints (by identity) and mark the input as started, at once."""
        await self._run(lambda: self._save_checkpoints_sync(input_name, save, forget))

    async def _run(self, call: Callable[[], T]) -> T:
        if self._executor is None:
            raise SpoolClosedError(f"spool {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _publish(self) -> None:
        metrics.SPOOL_EVENTS.set(self.events)
        metrics.SPOOL_BYTES.set(self.bytes)

    # Everything below runs on the spool thread. --------------------------------------

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolClosedError(f"spool {self.path} is not open")
        return self._db

    def _open_sync(self) -> None:
        try:
            self._db = _connect(self.path)
        except sqlite3.DatabaseError as error:
            moved = _move_aside(self.path)
            log.error(
                "spool file is corrupt (%s); moved it aside to %s and started a fresh one",
                error,
                moved,
            )
            self._db = _connect(self.path)
        self.events, self.bytes = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events"
        ).fetchone()
        (self._page_size,) = self._conn.execute("PRAGMA page_size").fetchone()
        (self._batched_upto,) = self._conn.execute(
            "SELECT COALESCE(MAX(last_rowid), 0) FROM batches"
        ).fetchone()
        (count,) = self._conn.execute(
            "SELECT COUNT(*) FROM events WHERE rowid > ?", (self._batched_upto,)
        ).fetchone()
        self._unbatched = Waiting(count, self._oldest_unbatched_ns())

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _room_sync(self) -> tuple[int, str]:
        """Event bytes that may still be added, and what limits them (the drop reason).

        Besides the quota, the disk must keep ``min_free_disk_bytes`` free, so that forming
        batches, acks and checkpoints (which write too) never meet a full disk. Pages the
        spool freed are reused before the file grows, so they count as room.
        """
        room = self.max_bytes - self.bytes
        if self.min_free_disk_bytes <= 0:
            return room, "spool_full"
        (free_pages,) = self._conn.execute("PRAGMA freelist_count").fetchone()
        usable = _free_disk_bytes(self.path.parent) + free_pages * self._page_size
        disk_room = max(0, usable - self.min_free_disk_bytes) // DISK_BYTES_PER_EVENT_BYTE
        return (disk_room, "disk_full") if disk_room < room else (room, "spool_full")

    def _append_sync(
        self, rows: list[_Row], checkpoints: Sequence[FileCheckpoint | None]
    ) -> AppendResult:
        room, limit = self._room_sync()
        accepted: list[tuple[str, int, int, bytes, int]] = []
        stamp = now_ns()
        for event_id, level, data in rows:
            if len(data) > room:
                break
            room -= len(data)
            accepted.append((event_id, stamp, len(data), data, level))
        if accepted:
            with _transaction(self._conn) as conn:
                conn.executemany(INSERT_EVENT, accepted)
                _upsert_checkpoints(conn, _latest_per_file(checkpoints[: len(accepted)]))
            self.events += len(accepted)
            self.bytes += sum(row[2] for row in accepted)
            before = self._unbatched
            self._unbatched = Waiting(
                before.count + len(accepted),
                stamp if before.oldest_appended_ns is None else before.oldest_appended_ns,
            )
        refused = Counter(level for _, level, _ in rows[len(accepted) :])
        return AppendResult(len(accepted), len(rows) - len(accepted), 0, dict(refused), limit)

    def _offer_evicting_sync(self, rows: list[_Row]) -> AppendResult:
        room, limit = self._room_sync()
        stamp = now_ns()
        ours: dict[int, int] = {}  # rowid -> size of the events this call inserted
        freed = 0
        refused: Counter[int] = Counter()
        evicted: Counter[int] = Counter()
        with _transaction(self._conn) as conn:
            for event_id, level, data in rows:
                victims = _victims(conn, level, self._batched_upto, len(data) - room)
                if victims is None:
                    refused[level] += 1
                    continue
                for rowid, size, victim_level in victims:
                    conn.execute("DELETE FROM events WHERE rowid = ?", (rowid,))
                    room += size
                    if ours.pop(rowid, None) is None:
                        freed += size
                        evicted[victim_level] += 1
                    else:
                        refused[victim_level] += 1
                cursor = conn.execute(INSERT_EVENT, (event_id, stamp, len(data), data, level))
                assert cursor.lastrowid is not None
                ours[cursor.lastrowid] = len(data)
                room -= len(data)
        self.events += len(ours) - sum(evicted.values())
        self.bytes += sum(ours.values()) - freed
        # Victims are never in a batch; the oldest waiting event may have been one.
        count = self._unbatched.count + len(ours) - sum(evicted.values())
        self._unbatched = Waiting(count, self._oldest_unbatched_ns())
        return AppendResult(
            accepted=len(ours),
            refused=sum(refused.values()),
            evicted=sum(evicted.values()),
            dropped_levels=dict(refused + evicted),
            refused_reason=limit,
        )

    def _import_sync(self, batch_id: str, seq: int, rows: list[_Row]) -> bool:
        if not rows:
            return False
        if self._has_unbatched():
            raise ValueError("import_batch needs a spool whose events are all in batches")
        stamp = now_ns()
        with _transaction(self._conn) as conn:
            known = conn.execute("SELECT 1 FROM batches WHERE batch_id = ?", (batch_id,))
            if known.fetchone() is not None:
                return False
            conn.executemany(
                INSERT_EVENT,
                [(event_id, stamp, len(data), data, lvl) for event_id, lvl, data in rows],
            )
            (last,) = conn.execute("SELECT MAX(rowid) FROM events").fetchone()
            conn.execute(
                "INSERT INTO batches (batch_id, seq, formed_ns, first_rowid, last_rowid) "
                "VALUES (?, ?, ?, ?, ?)",
                (batch_id, seq, stamp, last - len(rows) + 1, last),
            )
        self._batched_upto = last
        self.events += len(rows)
        self.bytes += sum(len(data) for _, _, data in rows)
        return True

    def _has_unbatched(self) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM events WHERE rowid > ? LIMIT 1", (self._batched_upto,)
        ).fetchone()
        return row is not None

    def _oldest_unbatched_ns(self) -> int | None:
        oldest = self._conn.execute(
            "SELECT appended_ns FROM events WHERE rowid > ? ORDER BY rowid LIMIT 1",
            (self._batched_upto,),
        ).fetchone()
        return None if oldest is None else int(oldest[0])

    def _form_batch_sync(self, max_events: int, max_bytes: int) -> SpooledBatch | None:
        rows = self._conn.execute(
            "SELECT rowid, size FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (self._batched_upto, max_events),
        ).fetchall()
        if not rows:
            return None
        last_rowid, total = rows[0][0], BATCH_HEADER_BYTES + encoded_size(rows[0][1])
        for rowid, size in rows[1:]:
            total += encoded_size(size)
            if total > max_bytes:
                break
            last_rowid = rowid
        batch_id = uuid7()
        first_rowid = rows[0][0]
        with _transaction(self._conn, durable=False) as conn:
            seq = _next_seq(conn)
            conn.execute(
                "INSERT INTO batches (batch_id, seq, formed_ns, first_rowid, last_rowid) "
                "VALUES (?, ?, ?, ?, ?)",
                (batch_id, seq, now_ns(), first_rowid, last_rowid),
            )
        self._batched_upto = last_rowid
        batch = self._load_batch(batch_id, seq, first_rowid, last_rowid)
        oldest = self._oldest_unbatched_ns()
        left = self._unbatched.count - len(batch.events) if oldest is not None else 0
        self._unbatched = Waiting(left, oldest)
        return batch

    def _load_batch(self, batch_id: str, seq: int, first: int, last: int) -> SpooledBatch:
        rows = self._conn.execute(
            "SELECT data FROM events WHERE rowid BETWEEN ? AND ? ORDER BY rowid", (first, last)
        ).fetchall()
        return SpooledBatch(batch_id, seq, tuple(row[0] for row in rows))

    def _pending_sync(self) -> list[SpooledBatch]:
        rows = self._conn.execute(
            "SELECT batch_id, seq, first_rowid, last_rowid FROM batches ORDER BY seq"
        ).fetchall()
        return [self._load_batch(*row) for row in rows]

    def _range(self, batch_id: str) -> tuple[int, int] | None:
        row = self._conn.execute(
            "SELECT first_rowid, last_rowid FROM batches WHERE batch_id = ?", (batch_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def _ack_sync(self, batch_id: str, refused: dict[int, tuple[str, str]], status: str) -> int:
        span = self._range(batch_id)
        if span is None:
            return 0
        count, size = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events WHERE rowid BETWEEN ? AND ?",
            span,
        ).fetchone()
        dead = self._dead_rows(batch_id, span, refused, status) if refused else []
        # Refused events are kept here as dead letters: that commit is as durable as any.
        with _transaction(self._conn, durable=bool(dead)) as conn:
            conn.executemany(
                "INSERT INTO dead_letters "
                "(event_id, batch_id, status, field, reason, data, created_ns) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                dead,
            )
            conn.execute("DELETE FROM events WHERE rowid BETWEEN ? AND ?", span)
            conn.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,))
        self.events -= count
        self.bytes -= size
        if dead:
            metrics.DEAD_LETTERS.labels(status).inc(len(dead))
        return int(count)

    def _dead_rows(
        self,
        batch_id: str,
        span: tuple[int, int],
        refused: dict[int, tuple[str, str]],
        status: str,
    ) -> list[tuple[str, str, str, str, str, bytes, int]]:
        """Dead-letter rows for the refused positions (the event's index in its batch)."""
        rows = self._conn.execute(
            "SELECT event_id, data FROM events WHERE rowid BETWEEN ? AND ? ORDER BY rowid", span
        ).fetchall()
        stamp = now_ns()
        return [
            (event_id, batch_id, status, *refused[index], data, stamp)
            for index, (event_id, data) in enumerate(rows)
            if index in refused
        ]

    def _reject_sync(self, batch_id: str, message: str) -> int:
        span = self._range(batch_id)
        if span is None:
            return 0
        (count,) = self._conn.execute(
            "SELECT COUNT(*) FROM events WHERE rowid BETWEEN ? AND ?", span
        ).fetchone()
        everything = {index: ("batch", message) for index in range(count)}
        return self._ack_sync(batch_id, everything, "rejected")

    def _dead_letters_sync(self) -> list[DeadLetterRow]:
        rows = self._conn.execute(
            "SELECT data, batch_id, status, field, reason FROM dead_letters ORDER BY id"
        ).fetchall()
        return [
            DeadLetterRow(event_pb2.Event.FromString(data), batch_id, status, field, reason)
            for data, batch_id, status, field, reason in rows
        ]

    def _file_input_state_sync(self, input_name: str) -> FileInputState:
        conn = self._conn
        started = conn.execute(
            "SELECT 1 FROM meta WHERE key = ?", (_started_key(input_name),)
        ).fetchone()
        rows = conn.execute(
            "SELECT identity, path, offset, fingerprint FROM file_checkpoints WHERE input = ?",
            (input_name,),
        ).fetchall()
        checkpoints = {
            identity: FileCheckpoint(input_name, identity, path, offset, bytes(fingerprint))
            for identity, path, offset, fingerprint in rows
        }
        return FileInputState(started is not None, checkpoints)

    def _save_checkpoints_sync(
        self, input_name: str, save: Sequence[FileCheckpoint], forget: Sequence[str]
    ) -> None:
        with _transaction(self._conn) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, 1)", (_started_key(input_name),)
            )
            _upsert_checkpoints(conn, save)
            conn.executemany(
                "DELETE FROM file_checkpoints WHERE input = ? AND identity = ?",
                [(input_name, identity) for identity in forget],
            )


def _victims(
    conn: sqlite3.Connection, level: int, batched_upto: int, shortfall: int
) -> list[tuple[int, int, int]] | None:
    """Waiting events less severe than ``level`` whose removal frees ``shortfall`` bytes.

    Empty when nothing needs to go; None when even all of them would not free enough, so
    that nothing is evicted in vain.
    """
    victims: list[tuple[int, int, int]] = []
    if shortfall <= 0:
        return victims
    cursor = conn.execute(VICTIM_QUERY, (level, batched_upto))
    try:
        for rowid, size, victim_level in cursor:
            victims.append((rowid, size, victim_level))
            shortfall -= size
            if shortfall <= 0:
                return victims
    finally:
        cursor.close()
    return None


def _free_disk_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def _unless_disk_full(rows: Sequence[_Row], store: Callable[[], AppendResult]) -> AppendResult:
    """``store()``, or every row refused as ``disk_full`` if SQLite found the disk full (the
    reserve keeps it from happening unless something else fills the disk)."""
    try:
        return store()
    except sqlite3.OperationalError as error:
        if getattr(error, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
            raise
        log.error("spool disk full (%s): %d events refused", error, len(rows))
        return _all_refused(rows, "disk_full")


def _all_refused(rows: Sequence[_Row], reason: str) -> AppendResult:
    levels = Counter(level for _, level, _ in rows)
    return AppendResult(0, len(rows), 0, dict(levels), reason)


_Row = tuple[str, int, bytes]
"""An event to spool: its id, syslog level and serialized bytes."""
INSERT_EVENT = (
    "INSERT INTO events (event_id, appended_ns, size, data, level) VALUES (?, ?, ?, ?, ?)"
)


def _started_key(input_name: str) -> str:
    return f"file_input_started:{input_name}"


def _latest_per_file(checkpoints: Sequence[FileCheckpoint | None]) -> list[FileCheckpoint]:
    latest: dict[tuple[str, str], FileCheckpoint] = {}
    for checkpoint in checkpoints:
        if checkpoint is not None:
            latest[(checkpoint.input, checkpoint.identity)] = checkpoint
    return list(latest.values())


def _upsert_checkpoints(conn: sqlite3.Connection, checkpoints: Sequence[FileCheckpoint]) -> None:
    stamp = now_ns()
    conn.executemany(
        "INSERT INTO file_checkpoints "
        "(input, identity, path, offset, fingerprint, updated_ns) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (input, identity) DO UPDATE SET path = excluded.path, "
        "offset = excluded.offset, fingerprint = excluded.fingerprint, "
        "updated_ns = excluded.updated_ns",
        [(c.input, c.identity, c.path, c.offset, c.fingerprint, stamp) for c in checkpoints],
    )


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        (check,) = conn.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        conn.executescript(SCHEMA)
        _migrate(conn)
        conn.execute(LEVEL_INDEX)
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a spool file of an earlier release to the current schema, keeping its events.

    The first release had no ``level`` and marked batches with an ``events.batch_id``
    column; its batches were contiguous row ranges already.
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    batch_columns = {row[1] for row in conn.execute("PRAGMA table_info(batches)")}
    with _transaction(conn):
        if "level" not in columns:
            conn.execute("ALTER TABLE events ADD COLUMN level INTEGER NOT NULL DEFAULT 5")
        for column in ("first_rowid", "last_rowid"):
            if column not in batch_columns:
                conn.execute(f"ALTER TABLE batches ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
        if "batch_id" in columns:
            members = "FROM events e WHERE e.batch_id = batches.batch_id"
            conn.execute(
                f"UPDATE batches SET first_rowid = COALESCE((SELECT MIN(rowid) {members}), 0), "
                f"last_rowid = COALESCE((SELECT MAX(rowid) {members}), 0)"
            )
            conn.execute("DELETE FROM batches WHERE last_rowid = 0")
            conn.execute("DROP INDEX IF EXISTS events_by_batch")
            conn.execute("DROP INDEX IF EXISTS events_evictable")
            conn.execute("ALTER TABLE events DROP COLUMN batch_id")


def _move_aside(path: Path) -> Path:
    suffix = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{suffix}")
    path.rename(target)
    for extra in ("-wal", "-shm"):
        sidecar = path.with_name(path.name + extra)
        if sidecar.exists():
            sidecar.rename(target.with_name(target.name + extra))
    return target


def _next_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
    seq = 1 if row is None else int(row[0])
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (seq + 1,),
    )
    return seq


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, durable: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; fsynced unless not ``durable``
    (then the commit survives a crash of the process, not a power loss)."""
    if not durable:
        conn.execute("PRAGMA synchronous=NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            # SQLite has already rolled back after some errors (SQLITE_FULL among them).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        if not durable:
            conn.execute("PRAGMA synchronous=FULL")
