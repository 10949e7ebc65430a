"""The mothership under test: storage (PostgreSQL primary), pipeline and ingest replicas,
each its own ``python -m <service> --config FILE`` process on free loopback ports, mTLS."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from bench.identity import tls
from bench.pg import ROOT, PgSchema
from mesh.health import is_serving

from pg_server import free_tcp_port  # isort: skip  (on the path bench.pg sets)

MODULES = {"storage": "storage_svc", "pipeline": "pipeline_svc", "ingest": "ingest_svc"}
START_TIMEOUT_S = 60.0
BIND_ATTEMPTS = 3


@dataclass
class Service:
    role: str
    process: subprocess.Popen[bytes]
    port: int
    health_port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Mothership:
    """``ingests`` ingest and ``pipelines`` pipeline replicas in front of one storage."""

    workdir: Path
    pki: Path
    store: PgSchema
    ingests: int = 1
    pipelines: int = 1
    log_level: str = "INFO"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)

    def by_role(self, kind: str) -> list[Service]:
        return [s for s in self.services if s.role.startswith(kind)]

    @property
    def ingest_addresses(self) -> list[str]:
        return [s.address for s in self.by_role("ingest")]

    async def start(self) -> None:
        database = {"dsn": self.store.dsn, "schema_name": self.store.schema}
        await self._start(
            "storage", "storage", {"storage": {"primary": "postgres"}, "postgres": database}
        )
        for n in range(self.pipelines):
            await self._start(f"pipeline{n + 1}", "pipeline", {})
        downstream = {
            "pipeline": {"addresses": [s.address for s in self.by_role("pipeline")]},
            "storage": {"addresses": [s.address for s in self.by_role("storage")]},
        }
        for n in range(self.ingests):
            await self._start(f"ingest{n + 1}", "ingest", downstream)

    async def _start(self, role: str, kind: str, sections: dict[str, Any]) -> None:
        for attempt in range(BIND_ATTEMPTS):
            service = self._spawn(role, kind, sections)
            try:
                await wait_serving(service)
            except RuntimeError:
                # A free port found by probing can be taken by another process before
                # the service binds it (a shared machine): try again on fresh ports.
                if "already in use" not in service.tail() or attempt == BIND_ATTEMPTS - 1:
                    raise
                continue
            self.services.append(service)
            return

    def _spawn(self, role: str, kind: str, sections: dict[str, Any]) -> Service:
        port, health = free_tcp_port(), free_tcp_port()
        config: dict[str, Any] = {
            "server": {"port": port, "health_port": health, "grace_period_s": 5},
            "tls": tls(self.pki, kind),
            "logging": {"format": "json", "level": self.log_level},
            **sections,
        }
        config["server"]["metrics_port"] = None
        for key, value in self.overrides.get(kind, {}).items():
            config[key] = {**config.get(key, {}), **value}
        path = self.workdir / f"{role}.yaml"
        path.write_text(yaml.safe_dump(config))
        log_path = self.workdir / f"{role}.log"
        log_path.unlink(missing_ok=True)
        return Service(role, spawn(MODULES[kind], path, log_path), port, health, log_path)

    def stop(self) -> None:
        for service in reversed(self.services):
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in reversed(self.services):
            try:
                service.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
        self.services.clear()

    def check_alive(self) -> None:
        for service in self.services:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.role} exited:\n{service.tail()}")


def spawn(module: str, config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )


async def wait_serving(service: Service) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.health_port}") as channel:
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.role} exited at start-up:\n{service.tail()}")
            if await is_serving(channel, "", timeout_s=1.0):
                return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{service.role} did not serve within {START_TIMEOUT_S}s:\n{service.tail()}")
