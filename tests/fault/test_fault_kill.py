"""Fault injection on the real mesh: every event sent is stored exactly once.

Each test sends numbered syslog lines to the edge agent at a steady rate, breaks one part
of the mesh (kill -9, or a stop for a while), heals it, waits for the spool to drain, and
counts every line in storage.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mesh_processes import (
    DRAIN_TIMEOUT_S,
    FAST_RECONNECT,
    MeshProcesses,
    assert_exactly_once,
    received_by_agent,
    send_numbered,
    wait_for_all,
)
from support import free_port_base, free_udp_port

from edgebot.layout import StateDir

pytestmark = pytest.mark.slow


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[MeshProcesses]:
    processes = MeshProcesses(StateDir(tmp_path / "state"), free_port_base(), free_udp_port())
    processes.prepare(FAST_RECONNECT)
    try:
        await processes.start_all()
        yield processes
    finally:
        processes.stop_all()


@pytest.mark.parametrize("victim", ["ingest", "pipeline", "storage"])
async def test_kill_9_of_a_mothership_service_mid_stream(mesh: MeshProcesses, victim: str) -> None:
    marker = uuid.uuid4().hex
    sending = asyncio.ensure_future(send_numbered(mesh.syslog_port, marker, 1500, 500))
    await asyncio.sleep(1.0)
    mesh.kill(victim, signal.SIGKILL)
    await asyncio.sleep(1.5)
    await mesh.start_and_wait(victim)
    sent = await sending
    stored = await wait_for_all(mesh, marker, len(sent), DRAIN_TIMEOUT_S)
    assert_exactly_once(sent, stored, mesh)


async def test_sigterm_of_ingest_during_load_loses_nothing(mesh: MeshProcesses) -> None:
    marker = uuid.uuid4().hex
    sending = asyncio.ensure_future(send_numbered(mesh.syslog_port, marker, 1500, 500))
    await asyncio.sleep(1.0)
    assert mesh.kill("ingest", signal.SIGTERM) == 0
    await mesh.start_and_wait("ingest")
    sent = await sending
    stored = await wait_for_all(mesh, marker, len(sent), DRAIN_TIMEOUT_S)
    assert_exactly_once(sent, stored, mesh)


async def test_sigterm_of_the_agent_keeps_its_spool(mesh: MeshProcesses) -> None:
    marker = uuid.uuid4().hex
    mesh.kill("ingest", signal.SIGTERM)
    sent = await send_numbered(mesh.syslog_port, marker, 1000, 1000)
    await wait_received(mesh, len(sent))
    assert mesh.kill("agent", signal.SIGTERM) == 0
    await mesh.start_and_wait("agent")
    await mesh.start_and_wait("ingest")
    stored = await wait_for_all(mesh, marker, len(sent), DRAIN_TIMEOUT_S)
    assert_exactly_once(sent, stored, mesh)


async def wait_received(mesh: MeshProcesses, count: int) -> None:
    for _ in range(100):
        if await asyncio.to_thread(received_by_agent, mesh) >= count:
            return
        await asyncio.sleep(0.1)
    assert await asyncio.to_thread(received_by_agent, mesh) == count


async def test_ingest_unreachable_for_60_seconds_then_back(mesh: MeshProcesses) -> None:
    """The port is closed for a minute while lines keep arriving; the spool holds them."""
    marker = uuid.uuid4().hex
    mesh.kill("ingest", signal.SIGTERM)
    sent = await send_numbered(mesh.syslog_port, marker, 3000, 50)
    assert await mesh.stored_messages(marker) == Counter()
    await mesh.start_and_wait("ingest")
    stored = await wait_for_all(mesh, marker, len(sent), DRAIN_TIMEOUT_S)
    assert_exactly_once(sent, stored, mesh)


async def test_kill_9_of_the_agent_loses_nothing_it_spooled(mesh: MeshProcesses) -> None:
    marker = uuid.uuid4().hex
    mesh.kill("ingest", signal.SIGTERM)
    sent = await send_numbered(mesh.syslog_port, marker, 3000, 2000)
    await wait_received(mesh, len(sent))
    await mesh.start_and_wait("ingest")
    # Kill the agent while it drains its spool into the restarted ingest.
    for _ in range(200):
        if await mesh.stored_messages(marker):
            break
        await asyncio.sleep(0.02)
    mesh.kill("agent", signal.SIGKILL)
    await mesh.start_and_wait("agent")
    stored = await wait_for_all(mesh, marker, len(sent), DRAIN_TIMEOUT_S)
    assert_exactly_once(sent, stored, mesh)
