"""PostgreSQL schema: migrations with several replicas, day partitions, retention."""

from __future__ import annotations

import asyncio
import datetime as dt

from pg_server import PgSchema
from storage_helpers import StorageClients, event, ids, start_storage, storage_config, write_request
from support import Pki

from gen.edgebot.v1 import storage_pb2
from mesh.timeutil import NS_PER_S
from storage_svc.sinks import PostgresSink
from storage_svc.sinks.postgres import utc_today
from storage_svc.sinks.postgres_schema import SCHEMA_VERSION

OLDEST_FIRST = storage_pb2.QueryEventsRequest(order=storage_pb2.SORT_ORDER_OLDEST_FIRST)
DAY_NS = 86_400 * NS_PER_S


def sink(pki: Pki, store: PgSchema, **postgres: object) -> PostgresSink:
    config = storage_config(pki, store, postgres=postgres)
    return PostgresSink(config.postgres, on_commit=lambda stored: None)


def noon_ns(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(12), dt.UTC).timestamp()) * NS_PER_S


async def partition_days(store: PgSchema) -> list[str]:
    conn = await store.connect()
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'events'::regclass ORDER BY 1"
        )
    finally:
        await conn.close()
    return [row[0].removeprefix("events_p") for row in rows]


def day_names(*days: dt.date) -> list[str]:
    return sorted(f"{day:%Y%m%d}" for day in days)


async def test_replicas_migrating_at_once_apply_each_step_once(
    pki: Pki, pg_schema: PgSchema
) -> None:
    sinks = [sink(pki, pg_schema) for _ in range(4)]
    await asyncio.gather(*(each.open() for each in sinks))
    await asyncio.gather(*(each.close() for each in sinks))
    reopened = sink(pki, pg_schema)
    await reopened.open()
    await reopened.close()

    conn = await pg_schema.connect()
    try:
        versions = await conn.fetch("SELECT version FROM schema_version")
    finally:
        await conn.close()
    assert [row[0] for row in versions] == list(range(1, SCHEMA_VERSION + 1))


async def test_partitions_exist_from_yesterday_to_the_days_ahead(
    pki: Pki, pg_schema: PgSchema
) -> None:
    opened = sink(pki, pg_schema, partitions_ahead_days=3)
    await opened.open()
    await opened.close()
    today = utc_today()
    expected = [today + dt.timedelta(days=offset) for offset in range(-1, 4)]
    assert await partition_days(pg_schema) == day_names(*expected)


async def test_events_far_in_the_past_or_future_get_their_partition(
    pki: Pki, pg_schema: PgSchema
) -> None:
    today = utc_today()
    old, ahead = today - dt.timedelta(days=40), today + dt.timedelta(days=3)
    written = [event(1, ts_ns=noon_ns(old)), event(2, ts_ns=noon_ns(ahead))]
    async with start_storage(pki, pg_schema) as app, StorageClients.connect(pki, app) as c:
        answer = await c.service.Write(write_request(written))
        page = await c.operator.QueryEvents(OLDEST_FIRST)

    assert answer.written == 2
    assert list(page.events) == written
    days = await partition_days(pg_schema)
    assert set(day_names(old, ahead)) <= set(days)


async def test_retention_drops_whole_old_partitions_and_forgets_their_ids(
    pki: Pki, pg_schema: PgSchema
) -> None:
    today = utc_today()
    ages = {1: 40, 2: 31, 3: 29, 4: 0}
    written = [event(n, ts_ns=noon_ns(today - dt.timedelta(days=age))) for n, age in ages.items()]
    postgres = {"retention_days": 30}
    async with (
        start_storage(pki, pg_schema, postgres=postgres) as app,
        StorageClients.connect(pki, app) as c,
    ):
        await c.service.Write(write_request(written))
        assert isinstance(app.sink, PostgresSink)
        dropped = await app.sink.maintain(today)
        kept = ids((await c.operator.QueryEvents(OLDEST_FIRST)).events)
        again = await c.service.Write(write_request([written[0]]))
        after_rewrite = ids((await c.operator.QueryEvents(OLDEST_FIRST)).events)

    cutoff_days = [today - dt.timedelta(days=age) for age in (40, 31)]
    assert dropped == [f"events_p{day:%Y%m%d}" for day in sorted(cutoff_days)]
    assert kept == ids(written[2:])
    assert (again.written, again.duplicates) == (1, 0)
    assert after_rewrite == ids([written[0], *written[2:]])
    days = await partition_days(pg_schema)
    assert day_names(today - dt.timedelta(days=31))[0] not in days
    # Recreated on demand for the event written again.
    assert day_names(today - dt.timedelta(days=40))[0] in days
