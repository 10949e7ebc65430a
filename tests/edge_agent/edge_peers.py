"""Real protocol peers for the input tests (snmpd, softflowd, gpsfake): started as private
processes on loopback ports in a temp dir, stopped by pid. A missing peer fails the test
with the command that installs it (scripts/ensure_peers.sh does so in CI)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2


def require_peer(command: str, package: str) -> str:
    path = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    if path is None:
        raise AssertionError(
            f"{command} is not installed; run as root: apt-get install -y "
            f"--no-install-recommends {package}  (or scripts/ensure_peers.sh)"
        )
    return path


@contextlib.contextmanager
def peer_process(
    argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A peer in its own process group, killed with everything it started on exit."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


class Drain:
    """Takes events out of a spool as an acking shipper would, and keeps them."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.events: list[event_pb2.Event] = []

    async def take(self) -> list[event_pb2.Event]:
        """Whatever was committed since the last take."""
        taken: list[event_pb2.Event] = []
        while (batch := await self.spool.form_batch(10_000, 1 << 30)) is not None:
            await self.spool.ack(batch.batch_id)
            taken.extend(event_pb2.Event.FromString(data) for data in batch.events)
        self.events.extend(taken)
        return taken

    async def until(
        self, check: Callable[[list[event_pb2.Event]], bool], within: float = 10.0, what: str = ""
    ) -> list[event_pb2.Event]:
        """Every event taken so far, once ``check`` holds for them."""
        deadline = time.monotonic() + within
        while True:
            await self.take()
            if check(self.events):
                return self.events
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what or check}; {len(self.events)} events taken"
                )
            await asyncio.sleep(0.02)

    async def count(self, count: int, within: float = 10.0) -> list[event_pb2.Event]:
        return await self.until(lambda events: len(events) >= count, within, f"{count} events")
