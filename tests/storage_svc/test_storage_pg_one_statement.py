"""Small groups of batches are written by the ``store_batches`` function in one round trip;
large ones, and any with refusals, by the COPY transaction. Both must store the same rows
and give the same answers, whatever mix of re-sent batches and repeated event ids."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from pg_server import PgSchema, PgServer
from storage_helpers import event

from gen.edgebot.v1 import event_pb2
from mesh.timeutil import NS_PER_S, now_ns
from storage_svc.config import PostgresSection
from storage_svc.sinks.base import BatchWrite
from storage_svc.sinks.postgres import (
    MAX_CLAIMED_BY_INSERT,
    PendingWrite,
    PostgresSink,
    Stored,
    _one_statement,
    _stored_by_one_statement,
    _transaction,
)
from storage_svc.sinks.postgres_rows import event_record

WriteGroup = Callable[[asyncpg.Connection, list[PendingWrite], str], Awaitable[list[Stored | None]]]
CHANNEL = "edgebot_test_commits"
NOW_NS = now_ns()  # the sink creates today's partition (and the next days') when it opens


def stamped(number: int, **fields: object) -> event_pb2.Event:
    return event(number, ts_ns=NOW_NS + number * NS_PER_S, **fields)


def events(numbers: range | list[int]) -> list[event_pb2.Event]:
    return [stamped(number) for number in numbers]


def pending(batch_id: str, batch_events: list[event_pb2.Event], **refused: object) -> PendingWrite:
    batch = BatchWrite(
        batch_id=batch_id,
        agent_id="agent-1",
        seq=int(batch_id.rsplit("-", 1)[1]),
        events=batch_events,
        dead_letters=refused.get("dead_letters", []),  # type: ignore[arg-type]
        quarantined=[],
    )
    return PendingWrite(batch, [event_record(e, batch_id) for e in batch_events])


def groups() -> list[list[PendingWrite]]:
    """Two group commits: a batch given twice, ids repeated across and within batches, then
    a re-sent batch next to one whose ids were partly stored before."""
    first = [
        pending("batch-1", events([1, 2, 3])),
        pending("batch-2", events([3, 4])),
        pending("batch-1", events([1, 2, 3])),
        pending("batch-3", [stamped(5), stamped(5, message="the same id again"), stamped(6)]),
    ]
    second = [pending("batch-1", events([1, 2, 3])), pending("batch-4", events([1, 7]))]
    return [first, second]


@pytest.fixture
async def schemas(pg_server: PgServer) -> AsyncIterator[list[PgSchema]]:
    """Two migrated schemas, one for each way of writing."""
    made = [pg_server.fresh_schema(), pg_server.fresh_schema()]
    sinks = [
        PostgresSink(
            PostgresSection(dsn=s.dsn, schema_name=s.schema), lambda _: None, lambda: False
        )
        for s in made
    ]
    for sink in sinks:
        await sink.open()
    yield made
    for sink in sinks:
        await sink.close()


async def written_by(store: PgSchema, write: WriteGroup) -> tuple[list[object], list[object]]:
    conn = await store.connect()
    try:
        answers = [await write(conn, group, CHANNEL) for group in groups()]
        tables = [
            await conn.fetch(
                "SELECT seq, event_id, ts, ts_ns, observed_ns, type, source, host, service, "
                "severity, message, attributes, tags, raw, batch_id FROM events ORDER BY seq"
            ),
            await conn.fetch("SELECT event_id, ts FROM event_ids ORDER BY event_id"),
            await conn.fetch(
                "SELECT batch_id, agent_id, seq, event_count, written, duplicates "
                "FROM batches ORDER BY batch_id"
            ),
        ]
    finally:
        await conn.close()
    return [list(a) for a in answers], [[tuple(row) for row in rows] for rows in tables]


async def test_one_statement_stores_what_the_copy_transaction_stores(
    schemas: list[PgSchema],
) -> None:
    by_function = await written_by(schemas[0], _one_statement)
    by_copy = await written_by(schemas[1], _transaction)

    assert by_function == by_copy
    answers, (rows, claimed_ids, ledger) = by_function
    last = answers[0][0][1]
    assert answers[0] == [
        (3, last, frozenset()),
        (1, last, frozenset({"ev-000003"})),
        None,
        (2, last, frozenset()),
    ]
    assert answers[1] == [None, (1, last + 1, frozenset({"ev-000001"}))]
    assert [(row[0], row[1], row[10]) for row in rows] == [
        (last - 5, "ev-000001", "message 1"),
        (last - 4, "ev-000002", "message 2"),
        (last - 3, "ev-000003", "message 3"),
        (last - 2, "ev-000004", "message 4"),
        (last - 1, "ev-000005", "message 5"),
        (last, "ev-000006", "message 6"),
        (last + 1, "ev-000007", "message 7"),
    ]
    assert len(claimed_ids) == 7
    assert [(b[0], b[3], b[4], b[5]) for b in ledger] == [
        ("batch-1", 3, 3, 0),
        ("batch-2", 2, 1, 1),
        ("batch-3", 3, 2, 1),
        ("batch-4", 2, 1, 1),
    ]


def test_large_groups_and_refusals_take_the_copy_transaction() -> None:
    letter = event_pb2.DeadLetter(stage="ingest")
    assert _stored_by_one_statement([pending("batch-1", events(range(MAX_CLAIMED_BY_INSERT)))])
    assert not _stored_by_one_statement(
        [pending("batch-1", events(range(MAX_CLAIMED_BY_INSERT))), pending("batch-2", [stamped(0)])]
    )
    assert not _stored_by_one_statement([pending("batch-1", [stamped(1)], dead_letters=[letter])])
