"""Write: the batch ledger, event-id dedupe, atomic rollback, durability across restarts."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import grpc
import pytest
from storage_helpers import (
    StorageClients,
    Store,
    event,
    events,
    ids,
    sink_kind,
    start_storage,
    write_request,
)
from support import Pki

from gen.edgebot.v1 import event_pb2, storage_pb2, storage_pb2_grpc
from mesh.errors import retry_delay_s, status_details

OLDEST_FIRST = storage_pb2.QueryEventsRequest(order=storage_pb2.SORT_ORDER_OLDEST_FIRST)


def full_event() -> event_pb2.Event:
    made = event(
        1,
        type="netflow",
        source="site-a/netflow",
        host="edge-7",
        service="nfcapd",
        severity=event_pb2.SEVERITY_WARNING,
        message="flow 10.0.0.1 -> 10.0.0.2",
        attributes={"net.src_ip": "10.0.0.1", "net.dst_port": "443"},
        tags={"site": "a", "geo.country": "NL"},
        raw=b"\x00\x01raw bytes\xff",
    )
    made.observed_time.seconds, made.observed_time.nanos = 1_700_000_002, 123_456_789
    made.time.nanos = 987_654_321
    return made


async def query_all_ids(stub: storage_pb2_grpc.StorageServiceAsyncStub) -> list[str]:
    page = await stub.QueryEvents(OLDEST_FIRST)
    return ids(page.events)


async def test_written_events_come_back_with_every_field(
    clients: StorageClients, store: Store
) -> None:
    stored = [full_event(), event(2), event(3, raw=b"", severity=event_pb2.SEVERITY_UNSPECIFIED)]
    answer = await clients.service.Write(write_request(stored))

    assert (answer.duplicate_batch, answer.written, answer.duplicates) == (False, 3, 0)
    [result] = answer.sink_results
    assert (result.sink, result.primary, result.status) == (sink_kind(store), True, 1)
    assert result.status == event_pb2.SINK_STATUS_OK
    assert result.written == 3
    page = await clients.service.QueryEvents(OLDEST_FIRST)
    assert list(page.events) == stored
    assert page.events[2].HasField("raw")
    assert not page.events[1].HasField("raw")


async def test_the_same_batch_twice_is_stored_once(clients: StorageClients) -> None:
    request = write_request(events(range(5)))
    first = await clients.service.Write(request)
    second = await clients.service.Write(request)

    assert (first.duplicate_batch, first.written) == (False, 5)
    assert (second.duplicate_batch, second.written, second.duplicates) == (True, 0, 5)
    assert second.sink_results[0].status == event_pb2.SINK_STATUS_DUPLICATE
    assert await query_all_ids(clients.service) == ids(events(range(5)))


async def test_concurrent_writes_of_one_batch_store_it_once(clients: StorageClients) -> None:
    request = write_request(events(range(50)))
    answers = await asyncio.gather(*(clients.service.Write(request) for _ in range(4)))

    assert sorted(a.duplicate_batch for a in answers) == [False, True, True, True]
    assert sum(a.written for a in answers) == 50
    assert await query_all_ids(clients.service) == ids(events(range(50)))


async def test_an_event_id_already_stored_counts_as_a_duplicate(clients: StorageClients) -> None:
    await clients.service.Write(write_request(events(range(3))))
    answer = await clients.service.Write(write_request(events([2, 3, 4, 4])))

    assert (answer.duplicate_batch, answer.written, answer.duplicates) == (False, 2, 2)
    assert await query_all_ids(clients.service) == ids(events(range(5)))
    stats = await clients.service.GetStats(storage_pb2.StorageServiceGetStatsRequest())
    assert (stats.total_inserts, stats.duplicates, stats.batches) == (5, 2, 2)


async def test_empty_batch_id_is_invalid_and_names_the_field(clients: StorageClients) -> None:
    request = write_request(events([1]))
    request.batch.batch_id = ""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.service.Write(request)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch.batch_id" in (caught.value.details() or "")
    assert await query_all_ids(clients.service) == []


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_dead_letters_and_quarantined_events_are_kept(
    clients: StorageClients, db_path: Path
) -> None:
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
    await clients.service.Write(request)

    stats = await clients.service.GetStats(storage_pb2.StorageServiceGetStatsRequest())
    assert (stats.dead_letters, stats.quarantined, stats.total_inserts) == (1, 1, 1)
    with sqlite3.connect(db_path) as db:
        stage, field, agent, batch, blob = db.execute(
            "SELECT stage, field, agent_id, batch_id, event FROM dead_letters"
        ).fetchone()
        processor, reason, kept = db.execute(
            "SELECT processor, reason, event FROM quarantine"
        ).fetchone()
    assert (stage, field, agent, batch) == ("ingest", "time", "site-a", request.batch.batch_id)
    assert event_pb2.Event.FromString(blob) == refused
    assert (processor, reason) == ("redaction", "card number")
    assert event_pb2.Event.FromString(kept) == held.event


async def test_data_survives_closing_and_reopening(pki: Pki, store: Store) -> None:
    request = write_request(events(range(20)))
    for attempt in range(2):
        async with start_storage(pki, store) as app, StorageClients.connect(pki, app) as c:
            answer = await c.service.Write(request)
            assert answer.duplicate_batch is bool(attempt)
            assert await query_all_ids(c.service) == ids(events(range(20)))


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_a_locked_database_answers_unavailable_and_keeps_nothing(
    clients: StorageClients, db_path: Path
) -> None:
    request = write_request(events(range(3)))
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clients.service.Write(request)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "rolled back" in (caught.value.details() or "")
    assert retry_delay_s(caught.value) is not None
    stats = await clients.service.GetStats(storage_pb2.StorageServiceGetStatsRequest())
    assert stats.sinks[0].failed == 1
    assert stats.sinks[0].health == storage_pb2.SINK_HEALTH_DEGRADED
    assert "locked" in stats.sinks[0].last_error
    retried = await clients.service.Write(request)
    assert (retried.duplicate_batch, retried.written) == (False, 3)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_a_failure_mid_batch_rolls_back_the_ledger_too(
    clients: StorageClients, db_path: Path
) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON events WHEN NEW.id = 'ev-000002' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        )
    request = write_request(events(range(4)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.service.Write(request)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert status_details(caught.value) is not None
    assert await query_all_ids(clients.service) == []
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM batches").fetchone() == (0,)
        db.execute("DROP TRIGGER refuse_poison")

    retried = await clients.service.Write(request)
    assert (retried.duplicate_batch, retried.written) == (False, 4)


async def test_stats_report_the_primary_sink(clients: StorageClients, store: Store) -> None:
    await clients.service.Write(write_request([event(1), event(2)]))
    fresh = event(3)
    fresh.time.GetCurrentTime()
    await clients.service.Write(write_request([fresh]))

    stats = await clients.operator.GetStats(storage_pb2.StorageServiceGetStatsRequest())
    assert (stats.total_inserts, stats.events_last_hour, stats.batches) == (3, 1, 2)
    [sink] = stats.sinks
    assert (sink.name, sink.kind, sink.primary) == (sink_kind(store), sink_kind(store), True)
    assert (sink.health, sink.written, sink.failed) == (storage_pb2.SINK_HEALTH_UP, 3, 0)
