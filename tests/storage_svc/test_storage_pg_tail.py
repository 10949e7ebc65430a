"""TailEvents with several storage replicas on one PostgreSQL database."""

from __future__ import annotations

import asyncio

from pg_server import PgSchema
from storage_helpers import (
    StorageClients,
    events,
    ids,
    receive,
    start_storage,
    subscribed,
    write_request,
)
from support import Pki


async def test_a_tail_on_one_replica_sees_writes_through_another(
    pki: Pki, pg_schema: PgSchema
) -> None:
    # A long poll interval: the write must arrive through NOTIFY, not the timer.
    slow_poll = {"tail_poll_interval_s": 30}
    async with (
        start_storage(pki, pg_schema, postgres=slow_poll) as a,
        start_storage(pki, pg_schema, postgres=slow_poll) as b,
        StorageClients.connect(pki, a) as via_a,
        StorageClients.connect(pki, b) as via_b,
    ):
        call = await subscribed(b, via_b.operator)
        await via_a.service.Write(write_request(events(range(3))))
        await via_b.service.Write(write_request(events(range(3, 5))))
        await via_a.service.Write(write_request(events(range(5, 8))))
        found, cursor = await receive(call, 8)
        call.cancel()

        resumed = await subscribed(a, via_a.operator, start_cursor=cursor)
        await via_b.service.Write(write_request(events(range(8, 10))))
        rest, _ = await receive(resumed, 2)
        resumed.cancel()

    assert ids(found) == ids(events(range(8)))
    assert ids(rest) == ids(events(range(8, 10)))


async def test_concurrent_writers_on_two_replicas_tail_without_gaps(
    pki: Pki, pg_schema: PgSchema
) -> None:
    async with (
        start_storage(pki, pg_schema) as a,
        start_storage(pki, pg_schema) as b,
        StorageClients.connect(pki, a) as via_a,
        StorageClients.connect(pki, b) as via_b,
    ):
        call = await subscribed(a, via_a.operator)

        async def write(stub: StorageClients, starts: range) -> None:
            for start in starts:
                await stub.service.Write(write_request(events(range(start, start + 10))))

        await asyncio.gather(write(via_a, range(0, 200, 20)), write(via_b, range(10, 200, 20)))
        found, _ = await receive(call, 200)
        call.cancel()

    assert sorted(ids(found)) == ids(events(range(200)))
    assert len(set(ids(found))) == 200
