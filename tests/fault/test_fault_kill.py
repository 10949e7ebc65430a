"""Fault injection on the real mesh: every event sent is stored exactly once.

Each test sends numbered syslog lines to the edge agent at a steady rate, breaks one part
of the mesh (kill -9, or a stop for a while), heals it, waits for the spool to drain, and
counts every line in storage.
"""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mesh_processes import MeshProcesses, send_numbered, wait_for_all
from support import free_port_base, free_udp_port

from edgebot.layout import StateDir, ports_for

pytestmark = pytest.mark.slow
DRAIN_TIMEOUT_S = 90
FAST_RECONNECT = {"agent": {"shipper": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0}}}


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[MeshProcesses]:
    processes = MeshProcesses(StateDir(tmp_path / "state"), free_port_base(), free_udp_port())
    processes.prepare(FAST_RECONNECT)
    try:
        await processes.start_all()
        yield processes
    finally:
        processes.stop_all()


def udp_receive_buffer_errors() -> int:
    """The kernel's count of UDP datagrams dropped because a socket buffer was full."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    header, values = [line.split() for line in lines if line.startswith("Udp:")][:2]
    return int(values[header.index("RcvbufErrors")])


def assert_exactly_once(sent: list[str], stored: Counter[str], mesh: MeshProcesses) -> None:
    missing = [m for m in sent if m not in stored]
    doubled = {m: n for m, n in stored.items() if n > 1}
    extra = set(stored) - set(sent)
    report = (
        f"sent {len(sent)}, agent received {received_by_agent(mesh):.0f}, "
        f"stored {len(stored)}, missing {len(missing)}; kernel UDP buffer drops so far "
        f"{udp_receive_buffer_errors()}"
    )
    assert not missing, f"{report}; first missing {missing[:3]}\n{mesh.log_tail('agent')}"
    assert not doubled, f"{report}; doubled {list(doubled.items())[:3]}"
    assert not extra, f"{report}; unexpected {list(extra)[:3]}"


def received_by_agent(mesh: MeshProcesses) -> float:
    url = f"http://127.0.0.1:{ports_for('agent', mesh.port_base).metrics}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^edgebot_messages_received_total\{input="syslog_udp"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


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
