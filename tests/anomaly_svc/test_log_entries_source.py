"""The anomaly service reading an existing syslog-ng log_entries table on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from anomaly_samples import crowdsec_events, openwrt_events
from pydantic import ValidationError
from support import Pki, eventually_async, make_config, secure_channel

from anomaly_svc import AnomalyApp, AnomalyServiceConfig, build
from anomaly_svc.agents.base import EventView
from anomaly_svc.scheduler import CycleResult
from anomaly_svc.sources.log_entries import LogEntriesFeed, LogEntriesSection, SourceError
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc, event_pb2
from mesh.pki import DevCA
from mesh.timeutil import NS_PER_S, ts_to_ns

LEVEL_NAMES = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")
# The original AI service's schema (syslog-ng writes it); timestamp is nullable here so a
# broken row can be made.
ORIGINAL_SCHEMA = """
CREATE TABLE devices (
    id INTEGER PRIMARY KEY, name VARCHAR(128) NOT NULL, ip_address VARCHAR(45) NOT NULL UNIQUE
);
CREATE TABLE log_entries (
    id SERIAL PRIMARY KEY,
    device_id INTEGER NOT NULL REFERENCES devices(id),
    device_ip VARCHAR(45) NOT NULL,
    timestamp TIMESTAMP,
    log_level VARCHAR(50),
    process_name VARCHAR(128),
    message TEXT NOT NULL,
    raw_message TEXT,
    structured_data JSON,
    pushed_to_ai BOOLEAN DEFAULT FALSE,
    pushed_at TIMESTAMP,
    push_attempts INTEGER DEFAULT 0,
    last_push_error TEXT
);
CREATE INDEX ix_log_entries_pushed_to_ai ON log_entries(pushed_to_ai);
"""
MINIMAL_SCHEMA = """
CREATE TABLE log_entries (
    id BIGSERIAL PRIMARY KEY, timestamp TIMESTAMPTZ NOT NULL, device_ip TEXT,
    process_name TEXT, message TEXT NOT NULL
);
"""
ROLES = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ai_reader') THEN
    CREATE ROLE ai_reader LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ai_writer') THEN
    CREATE ROLE ai_writer LOGIN; END IF;
END $$;
"""


@dataclass
class LogDb:
    server: Any
    database: str
    pki: Pki

    def dsn(self, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.server.port}/{self.database}"

    async def execute(self, sql: str, *args: Any) -> Any:
        connection = await asyncpg.connect(self.dsn(), ssl=False)
        try:
            return await connection.execute(sql, *args)
        finally:
            await connection.close()

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(self.dsn(), ssl=False)
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()

    async def fill(self, events: Sequence[event_pb2.Event]) -> None:
        """Rows as syslog-ng writes them from the same lines."""
        hosts = sorted({e.host for e in events})
        await self.execute(
            "INSERT INTO devices (id, name, ip_address) "
            "SELECT (SELECT COALESCE(max(id), 0) FROM devices) + i, h, h "
            "FROM unnest($1::text[]) WITH ORDINALITY AS t(h, i) "
            "WHERE h NOT IN (SELECT ip_address FROM devices)",
            hosts,
        )
        devices = {
            row["ip_address"]: row["id"] for row in await self.fetch("SELECT * FROM devices")
        }
        connection = await asyncpg.connect(self.dsn(), ssl=False)
        try:
            await connection.executemany(
                "INSERT INTO log_entries (device_id, device_ip, timestamp, log_level, "
                "process_name, message, raw_message, structured_data) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [
                    (
                        devices[e.host],
                        e.host,
                        dt.datetime.fromtimestamp(ts_to_ns(e.time) / NS_PER_S, dt.UTC).replace(
                            tzinfo=None
                        ),
                        LEVEL_NAMES[e.severity - 1] if e.severity else None,
                        e.service,
                        e.message,
                        e.raw.decode(errors="replace") if e.HasField("raw") else None,
                        json.dumps({"pid": e.attributes["process.pid"]})
                        if "process.pid" in e.attributes
                        else None,
                    )
                    for e in events
                ],
            )
        finally:
            await connection.close()

    async def grant(self) -> None:
        await self.execute(ROLES)
        await self.execute("GRANT SELECT ON log_entries TO ai_reader")
        await self.execute("GRANT SELECT ON log_entries TO ai_writer")
        await self.execute(
            "GRANT UPDATE (pushed_to_ai, pushed_at, push_attempts, last_push_error) "
            "ON log_entries TO ai_writer"
        )


@pytest.fixture
async def log_db(tls_pg_server: Any, pki: Pki) -> LogDb:
    return LogDb(tls_pg_server, (await tls_pg_server.create_database()).rsplit("/", 1)[1], pki)


