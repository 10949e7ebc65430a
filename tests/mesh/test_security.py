"""Security of every service's ports: who may call what, what the probe port serves, bad
request bytes, connection limits, and server certificate rotation while streams are open.

(No certificate, another CA, expired certificates and plaintext on the mTLS port are in
tests/test_service_endpoints.py.)
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inprocess_mesh import AgentStream, make_batch, make_event, stored_ids
from inprocess_mesh import mothership as inprocess_mothership
from support import Pki, make_config, secure_channel
from test_service_endpoints import BUILDERS, _ingest

from gen.edgebot.v1 import anomaly_pb2, ingest_pb2, pipeline_pb2, storage_pb2
from mesh.app import App, running
from mesh.config import TlsConfig
from mesh.tls import channel_credentials
from pipeline_svc import PipelineServiceConfig
from pipeline_svc import build as build_pipeline

SERVICE_DESCRIPTORS = {
    "pipeline": pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"],
    "storage": storage_pb2.DESCRIPTOR.services_by_name["StorageService"],
    "anomaly": anomaly_pb2.DESCRIPTOR.services_by_name["AnomalyService"],
    "ingest": ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
}
ALL_BUILDERS: dict[str, Callable[[Pki, Path], App]] = {
    **{name: builder for name, (builder, _) in BUILDERS.items()},
    "ingest": _ingest,
}


async def call_with_bytes(
    channel: grpc.aio.Channel, service: ServiceDescriptor, method: MethodDescriptor, data: bytes
) -> None:
    """Call any method with raw request bytes, reading the first answer (or the error).

    On a request stream, empty ``data`` means nothing is written, not even the end of the
    requests: the server's answer to the call itself is asked for. A message written while
    the server refuses the call can lose the race with the refusal, and gRPC then reports
    INTERNAL instead of the server's status.
    """
    path = f"/{service.full_name}/{method.name}"
    if method.client_streaming:
        opened = channel.stream_stream(path)
        call = opened(iter([data]), timeout=5) if data else opened(timeout=5)
        await call.read()
        call.cancel()
    elif method.server_streaming:
        stream = channel.unary_stream(path)(data, timeout=5)
        await stream.read()
        stream.cancel()
    else:
        await channel.unary_unary(path)(data, timeout=5)


@pytest.fixture
async def app(request: pytest.FixtureRequest, pki: Pki, tmp_path: Path) -> AsyncIterator[App]:
    """The service named by the test's ``service`` parameter, running."""
    async with running(ALL_BUILDERS[request.param](pki, tmp_path)) as started:
        yield started


