"""Shared helpers for the redaction and enrichment tests: events, pipelines, real log data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from gen.edgebot.v1 import event_pb2
from pipeline_svc.config import PipelineSection
from pipeline_svc.pipeline import BatchResult, Pipeline

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LOGHUB = ("Linux", "OpenSSH", "HDFS", "BGL", "Thunderbird")
COUNT_PREFIX = "redaction."


def pipeline(processors: list[dict[str, Any]] | None = None) -> Pipeline:
    section = PipelineSection.model_validate(
        {"processors": processors} if processors is not None else {}
    )
    return Pipeline.from_config(section)


def event(message: str = "", **fields: Any) -> event_pb2.Event:
    return event_pb2.Event(id=fields.pop("id", "e1"), message=message, **fields)


async def run(
    events: list[event_pb2.Event], processors: list[dict[str, Any]] | None = None
) -> BatchResult:
    return await pipeline(processors).run(events)


async def redact(message: str, **settings: Any) -> event_pb2.Event:
    """One message through mask_patterns alone, with the given settings."""
    result = await run([event(message)], [{"type": "mask_patterns", **settings}])
    return result.events[0]


def masked_kinds(events: list[event_pb2.Event]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for item in events:
        for key, value in item.tags.items():
            if key.startswith(COUNT_PREFIX) and key != "redaction.dropped":
                counts[key.removeprefix(COUNT_PREFIX)] += int(value)
    return counts


def log_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line.rstrip("\r") for line in text.splitlines() if line.strip()]


def loghub(name: str) -> Path:
    return DATA / "loghub" / name / f"{name}_2k.log"


def syslog_events(lines: list[str]) -> list[event_pb2.Event]:
    """Events shaped like the edge syslog parser's (whole line as message: the harder case)."""
    return [
        event_pb2.Event(
            id=f"line-{number}",
            type="syslog",
            host="router-1",
            message=line,
            attributes={
                "syslog.facility": "daemon",
                "syslog.format": "rfc3164",
                "net.src_ip": "192.168.1.1",
                "syslog.pid": str(number),
            },
        )
        for number, line in enumerate(lines)
    ]
