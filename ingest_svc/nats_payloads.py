"""A message of the NATS input, turned into one EventBatch (or a PayloadError naming the field).

The ``Content-Type`` header says what the body is:

- ``application/x-protobuf`` (or ``application/protobuf``) with
  ``messageType=edgebot.v1.EventBatch`` or ``messageType=edgebot.v1.Event``: that message,
  binary protobuf;
- ``application/json``, or no ``Content-Type`` at all (the original ETL producers sent none):
  one JSON event in the original ETL service's shape, or a JSON array of them.

JSON events map onto Event field by field (README, "NATS input" has the table). Everything
that needs an id or a time the message does not carry derives it from the message's place in
the stream, so a redelivered message becomes the very same batch, and storage's ledger
recognises it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from gen.edgebot.v1 import event_pb2
from mesh.timeutil import datetime_to_ns, ns_to_ts

PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
JSON_TYPES = ("application/json",)
EVENT_BATCH_TYPE = "edgebot.v1.EventBatch"
EVENT_TYPE = "edgebot.v1.Event"
MAX_FLATTEN_DEPTH = 8
MAX_SUMMARY_CHARS = 512
# Milliseconds since the epoch that datetime can represent (years 1..9999).
MAX_EPOCH_MS = 253_402_300_799_999
SEVERITY_NAMES = {
    "emerg": 0, "emergency": 0, "panic": 0, "alert": 1, "crit": 2, "critical": 2, "fatal": 2,
    "err": 3, "error": 3, "warning": 4, "warn": 4, "notice": 5, "info": 6,
    "informational": 6, "debug": 7, "trace": 7,
}  # fmt: skip
HOST_KEYS = ("host_id", "hostname", "host")
SERVICE_KEYS = ("service", "program")
SEVERITY_KEYS = ("severity", "level")
ETL_FIELDS = frozenset({"id", "type", "source", "timestamp", "metadata", "payload"})


class PayloadError(Exception):
    """The message can never become events: ``field`` says where, ``reason`` why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class MessageInfo:
    """Where a message sits in its stream; stable across redeliveries."""

    stream: str
    stream_seq: int
    subject: str
    published_ns: int
    deliveries: int = 1

    @property
    def batch_id(self) -> str:
        return f"nats:{self.stream}:{self.stream_seq}"

    def event_id(self, index: int | None = None) -> str:
        base = f"nats-{self.stream}-{self.stream_seq}"
        return base if index is None else f"{base}-{index}"


def decode(
    data: bytes, headers: Mapping[str, str] | None, info: MessageInfo, agent_id: str
) -> event_pb2.EventBatch:
    """The batch a message carries, with the input's agent id and stable ids; or PayloadError."""
    if not data:
        raise PayloadError("body", "empty message")
    media_type, params = _content_type(headers)
    if media_type in PROTOBUF_TYPES:
        batch = _protobuf(data, params.get("messagetype", ""), info)
    elif media_type in JSON_TYPES or not media_type:
        batch = _json_batch(data, info)
    else:
        raise PayloadError(
            "Content-Type",
            f"{media_type!r} is not accepted (application/json, or application/x-protobuf; "
            f"messageType={EVENT_BATCH_TYPE} or {EVENT_TYPE})",
        )
    batch.agent_id = agent_id
    batch.is_retry = batch.is_retry or info.deliveries > 1
    return batch


def merge(
    batches: Sequence[tuple[MessageInfo, event_pb2.EventBatch]], agent_id: str
) -> event_pb2.EventBatch:
    """Several messages' batches as one (one storage commit). Its id names the first message
    and the count, so the same group sent again is a ledger duplicate; a redelivery grouped
    differently is caught by storage's event-id dedupe."""
    if len(batches) == 1:
        return batches[0][1]
    first = batches[0][0]
    merged = event_pb2.EventBatch(
        batch_id=f"nats:{first.stream}:{first.stream_seq}+{len(batches)}",
        agent_id=agent_id,
        seq=first.stream_seq,
        is_retry=any(batch.is_retry for _, batch in batches),
    )
    for _, batch in batches:
        merged.events.extend(batch.events)
    return merged


def _content_type(headers: Mapping[str, str] | None) -> tuple[str, dict[str, str]]:
    value = ""
    for name, text in (headers or {}).items():
        if name.lower() == "content-type":
            value = text
    media_type, *rest = (part.strip() for part in value.split(";"))
    params = {}
    for part in rest:
        key, _, param = part.partition("=")
        params[key.strip().lower()] = param.strip().strip('"')
    return media_type.lower(), params


def _protobuf(data: bytes, message_type: str, info: MessageInfo) -> event_pb2.EventBatch:
    try:
        if message_type == EVENT_BATCH_TYPE:
            batch = event_pb2.EventBatch.FromString(data)
        elif message_type == EVENT_TYPE:
            batch = event_pb2.EventBatch(events=[event_pb2.Event.FromString(data)])
        else:
            raise PayloadError(
                "Content-Type",
                f"protobuf needs messageType={EVENT_BATCH_TYPE} or {EVENT_TYPE} "
                f"(got {message_type or 'none'!r})",
            )
    except DecodeError as exc:
        raise PayloadError("body", f"not a valid {message_type}: {exc}") from None
    if not batch.batch_id:
        batch.batch_id = info.batch_id
        batch.seq = info.stream_seq
    for event in batch.events:
        if not event.HasField("observed_time"):
            ns_to_ts(info.published_ns, event.observed_time)
    return batch


