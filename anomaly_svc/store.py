"""The anomaly store: SQLite (WAL) with the original ``mcp_anomalies`` columns.

The same ongoing anomaly (same dedupe key) updates one row — count, last seen, severity —
instead of adding a row per occurrence.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiosqlite

from anomaly_svc.sqlite import open_database
from mesh.ids import uuid7
from mesh.timeutil import now_ns

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mcp_anomalies (
    id TEXT PRIMARY KEY,
    agent_name TEXT NOT NULL,
    device_id TEXT NOT NULL DEFAULT '',
    timestamp_ns INTEGER NOT NULL,
    anomaly_type TEXT NOT NULL,
    severity INTEGER NOT NULL,
    confidence REAL NOT NULL DEFAULT 0,
    description TEXT NOT NULL DEFAULT '',
    features TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'open',
    synced INTEGER NOT NULL DEFAULT 0,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    resolution_status TEXT NOT NULL DEFAULT '',
    resolution_notes TEXT NOT NULL DEFAULT '',
    label TEXT NOT NULL DEFAULT '',
    dedupe_key TEXT NOT NULL UNIQUE,
    count INTEGER NOT NULL DEFAULT 1,
    first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    model_version TEXT NOT NULL DEFAULT '',
    event_ids TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS mcp_anomalies_time ON mcp_anomalies (timestamp_ns DESC, id DESC);
CREATE INDEX IF NOT EXISTS mcp_anomalies_agent ON mcp_anomalies (agent_name, timestamp_ns);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    anomaly_id TEXT NOT NULL REFERENCES mcp_anomalies (id),
    time_ns INTEGER NOT NULL
);
"""


class Status(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Label(StrEnum):
    NONE = ""
    TRUE_POSITIVE = "true_positive"
    FALSE_POSITIVE = "false_positive"


@dataclass
class AnomalyRecord:
    agent: str
    host: str
    time_ns: int
    type: str
    severity: int
    """Syslog level: 0 emergency ... 7 debug."""
    confidence: float
    description: str
    dedupe_key: str
    features: dict[str, float] = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)
    model_version: str = ""
    id: str = ""
    status: Status = Status.OPEN
    synced: bool = False
    created_ns: int = 0
    updated_ns: int = 0
    resolution: str = ""
    notes: str = ""
    label: Label = Label.NONE
    count: int = 1
    first_seen_ns: int = 0
    last_seen_ns: int = 0


@dataclass(frozen=True)
class AnomalyQuery:
    agents: Sequence[str] = ()
    hosts: Sequence[str] = ()
    max_level: int | None = None
    """Only anomalies at least this severe (syslog level <= max_level)."""
    statuses: Sequence[Status] = ()
    start_ns: int | None = None
    end_ns: int | None = None
    labels: Sequence[Label] = ()


@dataclass(frozen=True)
class Changes:
    status: Status | None = None
    resolution: str | None = None
    notes: str | None = None
    label: Label | None = None


class AlertKind(StrEnum):
    NEW = "new"
    ESCALATED = "escalated"


@dataclass(frozen=True)
class AlertRecord:
    alert_id: int
    """Monotonic (SQLite AUTOINCREMENT never reuses an id)."""
    kind: AlertKind
    anomaly: AnomalyRecord
    time_ns: int


class PageTokenError(ValueError):
    """A page token this store did not issue."""


class AnomalyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("anomaly store is not open")
        return self._db

    async def open(self) -> None:
        self._db = await open_database(self.path, SCHEMA, "synchronous=NORMAL")
        async with self._db.execute("SELECT max(version) FROM schema_version") as cursor:
            row = await cursor.fetchone()
        if row is None or row[0] is None:
            await self._db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def record(self, anomaly: AnomalyRecord) -> tuple[AnomalyRecord, bool]:
        """Insert, or fold into the open anomaly with the same dedupe key.

        Returns the stored record and whether it is new.
        """
        now = now_ns()
        existing = await self._by_dedupe_key(anomaly.dedupe_key)
        if existing is None:
            anomaly.id = anomaly.id or uuid7()
            anomaly.created_ns = anomaly.updated_ns = now
            anomaly.first_seen_ns = anomaly.first_seen_ns or anomaly.time_ns
            anomaly.last_seen_ns = anomaly.last_seen_ns or anomaly.time_ns
            await self.db.execute(_INSERT, _row_values(anomaly))
            await self.db.commit()
            return anomaly, True
        await self.db.execute(
            """UPDATE mcp_anomalies SET count = count + 1, updated_ns = ?,
               last_seen_ns = max(last_seen_ns, ?), timestamp_ns = max(timestamp_ns, ?),
               severity = min(severity, ?), confidence = max(confidence, ?),
               description = ?, features = ?, model_version = ?, event_ids = ?,
               status = CASE WHEN status = 'resolved' THEN 'open' ELSE status END
               WHERE id = ?""",
            (
                now,
                anomaly.time_ns,
                anomaly.time_ns,
                anomaly.severity,
                anomaly.confidence,
                anomaly.description,
                json.dumps(anomaly.features),
                anomaly.model_version,
                json.dumps(anomaly.event_ids),
                existing.id,
            ),
        )
        await self.db.commit()
        updated = await self.get(existing.id)
        assert updated is not None
        return updated, False

    async def add_alert(self, kind: AlertKind, anomaly: AnomalyRecord) -> AlertRecord:
        time_ns = now_ns()
        cursor = await self.db.execute(
            "INSERT INTO alerts (kind, anomaly_id, time_ns) VALUES (?, ?, ?)",
            (str(kind), anomaly.id, time_ns),
        )
        await self.db.commit()
        assert cursor.lastrowid is not None
        return AlertRecord(cursor.lastrowid, kind, anomaly, time_ns)

    async def alerts_after(self, after_id: int, limit: int) -> list[AlertRecord]:
        """Alerts with an id above ``after_id``, oldest first, with their anomaly as now."""
        async with self.db.execute(
            """SELECT alerts.alert_id, alerts.kind, alerts.time_ns AS alert_time_ns,
                      mcp_anomalies.* FROM alerts JOIN mcp_anomalies
               ON mcp_anomalies.id = alerts.anomaly_id
               WHERE alerts.alert_id > ? ORDER BY alerts.alert_id LIMIT ?""",
            (after_id, limit),
        ) as cursor:
            rows = list(await cursor.fetchall())
        return [
            AlertRecord(row["alert_id"], AlertKind(row["kind"]), _record(row), row["alert_time_ns"])
            for row in rows
        ]

    async def by_dedupe_key(self, key: str) -> AnomalyRecord | None:
        return await self._by_dedupe_key(key)

    async def _by_dedupe_key(self, key: str) -> AnomalyRecord | None:
        async with self.db.execute(
            "SELECT * FROM mcp_anomalies WHERE dedupe_key = ?", (key,)
        ) as cursor:
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def get(self, anomaly_id: str) -> AnomalyRecord | None:
        async with self.db.execute(
            "SELECT * FROM mcp_anomalies WHERE id = ?", (anomaly_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def update(self, anomaly_id: str, changes: Changes) -> AnomalyRecord | None:
        assignments: list[str] = []
        values: list[Any] = []
        for column, value in (
            ("status", changes.status),
            ("resolution_status", changes.resolution),
            ("resolution_notes", changes.notes),
            ("label", changes.label),
        ):
            if value is not None:
                assignments.append(f"{column} = ?")
                values.append(str(value))
        if assignments:
            assignments.append("updated_ns = ?")
            values.extend([now_ns(), anomaly_id])
            sql = f"UPDATE mcp_anomalies SET {', '.join(assignments)} WHERE id = ?"
            await self.db.execute(sql, values)
            await self.db.commit()
        return await self.get(anomaly_id)

    async def scan(
        self, query: AnomalyQuery, after: tuple[int, str] | None, limit: int
    ) -> list[AnomalyRecord]:
        """Oldest first, after the (timestamp, id) position ``after`` (exports page with it)."""
        where, values = _where(query)
        if after is not None:
            where.append("(timestamp_ns > ? OR (timestamp_ns = ? AND id > ?))")
            values.extend([after[0], after[0], after[1]])
        sql = "SELECT * FROM mcp_anomalies"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY timestamp_ns, id LIMIT ?"
        values.append(limit)
        async with self.db.execute(sql, values) as cursor:
            rows = list(await cursor.fetchall())
        return [_record(row) for row in rows]

    async def count(self, query: AnomalyQuery) -> int:
        where, values = _where(query)
        sql = "SELECT count(*) FROM mcp_anomalies"
        if where:
            sql += " WHERE " + " AND ".join(where)
        async with self.db.execute(sql, values) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def last_alert_id(self) -> int:
        async with self.db.execute("SELECT max(alert_id) FROM alerts") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def list(
        self, query: AnomalyQuery, page_size: int, page_token: str
    ) -> tuple[list[AnomalyRecord], str]:
        """Newest first, paged on (timestamp, id); returns the records and the next token."""
        where, values = _where(query)
        if page_token:
            last_ns, last_id = _decode_token(page_token)
            where.append("(timestamp_ns < ? OR (timestamp_ns = ? AND id < ?))")
            values.extend([last_ns, last_ns, last_id])
        sql = "SELECT * FROM mcp_anomalies"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY timestamp_ns DESC, id DESC LIMIT ?"
        values.append(page_size + 1)
        async with self.db.execute(sql, values) as cursor:
            rows = list(await cursor.fetchall())
        records = [_record(row) for row in rows[:page_size]]
        more = len(rows) > page_size
        token = _encode_token(records[-1].time_ns, records[-1].id) if more and records else ""
        return records, token


_COLUMNS = (
    "id, agent_name, device_id, timestamp_ns, anomaly_type, severity, confidence, "
    "description, features, status, synced, created_ns, updated_ns, resolution_status, "
    "resolution_notes, label, dedupe_key, count, first_seen_ns, last_seen_ns, "
    "model_version, event_ids"
)
_INSERT = f"INSERT INTO mcp_anomalies ({_COLUMNS}) VALUES ({', '.join('?' * 22)})"


def _row_values(a: AnomalyRecord) -> tuple[Any, ...]:
    return (
        a.id, a.agent, a.host, a.time_ns, a.type, a.severity, a.confidence, a.description,
        json.dumps(a.features), str(a.status), int(a.synced), a.created_ns, a.updated_ns,
        a.resolution, a.notes, str(a.label), a.dedupe_key, a.count, a.first_seen_ns,
        a.last_seen_ns, a.model_version, json.dumps(a.event_ids),
    )  # fmt: skip


def _record(row: sqlite3.Row) -> AnomalyRecord:
    return AnomalyRecord(
        id=row["id"],
        agent=row["agent_name"],
        host=row["device_id"],
        time_ns=row["timestamp_ns"],
        type=row["anomaly_type"],
        severity=row["severity"],
        confidence=row["confidence"],
        description=row["description"],
        features=json.loads(row["features"]),
        status=Status(row["status"]),
        synced=bool(row["synced"]),
        created_ns=row["created_ns"],
        updated_ns=row["updated_ns"],
        resolution=row["resolution_status"],
        notes=row["resolution_notes"],
        label=Label(row["label"]),
        dedupe_key=row["dedupe_key"],
        count=row["count"],
        first_seen_ns=row["first_seen_ns"],
        last_seen_ns=row["last_seen_ns"],
        model_version=row["model_version"],
        event_ids=json.loads(row["event_ids"]),
    )


def _where(query: AnomalyQuery) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    values: list[Any] = []
    for column, options in (
        ("agent_name", list(query.agents)),
        ("device_id", list(query.hosts)),
        ("status", [str(s) for s in query.statuses]),
        ("label", [str(label) for label in query.labels]),
    ):
        if options:
            where.append(f"{column} IN ({', '.join('?' * len(options))})")
            values.extend(options)
    if query.max_level is not None:
        where.append("severity <= ?")
        values.append(query.max_level)
    if query.start_ns is not None:
        where.append("timestamp_ns >= ?")
        values.append(query.start_ns)
    if query.end_ns is not None:
        where.append("timestamp_ns < ?")
        values.append(query.end_ns)
    return where, values


def _encode_token(time_ns: int, anomaly_id: str) -> str:
    raw = json.dumps([time_ns, anomaly_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str) -> tuple[int, str]:
    try:
        time_ns, anomaly_id = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise PageTokenError("not a page token issued by this service") from exc
    if not isinstance(time_ns, int) or not isinstance(anomaly_id, str):
        raise PageTokenError("not a page token issued by this service")
    return time_ns, anomaly_id
