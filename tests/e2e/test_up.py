"""End to end: `edgebot up`, real `logger` lines over UDP, read back through StorageService."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support import free_port_base, free_udp_port

from edgebot.layout import console_port
from gen.edgebot.v1 import event_pb2, storage_pb2, storage_pb2_grpc
from mesh.channel import open_channel
from mesh.config import TlsConfig
from mesh.timeutil import ts_to_ns

UP_TIMEOUT_S = 90
QUERY_TIMEOUT_S = 30


@dataclass
class Mesh:
    process: subprocess.Popen[str]
    state_dir: Path
    port_base: int
    syslog_port: int
    banner: str

    def endpoints(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads((self.state_dir / "endpoints.json").read_text())
        return loaded

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgebot", *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )


def start_mesh(state_dir: Path, port_base: int, syslog_port: int) -> Mesh:
    process = subprocess.Popen(
        [
            sys.executable, "-m", "edgebot", "up",
            "--state-dir", str(state_dir),
            "--port-base", str(port_base),
            "--syslog-port", str(syslog_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            return Mesh(process, state_dir, port_base, syslog_port, "".join(lines))
    process.kill()
    pytest.fail("edgebot up did not come up:\n" + "".join(lines))


def stop_mesh(mesh: Mesh) -> int:
    mesh.process.send_signal(signal.SIGINT)
    try:
        return mesh.process.wait(timeout=40)
    finally:
        if mesh.process.poll() is None:
            mesh.process.kill()


@pytest.fixture
def mesh_dir(tmp_path: Path) -> tuple[Path, int, int]:
    return tmp_path / "state", free_port_base(), free_udp_port()


def send_logger(port: int, *args: str) -> None:
    subprocess.run(["logger", "-n", "127.0.0.1", "-P", str(port), "-d", *args], check=True)


async def find_events(mesh: Mesh, marker: str, count: int) -> list[event_pb2.Event]:
    endpoints = mesh.endpoints()
    tls = TlsConfig.model_validate(endpoints["operator_tls"])
    services = endpoints["services"]
    assert isinstance(services, dict)
    address = services["storage"]["address"]
    request = storage_pb2.QueryEventsRequest(
        filter=storage_pb2.EventFilter(text=marker), order=storage_pb2.SORT_ORDER_OLDEST_FIRST
    )
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    async with open_channel([address], tls) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        while time.monotonic() < deadline:
            response = await stub.QueryEvents(request, timeout=5)
            if len(response.events) >= count:
                return list(response.events)
            await asyncio.sleep(0.3)
    pytest.fail(f"only found {len(response.events)} of {count} events with {marker!r}")


def by_service(events: list[event_pb2.Event]) -> dict[str, event_pb2.Event]:
    return {event.service: event for event in events}


async def test_logger_lines_reach_storage_through_the_whole_mesh(
    mesh_dir: tuple[Path, int, int],
) -> None:
    state_dir, base, syslog_port = mesh_dir
    mesh = start_mesh(state_dir, base, syslog_port)
    try:
        marker = uuid.uuid4().hex
        sent_ns = time.time_ns()
        send_logger(syslog_port, "--rfc3164", "-t", "e2e-3164", "-p", "local0.warning",
                    f"hello rfc3164 {marker}")  # fmt: skip
        send_logger(syslog_port, "--rfc5424", "-t", "e2e-5424", "-p", "daemon.err",
                    "--msgid", "E2E", f"hello rfc5424 {marker}")  # fmt: skip
        events = by_service(await find_events(mesh, marker, 2))

        rfc3164, rfc5424 = events["e2e-3164"], events["e2e-5424"]
        assert rfc3164.message == f"hello rfc3164 {marker}"
        assert rfc3164.severity == event_pb2.SEVERITY_WARNING
        assert rfc5424.message == f"hello rfc5424 {marker}"
        assert rfc5424.severity == event_pb2.SEVERITY_ERROR
        for event in (rfc3164, rfc5424):
            assert event.host == socket.gethostname()
            assert event.type == "syslog"
            # RFC3164 carries whole seconds only.
            assert abs(ts_to_ns(event.time) - sent_ns) < 3 * 10**9
            assert ts_to_ns(event.observed_time) >= ts_to_ns(event.time) - 10**9

        listed = mesh.cli("events", "--text", marker, "--format", "json")
        assert listed.returncode == 0, listed.stderr
        services = {json.loads(line)["service"] for line in listed.stdout.splitlines()}
        assert services == {"e2e-3164", "e2e-5424"}
        health = mesh.cli("health")
        assert health.returncode == 0, health.stdout + health.stderr
        assert health.stdout.count("SERVING") == 5
        await console_shows_the_events(state_dir, base, marker)
    finally:
        code = stop_mesh(mesh)
    assert code == 0, mesh.process.stdout.read() if mesh.process.stdout else ""
    assert_no_secrets_in_logs(state_dir)


async def console_shows_the_events(state_dir: Path, base: int, marker: str) -> None:
    """`edgebot up` serves the console, behind the token it wrote for its owner alone."""
    tokens = state_dir / "console-tokens"
    assert tokens.stat().st_mode & 0o077 == 0
    token = tokens.read_text().strip().partition(":")[2]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{console_port(base)}") as console:
        assert (await console.get("/api/session")).status_code == 401
        login = await console.post("/api/login", json={"token": token})
        assert login.status_code == 200, login.text
        found = await console.get("/api/events", params={"text": marker})
        assert found.status_code == 200, found.text
        assert len(found.json()["events"]) == 2


def assert_no_secrets_in_logs(state_dir: Path) -> None:
    logs = "\n".join(p.read_text(errors="replace") for p in (state_dir / "logs").glob("*.log"))
    assert logs, "the services wrote no logs"
    assert "PRIVATE KEY" not in logs
    for key_file in (state_dir / "certs").glob("*.key"):
        body = [line for line in key_file.read_text().splitlines() if "-----" not in line]
        assert not any(line in logs for line in body), f"{key_file.name} leaked into a log"


async def test_second_up_reuses_certificates_and_data(mesh_dir: tuple[Path, int, int]) -> None:
    state_dir, base, syslog_port = mesh_dir
    mesh = start_mesh(state_dir, base, syslog_port)
    marker = uuid.uuid4().hex
    try:
        send_logger(syslog_port, "--rfc3164", "-t", "first-run", f"before restart {marker}")
        await find_events(mesh, marker, 1)
    finally:
        assert stop_mesh(mesh) == 0
    ca_before = (state_dir / "certs" / "ca.crt").read_bytes()

    mesh = start_mesh(state_dir, base, syslog_port)
    try:
        assert (state_dir / "certs" / "ca.crt").read_bytes() == ca_before
        events = await find_events(mesh, marker, 1)
        assert [e.service for e in events] == ["first-run"]
    finally:
        assert stop_mesh(mesh) == 0
