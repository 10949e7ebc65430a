"""Syslog (RFC 3164 and RFC 5424) datagrams into Events: pure functions that never raise.

Input that cannot be read as syslog is still kept, as a ``raw`` event whose attribute
``parse.error`` says why.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass, field

from gen.edgebot.v1 import event_pb2
from mesh.ids import uuid7
from mesh.timeutil import NS_PER_S, datetime_to_ns, ns_to_datetime, ns_to_ts

FACILITIES = (
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    *(f"local{n}" for n in range(8)),
)
DEFAULT_PRI = 13  # user.notice, as RFC 3164 prescribes for messages without one
MAX_DATAGRAM_BYTES = 65_535
MAX_PRI = 191
NILVALUE = "-"
# How far ahead of ours a sender's clock may run before a year-less time means last year.
FUTURE_TOLERANCE_NS = 2 * 86_400 * 1_000_000_000
BOM = "\ufeff"
MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}

_PRI = re.compile(r"<(\d{1,3})>")
_VERSION = re.compile(r"([1-9]\d?) ")
_BSD_TIME = re.compile(
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) {1,2}(\d{1,2}) "
    r"(?:(\d{4}) )?(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?: |$)"
)
_ISO_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"(Z|[+-]\d{2}:?\d{2})?(?: |$)"
)
_TAG = re.compile(r"([^\s\[\]:]{1,64})(?:\[([^\]\s]{0,32})\])?:(?: |$)")
_HEADER_5424 = re.compile(r"(\S{1,64}) (\S{1,255}) (\S{1,48}) (\S{1,128}) (\S{1,32})(?: |$)")
_SD_NAME = re.compile(r'[^= \]"]{1,32}')


class SyslogParseError(ValueError):
    """The datagram is not syslog we can read; the reason ends up in ``parse.error``."""


@dataclass(frozen=True)
class Received:
    """Where and when a datagram arrived, and how to read times that carry no zone."""

    received_ns: int
    src_ip: str
    source: str
    zone: dt.tzinfo = dt.UTC


@dataclass
class _Parsed:
    pri: int
    format: str
    message: str
    time_ns: int
    host: str = ""
    service: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


def parse_syslog(data: bytes, received: Received) -> event_pb2.Event:
    """One datagram as an Event (type ``syslog``, or ``raw`` with ``parse.error``).

    Each invalid UTF-8 byte becomes a 3-byte U+FFFD, so text can outgrow its input: it is
    cut at the input's size or at the largest datagram, whichever is larger
    (``parse.truncated``; the original bytes stay in ``raw``), so input limits keep
    bounding messages.
    """
    text, cut = _decode(data)
    try:
        parsed = _parse_text(text, received)
    except SyslogParseError as error:
        event = raw_event(data, text, received, str(error))
    else:
        event = _syslog_event(data, parsed, received)
    if cut:
        event.attributes["parse.truncated"] = "true"
    return event


def _decode(data: bytes) -> tuple[str, bool]:
    text = data.decode("utf-8", errors="replace").rstrip("\r\n\x00")
    if "\ufffd" not in text:
        return text, False
    encoded = text.encode()
    limit = max(len(data), MAX_DATAGRAM_BYTES)
    if len(encoded) <= limit:
        return text, False
    return encoded[:limit].decode("utf-8", "ignore"), True


def has_syslog_header(data: bytes) -> bool:
    """Whether a line starts like syslog: a PRI, or an RFC 3164 or ISO 8601 timestamp."""
    text = data[:64].decode("utf-8", errors="replace")
    return any(pattern.match(text) for pattern in (_PRI, _BSD_TIME, _ISO_TIME))


def raw_event(data: bytes, text: str, received: Received, reason: str) -> event_pb2.Event:
    """The event kept for input that could not be parsed."""
    event = event_pb2.Event(
        id=uuid7(),
        type="raw",
        source=received.source,
        host=received.src_ip,
        message=text,
        attributes={"parse.error": reason, "net.src_ip": received.src_ip},
        raw=data,
    )
    ns_to_ts(received.received_ns, event.time)
    ns_to_ts(received.received_ns, event.observed_time)
    return event


def _syslog_event(data: bytes, parsed: _Parsed, received: Received) -> event_pb2.Event:
    facility, level = divmod(parsed.pri, 8)
    attributes = {
        "syslog.facility": FACILITIES[facility],
        "syslog.format": parsed.format,
        "net.src_ip": received.src_ip,
        **parsed.attributes,
    }
    event = event_pb2.Event(
        id=uuid7(),
        type="syslog",
        source=received.source,
        host=parsed.host or received.src_ip,
        service=parsed.service,
        severity=event_pb2.Severity.ValueType(level + 1),
        message=parsed.message,
        attributes=attributes,
        raw=data,
    )
    ns_to_ts(parsed.time_ns, event.time)
    ns_to_ts(received.received_ns, event.observed_time)
    return event


def _parse_text(text: str, received: Received) -> _Parsed:
    if not text.strip():
        raise SyslogParseError("empty message")
    pri, rest = _split_pri(text)
    version = _VERSION.match(rest)
    if version is not None and pri is not None:
        if version.group(1) != "1":
            raise SyslogParseError(f"unsupported syslog version {version.group(1)}")
        return _parse_5424(pri, rest[version.end() :], received)
    return _parse_3164(DEFAULT_PRI if pri is None else pri, rest, received)


def _split_pri(text: str) -> tuple[int | None, str]:
    match = _PRI.match(text)
    if match is None:
        if re.match(r"<\d", text):
            raise SyslogParseError("malformed PRI")
        return None, text
    pri = int(match.group(1))
    if pri > MAX_PRI:
        raise SyslogParseError(f"PRI {pri} out of range 0..{MAX_PRI}")
    return pri, text[match.end() :]


# RFC 3164 ------------------------------------------------------------------------------


def _parse_3164(pri: int, rest: str, received: Received) -> _Parsed:
    time_ns, after_time = _bsd_or_iso_time(rest, received)
    host = ""
    content = after_time
    if time_ns is None:
        time_ns = received.received_ns
    elif _TAG.match(after_time) is None:
        # A header names the host before the tag; a first word ending in ':' is a tag
        # (senders that leave the hostname out).
        host, _, content = after_time.partition(" ")
    service, attributes, message = _split_tag(content)
    return _Parsed(
        pri=pri,
        format="rfc3164",
        message=message.removeprefix(BOM),
        time_ns=time_ns,
        host=host,
        service=service,
        attributes=attributes,
    )


def _split_tag(content: str) -> tuple[str, dict[str, str], str]:
    match = _TAG.match(content)
    if match is None:
        return "", {}, content
    attributes = {"syslog.pid": match.group(2)} if match.group(2) else {}
    return match.group(1), attributes, content[match.end() :]


def _bsd_or_iso_time(rest: str, received: Received) -> tuple[int | None, str]:
    bsd = _BSD_TIME.match(rest)
    if bsd is not None:
        return _bsd_time_ns(bsd, received), rest[bsd.end() :]
    iso = _ISO_TIME.match(rest)
    if iso is not None:
        return _iso_time_ns(iso, received.zone), rest[iso.end() :]
    return None, rest


def _bsd_time_ns(match: re.Match[str], received: Received) -> int:
    if match.group(3):
        years: tuple[int, ...] = (int(match.group(3)),)
    else:
        years = _years_around(received.received_ns // NS_PER_S, received.zone)
    candidates = _bsd_candidates(match.group(1, 2, 4, 5, 6), years, received.zone)
    if not candidates:
        raise SyslogParseError(f"invalid date {match.group(0).strip()!r}")
    fraction_ns = _fraction_ns(match.group(7))
    # No year on the wire: the latest reading not after the arrival (plus the tolerance)
    # wins, so a December line that arrives in January belongs to last year.
    latest_allowed = received.received_ns + FUTURE_TOLERANCE_NS - fraction_ns
    fitting = [ns for ns in candidates if ns <= latest_allowed]
    return (max(fitting) if fitting else min(candidates)) + fraction_ns


# Lines arrive in bursts that share a timestamp to the second, so the datetime arithmetic
# (a third of the parser's time before) is done once per distinct second and zone.
@functools.lru_cache(maxsize=64)
def _years_around(received_s: int, zone: dt.tzinfo) -> tuple[int, ...]:
    """Last year, this year and next year where the line arrived, for a year-less time."""
    year = ns_to_datetime(received_s * NS_PER_S).astimezone(zone).year
    return (year - 1, year, year + 1)


@functools.lru_cache(maxsize=4096)
def _bsd_candidates(
    fields: tuple[str, ...], years: tuple[int, ...], zone: dt.tzinfo
) -> tuple[int, ...]:
    """The instants (ns) a BSD timestamp stands for in each of ``years``, where valid."""
    month_name, day, hour, minute, second = fields
    candidates = []
    for year in years:
        try:
            local = dt.datetime(
                year, MONTHS[month_name], int(day), int(hour), int(minute), int(second),
                tzinfo=zone,
            )  # fmt: skip
        except ValueError:
            continue
        candidates.append(datetime_to_ns(local))
    return tuple(candidates)


def _iso_time_ns(match: re.Match[str], default_zone: dt.tzinfo) -> int:
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    zone = _zone(match.group(8)) if match.group(8) else default_zone
    try:
        value = dt.datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError as error:
        raise SyslogParseError(f"invalid timestamp {match.group(0).strip()!r}: {error}") from None
    return datetime_to_ns(value) + _fraction_ns(match.group(7))


def _zone(offset: str) -> dt.tzinfo:
    if offset == "Z":
        return dt.UTC
    digits = offset[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:])
    if hours > 23 or minutes > 59:
        raise SyslogParseError(f"invalid UTC offset {offset!r}")
    delta = dt.timedelta(hours=hours, minutes=minutes)
    return dt.timezone(-delta if offset[0] == "-" else delta)


def _fraction_ns(digits: str | None) -> int:
    return int(digits.ljust(9, "0")) if digits else 0


# RFC 5424 ------------------------------------------------------------------------------


def _parse_5424(pri: int, rest: str, received: Received) -> _Parsed:
    header = _HEADER_5424.match(rest)
    if header is None:
        raise SyslogParseError("RFC 5424 header incomplete")
    stamp, host, app, procid, msgid = (_nil(header.group(i)) for i in range(1, 6))
    time_ns = _time_5424(stamp, received)
    attributes, message = _structured_data_and_message(rest, header.end())
    if procid:
        attributes["syslog.procid"] = procid
        if procid.isdigit():
            attributes["syslog.pid"] = procid
    if msgid:
        attributes["syslog.msgid"] = msgid
    return _Parsed(
        pri=pri,
        format="rfc5424",
        message=message.removeprefix(BOM),
        time_ns=time_ns,
        host=host,
        service=app,
        attributes=attributes,
    )


def _nil(value: str) -> str:
    return "" if value == NILVALUE else value


def _time_5424(stamp: str, received: Received) -> int:
    if not stamp:
        return received.received_ns
    match = _ISO_TIME.fullmatch(stamp)
    if match is None or "T" not in stamp or match.group(8) is None:
        raise SyslogParseError(f"invalid RFC 5424 timestamp {stamp!r}")
    return _iso_time_ns(match, dt.UTC)


def _structured_data_and_message(text: str, pos: int) -> tuple[dict[str, str], str]:
    if pos >= len(text):
        return {}, ""
    if text[pos] == "-":
        attributes: dict[str, str] = {}
        pos += 1
    elif text[pos] == "[":
        attributes, pos = _structured_data(text, pos)
    else:
        raise SyslogParseError("structured data must be '-' or start with '['")
    if pos >= len(text):
        return attributes, ""
    if text[pos] != " ":
        raise SyslogParseError("expected a space after the structured data")
    return attributes, text[pos + 1 :]


def _structured_data(text: str, pos: int) -> tuple[dict[str, str], int]:
    attributes: dict[str, str] = {}
    while pos < len(text) and text[pos] == "[":
        sd_id, pos = _sd_name(text, pos + 1, "SD-ID")
        attributes.setdefault(f"sd.{sd_id}", "")
        while True:
            if pos >= len(text):
                raise SyslogParseError(f"structured data element {sd_id!r} is not closed")
            if text[pos] == "]":
                pos += 1
                break
            if text[pos] != " ":
                raise SyslogParseError(f"expected a space or ']' in element {sd_id!r}")
            name, value, pos = _sd_param(text, pos + 1)
            attributes.pop(f"sd.{sd_id}", None)
            attributes[f"sd.{sd_id}.{name}"] = value
    return attributes, pos


def _sd_name(text: str, pos: int, what: str) -> tuple[str, int]:
    match = _SD_NAME.match(text, pos)
    if match is None:
        raise SyslogParseError(f"structured data: {what} expected at offset {pos}")
    return match.group(0), match.end()


def _sd_param(text: str, pos: int) -> tuple[str, str, int]:
    name, pos = _sd_name(text, pos, "PARAM-NAME")
    if not text.startswith('="', pos):
        raise SyslogParseError(f'structured data: expected =" after {name!r}')
    pos += 2
    value: list[str] = []
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text) and text[pos + 1] in '"\\]':
            value.append(text[pos + 1])
            pos += 2
        elif char == '"':
            return name, "".join(value), pos + 1
        else:
            value.append(char)
            pos += 1
    raise SyslogParseError(f"structured data: value of {name!r} is not closed")
