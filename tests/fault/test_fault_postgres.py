"""The mesh on PostgreSQL while PostgreSQL goes away: stopped for 30 s, or killed hard.

Storage answers UNAVAILABLE while its database is gone, ingest acks RETRY, the agent keeps
its batches spooled and re-sends them; once PostgreSQL is back every line is stored once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mesh_processes import (
    DRAIN_TIMEOUT_S,
    FAST_RECONNECT,
    MeshProcesses,
    assert_exactly_once,
    send_numbered,
    wait_for_all,
)
from pg_server import TEST_DATABASE, PgServer, running_server
from support import free_port_base, free_udp_port

from edgebot.layout import StateDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgServer]:
    """A private server: these tests stop and kill it."""
    with running_server() as server:
        yield server


@pytest.fixture
async def mesh(tmp_path: Path, postgres: PgServer) -> AsyncIterator[MeshProcesses]:
    if not postgres.running:
        postgres.start()
    processes = MeshProcesses(StateDir(tmp_path / "state"), free_port_base(), free_udp_port())
    schema = f"fault_{uuid.uuid4().hex[:12]}"
    storage = {
        "storage": {"primary": "postgres"},
        "postgres": {"dsn": postgres.dsn(TEST_DATABASE), "schema_name": schema},
    }
    processes.prepare({**FAST_RECONNECT, "storage": storage})
    try:
        await processes.start_all()
        yield processes
    finally:
        processes.stop_all()


async def test_postgres_stopped_for_30_seconds_mid_stream(
    mesh: MeshProcesses, postgres: PgServer
) -> None:
    marker = uuid.uuid4().hex
    sending = asyncio.ensure_future(send_numbered(mesh.syslog_port, marker, 2000, 200))
    await asyncio.sleep(1.5)
    await asyncio.to_thread(postgres.stop)
    await asyncio.sleep(30)
    await asyncio.to_thread(postgres.start)
    sent = await sending
    stored = await wait_for_all(mesh, marker, len(sent), DRAIN_TIMEOUT_S)
    assert_exactly_once(sent, stored, mesh)


async def test_postgres_killed_hard_mid_stream(mesh: MeshProcesses, postgres: PgServer) -> None:
    marker = uuid.uuid4().hex
    sending = asyncio.ensure_future(send_numbered(mesh.syslog_port, marker, 1500, 500))
    await asyncio.sleep(1.0)
    await asyncio.to_thread(postgres.kill)
    await asyncio.sleep(2.0)
    await asyncio.to_thread(postgres.start)
    sent = await sending
    stored = await wait_for_all(mesh, marker, len(sent), DRAIN_TIMEOUT_S)
    assert_exactly_once(sent, stored, mesh)
