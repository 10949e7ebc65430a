"""LLM enrichment behind strict guardrails.

The model sees only redacted, size-bounded fields; it must answer a strict JSON schema;
an answer is applied only at or above the confidence threshold; calls are concurrency
limited, time-boxed per batch, and sit behind a circuit breaker so a slow or failing
endpoint never delays the deterministic path beyond ``budget_s``. Every decision is
logged for audit with its confidence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gen.edgebot.v1 import event_pb2
from mesh.breaker import CircuitBreaker

audit_log = logging.getLogger("edgebot.llm.audit")
log = logging.getLogger(__name__)
TAG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
CATEGORIES = (
    "authentication",
    "network",
    "hardware",
    "application",
    "security",
    "configuration",
    "performance",
    "other",
)


class LlmAnswer(BaseModel):
    """The only shape of answer accepted from the model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    category: str
    summary: str = Field(max_length=200)
    tags: list[str] = Field(max_length=8)
    confidence: float = Field(ge=0.0, le=1.0)

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        if value not in CATEGORIES:
            raise ValueError(f"category must be one of {', '.join(CATEGORIES)}")
        return value

    @field_validator("tags")
    @classmethod
    def _simple_tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not TAG_PATTERN.match(tag):
                raise ValueError(f"tag {tag[:40]!r} is not a short lowercase word")
        return value


class Outcome(StrEnum):
    APPLIED = "applied"
    BELOW_THRESHOLD = "below_threshold"
    INVALID_ANSWER = "invalid_answer"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    BREAKER_OPEN = "breaker_open"
    OVER_BUDGET = "over_budget"


@dataclass(frozen=True)
class Decision:
    event_id: str
    outcome: Outcome
    confidence: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class LlmLimits:
    base_url: str
    model: str
    api_key: str | None
    timeout_s: float
    budget_s: float
    max_tokens: int
    max_prompt_chars: int
    max_attributes: int
    max_concurrency: int
    max_events_per_batch: int
    confidence_threshold: float
    min_level: int
    """Only events at least this severe (syslog level <= min_level) are sent."""


def read_api_key(key_file: Path | None, key_env: str | None) -> str | None:
    if key_file is not None:
        return key_file.read_text().strip() or None
    if key_env:
        return os.environ.get(key_env) or None
    return None


SYSTEM_PROMPT = (
    "You classify one log event from network infrastructure. Reply with a single JSON "
    'object and nothing else: {"category": one of '
    + json.dumps(list(CATEGORIES))
    + ', "summary": at most 200 characters, "tags": up to 8 short lowercase words, '
    '"confidence": a number from 0 to 1}. Values shown as [REDACTED:...] were removed '
    "on purpose; never guess them."
)


def prompt_for(event: event_pb2.Event, limits: LlmLimits) -> str:
    """The user message: a bounded JSON view of the (already redacted) event."""
    attributes = dict(sorted(event.attributes.items())[: limits.max_attributes])
    view: dict[str, Any] = {
        "service": event.service[:100],
        "host": event.host[:100],
        "severity": event_pb2.Severity.Name(event.severity),
        "message": event.message,
        "attributes": {k[:60]: v[:200] for k, v in attributes.items()},
    }
    text = json.dumps(view, ensure_ascii=False)
    if len(text) > limits.max_prompt_chars:
        overflow = len(text) - limits.max_prompt_chars
        view["message"] = event.message[: max(0, len(event.message) - overflow - 3)] + "..."
        text = json.dumps(view, ensure_ascii=False)[: limits.max_prompt_chars]
    return text


