"""Notifications against a real local SMTP server (aiosmtpd) and a real local HTTP server
standing in for a Slack webhook (Slack itself cannot run here)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from anomaly_mesh import Mesh, mesh
from support import Pki

from anomaly_svc import AnomalyServiceConfig
from anomaly_svc.notify.notifier import RuleState
from anomaly_svc.notify.settings import NotifyRule
from anomaly_svc.store import AlertKind, AlertRecord, AnomalyRecord
from mesh.config import ConfigError, load_config
from mesh.timeutil import now_ns

SMTP_PASSWORD = "pw-for-the-relay-7f3a"
WEBHOOK_SECRET = "T0000/B0000/s3cr3t-hook-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Mailbox:
    port: int
    messages: list[Any] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.messages.append(message_from_bytes(envelope.content))  # type: ignore[arg-type]
        return "250 OK"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login = (data.login.decode(), data.password.decode())
        self.logins.append(login)
        return AuthResult(success=login == ("edgebot", SMTP_PASSWORD))


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(free_port())
    controller = Controller(
        box, hostname="127.0.0.1", port=box.port, authenticator=box.authenticate,
        auth_require_tls=False,
    )  # fmt: skip
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass
class Webhook:
    """A local HTTP server answering each POST with the next status of ``statuses``."""

    statuses: list[int]
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/{WEBHOOK_SECRET}"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(statuses=[])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.requests.append((self.command, self.path, dict(self.headers), body))
            status = hook.statuses.pop(0) if hook.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    hook.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=hook.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()


def candidate(key: str, level: int = 4, agent: str = "auth") -> AnomalyRecord:
    return AnomalyRecord(
        agent=agent, host="gw", time_ns=now_ns(), type="brute_force", severity=level,
        confidence=0.9, description=f"failed logins from {key}", dedupe_key=f"{agent}:bf:{key}",
    )  # fmt: skip


async def record(m: Mesh, anomaly: AnomalyRecord) -> None:
    assert m.anomaly.detection is not None
    await m.anomaly.detection.scheduler.recorder.record(anomaly)


async def wait_for(predicate: Any, timeout_s: float = 10) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


def _all_logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


async def test_a_storm_yields_one_email(
    pki: Pki, tmp_path: Path, mailbox: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD + "\n")
    notifications = {
        "channels": [
            {"type": "smtp", "name": "mail", "host": "127.0.0.1", "port": mailbox.port,
             "security": "none", "username": "edgebot", "password_file": str(password_file),
             "sender": "edgebot@example.org", "recipients": ["ops@example.org"]},
        ],
        "rules": [{"name": "ops", "channels": ["mail"], "min_severity": "warning",
                   "group_wait_s": 4.0, "max_listed": 20}],
    }  # fmt: skip
    async with mesh(pki, tmp_path, notifications=notifications) as m:
        # One anomaly recurring 100 times raises NEW, then ESCALATED at 10 and at 100
        # recurrences — the last one after the first message went out.
        for _ in range(50):
            await record(m, candidate("203.0.113.9"))
        await wait_for(lambda: len(mailbox.messages) == 1)
        for _ in range(50):
            await record(m, candidate("203.0.113.9"))
        assert [a.count for a in await m.anomalies("auth")] == [100]
        await asyncio.sleep(4.3)
        assert len(mailbox.messages) == 1, "the storm sent more than one message"
        mail = mailbox.messages[0]
        assert mail["Subject"] == "[EdgeBot] warning auth brute_force on gw"
        assert mail["To"] == "ops@example.org"
        assert "failed logins from 203.0.113.9" in mail.get_payload()
        assert mailbox.logins == [("edgebot", SMTP_PASSWORD)]

        # A hundred different anomalies at once: one message listing 20 and counting the rest;
        # one below the rule's threshold among them is not part of it.
        for n in range(100):
            await record(m, candidate(f"198.51.100.{n}"))
        await record(m, candidate("192.0.2.1", level=6))
        await wait_for(lambda: len(mailbox.messages) == 2)
        await asyncio.sleep(4.3)
        assert len(mailbox.messages) == 2
        storm = mailbox.messages[1]
        assert storm["Subject"] == "[EdgeBot] 100 anomalies (most severe: warning brute_force)"
        body = storm.get_payload()
        assert body.count("\n- [warning] auth/brute_force") + body.startswith("- [") == 20
        assert "... and 80 more" in body
        assert "192.0.2.1" not in body
    assert SMTP_PASSWORD not in _all_logged(caplog)


async def test_webhook_500_is_retried_and_4xx_is_not(
    pki: Pki,
    tmp_path: Path,
    webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("EDGEBOT_TEST_SLACK_URL", webhook.url)
    notifications = {
        "channels": [{"type": "webhook", "name": "slack", "url_env": "EDGEBOT_TEST_SLACK_URL"}],
        "rules": [{"name": "all", "channels": ["slack"], "min_severity": "info",
                   "group_wait_s": 0}],
        "retry": {"max_attempts": 4, "backoff_initial_s": 0.05, "backoff_max_s": 0.2},
    }  # fmt: skip
    async with mesh(pki, tmp_path, notifications=notifications) as m:
        webhook.statuses = [500]
        await record(m, candidate("203.0.113.1"))
        await wait_for(lambda: len(webhook.requests) == 2)
        assert m.anomaly.notifier is not None
        await wait_for(lambda: m.anomaly.notifier.delivered == 1)  # type: ignore[union-attr]
        (method, path, headers, first), (_, _, _, second) = webhook.requests
        assert (method, path) == ("POST", f"/services/{WEBHOOK_SECRET}")
        assert headers["Content-Type"] == "application/json"
        assert first == second, "the retry sent a different body"
        text = json.loads(first)["text"]
        assert text.startswith("*warning auth brute_force on gw*\n")
        assert "failed logins from 203.0.113.1" in text

        webhook.statuses = [404]
        await record(m, candidate("203.0.113.2"))
        await wait_for(lambda: len(webhook.requests) == 3)
        await asyncio.sleep(0.5)
        assert len(webhook.requests) == 3, "a 404 was retried"
    logged = _all_logged(caplog)
    assert "HTTP 500" in logged
    assert "HTTP 404" in logged
    assert "s3cr3t" not in logged


def test_rate_limit_holds_a_group_until_the_window_allows_it() -> None:
    rule = NotifyRule(name="r", channels=["c"], group_wait_s=1, max_messages=2, rate_period_s=60)
    state = RuleState(rule)

    def alert(n: int) -> AlertRecord:
        return AlertRecord(n, AlertKind.NEW, candidate(f"k{n}"), n)

    for sent_at in (0.0, 10.0):
        assert state.admit(alert(int(sent_at)), sent_at)
        assert state.due_at() == sent_at + 1
        state.take(sent_at + 1)
    assert state.admit(alert(99), 20.0)
    assert state.admit(alert(98), 25.0)
    # Two messages went out in the last 60 s: the group waits for the first to age out.
    assert state.due_at() == 61.0
    state.forget_old(61.0)
    assert state.due_at() == 21.0
    alerts, overflow = state.take(61.0)
    assert [a.alert_id for a in alerts] == [99, 98]
    assert overflow == 0


def test_secrets_come_from_files_or_env_and_bad_channels_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def load(notifications: dict[str, Any]) -> AnomalyServiceConfig:
        path = tmp_path / "anomaly.yaml"
        path.write_text(json.dumps({"notifications": notifications}))
        return load_config(AnomalyServiceConfig, path, "anomaly")

    mail = {"type": "smtp", "name": "mail", "host": "mx", "sender": "a@b", "recipients": ["c@d"]}
    with pytest.raises(ConfigError) as missing:
        load({"channels": [mail | {"username": "u", "password_file": str(tmp_path / "nope")}]})
    assert "notifications.channels.0.smtp: Value error, password_file: cannot read" in str(
        missing.value
    )
    with pytest.raises(ConfigError) as unset:
        load({"channels": [{"type": "webhook", "name": "hook", "url_env": "EDGEBOT_NO_SUCH"}]})
    assert "url_env: environment variable EDGEBOT_NO_SUCH is not set" in str(unset.value)
    monkeypatch.setenv("EDGEBOT_HOOK", "not-a-url-xyzzy-91")
    with pytest.raises(ConfigError) as bad_url:
        load({"channels": [{"type": "webhook", "name": "hook", "url_env": "EDGEBOT_HOOK"}]})
    assert "url_env: does not hold an http:// or https:// URL" in str(bad_url.value)
    assert "xyzzy" not in str(bad_url.value)
    with pytest.raises(ConfigError) as unknown:
        load({"channels": [mail], "rules": [{"name": "r", "channels": ["pager"]}]})
    assert "rules.0.channels: unknown channel 'pager'" in str(unknown.value)

    monkeypatch.setenv("EDGEBOT_HOOK", f"https://hooks.example.org/{WEBHOOK_SECRET}")
    config = load({"channels": [{"type": "webhook", "name": "hook", "url_env": "EDGEBOT_HOOK"}]})
    channel = config.notifications.channels[0]
    assert channel.url.endswith(WEBHOOK_SECRET)  # type: ignore[union-attr]
    assert WEBHOOK_SECRET not in json.dumps(config.model_dump(mode="json"))
