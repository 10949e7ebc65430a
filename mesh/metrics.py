"""Prometheus metrics every gRPC server exposes, and the side HTTP port that serves them."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

RPC_HANDLED = Counter(
    "edgebot_grpc_server_handled_total",
    "RPCs completed by the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "edgebot_grpc_server_handling_seconds",
    "Time from the start of an RPC to its completion.",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RPC_DENIED = Counter(
    "edgebot_grpc_server_denied_total",
    "RPCs refused because the caller's identity may not call the method.",
    ["grpc_service", "grpc_method"],
)
SERVICE_UP = Gauge(
    "edgebot_service_serving",
    "1 while the service reports SERVING on its health endpoint.",
    ["service"],
)


MEMORY_LIMIT = Gauge(
    "edgebot_process_memory_limit_bytes",
    "Memory this process may use: its cgroup limit, or the machine's memory.",
)
CPU_LIMIT = Gauge(
    "edgebot_process_cpu_limit_cores",
    "CPU cores this process may use: its cgroup quota, or the machine's cores.",
)
CGROUP = Path("/sys/fs/cgroup")


def memory_limit_bytes() -> int:
    try:
        raw = (CGROUP / "memory.max").read_text().strip()
        if raw != "max":
            return int(raw)
    except (OSError, ValueError):
        pass
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_limit_cores() -> float:
    try:
        quota, period = (CGROUP / "cpu.max").read_text().split()
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    return float(os.cpu_count() or 1)


def record_resource_limits() -> None:
    """Publish the limits that the CPU and memory alert rules divide by."""
    MEMORY_LIMIT.set(memory_limit_bytes())
    CPU_LIMIT.set(cpu_limit_cores())


class MetricsEndpoint:
    """The Prometheus exposition HTTP server of one process."""

    def __init__(self, host: str, port: int) -> None:
        record_resource_limits()
        server, self._thread = start_http_server(port, addr=host)
        self._server: WSGIServer = server
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
