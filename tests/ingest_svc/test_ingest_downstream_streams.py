"""Ingest carries Process calls and storage writes over long-lived streams (ProcessStream,
WriteStream): batch after batch goes over the same two streams, a pipeline or storage
without the stream methods gets unary calls, and a storage that stops is not held up by
ingest's idle streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from inprocess_mesh import AgentStream, Mothership, make_batch, make_event, stored_ids
from inprocess_mesh import mothership as inprocess_mothership
from support import Pki, secure_channel

from gen.edgebot.v1 import encoded_pb2, event_pb2, ingest_pb2, storage_pb2
from ingest_svc.forwarder import (
    DownstreamStreams,
    Forwarder,
    ForwardLimits,
    PipelineCalls,
    StorageCalls,
)
from mesh.encoded import stream_call
from mesh.lockstep import StreamPool, StreamPoolLimits


@pytest.fixture
async def mesh(pki: Pki, tmp_path: Path) -> AsyncIterator[Mothership]:
    async with inprocess_mothership(pki, tmp_path) as found:
        yield found


def forwarder_of(mesh: Mothership) -> Forwarder:
    forwarder = mesh.ingest.servicer.forwarder  # type: ignore[attr-defined]
    assert isinstance(forwarder, Forwarder)
    return forwarder


def missing(channel: grpc.aio.Channel, service: str, response: Any) -> Any:
    """A stream method the service does not have, with the stream messages' codecs."""
    return stream_call(channel, f"/edgebot.v1.{service}/Gone", response.FromString)


async def test_batch_after_batch_goes_over_the_same_two_streams(mesh: Mothership, pki: Pki) -> None:
    batches = [make_batch("site-a", [make_event(f"b{n}.{i}") for i in range(3)]) for n in range(6)]
    async with secure_channel(mesh.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = AgentStream(ch)
        await stream.hello("site-a")
        acks = [await stream.send(batch) for batch in batches]

    assert [a.status for a in acks] == [ingest_pb2.ACK_STATUS_OK] * 6
    streams = forwarder_of(mesh).streams
    assert streams is not None
    assert (streams.process.opened, streams.write.opened) == (1, 1)
    assert streams.process.usable
    assert streams.write.usable
    stored = await stored_ids(mesh.storage, pki)
    assert sorted(stored) == sorted(e.id for b in batches for e in b.events)


async def test_services_without_the_stream_methods_get_unary_calls(
    mesh: Mothership, pki: Pki
) -> None:
    async with (
        secure_channel(mesh.pipeline.runtime.ports.grpc, pki.service("ingest")) as pipe,
        secure_channel(mesh.storage.runtime.ports.grpc, pki.service("ingest")) as store,
    ):
        limits = StreamPoolLimits(timeout_s=5, max_age_s=300)
        older = DownstreamStreams(  # methods an older release does not have
            process=StreamPool(
                missing(pipe, "PipelineService", encoded_pb2.EncodedProcessStreamResponse), limits
            ),
            write=StreamPool(
                missing(store, "StorageService", storage_pb2.WriteStreamResponse), limits
            ),
        )
        forwarder = Forwarder(
            PipelineCalls(pipe),
            StorageCalls(store),
            ForwardLimits(pipeline_timeout_s=5, storage_timeout_s=5, default_retry_s=1),
            older,
        )
        batch = make_batch("site-a", [make_event("to an older mothership")])
        header = encoded_pb2.EncodedEventBatch(batch_id=batch.batch_id, agent_id="site-a", seq=1)
        sent = [event.SerializeToString() for event in batch.events]
        processed = await forwarder.coalescer.process(header, sent)
        request = encoded_pb2.EncodedWriteRequest(batch=header)
        request.batch.events.extend(processed.events)
        result = await forwarder.writes.write(request)

    assert not older.process.usable
    assert not older.write.usable
    assert [event_pb2.Event.FromString(e).id for e in processed.events] == [batch.events[0].id]
    assert result.written.written == 1
    assert await stored_ids(mesh.storage, pki) == [batch.events[0].id]


async def test_a_storage_stopping_is_not_held_up_by_idle_streams(
    mesh: Mothership, pki: Pki
) -> None:
    mesh.storage.config.server.grace_period_s = 30  # type: ignore[attr-defined]
    async with secure_channel(mesh.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = AgentStream(ch)
        await stream.hello("site-a")
        ack = await stream.send(make_batch("site-a", [make_event("before the stop")]))
    assert ack.status == ingest_pb2.ACK_STATUS_OK  # the write stream is open, and idle
    started = time.monotonic()
    await asyncio.wait_for(mesh.storage.runtime.stop(), timeout=20)
    assert time.monotonic() - started < 5
    streams = forwarder_of(mesh).streams
    assert streams is not None
    with pytest.raises(grpc.aio.AioRpcError):
        await streams.write.call(encoded_pb2.EncodedWriteStreamRequest())
