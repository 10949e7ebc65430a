"""An ingest process under a greedy and a slow client: file descriptors and memory stay
bounded by the configured limits, and everything held is given back.

Ingest runs as its own process (``python -m ingest_svc``) so psutil measures only it. The
client opens 100 TCP connections that never handshake, 20 streams that never say hello,
then 500 concurrent streams that say hello and go silent, and never closes its connections.
Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
import yaml
from support import Pki, eventually

from gen.edgebot.v1 import ingest_pb2, ingest_pb2_grpc
from mesh.errors import status_details
from mesh.tls import channel_credentials

LIMITS = {
    "server": {"max_connections": 64, "handshake_timeout_s": 1.0, "max_connection_idle_s": 2.0},
    "ingest": {
        "max_streams": 200,
        "max_streams_per_caller": 1000,
        "hello_timeout_s": 3.0,
        "stream_idle_timeout_s": 3.0,
    },
}
HELLO = ingest_pb2.StreamRequest(hello=ingest_pb2.Hello(agent_id="site-a"))
GREEDY_STREAMS = 500
GREEDY_CONNECTIONS = 5
SLOW_SOCKETS = 100


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class IngestProcess:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path

    @property
    def stats(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def fds(self) -> int:
        return self.stats.num_fds()

    def rss_mb(self) -> float:
        return self.stats.memory_info().rss / 2**20

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not exported")


@pytest.fixture
def ingest_process(pki: Pki, tmp_path: Path) -> Iterator[IngestProcess]:
    port, health, metrics = _free_port(), _free_port(), _free_port()
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "health_port": health,
            "metrics_port": metrics,
            **LIMITS["server"],
        },
        "tls": pki.service("ingest").model_dump(mode="json"),
        "logging": {"format": "json"},
        "ingest": LIMITS["ingest"],
        # Nothing listens there: admitting and ending streams needs neither.
        "pipeline": {"addresses": ["127.0.0.1:9"]},
        "storage": {"addresses": ["127.0.0.1:9"]},
    }
    path = tmp_path / "ingest.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "ingest.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "ingest_svc", "--config", str(path)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    running = IngestProcess(process, port, metrics, log)
    try:
        _wait_listening(running)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_listening(ingest: IngestProcess) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert ingest.process.poll() is None, ingest.log.read_text()
        try:
            ingest.metric("mothership_active_connections")
            with socket.create_connection(("127.0.0.1", ingest.port), timeout=1):
                return
        except (OSError, httpx.HTTPError):
            time.sleep(0.1)
    raise AssertionError(f"ingest never listened: {ingest.log.read_text()}")


def _channel(port: int, pki: Pki) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        channel_credentials(pki.agent("site-a")),
        options=[("grpc.use_local_subchannel_pool", 1)],
    )


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = status_details(error)
    return status.message if status is not None else (error.details() or "")


async def _silent_sockets(port: int, count: int) -> list[socket.socket]:
    """TCP connections that never start their TLS handshake."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        sockets.append(sock)
    return sockets


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def _open_stream(
    stub: ingest_pb2_grpc.IngestServiceStub,
) -> tuple[grpc.aio.StreamStreamCall[ingest_pb2.StreamRequest, ingest_pb2.StreamResponse], str]:
    call = stub.Stream()
    first = asyncio.ensure_future(call.read())
    # A refused stream may end before the hello is written: its status is in the read.
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call.write(HELLO)
    try:
        response = await first
    except grpc.aio.AioRpcError as error:
        return call, error.code().name
    assert isinstance(response, ingest_pb2.StreamResponse)
    return call, response.WhichOneof("kind") or ""


@pytest.mark.slow
async def test_greedy_and_slow_clients_cannot_exhaust_ingest(
    ingest_process: IngestProcess, pki: Pki
) -> None:
    ingest = ingest_process
    fds_idle, rss_idle = ingest.fds(), ingest.rss_mb()

    # 1. TCP connections that never handshake: at most max_connections are accepted, and
    #    each is closed after the handshake timeout.
    silent = await _silent_sockets(ingest.port, SLOW_SOCKETS)
    await asyncio.sleep(0.3)
    fds_slowloris = ingest.fds()
    await eventually(lambda: all(_closed_by_peer(s) for s in silent), 5, "silent sockets closed")
    for sock in silent:
        sock.close()
    await eventually(lambda: ingest.fds() <= fds_idle + 2, 5, "their descriptors freed")

    # 2. Streams that never say hello end after the hello timeout.
    async with _channel(ingest.port, pki) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        mute = [stub.Stream() for _ in range(20)]
        outcomes = await asyncio.gather(*(c.read() for c in mute), return_exceptions=True)
    codes = {e.code() for e in outcomes if isinstance(e, grpc.aio.AioRpcError)}
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}, outcomes

    # 3. 500 streams that say hello and fall silent: max_streams are admitted.
    channels = [_channel(ingest.port, pki) for _ in range(GREEDY_CONNECTIONS)]
    try:
        stubs = [ingest_pb2_grpc.IngestServiceStub(c) for c in channels]
        opened = await asyncio.gather(
            *(_open_stream(stubs[i % GREEDY_CONNECTIONS]) for i in range(GREEDY_STREAMS))
        )
        kinds = [kind for _, kind in opened]
        fds_greedy, rss_greedy = ingest.fds(), ingest.rss_mb()
        active = ingest.metric("mothership_active_connections")
        assert kinds.count("limits") == LIMITS["ingest"]["max_streams"]
        # gRPC core may report a hello write racing the refusal as INTERNAL on the client;
        # ingest's own count says what it answered.
        refused = GREEDY_STREAMS - kinds.count("limits")
        assert set(kinds) - {"limits"} <= {"RESOURCE_EXHAUSTED", "INTERNAL"}
        assert ingest.metric('mothership_ingestion_refused_total{reason="max_streams"}') == refused
        assert active == LIMITS["ingest"]["max_streams"]

        # 4. The silent streams are ended by the idle timeout, without the client's help.
        idle_codes = await asyncio.gather(
            *(call.read() for call, kind in opened if kind == "limits"), return_exceptions=True
        )
        assert {type(e) for e in idle_codes} == {grpc.aio.AioRpcError}
        assert {"STREAM_IDLE" in str(status_details(e)) for e in idle_codes} == {True}

        def no_streams() -> bool:
            return ingest.metric("mothership_active_connections") == 0

        await eventually(no_streams, 5, "no open streams")
        # The client still holds its connections (gRPC keeps them while call objects live):
        # ingest closes them itself once they carry no call for max_connection_idle_s.
        await eventually(lambda: ingest.fds() <= fds_idle + 2, 8, "connection descriptors freed")
        fds_after, rss_after = ingest.fds(), ingest.rss_mb()
    finally:
        for channel in channels:
            await channel.close()

    print(
        f"\ningest fds: idle {fds_idle}, {SLOW_SOCKETS} silent sockets {fds_slowloris}, "
        f"{GREEDY_STREAMS} streams over {GREEDY_CONNECTIONS} connections {fds_greedy}, "
        f"after {fds_after}\ningest RSS MB: idle {rss_idle:.1f}, "
        f"{LIMITS['ingest']['max_streams']} open streams {rss_greedy:.1f}, after {rss_after:.1f}"
    )
    assert fds_slowloris <= fds_idle + LIMITS["server"]["max_connections"]
    assert fds_greedy <= fds_idle + GREEDY_CONNECTIONS + 2
    assert rss_greedy - rss_idle < 64
    assert ingest.process.poll() is None
