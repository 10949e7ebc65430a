"""Hypothesis strategies that build inputs shaped like the real thing (syslog lines, NetFlow
datagrams with their templates, NMEA sentences, JSON API bodies, ingest requests) and then
break them, so the fuzzing reaches past the first check of each parser.

(Plain random bytes and seed mutations per parser are in tests/edge_agent; these go deeper.)
"""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import strategies as st

from edge_agent.parsers.netflow import ELEMENTS
from edge_agent.parsers.nmea import checksum
from gen.edgebot.v1 import event_pb2, ingest_pb2

# Text -----------------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
# Lone surrogates: valid in JSON escapes, never in UTF-8 or in a protobuf string.
SURROGATES = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
TOKEN = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


@st.composite
def corrupted(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, inserted, deleted, or cut off."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(out)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        byte = draw(st.integers(0, 255))
        if action == "insert":
            out.insert(position, byte)
        elif action == "cut":
            del out[position:]
        elif position < len(out):
            if action == "delete":
                del out[position]
            else:
                out[position] = byte
    return bytes(out)


def maybe_corrupted(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(strategy, strategy.flatmap(corrupted))


# Syslog ---------------------------------------------------------------------------------

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@st.composite
def iso_time(draw: st.DrawFn) -> str:
    year = draw(st.integers(0, 9999))
    parts = [draw(st.integers(0, 99)) for _ in range(5)]
    fraction = draw(st.sampled_from(["", ".1", ".123456", ".123456789", ",5"]))
    zone = draw(st.sampled_from(["Z", "+00:00", "-05:00", "+1400", "+99:99", ""]))
    month, day, hour, minute, second = parts
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"


@st.composite
def structured_data(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return "-"
    elements = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(["exampleSDID@32473", "origin", "meta", "x", "a" * 40]))
        params = []
        for _ in range(draw(st.integers(0, 4))):
            key = draw(st.sampled_from(["iut", "eventSource", "ip", "k", "b" * 40, ""]))
            value = draw(ANY_TEXT).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
            if draw(st.booleans()):
                value += draw(st.sampled_from(["\\", '"', "]", "\\x"]))
            params.append(f'{key}="{value}"')
        elements.append("[" + " ".join([name, *params]) + "]")
    return "".join(elements)


@st.composite
def rfc5424(draw: st.DrawFn) -> bytes:
    pri = draw(st.sampled_from(["<165>", "<0>", "<191>", "<192>", "<999>", "<>", "<13>"]))
    version = draw(st.sampled_from(["1", "2", "10", ""]))
    stamp = draw(st.one_of(iso_time(), st.just("-")))
    fields = [draw(st.one_of(TOKEN, st.just("-"))) for _ in range(4)]
    message = draw(ANY_TEXT)
    bom = "\ufeff" if draw(st.booleans()) else ""
    sd = draw(structured_data())
    line = f"{pri}{version} {stamp} {' '.join(fields)} {sd} {bom}{message}"
    return line.encode()


@st.composite
def rfc3164(draw: st.DrawFn) -> bytes:
    pri = draw(st.sampled_from(["<13>", "<34>", "<191>", "", "<7>"]))
    month = draw(st.sampled_from([*MONTHS, "Foo"]))
    day = draw(st.integers(0, 40))
    year = draw(st.sampled_from(["", "2024 ", "0000 "]))
    clock = ":".join(f"{draw(st.integers(0, 99)):02d}" for _ in range(3))
    host = draw(TOKEN)
    tag = draw(st.one_of(TOKEN, st.just("")))
    pid = draw(st.sampled_from(["", "[123]", "[]", "[" + "9" * 40 + "]"]))
    message = draw(ANY_TEXT)
    return f"{pri}{month} {day:>2} {year}{clock} {host} {tag}{pid}: {message}".encode()


SYSLOG_LINES = st.one_of(
    st.binary(max_size=2048), maybe_corrupted(rfc5424()), maybe_corrupted(rfc3164())
)

# NetFlow --------------------------------------------------------------------------------

KNOWN_ELEMENTS = sorted(ELEMENTS)
TIME_ELEMENTS = [21, 22, 150, 151, 152, 153, 154, 155, 156, 157, 160]


@st.composite
def template_fields(draw: st.DrawFn, ipfix: bool) -> list[tuple[int, int, int]]:
    """(element id, length, enterprise number) per field; up to several hundred fields."""
    if draw(st.integers(0, 4)) == 0:
        # Hundreds of distinct elements nobody knows: one attribute each.
        first = draw(st.integers(1000, 20_000))
        length = draw(st.sampled_from([1, 2, 4]))
        return [(first + i, length, 0) for i in range(draw(st.integers(200, 400)))]  # fmt: skip
    count = draw(st.integers(1, 12))
    fields = []
    for _ in range(count):
        element = draw(
            st.one_of(
                st.sampled_from(KNOWN_ELEMENTS),
                st.sampled_from(TIME_ELEMENTS),
                st.integers(1, 0x7FFF),
            )
        )
        length = draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0, 6]))
        enterprise = 0
        if ipfix and draw(st.integers(0, 9)) == 0:
            enterprise = draw(st.integers(1, 2**32 - 1))
        if ipfix and draw(st.integers(0, 9)) == 0:
            length = 65535
        fields.append((element, length, enterprise))
    return fields


