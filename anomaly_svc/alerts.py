"""Alerts: recording anomalies, deciding NEW/ESCALATED, and fanning alerts out to watchers.

A watcher subscribes before it replays stored alerts, so nothing raised during the replay is
missed; it skips live alerts whose id it already replayed. Each watcher has a bounded queue:
one that falls behind by more than that is ended with RESOURCE_EXHAUSTED and resumes from its
last alert id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from anomaly_svc import metrics
from anomaly_svc.store import AlertKind, AlertRecord, AnomalyRecord, AnomalyStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertFilter:
    max_level: int | None = None
    agents: Sequence[str] = ()
    hosts: Sequence[str] = ()

    def matches(self, anomaly: AnomalyRecord) -> bool:
        return (
            (self.max_level is None or anomaly.severity <= self.max_level)
            and (not self.agents or anomaly.agent in self.agents)
            and (not self.hosts or anomaly.host in self.hosts)
        )


@dataclass(eq=False)
class Subscription:
    """One watcher's queue; ``None`` in the queue ends the stream (shutdown)."""

    queue: asyncio.Queue[AlertRecord | None]
    overflowed: bool = False


class AlertHub:
    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self._subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        subscription = Subscription(asyncio.Queue(self.buffer))
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def publish(self, alert: AlertRecord) -> None:
        for subscription in list(self._subscribers):
            try:
                subscription.queue.put_nowait(alert)
            except asyncio.QueueFull:
                subscription.overflowed = True
                self._subscribers.discard(subscription)

    def close(self) -> None:
        """End every watch stream (shutdown)."""
        for subscription in list(self._subscribers):
            while True:
                try:
                    subscription.queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    subscription.queue.get_nowait()
        self._subscribers.clear()

    @property
    def watchers(self) -> int:
        return len(self._subscribers)


class AnomalyRecorder:
    """Stores candidates (folding repeats) and raises alerts for new and escalated ones."""

    def __init__(self, store: AnomalyStore, hub: AlertHub, escalate_counts: Sequence[int]) -> None:
        self.store = store
        self.hub = hub
        self.escalate_counts = sorted(set(escalate_counts))
        self._lock = asyncio.Lock()

    async def record(self, candidate: AnomalyRecord) -> tuple[AnomalyRecord, AlertRecord | None]:
        async with self._lock:
            before = await self.store.by_dedupe_key(candidate.dedupe_key)
            stored, is_new = await self.store.record(candidate)
            severity = metrics.SEVERITY_NAMES[min(7, max(0, candidate.severity))]
            metrics.ANOMALIES.labels(stored.agent, severity).inc()
            kind = AlertKind.NEW if is_new else self._escalation(before, stored)
            if kind is None:
                return stored, None
            alert = await self.store.add_alert(kind, stored)
        metrics.ALERTS.labels(str(kind)).inc()
        self.hub.publish(alert)
        return stored, alert

    def _escalation(self, before: AnomalyRecord | None, after: AnomalyRecord) -> AlertKind | None:
        if before is None:
            return AlertKind.NEW
        if after.severity < before.severity:
            return AlertKind.ESCALATED
        if any(before.count < mark <= after.count for mark in self.escalate_counts):
            return AlertKind.ESCALATED
        return None
