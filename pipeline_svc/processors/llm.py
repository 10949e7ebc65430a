"""LLMEnrichment: the guarded LLM stage (off unless configured; always after redaction)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, HttpUrl

from mesh.breaker import CircuitBreaker
from mesh.config import ConfigError
from pipeline_svc.llm import LlmEnricher, LlmLimits, read_api_key
from pipeline_svc.llm import Outcome as Decision
from pipeline_svc.processors.base import Item, Outcome, Processor, Settings, register
from pipeline_svc.processors.severity import level_from_text


class LlmSettings(Settings):
    base_url: HttpUrl = Field(description="OpenAI-compatible API root, e.g. https://host/v1.")
    model: str = Field(min_length=1, description="Model name sent with each request.")
    api_key_file: Path | None = Field(None, description="File holding the API key.")
    api_key_env: str | None = Field(None, description="Environment variable with the key.")
    timeout_s: float = Field(2.0, gt=0, description="Per-call timeout.")
    budget_s: float = Field(
        0.5, gt=0, description="Longest a batch waits for LLM answers; the rest go on without."
    )
    max_tokens: int = Field(256, ge=16, le=4096)
    max_prompt_chars: int = Field(2000, ge=200, description="Bound on the user message.")
    max_attributes: int = Field(16, ge=0, description="Attributes shown to the model.")
    max_concurrency: int = Field(4, ge=1, description="Calls in flight at once.")
    max_events_per_batch: int = Field(20, ge=1, description="Events sent per batch at most.")
    confidence_threshold: float = Field(0.8, ge=0, le=1, description="Answers below are ignored.")
    min_severity: str = Field("warning", description="Only events at least this severe.")
    breaker_failures: int = Field(5, ge=1, description="Consecutive failures that open it.")
    breaker_open_s: float = Field(60.0, gt=0, description="How long it stays open.")


@register
class LlmEnrichment(Processor):
    type_name = "llm_enrichment"
    stage = "llm"
    settings_model = LlmSettings
    settings: LlmSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        level = level_from_text(self.settings.min_severity)
        if level is None:
            raise ConfigError(f"min_severity: not a severity name: {self.settings.min_severity!r}")
        try:
            api_key = read_api_key(self.settings.api_key_file, self.settings.api_key_env)
        except OSError as exc:
            raise ConfigError(f"api_key_file: cannot read: {exc.strerror}") from None
        limits = LlmLimits(
            base_url=str(self.settings.base_url),
            model=self.settings.model,
            api_key=api_key,
            timeout_s=self.settings.timeout_s,
            budget_s=self.settings.budget_s,
            max_tokens=self.settings.max_tokens,
            max_prompt_chars=self.settings.max_prompt_chars,
            max_attributes=self.settings.max_attributes,
            max_concurrency=self.settings.max_concurrency,
            max_events_per_batch=self.settings.max_events_per_batch,
            confidence_threshold=self.settings.confidence_threshold,
            min_level=level,
        )
        breaker = CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_open_s)
        self.enricher = LlmEnricher(limits, breaker)

    def process(self, items: list[Item]) -> Outcome:
        raise RuntimeError("llm_enrichment calls the network: the pipeline awaits process_async")

    async def process_async(self, items: list[Item]) -> Outcome:
        decisions = await self.enricher.enrich([item.event for item in items])
        return Outcome(modified=sum(d.outcome is Decision.APPLIED for d in decisions))

    async def close(self) -> None:
        await self.enricher.close()

    def describe(self) -> dict[str, str]:
        shown = self.settings.model_dump(exclude={"api_key_file", "api_key_env"})
        return {key: str(value) for key, value in shown.items()}