def _template_body(template_id: int, fields: list[tuple[int, int, int]]) -> bytes:
    body = struct.pack("!HH", template_id, len(fields))
    for element, length, enterprise in fields:
        if enterprise:
            body += struct.pack("!HHI", element | 0x8000, length, enterprise)
        else:
            body += struct.pack("!HH", element, length)
    return body


@st.composite
def record(draw: st.DrawFn, fields: list[tuple[int, int, int]]) -> bytes:
    if all(length != 65535 for _, length, _ in fields):
        size = sum(length for _, length, _ in fields)
        return draw(st.binary(min_size=size, max_size=size))
    out = b""
    for _, length, _ in fields:
        if length == 65535:
            size = draw(st.integers(0, 300))
            out += bytes([size]) if size < 255 else b"\xff" + struct.pack("!H", size)
            out += draw(st.binary(min_size=size, max_size=size))
        else:
            out += draw(st.binary(min_size=length, max_size=length))
    return out


def _set(set_id: int, body: bytes, pad: bool) -> bytes:
    padding = b"\0" * (-len(body) % 4) if pad else b""
    return struct.pack("!HH", set_id, 4 + len(body) + len(padding)) + body + padding


@st.composite
def netflow_exchange(draw: st.DrawFn) -> list[bytes]:
    """An exporter's datagrams: a template, data for it (maybe before it), maybe broken."""
    ipfix = draw(st.booleans())
    template_id = draw(st.sampled_from([256, 300, 65535, 255]))
    fields = draw(template_fields(ipfix))
    records = [draw(record(fields)) for _ in range(draw(st.integers(0, 5)))]
    template = _set(2 if ipfix else 0, _template_body(template_id, fields), pad=True)
    data = _set(template_id, b"".join(records), pad=draw(st.booleans()))

    def packet(sets: list[bytes]) -> bytes:
        body = b"".join(sets)
        if ipfix:
            return struct.pack("!HHIII", 10, 16 + len(body), 1_700_000_000, 1, 7) + body
        return struct.pack("!HHIIII", 9, len(sets), 100_000, 1_700_000_000, 1, 7) + body

    order = draw(st.sampled_from(["together", "template first", "data first"]))
    if order == "together":
        datagrams = [packet([template, data])]
    elif order == "template first":
        datagrams = [packet([template]), packet([data])]
    else:
        datagrams = [packet([data]), packet([template])]
    return [draw(maybe_corrupted(st.just(d))) for d in datagrams]


@st.composite
def v5_datagram(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(0, 40))
    present = draw(st.integers(0, 32))
    header = struct.pack("!HHIIIIBBH", 5, count, 1000, 1_700_000_000, 0, 1, 0, 0,
                         draw(st.integers(0, 0xFFFF)))  # fmt: skip
    return header + draw(st.binary(min_size=48 * present, max_size=48 * present))


