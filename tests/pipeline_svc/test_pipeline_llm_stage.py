"""The LLM stage inside the real pipeline: it sees only redacted text and never stalls it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_llm import FakeLlm, fake_llm_server

from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError
from pipeline_svc.config import DEFAULT_PROCESSORS, PipelineSection
from pipeline_svc.pipeline import Pipeline

SECRETS = {
    "card": "4111 1111 1111 1111",
    "email": "jane.doe@example.org",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "password": "hunter2hunter2",
}


@pytest.fixture
def fake() -> Iterator[FakeLlm]:
    with fake_llm_server() as server:
        yield server


def llm_stage(url: str, **settings: Any) -> dict[str, Any]:
    return {
        "type": "llm_enrichment",
        "base_url": url,
        "model": "m",
        "budget_s": 0.4,
        "timeout_s": 2.0,
        **settings,
    }


def pipeline_with(url: str, **settings: Any) -> Pipeline:
    processors = [*DEFAULT_PROCESSORS, llm_stage(url, **settings)]
    return Pipeline.from_config(PipelineSection.model_validate({"processors": processors}))


def sensitive_events() -> list[event_pb2.Event]:
    return [
        event_pb2.Event(
            id="e1",
            service="webshop",
            severity=event_pb2.SEVERITY_ERROR,
            message=f"payment failed for {SECRETS['email']} card {SECRETS['card']}",
            attributes={"db.password": SECRETS["password"], "level": "error"},
        ),
        event_pb2.Event(
            id="e2",
            service="deploy",
            severity=event_pb2.SEVERITY_WARNING,
            message=f"aws key {SECRETS['aws']} from a new host; password={SECRETS['password']}",
        ),
    ]


async def test_llm_request_bodies_never_carry_sensitive_values(fake: FakeLlm) -> None:
    pipeline = pipeline_with(fake.url)
    result = await pipeline.run(sensitive_events())
    await pipeline.close()
    assert len(fake.requests) == 2
    bodies = json.dumps(fake.requests)
    for kind, value in SECRETS.items():
        assert value not in bodies, f"{kind} reached the LLM"
    assert "[REDACTED:" in bodies
    assert [e.tags["llm.category"] for e in result.events] == ["authentication"] * 2


async def test_llm_stage_before_redaction_is_refused(fake: FakeLlm) -> None:
    section = PipelineSection.model_validate(
        {"processors": [llm_stage(fake.url), *DEFAULT_PROCESSORS]}
    )
    with pytest.raises(ConfigError, match=r"must come after a redaction processor"):
        Pipeline.from_config(section)


async def test_bad_llm_setting_names_the_key(fake: FakeLlm) -> None:
    with pytest.raises(ConfigError, match=r"pipeline\.processors\.7\.min_severity"):
        pipeline_with(fake.url, min_severity="very")


async def test_slow_llm_costs_at_most_the_budget_then_the_breaker_opens(fake: FakeLlm) -> None:
    fake.mode = "slow"
    fake.delay_s = 5
    pipeline = pipeline_with(fake.url, breaker_failures=1)
    started = time.monotonic()
    first = await pipeline.run(sensitive_events())
    first_s = time.monotonic() - started
    calls = len(fake.requests)
    started = time.monotonic()
    second = await pipeline.run(sensitive_events())
    second_s = time.monotonic() - started
    await pipeline.close()
    assert first_s < 1.5
    assert second_s < 0.2
    assert len(fake.requests) == calls
    for result in (first, second):
        assert len(result.events) == 2
        assert all("llm.category" not in e.tags for e in result.events)
        assert all(e.severity for e in result.events)
