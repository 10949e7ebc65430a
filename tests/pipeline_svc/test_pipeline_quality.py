"""Quality validation: bad events become per-event errors, the rest of the batch goes on."""

from __future__ import annotations

import datetime as dt

from gen.edgebot.v1 import event_pb2
from mesh.timeutil import datetime_to_ns, ns_to_ts
from pipeline_svc.config import PipelineSection
from pipeline_svc.pipeline import Pipeline


def event(event_id: str, when: dt.datetime | None = None, **fields: object) -> event_pb2.Event:
    fields.setdefault("message", "m")
    built = event_pb2.Event(id=event_id, type="syslog", **fields)  # type: ignore[arg-type]
    ns_to_ts(datetime_to_ns(when or dt.datetime.now(dt.UTC)), built.time)
    return built


async def test_violations_are_rejected_with_field_and_reason() -> None:
    now = dt.datetime.now(dt.UTC)
    batch = [
        event("ok"),
        event("ancient", dt.datetime(1999, 12, 31, tzinfo=dt.UTC)),
        event("future", now + dt.timedelta(days=3)),
        event("big", message="x" * 70_000),
        event("wide", attributes={f"k{i}": "v" for i in range(300)}),
        event("long-value", tags={"note": "y" * 9_000}),
        event("also-ok"),
    ]
    # Alone: in the default pipeline, redaction already cuts over-long text.
    section = PipelineSection.model_validate({"processors": [{"type": "quality_validation"}]})
    result = await Pipeline.from_config(section).run(batch)
    assert [e.id for e in result.events] == ["ok", "also-ok"]
    rejected = {(r.event.id, r.field) for r in result.rejected}
    assert rejected == {
        ("ancient", "time"),
        ("future", "time"),
        ("big", "message"),
        ("wide", "attributes"),
        ("long-value", "tags[note]"),
    }
    assert all(r.processor == "quality_validation" for r in result.rejected)


async def test_required_fields_are_configurable() -> None:
    section = PipelineSection.model_validate(
        {"processors": [{"type": "quality_validation", "required": ["id", "host"]}]}
    )
    pipeline = Pipeline.from_config(section)
    result = await pipeline.run([event("no-host"), event("has-host", host="gw")])
    assert [e.id for e in result.events] == ["has-host"]
    assert [(r.field, r.reason) for r in result.rejected] == [("host", "required")]


async def test_small_limits_count_utf8_bytes_of_each_text() -> None:
    section = PipelineSection.model_validate(
        {"processors": [{"type": "quality_validation", "max_value_bytes": 11}]}
    )
    pipeline = Pipeline.from_config(section)
    fits, over = event("fits", tags={"note": "é" * 5}), event("over", tags={"note": "é" * 6})
    result = await pipeline.run([fits, over])
    assert [e.id for e in result.events] == ["fits"]
    assert [(r.event.id, r.field) for r in result.rejected] == [("over", "tags[note]")]
