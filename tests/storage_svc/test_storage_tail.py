"""TailEvents: live events, resuming from a cursor without gaps or repeats, slow subscribers."""

from __future__ import annotations

import asyncio
import re
import time

import grpc
import pytest
from storage_helpers import (
    StorageClients,
    Store,
    TailCall,
    events,
    ids,
    receive,
    start_storage,
    subscribed,
    write_request,
)
from support import Pki

from gen.edgebot.v1 import event_pb2, storage_pb2
from storage_svc import StorageApp


async def test_live_events_arrive(storage: StorageApp, clients: StorageClients) -> None:
    call = await subscribed(storage, clients.operator)
    await clients.service.Write(write_request(events(range(3))))
    await clients.service.Write(write_request(events(range(3, 5))))

    found, cursor = await receive(call, 5)
    call.cancel()
    assert ids(found) == ids(events(range(5)))
    assert cursor


async def test_tail_starts_now(storage: StorageApp, clients: StorageClients) -> None:
    await clients.service.Write(write_request(events(range(3))))
    call = await subscribed(storage, clients.operator)
    await clients.service.Write(write_request(events(range(3, 4))))

    found, _ = await receive(call, 1)
    call.cancel()
    assert ids(found) == ids(events([3]))


async def test_tail_applies_the_filter(storage: StorageApp, clients: StorageClients) -> None:
    call = await subscribed(
        storage, clients.operator, filter=storage_pb2.EventFilter(types=["snmp"])
    )
    await clients.service.Write(
        write_request([*events(range(2)), *events(range(2, 4), type="snmp")])
    )
    found, _ = await receive(call, 2)
    call.cancel()
    assert ids(found) == ids(events(range(2, 4)))


async def test_resume_replays_missed_events_then_goes_live(
    storage: StorageApp, clients: StorageClients
) -> None:
    first = await subscribed(storage, clients.operator)
    await clients.service.Write(write_request(events(range(3))))
    _, cursor = await receive(first, 3)
    first.cancel()
    await clients.service.Write(write_request(events(range(3, 7))))

    resumed = await subscribed(storage, clients.operator, start_cursor=cursor)
    replayed, _ = await receive(resumed, 4)
    await clients.service.Write(write_request(events(range(7, 9))))
    live, _ = await receive(resumed, 2)
    resumed.cancel()

    assert ids([*replayed, *live]) == ids(events(range(3, 9)))


async def test_resume_during_concurrent_writes_has_no_gaps_or_repeats(
    pki: Pki, store: Store
) -> None:
    tail = {"max_events_per_response": 7}
    async with (
        start_storage(pki, store, tail=tail) as app,
        StorageClients.connect(pki, app) as clients,
    ):
        first = await subscribed(app, clients.operator)
        await clients.service.Write(write_request(events(range(5))))
        _, cursor = await receive(first, 5)
        first.cancel()
        for start in range(5, 100, 5):
            await clients.service.Write(write_request(events(range(start, start + 5))))

        async def keep_writing() -> None:
            for start in range(100, 300, 5):
                await clients.service.Write(write_request(events(range(start, start + 5))))

        writer = asyncio.create_task(keep_writing())
        resumed = await subscribed(app, clients.operator, start_cursor=cursor)
        found, _ = await receive(resumed, 295)
        await writer
        resumed.cancel()

    assert ids(found) == ids(events(range(5, 300)))


async def test_a_slow_subscriber_is_cut_off_and_writes_go_on(pki: Pki, store: Store) -> None:
    big = "x" * 32_000
    async with (
        start_storage(pki, store, tail={"subscriber_buffer": 5}) as app,
        StorageClients.connect(pki, app) as clients,
    ):
        slow = await subscribed(app, clients.operator)
        slowest_write = 0.0
        for start in range(0, 400, 8):
            started = time.perf_counter()
            answer = await clients.service.Write(
                write_request(events(range(start, start + 8), message=big))
            )
            slowest_write = max(slowest_write, time.perf_counter() - started)
            assert answer.written == 8
        received, error = await drain(slow)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = error.details() or ""
        assert "fell more than 5 events behind" in details
        match = re.search(r"resume from cursor (\S+)$", details)
        assert match

        resumed = await subscribed(app, clients.operator, start_cursor=match[1])
        rest, _ = await receive(resumed, 400 - len(received))
        resumed.cancel()

    assert slowest_write < 1.0
    assert ids([*received, *rest]) == ids(events(range(400)))


async def drain(call: TailCall) -> tuple[list[event_pb2.Event], grpc.aio.AioRpcError]:
    received: list[event_pb2.Event] = []
    async with asyncio.timeout(10):
        try:
            async for response in call:
                received.extend(response.events)
        except grpc.aio.AioRpcError as error:
            return received, error
    pytest.fail("the tail ended without an error")


async def test_a_bad_cursor_is_invalid(clients: StorageClients) -> None:
    call = clients.operator.TailEvents(storage_pb2.TailEventsRequest(start_cursor="%%%"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("start_cursor: ")


async def test_shutdown_ends_open_tails_at_once_with_a_cursor(pki: Pki, store: Store) -> None:
    # A long grace period: the tail must end because storage tells it to, not by timeout.
    async with start_storage(pki, store, server={"grace_period_s": 30}) as app:
        async with StorageClients.connect(pki, app) as clients:
            call = await subscribed(app, clients.operator)
            await clients.service.Write(write_request(events(range(2))))
            await receive(call, 2)
            started = time.monotonic()
            await app.runtime.stop()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
    assert time.monotonic() - started < 5
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "resume from cursor" in (caught.value.details() or "")
