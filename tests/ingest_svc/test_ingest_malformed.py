"""Bad input to IngestService over real gRPC: bytes that are not protobuf, bad UTF-8 crafted
by hand, oversize messages, huge maps, too many events, fields over their limits.

Each case gets a clear status or a per-event error naming the field, nothing crashes, and
(wherever the protocol can go on) the next good batch on the same stream is acked and stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from inprocess_mesh import Mothership, make_batch, make_event, stored_ids
from inprocess_mesh import mothership as inprocess_mothership
from support import Pki, secure_channel

from gen.edgebot.v1 import event_pb2, ingest_pb2
from mesh.errors import status_details
from mesh.ids import uuid7

SERVER_MAX_MESSAGE = 256 * 1024
LIMITS = {
    "max_events_per_batch": 50,
    "max_batch_bytes": 128 * 1024,
    "max_message_bytes": 4096,
    "max_field_bytes": 256,
    "max_attributes": 32,
    "max_raw_bytes": 8192,
    "retry_delay_s": 0.25,
}
STREAM = "/edgebot.v1.IngestService/Stream"
PUSH = "/edgebot.v1.IngestService/Push"


@pytest.fixture
async def mothership(pki: Pki, tmp_path: Path) -> AsyncIterator[Mothership]:
    server = {"max_message_bytes": SERVER_MAX_MESSAGE}
    async with inprocess_mothership(pki, tmp_path, ingest=LIMITS, ingest_server=server) as mesh:
        yield mesh


class RawStream:
    """IngestService.Stream that writes bytes as given, so a test can send anything."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = channel.stream_stream(
            STREAM, response_deserializer=ingest_pb2.StreamResponse.FromString
        )()

    async def hello(self, agent_id: str = "site-a") -> None:
        hello = ingest_pb2.StreamRequest(hello=ingest_pb2.Hello(agent_id=agent_id))
        await self.call.write(hello.SerializeToString())
        assert (await self.call.read()).WhichOneof("kind") == "limits"

    async def send(self, data: bytes) -> ingest_pb2.BatchAck:
        await self.call.write(data)
        response = await self.call.read()
        assert isinstance(response, ingest_pb2.StreamResponse), response
        assert response.WhichOneof("kind") == "ack", response
        return response.ack

    async def send_batch(self, batch: event_pb2.EventBatch) -> ingest_pb2.BatchAck:
        return await self.send(stream_bytes(batch))

    async def refused(self, data: bytes) -> grpc.aio.AioRpcError:
        await self.call.write(data)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.call.read()
        return caught.value


def stream_bytes(batch: event_pb2.EventBatch) -> bytes:
    return ingest_pb2.StreamRequest(batch=batch).SerializeToString()


def corrupt(data: bytes, marker: str, replacement: bytes) -> bytes:
    """Swap a marker for bytes of the same length: the framing stays valid, the text not."""
    encoded = marker.encode()
    assert len(replacement) == len(encoded)
    assert data.count(encoded) == 1, f"{marker!r} must occur exactly once"
    return data.replace(encoded, replacement)


BAD_UTF8 = b"\xff\xfe\xc3\x28"  # not a start byte, not a start byte, a broken 2-byte sequence


