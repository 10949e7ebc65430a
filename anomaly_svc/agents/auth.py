"""AuthAgent: sshd, dropbear, LuCI/uhttpd, passwd — brute force, user enumeration, logins
after many failures, root password changes; keyed by source IP."""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from anomaly_svc.agents.base import (
    ERROR,
    NOTICE,
    WARNING,
    AgentSettings,
    BaseAgent,
    EventView,
    Window,
    densest,
    group_by,
    register,
    scaled,
)
from anomaly_svc.models.manager import LoadedModel
from anomaly_svc.store import AnomalyRecord

_IP = r"(?P<ip>[0-9A-Fa-f.:]*[0-9A-Fa-f])"
FAILURES = (
    re.compile(rf"Invalid user (?P<user>\S*) from {_IP}(?: port|$)"),
    re.compile(
        rf"Failed (?:password|publickey|keyboard-interactive/pam|none) for "
        rf"(?P<invalid>invalid user )?(?P<user>\S+) from {_IP}"
    ),
    re.compile(rf"authentication failure;.*rhost={_IP}(?:\s+user=(?P<user>\S+))?"),
    re.compile(
        rf"(?:Disconnected from|Connection closed by|Connection reset by) "
        rf"(?:authenticating|(?P<invalid>invalid)) user (?P<user>\S+) {_IP} port"
    ),
    re.compile(rf"Unable to negotiate with {_IP} port"),
    re.compile(rf"Bad (?:PAM )?password attempt for '(?P<user>[^']*)' from {_IP}:\d+"),
    re.compile(
        rf"Login attempt for (?P<invalid>nonexistent) user(?: '(?P<user>[^']*)')? from {_IP}:\d+"
    ),
    re.compile(rf"luci: failed login on \S+ for (?P<user>\S+) from {_IP}"),
)
INVALID_USER = re.compile(r"Invalid user|invalid user|nonexistent user")
SUCCESS = (
    re.compile(rf"Accepted \S+ for (?P<user>\S+) from {_IP} port"),
    re.compile(rf"Password auth succeeded for '(?P<user>[^']*)' from {_IP}:\d+"),
    re.compile(rf"luci: accepted login on \S+ for (?P<user>\S+) from {_IP}"),
)
PASSWORD_CHANGE = re.compile(r"password for (?P<user>\S+) changed by (?P<by>\S+)")


class AuthSettings(AgentSettings):
    brute_force_threshold: int = Field(5, ge=1, description="Failures per source in the window.")
    brute_force_window_s: float = Field(60.0, gt=0)
    slow_brute_force_threshold: int = Field(10, ge=1, description="Failures per source, slow.")
    slow_brute_force_window_s: float = Field(3600.0, gt=0)
    paced_min_failures: int = Field(4, ge=3, description="Evenly paced failures per source.")
    paced_max_variation: float = Field(
        0.25, gt=0, description="Max coefficient of variation of the gaps between failures."
    )
    user_enum_threshold: int = Field(5, ge=2, description="Distinct invalid users per source.")
    success_after_failures: int = Field(5, ge=1, description="Failures before a login counts.")
    watched_password_users: list[str] = Field(default_factory=lambda: ["root"])


@dataclass(frozen=True)
class Attempt:
    ip: str
    user: str
    invalid_user: bool
    event: EventView


