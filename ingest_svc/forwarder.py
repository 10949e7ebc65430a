"""The ack path: pipeline, then the primary storage commit, then an answer for the agent.

An ack is OK or PARTIAL only after storage committed the batch. Anything else that goes
wrong downstream becomes RETRY with a delay: the agent keeps the batch and sends it again,
and storage's batch ledger makes the re-send harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf.duration_pb2 import Duration

from gen.edgebot.v1 import (
    encoded_pb2,
    event_pb2,
    ingest_pb2,
    pipeline_pb2,
    storage_pb2,
)
from ingest_svc import metrics
from ingest_svc.coalescing import ProcessCoalescer, Processed, WriteCoalescer
from ingest_svc.validation import CheckedBatch
from mesh.encoded import method_path, stream_call, unary_call
from mesh.errors import retry_delay_s
from mesh.lockstep import RequestNotSent, RequestT, ResponseT, StreamPool, StreamUnsupported
from mesh.tracing import current_carrier

log = logging.getLogger(__name__)
PERMANENT_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class Delivery:
    """What happened to one batch, in the terms of BatchAck and PushResponse."""

    status: ingest_pb2.AckStatus.ValueType
    received: int
    accepted: int = 0
    sanitized: int = 0
    duplicates: int = 0
    errors: list[event_pb2.EventError] = field(default_factory=list)
    sink_results: list[event_pb2.SinkResult] = field(default_factory=list)
    retry_delay_s: float = 0.0
    message: str = ""

    def retry_delay(self) -> Duration | None:
        if not self.retry_delay_s:
            return None
        delay = Duration()
        delay.FromMilliseconds(int(self.retry_delay_s * 1000))
        return delay


@dataclass(frozen=True)
class DownstreamError:
    """A failed call, or one failed write of a WriteMany."""

    code: grpc.StatusCode
    details: str
    retry_delay_s: float

    @classmethod
    def of_call(cls, error: grpc.aio.AioRpcError) -> DownstreamError:
        return cls(error.code(), error.details() or "", retry_delay_s(error) or 0.0)

    @classmethod
    def of_write(cls, failure: storage_pb2.WriteFailure) -> DownstreamError:
        code = STATUS_CODES.get(failure.code, grpc.StatusCode.UNKNOWN)
        return cls(code, failure.message, failure.retry_delay.ToMilliseconds() / 1000)


@dataclass(frozen=True)
class ForwardLimits:
    pipeline_timeout_s: float
    storage_timeout_s: float
    default_retry_s: float
    max_pipeline_calls: int = 4
    max_pipeline_call_events: int = 5_000
    max_storage_calls: int = 4
    max_storage_call_events: int = 5_000


ProcessStreams = StreamPool[
    encoded_pb2.EncodedProcessStreamRequest, encoded_pb2.EncodedProcessStreamResponse
]
WriteStreams = StreamPool[encoded_pb2.EncodedWriteStreamRequest, storage_pb2.WriteStreamResponse]
PIPELINE = pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"]
STORAGE = storage_pb2.DESCRIPTOR.services_by_name["StorageService"]


class PipelineCalls:
    """The PipelineService methods ingest calls: requests and answers as Encoded views."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        answer = encoded_pb2.EncodedProcessResponse.FromString
        streamed = encoded_pb2.EncodedProcessStreamResponse.FromString
        self.Process = unary_call(channel, method_path(PIPELINE, "Process"), answer)
        self.ProcessStream = stream_call(channel, method_path(PIPELINE, "ProcessStream"), streamed)


