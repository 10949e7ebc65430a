"""Request bytes into messages, keeping what can be read when the whole does not parse.

Python protobuf (upb) refuses a whole message when one string field anywhere in it holds
bad UTF-8, so one bad event would fail its batch and, on a stream, the stream. Here a
request that does not parse is split along the wire format instead: the batch header and
each event are parsed on their own. An event that still fails becomes a placeholder (its
id when readable, its bytes in ``raw``) together with the field that broke it, and is
refused like any other bad event while the rest of the batch goes on. Only a request
whose framing is broken, or whose batch header is unreadable, is refused as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from gen.edgebot.v1 import encoded_pb2, event_pb2, ingest_pb2

WIRE_VARINT, WIRE_FIXED64, WIRE_LENGTH_DELIMITED, WIRE_FIXED32 = 0, 1, 2, 5
MAX_VARINT_BYTES = 10
ID_FIELD, EVENTS_FIELD = 1, 5
STREAM_BATCH_FIELD, PUSH_BATCH_FIELD = 2, 1
MAX_KEY_SHOWN = 40

RequestT = TypeVar("RequestT", ingest_pb2.StreamRequest, ingest_pb2.PushRequest)
Problem = tuple[str, str]
"""(field, reason) as the sender should read them, e.g. ("attributes[user]", "...")."""


@dataclass
class Incoming(Generic[RequestT]):
    """One request as the servicer receives it."""

    request: RequestT
    undecodable: dict[int, Problem] = field(default_factory=dict)
    """Events of the batch (by index) that could not be parsed, and why."""
    problem: Problem | None = None
    """Set when the request as a whole cannot be read; ``request`` is then empty."""
    encoded: encoded_pb2.EncodedEventBatch | None = None
    """The batch again with its events as received (encoded), when the request parsed
    whole: forwarded as they are instead of serialized again."""


class WireError(ValueError):
    """The bytes are not protobuf wire format at all."""


@dataclass(frozen=True)
class WireField:
    number: int
    wire_type: int
    start: int
    value_start: int
    end: int


def decode_stream_request(data: bytes) -> Incoming[ingest_pb2.StreamRequest]:
    try:
        request = ingest_pb2.StreamRequest.FromString(data)
    except DecodeError:
        return _salvage(data, ingest_pb2.StreamRequest, STREAM_BATCH_FIELD)
    if request.WhichOneof("kind") != "batch":
        return Incoming(request)
    return Incoming(request, encoded=encoded_pb2.EncodedStreamRequest.FromString(data).batch)


def decode_push_request(data: bytes) -> Incoming[ingest_pb2.PushRequest]:
    try:
        request = ingest_pb2.PushRequest.FromString(data)
    except DecodeError:
        return _salvage(data, ingest_pb2.PushRequest, PUSH_BATCH_FIELD)
    return Incoming(request, encoded=encoded_pb2.EncodedPushRequest.FromString(data).batch)


def _salvage(data: bytes, message: type[RequestT], batch_field: int) -> Incoming[RequestT]:
    try:
        fields = split_fields(data)
    except WireError as error:
        return Incoming(message(), problem=("request", f"not a {message.__name__}: {error}"))
    parts = [
        data[f.value_start : f.end]
        for f in fields
        if f.number == batch_field and f.wire_type == WIRE_LENGTH_DELIMITED
    ]
    if not parts:
        found = find_bad_field(message.DESCRIPTOR, data) or ("request", "not decodable")
        return Incoming(message(), problem=found)
    # A message field that occurs several times is merged: its parts concatenated.
    batch, undecodable, problem = salvage_batch(b"".join(parts))
    if problem is not None:
        return Incoming(message(), problem=problem)
    request = message()
    request.batch.CopyFrom(batch)
    return Incoming(request, undecodable)


def salvage_batch(
    data: bytes,
) -> tuple[event_pb2.EventBatch, dict[int, Problem], Problem | None]:
    """The batch with placeholders for its unreadable events, or the problem of its header."""
    try:
        fields = split_fields(data)
    except WireError as error:
        return event_pb2.EventBatch(), {}, ("batch", str(error))
    header = b"".join(data[f.start : f.end] for f in fields if f.number != EVENTS_FIELD)
    try:
        batch = event_pb2.EventBatch.FromString(header)
    except DecodeError:
        problem = find_bad_field(event_pb2.EventBatch.DESCRIPTOR, header, "batch.")
        return event_pb2.EventBatch(), {}, problem or ("batch", "not decodable")
    undecodable: dict[int, Problem] = {}
    for wire in fields:
        if wire.number != EVENTS_FIELD or wire.wire_type != WIRE_LENGTH_DELIMITED:
            continue
        payload = data[wire.value_start : wire.end]
        try:
            batch.events.append(event_pb2.Event.FromString(payload))
        except DecodeError:
            problem = find_bad_field(event_pb2.Event.DESCRIPTOR, payload)
            undecodable[len(batch.events)] = problem or ("event", "not decodable")
            batch.events.append(_placeholder(payload))
    return batch, undecodable, None


def _placeholder(payload: bytes) -> event_pb2.Event:
    """Stands in for an unreadable event: its id if that is readable, its bytes in raw."""
    event = event_pb2.Event(raw=payload)
    try:
        for wire in split_fields(payload):
            if wire.number == ID_FIELD and wire.wire_type == WIRE_LENGTH_DELIMITED:
                event.id = payload[wire.value_start : wire.end].decode("utf-8")
    except (WireError, UnicodeDecodeError):
        pass
    return event


def split_fields(data: bytes) -> list[WireField]:
    """The top-level fields of one message, without interpreting their values."""
    fields = []
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {start}")
        value_start = pos
        if wire_type == WIRE_VARINT:
            _, pos = _varint(data, pos)
        elif wire_type == WIRE_FIXED64:
            pos += 8
        elif wire_type == WIRE_FIXED32:
            pos += 4
        elif wire_type == WIRE_LENGTH_DELIMITED:
            length, value_start = _varint(data, pos)
            pos = value_start + length
        else:
            raise WireError(f"wire type {wire_type} at byte {start}")
        if pos > len(data):
            raise WireError(f"field {number} runs past the end of the message")
        fields.append(WireField(number, wire_type, start, value_start, pos))
    return fields


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for index in range(MAX_VARINT_BYTES):
        if pos + index >= len(data):
            raise WireError(f"truncated varint at byte {pos}")
        byte = data[pos + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, pos + index + 1
    raise WireError(f"varint longer than {MAX_VARINT_BYTES} bytes at byte {pos}")


def find_bad_field(descriptor: Descriptor, data: bytes, prefix: str = "") -> Problem | None:
    """The first field of ``data`` that keeps it from parsing as ``descriptor``, and why."""
    try:
        fields = split_fields(data)
    except WireError as error:
        return prefix.rstrip(".") or descriptor.name, str(error)
    for wire in fields:
        spec = descriptor.fields_by_number.get(wire.number)
        # Unknown fields and wire-type mismatches are skipped by the parser, not errors.
        if spec is None or wire.wire_type != WIRE_LENGTH_DELIMITED:
            continue
        value = data[wire.value_start : wire.end]
        name = f"{prefix}{spec.name}"
        if spec.type == FieldDescriptor.TYPE_STRING and not _is_utf8(value):
            return name, "not valid UTF-8"
        if spec.type == FieldDescriptor.TYPE_MESSAGE:
            problem = _bad_submessage(spec, value, name)
            if problem is not None:
                return problem
    return None


def _bad_submessage(spec: FieldDescriptor, value: bytes, name: str) -> Problem | None:
    entry = spec.message_type
    assert entry is not None  # a message field always has its message type
    if not entry.GetOptions().map_entry:
        return find_bad_field(entry, value, f"{name}.")
    try:
        parts = {w.number: value[w.value_start : w.end] for w in split_fields(value)}
    except WireError as error:
        return name, str(error)
    key, item = parts.get(1, b""), parts.get(2, b"")
    if not _is_utf8(key):
        return name, "a key is not valid UTF-8"
    if entry.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING and not _is_utf8(item):
        return f"{name}[{key.decode()[:MAX_KEY_SHOWN]}]", "value not valid UTF-8"
    return None


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


__all__ = [
    "Incoming",
    "Problem",
    "decode_push_request",
    "decode_stream_request",
    "find_bad_field",
    "salvage_batch",
    "split_fields",
]
