"""Pipeline, storage and ingest servers in the test's own process, wired together, and an
agent's side of IngestService for tests to drive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from support import Pki, make_config, secure_channel

from gen.edgebot.v1 import event_pb2, ingest_pb2, ingest_pb2_grpc, storage_pb2, storage_pb2_grpc
from ingest_svc import IngestServiceConfig
from ingest_svc import build as build_ingest
from mesh.app import App, running
from mesh.ids import uuid7
from mesh.timeutil import now_ns, ns_to_ts
from pipeline_svc import PipelineServiceConfig
from pipeline_svc import build as build_pipeline
from storage_svc import StorageServiceConfig
from storage_svc import build as build_storage


@dataclass
class Mothership:
    ingest: App
    pipeline: App
    storage: App

    def address(self, app: App) -> str:
        return f"127.0.0.1:{app.runtime.ports.grpc}"


def storage_app(pki: Pki, tmp_path: Path, port: int = 0) -> App:
    config = make_config(
        StorageServiceConfig,
        pki,
        "storage",
        server={"port": port},
        sqlite={"path": str(tmp_path / "events.db")},
    )
    return build_storage(config)


@asynccontextmanager
async def mothership(
    pki: Pki,
    tmp_path: Path,
    ingest: dict[str, Any] | None = None,
    ingest_server: dict[str, Any] | None = None,
    ingest_tls: dict[str, Any] | None = None,
) -> AsyncIterator[Mothership]:
    async with AsyncExitStack() as stack:
        pipeline = await stack.enter_async_context(
            running(build_pipeline(make_config(PipelineServiceConfig, pki, "pipeline")))
        )
        storage = await stack.enter_async_context(running(storage_app(pki, tmp_path)))
        config = make_config(
            IngestServiceConfig,
            pki,
            "ingest",
            ingest=ingest or {},
            server=ingest_server or {},
            **({"tls": ingest_tls} if ingest_tls else {}),
            pipeline={"addresses": [f"127.0.0.1:{pipeline.runtime.ports.grpc}"], "timeout_s": 2},
            storage={"addresses": [f"127.0.0.1:{storage.runtime.ports.grpc}"], "timeout_s": 2},
        )
        ingest_app = await stack.enter_async_context(running(build_ingest(config)))
        yield Mothership(ingest_app, pipeline, storage)


def make_event(message: str, **fields: Any) -> event_pb2.Event:
    event = event_pb2.Event(
        id=uuid7(), type="syslog", host="router-1", service="dnsmasq", message=message, **fields
    )
    ns_to_ts(now_ns(), event.time)
    return event


def make_batch(agent_id: str, events: list[event_pb2.Event], seq: int = 1) -> event_pb2.EventBatch:
    return event_pb2.EventBatch(batch_id=uuid7(), agent_id=agent_id, seq=seq, events=events)


class AgentStream:
    """An agent's side of IngestService.Stream, driven step by step by a test."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = ingest_pb2_grpc.IngestServiceStub(channel).Stream()

    async def hello(self, agent_id: str) -> ingest_pb2.Limits:
        await self.call.write(ingest_pb2.StreamRequest(hello=ingest_pb2.Hello(agent_id=agent_id)))
        response = await self.call.read()
        assert response.WhichOneof("kind") == "limits"
        return response.limits

    async def send(self, batch: event_pb2.EventBatch) -> ingest_pb2.BatchAck:
        await self.call.write(ingest_pb2.StreamRequest(batch=batch))
        response = await self.call.read()
        assert response.WhichOneof("kind") == "ack", response
        return response.ack


async def ack_for(
    mesh: Mothership, pki: Pki, agent_id: str, batch: event_pb2.EventBatch
) -> ingest_pb2.BatchAck:
    """The ack of ``batch`` sent alone on a fresh stream of ``agent_id``."""
    async with secure_channel(mesh.ingest.runtime.ports.grpc, pki.agent(agent_id)) as ch:
        stream = AgentStream(ch)
        await stream.hello(agent_id)
        ack = await stream.send(batch)
        await stream.call.done_writing()
    return ack


async def acks_of_four_batches(
    mesh: Mothership, pki: Pki, agent_id: str, stream_no: int
) -> list[ingest_pb2.BatchAck]:
    """Four batches of five events written on one stream of ``agent_id`` before any ack is
    read, then their acks."""
    async with secure_channel(mesh.ingest.runtime.ports.grpc, pki.agent(agent_id)) as channel:
        stream = AgentStream(channel)
        await stream.hello(agent_id)
        batches = [
            make_batch(agent_id, [make_event(f"{agent_id}/{stream_no} {n}.{i}") for i in range(5)])
            for n in range(1, 5)
        ]
        for batch in batches:
            await stream.call.write(ingest_pb2.StreamRequest(batch=batch))
        acks = [(await stream.call.read()).ack for _ in batches]
        await stream.call.done_writing()
        return acks


async def stored_ids(storage: App, pki: Pki) -> list[str]:
    async with secure_channel(storage.runtime.ports.grpc, pki.operator()) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        response = await stub.QueryEvents(storage_pb2.QueryEventsRequest(page_size=1000))
    return [event.id for event in response.events]
