"""MaskPatterns: validated detectors over the message and every attribute and tag value."""

from __future__ import annotations

from google.protobuf.internal.containers import ScalarMap
from pydantic import Field

from gen.edgebot.v1 import event_pb2
from pipeline_svc.processors.base import Item, Outcome, Processor, Settings, register
from pipeline_svc.processors.redaction.scanner import (
    COUNT_TAG_PREFIX,
    Counts,
    DetectorSettings,
    add_counts,
)

TRUNCATED_MARK = " [TRUNCATED]"


class MaskPatternsSettings(DetectorSettings):
    record_counts: bool = Field(True, description="Write redaction.<kind>=<n> tags.")


@register
class MaskPatterns(Processor):
    type_name = "mask_patterns"
    stage = "redaction"
    settings_model = MaskPatternsSettings
    settings: MaskPatternsSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        self.scanner = self.settings.build()
        self.limit = self.settings.max_scan_chars

    def process(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        for item in items:
            counts: Counts = {}
            self._mask_event(item.event, counts)
            if counts:
                outcome.modified += 1
                if self.settings.record_counts:
                    add_counts(item.event, counts)
        return outcome

    def _mask_event(self, event: event_pb2.Event, counts: Counts) -> None:
        message = event.message
        if message:
            masked = self._mask_text(message, counts, cache=False)
            if masked != message:
                event.message = masked
        self._mask_map(event.attributes, counts)
        if self.settings.scan_tags and event.tags:
            self._mask_map(event.tags, counts)

    def _mask_map(self, values: ScalarMap[str, str], counts: Counts) -> None:
        changed = None
        mask = self.scanner.mask
        limit = self.limit
        for key in values:  # faster than .items() on protobuf maps
            value = values[key]
            masked = mask(value, counts) if len(value) <= limit else self._mask_text(value, counts)
            if masked != value and not key.startswith(COUNT_TAG_PREFIX):
                changed = changed or {}
                changed[key] = masked
        if changed:
            values.update(changed)

    def _mask_text(self, text: str, counts: Counts, cache: bool = True) -> str:
        if len(text) > self.limit:
            text = text[: self.limit] + TRUNCATED_MARK
            counts["truncated"] = counts.get("truncated", 0) + 1
        return self.scanner.mask(text, counts, cache)
