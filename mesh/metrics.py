"""Prometheus metrics every gRPC server exposes, and the side HTTP port that serves them."""

from __future__ import annotations

import logging
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


class MetricsEndpoint:
    """The Prometheus exposition HTTP server of one process."""

    def __init__(self, host: str, port: int) -> None:
        server, self._thread = start_http_server(port, addr=host)
        self._server: WSGIServer = server
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