@register
class AuthAgent(BaseAgent):
    type_name = "auth"
    settings_model = AuthSettings
    services = ("sshd", "sshd-session", "dropbear", "uhttpd", "luci", "passwd", "login")

    def analyze(self, window: Window, model: LoadedModel | None) -> list[AnomalyRecord]:
        s = self.settings
        assert isinstance(s, AuthSettings)
        failures: list[Attempt] = []
        successes: list[Attempt] = []
        found: list[AnomalyRecord] = []
        for event in window.events:
            if (failure := _match(FAILURES, event)) is not None:
                failures.append(failure)
            elif (success := _match(SUCCESS, event)) is not None:
                successes.append(success)
            elif (change := self._password_change(event, s)) is not None:
                found.append(change)
        by_ip = group_by((a.ip, a) for a in failures)
        for ip, attempts in by_ip.items():
            found += self._brute_force(ip, attempts, s)
        for success in successes:
            earlier = [
                a for a in by_ip.get(success.ip, []) if a.event.time_ns <= success.event.time_ns
            ]
            if len(earlier) >= s.success_after_failures:
                found.append(self._login_after_failures(success, earlier))
        return found

    def _brute_force(
        self, ip: str, attempts: Sequence[Attempt], s: AuthSettings
    ) -> list[AnomalyRecord]:
        events = [a.event for a in attempts]
        users = {a.user for a in attempts if a.invalid_user and a.user}
        found = []
        fast = densest(events, s.brute_force_window_s)
        slow = densest(events, s.slow_brute_force_window_s)
        features = {"failures": len(events), "distinct_users": len(users)}
        if len(fast) >= s.brute_force_threshold:
            found.append(self.anomaly(
                "brute_force", ip, fast, severity=WARNING,
                confidence=scaled(len(fast), s.brute_force_threshold),
                description=f"{len(fast)} failed logins from {ip} within "
                f"{s.brute_force_window_s:g}s",
                features={**features, "burst": len(fast)},
            ))  # fmt: skip
        elif len(slow) >= s.slow_brute_force_threshold:
            found.append(self.anomaly(
                "slow_brute_force", ip, slow, severity=WARNING,
                confidence=scaled(len(slow), s.slow_brute_force_threshold),
                description=f"{len(slow)} failed logins from {ip} within "
                f"{s.slow_brute_force_window_s:g}s",
                features={**features, "burst": len(slow)},
            ))  # fmt: skip
        elif (variation := _pacing(events, s.paced_min_failures)) is not None and (
            variation <= s.paced_max_variation
        ):
            found.append(self.anomaly(
                "paced_brute_force", ip, events, severity=NOTICE, confidence=0.6,
                description=f"{len(events)} failed logins from {ip} at regular intervals",
                features={**features, "gap_variation": variation},
            ))  # fmt: skip
        if len(users) >= s.user_enum_threshold:
            found.append(self.anomaly(
                "user_enumeration", ip, events, severity=WARNING,
                confidence=scaled(len(users), s.user_enum_threshold),
                description=f"{len(users)} different invalid user names tried from {ip}",
                features=features,
            ))  # fmt: skip
        return found

    def _login_after_failures(self, success: Attempt, earlier: Sequence[Attempt]) -> AnomalyRecord:
        return self.anomaly(
            "login_after_failures", f"{success.ip}:{success.user}",
            [*(a.event for a in earlier), success.event], severity=ERROR, confidence=0.8,
            description=f"{success.user} logged in from {success.ip} after "
            f"{len(earlier)} failed attempts",
            features={"failures_before": len(earlier)},
        )  # fmt: skip

    def _password_change(self, event: EventView, s: AuthSettings) -> AnomalyRecord | None:
        change = PASSWORD_CHANGE.search(event.message)
        if change is None or change["user"] not in s.watched_password_users:
            return None
        user, by = change["user"], change["by"]
        return self.anomaly(
            "password_change", f"{event.host}:{user}", [event], severity=NOTICE,
            confidence=1.0, description=f"password for {user} changed by {by} on {event.host}",
            features={"changes": 1},
        )  # fmt: skip


def _match(patterns: Sequence[re.Pattern[str]], event: EventView) -> Attempt | None:
    for pattern in patterns:
        match = pattern.search(event.message)
        if match is not None:
            groups = match.groupdict()
            invalid = bool(groups.get("invalid")) or bool(INVALID_USER.search(event.message))
            return Attempt(match["ip"], groups.get("user") or "", invalid, event)
    return None


def _pacing(events: Sequence[EventView], minimum: int) -> float | None:
    """Coefficient of variation of the gaps between attempts (None: too few or no gaps)."""
    if len(events) < minimum:
        return None
    gaps = [b.time_ns - a.time_ns for a, b in itertools.pairwise(events)]
    mean = statistics.fmean(gaps)
    if mean <= 0:
        return None
    return statistics.pstdev(gaps) / mean
