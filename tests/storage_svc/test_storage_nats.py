"""The NATS JetStream sink against a real nats-server -js started by the test: one message
per stored event (a batch written twice, or published twice, still yields one), subjects
and headers, stream creation, and the outbox catching up after the server was down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nats.js.api import StreamConfig
from nats_server import NatsServer
from storage_helpers import (
    FAST_RETRY,
    StorageClients,
    events,
    fast_outbox,
    start_storage,
    write_request,
)
from support import Pki, eventually_async

from gen.edgebot.v1 import storage_pb2
from storage_svc.sinks.base import BatchWrite
from storage_svc.sinks.nats import NatsSink
from storage_svc.sinks_config import NatsSinkSection

STATS = storage_pb2.StorageServiceGetStatsRequest()
STREAM = "EDGEBOT_EVENTS"


def nats_sink(server: NatsServer, **settings: Any) -> dict[str, Any]:
    return {
        "type": "nats",
        "servers": [server.url],
        "connect_timeout_s": 1,
        "publish_timeout_s": 2,
        **FAST_RETRY,
        **settings,
    }


def sections(tmp_path: Path, *sinks: dict[str, Any]) -> dict[str, Any]:
    return {"sinks": list(sinks), "outbox": fast_outbox(tmp_path)}


async def nats_state(clients: StorageClients) -> storage_pb2.SinkState:
    stats = await clients.operator.GetStats(STATS)
    [state] = [s for s in stats.sinks if s.kind == "nats"]
    return state


async def stream_count(server: NatsServer, wanted: int, stream: str = STREAM) -> None:
    async def reached() -> bool:
        return len(await server.stream_messages(stream)) >= wanted

    await eventually_async(reached, what=f"{wanted} messages in {stream}")


async def test_each_event_is_published_once_even_when_its_batch_is_written_twice(
    pki: Pki, db_path: Path, tmp_path: Path, nats_server: NatsServer
) -> None:
    async with start_storage(pki, db_path, **sections(tmp_path, nats_sink(nats_server))) as app:
        async with StorageClients.connect(pki, app) as clients:
            first = write_request(events(range(5)), batch_id="b-1")
            await clients.service.Write(first)
            again = await clients.service.Write(first)
            mixed = events(range(3, 7)) + events(range(100, 101), type="snmp poll")
            await clients.service.Write(write_request(mixed))
            await stream_count(nats_server, 8)

            async def counted() -> bool:
                return (await nats_state(clients)).written == 8

            await eventually_async(counted, what="8 events counted")
            state = await nats_state(clients)
    assert again.duplicate_batch
    messages = await nats_server.stream_messages(STREAM)
    assert [m.headers["Nats-Msg-Id"] for m in messages if m.headers] == [
        *(f"ev-{n:06d}" for n in range(7)),
        "ev-000100",
    ]
    assert [m.subject for m in messages] == ["events.enriched.syslog"] * 7 + [
        "events.enriched.snmp_poll"
    ]
    document = json.loads(messages[0].data)
    assert (document["id"], document["message"], document["host"]) == (
        "ev-000000",
        "message 0",
        "router-1",
    )
    assert (state.written, state.failed, state.health) == (8, 0, storage_pb2.SINK_HEALTH_UP)


async def test_a_batch_published_again_is_dropped_by_jetstream(nats_server: NatsServer) -> None:
    settings = NatsSinkSection.model_validate(nats_sink(nats_server, subject_prefix="edge.out"))
    sink = NatsSink(settings)
    await sink.open()
    try:
        batch = BatchWrite("outbox-1-10", "", 10, events(range(10)))
        first = await sink.write(batch)
        # As after a crash between the publish and the outbox ack: the same batch again.
        second = await sink.write(batch)
    finally:
        await sink.close()
    assert (first.written, first.duplicates) == (10, 0)
    assert (second.written, second.duplicates) == (0, 10)
    messages = await nats_server.stream_messages(STREAM)
    assert len(messages) == 10
    assert {m.subject for m in messages} == {"edge.out.syslog"}
    client = await nats_server.connect()
    try:
        info = await client.jetstream().stream_info(STREAM)
    finally:
        await client.close()
    assert info.config.subjects == ["edge.out.>"]
    assert info.config.duplicate_window == 120


async def test_without_stream_creation_the_sink_waits_for_the_stream(
    pki: Pki, db_path: Path, tmp_path: Path, nats_server: NatsServer
) -> None:
    sink = nats_sink(nats_server, create_stream=False, stream="OPS")
    async with start_storage(pki, db_path, **sections(tmp_path, sink)) as app:
        async with StorageClients.connect(pki, app) as clients:
            await clients.service.Write(write_request(events(range(3))))

            async def refused() -> bool:
                return "stream OPS does not exist" in (await nats_state(clients)).last_error

            await eventually_async(refused, what="the missing stream reported")
            client = await nats_server.connect()
            try:
                await client.jetstream().add_stream(
                    StreamConfig(name="OPS", subjects=["events.enriched.>"])
                )
            finally:
                await client.close()
            await stream_count(nats_server, 3, "OPS")


async def test_nats_down_then_restarted_the_outbox_catches_up(
    pki: Pki, db_path: Path, tmp_path: Path, nats_server: NatsServer
) -> None:
    async with start_storage(pki, db_path, **sections(tmp_path, nats_sink(nats_server))) as app:
        async with StorageClients.connect(pki, app) as clients:
            await clients.service.Write(write_request(events(range(20))))
            await stream_count(nats_server, 20)
            nats_server.stop()
            for start in range(20, 50, 10):
                answer = await clients.service.Write(
                    write_request(events(range(start, start + 10)))
                )
                assert answer.written == 10

            async def behind() -> bool:
                state = await nats_state(clients)
                return state.outbox_depth == 30 and state.failed > 0

            await eventually_async(behind, what="30 events waiting, failed writes")
            assert (await nats_state(clients)).health != storage_pb2.SINK_HEALTH_UP
            nats_server.start()
            await stream_count(nats_server, 50)

            async def caught_up() -> bool:
                state = await nats_state(clients)
                return state.outbox_depth == 0 and state.health == storage_pb2.SINK_HEALTH_UP

            await eventually_async(caught_up, what="the outbox drained")
    messages = await nats_server.stream_messages(STREAM)
    ids = [m.headers["Nats-Msg-Id"] for m in messages if m.headers]
    assert ids == [f"ev-{n:06d}" for n in range(50)]
