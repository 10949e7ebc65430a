"""Real log samples from ../shared/data as Events, parsed the way the edge agent parses syslog."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from anomaly_svc.agents.base import EventView, Window
from edge_agent.parsers.syslog import FACILITIES, Received, parse_syslog
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import now_ns

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
OPENWRT = DATA / "samples" / "openwrt" / "openwrt_logread_nikolaysalinder_2020-2023.log"
CROWDSEC = DATA / "samples" / "crowdsec_hub_tests"
BGL = DATA / "loghub" / "BGL" / "BGL_2k.log"
HDFS = DATA / "loghub" / "logai_HDFS_5k"
LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")
# OpenWrt logread: "Www Mmm dd HH:MM:SS YYYY facility.level prog[pid]: msg"
_LOGREAD = re.compile(r"^\w{3} (\w{3}) +(\d+) (\d\d:\d\d:\d\d) (\d{4}) (\w+)\.(\w+) (.*)$")


def _received() -> Received:
    return Received(received_ns=now_ns(), src_ip="192.0.2.1", source="site-a/syslog-udp")


def syslog_events(lines: list[str]) -> list[event_pb2.Event]:
    received = _received()
    return [parse_syslog(line.encode(), received) for line in lines if line.strip()]


def openwrt_line_as_syslog(line: str) -> str:
    match = _LOGREAD.match(line)
    if match is None:
        raise ValueError(f"not an OpenWrt logread line: {line!r}")
    month, day, clock, year, facility, level, rest = match.groups()
    pri = FACILITIES.index(facility) * 8 + LEVELS.index(level)
    return f"<{pri}>{month} {int(day):2d} {year} {clock} openwrt {rest}"


def openwrt_events() -> list[event_pb2.Event]:
    lines = OPENWRT.read_text().splitlines()
    return syslog_events([openwrt_line_as_syslog(line) for line in lines if line.strip()])


def crowdsec_events(test: str) -> list[event_pb2.Event]:
    (path,) = CROWDSEC.glob(f"{test}__*.log")
    return syslog_events(path.read_text().splitlines())


@dataclass(frozen=True)
class Expected:
    test: str
    count: int
    source_ips: frozenset[str]


def expected_alerts() -> list[Expected]:
    with (CROWDSEC / "EXPECTED_ALERTS.csv").open(newline="") as handle:
        return [
            Expected(
                row["test"],
                int(row["expected_alert_count"]),
                frozenset(ip for ip in row["alerted_source_ips"].split(";") if ip),
            )
            for row in csv.DictReader(handle)
        ]


def window(events: list[event_pb2.Event]) -> Window:
    views = sorted((EventView.from_proto(e) for e in events), key=lambda v: v.time_ns)
    start = views[0].time_ns if views else 0
    end = views[-1].time_ns + 1 if views else 1
    return Window(start, end, views)
