"""PostgreSQL writes: refused events kept, atomic rollback, and replicas racing on one database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from pg_server import PgSchema
from storage_helpers import StorageClients, event, events, ids, start_storage, write_request
from support import Pki

from gen.edgebot.v1 import event_pb2, storage_pb2, storage_pb2_grpc

OLDEST_FIRST = storage_pb2.QueryEventsRequest(
    order=storage_pb2.SORT_ORDER_OLDEST_FIRST, page_size=1000
)


@contextlib.asynccontextmanager
async def two_replicas(pki: Pki, store: PgSchema) -> AsyncIterator[list[StorageClients]]:
    """Two storage processes' worth of apps over the same database schema."""
    async with (
        start_storage(pki, store) as first,
        start_storage(pki, store) as second,
        StorageClients.connect(pki, first) as a,
        StorageClients.connect(pki, second) as b,
    ):
        yield [a, b]


async def stored_ids(stub: storage_pb2_grpc.StorageServiceAsyncStub) -> list[str]:
    return ids((await stub.QueryEvents(OLDEST_FIRST)).events)


async def test_dead_letters_and_quarantined_events_are_kept(pki: Pki, pg_schema: PgSchema) -> None:
    refused = event(9, message="bad")
    letter = event_pb2.DeadLetter(
        error=event_pb2.EventError(index=1, event_id=refused.id, field="time", reason="missing"),
        event=refused,
        stage="ingest",
    )
    held = event_pb2.QuarantinedEvent(
        index=2, event=event(10), processor="redaction", reason="card number"
    )
    request = write_request([event(1)], dead_letters=[letter], quarantined=[held])
    async with start_storage(pki, pg_schema) as app, StorageClients.connect(pki, app) as c:
        await c.service.Write(request)
        stats = await c.service.GetStats(storage_pb2.StorageServiceGetStatsRequest())

    assert (stats.dead_letters, stats.quarantined, stats.total_inserts) == (1, 1, 1)
    conn = await pg_schema.connect()
    try:
        letter_row = await conn.fetchrow(
            "SELECT stage, field, agent_id, batch_id, event FROM dead_letters"
        )
        held_row = await conn.fetchrow("SELECT processor, reason, event FROM quarantine")
    finally:
        await conn.close()
    assert tuple(letter_row[:4]) == ("ingest", "time", "site-a", request.batch.batch_id)
    assert event_pb2.Event.FromString(letter_row[4]) == refused
    assert (held_row[0], held_row[1]) == ("redaction", "card number")
    assert event_pb2.Event.FromString(held_row[2]) == held.event


async def test_a_failure_mid_batch_rolls_back_the_ledger_too(pki: Pki, pg_schema: PgSchema) -> None:
    request = write_request(events(range(4)))
    async with start_storage(pki, pg_schema) as app, StorageClients.connect(pki, app) as c:
        conn = await pg_schema.connect()
        try:
            await conn.execute(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.event_id = 'ev-000002' THEN RAISE EXCEPTION 'poisoned'; END IF; "
                "RETURN NEW; END $$"
            )
            await conn.execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON events "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await c.service.Write(request)
            counts = await conn.fetchrow(
                "SELECT (SELECT COUNT(*) FROM batches), (SELECT COUNT(*) FROM event_ids), "
                "(SELECT COUNT(*) FROM events)"
            )
            await conn.execute("DROP TRIGGER refuse_poison ON events")
        finally:
            await conn.close()
        retried = await c.service.Write(request)
        assert await stored_ids(c.service) == ids(events(range(4)))

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "poisoned" in (caught.value.details() or "")
    assert tuple(counts) == (0, 0, 0)
    assert (retried.duplicate_batch, retried.written) == (False, 4)


async def test_two_replicas_racing_with_one_batch_store_it_once(
    pki: Pki, pg_schema: PgSchema
) -> None:
    request = write_request(events(range(300)))
    async with two_replicas(pki, pg_schema) as (a, b):
        answers = await asyncio.gather(
            *(stub.Write(request) for _ in range(3) for stub in (a.service, b.service))
        )
        found = await stored_ids(b.operator)
        stats = await a.service.GetStats(storage_pb2.StorageServiceGetStatsRequest())

    assert sorted(answer.duplicate_batch for answer in answers) == [False] + [True] * 5
    assert sum(answer.written for answer in answers) == 300
    assert found == ids(events(range(300)))
    assert (stats.total_inserts, stats.batches) == (300, 1)


async def test_replicas_racing_with_overlapping_event_ids_store_each_once(
    pki: Pki, pg_schema: PgSchema
) -> None:
    overlapping = [write_request(events(range(start, start + 100))) for start in range(0, 250, 25)]
    async with two_replicas(pki, pg_schema) as replicas:
        answers = await asyncio.gather(
            *(
                replicas[number % 2].service.Write(request)
                for number, request in enumerate(overlapping)
            )
        )
        found = await stored_ids(replicas[0].operator)

    assert not any(answer.duplicate_batch for answer in answers)
    assert sum(answer.written for answer in answers) == 325
    assert sum(answer.duplicates for answer in answers) == 100 * len(overlapping) - 325
    assert found == ids(events(range(325)))


async def test_gin_pending_lists_are_merged_at_the_configured_size(
    pki: Pki, pg_schema: PgSchema
) -> None:
    """Events inserted with many distinct attributes leave pending lists of at most the
    configured 64 kB in the GIN indexes (PostgreSQL's default would hold 4 MB of them,
    then merge it all in one commit), so no one write stalls the others for long."""
    async with start_storage(pki, pg_schema) as app, StorageClients.connect(pki, app) as c:
        for first in range(0, 4000, 200):
            batch = [
                event(
                    number,
                    attributes={"net.src_ip": f"10.{number % 251}.0.1", "pid": f"{number}"},
                    tags={"site": f"s{number % 97}"},
                )
                for number in range(first, first + 200)
            ]
            await c.service.Write(write_request(batch))
    conn = await pg_schema.connect()
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple SCHEMA public")
        pending = await conn.fetch(
            "SELECT parent.relname AS index, public.pgstatginindex(leaf.oid) AS stats "
            "FROM pg_inherits JOIN pg_class parent ON parent.oid = inhparent "
            "JOIN pg_class leaf ON leaf.oid = inhrelid "
            "WHERE parent.relname IN ('events_attributes', 'events_tags') "
            "AND parent.relnamespace = $1::regnamespace",
            pg_schema.schema,
        )
    finally:
        await conn.close()
    assert {row["index"] for row in pending} == {"events_attributes", "events_tags"}
    for row in pending:
        _version, pending_pages, _pending_tuples = row["stats"]
        assert pending_pages * 8 <= 64 + 8, (row["index"], pending_pages)
    assert max(row["stats"][2] for row in pending) > 0, "the writes went through pending lists"
