"""Unary calls over long-lived streams (mesh.lockstep) against a real gRPC server: one
stream serves call after call; a timeout, a failure or a stream the server ended costs that
call only; a server without the method is reported; a draining server ends idle streams at
once and lets a busy one answer first."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from mesh.lockstep import (
    RequestNotSent,
    StreamDrain,
    StreamPool,
    StreamPoolLimits,
    StreamUnsupported,
    write_message,
)

METHOD = "/test.Lockstep/Echo"


def same(data: bytes) -> bytes:
    return data


class EchoServer:
    """Answers each request with its bytes upper-cased; a few requests misbehave."""

    def __init__(self) -> None:
        self.drain = StreamDrain()
        self.streams_opened = 0
        self.received: list[bytes] = []

    async def echo(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        self.streams_opened += 1
        async for request in self.drain.requests(requests):
            self.received.append(request)
            if request.startswith(b"sleep "):
                await asyncio.sleep(float(request.split()[1]))
            elif request == b"end":
                return
            elif request == b"refuse":
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too much")
            yield request.upper()


@pytest.fixture
async def server() -> AsyncIterator[tuple[EchoServer, grpc.aio.Server, int]]:
    echo = EchoServer()
    handler = grpc.method_handlers_generic_handler(
        "test.Lockstep",
        {
            "Echo": grpc.stream_stream_rpc_method_handler(
                echo.echo, request_deserializer=same, response_serializer=same
            )
        },
    )
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers((handler,))
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    yield echo, grpc_server, port
    await grpc_server.stop(0)


@pytest.fixture
async def channel(server: tuple[EchoServer, grpc.aio.Server, int]) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server[2]}") as opened:
        yield opened


def pool(
    channel: grpc.aio.Channel,
    method: str = METHOD,
    timeout_s: float = 5.0,
    max_age_s: float = 300.0,
) -> StreamPool[bytes, bytes]:
    open_stream = channel.stream_stream(method, request_serializer=same, response_deserializer=same)
    return StreamPool(open_stream, StreamPoolLimits(timeout_s, max_age_s))


async def test_one_stream_carries_call_after_call(
    server: tuple[EchoServer, grpc.aio.Server, int], channel: grpc.aio.Channel
) -> None:
    streams = pool(channel)
    answers = [await streams.call(f"call {n}".encode()) for n in range(5)]
    assert answers == [f"CALL {n}".encode() for n in range(5)]
    assert streams.opened == 1
    assert server[0].streams_opened == 1


async def test_concurrent_calls_each_get_their_own_answer_on_their_own_stream(
    channel: grpc.aio.Channel,
) -> None:
    streams = pool(channel)
    answers = await asyncio.gather(*(streams.call(f"sleep 0.{n}".encode()) for n in range(3)))
    assert answers == [f"SLEEP 0.{n}".encode() for n in range(3)]
    assert streams.opened == 3
    assert [await streams.call(b"again") for _ in range(3)] == [b"AGAIN"] * 3
    assert streams.opened == 3


async def test_a_request_past_its_timeout_fails_alone(channel: grpc.aio.Channel) -> None:
    streams = pool(channel, timeout_s=0.2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await streams.call(b"sleep 2")
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert await streams.call(b"next") == b"NEXT"
    assert streams.opened == 2


async def test_a_refused_request_fails_with_its_status_and_the_next_call_goes_through(
    channel: grpc.aio.Channel,
) -> None:
    streams = pool(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await streams.call(b"refuse")
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == "too much"
    assert await streams.call(b"after") == b"AFTER"


async def test_a_stream_ended_before_answering_is_unavailable(channel: grpc.aio.Channel) -> None:
    streams = pool(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await streams.call(b"end")
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert await streams.call(b"after") == b"AFTER"


async def test_a_server_without_the_method_is_reported_and_the_pool_rests(
    channel: grpc.aio.Channel,
) -> None:
    streams = pool(channel, method="/test.Lockstep/Missing")
    assert streams.usable
    with pytest.raises(StreamUnsupported):
        await streams.call(b"anyone?")
    assert not streams.usable


async def test_streams_older_than_their_age_are_replaced(channel: grpc.aio.Channel) -> None:
    streams = pool(channel, max_age_s=0.0)
    for _ in range(3):
        assert await streams.call(b"x") == b"X"
    assert streams.opened == 3


async def test_draining_ends_idle_streams_at_once_and_busy_ones_after_their_answer(
    server: tuple[EchoServer, grpc.aio.Server, int], channel: grpc.aio.Channel
) -> None:
    echo, grpc_server, _ = server
    streams = pool(channel)
    await asyncio.gather(streams.call(b"warm"), streams.call(b"up"))  # two idle streams
    busy = asyncio.create_task(streams.call(b"sleep 0.5"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    echo.drain.drain()
    await grpc_server.stop(30)
    assert time.monotonic() - started < 5
    assert await busy == b"SLEEP 0.5"
    assert echo.received.count(b"sleep 0.5") == 1


async def test_writing_on_a_stream_that_already_ended_raises_its_status(
    channel: grpc.aio.Channel,
) -> None:
    ended = channel.stream_stream(METHOD, request_serializer=same, response_deserializer=same)()
    await ended.write(b"end")
    assert await ended.read() is grpc.aio.EOF
    assert await ended.code() is grpc.StatusCode.OK
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await write_message(ended, b"more")
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_writing_to_a_server_that_is_not_there_raises_unavailable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as nowhere:
        call = nowhere.stream_stream(METHOD, request_serializer=same, response_deserializer=same)()
        assert await call.code() is grpc.StatusCode.UNAVAILABLE  # ended before any write
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await write_message(call, b"hello")
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


class _FailingSend:
    """A stream whose send operation gRPC failed: the write raises INTERNAL."""

    def __init__(self) -> None:
        self.cancelled = False

    async def write(self, message: bytes) -> None:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INTERNAL,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="Internal error from Core",
        )

    def cancel(self) -> None:
        self.cancelled = True


async def test_a_request_gRPC_failed_to_write_is_reported_as_not_sent() -> None:
    failing = _FailingSend()
    streams: StreamPool[bytes, bytes] = StreamPool(lambda: failing, StreamPoolLimits(5, 300))
    with pytest.raises(RequestNotSent):
        await streams.call(b"hello")
    assert failing.cancelled
    assert streams.usable  # not taken for a missing method: the next call tries a stream
