"""NetFlow v5, v9 and IPFIX datagrams into flow records; decoding never raises.

v9 and IPFIX data sets are described by templates that the exporter sends now and then;
``TemplateCache`` keeps them per (exporter address, source id / observation domain,
template id). A data set whose template has not arrived yet is held for a while and
decoded once it does; what cannot be decoded is counted by reason in ``Decoded.skipped``.
A datagram that is malformed from some point on keeps what was decoded before it and
names the problem in ``Decoded.error``. A record with more fields of unknown elements than
a flow event may carry attributes keeps the first ones; the rest are counted.
"""

from __future__ import annotations

import collections
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from gen.edgebot.v1 import event_pb2
from mesh.ids import uuid7
from mesh.timeutil import NS_PER_S, ns_to_iso, ns_to_ts

NS_PER_MS = 1_000_000
V5_HEADER = struct.Struct("!HHIIIIBBH")
V5_RECORD = struct.Struct("!4s4s4sHHIIIIHHBBBBHHBBH")
V9_HEADER = struct.Struct("!HHIIII")
IPFIX_HEADER = struct.Struct("!HHIII")
SET_HEADER = struct.Struct("!HH")
VARIABLE_LENGTH = 65535
# 1900-01-01 to 1970-01-01, for IPFIX dateTimeMicroseconds/Nanoseconds (NTP format).
NTP_EPOCH_OFFSET_S = 2_208_988_800
TRANSPORTS = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "ipv6-icmp", 132: "sctp"}
DEFAULT_MAX_ATTRIBUTES = 200
# Attributes flow_event adds to a record's own (version, exporter, source id, transport,
# start, end, fields_skipped).
EVENT_ATTRIBUTES = 7


@dataclass(frozen=True)
class FieldSpec:
    id: int
    length: int
    enterprise: int = 0


@dataclass
class Template:
    fields: tuple[FieldSpec, ...]
    is_options: bool
    seen_ns: int

    @property
    def min_length(self) -> int:
        return sum(1 if f.length == VARIABLE_LENGTH else f.length for f in self.fields)


@dataclass(frozen=True)
class Header:
    """What data records need from their datagram's header to read their times."""

    version: int
    exporter: str
    domain: int
    export_s: int
    uptime_ms: int | None  # v9: the exporter's uptime at export time


@dataclass(frozen=True)
class FlowRecord:
    header: Header
    attributes: dict[str, str]
    start_ns: int | None
    end_ns: int | None


@dataclass
class Decoded:
    version: int = 0
    records: list[FlowRecord] = field(default_factory=list)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    error: str | None = None
    max_record_attributes: int = DEFAULT_MAX_ATTRIBUTES - EVENT_ATTRIBUTES


TemplateKey = tuple[str, int, int]


@dataclass
class _HeldSet:
    key: TemplateKey
    header: Header
    body: bytes
    held_ns: int


class DecodeError(ValueError):
    pass


class TemplateCache:
    """Templates per exporter and domain, and the data sets waiting for theirs."""

    def __init__(
        self, timeout_s: float, max_templates: int, hold_s: float, max_held_sets: int
    ) -> None:
        self.timeout_ns = int(timeout_s * NS_PER_S)
        self.max_templates = max_templates
        self.hold_ns = int(hold_s * NS_PER_S)
        self.max_held_sets = max_held_sets
        self.templates: collections.OrderedDict[TemplateKey, Template] = collections.OrderedDict()
        self.held: collections.deque[_HeldSet] = collections.deque()
        # IPFIX exporters (softflowd) send systemInitTimeMilliseconds in options data; flow
        # times relative to the exporter's boot (elements 21, 22) need it.
        self.system_init_ms: dict[tuple[str, int], int] = {}

    def get(self, key: TemplateKey, now_ns: int) -> Template | None:
        template = self.templates.get(key)
        if template is not None and now_ns - template.seen_ns > self.timeout_ns:
            del self.templates[key]
            return None
        return template

    def learn(self, key: TemplateKey, template: Template) -> None:
        self.templates.pop(key, None)
        self.templates[key] = template
        while len(self.templates) > self.max_templates:
            self.templates.popitem(last=False)

    def withdraw(self, key: TemplateKey) -> None:
        self.templates.pop(key, None)

    def hold(self, held: _HeldSet, skipped: collections.Counter[str]) -> None:
        if self.hold_ns <= 0 or len(self.held) >= self.max_held_sets:
            skipped["no_template"] += 1
            return
        self.held.append(held)

    def expire_held(self, now_ns: int, skipped: collections.Counter[str]) -> None:
        while self.held and now_ns - self.held[0].held_ns > self.hold_ns:
            self.held.popleft()
            skipped["no_template"] += 1

    def release(self, key: TemplateKey) -> list[_HeldSet]:
        ready = [held for held in self.held if held.key == key]
        if ready:
            self.held = collections.deque(held for held in self.held if held.key != key)
        return ready


