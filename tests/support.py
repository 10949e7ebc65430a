"""Test support: a dev PKI, TLS settings per identity, service configs on free ports."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from pydantic import BaseModel

from mesh.config import TlsConfig
from mesh.pki import DevCA, ensure_dev_pki
from mesh.tls import channel_credentials

SERVICES = ("storage", "pipeline", "ingest", "anomaly", "agent")
AGENTS = ("site-a", "site-b")


class Pki:
    """The suite's dev CA and a TlsConfig for every identity it issued."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca: DevCA = ensure_dev_pki(
            directory, {name: () for name in SERVICES}, agents=AGENTS, operators=("admin",)
        )

    def tls(self, stem: str) -> TlsConfig:
        return TlsConfig(
            enabled=True,
            ca_file=self.directory / "ca.crt",
            cert_file=self.directory / f"{stem}.crt",
            key_file=self.directory / f"{stem}.key",
        )

    def service(self, name: str) -> TlsConfig:
        return self.tls(name)

    def agent(self, agent_id: str) -> TlsConfig:
        return self.tls(f"agent-{agent_id}")

    def operator(self) -> TlsConfig:
        return self.tls("operator-admin")


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def make_config(model: type[ConfigT], pki: Pki, name: str, **sections: Any) -> ConfigT:
    """A service config on free ports with the service's certificate; sections override."""
    data: dict[str, Any] = {
        "server": {"port": 0, "health_port": 0, "metrics_port": None, "grace_period_s": 1},
        "tls": pki.service(name).model_dump(mode="json"),
        "logging": {"format": "console", "level": "INFO"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return model.model_validate(data)


def secure_channel(port: int, tls: TlsConfig) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(tls))


def _port_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base(offsets: tuple[int, ...] = (1, 2, 3, 4, 5, 6)) -> int:
    """A base B such that B+o, B+100+o and B+200+o are free TCP ports for every offset o."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 60_000, 10)
        ports = [base + extra + o for o in offsets for extra in (0, 100, 200)]
        if all(_port_free(port, socket.SOCK_STREAM) for port in ports):
            return base
    raise RuntimeError("no free port range found")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "") -> None:
    """Wait until ``predicate()`` is true, failing after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


async def eventually_async(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, what: str = ""
) -> None:
    """Wait until ``await predicate()`` is true, failing after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        await asyncio.sleep(0.05)
