"""Field limits count UTF-8 bytes, not characters, whatever the configured limit; the
shortcut for small events decides as the field-by-field check does; valid events go on
as the agent encoded them."""

from __future__ import annotations

import random

import pytest

from gen.edgebot.v1 import encoded_pb2, event_pb2
from ingest_svc.config import IngestSection
from ingest_svc.decoding import decode_stream_request
from ingest_svc.validation import check_events, event_problem, field_problem, plainly_within

LIMITS = IngestSection(max_field_bytes=100, max_message_bytes=400)


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (event_pb2.Event(id="e", host="h" * 100), None),
        (event_pb2.Event(id="e", host="h" * 101), ("host", "longer than 100 bytes")),
        # 30 characters of 4 bytes each: 120 bytes, over a limit their count is under.
        (event_pb2.Event(id="e", service="😀" * 30), ("service", "longer than 100 bytes")),
        (event_pb2.Event(id="e", service="é" * 50), None),
        (event_pb2.Event(id="e", message="😀" * 101), ("message", "longer than 400 bytes")),
        (
            event_pb2.Event(id="e", attributes={"user": "ü" * 51}),
            ("attributes[user]", "value longer than 100 bytes"),
        ),
        (event_pb2.Event(id="e", tags={"k": "v"}), None),
    ],
)
def test_byte_limits(event: event_pb2.Event, problem: tuple[str, str] | None) -> None:
    assert event_problem(event, LIMITS, event.ByteSize()) == problem


SIZES = [0, 1, 3, 5, 8, 10, 12, 25, 26, 100, 101]


def some_text(rng: random.Random) -> str:
    return rng.choice(["a", "é", "😀"]) * rng.choice(SIZES)


def near_the_limits(rng: random.Random) -> event_pb2.Event:
    """An event whose fields sit around LIMITS and SMALL's bounds, some just over."""
    event = event_pb2.Event(
        id=rng.choice(["", "e", "e", "e", "i" * 64, "i" * 65]),
        host=some_text(rng),
        service=some_text(rng),
        message=some_text(rng) * rng.choice([1, 1, 4]),
        raw=b"r" * rng.choice([0, 0, 10, 100]),
    )
    for _ in range(rng.choice([0, 1, 3, 4])):
        event.attributes[rng.choice(["", "k", "user", "ü" * 30])[: rng.randint(0, 30)]] = some_text(
            rng
        )
    if rng.random() < 0.2:
        event.tags[rng.choice(["", "t"])] = "v"
    return event


SMALL = IngestSection(
    max_field_bytes=100, max_message_bytes=400, max_attributes=3, max_raw_bytes=50
)


@pytest.mark.parametrize("limits", [LIMITS, SMALL], ids=["default counts", "small counts"])
def test_the_shortcut_passes_only_events_the_full_check_passes(limits: IngestSection) -> None:
    rng = random.Random(8)
    events = [near_the_limits(rng) for _ in range(5000)]
    shortcut = [e for e in events if plainly_within(e, limits, e.ByteSize())]
    assert len(shortcut) > 50  # the shortcut is taken, and not only by empty events
    assert all(field_problem(e, limits) is None for e in shortcut)
    assert [event_problem(e, limits, e.ByteSize()) for e in events] == [
        field_problem(e, limits) for e in events
    ]


def test_valid_events_go_on_as_they_were_received() -> None:
    fine, too_long = (
        event_pb2.Event(id="a", message="fine"),
        event_pb2.Event(id="b", host="h" * 101),
    )
    request = encoded_pb2.EncodedStreamRequest()
    request.batch.batch_id = "batch-1"
    # Field order on the wire differs from what serializing the parsed event would give.
    received = [event_pb2.Event(message="fine").SerializeToString() + b"\x0a\x01a"]
    request.batch.events.extend([*received, too_long.SerializeToString()])
    incoming = decode_stream_request(request.SerializeToString())
    assert incoming.encoded is not None
    checked = check_events(incoming.request.batch, LIMITS, encoded=incoming.encoded.events)
    assert checked.valid == [fine]
    assert checked.valid_encoded == received
    assert [(e.index, e.field) for e in checked.errors] == [(1, "host")]


def test_events_of_a_salvaged_request_are_encoded_again() -> None:
    bad = b"\x0a\x01c\x32\x02\xff\xfe"  # id "c", then a host (field 6) of bad UTF-8
    request = encoded_pb2.EncodedStreamRequest()
    request.batch.batch_id = "batch-2"
    request.batch.events.extend([event_pb2.Event(id="a").SerializeToString(), bad])
    incoming = decode_stream_request(request.SerializeToString())
    assert incoming.encoded is None
    checked = check_events(incoming.request.batch, LIMITS, incoming.undecodable)
    assert checked.valid_encoded == [event_pb2.Event(id="a").SerializeToString()]
    assert [(e.index, e.event_id, e.field) for e in checked.errors] == [(1, "c", "host")]