def decode_datagram(
    data: bytes,
    exporter: str,
    cache: TemplateCache,
    now_ns: int,
    max_records: int,
    max_attributes: int = DEFAULT_MAX_ATTRIBUTES,
) -> Decoded:
    """Every flow record in one datagram (plus held ones its templates unlock)."""
    result = Decoded(max_record_attributes=max_attributes - EVENT_ATTRIBUTES)
    cache.expire_held(now_ns, result.skipped)
    if len(data) < 2:
        result.error = "datagram shorter than a version number"
        return result
    result.version = int.from_bytes(data[:2], "big")
    decoder = _DECODERS.get(result.version)
    if decoder is None:
        result.error = f"unsupported NetFlow version {result.version}"
        return result
    try:
        decoder(data, exporter, cache, now_ns, result, max_records)
    except (DecodeError, struct.error, ValueError) as error:
        result.error = str(error) or type(error).__name__
    return result


# v5 ------------------------------------------------------------------------------------


def _decode_v5(
    data: bytes, exporter: str, cache: TemplateCache, now_ns: int, out: Decoded, limit: int
) -> None:
    if len(data) < V5_HEADER.size:
        raise DecodeError("v5 header truncated")
    _, count, uptime, secs, nsecs, _seq, engine_type, engine_id, sampling = V5_HEADER.unpack_from(
        data
    )
    header = Header(5, exporter, engine_id, secs, uptime)
    available = (len(data) - V5_HEADER.size) // V5_RECORD.size
    if available < count:
        out.error = f"v5 header announces {count} records, datagram holds {available}"
    for index in range(min(count, available)):
        if len(out.records) >= limit:
            out.skipped["record_limit"] += min(count, available) - index
            return
        offset = V5_HEADER.size + index * V5_RECORD.size
        out.records.append(_v5_record(V5_RECORD.unpack_from(data, offset), header))
        if sampling:
            out.records[-1].attributes["netflow.sampling"] = str(sampling & 0x3FFF)
        out.records[-1].attributes["netflow.engine"] = f"{engine_type}/{engine_id}"
    del nsecs  # sub-second export time is below the precision of the uptime fields


def _v5_record(fields: tuple[int | bytes, ...], header: Header) -> FlowRecord:
    src, dst, hop = (cast(bytes, f) for f in fields[:3])
    numbers = [cast(int, f) for f in fields[3:]]
    in_if, out_if, packets, octets, first, last, sport, dport = numbers[:8]
    _pad, flags, proto, tos, src_as, dst_as, src_mask, dst_mask, _pad2 = numbers[8:]
    attributes = {
        "net.src_ip": str(ipaddress.IPv4Address(src)),
        "net.dst_ip": str(ipaddress.IPv4Address(dst)),
        "net.next_hop": str(ipaddress.IPv4Address(hop)),
        "net.src_port": str(sport),
        "net.dst_port": str(dport),
        "net.protocol": str(proto),
        "net.tcp_flags": str(flags),
        "net.tos": str(tos),
        "net.bytes": str(octets),
        "net.packets": str(packets),
        "net.src_as": str(src_as),
        "net.dst_as": str(dst_as),
        "net.src_mask": str(src_mask),
        "net.dst_mask": str(dst_mask),
        "flow.input_if": str(in_if),
        "flow.output_if": str(out_if),
    }
    return FlowRecord(header, attributes, _uptime_ns(header, first), _uptime_ns(header, last))


def _uptime_ns(header: Header, switched_ms: int) -> int | None:
    """An uptime-relative time (v5/v9 FIRST/LAST_SWITCHED) as Unix nanoseconds."""
    if header.uptime_ms is None:
        return None
    ago_ms = (header.uptime_ms - switched_ms) & 0xFFFFFFFF
    return header.export_s * NS_PER_S - ago_ms * NS_PER_MS


# v9 and IPFIX --------------------------------------------------------------------------


def _decode_v9(
    data: bytes, exporter: str, cache: TemplateCache, now_ns: int, out: Decoded, limit: int
) -> None:
    if len(data) < V9_HEADER.size:
        raise DecodeError("v9 header truncated")
    _, _count, uptime, secs, _seq, source_id = V9_HEADER.unpack_from(data)
    header = Header(9, exporter, source_id, secs, uptime)
    _decode_sets(data, V9_HEADER.size, len(data), header, cache, now_ns, out, limit)


