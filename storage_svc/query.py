"""What a query, aggregation or tail selects, and the opaque tokens that page through it.

The filter is parsed from its protobuf once per call; sinks translate it to their own query
language, and ``matches`` applies the same rules in Python to live tail events.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from google.protobuf.message import Message

from gen.edgebot.v1 import event_pb2, storage_pb2
from mesh.timeutil import is_set, ts_to_ns

HIGHEST_SEVERITY_VALUE = event_pb2.SEVERITY_DEBUG


class InvalidArgument(Exception):
    """A request field that cannot be used; ``field`` is its path in the request."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class EventFilter:
    """Empty fields select everything; all given conditions must hold."""

    start_ns: int | None = None
    end_ns: int | None = None
    types: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    max_level: int | None = None
    """Highest syslog level selected (0 emergency ... 7 debug): "at least this severe"."""
    text: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)


class SortOrder(StrEnum):
    NEWEST_FIRST = "newest"
    OLDEST_FIRST = "oldest"


class GroupBy(StrEnum):
    NONE = ""
    TYPE = "type"
    SOURCE = "source"
    SERVICE = "service"
    SEVERITY = "severity"
    HOST = "host"


@dataclass(frozen=True)
class PagePosition:
    """The last event of a page, in the (time, id) order pages follow."""

    ts_ns: int
    event_id: str


@dataclass(frozen=True)
class PageRequest:
    order: SortOrder
    size: int
    after: PagePosition | None = None


@dataclass(frozen=True)
class BucketCount:
    start_ns: int
    key: str
    count: int


def severity_level(severity: int) -> int | None:
    """The syslog level stored for a Severity enum value (None when unspecified)."""
    return severity - 1 if severity > 0 else None


def parse_filter(proto: storage_pb2.EventFilter, path: str = "filter") -> EventFilter:
    if not 0 <= proto.min_severity <= HIGHEST_SEVERITY_VALUE:
        raise InvalidArgument(f"{path}.min_severity", f"unknown severity {proto.min_severity}")
    for name, entries in (("tags", proto.tags), ("attributes", proto.attributes)):
        for key in entries:
            if not key or '"' in key:
                raise InvalidArgument(
                    f"{path}.{name}[{key}]", "keys must be non-empty and contain no '\"'"
                )
    return EventFilter(
        start_ns=ts_to_ns(proto.start_time) if is_set(proto.start_time) else None,
        end_ns=ts_to_ns(proto.end_time) if is_set(proto.end_time) else None,
        types=tuple(proto.types),
        sources=tuple(proto.sources),
        hosts=tuple(proto.hosts),
        services=tuple(proto.services),
        max_level=severity_level(proto.min_severity),
        text=proto.text,
        tags=dict(proto.tags),
        attributes=dict(proto.attributes),
    )


def parse_order(value: int) -> SortOrder:
    if value == storage_pb2.SORT_ORDER_OLDEST_FIRST:
        return SortOrder.OLDEST_FIRST
    if value in (storage_pb2.SORT_ORDER_UNSPECIFIED, storage_pb2.SORT_ORDER_NEWEST_FIRST):
        return SortOrder.NEWEST_FIRST
    raise InvalidArgument("order", f"unknown sort order {value}")


GROUP_BY: dict[int, GroupBy] = {
    storage_pb2.GROUP_BY_UNSPECIFIED: GroupBy.NONE,
    storage_pb2.GROUP_BY_TYPE: GroupBy.TYPE,
    storage_pb2.GROUP_BY_SOURCE: GroupBy.SOURCE,
    storage_pb2.GROUP_BY_SERVICE: GroupBy.SERVICE,
    storage_pb2.GROUP_BY_SEVERITY: GroupBy.SEVERITY,
    storage_pb2.GROUP_BY_HOST: GroupBy.HOST,
}


def parse_group_by(value: int) -> GroupBy:
    if value not in GROUP_BY:
        raise InvalidArgument("group_by", f"unknown grouping {value}")
    return GROUP_BY[value]


def page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(requested or default, maximum)


# Room for a repeated field's tag and length prefix around each message.
FIELD_OVERHEAD_BYTES = 8


def fitting(messages: Sequence[Message], max_bytes: int) -> int:
    """How many leading messages fit in ``max_bytes`` (always at least one)."""
    total = 0
    for count, message in enumerate(messages):
        total += message.ByteSize() + FIELD_OVERHEAD_BYTES
        if total > max_bytes and count > 0:
            return count
    return len(messages)


def encode_token(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token(token: str, field_name: str) -> dict[str, Any]:
    padded = token + "=" * (-len(token) % 4)
    try:
        payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (UnicodeError, binascii.Error, ValueError):
        raise InvalidArgument(field_name, "not a token this server issued") from None
    if not isinstance(payload, dict):
        raise InvalidArgument(field_name, "not a token this server issued")
    return payload


def encode_page_token(order: SortOrder, position: PagePosition) -> str:
    return encode_token({"o": order.value, "ts": position.ts_ns, "id": position.event_id})


def decode_page_token(token: str, order: SortOrder) -> PagePosition | None:
    if not token:
        return None
    payload = decode_token(token, "page_token")
    ts_ns, event_id = payload.get("ts"), payload.get("id")
    if not isinstance(ts_ns, int) or not isinstance(event_id, str):
        raise InvalidArgument("page_token", "not a token this server issued")
    if payload.get("o") != order.value:
        raise InvalidArgument("page_token", "was issued for a different sort order")
    return PagePosition(ts_ns, event_id)


def matches(selection: EventFilter, event: event_pb2.Event) -> bool:
    """The filter's rules applied in Python (the tail's live path)."""
    ts_ns = ts_to_ns(event.time)
    level = severity_level(event.severity)
    return (
        (selection.start_ns is None or ts_ns >= selection.start_ns)
        and (selection.end_ns is None or ts_ns < selection.end_ns)
        and _in(event.type, selection.types)
        and _in(event.source, selection.sources)
        and _in(event.host, selection.hosts)
        and _in(event.service, selection.services)
        and (selection.max_level is None or (level is not None and level <= selection.max_level))
        and (not selection.text or selection.text.lower() in event.message.lower())
        and _subset(selection.tags, event.tags)
        and _subset(selection.attributes, event.attributes)
    )


def _in(value: str, allowed: tuple[str, ...]) -> bool:
    return not allowed or value in allowed


def _subset(wanted: Mapping[str, str], present: Mapping[str, str]) -> bool:
    return all(present.get(key) == value for key, value in wanted.items())
