"""The server bootstrap every service uses.

One ``grpc.aio`` server on the mTLS port (the service, health, reflection, the interceptor),
a second plaintext server that serves only ``grpc.health.v1`` for Kubernetes probes, and a
Prometheus exposition port. SIGTERM/SIGINT: NOT_SERVING, drain within the grace period, stop.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from mesh import metrics
from mesh.config import ServiceConfig, log_env_notices
from mesh.identity import AccessPolicy, OperatorTokens
from mesh.interceptors import ServerInterceptor
from mesh.logs import setup_logging
from mesh.tls import server_credentials
from mesh.tracing import setup_tracing

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Registrar = Callable[[grpc.aio.Server], None]
# Descriptors a service needs beside its client connections: databases, logs, channels.
RESERVED_FDS = 128


@dataclass
class BoundPorts:
    grpc: int = 0
    health: int | None = None
    metrics: int | None = None


@dataclass
class ServiceRuntime:
    """Runs one service's gRPC server with the shared plumbing around it.

    ``service_names`` are the fully qualified gRPC services registered by ``register``;
    health reports each of them and the overall ``""`` entry.
    """

    name: str
    config: ServiceConfig
    policy: AccessPolicy
    service_names: Sequence[str]
    register: Registrar
    ports: BoundPorts = field(default_factory=BoundPorts)
    health: health_aio.HealthServicer = field(default_factory=health_aio.HealthServicer)
    before_drain: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Run after NOT_SERVING and before draining: end long-lived streams here."""

    def __post_init__(self) -> None:
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._metrics: metrics.MetricsEndpoint | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> BoundPorts:
        server_cfg = self.config.server
        _ensure_fd_limit(server_cfg.max_connections)
        self._server = grpc.aio.server(
            interceptors=[
                ServerInterceptor(
                    self.policy,
                    self.config.tls.enabled,
                    OperatorTokens(self.config.auth.operator_tokens_file),
                )
            ],
            options=self._options(),
            maximum_concurrent_rpcs=None,
        )
        self.register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        address = f"{server_cfg.host}:{server_cfg.port}"
        if self.config.tls.enabled:
            self.ports.grpc = self._server.add_secure_port(
                address, server_credentials(self.config.tls)
            )
        else:
            log.warning(
                "tls.enabled is false: %s serves PLAINTEXT on %s with no caller identity; "
                "for local development only",
                self.name,
                address,
            )
            self.ports.grpc = self._server.add_insecure_port(address)
        await self._set_all(NOT_SERVING)
        await self._server.start()
        await self._start_health_port()
        if server_cfg.metrics_port is not None:
            self._metrics = metrics.MetricsEndpoint(server_cfg.host, server_cfg.metrics_port)
            self.ports.metrics = self._metrics.port
        log.info(
            "%s listening",
            self.name,
            extra={
                "grpc_port": self.ports.grpc,
                "health_port": self.ports.health,
                "metrics_port": self.ports.metrics,
                "tls": self.config.tls.enabled,
            },
        )
        return self.ports

    def _options(self) -> list[tuple[str, int]]:
        cfg = self.config.server
        options = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.max_concurrent_streams", cfg.max_concurrent_streams),
            ("grpc.keepalive_time_ms", int(cfg.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            *self._connection_options(),
        ]
        if cfg.max_connection_age_s:
            options.append(("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)))
            options.append(("grpc.max_connection_age_grace_ms", 30_000))
        return options

    def _connection_options(self) -> list[tuple[str, int]]:
        """Bounds on connections, shared by the gRPC port and the plaintext probe port."""
        cfg = self.config.server
        options = [
            ("grpc.max_allowed_incoming_connections", cfg.max_connections),
            ("grpc.server_handshake_timeout_ms", int(cfg.handshake_timeout_s * 1000)),
            ("grpc.so_reuseport", 0),
        ]
        if cfg.max_connection_idle_s:
            options.append(("grpc.max_connection_idle_ms", int(cfg.max_connection_idle_s * 1000)))
        return options

    async def _start_health_port(self) -> None:
        port = self.config.server.health_port
        if port is None:
            return
        self._health_server = grpc.aio.server(options=self._connection_options())
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        self.ports.health = self._health_server.add_insecure_port(
            f"{self.config.server.host}:{port}"
        )
        await self._health_server.start()

    async def _set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for service in ("", *self.service_names):
            await self.health.set(service, status)
        metrics.SERVICE_UP.labels(self.name).set(1 if status == SERVING else 0)

    async def set_serving(self, serving: bool, service: str | None = None) -> None:
        """Report SERVING/NOT_SERVING overall, or for one registered service."""
        status = SERVING if serving else NOT_SERVING
        if service is None:
            await self._set_all(status)
        else:
            await self.health.set(service, status)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_for_stop_signal(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stopping.wait()
        log.info(
            "%s stopping: draining for up to %.1fs", self.name, self.config.server.grace_period_s
        )

    async def stop(self) -> None:
        await self._set_all(NOT_SERVING)
        for hook in self.before_drain:
            try:
                await hook()
            except Exception:
                log.exception("%s: before-drain hook failed", self.name)
        grace = self.config.server.grace_period_s
        if self._server is not None:
            await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


def _ensure_fd_limit(max_connections: int) -> None:
    """Raise the soft open-file limit to the hard one when connections could exhaust it."""
    needed = max_connections + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "server.max_connections %d plus %d reserved exceeds the open-file limit %d "
            "(ulimit -n): connections may fail with 'too many open files' first",
            max_connections,
            RESERVED_FDS,
            soft,
        )


def prepare_process(config: ServiceConfig, service: str) -> None:
    """Logging and tracing for a service process (call once, before start)."""
    setup_logging(config.logging, service)
    log_env_notices(config)
    setup_tracing(config.tracing, service)
