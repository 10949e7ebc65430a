"""The export registry: every export's spec, state, progress, parts and report in SQLite.

It lives beside the export files (``<exports.dir>/exports.db``), so an export and its
record are kept, moved and deleted together, and the state survives a restart.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
from google.protobuf import json_format

from anomaly_svc.export.spec import (
    Dataset,
    ExportRecord,
    ExportSpec,
    Format,
    Part,
    Report,
    State,
)
from anomaly_svc.sqlite import open_database
from gen.edgebot.v1 import storage_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS exports (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    rows_written INTEGER NOT NULL DEFAULT 0,
    bytes_written INTEGER NOT NULL DEFAULT 0,
    report TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    create_ns INTEGER NOT NULL,
    complete_ns INTEGER NOT NULL DEFAULT 0,
    expire_ns INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS exports_expire ON exports (expire_ns) WHERE expire_ns > 0;
CREATE TABLE IF NOT EXISTS export_parts (
    export_id TEXT NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    part_index INTEGER NOT NULL,
    name TEXT NOT NULL,
    dataset TEXT NOT NULL,
    rows INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (export_id, part_index)
);
"""


def spec_to_json(spec: ExportSpec) -> str:
    return json.dumps(
        {
            "datasets": [str(d) for d in spec.datasets],
            "filter": json_format.MessageToDict(spec.event_filter),
            "format": str(spec.format),
            "gzip": spec.gzip,
            "batch_size": spec.batch_size,
            "max_part_bytes": spec.max_part_bytes,
            "agents": list(spec.agents),
        }
    )


def spec_from_json(text: str) -> ExportSpec:
    data = json.loads(text)
    return ExportSpec(
        datasets=tuple(Dataset(d) for d in data["datasets"]),
        event_filter=json_format.ParseDict(data["filter"], storage_pb2.EventFilter()),
        format=Format(data["format"]),
        gzip=bool(data["gzip"]),
        batch_size=int(data["batch_size"]),
        max_part_bytes=int(data["max_part_bytes"]),
        agents=tuple(data["agents"]),
    )


def _report_to_json(report: Report) -> str:
    return json.dumps(
        {
            "row_counts": report.row_counts,
            "missing_fields": report.missing_fields,
            "min_time_ns": report.min_time_ns,
            "max_time_ns": report.max_time_ns,
        }
    )


def _report_from_json(text: str) -> Report:
    data = json.loads(text)
    return Report(
        row_counts=dict(data.get("row_counts", {})),
        missing_fields=dict(data.get("missing_fields", {})),
        min_time_ns=int(data.get("min_time_ns", 0)),
        max_time_ns=int(data.get("max_time_ns", 0)),
    )


class ExportRegistry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("export registry is not open")
        return self._db

    async def open(self) -> None:
        self._db = await open_database(self.path, SCHEMA, "foreign_keys=ON")
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def add(self, record: ExportRecord) -> None:
        await self.db.execute(
            "INSERT INTO exports (id, spec, state, create_ns) VALUES (?, ?, ?, ?)",
            (record.id, spec_to_json(record.spec), str(record.state), record.create_ns),
        )
        await self.db.commit()

    async def set_state(self, export_id: str, state: State) -> None:
        await self.db.execute("UPDATE exports SET state = ? WHERE id = ?", (str(state), export_id))
        await self.db.commit()

    async def progress(
        self,
        export_id: str,
        progress: float,
        rows: int,
        size: int,
        report: Report,
        parts: list[Part],
    ) -> None:
        """Progress after a batch, and the parts that batch closed, in one transaction."""
        await self.db.execute(
            "UPDATE exports SET progress = ?, rows_written = ?, bytes_written = ?, report = ? "
            "WHERE id = ?",
            (progress, rows, size, _report_to_json(report), export_id),
        )
        await self.db.executemany(
            "INSERT INTO export_parts VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (export_id, p.index, p.name, str(p.dataset), p.rows, p.size_bytes, p.sha256)
                for p in parts
            ],
        )
        await self.db.commit()

    async def finish(
        self,
        export_id: str,
        state: State,
        report: Report,
        error: str,
        complete_ns: int,
        expire_ns: int,
    ) -> None:
        """The end state; a failed export keeps no parts (its files are removed)."""
        progress_sql = ", progress = 1" if state == State.SUCCEEDED else ""
        if state != State.SUCCEEDED:
            await self.db.execute("DELETE FROM export_parts WHERE export_id = ?", (export_id,))
        await self.db.execute(
            f"UPDATE exports SET state = ?, report = ?, error = ?, complete_ns = ?, "
            f"expire_ns = ?{progress_sql} WHERE id = ?",
            (str(state), _report_to_json(report), error, complete_ns, expire_ns, export_id),
        )
        await self.db.commit()

    async def get(self, export_id: str) -> ExportRecord | None:
        async with self.db.execute("SELECT * FROM exports WHERE id = ?", (export_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return (await self._with_parts([row]))[0]

    async def page(self, before_id: str, limit: int) -> list[ExportRecord]:
        """Newest first (ids are UUIDv7, so they sort by creation)."""
        sql = "SELECT * FROM exports"
        values: list[Any] = []
        if before_id:
            sql += " WHERE id < ?"
            values.append(before_id)
        sql += " ORDER BY id DESC LIMIT ?"
        values.append(limit)
        async with self.db.execute(sql, values) as cursor:
            rows = list(await cursor.fetchall())
        return await self._with_parts(rows)

    async def in_states(self, states: tuple[State, ...]) -> list[ExportRecord]:
        marks = ", ".join("?" * len(states))
        async with self.db.execute(
            f"SELECT * FROM exports WHERE state IN ({marks}) ORDER BY id", [str(s) for s in states]
        ) as cursor:
            rows = list(await cursor.fetchall())
        return await self._with_parts(rows)

    async def expired(self, now_ns: int) -> list[str]:
        async with self.db.execute(
            "SELECT id FROM exports WHERE expire_ns > 0 AND expire_ns <= ?", (now_ns,)
        ) as cursor:
            return [row["id"] for row in await cursor.fetchall()]

    async def delete(self, export_id: str) -> None:
        await self.db.execute("DELETE FROM exports WHERE id = ?", (export_id,))
        await self.db.commit()

    async def _with_parts(self, rows: list[sqlite3.Row]) -> list[ExportRecord]:
        records = []
        for row in rows:
            async with self.db.execute(
                "SELECT * FROM export_parts WHERE export_id = ? ORDER BY part_index", (row["id"],)
            ) as cursor:
                parts = [
                    Part(
                        p["part_index"],
                        p["name"],
                        Dataset(p["dataset"]),
                        p["rows"],
                        p["size_bytes"],
                        p["sha256"],
                    )
                    for p in await cursor.fetchall()
                ]
            records.append(
                ExportRecord(
                    id=row["id"],
                    spec=spec_from_json(row["spec"]),
                    state=State(row["state"]),
                    create_ns=row["create_ns"],
                    progress=row["progress"],
                    rows_written=row["rows_written"],
                    bytes_written=row["bytes_written"],
                    parts=parts,
                    report=_report_from_json(row["report"]),
                    error=row["error"],
                    complete_ns=row["complete_ns"],
                    expire_ns=row["expire_ns"],
                )
            )
        return records
