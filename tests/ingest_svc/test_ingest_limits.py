"""Stream limits that keep a slow or greedy client from holding ingest's resources: the hello
timeout, the idle timeout (also against a message trickled byte by byte), streams per
caller, and streams per connection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from inprocess_mesh import AgentStream, Mothership, make_batch, make_event, stored_ids
from inprocess_mesh import mothership as inprocess_mothership
from prometheus_client import REGISTRY
from slow_client import SlowClient, grpc_message
from support import Pki, eventually, make_config, secure_channel

from gen.edgebot.v1 import ingest_pb2, ingest_pb2_grpc
from ingest_svc import IngestApp, IngestServiceConfig, build
from mesh.app import running
from mesh.errors import retry_delay_s, status_details

HELLO = ingest_pb2.StreamRequest(hello=ingest_pb2.Hello(agent_id="site-a"))


def refused(reason: str) -> float:
    value = REGISTRY.get_sample_value("mothership_ingestion_refused_total", {"reason": reason})
    return value or 0.0


def error_reason(error: grpc.aio.AioRpcError) -> str:
    status = status_details(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    raise AssertionError("no ErrorInfo")


@pytest.fixture
async def mothership(pki: Pki, tmp_path: Path) -> AsyncIterator[Mothership]:
    limits = {
        "hello_timeout_s": 0.4,
        "stream_idle_timeout_s": 0.6,
        "max_streams_per_caller": 3,
        "retry_delay_s": 0.25,
    }
    async with inprocess_mothership(pki, tmp_path, ingest=limits) as mesh:
        yield mesh


async def test_a_stream_without_a_hello_is_ended_after_the_hello_timeout(
    mothership: Mothership, pki: Pki
) -> None:
    before = refused("hello_timeout")
    servicer = mothership.ingest.servicer  # type: ignore[attr-defined]
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        call = ingest_pb2_grpc.IngestServiceStub(ch).Stream()
        started = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        waited = asyncio.get_running_loop().time() - started
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no hello within 0.4 s" in (caught.value.details() or "")
    assert error_reason(caught.value) == "HELLO_TIMEOUT"
    assert 0.3 < waited < 3
    assert refused("hello_timeout") == before + 1
    assert servicer.streams == 0


async def test_an_idle_stream_is_ended_with_a_retry_delay(mothership: Mothership, pki: Pki) -> None:
    servicer = mothership.ingest.servicer  # type: ignore[attr-defined]
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = AgentStream(ch)
        await stream.hello("site-a")
        ack = await stream.send(make_batch("site-a", [make_event("then silence")]))
        assert servicer.streams == 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.call.read()
    assert ack.status == ingest_pb2.ACK_STATUS_OK
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(caught.value) == "STREAM_IDLE"
    assert retry_delay_s(caught.value) == 0.25
    await eventually(lambda: servicer.streams == 0, what="the idle stream to be gone")


async def test_a_message_trickled_byte_by_byte_is_cut_off_by_the_idle_timeout(
    mothership: Mothership, pki: Pki
) -> None:
    servicer = mothership.ingest.servicer  # type: ignore[attr-defined]
    before = refused("stream_idle")
    directory = pki.directory
    client = await SlowClient.connect(
        mothership.ingest.runtime.ports.grpc,
        directory / "ca.crt",
        directory / "agent-site-a.crt",
        directory / "agent-site-a.key",
    )
    try:
        call = await client.open_call("/edgebot.v1.IngestService/Stream")
        await client.send_data(call, grpc_message(HELLO.SerializeToString()))
        await eventually(lambda: servicer.streams == 1, what="the stream to be admitted")
        batch = make_batch("site-a", [make_event("never finished")])
        message = grpc_message(ingest_pb2.StreamRequest(batch=batch).SerializeToString())
        sent = await client.trickle(call, message, interval_s=0.05)
        assert call in client.ended, "the server never ended the trickling call"
    finally:
        await client.close()
    # 0.6 s of idle timeout lets ~12 of the batch's bytes through, never the whole message.
    assert 0 < sent < len(message)
    assert refused("stream_idle") == before + 1
    await eventually(lambda: servicer.streams == 0, what="the stream to be gone")
    assert await stored_ids(mothership.storage, pki) == []


async def test_streams_per_caller_are_bounded_and_other_callers_are_not(
    mothership: Mothership, pki: Pki
) -> None:
    port = mothership.ingest.runtime.ports.grpc
    async with (
        secure_channel(port, pki.agent("site-a")) as site_a,
        secure_channel(port, pki.agent("site-b")) as site_b,
    ):
        held = [AgentStream(site_a) for _ in range(3)]
        for stream in held:
            await stream.hello("site-a")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await AgentStream(site_a).hello("site-a")
        other = AgentStream(site_b)
        await other.hello("site-b")
        ack = await other.send(make_batch("site-b", [make_event("site b is fine")]))
        for stream in held:
            stream.call.cancel()
        await eventually(
            lambda: mothership.ingest.servicer.streams <= 1,  # type: ignore[attr-defined]
            what="the cancelled streams to close",
        )
        again = AgentStream(site_a)
        await again.hello("site-a")
        again.call.cancel()
        other.call.cancel()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(caught.value) == "MAX_STREAMS_PER_CALLER"
    assert "agent:site-a has 3 open streams" in (caught.value.details() or "")
    assert ack.status == ingest_pb2.ACK_STATUS_OK


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: calls to it hang."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@asynccontextmanager
async def _ingest(pki: Pki, address: str, **sections: Any) -> AsyncIterator[IngestApp]:
    config = make_config(
        IngestServiceConfig,
        pki,
        "ingest",
        pipeline={"addresses": [address], "timeout_s": 1.2},
        storage={"addresses": [address], "timeout_s": 1.2},
        **sections,
    )
    app = build(config)
    async with running(app):
        yield app


async def test_a_batch_in_flight_keeps_its_stream_past_the_idle_timeout(
    pki: Pki, silent_listener: int
) -> None:
    ingest = {"stream_idle_timeout_s": 0.3, "retry_delay_s": 0.25}
    async with _ingest(pki, f"127.0.0.1:{silent_listener}", ingest=ingest) as app:
        async with secure_channel(app.runtime.ports.grpc, pki.agent("site-a")) as ch:
            stream = AgentStream(ch)
            await stream.hello("site-a")
            # The pipeline never answers: the batch waits its 1.2 s call timeout, 4x idle.
            ack = await stream.send(make_batch("site-a", [make_event("slow downstream")]))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stream.call.read()
    assert ack.status == ingest_pb2.ACK_STATUS_RETRY
    assert error_reason(caught.value) == "STREAM_IDLE"


async def test_one_connection_has_at_most_max_concurrent_streams(
    pki: Pki, silent_listener: int
) -> None:
    sections: dict[str, Any] = {
        "server": {"max_concurrent_streams": 4},
        "ingest": {"max_streams_per_caller": 50},
    }
    async with _ingest(pki, f"127.0.0.1:{silent_listener}", **sections) as app:
        servicer = app.servicer
        async with secure_channel(app.runtime.ports.grpc, pki.agent("site-a")) as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            calls = [stub.Stream() for _ in range(10)]
            writes = [asyncio.ensure_future(call.write(HELLO)) for call in calls]
            await eventually(lambda: servicer.streams == 4, what="four streams")
            await asyncio.sleep(0.3)
            assert servicer.streams == 4  # the other six wait in the client
            for call in calls[:4]:
                call.cancel()
            await eventually(lambda: sum(w.done() for w in writes[4:]) >= 4, what="4 more")
            assert servicer.streams <= 4
            for call in calls:
                call.cancel()
