"""Client channels: mTLS, keepalive, round-robin over several addresses, retries, tracing."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

import grpc

from mesh import tracing
from mesh.config import TlsConfig
from mesh.tls import channel_credentials

DEFAULT_RETRY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def channel_target(addresses: Sequence[str]) -> str:
    """A gRPC target for one or more ``host:port`` addresses.

    Several IP addresses become one ``ipv4:``/``ipv6:`` target balanced by round_robin; a
    single name uses the DNS resolver (a Kubernetes headless service resolves to every pod).
    """
    if not addresses:
        raise ValueError("no address given")
    if len(addresses) == 1:
        address = addresses[0]
        return address if "://" in address or _is_ip_address(address) else f"dns:///{address}"
    if all(_is_ip_address(a) for a in addresses):
        scheme = "ipv6" if all(a.startswith("[") for a in addresses) else "ipv4"
        return f"{scheme}:" + ",".join(addresses)
    raise ValueError(
        "several addresses must all be IP:port; use one DNS name that resolves to many instead"
    )


def _is_ip_address(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def service_config(retry_services: Sequence[str]) -> str:
    """Round-robin for every call; retries on UNAVAILABLE for the named (idempotent) ones."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retry_services:
        config["methodConfig"] = [
            {"name": [{"service": s} for s in retry_services], "retryPolicy": DEFAULT_RETRY}
        ]
    return json.dumps(config)


def open_channel(
    addresses: Sequence[str],
    tls: TlsConfig,
    *,
    retry_services: Sequence[str] = (),
    max_message_bytes: int = 16 * 1024 * 1024,
    keepalive_time_s: float = 30.0,
    server_name: str | None = None,
    gzip: bool = False,
    extra_options: Sequence[tuple[str, Any]] = (),
    traced: bool = True,
) -> grpc.aio.Channel:
    """A channel to a service; mTLS unless tls.enabled is false (development only).

    ``server_name`` is the name the server certificate must carry. It defaults to the host
    of the first address, since a target of several IPs has no single authority of its own.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", service_config(retry_services)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        *extra_options,
    ]
    target = channel_target(addresses)
    if len(addresses) > 1 or server_name:
        name = server_name or addresses[0].rsplit(":", 1)[0].strip("[]")
        options.append(("grpc.ssl_target_name_override", name))
    # Untraced channels carry messages that name their own trace (mesh.lockstep); without
    # interceptors a stream's writes go straight to the call, not through a queue and task.
    interceptors: list[grpc.aio.ClientInterceptor] = (
        [_TraceUnaryUnary(), _TraceUnaryStream(), _TraceStreamUnary(), _TraceStreamStream()]
        if traced
        else []
    )
    compression = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression
    if tls.enabled:
        return grpc.aio.secure_channel(
            target,
            channel_credentials(tls),
            options=options,
            interceptors=interceptors,
            compression=compression,
        )
    return grpc.aio.insecure_channel(
        target, options=options, interceptors=interceptors, compression=compression
    )


def _with_trace(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=grpc.aio.Metadata(*tracing.inject_metadata(list(details.metadata or ()))),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _TraceUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_trace(details), request)


class _TraceUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_trace(details), request)


class _TraceStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_trace(details), request_iterator)


class _TraceStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_trace(details), request_iterator)
