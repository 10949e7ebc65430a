"""Field limits count UTF-8 bytes, not characters, whatever the configured limit."""

from __future__ import annotations

import pytest

from gen.edgebot.v1 import event_pb2
from ingest_svc.config import IngestSection
from ingest_svc.validation import event_problem

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