def _decode_ipfix(
    data: bytes, exporter: str, cache: TemplateCache, now_ns: int, out: Decoded, limit: int
) -> None:
    if len(data) < IPFIX_HEADER.size:
        raise DecodeError("IPFIX header truncated")
    _, length, export_s, _seq, domain = IPFIX_HEADER.unpack_from(data)
    if not IPFIX_HEADER.size <= length <= len(data):
        raise DecodeError(f"IPFIX message length {length} does not fit the datagram")
    header = Header(10, exporter, domain, export_s, None)
    _decode_sets(data, IPFIX_HEADER.size, length, header, cache, now_ns, out, limit)


def _decode_sets(
    data: bytes,
    offset: int,
    end: int,
    header: Header,
    cache: TemplateCache,
    now_ns: int,
    out: Decoded,
    limit: int,
) -> None:
    ipfix = header.version == 10
    while offset + SET_HEADER.size <= end:
        set_id, set_length = SET_HEADER.unpack_from(data, offset)
        if set_length < SET_HEADER.size or offset + set_length > end:
            raise DecodeError(f"set {set_id} length {set_length} does not fit the datagram")
        body = data[offset + SET_HEADER.size : offset + set_length]
        offset += set_length
        if set_id == (2 if ipfix else 0):
            _learn_templates(body, header, cache, now_ns, out, limit, options=False)
        elif set_id == (3 if ipfix else 1):
            _learn_templates(body, header, cache, now_ns, out, limit, options=True)
        elif set_id >= 256:
            key = (header.exporter, header.domain, set_id)
            template = cache.get(key, now_ns)
            if template is None:
                cache.hold(_HeldSet(key, header, body, now_ns), out.skipped)
            else:
                _decode_data(body, template, header, cache, out, limit)
        else:
            out.skipped["reserved_set"] += 1


def _learn_templates(
    body: bytes,
    header: Header,
    cache: TemplateCache,
    now_ns: int,
    out: Decoded,
    limit: int,
    options: bool,
) -> None:
    offset = 0
    # Anything shorter than a template header is padding.
    while len(body) - offset >= 4:
        template_id, count = struct.unpack_from("!HH", body, offset)
        if template_id < 256 and count == 0:
            return  # padding, or a withdrawal of every template (RFC 7011 8.1): they age out
        template_id, fields, offset = _read_template(body, offset, header.version, options)
        key = (header.exporter, header.domain, template_id)
        if not fields:
            cache.withdraw(key)
            continue
        template = Template(fields, options, now_ns)
        if template.min_length == 0:
            out.skipped["bad_template"] += 1
            continue
        cache.learn(key, template)
        for held in cache.release(key):
            _decode_data(held.body, template, held.header, cache, out, limit)


def _read_template(
    body: bytes, offset: int, version: int, options: bool
) -> tuple[int, tuple[FieldSpec, ...], int]:
    template_id, count = struct.unpack_from("!HH", body, offset)
    offset += 4
    if options and version == 9:
        # v9 options template: scope and option lengths in bytes, 4 bytes per field.
        option_length = struct.unpack_from("!H", body, offset)[0]
        offset += 2
        count = (count + option_length) // 4
    elif options:
        offset += 2  # IPFIX scope field count; scope fields are read like the others
    if template_id < 256 and count:
        raise DecodeError(f"template id {template_id} is reserved")
    fields = []
    for _ in range(count):
        field_id, length = struct.unpack_from("!HH", body, offset)
        offset += 4
        enterprise = 0
        if version == 10 and field_id & 0x8000:
            enterprise = struct.unpack_from("!I", body, offset)[0]
            offset += 4
            field_id &= 0x7FFF
        if version == 9 and length == VARIABLE_LENGTH:
            raise DecodeError("v9 templates have no variable-length fields")
        fields.append(FieldSpec(field_id, length, enterprise))
    return template_id, tuple(fields), offset


def _decode_data(
    body: bytes,
    template: Template,
    header: Header,
    cache: TemplateCache,
    out: Decoded,
    limit: int,
) -> None:
    offset = 0
    while len(body) - offset >= template.min_length:
        values, next_offset = _read_record(body, offset, template)
        if values is None:
            if any(body[offset:]):
                raise DecodeError("data record runs past the end of its set")
            return
        offset = next_offset
        exporter = (header.exporter, header.domain)
        if template.is_options:
            out.skipped["options_data"] += 1
            _remember_system_init(values, exporter, cache)
            continue
        if len(out.records) >= limit:
            out.skipped["record_limit"] += 1
            continue
        flow = _flow_record(values, header, cache.system_init_ms.get(exporter), out)
        out.records.append(flow)