NETFLOW_DATAGRAMS = st.one_of(
    netflow_exchange(),
    st.lists(maybe_corrupted(v5_datagram()), min_size=1, max_size=3),
    st.lists(st.binary(max_size=1500), min_size=1, max_size=3),
)

# NMEA -----------------------------------------------------------------------------------

# Field text only: '*' and '$' would end the sentence (corrupted() puts those in).
NMEA_GARBAGE = st.one_of(
    st.text(alphabet="0123456789.", max_size=12),
    st.sampled_from(["N", "S", "E", "W", "A", "V", "M", "T", "K", "", "-1", "1e5", "nan", "."]),
    st.text(alphabet="0123456789.-NSEWAVMTK", max_size=8),
)


def _number(digits: int, decimals: int, top: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda whole, fraction: f"{whole:0{digits}d}.{fraction:0{decimals}d}",
        st.integers(0, top),
        st.integers(0, 10**decimals - 1),
    )


NMEA_VALUES = {
    "time": st.builds(
        lambda h, m, s: f"{h:02d}{m:02d}{s:05.2f}",
        st.integers(0, 25),
        st.integers(0, 61),
        st.floats(0, 61),
    ),
    "lat": st.builds(lambda d, m: f"{d:02d}{m:07.4f}", st.integers(0, 91), st.floats(0, 60.5)),
    "lon": st.builds(lambda d, m: f"{d:03d}{m:07.4f}", st.integers(0, 181), st.floats(0, 60.5)),
    "ns": st.sampled_from("NS"),
    "ew": st.sampled_from("EW"),
    "digit": st.integers(0, 9).map(str),
    "count": st.integers(0, 99).map(str),
    "decimal": _number(1, 2, 9999),
    "status": st.sampled_from("AV"),
    "date": st.builds(
        lambda d, m, y: f"{d:02d}{m:02d}{y:02d}",
        st.integers(0, 32),
        st.integers(0, 13),
        st.integers(0, 99),
    ),
    "unit": st.sampled_from(["M", "T", "N", "K"]),
    "empty": st.just(""),
}
LAYOUTS = {
    "GGA": ["time", "lat", "ns", "lon", "ew", "digit", "count", "decimal", "decimal", "unit",
            "decimal", "unit", "empty", "empty"],
    "RMC": ["time", "status", "lat", "ns", "lon", "ew", "decimal", "decimal", "date", "decimal",
            "ew"],
    "VTG": ["decimal", "unit", "decimal", "unit", "decimal", "unit", "decimal", "unit"],
}  # fmt: skip


@st.composite
def nmea_fields(draw: st.DrawFn, kind: str) -> list[str]:
    layout = LAYOUTS.get(kind)
    if layout is None or draw(st.integers(0, 9)) == 0:
        return draw(st.lists(NMEA_GARBAGE, max_size=20))
    fields = []
    for name in layout:
        broken = draw(st.integers(0, 39))
        value = NMEA_GARBAGE if broken == 0 else st.just("") if broken == 1 else NMEA_VALUES[name]
        fields.append(draw(value))
    return fields[: draw(st.integers(len(fields) - 2, len(fields)))]


@st.composite
def nmea_sentence(draw: st.DrawFn) -> bytes:
    talker = draw(st.sampled_from(["GP", "GN", "GL", "ZZ", "G1"]))
    kind = draw(st.sampled_from(["GGA", "RMC", "VTG", "GGA", "RMC", "GSV", "XXX"]))
    body = ",".join([talker + kind, *draw(nmea_fields(kind))])
    good = checksum(body.encode())
    sum_text = draw(st.sampled_from([f"{good:02X}"] * 6 + [f"{good:02x}", "ZZ", "0", ""]))
    star = "*" if sum_text or draw(st.booleans()) else ""
    end = draw(st.sampled_from(["\r\n", "\n", "", "\r"]))
    return f"${body}{star}{sum_text}{end}".encode()


