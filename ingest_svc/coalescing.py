"""Batches waiting for the pipeline share one Process call, and batches waiting for storage
one WriteMany call (see mesh.coalescing). Either call goes as a request on a long-lived
stream (ProcessStream, WriteStream) when one is given and the service has it.

The pipeline answers in terms of the merged event list (passed events in input order,
refusals by index); ``split`` turns that back into one answer per batch. WriteMany answers
each write on its own.

Events travel here encoded (encoded.proto): ingest only forwards them, so it neither
copies them into requests nor parses the ones the pipeline answers with.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from opentelemetry import context as otel_context

from gen.edgebot.v1 import encoded_pb2, event_pb2, storage_pb2
from ingest_svc import metrics
from mesh.coalescing import Coalescer
from mesh.errors import local_rpc_error

ProcessCall = Callable[
    [encoded_pb2.EncodedProcessRequest], Awaitable[encoded_pb2.EncodedProcessResponse]
]
WriteCall = Callable[[encoded_pb2.EncodedWriteRequest], Awaitable[storage_pb2.WriteResponse]]
WriteManyCall = Callable[
    [encoded_pb2.EncodedWriteManyRequest], Awaitable[storage_pb2.WriteManyResponse]
]
# Streamed calls answer None when no stream can carry the request (the unary call then does).
ProcessStreamCall = Callable[
    [encoded_pb2.EncodedProcessStreamRequest],
    Awaitable[encoded_pb2.EncodedProcessResponse | None],
]
WriteStreamCall = Callable[
    [list[encoded_pb2.EncodedWriteRequest]], Awaitable[Sequence[storage_pb2.WriteResult] | None]
]


@dataclass
class Processed:
    """The pipeline's answer for one batch: indexes are positions in the events it sent."""

    events: Sequence[bytes]
    """The passed events, encoded."""
    rejected: Sequence[event_pb2.DeadLetter]
    quarantined: Sequence[event_pb2.QuarantinedEvent]

    @classmethod
    def of(cls, response: encoded_pb2.EncodedProcessResponse) -> Processed:
        return cls(response.events, response.rejected, response.quarantined)


@dataclass
class _Request:
    header: encoded_pb2.EncodedEventBatch
    events: list[bytes]
    trace: otel_context.Context


class ProcessCoalescer:
    def __init__(
        self,
        call: ProcessCall,
        max_events: int,
        max_calls: int,
        over_stream: ProcessStreamCall | None = None,
    ) -> None:
        self.call = call
        self.over_stream = over_stream
        self.coalescer: Coalescer[_Request, Processed] = Coalescer(
            self._send, lambda r: len(r.events), max_events, max_calls, _refused_as_a_whole
        )

    async def process(
        self, header: encoded_pb2.EncodedEventBatch, events: list[bytes]
    ) -> Processed:
        """The pipeline's answer for these encoded events alone (indexes relative to
        ``events``).

        Raises the call's ``grpc.aio.AioRpcError`` when the call carrying them failed."""
        return await self.coalescer.submit(_Request(header, events, otel_context.get_current()))

    async def _send(self, group: list[_Request]) -> list[Processed]:
        metrics.PIPELINE_CALL_BATCHES.observe(len(group))
        # Built inside the stream message, so the unary fallback sends it without a copy.
        message = encoded_pb2.EncodedProcessStreamRequest()
        request = message.request
        request.batch.CopyFrom(group[0].header)
        for item in group:
            request.batch.events.extend(item.events)
        # The call continues the trace of the first batch it carries.
        token = otel_context.attach(group[0].trace)
        try:
            response = None if self.over_stream is None else await self.over_stream(message)
            if response is None:
                response = await self.call(request)
        finally:
            otel_context.detach(token)
        if len(group) == 1:
            return [Processed.of(response)]
        return split(response, [len(item.events) for item in group])


@dataclass
class _Write:
    request: encoded_pb2.EncodedWriteRequest
    trace: otel_context.Context


class WriteCoalescer:
    """A write alone goes as Write; writes waiting together go as one WriteMany."""

    def __init__(
        self,
        write: WriteCall,
        write_many: WriteManyCall,
        max_events: int,
        max_calls: int,
        over_stream: WriteStreamCall | None = None,
    ) -> None:
        self.write_one = write
        self.write_many = write_many
        self.over_stream = over_stream
        self.coalescer: Coalescer[_Write, storage_pb2.WriteResult] = Coalescer(
            self._send,
            lambda w: len(w.request.batch.events),
            max_events,
            max_calls,
            _refused_as_a_whole,
        )

    async def write(self, request: encoded_pb2.EncodedWriteRequest) -> storage_pb2.WriteResult:
        """This write's own result. Raises the call's ``grpc.aio.AioRpcError`` when the
        call carrying it failed as a whole."""
        return await self.coalescer.submit(_Write(request, otel_context.get_current()))

    async def _send(self, group: list[_Write]) -> list[storage_pb2.WriteResult]:
        metrics.STORAGE_CALL_BATCHES.observe(len(group))
        # The call continues the trace of the first batch it carries.
        token = otel_context.attach(group[0].trace)
        try:
            requests = [w.request for w in group]
            results = None if self.over_stream is None else await self.over_stream(requests)
            if results is None:
                results = await self._unary(requests)
        finally:
            otel_context.detach(token)
        if len(results) != len(group):
            raise local_rpc_error(
                grpc.StatusCode.INTERNAL,
                f"storage answered {len(results)} results for {len(group)} writes",
            )
        return list(results)

    async def _unary(
        self, requests: list[encoded_pb2.EncodedWriteRequest]
    ) -> Sequence[storage_pb2.WriteResult]:
        if len(requests) == 1:
            return [storage_pb2.WriteResult(written=await self.write_one(requests[0]))]
        response = await self.write_many(encoded_pb2.EncodedWriteManyRequest(writes=requests))
        return response.results


def _refused_as_a_whole(error: BaseException) -> bool:
    """A merged call refused (or, for WriteMany, unknown to an older storage): each batch
    then goes alone and gets its own verdict."""
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    )


def split(response: encoded_pb2.EncodedProcessResponse, counts: list[int]) -> list[Processed]:
    """One answer per part of a merged request whose parts held ``counts`` events."""
    starts = list(itertools.accumulate(counts, initial=0))[:-1]
    rejected: list[list[event_pb2.DeadLetter]] = [[] for _ in counts]
    quarantined: list[list[event_pb2.QuarantinedEvent]] = [[] for _ in counts]
    for letter in response.rejected:
        part = bisect.bisect_right(starts, letter.error.index) - 1
        copied = event_pb2.DeadLetter()
        copied.CopyFrom(letter)
        copied.error.index -= starts[part]
        rejected[part].append(copied)
    for item in response.quarantined:
        part = bisect.bisect_right(starts, item.index) - 1
        copied_item = event_pb2.QuarantinedEvent()
        copied_item.CopyFrom(item)
        copied_item.index -= starts[part]
        quarantined[part].append(copied_item)
    # Passed events come in input order, so each part's are the next ones in the answer.
    passed = list(response.events)
    parts = []
    offset = 0
    for part, count in enumerate(counts):
        kept = count - len(rejected[part]) - len(quarantined[part])
        parts.append(Processed(passed[offset : offset + kept], rejected[part], quarantined[part]))
        offset += kept
    return parts