def _remember_system_init(
    values: list[tuple[FieldSpec, bytes]], exporter: tuple[str, int], cache: TemplateCache
) -> None:
    for spec, raw in values:
        if spec.id == SYSTEM_INIT_MS and not spec.enterprise and 0 < len(raw) <= 8:
            cache.system_init_ms[exporter] = int.from_bytes(raw, "big")


def _read_record(
    body: bytes, offset: int, template: Template
) -> tuple[list[tuple[FieldSpec, bytes]] | None, int]:
    values = []
    for spec in template.fields:
        length = spec.length
        if length == VARIABLE_LENGTH:
            if offset >= len(body):
                return None, offset
            length, offset = body[offset], offset + 1
            if length == 255:
                if offset + 2 > len(body):
                    return None, offset
                length, offset = int.from_bytes(body[offset : offset + 2], "big"), offset + 2
        if offset + length > len(body):
            return None, offset
        values.append((spec, body[offset : offset + length]))
        offset += length
    return values, offset


# Information elements (IANA IPFIX registry; v9 shares the ids below 128) -----------------

Formatter = Callable[[bytes], str]


def _uint(value: bytes) -> str:
    return str(int.from_bytes(value, "big"))


def _ip(value: bytes) -> str:
    if len(value) in (4, 16):
        return str(ipaddress.ip_address(value))
    return value.hex()


def _mac(value: bytes) -> str:
    return ":".join(f"{b:02x}" for b in value)


ELEMENTS: dict[int, tuple[str, Formatter]] = {
    1: ("net.bytes", _uint),
    2: ("net.packets", _uint),
    4: ("net.protocol", _uint),
    5: ("net.tos", _uint),
    6: ("net.tcp_flags", _uint),
    7: ("net.src_port", _uint),
    8: ("net.src_ip", _ip),
    9: ("net.src_mask", _uint),
    10: ("flow.input_if", _uint),
    11: ("net.dst_port", _uint),
    12: ("net.dst_ip", _ip),
    13: ("net.dst_mask", _uint),
    14: ("flow.output_if", _uint),
    15: ("net.next_hop", _ip),
    16: ("net.src_as", _uint),
    17: ("net.dst_as", _uint),
    27: ("net.src_ip", _ip),
    28: ("net.dst_ip", _ip),
    29: ("net.src_mask", _uint),
    30: ("net.dst_mask", _uint),
    32: ("net.icmp_type_code", _uint),
    56: ("net.src_mac", _mac),
    58: ("net.vlan", _uint),
    60: ("net.ip_version", _uint),
    61: ("flow.direction", _uint),
    62: ("net.next_hop", _ip),
    80: ("net.dst_mac", _mac),
    85: ("net.bytes", _uint),
    86: ("net.packets", _uint),
    136: ("flow.end_reason", _uint),
}
# Times: uptime milliseconds (v9), or absolute in the unit of the element.
FIRST_SWITCHED, LAST_SWITCHED = 22, 21
SYSTEM_INIT_MS = 160
START_ELEMENTS = {150: NS_PER_S, 152: NS_PER_MS}
END_ELEMENTS = {151: NS_PER_S, 153: NS_PER_MS}
NTP_START, NTP_END = {154, 156}, {155, 157}


def _flow_record(
    values: list[tuple[FieldSpec, bytes]],
    header: Header,
    system_init_ms: int | None,
    out: Decoded,
) -> FlowRecord:
    attributes: dict[str, str] = {}
    times: dict[int, int] = {}
    unknown: list[tuple[str, str]] = []
    for spec, raw in values:
        if spec.enterprise:
            unknown.append((f"netflow.field.{spec.enterprise}.{spec.id}", raw.hex()))
        elif spec.id in ELEMENTS:
            key, formatter = ELEMENTS[spec.id]
            attributes.setdefault(key, formatter(raw))
        elif len(raw) <= 8:
            number = int.from_bytes(raw, "big")
            times[spec.id] = number
            if not _is_time(spec.id):
                unknown.append((f"netflow.field.{spec.id}", str(number)))
        else:
            unknown.append((f"netflow.field.{spec.id}", raw.hex()))
    _add_unknown(attributes, unknown, out)
    if system_init_ms is not None:
        times.setdefault(SYSTEM_INIT_MS, system_init_ms)
    start_ns, end_ns = _times(times, header)
    return FlowRecord(header, attributes, start_ns, end_ns)


