"""The syslog parser on real lines: logger, SysLogHandler, loghub, iptables, RFC examples."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.parsers.syslog import Received, parse_syslog
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import datetime_to_ns, ns_to_iso, ts_to_ns

DATA = Path("/work/shared/data")
SRC = "192.0.2.7"
SEV = event_pb2.Severity


def received_at(iso: str, zone: str = "UTC") -> Received:
    when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return Received(datetime_to_ns(when), SRC, "site-a/syslog_udp", zoneinfo.ZoneInfo(zone))


@dataclass
class Case:
    name: str
    line: bytes
    received: str
    time: str
    host: str
    service: str
    severity: int
    message: str
    attributes: dict[str, str] = field(default_factory=dict)
    zone: str = "UTC"


CASES = [
    Case(
        "logger --rfc3164 -p local0.warning",
        b"<132>Nov 22 07:10:57 vm myapp: hello",
        "2024-11-22T08:00:00Z",
        "2024-11-22T07:10:57.000000Z",
        "vm",
        "myapp",
        SEV.SEVERITY_WARNING,
        "hello",
        {"syslog.facility": "local0", "syslog.format": "rfc3164", "net.src_ip": SRC},
    ),
    Case(
        "logger --rfc5424 with --id, --msgid and --sd-id",
        b'<132>1 2024-11-22T08:00:01.138500+00:00 vm myapp 42 ID47 [timeQuality tzKnown="1" '
        b'isSynced="0"][ex@32473 k="v"] hello 5424',
        "2024-11-22T08:00:02Z",
        "2024-11-22T08:00:01.138500Z",
        "vm",
        "myapp",
        SEV.SEVERITY_WARNING,
        "hello 5424",
        {
            "syslog.format": "rfc5424",
            "syslog.procid": "42",
            "syslog.pid": "42",
            "syslog.msgid": "ID47",
            "sd.timeQuality.tzKnown": "1",
            "sd.timeQuality.isSynced": "0",
            "sd.ex@32473.k": "v",
        },
    ),
    Case(
        "logger --rfc5424 default priority, PROCID and MSGID nil",
        b'<13>1 2024-11-22T08:00:01.141319+00:00 vm root - - [timeQuality tzKnown="1" '
        b'isSynced="0"] hi',
        "2024-11-22T08:00:02Z",
        "2024-11-22T08:00:01.141319Z",
        "vm",
        "root",
        SEV.SEVERITY_NOTICE,
        "hi",
        {"syslog.facility": "user"},
    ),
    Case(
        "Python SysLogHandler: no timestamp, no hostname, trailing NUL",
        b"<11>pyapp: py msg\x00",
        "2024-05-01T10:00:00Z",
        "2024-05-01T10:00:00.000000Z",
        SRC,
        "pyapp",
        SEV.SEVERITY_ERROR,
        "py msg",
        {"syslog.facility": "user"},
    ),
    Case(
        "loghub Linux: no PRI, tag with parentheses and pid",
        b"Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; logname= uid=0 "
        b"euid=0 tty=NODEVssh ruser= rhost=218.188.2.4 ",
        "2024-06-20T00:00:00Z",
        "2024-06-14T15:16:01.000000Z",
        "combo",
        "sshd(pam_unix)",
        SEV.SEVERITY_NOTICE,
        "authentication failure; logname= uid=0 euid=0 tty=NODEVssh ruser= rhost=218.188.2.4 ",
        {"syslog.pid": "19939", "syslog.facility": "user"},
    ),
    Case(
        "loghub OpenSSH",
        b"Dec 10 06:55:46 LabSZ sshd[24200]: Invalid user webmaster from 173.234.31.186",
        "2024-12-11T00:00:00Z",
        "2024-12-10T06:55:46.000000Z",
        "LabSZ",
        "sshd",
        SEV.SEVERITY_NOTICE,
        "Invalid user webmaster from 173.234.31.186",
        {"syslog.pid": "24200"},
    ),
    Case(
        "iptables: RFC3339 time after an RFC3164 PRI",
        b"<6>2021-03-12T14:10:18Z Hostname kernel: [wan-lan-default-D]IN=eth0 OUT= "
        b"SRC=67.43.156.15 DST=10.4.0.5",
        "2021-03-12T14:10:19Z",
        "2021-03-12T14:10:18.000000Z",
        "Hostname",
        "kernel",
        SEV.SEVERITY_INFORMATIONAL,
        "[wan-lan-default-D]IN=eth0 OUT= SRC=67.43.156.15 DST=10.4.0.5",
        {"syslog.facility": "kern"},
    ),
    Case(
        "iptables: hostname missing, the first word is the tag",
        b"Jan  8 03:37:09 DENY: IN=eth0 OUT= SRC=192.168.2.71 DST=192.168.2.83",
        "2024-01-08T04:00:00Z",
        "2024-01-08T03:37:09.000000Z",
        SRC,
        "DENY",
        SEV.SEVERITY_NOTICE,
        "IN=eth0 OUT= SRC=192.168.2.71 DST=192.168.2.83",
    ),
    Case(
        "MikroTik: RFC3339 with offset, IP as host, no tag",
        b"2023-03-18T20:36:59.594792+01:00 10.120.127.1 firewall,info drop-tcp input: "
        b"in:ether1-WAN",
        "2023-03-18T19:37:00Z",
        "2023-03-18T19:36:59.594792Z",
        "10.120.127.1",
        "",
        SEV.SEVERITY_NOTICE,
        "firewall,info drop-tcp input: in:ether1-WAN",
    ),
    Case(
        "RFC 5424 example 3: structured data and a BOM",
        b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID"
        b'@32473 iut="3" eventSource="Application" eventID="1011"] \xef\xbb\xbfAn application '
        b"event log entry...",
        "2003-10-11T22:14:16Z",
        "2003-10-11T22:14:15.003000Z",
        "mymachine.example.com",
        "evntslog",
        SEV.SEVERITY_NOTICE,
        "An application event log entry...",
        {
            "syslog.facility": "local4",
            "syslog.msgid": "ID47",
            "sd.exampleSDID@32473.iut": "3",
            "sd.exampleSDID@32473.eventSource": "Application",
            "sd.exampleSDID@32473.eventID": "1011",
        },
    ),
    Case(
        "RFC 5424 example 2: negative offset, microseconds",
        b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to "
        b"make the do-nuts.",
        "2003-08-24T12:14:16Z",
        "2003-08-24T12:14:15.000003Z",
        "192.0.2.1",
        "myproc",
        SEV.SEVERITY_NOTICE,
        "%% It's time to make the do-nuts.",
        {"syslog.pid": "8710", "syslog.procid": "8710"},
    ),
    Case(
        "RFC 5424: every header field NILVALUE, no message",
        b"<34>1 - - - - - -",
        "2024-02-02T02:02:02Z",
        "2024-02-02T02:02:02.000000Z",
        SRC,
        "",
        SEV.SEVERITY_CRITICAL,
        "",
        {"syslog.facility": "auth", "syslog.format": "rfc5424"},
    ),
    Case(
        "RFC 5424: escaped characters in a PARAM-VALUE, element without params",
        b'<14>1 2024-01-01T00:00:00Z h app - - [a@1 x="q\\"uote\\]br\\\\s"][flag@1] body',
        "2024-01-01T00:00:01Z",
        "2024-01-01T00:00:00.000000Z",
        "h",
        "app",
        SEV.SEVERITY_INFORMATIONAL,
        "body",
        {"sd.a@1.x": 'q"uote]br\\s', "sd.flag@1": ""},
    ),
    Case(
        "New Year: a December line received in January is last year's",
        b"<13>Dec 31 23:59:58 host app: late",
        "2025-01-01T00:00:05Z",
        "2024-12-31T23:59:58.000000Z",
        "host",
        "app",
        SEV.SEVERITY_NOTICE,
        "late",
    ),
    Case(
        "New Year: a sender slightly ahead is already in next year",
        b"<13>Jan  1 00:00:03 host app: early",
        "2024-12-31T23:59:58Z",
        "2025-01-01T00:00:03.000000Z",
        "host",
        "app",
        SEV.SEVERITY_NOTICE,
        "early",
    ),
    Case(
        "RFC 3164 in the configured zone (Europe/Berlin, winter)",
        b"<13>Jan  1 00:30:00 host app: zoned",
        "2024-12-31T23:31:00Z",
        "2024-12-31T23:30:00.000000Z",
        "host",
        "app",
        SEV.SEVERITY_NOTICE,
        "zoned",
        zone="Europe/Berlin",
    ),
    Case(
        "Message without any header still becomes syslog (user.notice, receive time)",
        b"Exit (root): Disconnect received",
        "2024-03-03T03:03:03Z",
        "2024-03-03T03:03:03.000000Z",
        SRC,
        "",
        SEV.SEVERITY_NOTICE,
        "Exit (root): Disconnect received",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_parses_real_lines(case: Case) -> None:
    received = received_at(case.received, case.zone)
    event = parse_syslog(case.line, received)
    assert event.type == "syslog", event.attributes.get("parse.error")
    assert ns_to_iso(ts_to_ns(event.time)) == case.time
    assert ts_to_ns(event.observed_time) == received.received_ns
    assert (event.host, event.service, event.severity, event.message) == (
        case.host,
        case.service,
        case.severity,
        case.message,
    )
    assert {k: event.attributes[k] for k in case.attributes} == case.attributes
    assert event.source == "site-a/syslog_udp"
    assert event.raw == case.line
    assert len(event.id) == 36


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "empty"),
        (b"\x00\r\n", "empty"),
        (b"<999>Nov 22 07:10:57 vm app: x", "PRI 999"),
        (b"<12x>hello", "malformed PRI"),
        (b"<13>1 2024-01-01T00:00:00Z", "header incomplete"),
        (b"<13>1 2024-13-45T00:00:00Z h a - - - m", "invalid timestamp"),
        (b"<13>1 2024-01-01T00:00:00 h a - - - m", "invalid RFC 5424 timestamp"),
        (b'<13>1 2024-01-01T00:00:00Z h a - - [x k="v] m', "not closed"),
        (b"<13>1 2024-01-01T00:00:00Z h a - - nosd m", "structured data"),
        (b"<13>2 2024-01-01T00:00:00Z h a - - - m", "unsupported syslog version 2"),
        (b"<13>Feb 30 10:00:00 h a: m", "invalid date"),
    ],
)
def test_unparseable_input_is_kept_as_raw(line: bytes, reason: str) -> None:
    received = received_at("2024-06-01T00:00:00Z")
    event = parse_syslog(line, received)
    assert event.type == "raw"
    assert reason in event.attributes["parse.error"]
    assert event.raw == line
    assert event.host == SRC
    assert event.attributes["net.src_ip"] == SRC
    assert ts_to_ns(event.time) == received.received_ns


def test_invalid_utf8_is_replaced_not_refused() -> None:
    event = parse_syslog(
        b"<13>Nov 22 07:10:57 vm app: caf\xe9 \xff", received_at("2024-11-22T08:00:00Z")
    )
    assert event.type == "syslog"
    assert event.message == "caf\ufffd \ufffd"


def test_one_timestamp_read_again_follows_each_arrivals_year_zone_and_fraction() -> None:
    # Times are computed once per distinct second and zone; a repeat must still be read
    # against its own arrival (year, zone) and keep its own fraction.
    line = b"<13>Dec 31 23:59:58 host app: late"

    def read(data: bytes, received: Received) -> str:
        return ns_to_iso(ts_to_ns(parse_syslog(data, received).time))

    assert read(line, received_at("2024-12-31T23:59:59Z")) == "2024-12-31T23:59:58.000000Z"
    assert read(line, received_at("2025-01-01T00:00:05Z")) == "2024-12-31T23:59:58.000000Z"
    assert read(line, received_at("2026-03-01T00:00:00Z")) == "2025-12-31T23:59:58.000000Z"
    berlin = received_at("2026-03-01T00:00:00Z", "Europe/Berlin")
    assert read(line, berlin) == "2025-12-31T22:59:58.000000Z"
    fraction = b"<13>Dec 31 23:59:58.25 host app: late"
    assert read(fraction, berlin) == "2025-12-31T22:59:58.250000Z"
    assert parse_syslog(b"<13>Feb 30 10:00:00 host app: x", berlin).type == "raw"


def _sample_lines() -> list[bytes]:
    files = [DATA / "loghub/Linux/Linux_2k.log", DATA / "loghub/OpenSSH/OpenSSH_2k.log"]
    files += sorted((DATA / "samples").glob("*/*.log"))
    lines: list[bytes] = []
    for path in files:
        lines.extend(line.rstrip(b"\r") for line in path.read_bytes().splitlines() if line.strip())
    return lines


def test_every_sample_line_keeps_its_text() -> None:
    lines = _sample_lines()
    assert len(lines) > 4000
    received = received_at("2024-06-01T00:00:00Z")
    for line in lines:
        event = parse_syslog(line, received)
        assert event.type == "syslog", (line, event.attributes.get("parse.error"))
        assert event.message in line.decode()
        assert event.raw == line


SYSLOG_SEEDS = [case.line for case in CASES] + [
    b'<165>1 2003-10-11T22:14:15.003Z host app - ID47 [id@1 a="1"] msg',
    b"<13>Dec 31 23:59:58 host app[12]: x",
]


@st.composite
def mangled_syslog(draw: st.DrawFn) -> bytes:
    line = bytearray(draw(st.sampled_from(SYSLOG_SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(line)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(list(b'<>[]"\\= -:0123456789TZ+.\xef\xbb\xbf\x00\xff')))
        if action == "insert":
            line.insert(position, byte)
        elif position < len(line):
            if action == "delete":
                del line[position]
            else:
                line[position] = byte
    return bytes(line)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), mangled_syslog()))
def test_never_raises_and_always_returns_an_event(data: bytes) -> None:
    received = received_at("2024-12-31T23:59:59Z", "America/New_York")
    event = parse_syslog(data, received)
    assert isinstance(event, event_pb2.Event)
    assert event.raw == data
    assert event.id
    assert ts_to_ns(event.observed_time) == received.received_ns
    if event.type == "raw":
        assert event.attributes["parse.error"]
    else:
        assert event.type == "syslog"
        assert event.attributes["syslog.format"] in ("rfc3164", "rfc5424")
        assert SEV.SEVERITY_EMERGENCY <= event.severity <= SEV.SEVERITY_DEBUG
    event.SerializeToString()