NMEA_LINES = st.lists(
    st.one_of(nmea_sentence(), nmea_sentence(), nmea_sentence().flatmap(corrupted),
              st.binary(max_size=120)),
    min_size=1,
    max_size=8,
)  # fmt: skip

# JSON -----------------------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**1000),
    st.floats(allow_nan=True, allow_infinity=True),
    ANY_TEXT,
    SURROGATES,
    st.text(max_size=300),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(ANY_TEXT, inner, max_size=5),
    max_leaves=30,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def shaped_document(draw: st.DrawFn) -> bytes:
    """A body shaped for the fuzz mappings, each mapped value drawn from any JSON."""
    item = st.fixed_dictionaries(
        {},
        optional={"name": JSON_VALUES, "service": JSON_VALUES, "t": JSON_VALUES,
                  "state": JSON_VALUES},
    )  # fmt: skip
    document = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "name": JSON_VALUES,
                "value": JSON_VALUES,
                "host": JSON_VALUES,
                "at": JSON_VALUES,
                "nested": JSON_VALUES,
                "list": st.lists(JSON_VALUES, max_size=3),
                "site": JSON_VALUES,
                "items": st.one_of(st.lists(item, max_size=8), JSON_VALUES),
            },
        )
    )
    return _dumps(document)


@st.composite
def deep_json(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(60, 3000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    inner = opener * depth + "1" + closer * depth
    return inner.encode() if draw(st.booleans()) else f'{{"items": [{inner}]}}'.encode()


@st.composite
def huge_map(draw: st.DrawFn) -> bytes:
    size = draw(st.integers(1000, 5000))
    body: dict[str, Any] = {f"k{i}": i for i in range(size)}
    body["name"] = "x" * draw(st.sampled_from([0, 9000, 70_000]))
    body["nested"] = {f"n{i}": "v" * 10 for i in range(size // 10)}
    return _dumps(body)


JSON_BODIES = st.one_of(
    shaped_document(),
    JSON_VALUES.map(_dumps),
    deep_json(),
    huge_map(),
    maybe_corrupted(shaped_document()),
    st.binary(max_size=500),
)

# Ingest requests -------------------------------------------------------------------------


@st.composite
def event(draw: st.DrawFn) -> event_pb2.Event:
    made = event_pb2.Event(
        id=draw(st.text(max_size=80)),
        type=draw(st.sampled_from(["syslog", "raw", "netflow", ""])),
        host=draw(ANY_TEXT),
        service=draw(ANY_TEXT),
        message=draw(st.one_of(ANY_TEXT, st.sampled_from(["m" * 65_537, "é" * 32_769]))),
        severity=draw(st.integers(0, 8)),
    )
    made.attributes.update(draw(st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=6)))
    made.tags.update(draw(st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=3)))
    if draw(st.booleans()):
        made.raw = draw(st.binary(max_size=300))
    return made


@st.composite
def stream_request(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        hello = ingest_pb2.Hello(agent_id=draw(ANY_TEXT), hostname=draw(ANY_TEXT))
        return ingest_pb2.StreamRequest(hello=hello).SerializeToString()
    batch = event_pb2.EventBatch(
        batch_id=draw(st.text(max_size=70)),
        agent_id="site-a",
        seq=draw(st.integers(0, 2**64 - 1)),
        events=draw(st.lists(event(), max_size=6)),
    )
    batch.trace_context.update(draw(st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=2)))
    data = ingest_pb2.StreamRequest(batch=batch).SerializeToString()
    return draw(st.one_of(st.just(data), corrupted(data), bad_utf8_in(data)))


@st.composite
def bad_utf8_in(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one byte turned into 0xFF (often inside a string field)."""
    if not data:
        return data
    position = draw(st.integers(0, len(data) - 1))
    return data[:position] + b"\xff" + data[position + 1 :]


INGEST_REQUESTS = st.one_of(stream_request(), st.binary(max_size=400))
