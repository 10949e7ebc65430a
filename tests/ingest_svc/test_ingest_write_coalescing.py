"""Batches waiting for storage share one WriteMany call, and each still gets its own
result; a batch alone goes as Write, and a storage without WriteMany gets each alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from inprocess_mesh import (
    Mothership,
    acks_of_four_batches,
    make_batch,
    make_event,
    stored_ids,
)
from inprocess_mesh import mothership as inprocess_mothership
from prometheus_client import REGISTRY
from support import Pki, secure_channel

from gen.edgebot.v1 import encoded_pb2, event_pb2, ingest_pb2, storage_pb2
from ingest_svc.coalescing import WriteCoalescer
from ingest_svc.forwarder import StorageCalls
from mesh.encoded import unary_call

CALL_BATCHES = "mothership_ingestion_storage_call_batches"


class GatedStorage:
    """A real storage service behind a gate: calls wait until the test opens it."""

    def __init__(self, channel: grpc.aio.Channel, write_many_method: str) -> None:
        self.stub = StorageCalls(channel)
        self.write_many_rpc = unary_call(
            channel, write_many_method, storage_pb2.WriteManyResponse.FromString
        )
        self.gate = asyncio.Event()
        self.called = asyncio.Event()
        self.calls: list[tuple[str, int]] = []

    async def write(self, request: encoded_pb2.EncodedWriteRequest) -> storage_pb2.WriteResponse:
        self.calls.append(("Write", 1))
        self.called.set()
        await self.gate.wait()
        return await self.stub.Write(request, timeout=5)

    async def write_many(
        self, request: encoded_pb2.EncodedWriteManyRequest
    ) -> storage_pb2.WriteManyResponse:
        self.calls.append(("WriteMany", len(request.writes)))
        self.called.set()
        await self.gate.wait()
        return await self.write_many_rpc(request, timeout=5)


@pytest.fixture
async def mesh(pki: Pki, tmp_path: Path) -> AsyncIterator[Mothership]:
    async with inprocess_mothership(pki, tmp_path, ingest={"max_storage_calls": 1}) as found:
        yield found


@pytest.fixture
async def storage_channel(mesh: Mothership, pki: Pki) -> AsyncIterator[grpc.aio.Channel]:
    async with secure_channel(mesh.storage.runtime.ports.grpc, pki.service("ingest")) as channel:
        yield channel


def write(name: str, count: int, batch_id: str | None = None) -> encoded_pb2.EncodedWriteRequest:
    """A write as ingest sends it: the batch's events encoded."""
    batch = make_batch("site-a", [make_event(f"{name}.{n}") for n in range(count)])
    if batch_id is not None:
        batch.batch_id = batch_id
    request = encoded_pb2.EncodedWriteRequest()
    request.ParseFromString(storage_pb2.WriteRequest(batch=batch).SerializeToString())
    return request


def ids_of(request: encoded_pb2.EncodedWriteRequest) -> list[str]:
    return [event_pb2.Event.FromString(data).id for data in request.batch.events]


async def one_in_flight_then_the_rest(
    storage: GatedStorage, coalescer: WriteCoalescer, writes: list[encoded_pb2.EncodedWriteRequest]
) -> list[asyncio.Task[storage_pb2.WriteResult]]:
    first = asyncio.create_task(coalescer.write(writes[0]))
    await storage.called.wait()
    rest = [asyncio.create_task(coalescer.write(w)) for w in writes[1:]]
    await asyncio.sleep(0.05)
    return [first, *rest]


async def test_writes_waiting_for_a_busy_storage_go_in_one_write_many(
    storage_channel: grpc.aio.Channel, mesh: Mothership, pki: Pki
) -> None:
    storage = GatedStorage(storage_channel, "/edgebot.v1.StorageService/WriteMany")
    coalescer = WriteCoalescer(storage.write, storage.write_many, max_events=100, max_calls=1)
    writes = [write("first", 2), write("a", 3), write("b", 1, batch_id=""), write("c", 2)]
    answers = await one_in_flight_then_the_rest(storage, coalescer, writes)
    assert storage.calls == [("Write", 1)]
    storage.gate.set()
    first, a, nameless, c = await asyncio.gather(*answers)

    assert storage.calls == [("Write", 1), ("WriteMany", 3)]
    assert [r.written.written for r in (first, a, c)] == [2, 3, 2]
    assert nameless.failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    expected = [i for w in (writes[0], writes[1], writes[3]) for i in ids_of(w)]
    assert sorted(await stored_ids(mesh.storage, pki)) == sorted(expected)


async def test_a_storage_without_write_many_gets_each_write_alone(
    storage_channel: grpc.aio.Channel,
) -> None:
    older = GatedStorage(storage_channel, "/edgebot.v1.StorageService/NoWriteMany")
    coalescer = WriteCoalescer(older.write, older.write_many, max_events=100, max_calls=1)
    writes = [write(name, 2) for name in ("first", "a", "b")]
    answers = await one_in_flight_then_the_rest(older, coalescer, writes)
    older.gate.set()
    results = await asyncio.gather(*answers)

    assert older.calls == [("Write", 1), ("WriteMany", 2), ("Write", 1), ("Write", 1)]
    assert [r.written.written for r in results] == [2, 2, 2]


async def test_many_streams_through_one_storage_call_slot_store_everything_once(
    mesh: Mothership, pki: Pki
) -> None:
    calls_before = REGISTRY.get_sample_value(f"{CALL_BATCHES}_count") or 0.0
    batches_before = REGISTRY.get_sample_value(f"{CALL_BATCHES}_sum") or 0.0

    streams = [("site-a", 1), ("site-a", 2), ("site-b", 1), ("site-b", 2)]
    acks = [
        a
        for found in await asyncio.gather(*(acks_of_four_batches(mesh, pki, *s) for s in streams))
        for a in found
    ]
    calls = (REGISTRY.get_sample_value(f"{CALL_BATCHES}_count") or 0.0) - calls_before
    carried = (REGISTRY.get_sample_value(f"{CALL_BATCHES}_sum") or 0.0) - batches_before

    assert all(a.status == ingest_pb2.ACK_STATUS_OK and a.accepted == 5 for a in acks)
    stored = await stored_ids(mesh.storage, pki)
    assert len(stored) == len(set(stored)) == 4 * 4 * 5
    assert carried == 16
    assert calls < carried  # some storage calls carried several batches
