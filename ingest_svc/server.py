"""IngestService servicer: streams with a window of un-acked batches, and unary Push."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import grpc
from opentelemetry import trace

from gen.edgebot.v1 import (
    encoded_pb2,
    event_pb2,
    ingest_pb2,
)
from ingest_svc import metrics
from ingest_svc.config import IngestSection, IngestServiceConfig
from ingest_svc.decoding import Incoming, Problem, decode_push_request, decode_stream_request
from ingest_svc.forwarder import (
    PIPELINE,
    STORAGE,
    Delivery,
    DownstreamStreams,
    Forwarder,
    ForwardLimits,
    PipelineCalls,
    StorageCalls,
)
from ingest_svc.nats_input import NatsInput
from ingest_svc.validation import CheckedBatch, batch_problem, check_events, hello_problem
from mesh import AccessPolicy, Kind, Principal, ServiceRuntime, current_principal, kinds, tracing
from mesh.channel import open_channel
from mesh.config import ClientConfig
from mesh.errors import abort_denied, abort_invalid, abort_with_retry
from mesh.health import DependencyMonitor
from mesh.lockstep import StreamPool, StreamPoolLimits
from mesh.types import Context

log = logging.getLogger(__name__)
tracer = trace.get_tracer("edgebot.ingest")
SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
PIPELINE_SERVICE = PIPELINE.full_name
STORAGE_SERVICE = STORAGE.full_name
NATS_HEALTH = "edgebot.ingest.nats"
"""Health entry of the NATS input: SERVING while it is connected and its consumer bound."""
VERSION = "0.1.0"
POLICY = AccessPolicy(
    methods={
        "Stream": kinds(Kind.AGENT, Kind.OPERATOR),
        "Push": kinds(Kind.AGENT, Kind.OPERATOR),
    }
)
_STATUS_NAMES = {
    value: name.removeprefix("ACK_STATUS_").lower() for name, value in ingest_pb2.AckStatus.items()
}
StreamRequests = AsyncIterator[Incoming[ingest_pb2.StreamRequest]]


def may_send_as(principal: Principal, agent_id: str) -> bool:
    """Agents send only under their own id; operators (tools) and plaintext dev mode may not
    be verified against one."""
    if principal.kind is Kind.AGENT:
        return principal.name == agent_id
    return principal.kind in (Kind.OPERATOR, Kind.INSECURE)


class IngestServicer:
    """The servicer; ``add_to_server`` registers it with ingest's own request decoding."""

    def __init__(self, limits: IngestSection, forwarder: Forwarder | None) -> None:
        self.limits = limits
        self.forwarder = forwarder
        self.capacity = asyncio.Semaphore(limits.max_inflight_batches)
        self.streams = 0
        self.streams_by_caller: collections.Counter[str] = collections.Counter()
        self.sessions: set[_StreamSession] = set()

    async def drain(self) -> None:
        """End every open stream once its in-flight batches are acked (on shutdown)."""
        await asyncio.gather(*(session.drain() for session in list(self.sessions)))

    def _saturated(self) -> bool:
        return self.capacity.locked()

    async def Stream(
        self, request_iterator: StreamRequests, context: Context
    ) -> AsyncIterator[ingest_pb2.StreamResponse]:
        caller = str(current_principal())
        await self._admit_stream(context, caller)
        self.streams += 1
        self.streams_by_caller[caller] += 1
        metrics.ACTIVE_CONNECTIONS.inc()
        try:
            hello = await self._read_hello_in_time(request_iterator, context)
            log.info(
                "stream opened",
                extra={"agent_id": hello.agent_id, "agent_version": hello.agent_version},
            )
            yield ingest_pb2.StreamResponse(limits=self._advertised())
            session = _StreamSession(self, hello.agent_id, context)
            async for response in session.run(request_iterator):
                yield response
        finally:
            self.streams -= 1
            self.streams_by_caller[caller] -= 1
            if not self.streams_by_caller[caller]:
                del self.streams_by_caller[caller]
            metrics.ACTIVE_CONNECTIONS.dec()

    async def _admit_stream(self, context: Context, caller: str) -> None:
        if self.streams >= self.limits.max_streams:
            metrics.REFUSED.labels("max_streams").inc()
            await abort_with_retry(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"ingest has {self.streams} open streams (limit {self.limits.max_streams})",
                self.limits.retry_delay_s,
                "MAX_STREAMS",
            )
        limit = self.limits.max_streams_per_caller
        if self.streams_by_caller[caller] >= limit:
            metrics.REFUSED.labels("max_streams_per_caller").inc()
            log.warning("refused a stream: %s already has %d open streams", caller, limit)
            await abort_with_retry(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{caller} has {limit} open streams (limit {limit} per caller)",
                self.limits.retry_delay_s,
                "MAX_STREAMS_PER_CALLER",
            )
        await self._refuse_if_saturated(context)

    async def _refuse_if_saturated(self, context: Context) -> None:
        if self._saturated():
            metrics.REFUSED.labels("saturated").inc()
            await abort_with_retry(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "ingest is saturated; retry later",
                self.limits.retry_delay_s,
                "SATURATED",
            )

    async def _read_hello_in_time(
        self, request_iterator: StreamRequests, context: Context
    ) -> ingest_pb2.Hello:
        timeout = self.limits.hello_timeout_s
        try:
            async with asyncio.timeout(timeout):
                first = await anext(request_iterator, None)
        except TimeoutError:
            metrics.REFUSED.labels("hello_timeout").inc()
            await abort_with_retry(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no hello within {timeout:g} s of opening the stream",
                self.limits.retry_delay_s,
                "HELLO_TIMEOUT",
            )
        return await self._check_hello(first, context)

    async def _check_hello(
        self, first: Incoming[ingest_pb2.StreamRequest] | None, context: Context
    ) -> ingest_pb2.Hello:
        if first is not None and first.problem is not None:
            await abort_invalid(context, *first.problem)
        if first is None or first.request.WhichOneof("kind") != "hello":
            await abort_invalid(context, "hello", "the first message of a stream must be a hello")
        hello = first.request.hello
        problem = hello_problem(hello, self.limits)
        if problem is not None:
            await abort_invalid(context, *problem)
        principal = current_principal()
        if not may_send_as(principal, hello.agent_id):
            await abort_denied(
                context,
                f"{principal} may not send as agent {hello.agent_id!r}",
                "AGENT_ID_MISMATCH",
            )
        return hello

    def _advertised(self) -> ingest_pb2.Limits:
        return ingest_pb2.Limits(
            max_unacked_batches=self.limits.max_unacked_batches,
            max_events_per_batch=self.limits.max_events_per_batch,
            max_batch_bytes=self.limits.max_batch_bytes,
            server_version=VERSION,
        )

    async def handle_batch(
        self,
        batch: event_pb2.EventBatch,
        undecodable: Mapping[int, Problem] | None = None,
        transport: str = "grpc",
        encoded: encoded_pb2.EncodedEventBatch | None = None,
    ) -> Delivery:
        """Validate, forward and account one batch; never raises for downstream trouble.

        ``undecodable`` names the events (by index) that could not be parsed at all;
        ``transport`` (grpc, nats) labels the ingestion metrics; ``encoded`` is the batch
        as received, its events encoded (Incoming.encoded)."""
        started = time.perf_counter()
        metrics.EVENTS.labels(transport).inc(len(batch.events))
        with batch_span(batch) as span:
            size = batch.ByteSize() if encoded is None else encoded.ByteSize()
            problem = batch_problem(batch, size, self.limits)
            if problem is not None:
                delivery = Delivery(
                    status=ingest_pb2.ACK_STATUS_REJECTED,
                    received=len(batch.events),
                    message=problem,
                )
            else:
                async with self.capacity:
                    metrics.INFLIGHT_BATCHES.inc()
                    try:
                        checked = check_events(
                            batch,
                            self.limits,
                            undecodable,
                            None if encoded is None else encoded.events,
                        )
                        delivery = await self._deliver(batch, checked)
                    finally:
                        metrics.INFLIGHT_BATCHES.dec()
            record_delivery(span, delivery)
        metrics.REQUESTS.labels(_STATUS_NAMES[delivery.status], transport).inc()
        metrics.ACK_SECONDS.observe(time.perf_counter() - started)
        return delivery

    async def _deliver(self, batch: event_pb2.EventBatch, checked: CheckedBatch) -> Delivery:
        if self.forwarder is None:
            return Delivery(
                status=ingest_pb2.ACK_STATUS_RETRY,
                received=len(batch.events),
                retry_delay_s=self.limits.retry_delay_s,
                message="ingest is starting; retry",
            )
        try:
            return await self.forwarder.deliver(batch, checked)
        except Exception:
            log.exception("batch %s: unexpected error, agent will retry", batch.batch_id)
            return Delivery(
                status=ingest_pb2.ACK_STATUS_RETRY,
                received=len(batch.events),
                retry_delay_s=self.limits.retry_delay_s,
                message="internal error in ingest; retry",
            )

    async def Push(
        self, incoming: Incoming[ingest_pb2.PushRequest], context: Context
    ) -> ingest_pb2.PushResponse:
        if incoming.problem is not None:
            await abort_invalid(context, *incoming.problem)
        batch = incoming.request.batch
        principal = current_principal()
        if not may_send_as(principal, batch.agent_id):
            await abort_denied(
                context,
                f"{principal} may not send as agent {batch.agent_id!r}",
                "AGENT_ID_MISMATCH",
            )
        await self._refuse_if_saturated(context)
        delivery = await self.handle_batch(batch, incoming.undecodable, encoded=incoming.encoded)
        if delivery.status == ingest_pb2.ACK_STATUS_REJECTED:
            field_name, _, reason = delivery.message.partition(": ")
            await abort_invalid(context, field_name or "batch", reason or delivery.message)
        return _push_response(batch.batch_id, delivery)


