"""SiteEnvironment: 'site' and 'env' tags from hostname conventions and static config.

A pattern such as '^(?P<site>[a-z]{3})-(?P<env>prod|stg|dev)-(?P<role>[a-z]+)\\d*$' turns
host 'ams-prod-fw01' into site=ams, env=production, role=fw. Other named groups become
tags under their own name.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from gen.edgebot.v1 import event_pb2
from pipeline_svc.processors.base import Item, Outcome, Processor, Settings, register

DEFAULT_ALIASES = {
    "prod": "production", "prd": "production", "live": "production",
    "stg": "staging", "stage": "staging", "uat": "staging",
    "dev": "development", "tst": "test", "qa": "test", "lab": "lab",
}  # fmt: skip


class SiteEnvironmentSettings(Settings):
    site: str | None = Field(None, description="Static site, used when no pattern gives one.")
    environment: str | None = Field(None, description="Static environment, likewise.")
    hostname_patterns: list[str] = Field(
        default_factory=list,
        description="Regexes with named groups (site, env, anything else); first match wins.",
    )
    environment_aliases: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ALIASES))
    site_tag: str = "site"
    environment_tag: str = "env"
    overwrite: bool = Field(False, description="Replace tags the event already has.")
    cache_entries: int = Field(4096, ge=0, description="Hostnames remembered.")

    @field_validator("hostname_patterns")
    @classmethod
    def _named_groups(cls, value: list[str]) -> list[str]:
        for position, pattern in enumerate(value):
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {position} is not a valid regex: {exc}") from None
            if not compiled.groupindex:
                raise ValueError(f"pattern {position} has no named group")
        return value


@register
class SiteEnvironment(Processor):
    type_name = "site_environment"
    stage = "enrichment"
    settings_model = SiteEnvironmentSettings
    settings: SiteEnvironmentSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        self.patterns = [re.compile(p) for p in self.settings.hostname_patterns]
        self._by_host: dict[str, dict[str, str]] = {}

    def process(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        for item in items:
            outcome.modified += self._apply(item.event, self._tags_for(item.event.host))
        return outcome

    def _apply(self, event: event_pb2.Event, tags: dict[str, str]) -> bool:
        changed = False
        for key, value in tags.items():
            if self.settings.overwrite or key not in event.tags:
                event.tags[key] = value
                changed = True
        return changed

    def _tags_for(self, host: str) -> dict[str, str]:
        tags = self._by_host.get(host)
        if tags is None:
            tags = self._derive(host)
            if len(self._by_host) >= self.settings.cache_entries:
                self._by_host.clear()
            if self.settings.cache_entries:
                self._by_host[host] = tags
        return tags

    def _derive(self, host: str) -> dict[str, str]:
        s = self.settings
        found: dict[str, str] = {}
        for pattern in self.patterns:
            match = pattern.match(host.lower())
            if match:
                found = {k: v for k, v in match.groupdict().items() if v}
                break
        env_group, environment_group = found.pop("env", None), found.pop("environment", None)
        environment = env_group or environment_group or s.environment
        site = found.pop("site", None) or s.site
        tags = dict(found)
        if site:
            tags[s.site_tag] = site
        if environment:
            tags[s.environment_tag] = s.environment_aliases.get(environment, environment)
        return tags
