"""A private nats-server with JetStream for the tests: its own temp dir, store, pid file and
free port on 127.0.0.1; stopped by its pid, restartable on the same port and store."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import RawStreamMsg

CANDIDATES = ("nats-server", "/usr/sbin/nats-server")
START_TIMEOUT_S = 10.0


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def nats_server_binary() -> str:
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError(
        "nats-server not found; install it (Debian: apt-get install nats-server, or run "
        "scripts/ensure_peers.sh as root) to run the NATS tests"
    )


@dataclass
class NatsServer:
    directory: Path
    extra_args: tuple[str, ...] = ()
    port: int = field(default_factory=free_tcp_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
             "-sd", str(self.directory / "store"), "-P", str(self.directory / "nats.pid"),
             *self.extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as probe:
                    if probe.recv(5) == b"INFO ":
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server not ready after {START_TIMEOUT_S}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # nats-server exits with code 1 on SIGTERM
            self.process.wait(timeout=10)
        self.process = None

    def log_tail(self) -> str:
        path = self.directory / "nats.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    async def connect(self) -> Client:
        return await nats.connect(self.url, connect_timeout=2, max_reconnect_attempts=0)

    async def stream_messages(self, stream: str) -> list[RawStreamMsg]:
        """Every message the stream holds, in order (read by sequence number)."""
        client = await self.connect()
        try:
            jetstream = client.jetstream()
            info = await jetstream.stream_info(stream)
            first, last = info.state.first_seq, info.state.last_seq
            if not info.state.messages:
                return []
            return [await jetstream.get_msg(stream, seq) for seq in range(first, last + 1)]
        finally:
            await client.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    directory = tmp_path / "nats"
    directory.mkdir()
    server = NatsServer(directory).start()
    yield server
    server.stop()