def source_settings(db: LogDb, **overrides: Any) -> dict[str, Any]:
    ca = db.pki.service("anomaly").ca_file
    return {
        "enabled": True,
        "dsn": db.dsn("ai_reader"),
        "sslmode": "verify-full",
        "ssl_root_cert": str(ca),
        "poll_interval_s": 0.1,
        "retry_initial_s": 0.1,
        "retry_max_s": 0.5,
        "replaces_storage": True,
        **overrides,
    }


@asynccontextmanager
async def anomaly_service(
    pki: Pki, state: Path, log_entries: dict[str, Any]
) -> AsyncIterator[anomaly_pb2_grpc.AnomalyServiceAsyncStub]:
    config = make_config(
        AnomalyServiceConfig, pki, "anomaly",
        store={"path": str(state / "anomalies.db")},
        storage={"addresses": ["127.0.0.1:9"], "timeout_s": 1},
        models={"dir": str(state / "models")},
        agents=[{"type": "auth", "interval_s": 3600}, {"type": "wifi", "interval_s": 3600}],
        # Two cores shared by the whole suite: never defer these cycles.
        resources={"max_cpu_percent": 100, "max_memory_percent": 100},
        log_entries=log_entries,
    )  # fmt: skip
    app = build(config)
    assert isinstance(app, AnomalyApp)
    await app.runtime.start()
    try:
        await app.open()
        async with secure_channel(app.runtime.ports.grpc, pki.operator()) as channel:
            yield anomaly_pb2_grpc.AnomalyServiceStub(channel)
    finally:
        await app.runtime.stop()
        await app.close()


async def anomalies(stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub) -> dict[str, int]:
    reply = await stub.ListAnomalies(anomaly_pb2.ListAnomaliesRequest(page_size=500))
    return {a.dedupe_key: a.count for a in reply.anomalies}


async def test_auth_agent_finds_the_brute_force_in_the_table_and_rows_get_marked(
    log_db: LogDb, pki: Pki, tmp_path: Path
) -> None:
    await log_db.execute(ORIGINAL_SCHEMA)
    await log_db.grant()
    await log_db.fill(crowdsec_events("ssh-bf"))
    await log_db.fill(openwrt_events())
    total = (await log_db.fetch("SELECT count(*) FROM log_entries"))[0][0]
    settings = source_settings(log_db, write_dsn=log_db.dsn("ai_writer"))

    async def all_marked() -> bool:
        rows = await log_db.fetch("SELECT count(*) FROM log_entries WHERE pushed_to_ai")
        return bool(rows[0][0] == total)

    async with anomaly_service(pki, tmp_path, settings) as stub:
        await eventually_async(all_marked, 30, "every row marked as analysed")
        found = await anomalies(stub)
    assert {key for key in found if key.startswith("auth:")} == {
        "auth:brute_force:35.188.49.176",
        "auth:user_enumeration:35.188.49.176",
        "auth:password_change:openwrt:root",
    }
    assert len([key for key in found if key.startswith("wifi:psk_mismatch:")]) == 2
    rows = await log_db.fetch(
        "SELECT pushed_at IS NOT NULL AS at, push_attempts, last_push_error FROM log_entries"
    )
    assert {(r["at"], r["push_attempts"], r["last_push_error"]) for r in rows} == {(True, 1, None)}
    assert not (tmp_path / "log-entries-state.db").exists()


async def test_high_water_mark_prevents_reanalysis_after_restart(
    log_db: LogDb, pki: Pki, tmp_path: Path
) -> None:
    # No bookkeeping columns, only the columns the agents need.
    await log_db.execute(MINIMAL_SCHEMA)
    await log_db.execute(ROLES)
    await log_db.execute("GRANT SELECT ON log_entries TO ai_reader")
    connection = await asyncpg.connect(log_db.dsn(), ssl=False)
    try:
        await connection.executemany(
            "INSERT INTO log_entries (timestamp, device_ip, process_name, message) "
            "VALUES ($1, $2, $3, $4)",
            [
                (
                    dt.datetime.fromtimestamp(ts_to_ns(e.time) / NS_PER_S, dt.UTC),
                    e.host,
                    e.service,
                    e.message,
                )
                for e in crowdsec_events("ssh-bf")
            ],
        )
    finally:
        await connection.close()
    last = (await log_db.fetch("SELECT max(id) FROM log_entries"))[0][0]
    state = tmp_path / "log-entries-state.db"

    def mark() -> int | None:
        if not state.exists():
            return None
        try:
            with sqlite3.connect(state) as db:
                row = db.execute("SELECT last_id FROM progress").fetchone()
        except sqlite3.OperationalError:  # created, its table not yet
            return None
        return None if row is None else int(row[0])

    async def reached(target: int) -> bool:
        return mark() == target

    settings = source_settings(log_db)
    async with anomaly_service(pki, tmp_path, settings) as stub:
        await eventually_async(lambda: reached(last), 30, "the high-water mark at the last row")
        before = await anomalies(stub)
    assert before["auth:brute_force:35.188.49.176"] == 1
    # Restart; one new row arrives; only it is analysed.
    now = dt.datetime.now(dt.UTC)
    await log_db.execute(
        "INSERT INTO log_entries (timestamp, device_ip, process_name, message) "
        "VALUES ($1, 'router', 'dropbear', 'Exit (root): Disconnect received')",
        now,
    )
    async with anomaly_service(pki, tmp_path, settings) as stub:
        await eventually_async(lambda: reached(last + 1), 30, "the new row analysed")
        after = await anomalies(stub)
    assert after == before


