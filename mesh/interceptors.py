"""One server interceptor: identity and access policy, access log, metrics, tracing, and
requests that are not the method's message type (INVALID_ARGUMENT, not UNKNOWN)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from opentelemetry import trace

from mesh import metrics, tracing
from mesh.errors import abort_invalid
from mesh.identity import (
    AccessPolicy,
    OperatorTokens,
    Principal,
    principal_for_call,
    reset_current_principal,
    set_current_principal,
)
from mesh.types import Context

access_log = logging.getLogger("edgebot.access")
tracer = trace.get_tracer("edgebot.mesh")

Behavior = Callable[..., Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, policy: AccessPolicy, tls_enabled: bool, tokens: OperatorTokens) -> None:
        self.policy = policy
        self.tls_enabled = tls_enabled
        self.tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        return _wrap_handler(handler, _Call(self, details.method))


class _Call:
    """Per-method wrapper state: what to check and record around the servicer."""

    def __init__(self, owner: ServerInterceptor, full_method: str) -> None:
        self.owner = owner
        self.full_method = full_method
        service, _, method = full_method.lstrip("/").rpartition("/")
        self.service, self.method = service, method

    async def admit(self, context: Context) -> Principal:
        principal = principal_for_call(context, self.owner.tls_enabled, self.owner.tokens)
        if not self.owner.policy.allows(self.full_method, principal):
            metrics.RPC_DENIED.labels(self.service, self.method).inc()
            access_log.warning(
                "denied %s for %s", self.full_method, principal, extra={"peer": context.peer()}
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal} may not call {self.full_method}",
            )
        return principal

    def finish(
        self,
        context: Context,
        principal: Principal,
        start: float,
        error: BaseException | None,
    ) -> None:
        code = _code_of(context, error)
        elapsed = time.perf_counter() - start
        metrics.RPC_HANDLED.labels(self.service, self.method, code.name).inc()
        metrics.RPC_SECONDS.labels(self.service, self.method).observe(elapsed)
        if not self.full_method.startswith("/grpc.health.v1."):
            # Successful calls at DEBUG: the internal hops make hundreds a second under load.
            access_log.log(
                logging.DEBUG if code is grpc.StatusCode.OK else logging.INFO,
                "%s %s",
                self.full_method,
                code.name,
                extra={"principal": str(principal), "ms": round(elapsed * 1000, 2)},
            )


def _code_of(context: Context, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.UNKNOWN if not isinstance(error, Exception) else grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class Undecodable:
    """Request bytes that the method's message type could not parse."""

    message_type: str
    reason: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that hands bad bytes on as ``Undecodable`` instead of raising.

    gRPC answers a deserializer's exception with UNKNOWN and a Python error text; the
    wrapped handler refuses the request as INVALID_ARGUMENT instead, after the caller was
    admitted, so nobody learns more than that their bytes were not the right message.
    """
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", "request message")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:
            return Undecodable(message_type, str(error) or type(error).__name__)

    return deserialize


async def _refuse_if_undecodable(request: Any, context: Context) -> None:
    if isinstance(request, Undecodable):
        await abort_invalid(
            context, "request", f"not a valid {request.message_type}: {request.reason}"
        )


async def _checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
    async for request in requests:
        await _refuse_if_undecodable(request, context)
        yield request


def _wrap_handler(handler: Handler, call: _Call) -> Handler:
    common = {
        "request_deserializer": _tolerant(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        wrapped = _unary(handler.unary_unary, call, streaming=False)
        return grpc.unary_unary_rpc_method_handler(wrapped, **common)
    if handler.unary_stream:
        wrapped = _stream(handler.unary_stream, call, streaming=False)
        return grpc.unary_stream_rpc_method_handler(wrapped, **common)
    if handler.stream_unary:
        wrapped = _unary(handler.stream_unary, call, streaming=True)
        return grpc.stream_unary_rpc_method_handler(wrapped, **common)
    assert handler.stream_stream is not None
    wrapped = _stream(handler.stream_stream, call, streaming=True)
    return grpc.stream_stream_rpc_method_handler(wrapped, **common)


async def _requests(request: Any, context: Context, streaming: bool) -> Any:
    """The request (refused if undecodable) or, for client streams, a checking iterator."""
    if streaming:
        return _checked(request, context)
    await _refuse_if_undecodable(request, context)
    return request


def _span(call: _Call, context: Context) -> trace.Span:
    parent = tracing.extract_context(context.invocation_metadata())
    return tracer.start_span(
        call.full_method.lstrip("/"),
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": call.service, "rpc.method": call.method},
    )


def _unary(behavior: Behavior, call: _Call, streaming: bool) -> Behavior:
    async def wrapped(request: Any, context: Context) -> Any:
        start = time.perf_counter()
        principal = await call.admit(context)
        token = set_current_principal(principal)
        span = _span(call, context)
        error: BaseException | None = None
        try:
            with trace.use_span(span, end_on_exit=True):
                return await behavior(await _requests(request, context, streaming), context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _reset(token)
            call.finish(context, principal, start, error)

    return wrapped


def _stream(behavior: Behavior, call: _Call, streaming: bool) -> Behavior:
    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        start = time.perf_counter()
        principal = await call.admit(context)
        token = set_current_principal(principal)
        span = _span(call, context)
        error: BaseException | None = None
        try:
            requests = await _requests(request, context, streaming)
            if inspect.isasyncgenfunction(behavior):
                async for response in _steps_in_span(behavior(requests, context), span):
                    yield response
            else:
                with trace.use_span(span):
                    await behavior(requests, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            span.end()
            _reset(token)
            call.finish(context, principal, start, error)

    return wrapped


async def _steps_in_span(responses: AsyncIterator[Any], span: trace.Span) -> AsyncIterator[Any]:
    """Make the span current during each step of the handler, never across a yield.

    A context attached before a yield may be detached in another context after it, which
    OpenTelemetry refuses; attaching per step keeps child spans and tasks linked.
    """
    while True:
        with trace.use_span(span, end_on_exit=False, record_exception=False):
            try:
                response = await anext(responses)
            except StopAsyncIteration:
                return
        yield response


def _reset(token: Any) -> None:
    # A streaming handler may finish in another context than it started in.
    with contextlib.suppress(ValueError):
        reset_current_principal(token)
