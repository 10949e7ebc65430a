"""The Encoded views (encoded.proto) stay wire-identical to the messages they stand for."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gen.edgebot.v1 import encoded_pb2, event_pb2, storage_pb2
from tests.inprocess_mesh import make_event

VIEWS = list(encoded_pb2.DESCRIPTOR.message_types_by_name.values())
EVENT = event_pb2.Event.DESCRIPTOR.full_name


def plain_of(view: Descriptor) -> Descriptor:
    name = view.full_name.replace(".Encoded", ".", 1)
    return view.file.pool.FindMessageTypeByName(name)


def shape(field: FieldDescriptor) -> tuple[object, ...]:
    """What a field looks like on the wire, with Event as bytes and views as the plain."""
    message = field.message_type
    if message is not None and message.full_name == EVENT:
        kind: object = FieldDescriptor.TYPE_BYTES
    elif message is not None and message.GetOptions().map_entry:
        kind = tuple(shape(f) for f in message.fields)
    elif message is not None and message.name.startswith("Encoded"):
        kind = plain_of(message).full_name
    elif message is not None:
        kind = message.full_name
    else:
        kind = field.type
    oneof = field.containing_oneof.name if field.containing_oneof else None
    return field.number, field.name, kind, field.is_repeated, oneof


@pytest.mark.parametrize("view", VIEWS, ids=[v.name for v in VIEWS])
def test_each_view_has_exactly_the_fields_of_its_message(view: Descriptor) -> None:
    plain = plain_of(view)
    assert sorted(shape(f) for f in view.fields) == sorted(shape(f) for f in plain.fields)


def stream_request() -> storage_pb2.WriteStreamRequest:
    request = storage_pb2.WriteStreamRequest(trace_context={"traceparent": "00-ab-cd-01"})
    write = request.writes.add()
    write.batch.batch_id, write.batch.agent_id, write.batch.seq = "b-1", "site-a", 7
    write.batch.events.extend([make_event("first"), make_event("second ünïcode")])
    letter = write.dead_letters.add()
    letter.error.reason, letter.event.id = "too long", "e-9"
    return request


def test_a_message_and_its_view_parse_each_others_bytes() -> None:
    plain = stream_request()
    view = encoded_pb2.EncodedWriteStreamRequest.FromString(plain.SerializeToString())
    events = plain.writes[0].batch.events
    assert list(view.writes[0].batch.events) == [e.SerializeToString() for e in events]
    assert view.writes[0].dead_letters[0].error.reason == "too long"
    again = storage_pb2.WriteStreamRequest.FromString(view.SerializeToString())
    assert again == plain


def test_a_view_built_from_encoded_events_reads_as_the_message() -> None:
    events = [make_event("one"), make_event("two")]
    view = encoded_pb2.EncodedWriteRequest()
    view.batch.batch_id = "b-2"
    view.batch.events.extend([e.SerializeToString() for e in events])
    plain = storage_pb2.WriteRequest.FromString(view.SerializeToString())
    assert plain.batch.batch_id == "b-2"
    assert list(plain.batch.events) == events
