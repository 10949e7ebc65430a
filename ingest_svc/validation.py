"""Checks a batch against the advertised limits and each event against the field limits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gen.edgebot.v1 import event_pb2, ingest_pb2
from ingest_svc.config import IngestSection

MAX_ID_LENGTH = 64


@dataclass
class CheckedBatch:
    """The events that may go on, and per-event errors (with the refused events)."""

    valid: list[event_pb2.Event] = field(default_factory=list)
    valid_index: list[int] = field(default_factory=list)
    """The position in the batch of each valid event."""
    valid_encoded: list[bytes] = field(default_factory=list)
    """Each valid event encoded, as it goes on."""
    errors: list[event_pb2.EventError] = field(default_factory=list)
    dead_letters: list[event_pb2.DeadLetter] = field(default_factory=list)


def batch_problem(batch: event_pb2.EventBatch, size: int, limits: IngestSection) -> str | None:
    """Why the batch as a whole can never be accepted, or None."""
    if not batch.batch_id:
        return "batch.batch_id: required"
    if len(batch.batch_id) > MAX_ID_LENGTH:
        return f"batch.batch_id: longer than {MAX_ID_LENGTH} characters"
    if len(batch.events) > limits.max_events_per_batch:
        return (
            f"batch.events: {len(batch.events)} events exceed the limit of "
            f"{limits.max_events_per_batch}"
        )
    if size > limits.max_batch_bytes:
        return f"batch: {size} bytes exceed the limit of {limits.max_batch_bytes}"
    problem = _map_problem("batch.trace_context", batch.trace_context, limits)
    if problem is not None:
        return f"{problem[0]}: {problem[1]}"
    return None


def check_events(
    batch: event_pb2.EventBatch,
    limits: IngestSection,
    undecodable: Mapping[int, tuple[str, str]] | None = None,
    encoded: Sequence[bytes] | None = None,
) -> CheckedBatch:
    """Split the batch into valid events and errors; ``undecodable`` names events (by
    index) that could not be parsed at all and stand in the batch as placeholders.
    ``encoded`` holds the events as received, when there are such bytes; otherwise each
    is serialized here (its size is part of the check)."""
    checked = CheckedBatch()
    for index, event in enumerate(batch.events):
        data = encoded[index] if encoded is not None else event.SerializeToString()
        problem = undecodable.get(index) if undecodable else None
        if problem is None:
            problem = event_problem(event, limits, len(data))
        if problem is None:
            checked.valid.append(event)
            checked.valid_index.append(index)
            checked.valid_encoded.append(data)
            continue
        field_name, reason = problem
        error = event_pb2.EventError(
            index=index, event_id=event.id, field=field_name, reason=reason
        )
        checked.errors.append(error)
        checked.dead_letters.append(
            event_pb2.DeadLetter(
                error=error,
                event=event,
                stage="ingest",
                agent_id=batch.agent_id,
                batch_id=batch.batch_id,
            )
        )
    return checked


def event_problem(
    event: event_pb2.Event, limits: IngestSection, size: int
) -> tuple[str, str] | None:
    """(field, reason) for the first limit the event breaks, or None; ``size`` is its
    encoded length."""
    return None if plainly_within(event, limits, size) else field_problem(event, limits)


def field_problem(event: event_pb2.Event, limits: IngestSection) -> tuple[str, str] | None:
    """``event_problem`` decided field by field."""
    if not event.id:
        return "id", "required"
    if len(event.id) > MAX_ID_LENGTH:
        return "id", f"longer than {MAX_ID_LENGTH} characters"
    if _longer_than(event.message, limits.max_message_bytes):
        return "message", f"longer than {limits.max_message_bytes} bytes"
    for name in ("type", "source", "host", "service"):
        if _longer_than(getattr(event, name), limits.max_field_bytes):
            return name, f"longer than {limits.max_field_bytes} bytes"
    for map_name in ("attributes", "tags"):
        problem = _map_problem(map_name, getattr(event, map_name), limits)
        if problem is not None:
            return problem
    if len(event.raw) > limits.max_raw_bytes:
        return "raw", f"{len(event.raw)} bytes exceed the limit of {limits.max_raw_bytes}"
    return None


def plainly_within(event: event_pb2.Event, limits: IngestSection, size: int) -> bool:
    """True for an event that breaks no limit, decided without looking at each field.

    No field's UTF-8 text is longer than the whole serialized event, so an event no
    larger than the smallest byte limit is within all of them; what is left to check is
    its id, the number of entries of its maps and an empty key. Most events are a few
    hundred bytes, and this is about a third of the field-by-field check's cost.
    ``size`` is the event's encoded length.
    """
    if size > min(limits.max_field_bytes, limits.max_message_bytes, limits.max_raw_bytes):
        return False
    if not event.id or len(event.id) > MAX_ID_LENGTH:
        return False
    for values in (event.attributes, event.tags):
        if len(values) > limits.max_attributes or "" in values:
            return False
    return True


def hello_problem(hello: ingest_pb2.Hello, limits: IngestSection) -> tuple[str, str] | None:
    if not hello.agent_id:
        return "hello.agent_id", "required"
    if len(hello.agent_id) > MAX_ID_LENGTH:
        return "hello.agent_id", f"longer than {MAX_ID_LENGTH} characters"
    for name in ("agent_version", "hostname"):
        if _longer_than(getattr(hello, name), limits.max_field_bytes):
            return f"hello.{name}", f"longer than {limits.max_field_bytes} bytes"
    return None


def _map_problem(
    name: str, values: Mapping[str, str], limits: IngestSection
) -> tuple[str, str] | None:
    if len(values) > limits.max_attributes:
        return name, f"{len(values)} entries exceed the limit of {limits.max_attributes}"
    # Indexing is cheaper than items() on a protobuf map (measured: 9 % of ingest's CPU).
    for key in values:
        value = values[key]
        if not key:
            return name, "empty key"
        if _longer_than(key, limits.max_field_bytes):
            return f"{name}[{key[:40]}]", f"key longer than {limits.max_field_bytes} bytes"
        if _longer_than(value, limits.max_field_bytes):
            return f"{name}[{key}]", f"value longer than {limits.max_field_bytes} bytes"
    return None


def _longer_than(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes as UTF-8, encoding only when the
    character count cannot decide (a character is 1 to 4 bytes)."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit
