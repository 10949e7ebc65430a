"""Notifications: alerts matched to rules, grouped, deduplicated, rate-limited, retried.

The notifier follows the alert stream like a watcher (on falling behind it re-reads what it
missed from the store, so no alert escapes the rules). For each rule an alert must match
the severity threshold, agents, hosts and kinds; then:

- dedupe: an anomaly (dedupe key) notified within ``dedupe_window_s`` is dropped unless the
  new alert is more severe — 100 recurrences of one anomaly (NEW, then ESCALATED at 10 and
  100) make one message;
- grouping: alerts are held ``group_wait_s`` after the first, then sent as one message
  listing up to ``max_listed`` anomalies — 100 different anomalies at once make one message;
- rate limit: at most ``max_messages`` per ``rate_period_s``; a group over the limit waits
  and merges with what follows, so nothing is dropped, only delayed;
- delivery: each channel separately, retried with exponential backoff and jitter (or the
  server's Retry-After) on errors that a retry can fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from anomaly_svc import metrics
from anomaly_svc.alerts import AlertHub, Subscription
from anomaly_svc.notify.channels import DeliveryFailed, Message, Sender, make_sender
from anomaly_svc.notify.settings import SEVERITY_NAMES, NotificationsSection, NotifyRule
from anomaly_svc.store import AlertRecord, AnomalyStore
from mesh.backoff import backoff_delay
from mesh.timeutil import ns_to_iso

log = logging.getLogger(__name__)
REPLAY_PAGE = 500


@dataclass
class RuleState:
    rule: NotifyRule
    pending: dict[str, AlertRecord] = field(default_factory=dict)
    """Held alerts by dedupe key (a newer alert for the same anomaly replaces the older)."""
    overflow: int = 0
    first_pending: float | None = None
    notified: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Dedupe key → (when it was last let through, its severity then)."""
    sent: deque[float] = field(default_factory=deque)
    held_by_rate: bool = False

    def matches(self, alert: AlertRecord) -> bool:
        rule, anomaly = self.rule, alert.anomaly
        return (
            anomaly.severity <= rule.max_level
            and (not rule.agents or anomaly.agent in rule.agents)
            and (not rule.hosts or anomaly.host in rule.hosts)
            and str(alert.kind) in rule.kinds
        )

    def admit(self, alert: AlertRecord, now: float) -> bool:
        """Hold the alert unless dedupe drops it; True when held."""
        key = alert.anomaly.dedupe_key
        if key in self.pending:
            self.pending[key] = alert
            return True
        last = self.notified.get(key)
        if (
            last is not None
            and now - last[0] < self.rule.dedupe_window_s
            and alert.anomaly.severity >= last[1]
        ):
            return False
        self.notified[key] = (now, alert.anomaly.severity)
        if len(self.pending) >= self.rule.max_pending:
            self.overflow += 1
            return True
        self.pending[key] = alert
        if self.first_pending is None:
            self.first_pending = now
        return True

    def due_at(self) -> float | None:
        """When the held group may go out (group wait and rate limit), or None."""
        if self.first_pending is None:
            return None
        due = self.first_pending + self.rule.group_wait_s
        if len(self.sent) >= self.rule.max_messages:
            due = max(due, self.sent[0] + self.rule.rate_period_s)
        return due

    def forget_old(self, now: float) -> None:
        window = self.rule.dedupe_window_s
        for key in [k for k, (seen, _) in self.notified.items() if now - seen >= window]:
            del self.notified[key]
        while self.sent and now - self.sent[0] >= self.rule.rate_period_s:
            self.sent.popleft()

    def take(self, now: float) -> tuple[list[AlertRecord], int]:
        alerts, overflow = list(self.pending.values()), self.overflow
        self.pending, self.overflow, self.first_pending = {}, 0, None
        self.held_by_rate = False
        self.sent.append(now)
        return alerts, overflow


def compose(rule: NotifyRule, alerts: list[AlertRecord], overflow: int) -> Message:
    """One message for a group: the most severe first, up to ``max_listed``, the rest counted."""
    ordered = sorted(alerts, key=lambda a: (a.anomaly.severity, -a.anomaly.last_seen_ns))
    total = len(ordered) + overflow
    top = ordered[0].anomaly
    if total == 1:
        subject = f"{SEVERITY_NAMES[top.severity]} {top.agent} {top.type} on {top.host or '-'}"
    else:
        subject = f"{total} anomalies (most severe: {SEVERITY_NAMES[top.severity]} {top.type})"
    lines = []
    for alert in ordered[: rule.max_listed]:
        a = alert.anomaly
        lines.append(
            f"- [{SEVERITY_NAMES[a.severity]}] {a.agent}/{a.type} on {a.host or '-'} "
            f"({alert.kind}, seen {a.count}x, last {ns_to_iso(a.last_seen_ns or a.time_ns)}): "
            f"{a.description} [anomaly {a.id}]"
        )
    unlisted = total - min(len(ordered), rule.max_listed)
    if unlisted:
        lines.append(f"... and {unlisted} more")
    lines.append(f"(rule {rule.name})")
    return Message(subject, "\n".join(lines))


