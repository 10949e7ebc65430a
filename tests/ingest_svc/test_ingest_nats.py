"""The NATS JetStream input against a real nats-server, with a real pipeline and storage."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inprocess_mesh import storage_app
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats_server import NatsServer, nats_server
from prometheus_client import REGISTRY
from support import Pki, eventually, eventually_async, make_config, secure_channel

from gen.edgebot.v1 import event_pb2, storage_pb2, storage_pb2_grpc
from ingest_svc import IngestServiceConfig
from ingest_svc import build as build_ingest
from ingest_svc.server import NATS_HEALTH
from mesh.app import App, running
from mesh.timeutil import ts_to_ns
from pipeline_svc import PipelineServiceConfig
from pipeline_svc import build as build_pipeline

__all__ = ["nats_server"]
STREAM, DURABLE = "EVENTS_RAW", "edgebot-ingest"
PROTOBUF_BATCH = {"Content-Type": "application/x-protobuf; messageType=edgebot.v1.EventBatch"}
FAST = {"ack_wait_s": 2.0, "nak_delay_s": 0.3, "fetch_timeout_s": 0.2, "reconnect_wait_s": 0.2}


@dataclass
class NatsMesh:
    pki: Pki
    nats: NatsServer
    pipeline: App
    storage: App
    db: Path
    stack: AsyncExitStack
    client: Client | None = None
    ingests: list[App] = field(default_factory=list)

    async def ingest(self, storage_port: int | None = None, **nats_settings: Any) -> App:
        storage = storage_port or self.storage.runtime.ports.grpc
        config = make_config(
            IngestServiceConfig,
            self.pki,
            "ingest",
            ingest={"retry_delay_s": 0.25},
            pipeline={"addresses": [f"127.0.0.1:{self.pipeline.runtime.ports.grpc}"]},
            storage={"addresses": [f"127.0.0.1:{storage}"], "timeout_s": 2},
            nats={"enabled": True, "servers": [self.nats.url], **FAST, **nats_settings},
        )
        app = await self.stack.enter_async_context(running(build_ingest(config)))
        self.ingests.append(app)
        await eventually(lambda: nats_input(app).connected, 10, "the NATS input to connect")
        return app

    async def js(self) -> JetStreamContext:
        if self.client is None or self.client.is_closed:
            self.client = await nats.connect(self.nats.url)
        return self.client.jetstream()

    async def publish(self, body: bytes, headers: dict[str, str] | None = None) -> int:
        ack = await (await self.js()).publish("events.raw", body, headers=headers)
        return ack.seq

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as db:
            return db.execute(sql).fetchall()

    def count(self, table: str) -> int:
        return int(self.rows(f"SELECT COUNT(*) FROM {table}")[0][0])

    async def consumer(self) -> Any:
        return await (await self.js()).consumer_info(STREAM, DURABLE)

    async def stored(self) -> list[event_pb2.Event]:
        async with secure_channel(self.storage.runtime.ports.grpc, self.pki.operator()) as ch:
            stub = storage_pb2_grpc.StorageServiceStub(ch)
            request = storage_pb2.QueryEventsRequest(
                page_size=1000, order=storage_pb2.SORT_ORDER_OLDEST_FIRST
            )
            return list((await stub.QueryEvents(request)).events)


def nats_input(app: App) -> Any:
    assert app.nats is not None  # type: ignore[attr-defined]
    return app.nats  # type: ignore[attr-defined]


@pytest.fixture
async def mesh(pki: Pki, tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[NatsMesh]:
    async with AsyncExitStack() as stack:
        pipeline = await stack.enter_async_context(
            running(build_pipeline(make_config(PipelineServiceConfig, pki, "pipeline")))
        )
        storage = await stack.enter_async_context(running(storage_app(pki, tmp_path)))
        bench = NatsMesh(pki, nats_server, pipeline, storage, tmp_path / "events.db", stack)
        try:
            yield bench
        finally:
            if bench.client is not None:
                await bench.client.close()


async def watch(mesh: NatsMesh, kind: str) -> list[dict[str, Any]]:
    """JetStream advisories of one kind (MSG_TERMINATED, MSG_NAKED) for our consumer."""
    seen: list[dict[str, Any]] = []

    async def record(message: Any) -> None:
        seen.append(json.loads(message.data))

    await mesh.js()
    assert mesh.client is not None
    await mesh.client.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.{kind}.{STREAM}.{DURABLE}", cb=record)
    await mesh.client.flush()
    return seen


async def drained(mesh: NatsMesh) -> bool:
    info = await mesh.consumer()
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


def etl(number: int, marker: str = "m", **extra: Any) -> bytes:
    return json.dumps(
        {
            "id": f"{marker}-{number:05d}",
            "type": "connect",
            "source": "ebpf-agent",
            "timestamp": 1_700_000_000_000 + number,
            "metadata": {"host_id": "web-01"},
            "payload": f"{marker} line {number:05d}",
            **extra,
        }
    ).encode()


async def test_json_etl_events_are_mapped_stored_and_acked(mesh: NatsMesh) -> None:
    await mesh.ingest()
    args = base64.b64encode(b'{"dst_ip": "10.0.0.5", "dst_port": 443}').decode()
    body = {
        "id": "etl-1",
        "type": "connect",
        "source": "ebpf-agent",
        "timestamp": 1_707_747_021_250,
        "metadata": {"host_id": "web-01", "service": "curl", "severity": "warning"},
        "payload": args,
    }
    seq = await mesh.publish(json.dumps(body).encode())
    await eventually_async(lambda: drained(mesh), 10, "the message to be acked")
    [event] = await mesh.stored()
    assert (event.id, event.type, event.source, event.host) == (
        "etl-1",
        "connect",
        "ebpf-agent",
        "web-01",
    )
    assert event.service == "curl"
    assert event.severity == event_pb2.SEVERITY_WARNING
    assert ts_to_ns(event.time) == 1_707_747_021_250_000_000
    assert event.attributes["payload.dst_ip"] == "10.0.0.5"
    assert event.attributes["payload.dst_port"] == "443"
    assert event.message == "connect dst_ip=10.0.0.5 dst_port=443"
    assert mesh.rows("SELECT batch_id, agent_id FROM batches") == [(f"nats:{STREAM}:{seq}", "nats")]
    sample = REGISTRY.get_sample_value
    assert sample("mothership_ingestion_requests_total", {"status": "ok", "transport": "nats"})


async def test_protobuf_event_batch_and_event_are_accepted(mesh: NatsMesh) -> None:
    await mesh.ingest()
    batch = event_pb2.EventBatch(batch_id="relay-7", agent_id="relay", seq=7)
    for number in range(3):
        event = batch.events.add(id=f"pb-{number}", host="h", service="s", message=f"pb {number}")
        event.time.FromSeconds(1_707_747_021 + number)
    await mesh.publish(batch.SerializeToString(), PROTOBUF_BATCH)
    single = event_pb2.Event(id="pb-single", host="h", message="one event")
    single.time.FromSeconds(1_707_747_100)
    await mesh.publish(
        single.SerializeToString(),
        {"Content-Type": "application/x-protobuf; messageType=edgebot.v1.Event"},
    )
    await eventually_async(lambda: drained(mesh), 10, "both messages to be acked")
    assert sorted(e.id for e in await mesh.stored()) == ["pb-0", "pb-1", "pb-2", "pb-single"]
    # Alone, the batch keeps its own id; fetched together, the two are merged into one.
    ledger = sorted(mesh.rows("SELECT batch_id, agent_id, event_count FROM batches"))
    assert ledger in (
        [(f"nats:{STREAM}:1+2", "nats", 4)],
        [(f"nats:{STREAM}:2", "nats", 1), ("relay-7", "nats", 3)],
    )


async def test_malformed_messages_are_terminated_dead_lettered_never_redelivered(
    mesh: NatsMesh,
) -> None:
    await mesh.ingest()
    terminated = await watch(mesh, "MSG_TERMINATED")
    bad = [
        (b"{not json", None),
        (b"hello", {"Content-Type": "text/plain"}),
        (etl(1, timestamp="next tuesday"), None),
        (b"\xff\xff\xff", PROTOBUF_BATCH),
    ]
    seqs = [await mesh.publish(body, headers) for body, headers in bad]
    # An event that breaks a field limit goes to the dead letters alone; its message is acked.
    await mesh.publish(etl(2, id="x" * 100))
    await mesh.publish(etl(3))
    await eventually(lambda: len(terminated) == len(bad), 10, "every bad message terminated")
    assert sorted(advisory["stream_seq"] for advisory in terminated) == seqs
    await eventually_async(lambda: drained(mesh), 10, "the good messages acked")
    letters = {
        batch_id: (field, reason, stage)
        for batch_id, field, reason, stage in mesh.rows(
            "SELECT batch_id, field, reason, stage FROM dead_letters"
        )
    }
    fields = [letters[f"nats:{STREAM}:{seq}"][0] for seq in seqs]
    assert fields == ["body", "Content-Type", "timestamp", "body"]
    assert "'next tuesday' is not epoch milliseconds or ISO 8601" in letters[f"nats:{STREAM}:3"][1]
    [per_event] = [
        letter for batch, letter in letters.items() if batch.startswith("nats:EVENTS_RAW:5")
    ]
    assert per_event == ("id", "longer than 64 characters", "ingest")
    assert {stage for _, _, stage in letters.values()} == {"ingest"}
    [stored] = mesh.rows("SELECT event FROM dead_letters WHERE field = 'Content-Type'")
    kept = event_pb2.Event.FromString(stored[0])
    assert kept.raw == b"hello"
    assert kept.attributes["nats.content_type"] == "text/plain"
    assert [e.id for e in await mesh.stored()] == ["m-00003"]
    # Well past ack_wait (2 s): nothing came back.
    await asyncio.sleep(3)
    info = await mesh.consumer()
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
    assert mesh.count("dead_letters") == 5
    assert len(terminated) == len(bad)


def inflight() -> float:
    return REGISTRY.get_sample_value("mothership_ingestion_nats_inflight_messages") or 0.0


async def test_downstream_failure_naks_with_delay_within_the_inflight_bound(
    mesh: NatsMesh,
) -> None:
    await mesh.ingest(max_inflight_messages=2, fetch_batch=2)
    naked = await watch(mesh, "MSG_NAKED")
    terminated = await watch(mesh, "MSG_TERMINATED")
    # Storage stays up (and SERVING) but cannot commit: a writer holds the database lock.
    locker = sqlite3.connect(mesh.db, timeout=0, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    peaks: list[float] = []
    try:
        for number in range(20):
            await mesh.publish(etl(number))
        for _ in range(40):
            peaks.append(inflight())
            await asyncio.sleep(0.05)
        await eventually(lambda: len(naked) >= 2, 15, "naks while storage cannot commit")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await eventually_async(lambda: drained(mesh), 30, "every message stored after the lock")
    ids = [e.id for e in await mesh.stored()]
    assert sorted(ids) == [f"m-{n:05d}" for n in range(20)]
    assert max(peaks) <= 2
    assert terminated == []
    assert mesh.count("dead_letters") == 0


async def test_two_ingest_replicas_share_the_messages(mesh: NatsMesh) -> None:
    settings = {"fetch_batch": 4, "max_inflight_messages": 4}
    await mesh.ingest(agent_id="nats-a", **settings)
    await mesh.ingest(agent_id="nats-b", **settings)
    total = 300
    await asyncio.gather(*(mesh.publish(etl(n)) for n in range(total)))
    await eventually_async(lambda: drained(mesh), 60, "every message acked")
    ids = [e.id for e in await mesh.stored()]
    assert len(ids) == total
    assert sorted(ids) == [f"m-{n:05d}" for n in range(total)]
    per_replica = dict(mesh.rows("SELECT agent_id, SUM(event_count) FROM batches GROUP BY 1"))
    assert set(per_replica) == {"nats-a", "nats-b"}, per_replica
    assert sum(per_replica.values()) == total


async def health(app: App, service: str) -> int:
    address = f"127.0.0.1:{app.runtime.ports.health}"
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
    return int(reply.status)


def serving_is(app: App, service: str, expected: int) -> Callable[[], Any]:
    async def check() -> bool:
        return await health(app, service) == expected

    return check


async def test_nats_outage_health_and_reconnect(mesh: NatsMesh) -> None:
    required = await mesh.ingest(required=True, agent_id="nats-required")
    optional = await mesh.ingest(agent_id="nats-optional")
    up, down = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    await eventually_async(serving_is(required, "", up), 10, "ingest serving")
    assert await health(required, NATS_HEALTH) == up
    mesh.nats.stop()
    await eventually_async(serving_is(required, "", down), 10, "required input: NOT_SERVING")
    await eventually_async(serving_is(optional, NATS_HEALTH, down), 10, "nats entry down")
    assert await health(optional, "") == up  # agent streams are still served
    mesh.nats.start()
    await eventually_async(serving_is(required, "", up), 20, "serving again after reconnect")
    await eventually_async(serving_is(optional, NATS_HEALTH, up), 20, "nats entry up again")
    await mesh.publish(etl(1))
    await eventually_async(lambda: drained(mesh), 10, "consumed after the outage")
    assert [e.id for e in await mesh.stored()] == ["m-00001"]


async def test_tls_and_password_to_the_nats_server(pki: Pki, mesh: NatsMesh) -> None:
    secure = NatsServer(mesh.db.parent / "nats-tls", _tls_args(pki))
    secure.start()
    try:
        password_file = mesh.db.parent / "nats-password"
        password_file.write_text("s3cret\n")
        mesh.nats = secure
        client_tls = pki.service("ingest")
        app = await mesh.ingest(
            servers=[f"tls://127.0.0.1:{secure.port}"],
            user="edgebot",
            password_file=str(password_file),
            tls={
                "ca_file": str(client_tls.ca_file),
                "cert_file": str(client_tls.cert_file),
                "key_file": str(client_tls.key_file),
            },
        )
        mesh.client = await nats.connect(
            secure.url.replace("nats://", "tls://"),
            user="edgebot",
            password="s3cret",
            tls=nats_input(app).tls,
        )
        await mesh.publish(etl(9))
        await eventually_async(lambda: drained(mesh), 10, "consumed over TLS")
        assert [e.id for e in await mesh.stored()] == ["m-00009"]
    finally:
        if mesh.client is not None:
            await mesh.client.close()
            mesh.client = None
        secure.stop()


def _tls_args(pki: Pki) -> tuple[str, ...]:
    server = pki.service("storage")
    return (
        *("--user", "edgebot", "--pass", "s3cret"),
        *("--tls", "--tlsverify", "--tlscert", str(server.cert_file)),
        *("--tlskey", str(server.key_file), "--tlscacert", str(server.ca_file)),
    )
