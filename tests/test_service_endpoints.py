"""Every service: health (mTLS and the plaintext probe port), reflection, and who may connect."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import Pki, make_config, secure_channel

from anomaly_svc import AnomalyServiceConfig
from anomaly_svc import build as build_anomaly
from edge_agent import AgentConfig
from edge_agent import build as build_agent
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc, pipeline_pb2, pipeline_pb2_grpc
from ingest_svc import IngestServiceConfig
from ingest_svc import build as build_ingest
from mesh.app import App, running
from mesh.config import TlsConfig
from mesh.pki import DevCA
from mesh.tls import channel_credentials
from pipeline_svc import PipelineServiceConfig
from pipeline_svc import build as build_pipeline
from storage_svc import StorageServiceConfig
from storage_svc import build as build_storage

SERVING = health_pb2.HealthCheckResponse.SERVING


def _pipeline(pki: Pki, tmp: Path) -> App:
    return build_pipeline(make_config(PipelineServiceConfig, pki, "pipeline"))


def _anomaly(pki: Pki, tmp: Path) -> App:
    config = make_config(
        AnomalyServiceConfig, pki, "anomaly", store={"path": str(tmp / "anomalies.db")}
    )
    return build_anomaly(config)


def _storage(pki: Pki, tmp: Path) -> App:
    config = make_config(
        StorageServiceConfig, pki, "storage", sqlite={"path": str(tmp / "events.db")}
    )
    return build_storage(config)


def _agent(pki: Pki, tmp: Path) -> App:
    config = make_config(
        AgentConfig,
        pki,
        "agent-site-a",
        agent={"id": "site-a"},
        inputs={"syslog_udp": {"host": "127.0.0.1", "port": 0}},
        spool={"path": str(tmp / "spool.db")},
        shipper={"ingest": {"addresses": ["127.0.0.1:9"]}},
    )
    return build_agent(config)


def _ingest(pki: Pki, tmp: Path) -> App:
    # Nothing listens at these addresses: ingest must still answer health (NOT_SERVING).
    config = make_config(
        IngestServiceConfig,
        pki,
        "ingest",
        pipeline={"addresses": ["127.0.0.1:9"], "timeout_s": 1},
        storage={"addresses": ["127.0.0.1:9"], "timeout_s": 1},
    )
    return build_ingest(config)


BUILDERS: dict[str, tuple[Callable[[Pki, Path], App], str]] = {
    "pipeline": (_pipeline, "edgebot.v1.PipelineService"),
    "anomaly": (_anomaly, "edgebot.v1.AnomalyService"),
    "storage": (_storage, "edgebot.v1.StorageService"),
    # The edge agent serves health (overall only) and reflection, no API of its own.
    "agent": (_agent, ""),
}


@pytest.fixture(params=sorted(BUILDERS))
async def service(
    request: pytest.FixtureRequest, pki: Pki, tmp_path: Path
) -> AsyncIterator[tuple[App, str]]:
    builder, grpc_name = BUILDERS[request.param]
    async with running(builder(pki, tmp_path)) as app:
        yield app, grpc_name


async def _health(channel: grpc.aio.Channel, name: str) -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status


async def test_health_serving_on_mtls_port(service: tuple[App, str], pki: Pki) -> None:
    app, grpc_name = service
    async with secure_channel(app.runtime.ports.grpc, pki.operator()) as channel:
        assert await _health(channel, "") == SERVING
        assert await _health(channel, grpc_name) == SERVING


async def test_health_serving_on_plaintext_probe_port(service: tuple[App, str]) -> None:
    app, grpc_name = service
    assert app.runtime.ports.health
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.runtime.ports.health}") as channel:
        assert await _health(channel, "") == SERVING
        assert await _health(channel, grpc_name) == SERVING


async def _list_services(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
        return [s.name for s in response.list_services_response.service]
    return []


async def test_reflection_lists_the_service(service: tuple[App, str], pki: Pki) -> None:
    app, grpc_name = service
    async with secure_channel(app.runtime.ports.grpc, pki.operator()) as channel:
        names = await _list_services(channel)
    assert "grpc.health.v1.Health" in names
    if grpc_name:
        assert grpc_name in names


async def test_probe_port_serves_only_health(service: tuple[App, str]) -> None:
    app, _ = service
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.runtime.ports.health}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _list_services(channel)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DescribePipeline(pipeline_pb2.DescribePipelineRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_client_without_certificate_is_refused(service: tuple[App, str], pki: Pki) -> None:
    app, _ = service
    ca_only = grpc.ssl_channel_credentials(
        root_certificates=(pki.directory / "ca.crt").read_bytes()
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{app.runtime.ports.grpc}", ca_only) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _health(channel, "")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_is_refused(
    service: tuple[App, str], pki: Pki, tmp_path: Path
) -> None:
    app, _ = service
    rogue = DevCA(tmp_path / "rogue", common_name="Rogue CA")
    paths = rogue.issue("operator", "admin")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki.directory / "ca.crt").read_bytes(),
        private_key=paths.key.read_bytes(),
        certificate_chain=paths.cert.read_bytes(),
    )
    address = f"127.0.0.1:{app.runtime.ports.grpc}"
    async with grpc.aio.secure_channel(address, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _health(channel, "")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_client_is_refused_on_the_mtls_port(service: tuple[App, str]) -> None:
    app, _ = service
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.runtime.ports.grpc}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _health(channel, "")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_agent_may_not_call_operator_or_service_rpcs(pki: Pki, tmp_path: Path) -> None:
    async with running(_pipeline(pki, tmp_path)) as app:
        address = f"127.0.0.1:{app.runtime.ports.grpc}"
        credentials = channel_credentials(pki.agent("site-a"))
        async with grpc.aio.secure_channel(address, credentials) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Process(pipeline_pb2.ProcessRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "agent:site-a" in (caught.value.details() or "")


async def test_ingest_reports_not_serving_while_dependencies_are_down(
    pki: Pki, tmp_path: Path
) -> None:
    async with running(_ingest(pki, tmp_path)) as app:
        async with secure_channel(app.runtime.ports.grpc, pki.operator()) as channel:
            assert await _health(channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_expired_certificate_is_refused(service: tuple[App, str], pki: Pki) -> None:
    app, _ = service
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    paths = pki.ca.issue(
        "operator",
        "expired",
        not_before=long_ago,
        validity=dt.timedelta(days=1),
        file_stem=f"expired-{uuid.uuid4().hex}",
    )
    expired = TlsConfig(ca_file=pki.directory / "ca.crt", cert_file=paths.cert, key_file=paths.key)
    async with secure_channel(app.runtime.ports.grpc, expired) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _health(channel, "")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_refusals_are_logged_with_the_caller(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgebot.access")
    async with running(_anomaly(pki, tmp_path)) as app:
        async with secure_channel(app.runtime.ports.grpc, pki.agent("site-a")) as channel:
            stub = anomaly_pb2_grpc.AnomalyServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListAnomalies(anomaly_pb2.ListAnomaliesRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    denied = [r.getMessage() for r in caplog.records if r.name == "edgebot.access"]
    assert denied == ["denied /edgebot.v1.AnomalyService/ListAnomalies for agent:site-a"]
