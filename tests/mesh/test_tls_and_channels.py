"""mTLS files re-read without a restart; client channels balance over several servers."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import Pki, make_config

from gen.edgebot.v1 import event_pb2, pipeline_pb2, pipeline_pb2_grpc
from mesh.app import running
from mesh.channel import channel_target, open_channel
from mesh.config import TlsConfig
from mesh.pki import DevCA
from pipeline_svc import PipelineServiceConfig, build


async def _check(port: int, tls: TlsConfig) -> int:
    async with open_channel([f"127.0.0.1:{port}"], tls) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


async def test_rotated_ca_bundle_is_used_for_new_connections_without_restart(
    pki: Pki, tmp_path: Path
) -> None:
    trust = tmp_path / "trusted-ca.crt"
    trust.write_bytes((pki.directory / "ca.crt").read_bytes())
    server_tls = pki.service("pipeline").model_copy(update={"ca_file": trust})
    config = make_config(PipelineServiceConfig, pki, "pipeline", tls=server_tls.model_dump())
    second_ca = DevCA(tmp_path / "second-ca", common_name="Second CA")
    newcomer = second_ca.issue("operator", "newcomer")
    newcomer_tls = TlsConfig(
        ca_file=pki.directory / "ca.crt", cert_file=newcomer.cert, key_file=newcomer.key
    )
    async with running(build(config)) as app:
        port = app.runtime.ports.grpc
        with pytest.raises(grpc.aio.AioRpcError):
            await _check(port, newcomer_tls)
        bundle = (pki.directory / "ca.crt").read_bytes() + second_ca.cert_path.read_bytes()
        trust.write_bytes(bundle)
        os.utime(trust, ns=(trust.stat().st_atime_ns, trust.stat().st_mtime_ns + 1_000_000))
        assert await _check(port, newcomer_tls) == health_pb2.HealthCheckResponse.SERVING
        # Callers trusted before the rotation still are.
        assert await _check(port, pki.operator()) == health_pb2.HealthCheckResponse.SERVING


def test_channel_target_for_one_name_uses_dns() -> None:
    assert channel_target(["pipeline.edgebot.svc:50052"]) == "dns:///pipeline.edgebot.svc:50052"


def test_channel_target_for_several_ips_balances_over_all() -> None:
    assert channel_target(["127.0.0.1:1", "127.0.0.2:2"]) == "ipv4:127.0.0.1:1,127.0.0.2:2"


def test_channel_target_refuses_a_mix_it_cannot_balance() -> None:
    with pytest.raises(ValueError, match="IP:port"):
        channel_target(["127.0.0.1:1", "pipeline:2"])


async def test_calls_are_spread_round_robin_over_replicas(pki: Pki) -> None:
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(
                running(build(make_config(PipelineServiceConfig, pki, "pipeline")))
            )
            for _ in range(2)
        ]
        addresses = [f"127.0.0.1:{r.runtime.ports.grpc}" for r in replicas]
        async with open_channel(addresses, pki.service("ingest")) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            request = pipeline_pb2.ProcessRequest(
                batch=event_pb2.EventBatch(events=[event_pb2.Event(id="e")])
            )
            for _ in range(10):
                await stub.Process(request, timeout=5)
        counts = [r.servicer.batches for r in replicas]  # type: ignore[attr-defined]
    assert sum(counts) == 10
    assert min(counts) >= 3