def add_to_server(servicer: IngestServicer, server: grpc.aio.Server) -> None:
    """Register IngestService with decoders that keep the readable part of a bad request."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Stream": grpc.stream_stream_rpc_method_handler(
            servicer.Stream,
            request_deserializer=decode_stream_request,
            response_serializer=ingest_pb2.StreamResponse.SerializeToString,
        ),
        "Push": grpc.unary_unary_rpc_method_handler(
            servicer.Push,
            request_deserializer=decode_push_request,
            response_serializer=ingest_pb2.PushResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def batch_span(batch: event_pb2.EventBatch) -> AbstractContextManager[trace.Span]:
    """A span per batch, continuing the trace the agent put in the batch (if any), so one
    trace follows a batch even though many batches share one stream."""
    parent = tracing.extract_context(batch.trace_context.items()) if batch.trace_context else None
    return tracer.start_as_current_span(
        "ingest.batch",
        context=parent,
        attributes={
            "edgebot.batch_id": batch.batch_id,
            "edgebot.agent_id": batch.agent_id,
            "edgebot.events": len(batch.events),
            "edgebot.is_retry": batch.is_retry,
        },
    )


def record_delivery(span: trace.Span, delivery: Delivery) -> None:
    span.set_attribute("edgebot.ack_status", _STATUS_NAMES[delivery.status])
    span.set_attribute("edgebot.accepted", delivery.accepted)
    span.set_attribute("edgebot.duplicates", delivery.duplicates)
    for result in delivery.sink_results:
        span.set_attribute(f"edgebot.sink.{result.sink}", event_pb2.SinkStatus.Name(result.status))


class _Draining(Exception):
    """Queued after the last ack when the server drains: the stream ends with UNAVAILABLE."""


class _Idle(Exception):
    """Queued when the stream sent nothing for the idle timeout with nothing in flight."""


class _StreamSession:
    """One agent stream: reads batches while the window allows, acks as each completes."""

    def __init__(self, servicer: IngestServicer, agent_id: str, context: Context) -> None:
        self.servicer = servicer
        self.agent_id = agent_id
        self.context = context
        self.window = asyncio.Semaphore(servicer.limits.max_unacked_batches)
        self.acks: asyncio.Queue[ingest_pb2.StreamResponse | BaseException | None] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.reader: asyncio.Task[None] | None = None

    async def run(self, requests: StreamRequests) -> AsyncIterator[ingest_pb2.StreamResponse]:
        reader = asyncio.create_task(self._read(requests), name=f"ingest-read-{self.agent_id}")
        self.reader = reader
        self.servicer.sessions.add(self)
        try:
            while True:
                item = await self.acks.get()
                if item is None:
                    return
                if isinstance(item, _Draining):
                    await abort_with_retry(
                        self.context,
                        grpc.StatusCode.UNAVAILABLE,
                        "ingest is shutting down; reconnect and re-send un-acked batches",
                        self.servicer.limits.retry_delay_s,
                        "DRAINING",
                    )
                if isinstance(item, _Idle):
                    await self._end_idle()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.servicer.sessions.discard(self)
            reader.cancel()
            for task in list(self.tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def drain(self) -> None:
        """Stop reading, let the batches already read finish and be acked, then end."""
        if self.reader is not None:
            self.reader.cancel()
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        await self.acks.put(_Draining())

    async def _end_idle(self) -> None:
        idle_s = self.servicer.limits.stream_idle_timeout_s
        metrics.REFUSED.labels("stream_idle").inc()
        log.info("ending the idle stream of agent %s", self.agent_id)
        await abort_with_retry(
            self.context,
            grpc.StatusCode.UNAVAILABLE,
            f"stream idle for {idle_s:g} s; reconnect when there are batches to send",
            self.servicer.limits.retry_delay_s,
            "STREAM_IDLE",
        )

    async def _next(self, requests: StreamRequests) -> Incoming[ingest_pb2.StreamRequest] | None:
        """The next request; raises _Idle after the idle timeout with nothing in flight."""
        idle_s = self.servicer.limits.stream_idle_timeout_s
        if idle_s is None:
            return await anext(requests, None)
        # One read survives the timeouts that pass while batches are in flight: cancelling
        # it would end the request iterator.
        reading = asyncio.ensure_future(anext(requests, None))
        try:
            while True:
                done, _ = await asyncio.wait({reading}, timeout=idle_s)
                if done:
                    return reading.result()
                if not self.tasks:
                    raise _Idle()
        finally:
            reading.cancel()

    async def _read(self, requests: StreamRequests) -> None:
        try:
            while (incoming := await self._next(requests)) is not None:
                # Not reading while the window is full is what pushes back on the agent.
                await self.window.acquire()
                problem = self._problem(incoming)
                if problem is not None:
                    self.window.release()
                    await problem
                    return
                task = asyncio.create_task(self._handle(incoming))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            while self.tasks:
                await asyncio.gather(*list(self.tasks), return_exceptions=True)
            await self.acks.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            await self.acks.put(error)

    def _problem(self, incoming: Incoming[ingest_pb2.StreamRequest]) -> asyncio.Future[None] | None:
        if incoming.problem is not None:
            return asyncio.ensure_future(abort_invalid(self.context, *incoming.problem))
        request = incoming.request
        if request.WhichOneof("kind") != "batch":
            return asyncio.ensure_future(
                abort_invalid(self.context, "batch", "expected a batch after the hello")
            )
        if request.batch.agent_id != self.agent_id:
            return asyncio.ensure_future(
                abort_denied(
                    self.context,
                    f"batch.agent_id {request.batch.agent_id!r} differs from the stream's "
                    f"agent {self.agent_id!r}",
                    "AGENT_ID_MISMATCH",
                )
            )
        return None

    async def _handle(self, incoming: Incoming[ingest_pb2.StreamRequest]) -> None:
        batch = incoming.request.batch
        try:
            delivery = await self.servicer.handle_batch(
                batch, incoming.undecodable, encoded=incoming.encoded
            )
            await self.acks.put(ingest_pb2.StreamResponse(ack=_ack(batch, delivery)))
        finally:
            self.window.release()


def _ack(batch: event_pb2.EventBatch, delivery: Delivery) -> ingest_pb2.BatchAck:
    return ingest_pb2.BatchAck(
        batch_id=batch.batch_id,
        seq=batch.seq,
        status=delivery.status,
        accepted=delivery.accepted,
        rejected=len(delivery.errors),
        duplicates=delivery.duplicates,
        errors=delivery.errors,
        retry_delay=delivery.retry_delay(),
        sink_results=delivery.sink_results,
        message=delivery.message,
    )


def _push_response(batch_id: str, delivery: Delivery) -> ingest_pb2.PushResponse:
    return ingest_pb2.PushResponse(
        batch_id=batch_id,
        status=delivery.status,
        received=delivery.received,
        sanitized=delivery.sanitized,
        written=max(0, delivery.accepted - delivery.duplicates),
        duplicates=delivery.duplicates,
        errors=delivery.errors,
        sink_results=delivery.sink_results,
        retry_delay=delivery.retry_delay(),
    )


class IngestApp:
    def __init__(self, config: IngestServiceConfig) -> None:
        self.config = config
        self.servicer = IngestServicer(config.ingest, forwarder=None)
        self.runtime = ServiceRuntime(
            name="ingest",
            config=config,
            policy=POLICY,
            service_names=[SERVICE_NAME],
            register=lambda server: add_to_server(self.servicer, server),
        )
        self.channels: list[grpc.aio.Channel] = []
        self.monitor: DependencyMonitor | None = None
        self.nats: NatsInput | None = None
        self._dependencies_ready = False
        self.runtime.before_drain.append(self._drain)

    def _channel(self, client: ClientConfig, service: str, traced: bool = True) -> grpc.aio.Channel:
        channel = open_channel(
            client.addresses,
            self.config.tls,
            retry_services=[service],
            server_name=client.tls_server_name,
            traced=traced,
        )
        self.channels.append(channel)
        return channel

    def _downstream_streams(self) -> DownstreamStreams | None:
        """Streams on channels of their own: their requests carry their trace themselves."""
        config = self.config
        if not config.ingest.downstream_streams:
            return None
        max_age_s = config.ingest.downstream_stream_max_age_s
        pipeline = PipelineCalls(self._channel(config.pipeline, PIPELINE_SERVICE, traced=False))
        storage = StorageCalls(self._channel(config.storage, STORAGE_SERVICE, traced=False))
        return DownstreamStreams(
            process=StreamPool(
                pipeline.ProcessStream, StreamPoolLimits(config.pipeline.timeout_s, max_age_s)
            ),
            write=StreamPool(
                storage.WriteStream, StreamPoolLimits(config.storage.timeout_s, max_age_s)
            ),
        )

    async def open(self) -> None:
        # Channels belong to the running event loop, so they are made here, not in build().
        config = self.config
        pipeline = self._channel(config.pipeline, PIPELINE_SERVICE)
        storage = self._channel(config.storage, STORAGE_SERVICE)
        forwarder = Forwarder(
            PipelineCalls(pipeline),
            StorageCalls(storage),
            ForwardLimits(
                pipeline_timeout_s=config.pipeline.timeout_s,
                storage_timeout_s=config.storage.timeout_s,
                default_retry_s=config.ingest.retry_delay_s,
                max_pipeline_calls=config.ingest.max_pipeline_calls,
                max_pipeline_call_events=config.ingest.max_pipeline_call_events,
                max_storage_calls=config.ingest.max_storage_calls,
                max_storage_call_events=config.ingest.max_storage_call_events,
            ),
            self._downstream_streams(),
        )
        self.servicer.forwarder = forwarder
        if config.nats.enabled:
            await self.runtime.set_serving(False, NATS_HEALTH)
            self.nats = NatsInput(
                config.nats,
                config.ingest,
                lambda batch: self.servicer.handle_batch(batch, transport="nats"),
                forwarder.keep_dead_letters,
                self._nats_changed,
            )
            self.nats.start()
        self.monitor = DependencyMonitor(
            {"pipeline": (pipeline, PIPELINE_SERVICE), "storage": (storage, STORAGE_SERVICE)},
            self._dependencies_changed,
        )
        await self.monitor.check_once()
        self.monitor.start()

    async def _dependencies_changed(self, ready: bool, state: dict[str, bool]) -> None:
        self._dependencies_ready = ready
        await self._report_health()

    async def _nats_changed(self, connected: bool) -> None:
        await self.runtime.set_serving(connected, NATS_HEALTH)
        await self._report_health()

    async def _report_health(self) -> None:
        """Serving when pipeline and storage are, and the NATS input too if it is required."""
        if self.nats is not None:
            self.nats.set_downstream_ready(self._dependencies_ready)
        nats_ok = self.nats is None or not self.config.nats.required or self.nats.connected
        await self.runtime.set_serving(self._dependencies_ready and nats_ok)

    async def _drain(self) -> None:
        if self.nats is not None:
            await self.nats.drain(self.config.server.grace_period_s)
            await self.runtime.set_serving(False, NATS_HEALTH)
        await self.servicer.drain()

    async def close(self) -> None:
        if self.nats is not None:
            await self.nats.close()
        if self.monitor is not None:
            await self.monitor.stop()
        forwarder = self.servicer.forwarder
        if forwarder is not None and forwarder.streams is not None:
            forwarder.streams.close()
        for channel in self.channels:
            await channel.close()
        self.channels.clear()


def build(config: IngestServiceConfig) -> IngestApp:
    return IngestApp(config)
