"""The anomaly service's SQLite files (the anomaly store, the export registry): one way in."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite


async def open_database(path: Path, schema: str, *pragmas: str) -> aiosqlite.Connection:
    """Open (creating the folder) in WAL mode with rows by name, apply ``pragmas``
    (e.g. ``"synchronous=NORMAL"``) and the idempotent ``schema`` script."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    db.row_factory = sqlite3.Row
    await db.execute("PRAGMA journal_mode=WAL")
    for pragma in pragmas:
        await db.execute(f"PRAGMA {pragma}")
    await db.executescript(schema)
    return db
