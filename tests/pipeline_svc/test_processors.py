"""Severity mapping and timestamp normalisation, the pipeline's first real processors."""

from __future__ import annotations

import datetime as dt

import pytest

from gen.edgebot.v1 import event_pb2
from mesh.timeutil import datetime_to_ns, ns_to_ts, ts_to_ns
from pipeline_svc.config import PipelineSection
from pipeline_svc.pipeline import Pipeline
from pipeline_svc.processors.timestamp import parse_time

UTC = dt.UTC
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


async def run(  # type: ignore[no-untyped-def]
    events: list[event_pb2.Event], processors: list[dict[str, object]] | None = None
):
    section = PipelineSection.model_validate(
        {"processors": processors} if processors is not None else {}
    )
    return await Pipeline.from_config(section).run(events)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("WARN", event_pb2.SEVERITY_WARNING),
        ("error", event_pb2.SEVERITY_ERROR),
        ("crit", event_pb2.SEVERITY_CRITICAL),
        ("fatal", event_pb2.SEVERITY_CRITICAL),
        ("panic", event_pb2.SEVERITY_EMERGENCY),
        ("notice", event_pb2.SEVERITY_NOTICE),
        ("trace", event_pb2.SEVERITY_DEBUG),
        ("3", event_pb2.SEVERITY_ERROR),
        ("0", event_pb2.SEVERITY_EMERGENCY),
    ],
)
async def test_severity_names_and_numbers_map_to_syslog(
    value: str, expected: event_pb2.Severity.ValueType
) -> None:
    result = await run([event_pb2.Event(id="e", attributes={"level": value})])
    assert result.events[0].severity == expected


async def test_severity_set_by_the_input_is_kept() -> None:
    event = event_pb2.Event(id="e", severity=event_pb2.SEVERITY_ERROR, attributes={"level": "info"})
    assert (await run([event])).events[0].severity == event_pb2.SEVERITY_ERROR


async def test_unknown_severity_falls_back_to_the_default() -> None:
    event = event_pb2.Event(id="e", attributes={"level": "loud"})
    assert (await run([event])).events[0].severity == event_pb2.SEVERITY_INFORMATIONAL


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1767323045", NOW),
        ("1767323045.5", NOW + dt.timedelta(milliseconds=500)),
        ("1767323045123", NOW + dt.timedelta(milliseconds=123)),
        ("1767323045123456", NOW + dt.timedelta(microseconds=123456)),
        ("1767323045123456789", NOW + dt.timedelta(microseconds=123456)),
        ("2026-01-02T03:04:05Z", NOW),
        ("2026-01-02T04:04:05+01:00", NOW),
        ("2026-01-02 03:04:05.250", NOW + dt.timedelta(milliseconds=250)),
        ("Jan  2 03:04:05", NOW),
        # A December line read on 2 January belongs to the year before.
        ("Dec 31 23:59:59", dt.datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_time_formats(text: str, expected: dt.datetime) -> None:
    parsed = parse_time(text, UTC, NOW)
    assert parsed is not None
    assert abs(parsed - datetime_to_ns(expected)) < 1000


def test_unparseable_time_is_none() -> None:
    assert parse_time("yesterday-ish", UTC, NOW) is None
    assert parse_time("Foo 31 23:59:59", UTC, NOW) is None


async def test_missing_times_are_filled_from_attribute_or_observed_time() -> None:
    from_attribute = event_pb2.Event(id="a", attributes={"timestamp": "1767323045"})
    observed_only = event_pb2.Event(id="b")
    ns_to_ts(datetime_to_ns(NOW), observed_only.observed_time)
    result = await run([from_attribute, observed_only])
    assert ts_to_ns(result.events[0].time) == datetime_to_ns(NOW)
    assert ts_to_ns(result.events[0].observed_time) > 0
    assert ts_to_ns(result.events[1].time) == datetime_to_ns(NOW)


async def test_future_and_ancient_times_are_flagged() -> None:
    future = event_pb2.Event(id="f")
    ns_to_ts(datetime_to_ns(dt.datetime.now(UTC) + dt.timedelta(hours=2)), future.time)
    ancient = event_pb2.Event(id="p")
    ns_to_ts(datetime_to_ns(dt.datetime(2001, 1, 1, tzinfo=UTC)), ancient.time)
    normal = event_pb2.Event(id="n")
    ns_to_ts(datetime_to_ns(dt.datetime.now(UTC)), normal.time)
    result = await run([future, ancient, normal])
    assert [e.tags.get("time_flag", "") for e in result.events] == ["future", "past", ""]


async def test_processor_stats_count_what_each_did() -> None:
    events = [event_pb2.Event(id=str(i), attributes={"level": "warn"}) for i in range(3)]
    pipeline = Pipeline.from_config(PipelineSection())
    await pipeline.run(events)
    assert pipeline.totals["severity_map"].processed == 3
    assert pipeline.totals["severity_map"].modified == 3
    assert pipeline.totals["timestamp_normalize"].modified == 3


async def test_disabled_processor_does_not_run() -> None:
    result = await run(
        [event_pb2.Event(id="e", attributes={"level": "warn"})],
        [{"type": "timestamp_normalize"}, {"type": "severity_map", "enabled": False}],
    )
    assert result.events[0].severity == event_pb2.SEVERITY_UNSPECIFIED
