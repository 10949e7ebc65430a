"""WriteMany: several batches in one call, each written as Write writes it and answered on
its own; in PostgreSQL they are committed in one group."""

from __future__ import annotations

import grpc
from pg_server import PgSchema
from storage_helpers import (
    StorageClients,
    events,
    group_counts,
    ids,
    refuse_event,
    start_storage,
    write_request,
)
from support import Pki

from gen.edgebot.v1 import storage_pb2

OLDEST_FIRST = storage_pb2.QueryEventsRequest(
    page_size=1000, order=storage_pb2.SORT_ORDER_OLDEST_FIRST
)


async def test_each_write_gets_its_own_result_and_a_bad_one_fails_alone(
    clients: StorageClients,
) -> None:
    before = write_request(events(range(0, 3)))
    await clients.service.Write(before)
    nameless = write_request(events(range(10, 12)))
    nameless.batch.batch_id = ""
    writes = [write_request(events(range(20, 24))), before, nameless]
    writes.append(write_request(events([2, 30])))  # ev-2 was stored by ``before``

    response = await clients.service.WriteMany(storage_pb2.WriteManyRequest(writes=writes))
    stored = ids((await clients.operator.QueryEvents(OLDEST_FIRST)).events)

    fresh, resent, refused, overlapping = response.results
    assert (fresh.written.written, fresh.written.duplicate_batch) == (4, False)
    assert (resent.written.duplicate_batch, resent.written.written) == (True, 0)
    assert refused.WhichOneof("result") == "failure"
    assert refused.failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.failure.message.startswith("writes[2].batch.batch_id: required")
    assert (overlapping.written.written, overlapping.written.duplicates) == (1, 1)
    assert stored == ids(events([0, 1, 2, *range(20, 24), 30]))


async def test_an_empty_write_many_answers_nothing(clients: StorageClients) -> None:
    response = await clients.service.WriteMany(storage_pb2.WriteManyRequest())
    assert list(response.results) == []


async def test_the_writes_of_one_call_are_committed_in_one_transaction(
    pki: Pki, pg_schema: PgSchema
) -> None:
    writes = [write_request(events(range(n, n + 5))) for n in (0, 100, 200)]
    async with start_storage(pki, pg_schema) as app, StorageClients.connect(pki, app) as c:
        # The day's partition is created first, as on any day after its first batch.
        await c.service.Write(write_request(events([300])))
        transactions, batches = group_counts()
        response = await c.service.WriteMany(storage_pb2.WriteManyRequest(writes=writes))
        after = group_counts()
        stored = ids((await c.operator.QueryEvents(OLDEST_FIRST)).events)

    assert [r.written.written for r in response.results] == [5, 5, 5]
    assert (after[0] - transactions, after[1] - batches) == (1, 3)
    assert stored == ids(events([*range(0, 5), *range(100, 105), *range(200, 205), 300]))


async def test_a_write_the_database_refuses_fails_alone_and_may_be_retried(
    pki: Pki, pg_schema: PgSchema
) -> None:
    poisoned = write_request(events(range(500, 503)))
    healthy = [write_request(events(range(n, n + 3))) for n in (600, 700)]
    async with start_storage(pki, pg_schema) as app, StorageClients.connect(pki, app) as c:
        await refuse_event(pg_schema, "ev-000501")
        request = storage_pb2.WriteManyRequest(writes=[healthy[0], poisoned, healthy[1]])
        response = await c.service.WriteMany(request)
        stored = ids((await c.operator.QueryEvents(OLDEST_FIRST)).events)

    first, refused, last = response.results
    assert (first.written.written, last.written.written) == (3, 3)
    assert refused.failure.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "poisoned" in refused.failure.message
    assert refused.failure.retry_delay.ToMilliseconds() > 0
    assert stored == ids(events([*range(600, 603), *range(700, 703)]))
