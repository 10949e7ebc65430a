"""The entity graph through the real StorageService on SQLite and on PostgreSQL: entities
taken from events, an entity's events and neighbours over a time range, paging, idempotent
writes, and the errors of QueryEntities."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from storage_helpers import (
    BASE_NS,
    StorageClients,
    Store,
    event,
    fast_outbox,
    ids,
    start_storage,
    write_request,
)
from support import Pki, eventually_async

from gen.edgebot.v1 import event_pb2, storage_pb2
from mesh.errors import status_details
from mesh.timeutil import NS_PER_S, ns_to_ts
from storage_svc import StorageApp
from storage_svc.entities import EntityKind, entities_of
from storage_svc.sinks.base import BatchWrite
from storage_svc.sinks_config import EntitiesSinkSection

HOST = storage_pb2.ENTITY_KIND_HOST
USER = storage_pb2.ENTITY_KIND_USER
PROCESS = storage_pb2.ENTITY_KIND_PROCESS
CONTAINER = storage_pb2.ENTITY_KIND_CONTAINER
GENERATED = storage_pb2.ENTITY_RELATION_GENERATED
EXECUTED = storage_pb2.ENTITY_RELATION_EXECUTED


def graph_events() -> list[event_pb2.Event]:
    return [
        event(1, host="router-1", attributes={"user": "alice", "process.pid": "100"}),
        event(2, host="router-1", attributes={"user": "bob", "syslog.pid": "200"}),
        event(
            3,
            host="web-1",
            service="nginx",
            attributes={
                "user.name": "alice",
                "container.id": "c0ffee",
                "process.name": "nginx",
                "process.pid": "7",
            },
        ),
        event(4, host="router-1", message="link up"),
    ]


@pytest.fixture
async def graph_clients(pki: Pki, store: Store, tmp_path: Path) -> AsyncIterator[StorageClients]:
    sinks = {"sinks": [{"type": "entities"}], "outbox": fast_outbox(tmp_path)}
    async with start_storage(pki, store, **sinks) as app:
        async with StorageClients.connect(pki, app) as clients:
            await clients.service.Write(write_request(graph_events()))
            await graph_written(clients, 4)
            yield clients


async def graph_written(clients: StorageClients, count: int) -> None:
    async def written() -> bool:
        stats = await clients.operator.GetStats(storage_pb2.StorageServiceGetStatsRequest())
        [state] = [s for s in stats.sinks if s.kind == "entities"]
        return state.written >= count and state.outbox_depth == 0

    await eventually_async(written, what=f"{count} events in the graph")


def request(kind: int, key: str, **fields: object) -> storage_pb2.QueryEntitiesRequest:
    return storage_pb2.QueryEntitiesRequest(
        entity=storage_pb2.EntityRef(kind=kind, key=key),
        **fields,
    )


def neighbours(response: storage_pb2.QueryEntitiesResponse) -> list[tuple[int, str, int, int]]:
    return sorted(
        (n.entity.kind, n.entity.key, n.entity.relation, n.shared_events)
        for n in response.neighbors
    )


async def test_a_user_s_events_and_neighbours(graph_clients: StorageClients) -> None:
    answer = await graph_clients.operator.QueryEntities(request(USER, "alice"))
    assert (answer.entity.kind, answer.entity.key, answer.entity.relation) == (
        USER,
        "alice",
        EXECUTED,
    )
    assert answer.entity.first_seen_time.ToNanoseconds() == BASE_NS + 1 * NS_PER_S
    assert answer.entity.last_seen_time.ToNanoseconds() == BASE_NS + 3 * NS_PER_S
    assert ids(answer.events) == ["ev-000003", "ev-000001"]
    assert answer.event_count == 2
    assert answer.next_page_token == ""
    assert neighbours(answer) == [
        (HOST, "router-1", GENERATED, 1),
        (HOST, "web-1", GENERATED, 1),
        (PROCESS, "router-1/sshd[100]", EXECUTED, 1),
        (PROCESS, "web-1/nginx[7]", EXECUTED, 1),
        (CONTAINER, "c0ffee", GENERATED, 1),
    ]


async def test_a_host_over_a_time_range(graph_clients: StorageClients) -> None:
    window = request(
        HOST,
        "router-1",
        start_time=ns_to_ts(BASE_NS + 2 * NS_PER_S),
        end_time=ns_to_ts(BASE_NS + 4 * NS_PER_S),
    )
    answer = await graph_clients.operator.QueryEntities(window)
    assert ids(answer.events) == ["ev-000002"]
    assert answer.event_count == 1
    assert neighbours(answer) == [
        (USER, "bob", EXECUTED, 1),
        (PROCESS, "router-1/sshd[200]", EXECUTED, 1),
    ]
    everything = await graph_clients.operator.QueryEntities(request(HOST, "router-1"))
    assert (everything.event_count, len(everything.neighbors)) == (3, 4)


async def test_pages_of_an_entity_s_events_have_no_gaps_or_repeats(
    graph_clients: StorageClients,
) -> None:
    pages = []
    token = ""
    while True:
        page = await graph_clients.operator.QueryEntities(
            request(HOST, "router-1", page_size=1, page_token=token)
        )
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    assert [ids(page.events) for page in pages] == [["ev-000004"], ["ev-000002"], ["ev-000001"]]
    assert len(pages[0].neighbors) == 4
    assert all(not page.neighbors for page in pages[1:])
    assert {page.event_count for page in pages} == {3}
    few = await graph_clients.operator.QueryEntities(request(HOST, "router-1", max_neighbors=1))
    assert len(few.neighbors) == 1


@pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
async def test_events_written_to_the_graph_again_change_nothing(
    pki: Pki, store: Store, tmp_path: Path
) -> None:
    sinks = {"sinks": [{"type": "entities"}], "outbox": fast_outbox(tmp_path)}
    async with start_storage(pki, store, **sinks) as app:
        async with StorageClients.connect(pki, app) as clients:
            await clients.service.Write(write_request(graph_events()))
            await graph_written(clients, 4)
            before = await clients.operator.QueryEntities(request(USER, "alice"))
            # As after a crash between the graph's commit and the outbox ack.
            await redeliver(app, graph_events())
            after = await clients.operator.QueryEntities(request(USER, "alice"))
    assert (after.event_count, neighbours(after)) == (before.event_count, neighbours(before))
    assert after.entity == before.entity


async def redeliver(app: StorageApp, again: list[event_pb2.Event]) -> None:
    [worker] = app.fanout.workers
    await worker.sink.write(BatchWrite("outbox-again", "", 0, again))


async def test_query_entities_errors_name_the_problem(graph_clients: StorageClients) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await graph_clients.operator.QueryEntities(request(USER, "mallory"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "mallory" in (missing.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as no_kind:
        await graph_clients.operator.QueryEntities(storage_pb2.QueryEntitiesRequest())
    assert no_kind.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = status_details(no_kind.value)
    assert details is not None
    assert "entity.kind" in (no_kind.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as backwards:
        await graph_clients.operator.QueryEntities(
            request(HOST, "web-1", start_time=ns_to_ts(BASE_NS + 9), end_time=ns_to_ts(BASE_NS))
        )
    assert backwards.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end_time" in (backwards.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await graph_clients.agent.QueryEntities(request(HOST, "web-1"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_without_an_entities_sink_query_entities_says_what_is_missing(
    clients: StorageClients,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.operator.QueryEntities(request(HOST, "router-1"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "entities sink" in (caught.value.details() or "")


def test_which_entities_an_event_names() -> None:
    settings = EntitiesSinkSection.model_validate({"type": "entities", "max_key_bytes": 16})
    assert entities_of(event(1, host="h", service="cron"), settings) == [(EntityKind.HOST, "h")]
    named = event(2, host="h", service="app", attributes={"process.name": "worker"})
    assert entities_of(named, settings) == [
        (EntityKind.HOST, "h"),
        (EntityKind.PROCESS, "h/worker"),
    ]
    too_long = event(3, host="h", attributes={"user": "u" * 17, "k8s.container.name": "api"})
    assert entities_of(too_long, settings) == [
        (EntityKind.HOST, "h"),
        (EntityKind.CONTAINER, "api"),
    ]
    assert entities_of(event(4, host=""), settings) == []
