"""ServiceExtraction: a clean service name from program tags, paths, messages or hostnames.

'sshd(pam_unix)[19939]' -> service 'sshd', process.pid 19939, process.subsystem pam_unix;
'/usr/sbin/dnsmasq' -> 'dnsmasq'. Messages only count when the prefix carries a pid or a
path, so 'error: disk full' does not make a service called 'error'.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from gen.edgebot.v1 import event_pb2
from pipeline_svc.processors.base import Item, Outcome, Processor, Settings, register

_PROGRAM = re.compile(
    r"(?P<path>[^\s\[\]():]*/)?(?P<name>[A-Za-z0-9_.+@-]{1,128}?)"
    r"(?:\((?P<sub>[^()\s]{1,64})\))?(?:\[(?P<pid>\d{1,10})\])?:?"
)
_MESSAGE_PREFIX = re.compile(r"(?P<program>[^\s\[\]:]{1,256}(?:\[\d{1,10}\])?):\s")


class ServiceExtractionSettings(Settings):
    attribute_keys: list[str] = Field(
        default_factory=lambda: ["program", "app", "process.name", "syslog.app_name"],
        description="Attributes read, in order, when the event has no service.",
    )
    from_message: bool = Field(True, description="Read a 'prog[pid]:' or '/path/prog:' prefix.")
    hostname_pattern: str | None = Field(
        None, description="Regex with a group 'service' for hostnames like 'dns-01'."
    )
    clean_existing: bool = Field(True, description="Strip paths, pids and (subsystem).")
    pid_attribute: str | None = Field("process.pid", description="Where a found pid goes.")
    subsystem_attribute: str | None = Field("process.subsystem")
    max_chars: int = Field(64, ge=1, description="Longest service name kept.")
    cache_entries: int = Field(4096, ge=0, description="Program texts remembered, parsed.")

    @field_validator("hostname_pattern")
    @classmethod
    def _has_service_group(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regex: {exc}") from None
        if "service" not in compiled.groupindex:
            raise ValueError("needs a named group 'service'")
        return value


class Program:
    """A program reference split into name, pid and subsystem."""

    __slots__ = ("name", "pid", "subsystem")

    def __init__(self, name: str, pid: str | None, subsystem: str | None) -> None:
        self.name, self.pid, self.subsystem = name, pid, subsystem


def parse_program(text: str) -> Program | None:
    match = _PROGRAM.fullmatch(text.strip())
    if match is None:
        return None
    return Program(match["name"], match["pid"], match["sub"])


@register
class ServiceExtraction(Processor):
    type_name = "service_extraction"
    stage = "enrichment"
    settings_model = ServiceExtractionSettings
    settings: ServiceExtractionSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        pattern = self.settings.hostname_pattern
        self.hostname = re.compile(pattern) if pattern else None
        self._programs: dict[str, Program | None] = {}

    def process(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        for item in items:
            event = item.event
            if event.service:
                if self.settings.clean_existing and _needs_cleaning(event.service):
                    outcome.modified += self._apply(event, self._program(event.service))
                continue
            outcome.modified += self._apply(event, self._find(event))
        return outcome

    def _find(self, event: event_pb2.Event) -> Program | None:
        attributes = event.attributes
        for key in self.settings.attribute_keys:
            value = attributes.get(key)
            if value:
                program = self._program(value)
                if program is not None:
                    return program
        if self.settings.from_message:
            program = self._from_message(event.message)
            if program is not None:
                return program
        if self.hostname is not None and event.host:
            match = self.hostname.match(event.host)
            if match and match["service"]:
                return Program(match["service"], None, None)
        return None

    def _from_message(self, message: str) -> Program | None:
        match = _MESSAGE_PREFIX.match(message)
        if match is None:
            return None
        prefix = match["program"]
        if "/" not in prefix and "[" not in prefix:
            return None
        return self._program(prefix)

    def _program(self, text: str) -> Program | None:
        if text in self._programs:
            return self._programs[text]
        program = parse_program(text)
        if len(self._programs) >= self.settings.cache_entries:
            self._programs.clear()
        if self.settings.cache_entries:
            self._programs[text] = program
        return program

    def _apply(self, event: event_pb2.Event, program: Program | None) -> bool:
        if program is None:
            return False
        event.service = program.name[: self.settings.max_chars]
        attributes = event.attributes
        if program.pid and self.settings.pid_attribute:
            attributes.setdefault(self.settings.pid_attribute, program.pid)
        if program.subsystem and self.settings.subsystem_attribute:
            attributes.setdefault(self.settings.subsystem_attribute, program.subsystem)
        return True


def _needs_cleaning(service: str) -> bool:
    return "/" in service or "[" in service or "(" in service or service.endswith(":")
