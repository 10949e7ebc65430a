"""Events/s per core through the default deterministic pipeline, on real syslog samples.

Run: .venv/bin/python -m bench.pipeline_bench [--events 50000] [--batch 1000]

Times are CPU time of the benchmark thread, best of --rounds, so other processes on the
machine do not inflate them. Events are built the way the edge syslog parser builds them
(message after the tag, service, host, both times, syslog.facility / syslog.format /
syslog.pid / net.src_ip attributes) from the OpenWrt logread and Loghub Linux samples in
../shared/data. One process, one thread: the figures are per core.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import defaultdict
from pathlib import Path

from gen.edgebot.v1 import event_pb2
from pipeline_svc.config import PipelineSection
from pipeline_svc.pipeline import Pipeline
from pipeline_svc.processors import Item

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLES = {
    "openwrt": DATA / "samples/openwrt/openwrt_logread_nikolaysalinder_2020-2023.log",
    "linux": DATA / "loghub/Linux/Linux_2k.log",
}
# 'Thu Nov 12 13:20:06 2020 kern.info kernel: msg' (logread)
_LOGREAD = re.compile(
    r"\w{3} (?P<time>\w{3} +\d+ [\d:]{8}) \d{4} (?P<facility>\w+)\.(?P<level>\w+) "
    r"(?P<tag>[^:\s]+): (?P<msg>.*)"
)
# 'Jun 14 15:16:01 combo sshd(pam_unix)[19939]: msg' (RFC 3164 as stored by syslogd)
_BSD = re.compile(r"(?P<time>\w{3} +\d+ [\d:]{8}) (?P<host>\S+) (?P<tag>[^:\s]+): (?P<msg>.*)")
_TAG = re.compile(r"(?P<program>[^\[]+)(?:\[(?P<pid>\d+)\])?")
RECEIVED_NS = time.time_ns()
_LEVELS = {"emerg": 1, "alert": 2, "crit": 3, "err": 4, "warn": 5, "notice": 6, "info": 7}


def to_event(line: str, number: int) -> event_pb2.Event | None:
    match = _LOGREAD.match(line) or _BSD.match(line)
    if match is None:
        return None
    fields = match.groupdict()
    tag = _TAG.match(fields["tag"])
    attributes = {
        "syslog.facility": fields.get("facility") or "user",
        "syslog.format": "rfc3164",
        "net.src_ip": "192.168.1.1",
    }
    if tag and tag["pid"]:
        attributes["syslog.pid"] = tag["pid"]
    # Lines stored without a PRI get RFC 3164's default, user.notice, as the parser does.
    level = _LEVELS.get(fields.get("level") or "notice", _LEVELS["notice"])
    event = event_pb2.Event(
        id=f"bench-{number}",
        type="syslog",
        source="site-a/syslog-udp",
        host=fields.get("host") or "OpenWrt",
        service=tag["program"] if tag else "",
        severity=event_pb2.Severity.ValueType(level),
        message=fields["msg"],
        attributes=attributes,
    )
    # The parser sets both times (the sender's and the arrival); these are what it would set.
    event.time.FromNanoseconds(RECEIVED_NS - 1_000_000)
    event.observed_time.FromNanoseconds(RECEIVED_NS)
    return event


def load(path: Path) -> list[event_pb2.Event]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    events = [to_event(line.rstrip("\r"), i) for i, line in enumerate(lines)]
    return [e for e in events if e is not None]


def batches(
    prototypes: list[event_pb2.Event], total: int, size: int
) -> list[list[event_pb2.Event]]:
    """Fresh copies (processors change events in place), built before the clock starts."""
    copies = []
    for i in range(total):
        event = event_pb2.Event()
        event.CopyFrom(prototypes[i % len(prototypes)])
        copies.append(event)
    return [copies[i : i + size] for i in range(0, total, size)]


async def stage_times(pipeline: Pipeline, work: list[list[event_pb2.Event]]) -> dict[str, int]:
    """CPU nanoseconds per processor (thread time: not inflated by other processes)."""
    spent: dict[str, int] = defaultdict(int)
    for batch in work:
        live = [Item(index, event) for index, event in enumerate(batch)]
        for processor in pipeline.processors:
            start = time.thread_time_ns()
            outcome = await processor.process_async(live)
            spent[processor.name] += time.thread_time_ns() - start
            gone = {q.index for q in outcome.quarantined} | {r.index for r in outcome.rejected}
            live = [item for item in live if item.index not in gone]
    return spent


async def end_to_end(pipeline: Pipeline, work: list[list[event_pb2.Event]]) -> tuple[float, int]:
    """(CPU seconds through Pipeline.run, events quarantined)."""
    quarantined = 0
    start = time.thread_time()
    for batch in work:
        quarantined += len((await pipeline.run(batch)).quarantined)
    return time.thread_time() - start, quarantined


async def measure(name: str, path: Path, total: int, size: int, rounds: int) -> None:
    prototypes = load(path)
    best: dict[str, int] = {}
    best_total = float("inf")
    quarantined = 0
    for _ in range(rounds):
        pipeline = Pipeline.from_config(PipelineSection())
        for processor, spent in (
            await stage_times(pipeline, batches(prototypes, total, size))
        ).items():
            best[processor] = min(best.get(processor, spent), spent)
        pipeline = Pipeline.from_config(PipelineSection())
        seconds, quarantined = await end_to_end(pipeline, batches(prototypes, total, size))
        best_total = min(best_total, seconds)
    print(
        f"\n{name}: {len(prototypes)} distinct lines, {total} events, batches of {size}, "
        f"best of {rounds}"
    )
    print(f"{'processor':<22}{'µs/event':>10}{'events/s':>14}")
    for processor, spent in best.items():
        print(f"{processor:<22}{spent / total / 1e3:>10.2f}{total / spent * 1e9:>14,.0f}")
    print(
        f"{'Pipeline.run, total':<22}{best_total / total * 1e6:>10.2f}{total / best_total:>14,.0f}"
    )
    print(f"quarantined: {quarantined}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name, path in SAMPLES.items():
        asyncio.run(measure(name, path, args.events, args.batch, args.rounds))


if __name__ == "__main__":
    main()
