"""QualityValidation: required fields, sizes and sane times; violations are per-event errors."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gen.edgebot.v1 import event_pb2
from mesh.timeutil import NS_PER_S, now_ns, ts_to_ns
from pipeline_svc.processors.base import Item, Outcome, Processor, Rejection, Settings, register

RequiredField = Literal["id", "time", "type", "host", "service", "message"]
EPOCH_2000_NS = 946_684_800 * NS_PER_S
DEFAULT_REQUIRED: tuple[RequiredField, ...] = ("id", "time")


class QualitySettings(Settings):
    required: list[RequiredField] = Field(
        default_factory=lambda: list(DEFAULT_REQUIRED),
        description="Fields every event must carry.",
    )
    max_message_bytes: int = Field(65_536, ge=1, description="Longest message (UTF-8).")
    max_attributes: int = Field(256, ge=0, description="Most attributes per event.")
    max_value_bytes: int = Field(8_192, ge=1, description="Longest attribute or tag value.")
    earliest_ns: int = Field(
        EPOCH_2000_NS, ge=0, description="Times before this (ns since epoch) are refused."
    )
    max_future_s: float = Field(
        86_400.0, ge=0, description="Times later than now + this are refused."
    )


def _utf8_over(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes in UTF-8; no code point takes more
    than 4, so most texts need no encoding to tell."""
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


@register
class QualityValidation(Processor):
    type_name = "quality_validation"
    stage = "validation"
    settings_model = QualitySettings
    settings: QualitySettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        self.required = tuple(self.settings.required)
        self.smallest_text_limit = min(
            self.settings.max_message_bytes, self.settings.max_value_bytes
        )

    def process(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        latest = now_ns() + int(self.settings.max_future_s * NS_PER_S)
        for item in items:
            problem = self._problem(item.event, latest)
            if problem is not None:
                field, reason = problem
                outcome.rejected.append(Rejection(item.index, item.event, field, reason, self.name))
        return outcome

    def _size_problem(self, event: event_pb2.Event) -> tuple[str, str] | None:
        limits = self.settings
        # No text is longer than the whole encoded event, so a small event needs no
        # look at each text (upb sizes it in C; the loop below is Python).
        if event.ByteSize() <= self.smallest_text_limit:
            if len(event.attributes) > limits.max_attributes:
                return "attributes", f"more than {limits.max_attributes} entries"
            return None
        if _utf8_over(event.message, limits.max_message_bytes):
            return "message", f"longer than {limits.max_message_bytes} bytes"
        if len(event.attributes) > limits.max_attributes:
            return "attributes", f"more than {limits.max_attributes} entries"
        for map_name, values in (("attributes", event.attributes), ("tags", event.tags)):
            for key in values:  # faster than .items() on protobuf maps
                if _utf8_over(values[key], limits.max_value_bytes):
                    return f"{map_name}[{key}]", f"longer than {limits.max_value_bytes} bytes"
        return None

    def _problem(self, event: event_pb2.Event, latest_ns: int) -> tuple[str, str] | None:
        time = event.time
        has_time = time.seconds != 0 or time.nanos != 0
        for name in self.required:
            if not (has_time if name == "time" else getattr(event, name)):
                return name, "required"
        problem = self._size_problem(event)
        if problem is not None:
            return problem
        if has_time:
            when = ts_to_ns(time)
            if when < self.settings.earliest_ns:
                return "time", "earlier than the configured earliest time"
            if when > latest_ns:
                return "time", f"more than {self.settings.max_future_s:.0f}s in the future"
        return None
