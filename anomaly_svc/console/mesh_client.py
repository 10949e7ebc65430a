"""The console's gRPC clients, and mesh errors turned into what an operator should do."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from anomaly_svc.console.config import ConsoleSection
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc, storage_pb2, storage_pb2_grpc
from mesh import open_channel
from mesh.config import TlsConfig

log = logging.getLogger(__name__)
ANOMALY_SERVICE = anomaly_pb2.DESCRIPTOR.services_by_name["AnomalyService"].full_name
STORAGE_SERVICE = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
HEALTH_TIMEOUT_S = 2.0
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class MeshError(Exception):
    """A failed mesh call, described for the person at the console."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message


_TITLES = {"anomaly": "The anomaly service", "storage": "Storage"}


def describe(service: str, error: grpc.aio.AioRpcError) -> MeshError:
    """What to tell the operator about ``error`` from ``service`` (never a stack trace)."""
    title = _TITLES.get(service, f"The {service} service")
    code = error.code()
    details = error.details() or ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return MeshError(503, f"{title} is unavailable — check the {service} service; retrying.")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return MeshError(400, f"Check your input: {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        return MeshError(404, f"Not found: {details} — it may have been deleted; reload.")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return MeshError(409, f"{details[:1].upper()}{details[1:]}.")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return MeshError(
            502,
            f"{title} refused the console's credentials — give the console an operator "
            "certificate or token (console.client in the anomaly service's configuration).",
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return MeshError(429, f"{title} is busy — try again in a moment ({details}).")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return MeshError(
            501,
            f"{title} does not offer this in its running version — upgrade the {service} service.",
        )
    log.warning(
        "mesh call failed", extra={"service": service, "code": code.name, "details": details}
    )
    return MeshError(502, f"{title} failed ({code.name}) — see its logs; {details}")


def _token(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path) as handle:
        first = handle.readline().strip()
    if not first:
        raise ValueError(f"console.client.token_file: {path} is empty")
    return first


@dataclass
class HealthTarget:
    name: str
    channel: grpc.aio.Channel
    service: str = ""


class MeshClients:
    """One channel per service; every call carries the console's operator credentials."""

    def __init__(self, console: ConsoleSection, service_tls: TlsConfig, anomaly_address: str,
                 storage_addresses: list[str]) -> None:  # fmt: skip
        self.timeout_s = console.client.timeout_s
        tls = console.client.tls or service_tls
        token = _token(str(console.client.token_file) if console.client.token_file else None)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._channels: list[grpc.aio.Channel] = []
        anomaly_channel = self._open([anomaly_address], tls, ANOMALY_SERVICE)
        storage_channel = self._open(storage_addresses, tls, STORAGE_SERVICE)
        self.anomaly = anomaly_pb2_grpc.AnomalyServiceStub(anomaly_channel)
        self.storage = storage_pb2_grpc.StorageServiceStub(storage_channel)
        self.health: list[HealthTarget] = [
            HealthTarget("anomaly", anomaly_channel),
            HealthTarget("storage", storage_channel),
        ]
        for name, addresses in console.services.items():
            if name in ("anomaly", "storage"):
                continue
            self.health.append(HealthTarget(name, self._open(addresses, tls, "")))

    async def call(
        self,
        service: str,
        method: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
    ) -> ResponseT:
        """One unary call with the console's credentials; failures become MeshError."""
        try:
            return await method(request, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise describe(service, exc) from None

    def _open(self, addresses: list[str], tls: TlsConfig, retry: str) -> grpc.aio.Channel:
        channel = open_channel(addresses, tls, retry_services=[retry] if retry else [])
        self._channels.append(channel)
        return channel

    async def health_of_all(self) -> Mapping[str, str]:
        """Each service's health: SERVING, NOT_SERVING, UNKNOWN or UNREACHABLE."""
        results = await asyncio.gather(*(self._health(t) for t in self.health))
        return dict(zip((t.name for t in self.health), results, strict=True))

    async def _health(self, target: HealthTarget) -> str:
        stub = health_pb2_grpc.HealthStub(target.channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=target.service), timeout=HEALTH_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