@pytest.mark.parametrize("app", ["pipeline", "storage", "anomaly"], indirect=True)
async def test_an_agent_certificate_reaches_no_operator_or_service_rpc(
    app: App, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgebot.access")
    descriptor = SERVICE_DESCRIPTORS[app.runtime.name]
    async with secure_channel(app.runtime.ports.grpc, pki.agent("site-a")) as channel:
        for method in descriptor.methods:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call_with_bytes(channel, descriptor, method, b"")
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, method.name
            assert "agent:site-a" in (caught.value.details() or "")
    denied = [r.getMessage() for r in caplog.records if r.name == "edgebot.access"]
    assert denied == [
        f"denied /{descriptor.full_name}/{method.name} for agent:site-a"
        for method in descriptor.methods
    ]


@pytest.mark.parametrize("app", ["ingest"], indirect=True)
async def test_an_agent_claiming_another_agents_id_is_denied_and_logged(
    app: App, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgebot.access")
    async with secure_channel(app.runtime.ports.grpc, pki.agent("site-a")) as channel:
        stream = AgentStream(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.hello("site-b")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    (record,) = [r for r in caplog.records if r.name == "edgebot.access"]
    assert record.principal == "agent:site-a"  # type: ignore[attr-defined]
    assert record.reason == "AGENT_ID_MISMATCH"  # type: ignore[attr-defined]
    assert "'site-b'" in record.getMessage()


@pytest.mark.parametrize("app", sorted(ALL_BUILDERS), indirect=True)
async def test_the_plaintext_probe_port_serves_health_and_nothing_else(app: App) -> None:
    assert app.runtime.ports.health
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.runtime.ports.health}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status in (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        for descriptor in SERVICE_DESCRIPTORS.values():
            for method in descriptor.methods:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call_with_bytes(channel, descriptor, method, b"")
                assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, method.full_name
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _list_services(channel)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def _list_services(channel: grpc.aio.Channel) -> None:
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    call = channel.stream_stream(reflection)(iter([b"\x3a\x00"]), timeout=5)
    await call.read()


@pytest.mark.parametrize(
    ("app", "method", "message"),
    [
        ("pipeline", "Process", "edgebot.v1.ProcessRequest"),
        ("storage", "QueryEvents", "edgebot.v1.QueryEventsRequest"),
        ("storage", "TailEvents", "edgebot.v1.TailEventsRequest"),
        ("anomaly", "ListAnomalies", "edgebot.v1.ListAnomaliesRequest"),
    ],
    indirect=["app"],
)
async def test_bytes_that_are_not_the_request_type_are_invalid_argument(
    app: App, pki: Pki, method: str, message: str
) -> None:
    descriptor = SERVICE_DESCRIPTORS[app.runtime.name]
    port = app.runtime.ports.grpc
    garbage = b"\xff\xff\xff\xff\x0f not protobuf"
    async with secure_channel(port, pki.operator()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call_with_bytes(channel, descriptor, descriptor.methods_by_name[method], garbage)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"request: not a valid {message}" in (caught.value.details() or "")
    # A caller that may not call the method learns nothing about its message type.
    async with secure_channel(port, pki.agent("site-a")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call_with_bytes(channel, descriptor, descriptor.methods_by_name[method], garbage)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _pipeline_with(pki: Pki, **server: Any) -> App:
    return build_pipeline(make_config(PipelineServiceConfig, pki, "pipeline", server=server))


async def _health_on_own_connection(port: int, pki: Pki) -> grpc.aio.Channel:
    """A channel with its own connection (channels in one process share them otherwise)."""
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        channel_credentials(pki.operator()),
        options=[("grpc.use_local_subchannel_pool", 1)],
    )
    stub = health_pb2_grpc.HealthStub(channel)
    await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return channel


async def test_connections_beyond_max_connections_are_closed_at_accept(pki: Pki) -> None:
    async with running(_pipeline_with(pki, max_connections=3)) as app:
        port = app.runtime.ports.grpc
        admitted = [await _health_on_own_connection(port, pki) for _ in range(3)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _health_on_own_connection(port, pki)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await admitted.pop().close()
        await asyncio.sleep(0.2)
        admitted.append(await _health_on_own_connection(port, pki))
        for channel in admitted:
            await channel.close()


async def test_a_connection_that_never_handshakes_is_closed(pki: Pki) -> None:
    async with running(_pipeline_with(pki, handshake_timeout_s=0.5)) as app:
        for port in (app.runtime.ports.grpc, app.runtime.ports.health):
            assert port
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(5):
                # TLS port: nothing arrives; probe port: the server's SETTINGS, then EOF.
                while await reader.read(4096):
                    pass
            writer.close()
            assert 0.4 < time.monotonic() - started < 3, port


async def test_an_idle_connection_is_closed_and_the_client_reconnects(pki: Pki) -> None:
    async with running(_pipeline_with(pki, max_connection_idle_s=0.3)) as app:
        channel = await _health_on_own_connection(app.runtime.ports.grpc, pki)
        try:
            deadline = time.monotonic() + 5
            while channel.get_state() == grpc.ChannelConnectivity.READY:
                assert time.monotonic() < deadline, "the idle connection stayed open"
                await asyncio.sleep(0.05)
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await channel.close()


def _served_certificate(port: int, pki: Pki) -> bytes:
    """DER of the certificate the server presents to a new connection."""
    context = ssl.create_default_context(cafile=str(pki.directory / "ca.crt"))
    context.load_cert_chain(
        str(pki.directory / "agent-site-a.crt"), str(pki.directory / "agent-site-a.key")
    )
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(pem_file: Path) -> bytes:
    certificate = x509.load_pem_x509_certificate(pem_file.read_bytes())
    return certificate.public_bytes(serialization.Encoding.DER)


def _replace(path: Path, source: Path) -> None:
    data = source.read_bytes()
    temporary = path.with_suffix(".new")
    temporary.write_bytes(data)
    temporary.replace(path)


async def test_rotated_server_certificate_serves_new_connections_while_old_streams_drain(
    pki: Pki, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    for suffix in ("crt", "key"):
        shutil.copy(pki.directory / f"ingest.{suffix}", served / f"ingest.{suffix}")
    tls = TlsConfig(
        ca_file=pki.directory / "ca.crt",
        cert_file=served / "ingest.crt",
        key_file=served / "ingest.key",
    )
    renewed = pki.ca.issue(
        "service", "ingest", ("localhost", "127.0.0.1", "::1"), file_stem="ingest-renewed"
    )
    async with inprocess_mothership(pki, tmp_path, ingest_tls=tls.model_dump(mode="json")) as mesh:
        port = mesh.ingest.runtime.ports.grpc
        assert _served_certificate(port, pki) == _der(pki.directory / "ingest.crt")
        async with secure_channel(port, pki.agent("site-a")) as old_channel:
            old = AgentStream(old_channel)
            await old.hello("site-a")
            before = await old.send(make_batch("site-a", [make_event("before rotation")]))

            # Half a rotation (the new certificate, the old key) is not taken up.
            _replace(served / "ingest.crt", renewed.cert)
            assert _served_certificate(port, pki) == _der(pki.directory / "ingest.crt")
            _replace(served / "ingest.key", renewed.key)
            assert _served_certificate(port, pki) == _der(renewed.cert)

            async with secure_channel(port, pki.agent("site-a")) as new_channel:
                new = AgentStream(new_channel)
                await new.hello("site-a")
                fresh = await new.send(make_batch("site-a", [make_event("new connection")]))
                await new.call.done_writing()
            # The stream opened before the rotation keeps working until it ends.
            after = await old.send(make_batch("site-a", [make_event("old stream, after")]))
            await old.call.done_writing()
            assert await old.call.read() is grpc.aio.EOF
            assert await old.call.code() == grpc.StatusCode.OK
        stored = await stored_ids(mesh.storage, pki)
    assert [before.status, fresh.status, after.status] == [ingest_pb2.ACK_STATUS_OK] * 3
    assert len(stored) == 3
