"""The ``notifications`` configuration section: channels, rules and retries.

Secrets (the SMTP password, the webhook URL — a Slack URL is its own credential) come only
from a file or an environment variable; they are read when the configuration is validated
(so a missing file fails at start-up naming the key), kept in private attributes that no
dump or log shows, and never appear in an error message.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, model_validator

from mesh.config import Section

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
SEVERITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
AlertKindName = Literal["new", "escalated"]
ALERT_KINDS: tuple[AlertKindName, ...] = ("new", "escalated")
SeverityName = Literal["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]


def read_secret(path: Path | None, env: str | None, what: str) -> str:
    """The secret from ``path`` or the environment variable ``env`` ("" when neither is set).

    Errors name the key and the variable, never the value.
    """
    if path is not None:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"{what}_file: cannot read {path}: {exc.strerror}") from None
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ValueError(f"{what}_env: environment variable {env} is not set or empty")
        return value
    return ""


class SmtpChannel(Section):
    type: Literal["smtp"] = Field(description="An e-mail channel (aiosmtplib).")
    name: str = Field(pattern=NAME_PATTERN, description="Names the channel in rules and logs.")
    host: str = Field(description="SMTP server host name or address.")
    port: int = Field(25, ge=1, le=65535, description="SMTP server port.")
    security: Literal["none", "starttls", "tls"] = Field(
        "starttls", description="none (plain), starttls (upgrade), or tls (implicit, port 465)."
    )
    username: str | None = Field(None, description="Login name; requires a password.")
    password_file: Path | None = Field(None, description="File holding the SMTP password.")
    password_env: str | None = Field(
        None, description="Environment variable holding the SMTP password."
    )
    sender: str = Field(description="From address.")
    recipients: list[str] = Field(min_length=1, description="To addresses.")
    subject_prefix: str = Field("[EdgeBot]", description="Starts every subject line.")
    timeout_s: float = Field(10.0, gt=0, le=300, description="Whole-delivery timeout.")
    _password: str = PrivateAttr("")

    @model_validator(mode="after")
    def _load_password(self) -> SmtpChannel:
        self._password = read_secret(self.password_file, self.password_env, "password")
        if self.username and not self._password:
            raise ValueError("username is set: give password_file or password_env")
        if self._password and not self.username:
            raise ValueError("a password is set: give the username too")
        return self

    @property
    def password(self) -> str:
        return self._password


class WebhookChannel(Section):
    type: Literal["webhook"] = Field(
        description="A Slack-compatible incoming webhook: POST {'text': ...} as JSON (httpx)."
    )
    name: str = Field(pattern=NAME_PATTERN, description="Names the channel in rules and logs.")
    url_file: Path | None = Field(None, description="File holding the webhook URL (a secret).")
    url_env: str | None = Field(
        None, description="Environment variable holding the webhook URL (a secret)."
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="Per-request timeout.")
    verify_tls: bool = Field(True, description="Verify the server certificate (https).")
    _url: str = PrivateAttr("")

    @model_validator(mode="after")
    def _load_url(self) -> WebhookChannel:
        if (self.url_file is None) == (self.url_env is None):
            raise ValueError("give exactly one of url_file and url_env")
        url = read_secret(self.url_file, self.url_env, "url")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            source = "url_file" if self.url_file is not None else "url_env"
            raise ValueError(f"{source}: does not hold an http:// or https:// URL with a host")
        self._url = url
        return self

    @property
    def url(self) -> str:
        return self._url


Channel = Annotated[SmtpChannel | WebhookChannel, Field(discriminator="type")]


class NotifyRule(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Names the rule in logs and metrics.")
    channels: list[str] = Field(min_length=1, description="Channel names this rule sends to.")
    min_severity: SeverityName = Field(
        "warning", description="Alerts at least this severe (syslog name) match."
    )
    agents: list[str] = Field(default_factory=list, description="Only these agents; empty: all.")
    hosts: list[str] = Field(default_factory=list, description="Only these hosts; empty: all.")
    kinds: list[AlertKindName] = Field(
        default_factory=lambda: list(ALERT_KINDS), description="Alert kinds that match."
    )
    group_wait_s: float = Field(
        10.0,
        ge=0,
        description="Alerts matching within this long after the first one go out as one "
        "message (a storm becomes one message).",
    )
    dedupe_window_s: float = Field(
        3600.0,
        ge=0,
        description="An anomaly (dedupe key) is notified once per window; a later alert "
        "for it passes only when it is more severe.",
    )
    max_messages: int = Field(
        10, ge=1, description="Messages at most per rate_period_s; more wait and are merged."
    )
    rate_period_s: float = Field(3600.0, gt=0, description="The rate limit's sliding window.")
    max_listed: int = Field(
        20, ge=1, le=500, description="Anomalies listed in one message; the rest are counted."
    )
    max_pending: int = Field(
        1000, ge=1, description="Alerts held per rule while waiting; more are only counted."
    )

    @property
    def max_level(self) -> int:
        return SEVERITY_NAMES.index(self.min_severity)


class RetrySettings(Section):
    max_attempts: int = Field(5, ge=1, le=20, description="Tries per message and channel.")
    backoff_initial_s: float = Field(1.0, gt=0, description="First retry delay.")
    backoff_max_s: float = Field(60.0, gt=0, description="Retry delays double up to this.")


class NotificationsSection(Section):
    channels: list[Channel] = Field(
        default_factory=list, description="Where messages go: smtp and webhook channels."
    )
    rules: list[NotifyRule] = Field(
        default_factory=list, description="Which alerts go where; no rule: no notifications."
    )
    retry: RetrySettings = Field(
        default_factory=RetrySettings, description="Retries with exponential backoff."
    )
    max_deliveries: int = Field(
        16,
        ge=1,
        description="Deliveries (a message to a channel) in progress or waiting to retry; "
        "more are dropped and counted.",
    )

    @model_validator(mode="after")
    def _rules_name_channels(self) -> NotificationsSection:
        names = [c.name for c in self.channels]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"channels: names must be unique; repeated: {', '.join(repeated)}")
        rule_names = [r.name for r in self.rules]
        repeated = sorted({n for n in rule_names if rule_names.count(n) > 1})
        if repeated:
            raise ValueError(f"rules: names must be unique; repeated: {', '.join(repeated)}")
        for position, rule in enumerate(self.rules):
            unknown = [c for c in rule.channels if c not in names]
            if unknown:
                raise ValueError(
                    f"rules.{position}.channels: unknown channel {unknown[0]!r} "
                    f"(channels: {', '.join(names) or 'none'})"
                )
        return self
