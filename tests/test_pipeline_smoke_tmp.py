from support import make_config, secure_channel
from gen.edgebot.v1 import pipeline_pb2, pipeline_pb2_grpc, event_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mesh.app import running
from pipeline_svc import PipelineServiceConfig, build


async def test_smoke(pki):
    config = make_config(PipelineServiceConfig, pki, "pipeline")
    async with running(build(config)) as app:
        ch = secure_channel(app.runtime.ports.grpc, pki.service("ingest"))
        h = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="edgebot.v1.PipelineService")
        )
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        r = await pipeline_pb2_grpc.PipelineServiceStub(ch).Process(
            pipeline_pb2.ProcessRequest(
                batch=event_pb2.EventBatch(
                    events=[event_pb2.Event(id="1", attributes={"level": "warn"})]
                )
            )
        )
        print(r)
        assert r.events[0].severity == event_pb2.SEVERITY_WARNING
        await ch.close()
