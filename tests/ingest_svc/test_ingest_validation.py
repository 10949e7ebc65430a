"""Field limits count UTF-8 bytes, not characters, whatever the configured limit; the
shortcut for small events decides as the field-by-field check does."""

from __future__ import annotations

import random

import pytest

from gen.edgebot.v1 import event_pb2
from ingest_svc.config import IngestSection
from ingest_svc.validation import event_problem, field_problem, plainly_within

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
    assert event_problem(event, LIMITS) == problem


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
    shortcut = [e for e in events if plainly_within(e, limits)]
    assert len(shortcut) > 50  # the shortcut is taken, and not only by empty events
    assert all(field_problem(e, limits) is None for e in shortcut)
    assert [event_problem(e, limits) for e in events] == [field_problem(e, limits) for e in events]
