"""Prometheus metrics every gRPC server exposes, and the side HTTP port that serves them."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

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


GC_PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class GcPauses(Collector):
    """``edgebot_process_gc_pause_seconds``: how long each garbage collection stopped the
    process, by generation. A full collection of a large heap can take tens of
    milliseconds, which shows up as tail latency in every request in flight.

    The gc callback only adds to plain lists: it may run in any thread, at any allocation,
    even while that thread holds a metric's lock, so it must not take one itself.
    """

    def __init__(self, buckets: tuple[float, ...] = GC_PAUSE_BUCKETS) -> None:
        self.bounds = buckets
        self.counts = [[0] * (len(buckets) + 1) for _ in range(3)]
        self.sums = [0.0] * 3
        self._started_ns = 0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_ns = time.perf_counter_ns()
            return
        seconds = (time.perf_counter_ns() - self._started_ns) / 1e9
        generation = info["generation"]
        self.sums[generation] += seconds
        slot = next((i for i, bound in enumerate(self.bounds) if seconds <= bound), -1)
        self.counts[generation][slot] += 1

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "edgebot_process_gc_pause_seconds",
            "Time each Python garbage collection stopped the process for, by generation.",
            labels=["generation"],
        )
        for generation in range(3):
            counts, total = list(self.counts[generation]), self.sums[generation]
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([str(generation)], buckets, total)
        yield family


_GC_PAUSES: GcPauses | None = None


def watch_gc_pauses() -> GcPauses:
    """Start timing garbage collections in this process (once; later calls return it)."""
    global _GC_PAUSES
    if _GC_PAUSES is None:
        _GC_PAUSES = GcPauses()
        gc.callbacks.append(_GC_PAUSES.on_gc)
        REGISTRY.register(_GC_PAUSES)
    return _GC_PAUSES


class MetricsEndpoint:
    """The Prometheus exposition HTTP server of one process."""

    def __init__(self, host: str, port: int) -> None:
        record_resource_limits()
        watch_gc_pauses()
        server, self._thread = start_http_server(port, addr=host)
        self._server: WSGIServer = server
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
