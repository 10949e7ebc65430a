"""Unary calls carried by long-lived bidirectional streams, one request at a time per stream.

A unary call in gRPC's asyncio API costs a call object, a task, metadata, the interceptor
chain and a server-side handler each time; a message on an open stream costs a write and a
read. For the internal hops that carry many small batches a second (ingest to pipeline and
storage) that difference is a large part of each batch's fixed cost.

Client: ``StreamPool.call`` writes a request on an idle stream and reads its response.
A stream that fails, times out or was ended by the server is dropped, and the next call
opens a fresh one, so the semantics are those of a unary call: one answer, or one
``grpc.aio.AioRpcError`` (DEADLINE_EXCEEDED for a per-request timeout). A server that lacks
the method (UNIMPLEMENTED: an older release) makes ``call`` raise ``StreamUnsupported``; the
pool then stays unused for ``recheck_s`` and the caller uses the unary method meanwhile.

Server: ``StreamDrain.requests`` yields a stream's requests until the client ends it or the
service drains; draining ends idle streams at once, and busy ones after their current
response, so a stopping server does not wait out its grace period for idle streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from opentelemetry import trace

from mesh import tracing
from mesh.errors import local_rpc_error

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
StreamCall = Any  # grpc.aio.StreamStreamCall; its stubs are not generic over our messages
tracer = trace.get_tracer("edgebot.mesh")


class StreamUnsupported(Exception):
    """The server does not have the stream method; use the unary method instead."""


class RequestNotSent(Exception):
    """gRPC failed to write the request (INTERNAL from the send itself): the server ended
    the stream first, for example refusing the method, and its status is lost. The request
    never left, so the caller may send it another way."""


@dataclass(frozen=True)
class StreamPoolLimits:
    timeout_s: float
    """Longest wait for one request's response."""
    max_age_s: float
    """A stream older than this is closed when it comes back idle and a fresh one opened,
    so connections the server recycles (max_connection_age) are left without a request
    in flight."""
    recheck_s: float = 60.0
    """How long after UNIMPLEMENTED the pool is left unused before it tries again."""


@dataclass
class _Stream:
    call: StreamCall
    opened: float


class StreamPool(Generic[RequestT, ResponseT]):
    def __init__(self, open_stream: Callable[[], StreamCall], limits: StreamPoolLimits) -> None:
        self._open_stream = open_stream
        self.limits = limits
        self._idle: list[_Stream] = []
        self._unsupported_until = 0.0
        self.opened = 0

    @property
    def usable(self) -> bool:
        return time.monotonic() >= self._unsupported_until

    async def call(self, request: RequestT) -> ResponseT:
        stream = self._take()
        try:
            response = await self._exchange(stream, request)
        except BaseException:
            stream.call.cancel()
            raise
        self._give_back(stream)
        return response

    def close(self) -> None:
        """End the idle streams (the calls in flight end with their channel)."""
        for stream in self._idle:
            stream.call.cancel()
        self._idle.clear()

    def _take(self) -> _Stream:
        while self._idle:
            stream = self._idle.pop()
            if not stream.call.done():
                return stream
        self.opened += 1
        return _Stream(self._open_stream(), time.monotonic())

    def _give_back(self, stream: _Stream) -> None:
        if time.monotonic() - stream.opened >= self.limits.max_age_s:
            stream.call.cancel()
            return
        self._idle.append(stream)

    async def _exchange(self, stream: _Stream, request: RequestT) -> ResponseT:
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                await _write_request(stream.call, request)
                response = await stream.call.read()
        except TimeoutError:
            raise local_rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no response within {self.limits.timeout_s}s on the request stream",
            ) from None
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNIMPLEMENTED:
                self._unsupported_until = time.monotonic() + self.limits.recheck_s
                raise StreamUnsupported(error.details() or "UNIMPLEMENTED") from error
            raise
        if response is grpc.aio.EOF:
            raise await _ended_error(stream.call)
        return response  # type: ignore[no-any-return]


async def _write_request(call: StreamCall, request: Any) -> None:
    try:
        await write_message(call, request)
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.INTERNAL:
            raise RequestNotSent(error.details() or "INTERNAL") from error
        raise


async def write_message(call: StreamCall, message: Any) -> None:
    """Write on a stream; a stream that already ended raises its status as an
    ``AioRpcError`` (UNAVAILABLE if it ended OK), not ``asyncio.InvalidStateError``.

    The call can end at any moment before the write: a server that was never there, or
    one that just drained the stream."""
    try:
        await call.write(message)
    except asyncio.InvalidStateError:
        raise await _ended_error(call) from None


async def _ended_error(call: StreamCall) -> grpc.aio.AioRpcError:
    code = await call.code()
    details = await call.details()
    if code is grpc.StatusCode.OK:
        return local_rpc_error(grpc.StatusCode.UNAVAILABLE, "the server ended the stream")
    return local_rpc_error(code, details or "")


class StreamDrain:
    """Ends request streams between requests when the service drains."""

    def __init__(self) -> None:
        self.draining = False
        self._idle: set[asyncio.Task[Any]] = set()

    def drain(self) -> None:
        self.draining = True
        for task in self._idle:
            task.cancel()

    async def requests(self, requests: AsyncIterator[RequestT]) -> AsyncIterator[RequestT]:
        task = asyncio.current_task()
        assert task is not None
        while not self.draining:
            self._idle.add(task)
            try:
                request = await anext(requests)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not self.draining:
                    raise
                task.uncancel()
                return
            finally:
                self._idle.discard(task)
            yield request


@contextlib.contextmanager
def request_span(full_method: str, carrier: Mapping[str, str]) -> Iterator[trace.Span]:
    """A server span for one request of a stream, continuing the trace the request names."""
    service, _, method = full_method.rpartition("/")
    with tracer.start_as_current_span(
        full_method,
        context=tracing.extract_context(carrier.items()),
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
    ) as span:
        yield span
