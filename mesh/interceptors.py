"""One server interceptor: identity and access policy, access log, metrics, tracing."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from opentelemetry import trace

from mesh import metrics, tracing
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
            access_log.info(
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


def _wrap_handler(handler: Handler, call: _Call) -> Handler:
    common = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, call), **common)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_stream(handler.unary_stream, call), **common)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, call), **common)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(_stream(handler.stream_stream, call), **common)


def _span(call: _Call, context: Context) -> trace.Span:
    parent = tracing.extract_context(context.invocation_metadata())
    return tracer.start_span(
        call.full_method.lstrip("/"),
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": call.service, "rpc.method": call.method},
    )


def _unary(behavior: Behavior, call: _Call) -> Behavior:
    async def wrapped(request: Any, context: Context) -> Any:
        start = time.perf_counter()
        principal = await call.admit(context)
        token = set_current_principal(principal)
        span = _span(call, context)
        error: BaseException | None = None
        try:
            with trace.use_span(span, end_on_exit=True):
                return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _reset(token)
            call.finish(context, principal, start, error)

    return wrapped


def _stream(behavior: Behavior, call: _Call) -> Behavior:
    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        start = time.perf_counter()
        principal = await call.admit(context)
        token = set_current_principal(principal)
        span = _span(call, context)
        error: BaseException | None = None
        try:
            if inspect.isasyncgenfunction(behavior):
                async for response in _steps_in_span(behavior(request, context), span):
                    yield response
            else:
                with trace.use_span(span):
                    await behavior(request, context)
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
