"""The agent interface, the registry of agent types, and what every agent shares.

An agent declares which events it reads (services/programs and event types; empty reads
everything), keeps its thresholds in a settings model (validated at start-up, so a bad value
fails naming the key), and turns one window of events into candidate anomalies. Adding an
agent is one module that subclasses :class:`BaseAgent` with ``@register`` plus a config entry.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anomaly_svc.models.manager import LoadedModel
from anomaly_svc.store import AnomalyRecord
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import NS_PER_S, ts_to_ns

# Syslog levels used for anomaly severities.
CRITICAL, ERROR, WARNING, NOTICE, INFO = 2, 3, 4, 5, 6


class AgentSettings(BaseModel):
    """Settings every agent has; agent modules extend this with their thresholds."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    type: str
    name: str = Field("", description="Agent name (default: its type); unique.")
    enabled: bool = True
    interval_s: float = Field(300.0, gt=0, description="Seconds between analysis cycles.")


@dataclass(frozen=True)
class EventView:
    """The fields agents read from an event."""

    id: str
    time_ns: int
    host: str
    service: str
    level: int
    message: str
    type: str = "syslog"
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, event: event_pb2.Event) -> EventView:
        return cls(
            id=event.id,
            time_ns=ts_to_ns(event.time),
            host=event.host,
            service=event.service,
            level=event.severity - 1 if event.severity else 6,
            message=event.message,
            type=event.type,
            attributes=dict(event.attributes),
        )


@dataclass(frozen=True)
class Window:
    """The events of one analysis cycle, oldest first, and the time range they came from."""

    start_ns: int
    end_ns: int
    events: Sequence[EventView]

    @property
    def seconds(self) -> float:
        return max(1e-9, (self.end_ns - self.start_ns) / NS_PER_S)


SettingsT = TypeVar("SettingsT", bound=AgentSettings)


class BaseAgent(ABC):
    type_name: ClassVar[str]
    settings_model: ClassVar[type[AgentSettings]] = AgentSettings
    services: ClassVar[tuple[str, ...]] = ()
    """Services/programs read; empty reads every service."""
    event_types: ClassVar[tuple[str, ...]] = ()
    uses_model: ClassVar[bool] = False

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.name = settings.name or settings.type

    @abstractmethod
    def analyze(self, window: Window, model: LoadedModel | None) -> list[AnomalyRecord]:
        """Candidate anomalies found in one window of events."""

    def anomaly(
        self,
        kind: str,
        key: str,
        events: Sequence[EventView],
        *,
        severity: int,
        confidence: float,
        description: str,
        features: Mapping[str, float],
        host: str | None = None,
        model_version: str = "",
        time_ns: int | None = None,
    ) -> AnomalyRecord:
        """An anomaly of ``kind`` about ``key`` (the dedupe key is ``agent:kind:key``)."""
        return AnomalyRecord(
            agent=self.name,
            host=host if host is not None else (events[-1].host if events else ""),
            time_ns=time_ns if time_ns is not None else max((e.time_ns for e in events), default=0),
            type=kind,
            severity=severity,
            confidence=round(min(1.0, max(0.0, confidence)), 4),
            description=description,
            dedupe_key=f"{self.name}:{kind}:{key}",
            features={k: float(v) for k, v in features.items()},
            event_ids=[e.id for e in events][:MAX_EVENT_IDS],
            first_seen_ns=min((e.time_ns for e in events), default=time_ns or 0),
            last_seen_ns=max((e.time_ns for e in events), default=time_ns or 0),
            model_version=model_version,
        )


MAX_EVENT_IDS = 200
AGENT_TYPES: dict[str, type[BaseAgent]] = {}
AgentT = TypeVar("AgentT", bound=type[BaseAgent])


def register(agent_type: AgentT) -> AgentT:
    """Class decorator: make an agent type available to the ``agents`` config list."""
    AGENT_TYPES[agent_type.type_name] = agent_type
    return agent_type


def validate_settings(entry: dict[str, Any]) -> AgentSettings:
    """One ``agents`` entry as its type's settings (raises ValueError naming the problem)."""
    agent_type = AGENT_TYPES.get(str(entry.get("type", "")))
    if agent_type is None:
        known = ", ".join(sorted(AGENT_TYPES))
        raise ValueError(f"type: unknown agent type {entry.get('type')!r} (known: {known})")
    try:
        return agent_type.settings_model.model_validate(entry)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in error['loc'])}: "
            f"{'unknown key' if error['type'] == 'extra_forbidden' else error['msg']}"
            for error in exc.errors()
        ]
        raise ValueError("; ".join(problems)) from None


def create(settings: AgentSettings) -> BaseAgent:
    return AGENT_TYPES[settings.type](settings)


# Helpers the rule-based agents share -------------------------------------------------------
K = TypeVar("K")
V = TypeVar("V")


def group_by(items: Iterable[tuple[K, V]]) -> dict[K, list[V]]:
    groups: dict[K, list[V]] = {}
    for key, event in items:
        groups.setdefault(key, []).append(event)
    return groups


def densest(events: Sequence[EventView], span_s: float) -> list[EventView]:
    """The largest run of ``events`` (time-ordered) that fits in ``span_s`` seconds."""
    times = [e.time_ns for e in events]
    span_ns = int(span_s * NS_PER_S)
    best = (0, 0)
    for end in range(len(times)):
        begin = bisect.bisect_left(times, times[end] - span_ns, 0, end + 1)
        if end + 1 - begin > best[1] - best[0]:
            best = (begin, end + 1)
    return list(events[best[0] : best[1]])


def densest_distinct(
    events: Sequence[EventView], span_s: float, value: Callable[[EventView], str]
) -> tuple[list[EventView], int]:
    """The run within ``span_s`` seconds with the most distinct ``value``s, and that count."""
    times = [e.time_ns for e in events]
    span_ns = int(span_s * NS_PER_S)
    best: tuple[list[EventView], int] = ([], 0)
    for end in range(len(times)):
        begin = bisect.bisect_left(times, times[end] - span_ns, 0, end + 1)
        run = events[begin : end + 1]
        distinct = len({value(e) for e in run})
        if distinct > best[1]:
            best = (list(run), distinct)
    return best


def scaled(count: float, threshold: float) -> float:
    """Confidence that grows from 0.5 at the threshold towards 1 at four times it."""
    return min(1.0, 0.5 + 0.5 * (count - threshold) / max(1.0, 3 * threshold))
