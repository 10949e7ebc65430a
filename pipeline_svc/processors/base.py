"""The processor interface and its registry: ``type`` -> class with a settings model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Item:
    """One event on its way through the pipeline, with its position in the batch."""

    index: int
    event: event_pb2.Event


@dataclass
class Rejection:
    index: int
    event: event_pb2.Event
    field: str
    reason: str
    processor: str


@dataclass
class Quarantine:
    index: int
    event: event_pb2.Event
    reason: str
    processor: str


@dataclass
class Outcome:
    """What a processor did to one batch."""

    modified: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    quarantined: list[Quarantine] = field(default_factory=list)


class Processor(ABC):
    """A pipeline stage. ``process`` changes events in place and reports what it did."""

    type_name: ClassVar[str]
    stage: ClassVar[str]
    settings_model: ClassVar[type[Settings]] = Settings

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings

    @abstractmethod
    def process(self, items: list[Item]) -> Outcome:
        """Process the live events of a batch; rejected/quarantined ones leave the batch."""

    async def process_async(self, items: list[Item]) -> Outcome:
        """What the pipeline calls. Processors that wait on I/O (DNS, HTTP) override this;
        CPU-only ones just implement ``process``."""
        return self.process(items)

    async def close(self) -> None:  # noqa: B027 - an optional hook, most processors hold nothing
        """Release clients and caches when the service stops."""

    def describe(self) -> dict[str, str]:
        return {key: str(value) for key, value in self.settings.model_dump().items()}


REGISTRY: dict[str, type[Processor]] = {}


def register(cls: type[Processor]) -> type[Processor]:
    REGISTRY[cls.type_name] = cls
    return cls


def create(type_name: str, name: str, raw_settings: dict[str, Any], key: str) -> Processor:
    """Build a processor, turning bad settings into a ConfigError naming ``key.<field>``."""
    cls = REGISTRY.get(type_name)
    if cls is None:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"{key}.type: unknown processor {type_name!r} (known: {known})")
    try:
        settings = cls.settings_model.model_validate(raw_settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f".{part}" for part in first["loc"])
        reason = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"invalid configuration: {key}{where}: {reason}") from None
    try:
        return cls(name, settings)
    except ConfigError as exc:
        # Processors name the offending setting; the key says which processor it is.
        raise ConfigError(f"invalid configuration: {key}.{exc}") from None
