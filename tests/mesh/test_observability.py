"""Prometheus exposition, W3C trace context across a gRPC hop, and operator tokens."""

from __future__ import annotations

import asyncio
import gc
import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import Pki, make_config, secure_channel

from gen.edgebot.v1 import pipeline_pb2, pipeline_pb2_grpc
from mesh.app import running
from mesh.metrics import GcPauses
from mesh.tls import channel_credentials
from pipeline_svc import PipelineServiceConfig, build

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def test_metrics_port_exposes_rpc_counts(pki: Pki) -> None:
    config = make_config(PipelineServiceConfig, pki, "pipeline", server={"metrics_port": 0})
    async with running(build(config)) as app:
        async with secure_channel(app.runtime.ports.grpc, pki.service("ingest")) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            await stub.DescribePipeline(pipeline_pb2.DescribePipelineRequest(), timeout=5)
        url = f"http://127.0.0.1:{app.runtime.ports.metrics}/metrics"
        text = await asyncio.to_thread(_fetch, url)
    assert (
        'edgebot_grpc_server_handled_total{grpc_code="OK",grpc_method="DescribePipeline",'
        'grpc_service="edgebot.v1.PipelineService"}' in text
    )
    assert 'edgebot_service_serving{service="pipeline"} 1.0' in text


def _full_collections(text: str) -> float:
    found = re.search(
        r'^edgebot_process_gc_pause_seconds_count\{generation="2"\} (\S+)$', text, re.M
    )
    assert found, "no gc pause histogram for generation 2"
    return float(found.group(1))


async def test_metrics_port_exposes_gc_pauses(pki: Pki) -> None:
    config = make_config(PipelineServiceConfig, pki, "pipeline", server={"metrics_port": 0})
    async with running(build(config)) as app:
        url = f"http://127.0.0.1:{app.runtime.ports.metrics}/metrics"
        before = _full_collections(await asyncio.to_thread(_fetch, url))
        gc.collect()
        gc.collect()
        after = _full_collections(await asyncio.to_thread(_fetch, url))
    assert after >= before + 2


def test_gc_pauses_land_in_their_bucket() -> None:
    pauses = GcPauses(buckets=(0.001, 0.01))
    for started_ns, generation in ((0, 0), (5_000_000, 1), (50_000_000, 1)):
        pauses.on_gc("start", {"generation": generation})
        pauses._started_ns -= started_ns  # as if the collection began that long ago
        pauses.on_gc("stop", {"generation": generation})
    (family,) = pauses.collect()
    buckets = {
        (sample.labels["generation"], sample.labels["le"]): sample.value
        for sample in family.samples
        if sample.name.endswith("_bucket")
    }
    assert buckets[("0", "0.001")] == 1
    assert (buckets[("1", "0.001")], buckets[("1", "0.01")], buckets[("1", "+Inf")]) == (0, 1, 2)
    sums = {s.labels["generation"]: s.value for s in family.samples if s.name.endswith("_sum")}
    assert 0.055 <= sums["1"] < 0.06
    assert buckets[("2", "+Inf")] == 0


async def test_server_span_continues_the_callers_trace(
    pki: Pki, spans: InMemorySpanExporter
) -> None:
    config = make_config(PipelineServiceConfig, pki, "pipeline")
    async with (
        running(build(config)) as app,
        secure_channel(app.runtime.ports.grpc, pki.service("ingest")) as channel,
    ):
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"),)
        await stub.GetStats(
            pipeline_pb2.PipelineServiceGetStatsRequest(), metadata=metadata, timeout=5
        )
    server_spans = [s for s in spans.get_finished_spans() if s.name.endswith("/GetStats")]
    assert server_spans, [s.name for s in spans.get_finished_spans()]
    span = server_spans[-1]
    assert span.kind == trace.SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    assert span.attributes is not None
    assert span.attributes["rpc.method"] == "GetStats"


async def test_operator_token_grants_the_operator_role(pki: Pki, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret-operator-token\n")
    config = make_config(
        PipelineServiceConfig, pki, "pipeline", auth={"operator_tokens_file": str(tokens)}
    )
    async with running(build(config)) as app:
        address = f"127.0.0.1:{app.runtime.ports.grpc}"
        credentials = channel_credentials(pki.agent("site-a"))
        async with grpc.aio.secure_channel(address, credentials) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            request = pipeline_pb2.DescribePipelineRequest()
            reply = await stub.DescribePipeline(
                request, metadata=(("authorization", "Bearer s3cret-operator-token"),), timeout=5
            )
            configured = [p.name for p in app.pipeline.processors]  # type: ignore[attr-defined]
            assert [p.name for p in reply.processors] == configured
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.DescribePipeline(
                    request, metadata=(("authorization", "Bearer wrong"),), timeout=5
                )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