async def test_bookkeeping_columns_without_a_writable_role_stay_untouched(
    log_db: LogDb, tmp_path: Path
) -> None:
    await log_db.execute(ORIGINAL_SCHEMA)
    await log_db.grant()
    await log_db.fill(crowdsec_events("sshd-success-logs"))
    collector = Collector()
    feed = LogEntriesFeed(LogEntriesSection(**source_settings(log_db)), tmp_path / "state.db")
    try:
        await feed.cycle(collector)
        assert feed.marks is False
        assert await feed.cycle(collector) is False  # nothing new: idle
    finally:
        await feed.stop()
    assert len(collector.batches) == 1
    rows = await log_db.fetch("SELECT DISTINCT pushed_to_ai, push_attempts FROM log_entries")
    assert [tuple(r) for r in rows] == [(False, 0)]


@dataclass
class Collector:
    """Stands in for the scheduler: keeps what the feed hands over."""

    batches: list[list[EventView]] = field(default_factory=list)
    fail: bool = False

    async def analyze_events(
        self, events: Sequence[EventView], origin: str
    ) -> list[CycleResult] | None:
        if self.fail:
            raise RuntimeError("anomaly store unavailable")
        self.batches.append(list(events))
        return [CycleResult("collector", len(events))]


async def test_row_mapping_and_a_configured_column_layout(log_db: LogDb, tmp_path: Path) -> None:
    await log_db.execute(
        "CREATE SCHEMA ingest; CREATE TABLE ingest.lines (seq INTEGER PRIMARY KEY, "
        "logged_at TIMESTAMPTZ, body TEXT, sender TEXT, prog TEXT, sev INTEGER, extra JSONB)"
    )
    await log_db.execute(
        "INSERT INTO ingest.lines VALUES (10, '2024-02-12 14:10:21+01', 'Failed password for "
        "root from 10.1.1.1 port 22 ssh2', '192.0.2.7', 'sshd[99]', 3, "
        """'{"timeQuality": {"tzKnown": "1"}, "n": 2}')"""
    )
    section = LogEntriesSection(
        **source_settings(log_db, dsn=log_db.dsn(), sslmode="require", ssl_root_cert=None),
        table="ingest.lines",
        columns={
            "id": "seq",
            "timestamp": "logged_at",
            "message": "body",
            "device_ip": "sender",
            "process_name": "prog",
            "log_level": "sev",
            "structured_data": "extra",
            "raw_message": None,
            "device_id": None,
        },
    )
    collector = Collector()
    feed = LogEntriesFeed(section, tmp_path / "state.db")
    try:
        await feed.cycle(collector)
    finally:
        await feed.stop()
    [[event]] = collector.batches
    assert event == EventView(
        id="lines:10",
        time_ns=int(dt.datetime(2024, 2, 12, 13, 10, 21, tzinfo=dt.UTC).timestamp()) * NS_PER_S,
        host="192.0.2.7",
        service="sshd",
        level=3,
        message="Failed password for root from 10.1.1.1 port 22 ssh2",
        type="syslog",
        attributes={
            "lines.id": "10",
            "device.ip": "192.0.2.7",
            "sd.timeQuality.tzKnown": "1",
            "sd.n": "2",
        },
    )


async def test_a_missing_configured_column_is_named(log_db: LogDb, tmp_path: Path) -> None:
    await log_db.execute(MINIMAL_SCHEMA)
    section = LogEntriesSection(
        **source_settings(log_db, dsn=log_db.dsn()), columns={"log_level": "severity"}
    )
    feed = LogEntriesFeed(section, tmp_path / "state.db")
    try:
        with pytest.raises(SourceError, match=r"log_entries\.columns\.log_level: column "):
            await feed.cycle(Collector())
    finally:
        await feed.stop()