def field_violation(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    status = status_details(error)
    assert status is not None, "no google.rpc.Status details"
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    violation = bad.field_violations[0]
    return violation.field, violation.description


async def assert_next_batch_is_stored(
    stream: RawStream, mothership: Mothership, pki: Pki, marker: str = "next good"
) -> None:
    good = make_batch("site-a", [make_event(f"{marker} {i}") for i in range(3)])
    ack = await stream.send_batch(good)
    assert ack.status == ingest_pb2.ACK_STATUS_OK
    assert ack.batch_id == good.batch_id
    assert set(await stored_ids(mothership.storage, pki)) >= {e.id for e in good.events}


def dead_letters(tmp_path: Path) -> list[tuple[str, str, str, bytes]]:
    with sqlite3.connect(tmp_path / "events.db") as db:
        rows = db.execute("SELECT event_id, field, reason, event FROM dead_letters ORDER BY id")
        return list(rows)


async def test_garbage_bytes_to_push_are_invalid_argument(mothership: Mothership, pki: Pki) -> None:
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        push = ch.unary_unary(PUSH, response_deserializer=ingest_pb2.PushResponse.FromString)
        for garbage in (b"\xff\xff\xff\xff not protobuf", b"\x0a\x7f\x01", b"\x08"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await push(garbage, timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, garbage
            assert field_violation(caught.value)[0] == "request"
            assert "not a PushRequest" in (caught.value.details() or "")
        batch = make_batch("site-a", [make_event("after the garbage")])
        reply = await push(ingest_pb2.PushRequest(batch=batch).SerializeToString(), timeout=5)
    assert reply.status == ingest_pb2.ACK_STATUS_OK


async def test_garbage_on_a_stream_ends_it_clearly_and_the_connection_goes_on(
    mothership: Mothership, pki: Pki
) -> None:
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = RawStream(ch)
        await stream.hello()
        error = await stream.refused(b"\x12\xff\xff\xff\xff\x0f garbage")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violation(error)[0] == "request"
        # Without a readable batch id there is nothing to ack: only this stream ends.
        again = RawStream(ch)
        await again.hello()
        await assert_next_batch_is_stored(again, mothership, pki)


async def test_garbage_instead_of_the_hello_is_invalid_argument(
    mothership: Mothership, pki: Pki
) -> None:
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        error = await RawStream(ch).refused(b"\x0a\x05\xff\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_bad_utf8_in_event_fields_is_a_per_event_error_naming_the_field(
    mothership: Mothership, pki: Pki, tmp_path: Path
) -> None:
    events = [
        make_event("fine before"),
        make_event("MSG!"),
        make_event("attr", attributes={"user": "VAL!"}),
        make_event("key", attributes={"KEY!": "v"}),
        make_event("tag", tags={"site": "TAG!"}),
        make_event("host"),
        make_event("fine after"),
    ]
    events[5].host = "HST!"
    batch = make_batch("site-a", events)
    data = stream_bytes(batch)
    for marker in ("MSG!", "VAL!", "KEY!", "TAG!", "HST!"):
        data = corrupt(data, marker, BAD_UTF8)
    with pytest.raises(Exception, match="UTF-8"):
        ingest_pb2.StreamRequest.FromString(data)  # what upb alone would do with the batch
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = RawStream(ch)
        await stream.hello()
        ack = await stream.send(data)
        await assert_next_batch_is_stored(stream, mothership, pki)
        await stream.call.done_writing()
    assert ack.status == ingest_pb2.ACK_STATUS_PARTIAL
    assert ack.batch_id == batch.batch_id
    assert ack.accepted == 2
    assert [(e.index, e.event_id, e.field, e.reason) for e in ack.errors] == [
        (1, events[1].id, "message", "not valid UTF-8"),
        (2, events[2].id, "attributes[user]", "value not valid UTF-8"),
        (3, events[3].id, "attributes", "a key is not valid UTF-8"),
        (4, events[4].id, "tags[site]", "value not valid UTF-8"),
        (5, events[5].id, "host", "not valid UTF-8"),
    ]
    stored = set(await stored_ids(mothership.storage, pki))
    assert {events[0].id, events[6].id} <= stored
    assert not stored & {e.id for e in events[1:6]}
    letters = dead_letters(tmp_path)
    assert [(row[0], row[1]) for row in letters] == [(e.event_id, e.field) for e in ack.errors]
    # The dead letter keeps the refused event's original bytes.
    kept = event_pb2.Event.FromString(letters[0][3])
    assert BAD_UTF8 in kept.raw
    assert kept.raw == corrupt(events[1].SerializeToString(), "MSG!", BAD_UTF8)


async def test_bad_utf8_in_push_is_a_per_event_error(mothership: Mothership, pki: Pki) -> None:
    events = [make_event("ok"), make_event("BAD!")]
    request = ingest_pb2.PushRequest(batch=make_batch("site-a", events)).SerializeToString()
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        push = ch.unary_unary(PUSH, response_deserializer=ingest_pb2.PushResponse.FromString)
        reply = await push(corrupt(request, "BAD!", BAD_UTF8), timeout=5)
    assert reply.status == ingest_pb2.ACK_STATUS_PARTIAL
    assert [(e.index, e.field) for e in reply.errors] == [(1, "message")]
    assert reply.written == 1


@pytest.mark.parametrize(
    ("header", "marker", "violation"),
    [
        ({"batch_id": "BID!"}, "BID!", ("batch.batch_id", "not valid UTF-8")),
        (
            {"trace_context": {"traceparent": "TRC!"}},
            "TRC!",
            ("batch.trace_context[traceparent]", "value not valid UTF-8"),
        ),
    ],
)
async def test_bad_utf8_in_the_batch_header_refuses_the_request_naming_the_field(
    mothership: Mothership,
    pki: Pki,
    header: dict[str, Any],
    marker: str,
    violation: tuple[str, str],
) -> None:
    batch = make_batch("site-a", [make_event("header")])
    batch.MergeFrom(event_pb2.EventBatch(**header))
    if "batch_id" in header:
        batch.batch_id = header["batch_id"]
    data = corrupt(stream_bytes(batch), marker, BAD_UTF8)
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = RawStream(ch)
        await stream.hello()
        error = await stream.refused(data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violation(error) == violation


async def test_bad_utf8_in_the_hello_names_the_field(mothership: Mothership, pki: Pki) -> None:
    hello = ingest_pb2.StreamRequest(hello=ingest_pb2.Hello(agent_id="site-a", hostname="HST!"))
    data = corrupt(hello.SerializeToString(), "HST!", BAD_UTF8)
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        error = await RawStream(ch).refused(data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violation(error) == ("hello.hostname", "not valid UTF-8")


async def test_message_over_the_server_maximum_is_resource_exhausted(
    mothership: Mothership, pki: Pki
) -> None:
    huge = make_batch("site-a", [make_event("x" * 4000) for _ in range(80)])
    assert huge.ByteSize() > SERVER_MAX_MESSAGE
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = RawStream(ch)
        await stream.hello()
        error = await stream.refused(stream_bytes(huge))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(SERVER_MAX_MESSAGE) in (error.details() or "")
        again = RawStream(ch)
        await again.hello()
        await assert_next_batch_is_stored(again, mothership, pki)


async def test_batch_over_the_advertised_byte_limit_is_rejected_and_the_stream_goes_on(
    mothership: Mothership, pki: Pki
) -> None:
    big = make_batch("site-a", [make_event("y" * 4000) for _ in range(40)])
    assert LIMITS["max_batch_bytes"] < big.ByteSize() < SERVER_MAX_MESSAGE
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = RawStream(ch)
        await stream.hello()
        ack = await stream.send_batch(big)
        await assert_next_batch_is_stored(stream, mothership, pki)
    assert ack.status == ingest_pb2.ACK_STATUS_REJECTED
    assert ack.message == (
        f"batch: {big.ByteSize()} bytes exceed the limit of {LIMITS['max_batch_bytes']}"
    )


async def test_too_many_events_are_rejected_and_the_stream_goes_on(
    mothership: Mothership, pki: Pki
) -> None:
    crowded = make_batch("site-a", [make_event(f"e{i}") for i in range(51)])
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = RawStream(ch)
        await stream.hello()
        ack = await stream.send_batch(crowded)
        await assert_next_batch_is_stored(stream, mothership, pki)
    assert ack.status == ingest_pb2.ACK_STATUS_REJECTED
    assert ack.message == "batch.events: 51 events exceed the limit of 50"
    assert not set(await stored_ids(mothership.storage, pki)) & {e.id for e in crowded.events}


def over_the_limits() -> list[tuple[str, event_pb2.Event]]:
    """One event per limit, each breaking only that one."""
    long = "z" * 257
    cases: list[tuple[str, dict[str, Any]]] = [
        ("id", {"id": "i" * 65}),
        ("message", {"message": "m" * 4097}),
        ("type", {"type": long}),
        ("source", {"source": long}),
        ("host", {"host": long}),
        ("service", {"service": long}),
        ("attributes", {"attributes": {f"k{i}": "v" for i in range(33)}}),
        (f"attributes[{long[:40]}]", {"attributes": {long: "v"}}),
        ("attributes[user]", {"attributes": {"user": long}}),
        ("tags", {"tags": {f"t{i}": "v" for i in range(33)}}),
        ("tags[site]", {"tags": {"site": long}}),
        ("raw", {"raw": b"r" * 8193}),
    ]
    made = []
    for field, overrides in cases:
        event = make_event("over a limit")
        for name, value in overrides.items():
            if isinstance(value, dict):
                getattr(event, name).update(value)
            else:
                setattr(event, name, value)
        made.append((field, event))
    return made


async def test_each_field_over_its_limit_is_named_and_the_rest_is_stored(
    mothership: Mothership, pki: Pki
) -> None:
    cases = over_the_limits()
    fine = make_event("within every limit")
    batch = make_batch("site-a", [event for _, event in cases] + [fine])
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = RawStream(ch)
        await stream.hello()
        ack = await stream.send_batch(batch)
        await assert_next_batch_is_stored(stream, mothership, pki)
    assert ack.status == ingest_pb2.ACK_STATUS_PARTIAL
    assert [(e.index, e.field) for e in ack.errors] == [
        (index, field) for index, (field, _) in enumerate(cases)
    ]
    assert all(e.reason for e in ack.errors)
    assert fine.id in await stored_ids(mothership.storage, pki)


async def test_a_huge_attribute_map_is_refused_for_its_event_only(
    mothership: Mothership, pki: Pki
) -> None:
    crowded = make_event("five thousand attributes")
    crowded.attributes.update({f"a{i}": str(i) for i in range(5_000)})
    fine = make_event("a normal neighbour")
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = RawStream(ch)
        await stream.hello()
        ack = await stream.send_batch(make_batch("site-a", [crowded, fine]))
        await assert_next_batch_is_stored(stream, mothership, pki)
    assert ack.status == ingest_pb2.ACK_STATUS_PARTIAL
    assert [(e.field, e.reason) for e in ack.errors] == [
        ("attributes", "5000 entries exceed the limit of 32")
    ]
    assert fine.id in await stored_ids(mothership.storage, pki)


async def test_a_huge_trace_context_rejects_the_batch_and_the_stream_goes_on(
    mothership: Mothership, pki: Pki
) -> None:
    batch = make_batch("site-a", [make_event("traced too much")])
    batch.trace_context.update({f"k{i}": "v" for i in range(40)})
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = RawStream(ch)
        await stream.hello()
        ack = await stream.send_batch(batch)
        await assert_next_batch_is_stored(stream, mothership, pki)
    assert ack.status == ingest_pb2.ACK_STATUS_REJECTED
    assert ack.message == "batch.trace_context: 40 entries exceed the limit of 32"


@pytest.mark.parametrize(
    ("hello", "field"),
    [
        (ingest_pb2.Hello(agent_id="site-a", hostname="h" * 257), "hello.hostname"),
        (ingest_pb2.Hello(agent_id="site-a", agent_version="v" * 257), "hello.agent_version"),
        (ingest_pb2.Hello(agent_id="a" * 65), "hello.agent_id"),
        (ingest_pb2.Hello(), "hello.agent_id"),
    ],
)
async def test_hello_fields_over_their_limits_are_named(
    mothership: Mothership, pki: Pki, hello: ingest_pb2.Hello, field: str
) -> None:
    data = ingest_pb2.StreamRequest(hello=hello).SerializeToString()
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        error = await RawStream(ch).refused(data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violation(error)[0] == field


async def test_an_unreadable_event_id_still_gets_its_index(
    mothership: Mothership, pki: Pki
) -> None:
    event = make_event("bad id")
    event.id = "IDX!" + uuid7()[4:]
    data = corrupt(stream_bytes(make_batch("site-a", [event])), "IDX!", BAD_UTF8)
    async with secure_channel(mothership.ingest.runtime.ports.grpc, pki.agent("site-a")) as ch:
        stream = RawStream(ch)
        await stream.hello()
        ack = await stream.send(data)
    assert ack.status == ingest_pb2.ACK_STATUS_PARTIAL
    assert [(e.index, e.event_id, e.field) for e in ack.errors] == [(0, "", "id")]
