"""Operator logins: tokens compared in constant time, server-side sessions with a CSRF token."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

SESSION_COOKIE = "edgebot_console_session"
CSRF_HEADER = "X-CSRF-Token"


class TokenFileError(ValueError):
    """A tokens file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class OperatorToken:
    operator: str
    secret: bytes


def read_tokens(path: Path) -> list[OperatorToken]:
    """``name:token`` lines (or bare tokens, named operator-<n>); blank and # lines skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TokenFileError(f"console.tokens_file: cannot read {path}: {exc.strerror}") from None
    tokens: list[OperatorToken] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep:
            name, secret = f"operator-{len(tokens) + 1}", line
        if len(secret) < 16:
            raise TokenFileError(f"{path}:{number}: a token needs at least 16 characters")
        tokens.append(OperatorToken(name.strip(), secret.strip().encode()))
    if not tokens:
        raise TokenFileError(f"console.tokens_file: {path} holds no token")
    return tokens


class TokenCheck:
    def __init__(self, tokens: list[OperatorToken]) -> None:
        self.tokens = tokens

    def operator_for(self, presented: str) -> str | None:
        """The operator whose token this is; every token is compared, in constant time."""
        found = None
        candidate = presented.encode()
        for token in self.tokens:
            if hmac.compare_digest(candidate, token.secret):
                found = token.operator
        return found


@dataclass
class Session:
    id: str
    operator: str
    method: str
    csrf_token: str
    expires: float
    created: float = field(default_factory=time.monotonic)

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.csrf_token.encode()
        )


class Sessions:
    """Sessions kept in this process (a restart logs everyone out), oldest dropped first."""

    def __init__(self, ttl_s: float, max_sessions: int) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def open(self, operator: str, method: str) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32),
            operator=operator,
            method=method,
            csrf_token=secrets.token_urlsafe(32),
            expires=time.monotonic() + self.ttl_s,
        )
        self._sessions[session.id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires <= time.monotonic():
            del self._sessions[session_id]
            return None
        return session

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


class LoginLimiter:
    """At most ``per_minute`` failed logins per client address in any 60 s."""

    def __init__(self, per_minute: int, max_clients: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float]:
        window = self._failures.setdefault(client, deque())
        cutoff = time.monotonic() - 60
        while window and window[0] < cutoff:
            window.popleft()
        return window

    def blocked(self, client: str) -> bool:
        return len(self._recent(client)) >= self.per_minute

    def failed(self, client: str) -> None:
        self._recent(client).append(time.monotonic())
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
