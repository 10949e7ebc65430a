"""Fault injection on a secondary sink: the real mesh stores into SQLite and fans out to a
real nats-server (JetStream) through the outbox; NATS goes down for a while mid-stream.

Meanwhile the primary must store every line exactly once (nothing waits for NATS); once
NATS is back the stream must hold every line exactly once too."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mesh_processes import (
    DRAIN_TIMEOUT_S,
    FAST_RECONNECT,
    MeshProcesses,
    send_numbered,
    wait_for_all,
)
from nats_server import NatsServer
from support import free_port_base, free_udp_port

from edgebot.layout import StateDir, ports_for
from gen.edgebot.v1 import storage_pb2, storage_pb2_grpc
from mesh.channel import open_channel

pytestmark = pytest.mark.slow
STREAM = "EDGEBOT_EVENTS"


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    directory = tmp_path / "nats"
    directory.mkdir()
    server = NatsServer(directory).start()
    yield server
    server.stop()


@pytest.fixture
async def mesh(tmp_path: Path, nats: NatsServer) -> AsyncIterator[MeshProcesses]:
    state = StateDir(tmp_path / "state")
    processes = MeshProcesses(state, free_port_base(), free_udp_port())
    storage = {
        "outbox": {"path": str(state.data / "outbox.db"), "stats_interval_s": 0.2},
        "sinks": [
            {
                "type": "nats",
                "servers": [nats.url],
                "connect_timeout_s": 1,
                "publish_timeout_s": 2,
                "retry_initial_s": 0.2,
                "retry_max_s": 1.0,
            }
        ],
    }
    processes.prepare({**FAST_RECONNECT, "storage": storage})
    try:
        await processes.start_all()
        yield processes
    finally:
        processes.stop_all()


async def nats_sink_state(mesh: MeshProcesses) -> storage_pb2.SinkState:
    address = f"127.0.0.1:{ports_for('storage', mesh.port_base).grpc}"
    async with open_channel([address], mesh.operator_tls()) as channel:
        stats = await storage_pb2_grpc.StorageServiceStub(channel).GetStats(
            storage_pb2.StorageServiceGetStatsRequest(), timeout=10
        )
    [state] = [s for s in stats.sinks if s.kind == "nats"]
    return state


async def published_messages(nats: NatsServer, marker: str) -> Counter[str]:
    """How many times each message containing ``marker`` is in the stream."""
    counts: Counter[str] = Counter()
    for message in await nats.stream_messages(STREAM):
        text = json.loads(message.data)["message"]
        if marker in text:
            counts[text] += 1
    return counts


async def wait_published(nats: NatsServer, marker: str, expected: int) -> Counter[str]:
    deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_S
    counts: Counter[str] = Counter()
    while asyncio.get_running_loop().time() < deadline:
        counts = await published_messages(nats, marker)
        if len(counts) >= expected:
            return counts
        await asyncio.sleep(0.5)
    return counts


def assert_once_each(sent: list[str], found: Counter[str], where: str) -> None:
    missing = [m for m in sent if m not in found]
    doubled = {m: n for m, n in found.items() if n > 1}
    extra = set(found) - set(sent)
    report = f"{where}: sent {len(sent)}, found {len(found)}"
    assert not missing, f"{report}, missing {len(missing)}, first {missing[:3]}"
    assert not doubled, f"{report}, doubled {list(doubled.items())[:3]}"
    assert not extra, f"{report}, unexpected {list(extra)[:3]}"


async def test_nats_down_for_a_while_mid_stream(mesh: MeshProcesses, nats: NatsServer) -> None:
    marker = uuid.uuid4().hex
    sending = asyncio.ensure_future(send_numbered(mesh.syslog_port, marker, 1500, 500))
    await asyncio.sleep(1.0)
    nats.stop()
    sent = await sending
    # NATS is still down: the primary stores every line regardless.
    stored = await wait_for_all(mesh, marker, len(sent), DRAIN_TIMEOUT_S)
    assert_once_each(sent, stored, "primary while NATS was down")
    waiting = await nats_sink_state(mesh)
    assert waiting.outbox_depth > 0, "NATS was down: events should wait in the outbox"
    assert waiting.health != storage_pb2.SINK_HEALTH_UP
    nats.start()
    published = await wait_published(nats, marker, len(sent))
    assert_once_each(sent, published, "NATS stream after it came back")
