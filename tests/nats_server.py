"""A private nats-server with JetStream for the tests: its own temp dir, a free port, a pid file.

Started from the Debian package's binary (scripts/ensure_peers.sh installs it); stopped by
its pid. It can be stopped and started again on the same port and store.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 15.0


def find_binary() -> str:
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
    )
    if found is None:
        raise RuntimeError(
            "nats-server not found; install it (Debian: apt-get install nats-server, or run "
            "scripts/ensure_peers.sh as root)"
        )
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class NatsServer:
    def __init__(self, root: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.root = root
        self.port = free_port()
        self.extra_args = extra_args
        self.pid_file = root / "nats.pid"
        self.log_file = root / "nats.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            find_binary(),
            *("-a", "127.0.0.1", "-p", str(self.port), "-js"),
            *("-sd", str(self.root / "store"), "-P", str(self.pid_file)),
            *self.extra_args,
        ]
        log = self.log_file.open("ab")
        try:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_tail()}")
            if "Server is ready" in self.log_file.read_text(errors="replace"):
                return
            time.sleep(0.02)
        raise RuntimeError(f"nats-server not ready: {self.log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # A restart must not find the old "ready" line.
        self.log_file.rename(self.root / f"nats.{time.monotonic_ns()}.log")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.root.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()
