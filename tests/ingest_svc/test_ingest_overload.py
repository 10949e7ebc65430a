"""Overload is pushed back, never dropped: RESOURCE_EXHAUSTED with a retry delay."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from support import Pki, eventually, make_config, secure_channel

from gen.edgebot.v1 import event_pb2, ingest_pb2, ingest_pb2_grpc
from ingest_svc import IngestApp, IngestServiceConfig, build
from mesh.app import running
from mesh.errors import retry_delay_s, status_details
from mesh.ids import uuid7


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: calls to it hang."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
async def saturated_ingest(pki: Pki, silent_listener: int) -> AsyncIterator[IngestApp]:
    address = [f"127.0.0.1:{silent_listener}"]
    config = make_config(
        IngestServiceConfig,
        pki,
        "ingest",
        ingest={"max_inflight_batches": 1, "retry_delay_s": 0.5, "max_streams": 2},
        pipeline={"addresses": address, "timeout_s": 1.5},
        storage={"addresses": address, "timeout_s": 1.5},
    )
    async with running(build(config)) as app:
        yield app


def batch() -> event_pb2.EventBatch:
    return event_pb2.EventBatch(
        batch_id=uuid7(), agent_id="site-a", events=[event_pb2.Event(id=uuid7(), message="m")]
    )


async def test_push_beyond_capacity_is_refused_with_retry_info(
    saturated_ingest: IngestApp, pki: Pki, tmp_path: Path
) -> None:
    port = saturated_ingest.runtime.ports.grpc
    async with secure_channel(port, pki.agent("site-a")) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        stuck = asyncio.ensure_future(stub.Push(ingest_pb2.PushRequest(batch=batch())))
        await eventually(saturated_ingest.servicer.capacity.locked, what="capacity in use")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Push(ingest_pb2.PushRequest(batch=batch()), timeout=5)
        first = await stuck
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay_s(error) == 0.5
    details = status_details(error)
    assert details is not None
    assert "saturated" in details.message
    # The batch that held the capacity was not lost either: its sender is told to retry.
    assert first.status == ingest_pb2.ACK_STATUS_RETRY


async def test_new_streams_beyond_the_limit_are_refused(
    saturated_ingest: IngestApp, pki: Pki
) -> None:
    port = saturated_ingest.runtime.ports.grpc
    hello = ingest_pb2.StreamRequest(hello=ingest_pb2.Hello(agent_id="site-a"))
    async with secure_channel(port, pki.agent("site-a")) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        open_streams = [stub.Stream() for _ in range(2)]
        for stream in open_streams:
            await stream.write(hello)
            assert (await stream.read()).WhichOneof("kind") == "limits"
        extra = stub.Stream()
        await extra.write(hello)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await extra.read()
        for stream in open_streams:
            stream.cancel()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay_s(caught.value) == 0.5
