"""SeverityMap: severity names and numbers in attributes -> syslog severity."""

from __future__ import annotations

from pydantic import Field

from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError
from pipeline_svc.processors.base import Item, Outcome, Processor, Settings, register

# Syslog level (0 emergency ... 7 debug) for the names sources use, as the original
# mothership mapped them.
SEVERITY_NAMES: dict[str, int] = {
    "emerg": 0, "emergency": 0, "panic": 0,
    "alert": 1,
    "crit": 2, "critical": 2, "fatal": 2,
    "err": 3, "error": 3, "severe": 3,
    "warn": 4, "warning": 4,
    "notice": 5,
    "info": 6, "information": 6, "informational": 6,
    "debug": 7, "trace": 7, "verbose": 7,
}  # fmt: skip


def level_from_text(value: str) -> int | None:
    """Syslog level for a name ('WARN') or a number ('4'), or None."""
    text = value.strip().lower()
    if text.isdigit():
        number = int(text)
        return number if 0 <= number <= 7 else None
    return SEVERITY_NAMES.get(text)


def severity_of_level(level: int) -> event_pb2.Severity.ValueType:
    return event_pb2.Severity.ValueType(level + 1)


class SeverityMapSettings(Settings):
    attribute_keys: list[str] = Field(
        default_factory=lambda: ["severity", "level", "log.level", "syslog.severity"],
        description="Attributes read, in order, when the event has no severity.",
    )
    default: str = Field("informational", description="Severity when none can be found.")
    overwrite: bool = Field(
        False, description="Let the attribute win over a severity the input already set."
    )


@register
class SeverityMap(Processor):
    type_name = "severity_map"
    stage = "enrichment"
    settings_model = SeverityMapSettings
    settings: SeverityMapSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        default = level_from_text(self.settings.default)
        if default is None:
            raise ConfigError(f"default: not a severity name: {self.settings.default!r}")
        self.default_severity = severity_of_level(default)

    def process(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        for item in items:
            event = item.event
            if event.severity and not self.settings.overwrite:
                continue
            found = self._from_attributes(event)
            if found is None and event.severity:
                continue
            event.severity = found if found is not None else self.default_severity
            outcome.modified += 1
        return outcome

    def _from_attributes(self, event: event_pb2.Event) -> event_pb2.Severity.ValueType | None:
        attributes = event.attributes
        for key in self.settings.attribute_keys:
            value = attributes.get(key)
            if value:
                level = level_from_text(value)
                if level is not None:
                    return severity_of_level(level)
        return None