class Notifier:
    def __init__(
        self,
        settings: NotificationsSection,
        store: AnomalyStore,
        hub: AlertHub,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.clock = clock
        self.rules = [RuleState(rule) for rule in settings.rules]
        self.senders: dict[str, Sender] = {}
        self._after = 0
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self.delivered = 0

    async def start(self) -> None:
        if not self.rules:
            return
        self.senders = {c.name: make_sender(c) for c in self.settings.channels}
        self._after = await self.store.last_alert_id()
        self._subscription = self.hub.subscribe()
        self._task = asyncio.create_task(self._run(), name="notifier")

    async def stop(self) -> None:
        held = sum(len(r.pending) + r.overflow for r in self.rules)
        if held:
            log.warning("notifications not sent at shutdown", extra={"alerts": held})
        for task in [t for t in (self._task,) if t is not None] + list(self._deliveries):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._subscription is not None:
            self.hub.unsubscribe(self._subscription)
        for sender in self.senders.values():
            await sender.close()

    async def _run(self) -> None:
        assert self._subscription is not None
        while True:
            timeout = self._next_due()
            try:
                alert = await asyncio.wait_for(self._subscription.queue.get(), timeout)
            except TimeoutError:
                alert = None
            else:
                if alert is None:
                    return  # the hub closed (shutdown)
                if alert.alert_id > self._after:
                    self._after = alert.alert_id
                    self._offer(alert)
            if self._subscription.overflowed:
                await self._catch_up()
            self._flush_due()

    async def _catch_up(self) -> None:
        """Fell behind the hub: subscribe again, then read what was missed from the store."""
        assert self._subscription is not None
        self.hub.unsubscribe(self._subscription)
        self._subscription = self.hub.subscribe()
        while page := await self.store.alerts_after(self._after, REPLAY_PAGE):
            for alert in page:
                self._after = alert.alert_id
                self._offer(alert)

    def _offer(self, alert: AlertRecord) -> None:
        now = self.clock()
        for state in self.rules:
            if not state.matches(alert):
                continue
            state.forget_old(now)
            if not state.admit(alert, now):
                metrics.NOTIFY_SUPPRESSED.labels(state.rule.name, "dedupe").inc()

    def _next_due(self) -> float | None:
        dues = [d for d in (r.due_at() for r in self.rules) if d is not None]
        return max(0.0, min(dues) - self.clock()) if dues else None

    def _flush_due(self) -> None:
        now = self.clock()
        for state in self.rules:
            state.forget_old(now)
            due = state.due_at()
            if due is None:
                continue
            if due > now:
                if len(state.sent) >= state.rule.max_messages and not state.held_by_rate:
                    state.held_by_rate = True
                    metrics.NOTIFY_SUPPRESSED.labels(state.rule.name, "rate_limit").inc()
                continue
            alerts, overflow = state.take(now)
            message = compose(state.rule, alerts, overflow)
            for channel in state.rule.channels:
                self._deliver(state.rule.name, self.senders[channel], message)

    def _deliver(self, rule: str, sender: Sender, message: Message) -> None:
        if len(self._deliveries) >= self.settings.max_deliveries:
            log.error(
                "notification dropped: too many deliveries waiting",
                extra={"rule": rule, "channel": sender.name},
            )
            metrics.NOTIFICATIONS.labels(sender.name, "dropped").inc()
            return
        task = asyncio.create_task(self._send_with_retries(rule, sender, message))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _send_with_retries(self, rule: str, sender: Sender, message: Message) -> None:
        retry = self.settings.retry
        context = {"rule": rule, "channel": sender.name}
        for attempt in range(retry.max_attempts):
            try:
                await sender.send(message)
            except DeliveryFailed as failure:
                last = attempt + 1 == retry.max_attempts
                if not failure.retryable or last:
                    log.error(
                        "notification failed",
                        extra={**context, "reason": failure.reason, "attempts": attempt + 1},
                    )
                    metrics.NOTIFICATIONS.labels(sender.name, "failed").inc()
                    return
                delay = backoff_delay(attempt, retry.backoff_initial_s, retry.backoff_max_s)
                if failure.retry_after_s is not None:
                    delay = min(max(delay, failure.retry_after_s), retry.backoff_max_s)
                log.warning(
                    "notification failed, retrying",
                    extra={**context, "reason": failure.reason, "retry_in_s": round(delay, 2)},
                )
                metrics.NOTIFICATIONS.labels(sender.name, "retried").inc()
                await asyncio.sleep(delay)
                continue
            self.delivered += 1
            metrics.NOTIFICATIONS.labels(sender.name, "sent").inc()
            log.info("notification sent", extra={**context, "subject": message.subject})
            return
