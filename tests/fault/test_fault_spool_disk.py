"""The edge spool on a disk that fills up: the overflow policy holds, every drop is counted.

The agent's spool lives on a small tmpfs; ingest is down while lines arrive, so the spool
grows until the disk's free-space reserve is reached. From then on datagrams are refused
with reason ``disk_full`` (SQLite never meets a full disk, so acks and checkpoints still
work); once ingest is back the spool drains, and lines stored plus lines counted as dropped
equal lines sent, exactly.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mesh_processes import MeshProcesses, agent_metric, send_numbered, wait_for_all
from support import free_port_base, free_udp_port

from edgebot.layout import StateDir

pytestmark = pytest.mark.slow
DISK_BYTES = 24 * 1024 * 1024
RESERVE_BYTES = 4 * 1024 * 1024
PADDING = "p" * 3000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs and needs root: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
async def mesh(tmp_path: Path, small_disk: Path) -> AsyncIterator[MeshProcesses]:
    processes = MeshProcesses(StateDir(tmp_path / "state"), free_port_base(), free_udp_port())
    agent = {
        "spool": {"path": str(small_disk / "spool.db"), "min_free_disk_bytes": RESERVE_BYTES},
        "shipper": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
    }
    processes.prepare({"agent": agent})
    try:
        await processes.start_all()
        yield processes
    finally:
        processes.stop_all()


async def test_full_disk_refuses_counted_lines_and_the_spool_still_drains(
    mesh: MeshProcesses, small_disk: Path
) -> None:
    marker = uuid.uuid4().hex
    assert mesh.kill("ingest", signal.SIGTERM) == 0
    sent = await send_numbered(mesh.syslog_port, f"{marker} {PADDING}", 6000, 1500)

    def received() -> float:
        return agent_metric(mesh, "edgebot_messages_received_total", 'input="syslog_udp"')

    for _ in range(100):
        if await asyncio.to_thread(received) >= len(sent):
            break
        await asyncio.sleep(0.1)
    assert await asyncio.to_thread(received) == len(sent), "the kernel dropped datagrams"
    await asyncio.sleep(0.5)
    disk_full = agent_metric(mesh, "edgebot_spool_dropped_total", 'reason="disk_full"')
    assert disk_full > 0, "the disk never filled"
    for reason in ("error", "evicted", "spool_full", "overflow"):
        labels = f'reason="{reason}"'
        assert agent_metric(mesh, "edgebot_spool_dropped_total", labels) == 0, reason

    await mesh.start_and_wait("ingest")
    expected = len(sent) - int(disk_full)
    stored = await wait_for_all(mesh, marker, expected, 90)
    await asyncio.sleep(1.0)
    stored = await mesh.stored_messages(marker)
    assert len(stored) == expected, f"stored {len(stored)}, sent {len(sent)}, dropped {disk_full}"
    assert set(stored.values()) == {1}
    assert set(stored) <= set(sent)
    assert "database or disk is full" not in mesh.log_tail("agent", 500)

    # The drained spool's pages are reused: new lines are accepted again.
    again = await send_numbered(mesh.syslog_port, f"{marker}-after", 50, 200)
    after = await wait_for_all(mesh, f"{marker}-after", len(again), 30)
    assert sorted(after) == sorted(again)
