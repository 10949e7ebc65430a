"""PipelineService.Process over real mTLS gRPC: redacted events out, leaks quarantined."""

from __future__ import annotations

from support import Pki, make_config, secure_channel

from gen.edgebot.v1 import event_pb2, pipeline_pb2, pipeline_pb2_grpc
from mesh.app import running
from pipeline_svc import PipelineServiceConfig
from pipeline_svc import build as build_pipeline


def batch(*events: event_pb2.Event) -> pipeline_pb2.ProcessRequest:
    return pipeline_pb2.ProcessRequest(
        batch=event_pb2.EventBatch(batch_id="b1", agent_id="site-a", events=events)
    )


async def test_quarantined_events_come_back_apart_and_never_among_events(pki: Pki) -> None:
    # Masking skips cards, the validator does not: the card event must be quarantined.
    processors = [
        {"type": "drop_fields"},
        {"type": "mask_patterns", "detectors": ["email", "secret"]},
        {"type": "safety_validator"},
        {"type": "service_extraction"},
    ]
    config = make_config(
        PipelineServiceConfig, pki, "pipeline", pipeline={"processors": processors}
    )
    request = batch(
        event_pb2.Event(id="clean", message="sshd[42]: session opened for user root"),
        event_pb2.Event(id="leak", message="paid with 4111 1111 1111 1111"),
        event_pb2.Event(
            id="masked", message="reset for ann@example.com", attributes={"db.password": "x"}
        ),
    )
    async with running(build_pipeline(config)) as app:
        async with secure_channel(app.runtime.ports.grpc, pki.service("ingest")) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            reply = await stub.Process(request, timeout=5)
            stats = await stub.GetStats(pipeline_pb2.PipelineServiceGetStatsRequest(), timeout=5)
    assert [e.id for e in reply.events] == ["clean", "masked"]
    assert reply.events[0].service == "sshd"
    assert reply.events[1].message == "reset for [REDACTED:email]"
    assert dict(reply.events[1].attributes) == {}
    [quarantined] = reply.quarantined
    assert (quarantined.index, quarantined.event.id) == (1, "leak")
    assert quarantined.processor == "safety_validator"
    assert quarantined.reason == "redaction validator found card in message"
    assert stats.quarantined == 1
    by_name = {s.name: s for s in reply.stats}
    assert by_name["safety_validator"].errors == 1
    assert by_name["mask_patterns"].modified == 1