def _json_batch(data: bytes, info: MessageInfo) -> event_pb2.EventBatch:
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError("body", f"not valid JSON: {exc}") from None
    batch = event_pb2.EventBatch(batch_id=info.batch_id, seq=info.stream_seq)
    if isinstance(body, list):
        if not body:
            raise PayloadError("body", "an empty JSON array holds no events")
        batch.events.extend(
            etl_event(item, info, index, None, f"[{index}].") for index, item in enumerate(body)
        )
    else:
        batch.events.append(etl_event(body, info, None, data, ""))
    return batch


def etl_event(
    item: Any, info: MessageInfo, index: int | None, raw: bytes | None, where: str
) -> event_pb2.Event:
    """One event of the original ETL service's shape as an Event (README has the rules)."""
    if not isinstance(item, dict):
        raise PayloadError(where.rstrip(".") or "body", "an ETL event must be a JSON object")
    metadata = item.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise PayloadError(f"{where}metadata", "must be a JSON object")
    metadata = metadata or {}
    event_type = _text(item.get("type"), f"{where}type") or "raw"
    source = _text(item.get("source"), f"{where}source") or f"nats/{info.subject}"
    attributes = dict(flatten("metadata", metadata))
    message = ""
    decoded = _decoded_payload(item.get("payload"))
    if isinstance(decoded, dict):
        attributes.update(flatten("payload", decoded))
        message = _summary(event_type, decoded)
    elif isinstance(decoded, str):
        message = decoded
    elif decoded is not None:
        attributes["payload"] = json.dumps(decoded, separators=(",", ":"))
    for key, value in item.items():
        if key not in ETL_FIELDS:
            attributes.update(flatten(f"etl.{key}", value))
    # One constructor call: protobuf fills the map and the strings in C.
    return event_pb2.Event(
        id=_event_id(item.get("id"), info, index, where),
        type=event_type,
        source=source,
        host=_first_text(metadata, HOST_KEYS) or source,
        service=_first_text(metadata, SERVICE_KEYS),
        severity=event_pb2.Severity.ValueType(_severity(metadata)),
        message=message,
        attributes=attributes,
        time=ns_to_ts(_event_time(item.get("timestamp"), info, f"{where}timestamp")),
        observed_time=ns_to_ts(info.published_ns),
        raw=raw,
    )


def _event_id(value: Any, info: MessageInfo, index: int | None, where: str) -> str:
    if value is None or value == "":
        return info.event_id(index)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PayloadError(f"{where}id", "must be a string or an integer")
    return str(value)


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PayloadError(field, "must be a string")
    return value


def _first_text(metadata: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = metadata.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _severity(metadata: Mapping[str, Any]) -> int:
    """Severity enum value (syslog level + 1) from metadata.severity/level, or 0."""
    for key in SEVERITY_KEYS:
        value = metadata.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
            return value + 1
        if isinstance(value, str):
            text = value.strip().lower()
            level = int(text) if text.isdigit() else SEVERITY_NAMES.get(text)
            if level is not None and 0 <= level <= 7:
                return level + 1
    return 0


def _event_time(value: Any, info: MessageInfo, field: str) -> int:
    """Epoch milliseconds (a number or digits, as the ETL service read it) or ISO 8601;
    without one, the time JetStream stored the message."""
    if value is None or value == "":
        return info.published_ns
    if isinstance(value, bool):
        raise PayloadError(field, "must be epoch milliseconds or an ISO 8601 time")
    if isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
        value = float(value)
    if isinstance(value, int | float):
        if not 0 <= value <= MAX_EPOCH_MS:
            raise PayloadError(field, f"{value!r} is out of range for epoch milliseconds")
        return int(value * 1_000_000)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise PayloadError(field, f"{value!r} is not epoch milliseconds or ISO 8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return datetime_to_ns(parsed)
    raise PayloadError(field, "must be epoch milliseconds or an ISO 8601 time")


def _decoded_payload(payload: Any) -> Any:
    """A string payload is base64 (once, or twice as the original ingest wrote it) of JSON or
    of text; text that is not base64 is kept as it is."""
    if not isinstance(payload, str):
        return payload
    text = payload
    for _ in range(2):
        decoded = _base64_text(text)
        if decoded is None:
            break
        text = decoded
    if text[:1] not in ("{", "["):
        return text
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return text
    return parsed if isinstance(parsed, dict | list) else text


def _base64_text(text: str) -> str | None:
    stripped = text.strip()
    if len(stripped) < 4 or len(stripped) % 4:
        return None
    try:
        return base64.b64decode(stripped, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def flatten(prefix: str, value: Any, depth: int = 0) -> Iterator[tuple[str, str]]:
    """Flat string attributes with dotted keys; deeper than MAX_FLATTEN_DEPTH stays JSON."""
    if isinstance(value, dict) and depth < MAX_FLATTEN_DEPTH:
        for key, child in value.items():
            yield from flatten(f"{prefix}.{key}", child, depth + 1)
    elif value is None:
        return
    elif isinstance(value, bool):
        yield prefix, "true" if value else "false"
    elif isinstance(value, str):
        yield prefix, value
    elif isinstance(value, int | float):
        yield prefix, json.dumps(value)
    else:
        yield prefix, json.dumps(value, separators=(",", ":"))


def _summary(event_type: str, payload: Mapping[str, Any]) -> str:
    """The message of a JSON payload: its own message/msg text, else 'type key=value ...'."""
    for key in ("message", "msg"):
        if isinstance(payload.get(key), str):
            return str(payload[key])
    scalars = " ".join(
        f"{key}={value}"
        for key, value in payload.items()
        if isinstance(value, str | int | float) and not isinstance(value, bool)
    )
    text = f"{event_type} {scalars}".strip()
    return text if len(text) <= MAX_SUMMARY_CHARS else text[: MAX_SUMMARY_CHARS - 1] + "…"
