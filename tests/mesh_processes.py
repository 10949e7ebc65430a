"""The real mesh as separate processes, for fault tests that kill and restart its parts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from edgebot.layout import MODULES, SERVICE_ORDER, StateDir, ports_for, service_configs
from edgebot.up import prepare_state
from gen.edgebot.v1 import storage_pb2, storage_pb2_grpc
from mesh.channel import open_channel
from mesh.config import TlsConfig
from mesh.health import is_serving

START_TIMEOUT_S = 30.0
# How long a fault test waits for the spool to drain into storage after the fault healed.
DRAIN_TIMEOUT_S = 90
FAST_RECONNECT = {"agent": {"shipper": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0}}}


@dataclass
class MeshProcesses:
    """storage, pipeline, ingest, anomaly and one agent, each its own process."""

    state: StateDir
    port_base: int
    syslog_port: int
    agent_id: str = "local"
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def prepare(self, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        prepare_state(self.state, self.port_base, self.syslog_port, self.agent_id)
        configs = service_configs(self.state, self.port_base, self.syslog_port, self.agent_id)
        for service, extra in (overrides or {}).items():
            configs[service] = _merge(configs[service], extra)
        for service, config in configs.items():
            self.state.config_file(service).write_text(yaml.safe_dump(config))

    def start(self, service: str) -> None:
        log = (self.state.logs / f"{service}.log").open("ab")
        self.processes[service] = subprocess.Popen(
            [sys.executable, "-m", MODULES[service], "--config",
             str(self.state.config_file(service))],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
        log.close()

    async def start_and_wait(self, service: str, require_serving: bool = True) -> None:
        self.start(service)
        if require_serving:
            await self.wait_serving(service)

    async def wait_serving(self, service: str) -> None:
        address = f"127.0.0.1:{ports_for(service, self.port_base).health}"
        deadline = time.monotonic() + START_TIMEOUT_S
        async with grpc.aio.insecure_channel(address) as channel:
            while time.monotonic() < deadline:
                process = self.processes[service]
                if process.poll() is not None:
                    raise AssertionError(f"{service} exited: {self.log_tail(service)}")
                if await is_serving(channel, "", timeout_s=1.0):
                    return
                await asyncio.sleep(0.1)
        raise AssertionError(f"{service} never served: {self.log_tail(service)}")

    async def start_all(self) -> None:
        for service in SERVICE_ORDER:
            await self.start_and_wait(service)

    def kill(self, service: str, sig: signal.Signals = signal.SIGKILL) -> int:
        process = self.processes[service]
        process.send_signal(sig)
        return process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_tail(self, service: str, lines: int = 20) -> str:
        path = self.state.logs / f"{service}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def operator_tls(self) -> TlsConfig:
        return TlsConfig.model_validate(self.state.tls("operator-admin"))

    async def stored_messages(self, marker: str) -> Counter[str]:
        """How many times each message containing ``marker`` is stored."""
        address = f"127.0.0.1:{ports_for('storage', self.port_base).grpc}"
        request = storage_pb2.QueryEventsRequest(
            filter=storage_pb2.EventFilter(text=marker),
            page_size=1000,
            order=storage_pb2.SORT_ORDER_OLDEST_FIRST,
        )
        counts: Counter[str] = Counter()
        async with open_channel([address], self.operator_tls()) as channel:
            stub = storage_pb2_grpc.StorageServiceStub(channel)
            while True:
                page = await stub.QueryEvents(request, timeout=10)
                counts.update(event.message for event in page.events)
                if not page.next_page_token:
                    return counts
                request.page_token = page.next_page_token


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


async def send_numbered(port: int, marker: str, count: int, rate_per_s: float) -> list[str]:
    """Send ``count`` RFC3164 lines over UDP at a steady rate; returns the messages sent."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port)
    )
    messages = []
    interval = 1.0 / rate_per_s
    started = time.monotonic()
    try:
        for number in range(count):
            message = f"{marker} line {number:06d}"
            stamp = time.strftime("%b %d %H:%M:%S", time.gmtime())
            transport.sendto(f"<14>{stamp} faulthost fault-test: {message}".encode())
            messages.append(message)
            delay = started + (number + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        transport.close()
    return messages


async def wait_for_all(
    mesh: MeshProcesses, marker: str, expected: int, timeout_s: float
) -> Counter[str]:
    deadline = time.monotonic() + timeout_s
    counts: Counter[str] = Counter()
    while time.monotonic() < deadline:
        counts = await mesh.stored_messages(marker)
        if len(counts) >= expected:
            return counts
        await asyncio.sleep(0.5)
    return counts


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


def agent_metric(mesh: MeshProcesses, name: str, labels: str) -> float:
    """One sample of the agent's Prometheus endpoint, e.g. ``name{labels}``; 0 if absent."""
    url = f"http://127.0.0.1:{ports_for('agent', mesh.port_base).metrics}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def received_by_agent(mesh: MeshProcesses) -> float:
    return agent_metric(mesh, "edgebot_messages_received_total", 'input="syslog_udp"')
