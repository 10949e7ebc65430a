"""Pipeline configuration: the ordered processor list and its limits."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from mesh.config import Section, ServiceConfig

# Redaction first, always (DESIGN, safety model); hash_fields, geo_hints, site_environment,
# add_tags and reverse_dns run only when configured.
DEFAULT_PROCESSORS: list[dict[str, Any]] = [
    {"type": "drop_fields"},
    {"type": "mask_patterns"},
    {"type": "safety_validator"},
    {"type": "timestamp_normalize"},
    {"type": "severity_map"},
    {"type": "service_extraction"},
    {"type": "quality_validation"},
]


class ProcessorConfig(Section):
    """One processor: its registered ``type`` and the settings that type accepts."""

    model_config = Section.model_config | {"extra": "allow"}

    type: str = Field(description="Registered processor type, e.g. 'severity_map'.")
    name: str | None = Field(None, description="Name in stats and logs; defaults to the type.")
    enabled: bool = True

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PipelineSection(Section):
    processors: list[ProcessorConfig] = Field(
        default_factory=lambda: [ProcessorConfig.model_validate(p) for p in DEFAULT_PROCESSORS],
        description="Processors in execution order.",
    )
    max_batch_events: int = Field(10_000, ge=1, description="Largest batch Process accepts.")

    @field_validator("processors")
    @classmethod
    def _names_unique(cls, value: list[ProcessorConfig]) -> list[ProcessorConfig]:
        seen: set[str] = set()
        for processor in value:
            name = processor.name or processor.type
            if name in seen:
                raise ValueError(f"processor name {name!r} appears twice; give one a 'name'")
            seen.add(name)
        return value


class PipelineServiceConfig(ServiceConfig):
    pipeline: PipelineSection = Field(default_factory=PipelineSection)
