"""LLM enrichment against a fake chat-completions API over real HTTP."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from fake_llm import FakeLlm, fake_llm_server

from gen.edgebot.v1 import event_pb2
from mesh.breaker import BreakerState, CircuitBreaker
from pipeline_svc.llm import LlmEnricher, LlmLimits, Outcome

API_KEY = "sk-test-not-a-real-key-123"


@pytest.fixture
def fake() -> Iterator[FakeLlm]:
    with fake_llm_server() as server:
        yield server


def limits(url: str, **changes: object) -> LlmLimits:
    base = LlmLimits(
        base_url=url,
        model="test-model",
        api_key=API_KEY,
        timeout_s=1.0,
        budget_s=0.5,
        max_tokens=128,
        max_prompt_chars=600,
        max_attributes=8,
        max_concurrency=4,
        max_events_per_batch=10,
        confidence_threshold=0.8,
        min_level=4,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def events(
    count: int, severity: event_pb2.Severity.ValueType = event_pb2.SEVERITY_WARNING
) -> list[event_pb2.Event]:
    return [
        event_pb2.Event(
            id=f"e{i}",
            service="sshd",
            host="gw",
            severity=severity,
            message=f"Failed password for invalid user admin from [REDACTED:ipv4] port {i}",
        )
        for i in range(count)
    ]


async def test_confident_answer_is_applied_and_request_is_bounded(fake: FakeLlm) -> None:
    enricher = LlmEnricher(limits(fake.url), CircuitBreaker())
    batch = events(1)
    batch[0].message += " x" * 2000
    decisions = await enricher.enrich(batch)
    await enricher.close()
    assert [d.outcome for d in decisions] == [Outcome.APPLIED]
    assert batch[0].tags["llm.category"] == "authentication"
    assert batch[0].tags["llm.tags"] == "ssh,brute-force"
    assert batch[0].tags["llm.confidence"] == "0.93"
    request = fake.requests[0]
    assert request["temperature"] == 0
    assert request["max_tokens"] == 128
    assert request["response_format"] == {"type": "json_object"}
    assert len(request["messages"][1]["content"]) <= 600
    assert fake.headers[0]["authorization"] == f"Bearer {API_KEY}"


async def test_low_confidence_is_not_applied(fake: FakeLlm) -> None:
    fake.mode = "low"
    enricher = LlmEnricher(limits(fake.url), CircuitBreaker())
    batch = events(1)
    decisions = await enricher.enrich(batch)
    await enricher.close()
    assert decisions[0].outcome is Outcome.BELOW_THRESHOLD
    assert decisions[0].confidence == pytest.approx(0.4)
    assert not batch[0].tags


@pytest.mark.parametrize("mode", ["invalid", "not_json"])
async def test_schema_invalid_answers_are_refused(fake: FakeLlm, mode: str) -> None:
    fake.mode = mode
    enricher = LlmEnricher(limits(fake.url), CircuitBreaker())
    batch = events(1)
    decisions = await enricher.enrich(batch)
    await enricher.close()
    assert decisions[0].outcome is Outcome.INVALID_ANSWER
    assert not batch[0].tags


async def test_only_severe_enough_events_are_sent(fake: FakeLlm) -> None:
    enricher = LlmEnricher(limits(fake.url), CircuitBreaker())
    batch = events(2, event_pb2.SEVERITY_INFORMATIONAL) + events(1, event_pb2.SEVERITY_ERROR)
    decisions = await enricher.enrich(batch)
    await enricher.close()
    assert len(fake.requests) == 1
    assert [d.event_id for d in decisions] == ["e0"]


async def test_slow_answers_never_hold_the_batch_past_its_budget(fake: FakeLlm) -> None:
    fake.mode = "slow"
    enricher = LlmEnricher(limits(fake.url, budget_s=0.3, timeout_s=5.0), CircuitBreaker())
    started = time.monotonic()
    decisions = await enricher.enrich(events(3))
    elapsed = time.monotonic() - started
    await enricher.close()
    assert elapsed < 0.6
    assert {d.outcome for d in decisions} == {Outcome.OVER_BUDGET}


async def test_breaker_opens_after_failures_and_stops_calling(fake: FakeLlm) -> None:
    fake.mode = "error"
    breaker = CircuitBreaker(failure_threshold=5, open_s=60)
    enricher = LlmEnricher(limits(fake.url, max_concurrency=1), breaker)
    first = await enricher.enrich(events(5))
    assert {d.outcome for d in first} == {Outcome.FAILED}
    assert breaker.state is BreakerState.OPEN
    calls_before = len(fake.requests)
    started = time.monotonic()
    second = await enricher.enrich(events(5))
    await enricher.close()
    assert time.monotonic() - started < 0.05
    assert {d.outcome for d in second} == {Outcome.BREAKER_OPEN}
    assert len(fake.requests) == calls_before


async def test_half_open_probe_closes_the_breaker_when_the_endpoint_recovers(
    fake: FakeLlm,
) -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, open_s=60, clock=lambda: now[0])
    enricher = LlmEnricher(limits(fake.url, max_concurrency=1), breaker)
    fake.mode = "error"
    await enricher.enrich(events(1))
    assert breaker.state is BreakerState.OPEN
    fake.mode = "ok"
    now[0] += 61
    decisions = await enricher.enrich(events(1))
    await enricher.close()
    assert decisions[0].outcome is Outcome.APPLIED
    assert breaker.state is BreakerState.CLOSED


async def test_unreachable_endpoint_fails_fast(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    enricher = LlmEnricher(limits(f"http://127.0.0.1:{port}/v1"), CircuitBreaker())
    caplog.set_level(logging.INFO, logger="edgebot.llm.audit")
    started = time.monotonic()
    decisions = await enricher.enrich(events(3))
    await enricher.close()
    assert time.monotonic() - started < 0.5
    assert {d.outcome for d in decisions} == {Outcome.FAILED}
    audit = [r for r in caplog.records if r.name == "edgebot.llm.audit"]
    assert len(audit) == 3
    assert API_KEY not in caplog.text
