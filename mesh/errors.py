"""gRPC errors with google.rpc.Status details (BadRequest, RetryInfo, ErrorInfo)."""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from mesh.identity import current_principal
from mesh.types import Context

access_log = logging.getLogger("edgebot.access")
DETAILS_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "edgebot.dev"


def _status(code: grpc.StatusCode, message: str, *details: Message) -> status_pb2.Status:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


def _trailer(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return ((DETAILS_KEY, status.SerializeToString()),)


async def abort_invalid(context: Context, field: str, reason: str) -> NoReturn:
    """INVALID_ARGUMENT naming the field, with a BadRequest detail."""
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=reason)
        ]
    )
    message = f"{field}: {reason}"
    status = _status(grpc.StatusCode.INVALID_ARGUMENT, message, bad)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message, _trailer(status))
    raise AssertionError("unreachable")


async def abort_with_retry(
    context: Context,
    code: grpc.StatusCode,
    message: str,
    retry_after_s: float,
    reason: str,
) -> NoReturn:
    """RESOURCE_EXHAUSTED or UNAVAILABLE with RetryInfo and ErrorInfo details."""
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration())
    retry.retry_delay.FromMilliseconds(int(retry_after_s * 1000))
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    status = _status(code, message, retry, info)
    await context.abort(code, message, _trailer(status))
    raise AssertionError("unreachable")


async def abort_denied(context: Context, message: str, reason: str) -> NoReturn:
    """PERMISSION_DENIED with an ErrorInfo detail, logged with the caller's identity."""
    access_log.warning(
        "denied: %s",
        message,
        extra={"principal": str(current_principal()), "peer": context.peer(), "reason": reason},
    )
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    status = _status(grpc.StatusCode.PERMISSION_DENIED, message, info)
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, message, _trailer(status))
    raise AssertionError("unreachable")


def local_rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error the client side raises itself (a timeout, a malformed answer), shaped like
    one a server sent, so callers handle both alike."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a server attached to an error, if any."""
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    status = status_details(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay_ms: int = info.retry_delay.ToMilliseconds()
            return delay_ms / 1000
    return None


__all__ = [
    "abort_denied",
    "abort_invalid",
    "abort_with_retry",
    "retry_delay_s",
    "status_details",
]