class StorageCalls:
    """The StorageService methods ingest calls; their requests may be Encoded views."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Write = unary_call(
            channel, method_path(STORAGE, "Write"), storage_pb2.WriteResponse.FromString
        )
        self.WriteMany = unary_call(
            channel, method_path(STORAGE, "WriteMany"), storage_pb2.WriteManyResponse.FromString
        )
        self.WriteStream = stream_call(
            channel, method_path(STORAGE, "WriteStream"), storage_pb2.WriteStreamResponse.FromString
        )


@dataclass
class DownstreamStreams:
    """Long-lived streams that carry the calls instead of unary calls (mesh.lockstep)."""

    process: ProcessStreams
    write: WriteStreams

    def close(self) -> None:
        self.process.close()
        self.write.close()


class Forwarder:
    def __init__(
        self,
        pipeline: PipelineCalls,
        storage: StorageCalls,
        limits: ForwardLimits,
        streams: DownstreamStreams | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.storage = storage
        self.streams = streams
        self.pipeline_timeout_s = limits.pipeline_timeout_s
        self.storage_timeout_s = limits.storage_timeout_s
        self.default_retry_s = limits.default_retry_s
        self.coalescer = ProcessCoalescer(
            self._call_pipeline,
            limits.max_pipeline_call_events,
            limits.max_pipeline_calls,
            None if streams is None else self._stream_pipeline,
        )
        self.writes = WriteCoalescer(
            self._call_write,
            self._call_write_many,
            limits.max_storage_call_events,
            limits.max_storage_calls,
            None if streams is None else self._stream_writes,
        )

    async def deliver(self, batch: event_pb2.EventBatch, checked: CheckedBatch) -> Delivery:
        received = len(batch.events)
        try:
            processed = await self._process(batch, checked)
            result = await self._write(batch, checked, processed)
        except grpc.aio.AioRpcError as error:
            return self._failed(batch, received, DownstreamError.of_call(error))
        if result.HasField("failure"):
            return self._failed(batch, received, DownstreamError.of_write(result.failure))
        return _delivered(received, checked, processed, result.written)

    async def _process(self, batch: event_pb2.EventBatch, checked: CheckedBatch) -> Processed:
        """The pipeline's answer, its indexes turned into positions in ``batch``."""
        if not checked.valid:
            return Processed([], [], [])
        processed = await self.coalescer.process(_copy_header(batch), checked.valid_encoded)
        if len(checked.valid_index) == len(batch.events):
            return processed
        position = checked.valid_index
        for letter in processed.rejected:
            letter.error.index = position[letter.error.index]
        for item in processed.quarantined:
            item.index = position[item.index]
        return processed

    async def _call_pipeline(
        self, request: encoded_pb2.EncodedProcessRequest
    ) -> encoded_pb2.EncodedProcessResponse:
        started = time.perf_counter()
        try:
            return await self.pipeline.Process(request, timeout=self.pipeline_timeout_s)
        finally:
            metrics.DOWNSTREAM_SECONDS.labels("pipeline").observe(time.perf_counter() - started)

    async def _stream_pipeline(
        self, message: encoded_pb2.EncodedProcessStreamRequest
    ) -> encoded_pb2.EncodedProcessResponse | None:
        assert self.streams is not None
        message.trace_context.update(current_carrier())
        answer = await _streamed(self.streams.process, message, "pipeline", "ProcessStream")
        return None if answer is None else answer.response

    async def _stream_writes(
        self, requests: list[encoded_pb2.EncodedWriteRequest]
    ) -> Sequence[storage_pb2.WriteResult] | None:
        assert self.streams is not None
        message = encoded_pb2.EncodedWriteStreamRequest(
            writes=requests, trace_context=current_carrier()
        )
        answer = await _streamed(self.streams.write, message, "storage", "WriteStream")
        return None if answer is None else answer.results

    async def _write(
        self,
        batch: event_pb2.EventBatch,
        checked: CheckedBatch,
        processed: Processed,
    ) -> storage_pb2.WriteResult:
        request = encoded_pb2.EncodedWriteRequest(batch=_copy_header(batch))
        request.batch.events.extend(processed.events)
        request.dead_letters.extend(checked.dead_letters)
        for rejected in processed.rejected:
            letter = request.dead_letters.add()
            letter.CopyFrom(rejected)
            letter.agent_id, letter.batch_id = batch.agent_id, batch.batch_id
        request.quarantined.extend(processed.quarantined)
        return await self.writes.write(request)

    async def _call_write(
        self, request: encoded_pb2.EncodedWriteRequest
    ) -> storage_pb2.WriteResponse:
        started = time.perf_counter()
        try:
            return await self.storage.Write(request, timeout=self.storage_timeout_s)
        finally:
            metrics.DOWNSTREAM_SECONDS.labels("storage").observe(time.perf_counter() - started)

    async def _call_write_many(
        self, request: encoded_pb2.EncodedWriteManyRequest
    ) -> storage_pb2.WriteManyResponse:
        started = time.perf_counter()
        try:
            return await self.storage.WriteMany(request, timeout=self.storage_timeout_s)
        finally:
            metrics.DOWNSTREAM_SECONDS.labels("storage").observe(time.perf_counter() - started)

    async def keep_dead_letters(
        self, batch: event_pb2.EventBatch, letters: list[event_pb2.DeadLetter]
    ) -> Delivery:
        """Store refused input in the dead-letter store under the batch's ledger id; OK only
        once the primary sink committed it."""
        request = encoded_pb2.EncodedWriteRequest(batch=_copy_header(batch), dead_letters=letters)
        started = time.perf_counter()
        try:
            written = await self.storage.Write(request, timeout=self.storage_timeout_s)
        except grpc.aio.AioRpcError as error:
            return self._failed(batch, len(letters), DownstreamError.of_call(error))
        finally:
            metrics.DOWNSTREAM_SECONDS.labels("storage").observe(time.perf_counter() - started)
        return Delivery(
            status=ingest_pb2.ACK_STATUS_OK,
            received=len(letters),
            sink_results=list(written.sink_results),
            message="batch already stored" if written.duplicate_batch else "",
        )

    def _failed(
        self, batch: event_pb2.EventBatch, received: int, error: DownstreamError
    ) -> Delivery:
        if error.code in PERMANENT_CODES:
            log.warning("batch %s refused downstream: %s", batch.batch_id, error.details)
            return Delivery(
                status=ingest_pb2.ACK_STATUS_REJECTED,
                received=received,
                message=f"refused downstream: {error.details}",
            )
        delay = error.retry_delay_s or self.default_retry_s
        log.warning(
            "batch %s not stored, agent will retry: %s %s",
            batch.batch_id,
            error.code.name,
            error.details,
        )
        return Delivery(
            status=ingest_pb2.ACK_STATUS_RETRY,
            received=received,
            retry_delay_s=delay,
            message=f"downstream {error.code.name}: {error.details}",
        )