def _add_unknown(attributes: dict[str, str], unknown: list[tuple[str, str]], out: Decoded) -> None:
    """Fields of unknown elements, in template order, as far as the attribute limit allows."""
    for key, value in unknown:
        if key not in attributes and len(attributes) >= out.max_record_attributes:
            skipped = sum(1 for k, _ in unknown if k not in attributes)
            attributes["netflow.fields_skipped"] = str(skipped)
            out.skipped["fields_over_limit"] += skipped
            return
        attributes.setdefault(key, value)


def _is_time(element: int) -> bool:
    return element in (FIRST_SWITCHED, LAST_SWITCHED, SYSTEM_INIT_MS, *START_ELEMENTS,
                       *END_ELEMENTS, *NTP_START, *NTP_END)  # fmt: skip


def _times(times: dict[int, int], header: Header) -> tuple[int | None, int | None]:
    start = next((times[e] * unit for e, unit in START_ELEMENTS.items() if e in times), None)
    end = next((times[e] * unit for e, unit in END_ELEMENTS.items() if e in times), None)
    start = start or next((_ntp_ns(times[e]) for e in NTP_START if e in times), None)
    end = end or next((_ntp_ns(times[e]) for e in NTP_END if e in times), None)
    if header.uptime_ms is not None:
        start = start or _switched(times, FIRST_SWITCHED, header)
        end = end or _switched(times, LAST_SWITCHED, header)
    elif SYSTEM_INIT_MS in times:
        init_ns = times[SYSTEM_INIT_MS] * NS_PER_MS
        start = start or _plus(init_ns, times.get(FIRST_SWITCHED))
        end = end or _plus(init_ns, times.get(LAST_SWITCHED))
    return start, end


def _switched(times: dict[int, int], element: int, header: Header) -> int | None:
    return _uptime_ns(header, times[element]) if element in times else None


def _plus(base_ns: int, offset_ms: int | None) -> int | None:
    return None if offset_ms is None else base_ns + offset_ms * NS_PER_MS


def _ntp_ns(value: int) -> int:
    seconds, fraction = value >> 32, value & 0xFFFFFFFF
    return (seconds - NTP_EPOCH_OFFSET_S) * NS_PER_S + (fraction * NS_PER_S >> 32)


_DECODERS = {5: _decode_v5, 9: _decode_v9, 10: _decode_ipfix}


# Events --------------------------------------------------------------------------------


def flow_event(record: FlowRecord, source: str, received_ns: int) -> event_pb2.Event:
    """One flow record as an event: time = the flow's end (else its export time)."""
    attributes = {
        **record.attributes,
        "netflow.version": str(record.header.version),
        "netflow.exporter": record.header.exporter,
        "netflow.source_id": str(record.header.domain),
    }
    protocol = attributes.get("net.protocol", "")
    transport = TRANSPORTS.get(int(protocol)) if protocol.isdigit() else None
    if transport:
        attributes["net.transport"] = transport
    start_ns, end_ns = _plausible(record.start_ns), _plausible(record.end_ns)
    if start_ns is not None:
        attributes["flow.start"] = ns_to_iso(start_ns)
    if end_ns is not None:
        attributes["flow.end"] = ns_to_iso(end_ns)
    event = event_pb2.Event(
        id=uuid7(),
        type="netflow",
        source=source,
        host=record.header.exporter,
        service="netflow",
        severity=event_pb2.SEVERITY_INFORMATIONAL,
        message=_summary(attributes, transport or protocol),
        attributes=attributes,
    )
    export_ns = record.header.export_s * NS_PER_S
    ns_to_ts(end_ns if end_ns is not None else export_ns or received_ns, event.time)
    ns_to_ts(received_ns, event.observed_time)
    return event


def _plausible(ns: int | None) -> int | None:
    """Times a Timestamp can hold (0001..9999); exporters with odd clocks give others."""
    if ns is None or not -62_135_596_800 * NS_PER_S <= ns <= 253_402_300_799 * NS_PER_S:
        return None
    return ns


def _summary(attributes: dict[str, str], protocol: str) -> str:
    def endpoint(side: str) -> str:
        ip = attributes.get(f"net.{side}_ip", "?")
        port = attributes.get(f"net.{side}_port")
        shown = f"[{ip}]" if ":" in ip else ip
        return f"{shown}:{port}" if port is not None else shown

    return (
        f"{protocol or 'flow'} {endpoint('src')} -> {endpoint('dst')} "
        f"{attributes.get('net.packets', '?')} packets {attributes.get('net.bytes', '?')} bytes"
    )
