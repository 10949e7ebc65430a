"""Ingest over real gRPC with a real pipeline and a real SQLite-backed storage service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from inprocess_mesh import (
    AgentStream,
    Mothership,
    ack_for,
    make_batch,
    make_event,
    storage_app,
    stored_ids,
)
from inprocess_mesh import mothership as inprocess_mothership
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import Pki, secure_channel

from gen.edgebot.v1 import event_pb2, ingest_pb2, ingest_pb2_grpc
from ingest_svc import build as build_ingest
from mesh.app import running


@pytest.fixture
async def mothership(pki: Pki, tmp_path: Path) -> AsyncIterator[Mothership]:
    limits = {"max_events_per_batch": 100, "max_unacked_batches": 4, "retry_delay_s": 0.25}
    async with inprocess_mothership(pki, tmp_path, ingest=limits) as mesh:
        yield mesh


async def test_stream_acks_ok_only_after_storage_committed(
    mothership: Mothership, pki: Pki
) -> None:
    events = [make_event(f"line {i}", attributes={"level": "warn"}) for i in range(10)]
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = AgentStream(ch)
        limits = await stream.hello("site-a")
        assert limits.max_unacked_batches == 4
        assert limits.max_events_per_batch == 100
        batch = make_batch("site-a", events)
        ack = await stream.send(batch)
        # The ack is sent only after the commit: the events are readable at this instant.
        ids = await stored_ids(mothership.storage, pki)
        await stream.call.done_writing()
    assert ack.status == ingest_pb2.ACK_STATUS_OK
    assert ack.batch_id == batch.batch_id
    assert ack.accepted == 10
    assert sorted(ids) == sorted(e.id for e in events)
    assert [r.primary for r in ack.sink_results] == [True]


async def test_resent_batch_is_acknowledged_as_duplicate(mothership: Mothership, pki: Pki) -> None:
    batch = make_batch("site-a", [make_event(f"dup {i}") for i in range(5)])
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = AgentStream(ch)
        await stream.hello("site-a")
        first = await stream.send(batch)
        batch.is_retry = True
        second = await stream.send(batch)
        await stream.call.done_writing()
    assert first.status == second.status == ingest_pb2.ACK_STATUS_OK
    assert first.duplicates == 0
    assert second.duplicates == 5
    assert len(await stored_ids(mothership.storage, pki)) == 5


async def test_spoofed_agent_id_in_hello_is_refused(mothership: Mothership, pki: Pki) -> None:
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = AgentStream(ch)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.hello("site-b")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "site-b" in (caught.value.details() or "")


async def test_batch_for_another_agent_is_refused(mothership: Mothership, pki: Pki) -> None:
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = AgentStream(ch)
        await stream.hello("site-a")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.send(make_batch("site-b", [make_event("spoofed")]))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await stored_ids(mothership.storage, pki) == []


async def test_malformed_events_get_errors_and_the_rest_is_stored(
    mothership: Mothership, pki: Pki
) -> None:
    good = [make_event("fine"), make_event("also fine")]
    no_id = make_event("no id")
    no_id.id = ""
    huge = make_event("x" * 70_000)
    batch = make_batch("site-a", [good[0], no_id, huge, good[1]])
    ack = await ack_for(mothership, pki, "site-a", batch)
    assert ack.status == ingest_pb2.ACK_STATUS_PARTIAL
    assert ack.accepted == 2
    assert [(e.index, e.field) for e in ack.errors] == [(1, "id"), (2, "message")]
    assert "65536 bytes" in ack.errors[1].reason
    assert sorted(await stored_ids(mothership.storage, pki)) == sorted(e.id for e in good)


async def test_oversize_batch_is_rejected_with_a_reason(mothership: Mothership, pki: Pki) -> None:
    batch = make_batch("site-a", [make_event(f"e{i}") for i in range(101)])
    ack = await ack_for(mothership, pki, "site-a", batch)
    assert ack.status == ingest_pb2.ACK_STATUS_REJECTED
    assert "batch.events: 101 events exceed the limit of 100" in ack.message


async def test_storage_down_means_retry_then_ok_when_it_returns(
    pki: Pki, tmp_path: Path, mothership: Mothership
) -> None:
    port = mothership.storage.runtime.ports.grpc
    await mothership.storage.runtime.stop()
    await mothership.storage.close()
    batch = make_batch("site-a", [make_event(f"outage {i}") for i in range(3)])
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = AgentStream(ch)
        await stream.hello("site-a")
        retry = await stream.send(batch)
        async with running(storage_app(pki, tmp_path, port)) as storage:
            batch.is_retry = True
            ok = await _send_until_ok(stream, batch)
            ids = await stored_ids(storage, pki)
        await stream.call.done_writing()
    assert retry.status == ingest_pb2.ACK_STATUS_RETRY
    assert retry.retry_delay.ToMilliseconds() >= 250
    assert "UNAVAILABLE" in retry.message
    assert ok.status == ingest_pb2.ACK_STATUS_OK
    assert sorted(ids) == sorted(e.id for e in batch.events)


async def _send_until_ok(stream: AgentStream, batch: event_pb2.EventBatch) -> ingest_pb2.BatchAck:
    for _ in range(40):
        ack = await stream.send(batch)
        if ack.status != ingest_pb2.ACK_STATUS_RETRY:
            return ack
        await asyncio.sleep(ack.retry_delay.ToMilliseconds() / 1000)
    raise AssertionError("storage never came back")


async def test_push_reports_received_sanitized_written(mothership: Mothership, pki: Pki) -> None:
    batch = make_batch("site-a", [make_event("via push"), make_event("second")])
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        first = await stub.Push(ingest_pb2.PushRequest(batch=batch))
        again = await stub.Push(ingest_pb2.PushRequest(batch=batch))
    assert (first.received, first.sanitized, first.written, first.duplicates) == (2, 2, 2, 0)
    assert (again.received, again.written, again.duplicates) == (2, 0, 2)


async def test_push_of_another_agents_batch_is_refused(mothership: Mothership, pki: Pki) -> None:
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Push(ingest_pb2.PushRequest(batch=make_batch("site-b", [make_event("x")])))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_operator_may_push_for_any_agent(mothership: Mothership, pki: Pki) -> None:
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.operator()) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        reply = await stub.Push(ingest_pb2.PushRequest(batch=make_batch("tool", [make_event("x")])))
    assert reply.status == ingest_pb2.ACK_STATUS_OK


async def test_shutdown_acks_what_it_read_then_ends_streams_at_once(
    mothership: Mothership, pki: Pki
) -> None:
    ingest = mothership.ingest
    ingest.config.server.grace_period_s = 30
    batch = make_batch("site-a", [make_event("just before shutdown")])
    async with secure_channel(ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = AgentStream(ch)
        await stream.hello("site-a")
        ack = await stream.send(batch)
        started = asyncio.get_running_loop().time()
        stopping = asyncio.ensure_future(ingest.runtime.stop())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.call.read()
        await stopping
    assert ack.status == ingest_pb2.ACK_STATUS_OK
    assert asyncio.get_running_loop().time() - started < 5
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("streams", "hops"),
    [
        (True, ("PipelineService/ProcessStream", "StorageService/WriteStream")),
        (False, ("PipelineService/Process", "StorageService/Write")),
    ],
    ids=["downstream streams", "unary calls"],
)
async def test_one_trace_follows_a_batch_through_ingest_pipeline_and_storage(
    pki: Pki, tmp_path: Path, spans: InMemorySpanExporter, streams: bool, hops: tuple[str, ...]
) -> None:
    trace_id, agent_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    batch = make_batch("site-a", [make_event("traced")])
    batch.trace_context["traceparent"] = f"00-{trace_id}-{agent_span}-01"
    async with inprocess_mothership(pki, tmp_path, ingest={"downstream_streams": streams}) as m:
        async with secure_channel(m.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
            await ingest_pb2_grpc.IngestServiceStub(ch).Push(ingest_pb2.PushRequest(batch=batch))
        finished = {span.name: span for span in spans.get_finished_spans()}
    batch_span = finished["ingest.batch"]
    assert format(batch_span.context.trace_id, "032x") == trace_id
    assert batch_span.parent is not None
    assert format(batch_span.parent.span_id, "016x") == agent_span
    assert batch_span.attributes is not None
    assert batch_span.attributes["edgebot.batch_id"] == batch.batch_id
    assert batch_span.attributes["edgebot.sink.sqlite"] == "SINK_STATUS_OK"
    for hop in hops:
        span = finished[f"edgebot.v1.{hop}"]
        assert span.context.trace_id == batch_span.context.trace_id, hop
        assert span.parent is not None
        assert span.parent.span_id == batch_span.context.span_id, hop


async def test_lost_ack_then_resend_is_recognised_as_duplicate(
    mothership: Mothership, pki: Pki
) -> None:
    batch = make_batch("site-a", [make_event(f"ack lost {i}") for i in range(4)])
    expected = sorted(e.id for e in batch.events)
    port = mothership.ingest.runtime.ports.grpc
    async with secure_channel(port, pki.agent("site-a")) as ch:
        stream = AgentStream(ch)
        await stream.hello("site-a")
        await stream.call.write(ingest_pb2.StreamRequest(batch=batch))
        # Storage commits; the connection dies before the agent reads its ack.
        for _ in range(200):
            if sorted(await stored_ids(mothership.storage, pki)) == expected:
                break
            await asyncio.sleep(0.01)
        stream.call.cancel()
    async with secure_channel(port, pki.agent("site-a")) as ch:
        stream = AgentStream(ch)
        await stream.hello("site-a")
        batch.is_retry = True
        ack = await stream.send(batch)
        await stream.call.done_writing()
    assert ack.status == ingest_pb2.ACK_STATUS_OK
    assert ack.duplicates == 4
    assert sorted(await stored_ids(mothership.storage, pki)) == expected


async def test_two_ingest_replicas_behave_like_one(
    mothership: Mothership, pki: Pki, tmp_path: Path
) -> None:
    first = mothership.ingest
    config = first.config.model_copy(deep=True)  # type: ignore[attr-defined]
    config.server.port = 0
    config.server.health_port = 0
    batch = make_batch("site-a", [make_event(f"replicated {i}") for i in range(3)])
    async with running(build_ingest(config)) as second:
        for replica in (first, second, first):
            async with secure_channel(replica.runtime.ports.grpc, pki.agent("site-a")) as ch:
                stub = ingest_pb2_grpc.IngestServiceStub(ch)
                await stub.Push(ingest_pb2.PushRequest(batch=batch))
    assert sorted(await stored_ids(mothership.storage, pki)) == sorted(e.id for e in batch.events)