async def _streamed(
    streams: StreamPool[RequestT, ResponseT], message: RequestT, service: str, method: str
) -> ResponseT | None:
    """The answer over a stream, or None when the service has no such stream (the caller
    then makes the unary call)."""
    if not streams.usable:
        return None
    started = time.perf_counter()
    try:
        return await streams.call(message)
    except StreamUnsupported:
        log.warning("%s has no %s (an older release): unary calls", service, method)
        return None
    except RequestNotSent as error:
        log.info(
            "%s: a request could not be written on %s (%s): sent unary", service, method, error
        )
        return None
    finally:
        metrics.DOWNSTREAM_SECONDS.labels(service).observe(time.perf_counter() - started)


def _copy_header(batch: event_pb2.EventBatch) -> encoded_pb2.EncodedEventBatch:
    return encoded_pb2.EncodedEventBatch(
        batch_id=batch.batch_id, agent_id=batch.agent_id, seq=batch.seq, is_retry=batch.is_retry
    )


def _delivered(
    received: int,
    checked: CheckedBatch,
    processed: Processed,
    written: storage_pb2.WriteResponse,
) -> Delivery:
    errors = list(checked.errors)
    errors.extend(letter.error for letter in processed.rejected)
    errors.extend(
        event_pb2.EventError(
            index=q.index, event_id=q.event.id, field="(redaction)", reason=q.reason
        )
        for q in processed.quarantined
    )
    errors.sort(key=lambda e: e.index)
    duplicates = written.duplicates
    return Delivery(
        status=ingest_pb2.ACK_STATUS_PARTIAL if errors else ingest_pb2.ACK_STATUS_OK,
        received=received,
        accepted=len(processed.events),
        sanitized=len(processed.events),
        duplicates=duplicates,
        errors=errors,
        sink_results=list(written.sink_results),
        message="batch already stored" if written.duplicate_batch else "",
    )
