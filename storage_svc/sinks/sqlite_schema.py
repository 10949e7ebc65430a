"""The SQLite schema as numbered migrations, applied once each at open."""

from __future__ import annotations

import aiosqlite

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            ts_ns INTEGER NOT NULL,
            observed_ns INTEGER,
            type TEXT NOT NULL,
            source TEXT NOT NULL,
            host TEXT NOT NULL,
            service TEXT NOT NULL,
            severity INTEGER,
            message TEXT NOT NULL,
            attributes TEXT NOT NULL,
            tags TEXT NOT NULL,
            raw BLOB,
            batch_id TEXT NOT NULL,
            created_ns INTEGER NOT NULL
        )""",
        "CREATE INDEX events_time ON events (ts_ns, id)",
        "CREATE INDEX events_type_time ON events (type, ts_ns)",
        "CREATE INDEX events_source_time ON events (source, ts_ns)",
        "CREATE INDEX events_host_time ON events (host, ts_ns)",
        "CREATE INDEX events_service_time ON events (service, ts_ns)",
        """CREATE TABLE batches (
            batch_id TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            event_count INTEGER NOT NULL,
            written INTEGER NOT NULL,
            duplicates INTEGER NOT NULL,
            stored_ns INTEGER NOT NULL
        )""",
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            event_index INTEGER NOT NULL,
            event_id TEXT NOT NULL,
            field TEXT NOT NULL,
            reason TEXT NOT NULL,
            stage TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            batch_id TEXT NOT NULL,
            event BLOB NOT NULL,
            stored_ns INTEGER NOT NULL
        )""",
        """CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            event_index INTEGER NOT NULL,
            event_id TEXT NOT NULL,
            processor TEXT NOT NULL,
            reason TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            batch_id TEXT NOT NULL,
            event BLOB NOT NULL,
            stored_ns INTEGER NOT NULL
        )""",
    ),
    (
        # The entity graph (the entities sink): entities and their edges to events.
        """CREATE TABLE entities (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            first_ns INTEGER NOT NULL,
            last_ns INTEGER NOT NULL,
            PRIMARY KEY (kind, key)
        ) WITHOUT ROWID""",
        """CREATE TABLE entity_events (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            ts_ns INTEGER NOT NULL,
            event_id TEXT NOT NULL,
            relation TEXT NOT NULL,
            PRIMARY KEY (kind, key, ts_ns, event_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX entity_events_event ON entity_events (event_id)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(db: aiosqlite.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; safe to run again and from several processes.

    ``db`` must be in autocommit mode (isolation_level None). Returns the version found.
    """
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    await db.execute("BEGIN IMMEDIATE")
    try:
        found = await _version(db)
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {found} is newer than this build knows "
                f"({SCHEMA_VERSION}); upgrade EdgeBot"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                await db.execute(statement)
            await db.execute("DELETE FROM schema_version")
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    return found


async def _version(db: aiosqlite.Connection) -> int:
    async with db.execute("SELECT MAX(version) FROM schema_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else 0
