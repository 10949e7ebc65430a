"""What the benchmark's figures rest on: realistic syslog, per-event ack latency, rates."""

from __future__ import annotations

from pathlib import Path

from bench.corpus import LineMaker, device_name, load_templates
from bench.endtoend import percentile, steady_rate
from bench.fleet import FleetResult, TimedSpool
from bench.profiling import summarise
from edge_agent.parsers.syslog import Received, parse_syslog
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import now_ns


def test_generated_lines_are_syslog_the_edge_parser_reads() -> None:
    templates = load_templates()
    assert len(templates) > 4000  # OpenSSH, Linux, OpenWrt and CrowdSec samples
    maker = LineMaker(templates, device_name(7), seed=7)
    received = Received(now_ns(), "10.0.0.7", "bench-007/syslog_udp")
    events = [parse_syslog(line, received) for line in maker.lines(3000)]
    assert {e.type for e in events} == {"syslog"}
    assert {e.host for e in events} == {"site007-gw"}
    assert len({e.service for e in events}) > 10
    assert all(e.message for e in events)
    other = LineMaker(templates, device_name(8), seed=8).lines(50)
    assert not set(other) & set(maker.lines(50))


async def test_timed_spool_reports_one_latency_per_acked_event(tmp_path: Path) -> None:
    result = FleetResult()
    spool = TimedSpool(tmp_path / "spool.db", result, go=[0.0])
    await spool.open()
    try:
        events = [event_pb2.Event(id=f"e{n}", message="m") for n in range(25)]
        await spool.append(events[:10])
        await spool.append(events[10:])
        first = await spool.form_batch(15, 1 << 20)
        second = await spool.form_batch(15, 1 << 20)
        assert first is not None
        assert second is not None
        await spool.ack(second.batch_id)
        await spool.ack(first.batch_id)
    finally:
        await spool.close()
    assert (result.appended, result.acked) == (25, 25)
    assert len(result.latencies_ms) == 25
    assert all(latency >= 0 for latency in result.latencies_ms)
    assert [count for _, count in result.acks] == [10, 15]


def test_steady_rate_leaves_out_ramp_and_tail() -> None:
    # 1,000 events/s between 1 s and 9 s, a slow start and a straggler at the end.
    acks = [(0.5, 50)] + [(1 + n / 10, 100) for n in range(81)] + [(30.0, 50)]
    total = sum(count for _, count in acks)
    assert abs(steady_rate(acks, total) - 1000) < 20
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 3.0


def test_profile_summary_counts_innermost_and_enclosing_frames() -> None:
    raw = (
        "main (ingest_svc/__main__.py:5);handle (ingest_svc/server.py:10);"
        "check (ingest_svc/validation.py:3) 30\n"
        "main (ingest_svc/__main__.py:5);select (selectors.py:1) 10\n"
    )
    summary = summarise(raw)
    assert summary["samples"] == 40
    assert summary["self_percent"]["check (ingest_svc/validation.py)"] == 75.0
    assert summary["inclusive_percent"]["handle (ingest_svc/server.py)"] == 75.0
    assert summary["inclusive_percent"]["main (ingest_svc/__main__.py)"] == 100.0