def parse_answer(body: dict[str, Any]) -> LlmAnswer:
    """The validated answer of a chat-completions response; raises ValueError otherwise."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError("response has no choices[0].message.content") from exc
    if not isinstance(content, str):
        raise ValueError("message content is not text")
    try:
        return LlmAnswer.model_validate(json.loads(content))
    except json.JSONDecodeError as exc:
        raise ValueError(f"answer is not JSON: {exc.msg}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(answer)"
        raise ValueError(f"answer breaks the schema at {where}: {first['msg']}") from exc


def apply_answer(event: event_pb2.Event, answer: LlmAnswer) -> None:
    event.tags["llm.category"] = answer.category
    event.tags["llm.summary"] = answer.summary
    event.tags["llm.confidence"] = f"{answer.confidence:.2f}"
    if answer.tags:
        event.tags["llm.tags"] = ",".join(answer.tags)


class LlmEnricher:
    """Calls an OpenAI-compatible chat-completions endpoint for a batch, within a budget."""

    def __init__(self, limits: LlmLimits, breaker: CircuitBreaker) -> None:
        self.limits = limits
        self.breaker = breaker
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None

    def _http(self) -> httpx.AsyncClient:
        # Made on first use, on the loop that runs the pipeline.
        if self._client is None:
            headers = {"content-type": "application/json"}
            if self.limits.api_key:
                headers["authorization"] = f"Bearer {self.limits.api_key}"
            self._client = httpx.AsyncClient(
                base_url=self.limits.base_url.rstrip("/"),
                headers=headers,
                timeout=self.limits.timeout_s,
            )
            self._slots = asyncio.Semaphore(self.limits.max_concurrency)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def eligible(self, events: list[event_pb2.Event]) -> list[event_pb2.Event]:
        chosen = [
            event
            for event in events
            if event.severity and event.severity - 1 <= self.limits.min_level
        ]
        return chosen[: self.limits.max_events_per_batch]

    async def enrich(self, events: list[event_pb2.Event]) -> list[Decision]:
        """Enrich eligible events in place; returns one decision per eligible event."""
        chosen = self.eligible(events)
        if not chosen:
            return []
        started = time.monotonic()
        tasks = {asyncio.ensure_future(self._one(event)): event for event in chosen}
        done, pending = await asyncio.wait(tasks, timeout=self.limits.budget_s)
        for task in pending:
            task.cancel()
        decisions = [task.result() for task in done]
        decisions += [
            Decision(tasks[task].id, Outcome.OVER_BUDGET, reason="batch budget spent")
            for task in pending
        ]
        if pending:
            self.breaker.record_failure()
        for decision in decisions:
            audit_log.info(
                "llm decision",
                extra={
                    "event_id": decision.event_id,
                    "outcome": str(decision.outcome),
                    "confidence": decision.confidence,
                    "reason": decision.reason,
                    "batch_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )
        return decisions

    async def _one(self, event: event_pb2.Event) -> Decision:
        if not self.breaker.allow():
            return Decision(event.id, Outcome.BREAKER_OPEN, reason="circuit breaker open")
        client = self._http()
        assert self._slots is not None
        async with self._slots:
            try:
                response = await client.post("/chat/completions", json=self._request(event))
                response.raise_for_status()
                answer = parse_answer(response.json())
            except httpx.TimeoutException:
                self.breaker.record_failure()
                return Decision(event.id, Outcome.TIMED_OUT, reason="call timed out")
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                self.breaker.record_failure()
                return Decision(event.id, Outcome.FAILED, reason=type(exc).__name__)
            except ValueError as exc:
                self.breaker.record_failure()
                return Decision(event.id, Outcome.INVALID_ANSWER, reason=str(exc)[:200])
        self.breaker.record_success()
        if answer.confidence < self.limits.confidence_threshold:
            return Decision(event.id, Outcome.BELOW_THRESHOLD, answer.confidence)
        apply_answer(event, answer)
        return Decision(event.id, Outcome.APPLIED, answer.confidence)

    def _request(self, event: event_pb2.Event) -> dict[str, Any]:
        return {
            "model": self.limits.model,
            "temperature": 0,
            "max_tokens": self.limits.max_tokens,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt_for(event, self.limits)},
            ],
        }
