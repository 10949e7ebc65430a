"""Fault injection on the NATS input: ingest killed mid-stream stores every message once."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from mesh_processes import DRAIN_TIMEOUT_S, MeshProcesses, wait_for_all
from nats_server import NatsServer, nats_server
from support import free_port_base, free_udp_port

from edgebot.layout import StateDir

__all__ = ["nats_server"]
pytestmark = pytest.mark.slow
MESSAGES, RATE_PER_S = 1500, 500


@pytest.fixture
async def mesh(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[MeshProcesses]:
    processes = MeshProcesses(StateDir(tmp_path / "state"), free_port_base(), free_udp_port())
    nats_settings = {
        "enabled": True,
        "servers": [nats_server.url],
        "ack_wait_s": 2.0,
        "fetch_timeout_s": 0.2,
        "reconnect_wait_s": 0.2,
    }
    processes.prepare({"ingest": {"nats": nats_settings}})
    try:
        for service in ("storage", "pipeline", "ingest"):
            await processes.start_and_wait(service)
        yield processes
    finally:
        processes.stop_all()


async def publish_numbered(url: str, marker: str, count: int, rate_per_s: float) -> list[str]:
    """ETL-shaped JSON events at a steady rate; each waits for JetStream's PubAck."""
    client = await nats.connect(url)
    js = client.jetstream()
    messages = []
    started = time.monotonic()
    try:
        for number in range(count):
            message = f"{marker} line {number:06d}"
            body = {"id": f"{marker}-{number}", "type": "test", "payload": message}
            await js.publish("events.raw", json.dumps(body).encode())
            messages.append(message)
            delay = started + (number + 1) / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        await client.close()
    return messages


async def test_kill_9_of_ingest_mid_stream_stores_every_nats_message_once(
    mesh: MeshProcesses, nats_server: NatsServer
) -> None:
    marker = uuid.uuid4().hex
    sending = asyncio.ensure_future(publish_numbered(nats_server.url, marker, MESSAGES, RATE_PER_S))
    await asyncio.sleep(1.0)
    mesh.kill("ingest", signal.SIGKILL)
    await asyncio.sleep(1.5)
    await mesh.start_and_wait("ingest")
    sent = await sending
    stored = await wait_for_all(mesh, marker, len(sent), DRAIN_TIMEOUT_S)
    missing = [m for m in sent if m not in stored]
    doubled = {m: n for m, n in stored.items() if n > 1}
    assert not missing, f"{len(missing)} of {len(sent)} missing\n{mesh.log_tail('ingest')}"
    assert not doubled, f"doubled: {list(doubled.items())[:3]}"
    assert set(stored) == set(sent)
