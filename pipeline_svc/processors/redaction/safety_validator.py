"""SafetyValidator: re-scan redacted output; whatever still holds a finding is quarantined."""

from __future__ import annotations

from gen.edgebot.v1 import event_pb2
from pipeline_svc.processors.base import Item, Outcome, Processor, Quarantine, Settings, register
from pipeline_svc.processors.redaction.scanner import (
    COUNT_TAG_PREFIX,
    DetectorSettings,
    place,
)


class SafetyValidatorSettings(DetectorSettings):
    """Same detector settings as mask_patterns; texts over max_scan_chars are quarantined."""


@register
class SafetyValidator(Processor):
    type_name = "safety_validator"
    stage = "redaction"
    settings_model = SafetyValidatorSettings
    settings: SafetyValidatorSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        self.scanner = self.settings.build()
        self.limit = self.settings.max_scan_chars

    def process(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        for item in items:
            reason = self.problem(item.event)
            if reason is not None:
                outcome.quarantined.append(Quarantine(item.index, item.event, reason, self.name))
        return outcome

    def problem(self, event: event_pb2.Event) -> str | None:
        """Why ``event`` must not be forwarded (kinds and places, never values), or None."""
        hits: list[tuple[str, str]] = []  # (kind or OVERSIZE, place)
        self._check("message", "", event.message, hits)
        attributes = event.attributes
        for key in attributes:  # faster than .items() on protobuf maps
            self._check("attributes", key, attributes[key], hits)
        tags = event.tags
        if self.settings.scan_tags and tags:
            for key in tags:
                if not key.startswith(COUNT_TAG_PREFIX):
                    self._check("tags", key, tags[key], hits)
        if event.HasField("raw"):
            self._check("raw", "", event.raw.decode("utf-8", errors="replace"), hits)
        return _reason(hits, self.limit) if hits else None

    def _check(self, field: str, key: str, text: str, hits: list[tuple[str, str]]) -> None:
        if len(text) > self.limit:
            hits.append((OVERSIZE, place(field, key)))
            return
        # Messages are rarely repeated: caching them would only churn the cache.
        for kind in self.scanner.find(text, cache=bool(key)):
            hits.append((kind, place(field, key)))


OVERSIZE = ""


def _reason(hits: list[tuple[str, str]], limit: int) -> str:
    places: dict[str, set[str]] = {}
    for kind, where in hits:
        places.setdefault(kind, set()).add(where)
    oversize = places.pop(OVERSIZE, None)
    parts = [f"{kind} in {', '.join(sorted(found))}" for kind, found in sorted(places.items())]
    if oversize:
        parts.append(f"over {limit} chars, not verifiable: {', '.join(sorted(oversize))}")
    return "redaction validator found " + "; ".join(parts)
