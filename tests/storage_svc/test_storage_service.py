"""Who may call the storage service, and its health around opening the database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from storage_helpers import StorageClients, events, storage_config, write_request
from support import Pki, secure_channel

from gen.edgebot.v1 import storage_pb2, storage_pb2_grpc
from storage_svc import StorageApp, build
from storage_svc.sinks import SinkOpenError
from storage_svc.sinks.sqlite_schema import SCHEMA_VERSION

SERVICE = "edgebot.v1.StorageService"


async def health(app: StorageApp, pki: Pki) -> int:
    channel = secure_channel(app.runtime.ports.grpc, pki.service("ingest"))
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
    finally:
        await channel.close()
    status: int = reply.status
    return status


async def test_an_agent_may_not_write_or_query(clients: StorageClients) -> None:
    for call in (
        clients.agent.Write(write_request(events(range(1)))),
        clients.agent.QueryEvents(storage_pb2.QueryEventsRequest()),
        clients.agent.GetStats(storage_pb2.StorageServiceGetStatsRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    tail = clients.agent.TailEvents(storage_pb2.TailEventsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tail.read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    page = await clients.operator.QueryEvents(storage_pb2.QueryEventsRequest())
    assert list(page.events) == []


@pytest.mark.parametrize("caller", ["service", "operator"])
async def test_services_and_operators_may_write_and_query(
    clients: StorageClients, caller: str
) -> None:
    stub: storage_pb2_grpc.StorageServiceAsyncStub = getattr(clients, caller)
    answer = await stub.Write(write_request(events(range(2))))
    page = await stub.QueryEvents(storage_pb2.QueryEventsRequest())
    counts = await stub.AggregateEvents(storage_pb2.AggregateEventsRequest())
    assert answer.written == 2
    assert len(page.events) == 2
    assert sum(c.count for c in counts.counts) == 2


async def test_serving_once_the_database_is_open(pki: Pki, storage: StorageApp) -> None:
    assert await health(storage, pki) == health_pb2.HealthCheckResponse.SERVING


async def test_an_unopenable_database_stays_not_serving(pki: Pki, tmp_path: Path) -> None:
    app = build(storage_config(pki, tmp_path / "missing-dir" / "events.db"))
    await app.runtime.start()
    try:
        with pytest.raises(SinkOpenError, match=r"cannot open SQLite database .*missing-dir"):
            await app.open()
        assert await health(app, pki) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await app.runtime.stop()
        await app.close()


async def test_reopening_runs_no_migration_twice(pki: Pki, db_path: Path) -> None:
    for _ in range(2):
        app = build(storage_config(pki, db_path))
        await app.sink.open()
        await app.close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
