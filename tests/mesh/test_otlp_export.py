"""With tracing.otlp_endpoint set, a service process exports its spans over OTLP/gRPC.

No OpenTelemetry Collector package exists for this machine, so the receiver is a gRPC
server implementing OTLP's TraceService from the official protos (opentelemetry-proto).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from support import Pki, eventually_async, free_port_base, secure_channel

from gen.edgebot.v1 import pipeline_pb2, pipeline_pb2_grpc


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope in resource_spans.scope_spans:
                    found += [(attributes.get("service.name", ""), s.name) for s in scope.spans]
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    servicer = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, port
    await server.stop(0)


async def test_a_service_exports_its_rpc_spans_to_the_collector(
    pki: Pki, tmp_path: Path, receiver: tuple[Receiver, int]
) -> None:
    collector, collector_port = receiver
    port = free_port_base(offsets=(0,))
    config = {
        "server": {"port": port, "health_port": None, "metrics_port": None},
        "tls": pki.service("pipeline").model_dump(mode="json"),
        "tracing": {"otlp_endpoint": f"127.0.0.1:{collector_port}"},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "pipeline.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "pipeline_svc", "--config", str(path)),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "200"},
        )
    try:

        async def described() -> bool:
            try:
                async with secure_channel(port, pki.operator()) as channel:
                    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
                    await stub.DescribePipeline(pipeline_pb2.DescribePipelineRequest(), timeout=2)
            except grpc.aio.AioRpcError:
                return False
            return True

        await eventually_async(described, timeout_s=30, what="the pipeline answering")
        wanted = ("edgebot-pipeline", "edgebot.v1.PipelineService/DescribePipeline")
        await eventually_async(
            lambda: asyncio.sleep(0, wanted in collector.spans()), timeout_s=10, what="the span"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await process.wait()
    assert "Failed to export" not in log_path.read_text()
