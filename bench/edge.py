"""One real edge agent process (``python -m edge_agent``): syslog over TCP in, spooled,
shipped to the mothership. CPU seconds of the agent alone per line give lines/s per core;
idle RSS is read after the agent has run idle for a while."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import profiling
from bench.identity import agent_id, tls
from bench.mothership import Service, spawn, wait_serving
from bench.pg import PgSchema
from bench.procs import Sampler, Watched
from bench.rsyslog_peer import send_lines

from pg_server import free_tcp_port  # isort: skip  (on the path bench.pg sets)


@dataclass(frozen=True)
class EdgeResult:
    lines: int
    stored: int
    wall_lines_per_s: float
    cpu_s_per_1k: float
    lines_per_core_s: float
    idle_rss_mb: float
    peak_rss_mb: float


def agent_config(index: int, pki: Path, work: Path, ingests: list[str], tcp_port: int,
                 ports: tuple[int, int], shipper: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "server": {"port": ports[0], "health_port": ports[1], "metrics_port": None},
        "tls": tls(pki, f"agent-{agent_id(index)}"),
        "logging": {"format": "json", "level": "INFO"},
        "agent": {"id": agent_id(index)},
        "inputs": {
            "syslog_udp": {"enabled": False},
            "syslog_tcp": {"enabled": True, "host": "127.0.0.1", "port": tcp_port},
        },
        "spool": {"path": str(work / "spool.db")},
        "shipper": {"ingest": {"addresses": ingests}, **shipper},
    }


def write_config(work: Path, config: dict[str, Any]) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def stored_from(store: PgSchema, source: str, expected: int, timeout_s: float) -> int:
    conn = await store.connect()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            found: int = await conn.fetchval(
                "SELECT COUNT(*) FROM events WHERE source = $1", source
            )
            if found >= expected or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def measure_edge(
    index: int, pki: Path, work: Path, store: PgSchema, ingests: list[str],
    lines: list[bytes], shipper: dict[str, Any], idle_s: float, profile: Path | None = None,
) -> EdgeResult:  # fmt: skip
    tcp_port, ports = free_tcp_port(), (free_tcp_port(), free_tcp_port())
    path = write_config(work, agent_config(index, pki, work, ingests, tcp_port, ports, shipper))
    log = work / "agent.log"
    agent = Service("agent", spawn("edge_agent", path, log), ports[0], ports[1], log)
    try:
        await wait_serving(agent)
        await asyncio.sleep(idle_s)
        watched = Watched("agent", agent.process.pid)
        idle_rss = watched.rss_mb()
        source = f"{agent_id(index)}/syslog_tcp"
        started = time.monotonic()
        recorder = (
            profiling.recording({"agent": agent.process.pid}, profile, 60)
            if profile is not None
            else contextlib.nullcontext()
        )
        async with Sampler([watched]) as sampler, recorder:
            await asyncio.to_thread(send_lines, tcp_port, lines)
            stored = await stored_from(store, source, len(lines), timeout_s=300)
        wall = time.monotonic() - started
    finally:
        agent.process.terminate()
        try:
            agent.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.process.kill()
    cpu = sampler.cpu_used()["agent"]
    return EdgeResult(
        lines=len(lines),
        stored=stored,
        wall_lines_per_s=round(stored / wall, 1),
        cpu_s_per_1k=round(cpu / max(stored, 1) * 1000, 4),
        lines_per_core_s=round(stored / cpu, 1) if cpu else 0.0,
        idle_rss_mb=round(idle_rss, 1),
        peak_rss_mb=round(watched.peak_rss_mb, 1),
    )
