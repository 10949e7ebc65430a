"""Calls and handlers that send either a message or its Encoded view (gen encoded.proto).

The generated stubs and handlers bind each method to one message class. A hop that
forwards events as encoded bytes sends the Encoded view on the same method instead: the
bytes are the same, so the peer cannot tell. These helpers make that explicit instead of
relying on one class's ``SerializeToString`` happening to accept another's instance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

AnswerT = TypeVar("AnswerT", bound=Message)


def method_path(service: ServiceDescriptor, method: str) -> str:
    """The path gRPC calls ``method`` of ``service`` by: ``/package.Service/Method``."""
    return f"/{service.full_name}/{service.methods_by_name[method].name}"


def serialize(message: Message) -> bytes:
    """The wire bytes of any message: a plain one or its Encoded view."""
    return message.SerializeToString()


def unary_call(
    channel: grpc.aio.Channel, method: str, response: Callable[[bytes], AnswerT]
) -> grpc.aio.UnaryUnaryMultiCallable[Message, AnswerT]:
    """``/package.Service/Method`` taking any message, answering what ``response`` parses."""
    return channel.unary_unary(method, request_serializer=serialize, response_deserializer=response)


def stream_call(
    channel: grpc.aio.Channel, method: str, response: Callable[[bytes], AnswerT]
) -> grpc.aio.StreamStreamMultiCallable[Message, AnswerT]:
    """A bidirectional stream writing any message, reading what ``response`` parses."""
    return channel.stream_stream(
        method, request_serializer=serialize, response_deserializer=response
    )


class _Server(Protocol):
    def add_generic_rpc_handlers(self, handlers: Any) -> None: ...

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None: ...


class _Capture:
    """Stands in for a server to take what a generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The generic handler is built again from the method handlers below."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.services[service] = dict(handlers)


def add_answering_any_message(
    add_to_server: Callable[[Any, Any], None], servicer: object, server: _Server
) -> None:
    """Register ``servicer`` as the generated ``add_to_server`` would, except that each
    method's answers may be its plain response or that response's Encoded view."""
    capture = _Capture()
    add_to_server(servicer, capture)
    for service, handlers in capture.services.items():
        flexible = {
            name: handler._replace(response_serializer=serialize)  # type: ignore[attr-defined]
            for name, handler in handlers.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, flexible),))
        server.add_registered_method_handlers(service, flexible)
