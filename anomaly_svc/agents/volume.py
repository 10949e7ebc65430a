"""VolumeAgent: per host/service event rates against a learned baseline, including silence.

The baseline is an exponentially weighted mean and variance of the rate per (host, service),
kept per hour of the day (seasonality) once an hour slot has enough observations, and overall
before that. Nothing is reported until ``warmup_cycles`` cycles have been observed.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from dataclasses import dataclass

from pydantic import Field

from anomaly_svc.agents.base import (
    NOTICE,
    WARNING,
    AgentSettings,
    BaseAgent,
    EventView,
    Window,
    register,
    scaled,
)
from anomaly_svc.models.manager import LoadedModel
from anomaly_svc.store import AnomalyRecord
from mesh.timeutil import NS_PER_S


class VolumeSettings(AgentSettings):
    warmup_cycles: int = Field(12, ge=1, description="Cycles observed before reporting.")
    slot_min_observations: int = Field(3, ge=1, description="Before an hour slot is used.")
    smoothing: float = Field(0.1, gt=0, le=1, description="EWMA weight of the newest cycle.")
    spike_z: float = Field(4.0, gt=0, description="Standard deviations above the baseline.")
    spike_ratio: float = Field(3.0, ge=1, description="...and at least this times the baseline.")
    spike_min_events: int = Field(50, ge=1, description="...and at least this many events.")
    silence_min_expected: float = Field(
        20.0, gt=0, description="Expected events in the window before silence is reported."
    )
    max_keys: int = Field(10_000, ge=1, description="Host/service pairs tracked.")


@dataclass
class Rate:
    mean: float = 0.0
    var: float = 0.0
    observations: int = 0

    def update(self, value: float, alpha: float) -> None:
        if self.observations == 0:
            self.mean = value
        else:
            delta = value - self.mean
            self.mean += alpha * delta
            self.var = (1 - alpha) * (self.var + alpha * delta * delta)
        self.observations += 1


@dataclass
class Baseline:
    overall: Rate
    by_hour: dict[int, Rate]


@register
class VolumeAgent(BaseAgent):
    type_name = "volume"
    settings_model = VolumeSettings

    def __init__(self, settings: AgentSettings) -> None:
        super().__init__(settings)
        self._baselines: dict[tuple[str, str], Baseline] = {}

    def analyze(self, window: Window, model: LoadedModel | None) -> list[AnomalyRecord]:
        s = self.settings
        assert isinstance(s, VolumeSettings)
        counts: Counter[tuple[str, str]] = Counter((e.host, e.service) for e in window.events)
        samples: dict[tuple[str, str], list[EventView]] = {}
        for event in window.events:
            samples.setdefault((event.host, event.service), []).append(event)
        hour = dt.datetime.fromtimestamp(window.end_ns / NS_PER_S, dt.UTC).hour
        found = []
        for key in set(counts) | set(self._baselines):
            baseline = self._baselines.get(key)
            if baseline is None:
                if len(self._baselines) >= s.max_keys:
                    continue
                baseline = self._baselines[key] = Baseline(Rate(), {})
            rate = counts[key] / window.seconds
            anomaly = self._judge(key, counts[key], baseline, hour, window, samples.get(key, []), s)
            if anomaly is not None:
                found.append(anomaly)
            baseline.overall.update(rate, s.smoothing)
            baseline.by_hour.setdefault(hour, Rate()).update(rate, s.smoothing)
        return found

    def _judge(
        self,
        key: tuple[str, str],
        count: int,
        baseline: Baseline,
        hour: int,
        window: Window,
        events: list[EventView],
        s: VolumeSettings,
    ) -> AnomalyRecord | None:
        if baseline.overall.observations < s.warmup_cycles:
            return None
        slot = baseline.by_hour.get(hour)
        reference = (
            slot if slot and slot.observations >= s.slot_min_observations else baseline.overall
        )
        expected = reference.mean * window.seconds
        spread = max(math.sqrt(reference.var) * window.seconds, math.sqrt(max(expected, 1.0)))
        host, service = key
        features = {"count": count, "expected": expected, "spread": spread}
        if count == 0 and expected >= s.silence_min_expected:
            return self.anomaly(
                "silence", f"{host}:{service}", [], host=host, time_ns=window.end_ns,
                severity=WARNING, confidence=scaled(expected, s.silence_min_expected),
                description=f"no events from {service or 'any service'} on {host} "
                f"(about {expected:.0f} expected)",
                features=features,
            )  # fmt: skip
        is_spike = (
            count >= s.spike_min_events
            and count > expected + s.spike_z * spread
            and count >= s.spike_ratio * expected
        )
        if not is_spike:
            return None
        return self.anomaly(
            "rate_spike", f"{host}:{service}", events, host=host, severity=NOTICE,
            confidence=scaled(count, max(1.0, s.spike_ratio * expected)),
            description=f"{count} events from {service or 'any service'} on {host} "
            f"(about {expected:.0f} expected)",
            features=features,
        )  # fmt: skip
