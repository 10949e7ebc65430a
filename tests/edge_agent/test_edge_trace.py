"""One trace follows a batch from the agent's shipper through ingest, pipeline and storage."""

from __future__ import annotations

from pathlib import Path

from edge_helpers import agent_config, eventually, make_event
from inprocess_mesh import mothership
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import Pki

from edge_agent.shipper import Shipper
from edge_agent.spool import Spool


async def test_agent_batch_span_parents_the_whole_chain(
    pki: Pki, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    async with mothership(pki, tmp_path) as ship:
        config = agent_config(pki, tmp_path, [ship.address(ship.ingest)])
        spool = Spool(config.spool.path, config.spool.max_bytes)
        await spool.open()
        shipper = Shipper(config, spool)
        shipper.start()
        await spool.append([make_event(f"traced {i}") for i in range(3)])
        await eventually(lambda: spool.events == 0, what="shipped")
        await shipper.stop(0)
        await spool.close()

    finished = spans.get_finished_spans()
    (agent_span,) = [s for s in finished if s.name == "agent.batch"]
    assert agent_span.parent is None
    assert agent_span.attributes is not None
    assert agent_span.attributes["edgebot.events"] == 3
    assert agent_span.attributes["edgebot.ack_status"] == "ok"
    (ingest_span,) = [s for s in finished if s.name == "ingest.batch"]
    assert ingest_span.parent is not None
    assert ingest_span.parent.span_id == agent_span.context.span_id
    assert ingest_span.context.trace_id == agent_span.context.trace_id
    assert ingest_span.attributes is not None
    assert ingest_span.attributes["edgebot.batch_id"] == agent_span.attributes["edgebot.batch_id"]
    # One span per request on ingest's streams, each a child of the batch's span.
    for hop in (
        "edgebot.v1.PipelineService/ProcessStream",
        "edgebot.v1.StorageService/WriteStream",
    ):
        (call,) = [s for s in finished if s.name == hop and s.parent is not None
                   and s.parent.span_id == ingest_span.context.span_id]  # fmt: skip
        assert call.context.trace_id == agent_span.context.trace_id, hop
    assert agent_span.end_time is not None
    assert ingest_span.end_time is not None
    assert agent_span.end_time >= ingest_span.end_time, "the agent span lasts until the ack"
