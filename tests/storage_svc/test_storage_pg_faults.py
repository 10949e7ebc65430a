"""PostgreSQL going away: at start-up, and killed or stopped in the middle of a write."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pg_server import PgSchema, PgServer, free_tcp_port, running_server
from storage_helpers import StorageClients, events, start_storage, storage_config, write_request
from support import Pki, secure_channel

from gen.edgebot.v1 import storage_pb2, storage_pb2_grpc
from mesh.errors import retry_delay_s
from storage_svc import StorageApp, build
from storage_svc.config import PostgresSection
from storage_svc.sinks import PostgresSink, SinkOpenError

BIG_BATCH = 30_000


@pytest.fixture(scope="module")
def own_server() -> Iterator[PgServer]:
    """A server of this module's own, which its tests may kill without hurting others."""
    with running_server() as server:
        yield server


@pytest.fixture
def own_store(own_server: PgServer) -> PgSchema:
    if not own_server.running:
        own_server.start()
    return own_server.fresh_schema()


async def health(app: StorageApp, pki: Pki) -> int:
    channel = secure_channel(app.runtime.ports.grpc, pki.service("ingest"))
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="edgebot.v1.StorageService")
        )
    finally:
        await channel.close()
    status: int = reply.status
    return status


async def test_an_unreachable_database_stays_not_serving_and_hides_the_password(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = f"postgresql://edgebot:s3cret-pw@127.0.0.1:{free_tcp_port()}/edgebot"
    app = build(storage_config(pki, PgSchema(dsn, "public")))
    await app.runtime.start()
    try:
        with (
            caplog.at_level(logging.INFO),
            pytest.raises(SinkOpenError, match=r"cannot connect to PostgreSQL at .*:\*\*\*@"),
        ):
            await app.open()
        assert await health(app, pki) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await app.runtime.stop()
        await app.close()
    assert "storage stays NOT_SERVING" in caplog.text
    assert "s3cret-pw" not in caplog.text


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://edgebot:s3cret-pw@db.example:5432/edgebot",
        "postgresql://edgebot@db.example/edgebot?sslmode=require&password=s3cret-pw",
    ],
)
def test_the_password_never_appears_where_the_database_is_named(dsn: str) -> None:
    sink = PostgresSink(PostgresSection(dsn=dsn), on_commit=lambda stored: None)
    assert "s3cret-pw" not in sink.where
    assert "db.example" in sink.where
    assert "***" in sink.where


async def during_copy(store: PgSchema, action: Callable[[], None], timeout_s: float = 10) -> None:
    """Run ``action`` as soon as a storage session is copying rows into events."""
    conn = await asyncpg.connect(store.dsn)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        copying = await conn.fetchval(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = "
            "'edgebot-storage' AND state = 'active' AND query LIKE 'COPY \"events\"%'"
        )
        if copying:
            action()
            conn.terminate()
            return
        await asyncio.sleep(0.002)
    await conn.close()
    pytest.fail("the write never reached its COPY")


async def write_until_stored(
    stub: storage_pb2_grpc.StorageServiceAsyncStub, request: storage_pb2.WriteRequest
) -> storage_pb2.WriteResponse:
    """Retry on UNAVAILABLE as the edge does (a pooled connection may still be the old one)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return await stub.Write(request)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def stored_counts(store: PgSchema) -> tuple[int, int, int]:
    conn = await store.connect()
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM event_ids), "
            "(SELECT COUNT(*) FROM batches)"
        )
    finally:
        await conn.close()
    return (row[0], row[1], row[2])


@pytest.mark.parametrize("stop", [PgServer.kill, PgServer.stop], ids=["kill-9", "fast-stop"])
async def test_postgres_going_away_mid_write_fails_retryably_and_keeps_nothing(
    pki: Pki, own_server: PgServer, own_store: PgSchema, stop: Callable[[PgServer], None]
) -> None:
    request = write_request(events(range(BIG_BATCH)))
    async with start_storage(pki, own_store) as app, StorageClients.connect(pki, app) as c:
        writing = asyncio.ensure_future(c.service.Write(request))
        await during_copy(own_store, lambda: stop(own_server))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await writing
        own_server.start()
        assert await stored_counts(own_store) == (0, 0, 0)
        answer = await write_until_stored(c.service, request)
        again = await c.service.Write(request)
        stats = await c.service.GetStats(storage_pb2.StorageServiceGetStatsRequest())

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert retry_delay_s(caught.value) is not None
    assert "retry the batch" in (caught.value.details() or "")
    assert (answer.duplicate_batch, answer.written) == (False, BIG_BATCH)
    assert again.duplicate_batch
    assert await stored_counts(own_store) == (BIG_BATCH, BIG_BATCH, 1)
    [sink] = stats.sinks
    assert sink.failed >= 1
    assert sink.health == storage_pb2.SINK_HEALTH_UP


async def test_writes_recover_when_postgres_is_back(
    pki: Pki, own_server: PgServer, own_store: PgSchema
) -> None:
    async with start_storage(pki, own_store) as app, StorageClients.connect(pki, app) as c:
        await c.service.Write(write_request(events(range(3))))
        own_server.stop()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await c.service.Write(write_request(events(range(3, 6))))
        with pytest.raises(grpc.aio.AioRpcError) as reading:
            await c.operator.QueryEvents(storage_pb2.QueryEventsRequest())
        own_server.start()
        answer = await write_until_stored(c.service, write_request(events(range(3, 6))))

    assert reading.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert answer.written == 3
    assert (await stored_counts(own_store))[0] == 6