async def test_unusable_rows_count_attempts_and_stop_being_read(
    log_db: LogDb, tmp_path: Path
) -> None:
    await log_db.execute(ORIGINAL_SCHEMA)
    await log_db.grant()
    await log_db.execute("INSERT INTO devices VALUES (1, 'r', 'r')")
    await log_db.execute(
        "INSERT INTO log_entries (device_id, device_ip, timestamp, message) VALUES "
        "(1, 'r', NULL, 'no time'), (1, 'r', now(), 'fine')"
    )
    settings = source_settings(log_db, write_dsn=log_db.dsn("ai_writer"), max_push_attempts=2)
    collector = Collector()
    feed = LogEntriesFeed(LogEntriesSection(**settings), tmp_path / "state.db")
    try:
        await feed.cycle(collector)
        await feed.cycle(collector)
        assert await feed.cycle(collector) is False
    finally:
        await feed.stop()
    assert [[e.message for e in batch] for batch in collector.batches] == [["fine"], []]
    rows = await log_db.fetch(
        "SELECT message, pushed_to_ai, push_attempts, last_push_error FROM log_entries ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        ("no time", False, 2, "timestamp: null"),
        ("fine", True, 1, None),
    ]


async def test_failed_analysis_keeps_the_rows_and_records_the_error(
    log_db: LogDb, tmp_path: Path
) -> None:
    await log_db.execute(ORIGINAL_SCHEMA)
    await log_db.grant()
    await log_db.fill(crowdsec_events("sshd-success-logs"))
    settings = source_settings(log_db, write_dsn=log_db.dsn("ai_writer"))
    feed = LogEntriesFeed(LogEntriesSection(**settings), tmp_path / "state.db")
    try:
        with pytest.raises(SourceError, match="rows kept for later"):
            await feed.cycle(Collector(fail=True))
    finally:
        await feed.stop()
    rows = await log_db.fetch(
        "SELECT DISTINCT pushed_to_ai, push_attempts, last_push_error FROM log_entries"
    )
    assert [tuple(r) for r in rows] == [(False, 1, "anomaly store unavailable")]


async def test_reads_are_read_only_and_tls_is_verified(log_db: LogDb, tmp_path: Path) -> None:
    await log_db.execute(MINIMAL_SCHEMA)
    # Even a superuser's sessions of the reader are read-only.
    feed = LogEntriesFeed(
        LogEntriesSection(**source_settings(log_db, dsn=log_db.dsn())), tmp_path / "state.db"
    )
    try:
        await feed.open()
        assert feed._reader is not None
        async with feed._reader.acquire() as connection:
            assert await connection.fetchval(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await connection.execute("DELETE FROM log_entries")
    finally:
        await feed.stop()
    other_ca = DevCA(tmp_path / "other-ca")
    wrong = LogEntriesSection(
        **source_settings(log_db, dsn=log_db.dsn(), ssl_root_cert=str(other_ca.cert_path))
    )
    feed = LogEntriesFeed(wrong, tmp_path / "state.db")
    try:
        with pytest.raises(OSError, match="certificate verify failed"):
            await feed.open()
    finally:
        await feed.stop()


async def test_the_feed_retries_until_the_database_is_back(log_db: LogDb, tmp_path: Path) -> None:
    await log_db.execute(MINIMAL_SCHEMA)
    await log_db.execute(
        "INSERT INTO log_entries (timestamp, message) VALUES (now(), 'after the outage')"
    )
    collector = Collector()
    feed = LogEntriesFeed(
        LogEntriesSection(**source_settings(log_db, dsn=log_db.dsn())), tmp_path / "state.db"
    )
    log_db.server.stop()
    try:
        feed.start(collector)

        async def failing() -> bool:
            return bool(feed.last_error)

        await eventually_async(failing, 10, "the first failed poll")
        assert collector.batches == []
    finally:
        log_db.server.start()
    try:

        async def delivered() -> bool:
            return feed.progress.last_id(feed.source_key) is not None and not feed.last_error

        await eventually_async(delivered, 20, "rows delivered once the server is back")
    finally:
        await feed.stop()
    assert [[e.message for e in batch] for batch in collector.batches] == [["after the outage"]]


def test_tls_settings_are_checked_with_the_configuration() -> None:
    with pytest.raises(ValidationError, match="ssl_root_cert: required with sslmode verify-ca"):
        LogEntriesSection(sslmode="verify-ca")
    with pytest.raises(ValidationError, match="ssl_cert and ssl_key go together"):
        LogEntriesSection(ssl_cert="/etc/client.crt")
