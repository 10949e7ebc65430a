"""Group commit: batches that wait for a busy PostgreSQL transaction are committed together,
each under its own ledger entry and with its own answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from pg_server import PgSchema
from storage_helpers import (
    StorageClients,
    event,
    events,
    group_counts,
    ids,
    refuse_event,
    start_storage,
    write_request,
)
from support import Pki, eventually

from gen.edgebot.v1 import event_pb2, storage_pb2
from storage_svc import StorageApp
from storage_svc.config import PostgresSection
from storage_svc.sinks.postgres import PostgresSink
from storage_svc.sinks.postgres_schema import SEQ_LOCK

ONE_WRITE_AT_A_TIME = {"postgres": {"max_concurrent_writes": 1}}


@contextlib.asynccontextmanager
async def sequence_held(store: PgSchema) -> AsyncIterator[None]:
    """Holds the lock every write transaction takes before numbering its events: the
    transaction in flight waits there, and whatever arrives meanwhile has to queue."""
    conn = await store.connect()
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", SEQ_LOCK)
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", SEQ_LOCK)
        await conn.close()


async def blocked_on_lock(store: PgSchema) -> None:
    conn = await store.connect()
    try:
        # Polled: the lock queue is PostgreSQL's, nothing here can signal it.
        while not await conn.fetchval(  # noqa: ASYNC110
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ):
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def writes_waiting(app: StorageApp, count: int) -> None:
    sink = app.sink
    assert isinstance(sink, PostgresSink)
    await eventually(lambda: sink.writes_waiting >= count, what=f"{count} writes queued")


async def test_waiting_batches_are_committed_together_each_with_its_own_answer(
    pki: Pki, pg_schema: PgSchema
) -> None:
    first = write_request(events(range(0, 10)))
    second = write_request(events(range(100, 200)))
    overlapping = write_request(events(range(190, 220)))  # 10 ids shared with `second`
    resent = write_request(events(range(100, 200)), batch_id=second.batch.batch_id)
    refused = event(900, message="bad")
    letter = event_pb2.DeadLetter(
        error=event_pb2.EventError(index=1, event_id=refused.id, field="time", reason="missing"),
        event=refused,
        stage="ingest",
    )
    with_letter = write_request(events(range(300, 305)), dead_letters=[letter])
    async with (
        start_storage(pki, pg_schema, **ONE_WRITE_AT_A_TIME) as app,
        StorageClients.connect(pki, app) as c,
    ):
        async with sequence_held(pg_schema):
            in_flight = asyncio.ensure_future(c.service.Write(first))
            await blocked_on_lock(pg_schema)
            before = group_counts()
            queued = []
            # One at a time: concurrent calls may reach the server in any order, and the
            # answers below depend on the order the group holds them in.
            for request in (second, overlapping, resent, with_letter):
                queued.append(asyncio.ensure_future(c.service.Write(request)))
                await writes_waiting(app, len(queued))
        answers = await asyncio.gather(in_flight, *queued)
        after = group_counts()
        stored = ids((await c.operator.QueryEvents(storage_pb2.QueryEventsRequest(
            page_size=1000, order=storage_pb2.SORT_ORDER_OLDEST_FIRST))).events)  # fmt: skip
        stats = await c.service.GetStats(storage_pb2.StorageServiceGetStatsRequest())

    assert (after[0] - before[0], after[1] - before[1]) == (1, 4)  # one transaction of 4
    outcomes = [(a.duplicate_batch, a.written, a.duplicates) for a in answers]
    assert outcomes == [
        (False, 10, 0),
        (False, 100, 0),
        (False, 20, 10),
        (True, 0, 100),
        (False, 5, 0),
    ]
    expected = [*range(0, 10), *range(100, 220), *range(300, 305)]
    assert stored == ids(events(expected))
    assert (stats.batches, stats.dead_letters) == (4, 1)


async def test_a_batch_that_fails_its_group_fails_alone(pki: Pki, pg_schema: PgSchema) -> None:
    first = write_request(events(range(0, 5)))
    poisoned = write_request(events(range(500, 505)))
    healthy = [write_request(events(range(n, n + 5))) for n in (600, 700)]
    async with (
        start_storage(pki, pg_schema, **ONE_WRITE_AT_A_TIME) as app,
        StorageClients.connect(pki, app) as c,
    ):
        await refuse_event(pg_schema, "ev-000502")
        async with sequence_held(pg_schema):
            in_flight = asyncio.ensure_future(c.service.Write(first))
            await blocked_on_lock(pg_schema)
            queued = [
                asyncio.ensure_future(c.service.Write(request))
                for request in (healthy[0], poisoned, healthy[1])
            ]
            await writes_waiting(app, len(queued))
        answers = await asyncio.gather(in_flight, *queued, return_exceptions=True)
        stored = ids((await c.operator.QueryEvents(storage_pb2.QueryEventsRequest(
            page_size=1000, order=storage_pb2.SORT_ORDER_OLDEST_FIRST))).events)  # fmt: skip

    failed = answers[2]
    assert isinstance(failed, grpc.aio.AioRpcError)
    assert failed.code() == grpc.StatusCode.UNAVAILABLE
    assert "poisoned" in (failed.details() or "")
    assert [a.written for a in answers if not isinstance(a, BaseException)] == [5, 5, 5]
    assert stored == ids(events([*range(0, 5), *range(600, 605), *range(700, 705)]))
    conn = await pg_schema.connect()
    try:
        ledger = {row[0] for row in await conn.fetch("SELECT batch_id FROM batches")}
    finally:
        await conn.close()
    # The poisoned batch left no ledger entry: its re-send will be written, not skipped.
    assert ledger == {r.batch.batch_id for r in (first, *healthy)}


def test_concurrent_writes_must_fit_in_the_pool() -> None:
    with pytest.raises(ValueError, match="max_concurrent_writes"):
        PostgresSection(pool_max_size=2, max_concurrent_writes=3)
