"""AddTags: static tags, and tags for events whose service or host matches a glob."""

from __future__ import annotations

import fnmatch
import re

from pydantic import BaseModel, ConfigDict, Field

from gen.edgebot.v1 import event_pb2
from pipeline_svc.processors.base import Item, Outcome, Processor, Settings, register


class TagRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str | None = Field(None, description="Glob on Event.service, e.g. 'dnsmasq*'.")
    host: str | None = Field(None, description="Glob on Event.host, e.g. 'gw-*'.")
    tags: dict[str, str] = Field(description="Tags added when every given glob matches.")


class AddTagsSettings(Settings):
    tags: dict[str, str] = Field(default_factory=dict, description="Added to every event.")
    rules: list[TagRule] = Field(default_factory=list)
    overwrite: bool = Field(False, description="Replace a tag the event already has.")


def _glob(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(fnmatch.translate(pattern)) if pattern is not None else None


@register
class AddTags(Processor):
    type_name = "add_tags"
    stage = "enrichment"
    settings_model = AddTagsSettings
    settings: AddTagsSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        self.rules = [(_glob(r.service), _glob(r.host), r.tags) for r in self.settings.rules]

    def process(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        for item in items:
            event = item.event
            changed = self._add(event, self.settings.tags)
            for service, host, tags in self.rules:
                if _matches(service, event.service) and _matches(host, event.host):
                    changed = self._add(event, tags) or changed
            outcome.modified += changed
        return outcome

    def _add(self, event: event_pb2.Event, tags: dict[str, str]) -> bool:
        changed = False
        for key, value in tags.items():
            if (self.settings.overwrite or key not in event.tags) and event.tags.get(key) != value:
                event.tags[key] = value
                changed = True
        return changed


def _matches(glob: re.Pattern[str] | None, value: str) -> bool:
    return glob is None or glob.match(value) is not None
