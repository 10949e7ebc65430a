"""PipelineService servicer: protobuf in and out; the work is in pipeline.py.

Answers carry the passed events encoded (encoded.proto): each event is serialized once,
where building a ProcessResponse would copy every event into it first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp

from gen.edgebot.v1 import encoded_pb2, event_pb2, pipeline_pb2, pipeline_pb2_grpc
from mesh import AccessPolicy, Kind, ServiceRuntime, kinds
from mesh.config import ConfigError
from mesh.encoded import add_answering_any_message
from mesh.errors import abort_invalid
from mesh.lockstep import StreamDrain, request_span
from mesh.types import Context
from pipeline_svc import metrics
from pipeline_svc.config import PipelineServiceConfig
from pipeline_svc.pipeline import BatchResult, Pipeline, ProcessorTotals

log = logging.getLogger(__name__)
RETIRE_AFTER_S = 30.0
SERVICE_NAME = pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name
PROCESS_STREAM = f"{SERVICE_NAME}/ProcessStream"
POLICY = AccessPolicy(
    methods={
        "Process": kinds(Kind.SERVICE, Kind.OPERATOR),
        "ProcessStream": kinds(Kind.SERVICE, Kind.OPERATOR),
        "DescribePipeline": kinds(Kind.SERVICE, Kind.OPERATOR),
        "GetStats": kinds(Kind.SERVICE, Kind.OPERATOR),
    }
)


def _stats(name: str, totals: ProcessorTotals) -> pipeline_pb2.ProcessorStats:
    stats = pipeline_pb2.ProcessorStats(
        name=name, processed=totals.processed, modified=totals.modified, errors=totals.errors
    )
    stats.duration.FromNanoseconds(int(totals.seconds * 1e9))
    return stats


class PipelineServicer:
    def __init__(self, pipeline: Pipeline, max_batch_events: int) -> None:
        self.pipeline = pipeline
        self.max_batch_events = max_batch_events
        self.start_time = Timestamp()
        self.start_time.GetCurrentTime()
        self.batches = self.events = self.rejected = self.quarantined = 0
        self.streams = StreamDrain()

    async def Process(
        self, request: pipeline_pb2.ProcessRequest, context: Context
    ) -> encoded_pb2.EncodedProcessResponse:
        answer = encoded_pb2.EncodedProcessResponse()
        await self._processed(request, context, "batch.events", answer)
        return answer

    async def ProcessStream(
        self, requests: AsyncIterator[pipeline_pb2.ProcessStreamRequest], context: Context
    ) -> AsyncIterator[encoded_pb2.EncodedProcessStreamResponse]:
        async for message in self.streams.requests(requests):
            answer = encoded_pb2.EncodedProcessStreamResponse()
            with request_span(PROCESS_STREAM, message.trace_context):
                await self._processed(
                    message.request, context, "request.batch.events", answer.response
                )
            yield answer

    async def _processed(
        self,
        request: pipeline_pb2.ProcessRequest,
        context: Context,
        field: str,
        answer: encoded_pb2.EncodedProcessResponse,
    ) -> None:
        count = len(request.batch.events)
        if count > self.max_batch_events:
            await abort_invalid(
                context, field, f"{count} events exceed the limit of {self.max_batch_events}"
            )
        result = await self.pipeline.run(list(request.batch.events))
        self._count(count, result)
        _fill(answer, result)

    def _count(self, count: int, result: BatchResult) -> None:
        for name, totals in result.per_processor:
            metrics.PROCESSOR_SECONDS.labels(name).observe(totals.seconds)
        metrics.EVENTS.labels("passed").inc(len(result.events))
        metrics.EVENTS.labels("rejected").inc(len(result.rejected))
        metrics.EVENTS.labels("quarantined").inc(len(result.quarantined))
        self.batches += 1
        self.events += count
        self.rejected += len(result.rejected)
        self.quarantined += len(result.quarantined)

    async def DescribePipeline(
        self, request: pipeline_pb2.DescribePipelineRequest, context: Context
    ) -> pipeline_pb2.DescribePipelineResponse:
        return pipeline_pb2.DescribePipelineResponse(
            processors=[
                pipeline_pb2.ProcessorInfo(
                    name=p.name, stage=p.stage, enabled=True, settings=p.describe()
                )
                for p in self.pipeline.processors
            ]
        )

    async def GetStats(
        self,
        request: pipeline_pb2.PipelineServiceGetStatsRequest,
        context: Context,
    ) -> pipeline_pb2.PipelineServiceGetStatsResponse:
        return pipeline_pb2.PipelineServiceGetStatsResponse(
            start_time=self.start_time,
            batches=self.batches,
            events=self.events,
            rejected=self.rejected,
            quarantined=self.quarantined,
            processors=[_stats(n, t) for n, t in self.pipeline.totals.items()],
        )


def _fill(response: encoded_pb2.EncodedProcessResponse, result: BatchResult) -> None:
    response.events.extend([event.SerializeToString() for event in result.events])
    for rejection in result.rejected:
        response.rejected.append(
            event_pb2.DeadLetter(
                error=event_pb2.EventError(
                    index=rejection.index,
                    event_id=rejection.event.id,
                    field=rejection.field,
                    reason=rejection.reason,
                ),
                event=rejection.event,
                stage=f"pipeline/{rejection.processor}",
            )
        )
    for quarantine in result.quarantined:
        response.quarantined.append(
            event_pb2.QuarantinedEvent(
                index=quarantine.index,
                event=quarantine.event,
                processor=quarantine.processor,
                reason=quarantine.reason,
            )
        )
    response.stats.extend(_stats(name, totals) for name, totals in result.per_processor)


class PipelineApp:
    def __init__(self, config: PipelineServiceConfig) -> None:
        self.config = config
        self.pipeline = Pipeline.from_config(config.pipeline)
        self.servicer = PipelineServicer(self.pipeline, config.pipeline.max_batch_events)
        self._retired: set[asyncio.Future[None]] = set()
        self.runtime = ServiceRuntime(
            name="pipeline",
            config=config,
            policy=POLICY,
            service_names=[SERVICE_NAME],
            register=lambda server: add_answering_any_message(
                pipeline_pb2_grpc.add_PipelineServiceServicer_to_server, self.servicer, server
            ),
        )
        self.runtime.before_drain.append(self._end_streams)

    async def _end_streams(self) -> None:
        self.servicer.streams.drain()

    async def open(self) -> None:
        await self.runtime.set_serving(True)

    async def reload(self, config: PipelineServiceConfig) -> None:
        """Swap in a pipeline built from ``config``; a ConfigError leaves the running one."""
        try:
            fresh = Pipeline.from_config(config.pipeline)
        except ConfigError:
            metrics.RELOADS.labels("refused").inc()
            raise
        old, self.pipeline = self.pipeline, fresh
        self.servicer.pipeline = fresh
        self.servicer.max_batch_events = config.pipeline.max_batch_events
        metrics.RELOADS.labels("applied").inc()
        log.info("pipeline reloaded", extra={"processors": [p.name for p in fresh.processors]})
        # Batches already inside the old pipeline finish with it before it is closed.
        self._retired.add(asyncio.ensure_future(_close_later(old, RETIRE_AFTER_S)))

    async def close(self) -> None:
        for task in self._retired:
            task.cancel()
        await self.pipeline.close()


async def _close_later(pipeline: Pipeline, delay_s: float) -> None:
    try:
        await asyncio.sleep(delay_s)
    finally:
        await pipeline.close()


def build(config: PipelineServiceConfig) -> PipelineApp:
    return PipelineApp(config)


__all__ = ["PipelineApp", "build"]
