"""Helpers for the edge agent tests: events, agent configs, and an IngestService test double.

The double is a real gRPC server (mTLS, the ingest certificate) that answers each batch as
the test's ``decide`` function says, keeps a batch ledger like storage does, and records
what the agent sent and how many batches it had in flight.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from support import Pki, make_config

from edge_agent import AgentConfig
from gen.edgebot.v1 import event_pb2, ingest_pb2, ingest_pb2_grpc
from mesh.ids import uuid7
from mesh.tls import server_credentials

Decide = Callable[[event_pb2.EventBatch], Awaitable[ingest_pb2.BatchAck | None]]


def make_event(message: str) -> event_pb2.Event:
    return event_pb2.Event(id=uuid7(), type="syslog", host="h", service="s", message=message)


def agent_config(
    pki: Pki, tmp_path: Any, ingest_addresses: list[str], **sections: Any
) -> AgentConfig:
    shipper = {
        "ingest": {"addresses": ingest_addresses, "timeout_s": 2},
        "batch_max_wait_s": 0.05,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        **sections.pop("shipper", {}),
    }
    return make_config(
        AgentConfig,
        pki,
        "agent",
        tls=pki.agent("site-a").model_dump(mode="json"),
        agent={"id": "site-a", "site": "test"},
        spool={"path": str(tmp_path / "spool.db"), **sections.pop("spool", {})},
        shipper=shipper,
        **sections,
    )


async def eventually(check: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.01)


def ack(
    batch: event_pb2.EventBatch, status: ingest_pb2.AckStatus.ValueType, **fields: Any
) -> ingest_pb2.BatchAck:
    return ingest_pb2.BatchAck(batch_id=batch.batch_id, seq=batch.seq, status=status, **fields)


async def ok(batch: event_pb2.EventBatch) -> ingest_pb2.BatchAck:
    return ack(batch, ingest_pb2.ACK_STATUS_OK, accepted=len(batch.events))


@dataclass
class Store:
    """What 'storage' kept: a batch ledger and how often each event id was stored."""

    ledger: set[str] = field(default_factory=set)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)

    def commit(self, batch: event_pb2.EventBatch, refused: set[int]) -> None:
        if batch.batch_id in self.ledger:
            return
        self.ledger.add(batch.batch_id)
        for index, event in enumerate(batch.events):
            if index not in refused:
                self.counts[event.id] += 1


class IngestDouble(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, limits: ingest_pb2.Limits, decide: Decide, store: Store | None = None):
        self.limits = limits
        self.decide = decide
        self.store = store or Store()
        self.hellos: list[ingest_pb2.Hello] = []
        self.peer_names: list[bytes] = []
        self.metadata: list[dict[str, Any]] = []
        self.batches: list[event_pb2.EventBatch] = []
        self.outstanding = 0
        self.max_outstanding = 0
        self._open_streams: set[asyncio.Queue[ingest_pb2.BatchAck | None]] = set()

    def hang_up(self) -> None:
        """End every open stream (status OK), as a server closing them would."""
        for acks in self._open_streams:
            acks.put_nowait(None)

    async def Stream(
        self, request_iterator: AsyncIterator[ingest_pb2.StreamRequest], context: Any
    ) -> AsyncIterator[ingest_pb2.StreamResponse]:
        first = await anext(request_iterator)
        self.hellos.append(first.hello)
        self.metadata.append(dict(context.invocation_metadata() or ()))
        self.peer_names.extend(context.auth_context().get("x509_common_name", []))
        yield ingest_pb2.StreamResponse(limits=self.limits)
        acks: asyncio.Queue[ingest_pb2.BatchAck | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def answer(batch: event_pb2.EventBatch) -> None:
            reply = await self.decide(batch)
            if reply is None:
                return
            if reply.status in (ingest_pb2.ACK_STATUS_OK, ingest_pb2.ACK_STATUS_PARTIAL):
                self.store.commit(batch, {error.index for error in reply.errors})
            await acks.put(reply)

        async def read() -> None:
            async for request in request_iterator:
                self.batches.append(request.batch)
                self.outstanding += 1
                self.max_outstanding = max(self.max_outstanding, self.outstanding)
                task = asyncio.create_task(answer(request.batch))
                tasks.add(task)

        reader = asyncio.create_task(read())
        self._open_streams.add(acks)
        try:
            while (reply := await acks.get()) is not None:
                self.outstanding -= 1
                yield ingest_pb2.StreamResponse(ack=reply)
        finally:
            self._open_streams.discard(acks)
            reader.cancel()
            for task in tasks:
                task.cancel()


class IngestServer:
    """The double served over mTLS on 127.0.0.1; can be stopped and started on one port."""

    def __init__(self, pki: Pki, servicer: IngestDouble, port: int = 0) -> None:
        self.pki = pki
        self.servicer = servicer
        self.port = port
        self.server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> IngestServer:
        self.server = grpc.aio.server()
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_secure_port(
            f"127.0.0.1:{self.port}", server_credentials(self.pki.service("ingest"))
        )
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


def limits(window: int = 4, max_events: int = 1000, max_bytes: int = 4 << 20) -> ingest_pb2.Limits:
    return ingest_pb2.Limits(
        max_unacked_batches=window,
        max_events_per_batch=max_events,
        max_batch_bytes=max_bytes,
        server_version="double",
    )
