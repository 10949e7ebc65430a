"""Who is calling: the principal named by the peer certificate (or an operator token)."""

from __future__ import annotations

import contextvars
import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from mesh.types import Context

log = logging.getLogger(__name__)
# The trust domain of every SPIFFE id the mesh issues (mesh.pki) and accepts. Kept here,
# not in mesh.pki, so that a running service does not import the certificate library.
SPIFFE_TRUST_DOMAIN = "edgebot"


class Kind(StrEnum):
    SERVICE = "service"
    AGENT = "agent"
    OPERATOR = "operator"
    # Plaintext development mode: nobody can be verified, so everything is allowed.
    INSECURE = "insecure"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Principal:
    kind: Kind
    name: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.name}"


ANONYMOUS = Principal(Kind.UNKNOWN, "anonymous")
INSECURE = Principal(Kind.INSECURE, "plaintext")
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "edgebot_principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    """The principal of the RPC being handled (set by the server interceptor)."""
    return _current.get()


def set_current_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)


def reset_current_principal(token: contextvars.Token[Principal]) -> None:
    _current.reset(token)


def principal_from_spiffe(uri: str) -> Principal:
    prefix = f"spiffe://{SPIFFE_TRUST_DOMAIN}/"
    if not uri.startswith(prefix):
        return Principal(Kind.UNKNOWN, uri)
    kind, _, name = uri[len(prefix) :].partition("/")
    try:
        return Principal(Kind(kind), name) if name else Principal(Kind.UNKNOWN, uri)
    except ValueError:
        return Principal(Kind.UNKNOWN, uri)


def principal_from_auth_context(auth: Mapping[str, Iterable[bytes]]) -> Principal:
    """Read the SPIFFE-style URI SAN of a verified peer certificate."""
    for key in ("peer_spiffe_id", "peer_uri"):
        for value in auth.get(key, ()):
            principal = principal_from_spiffe(value.decode())
            if principal.kind is not Kind.UNKNOWN:
                return principal
    return ANONYMOUS


class OperatorTokens:
    """Bearer tokens that grant the operator role, read from a file (one per line)."""

    def __init__(self, path: Path | None) -> None:
        self._tokens: tuple[bytes, ...] = ()
        if path is not None:
            lines = path.read_text().splitlines()
            self._tokens = tuple(line.strip().encode() for line in lines if line.strip())

    def match(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal | None:
        if not self._tokens:
            return None
        for key, value in metadata:
            if key != "authorization" or not isinstance(value, str):
                continue
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer":
                continue
            for index, known in enumerate(self._tokens):
                if hmac.compare_digest(token.strip().encode(), known):
                    return Principal(Kind.OPERATOR, f"token-{index}")
        return None


@dataclass(frozen=True)
class AccessPolicy:
    """Which principal kinds may call each method of a service.

    Methods not listed fall back to ``default``; health and reflection are open to every
    verified caller.
    """

    methods: Mapping[str, frozenset[Kind]]
    default: frozenset[Kind] = frozenset({Kind.OPERATOR})

    def allows(self, full_method: str, principal: Principal) -> bool:
        if principal.kind is Kind.INSECURE:
            return True
        if full_method.startswith(("/grpc.health.v1.", "/grpc.reflection.")):
            return principal.kind is not Kind.UNKNOWN
        method = full_method.rsplit("/", 1)[-1]
        return principal.kind in self.methods.get(method, self.default)


def kinds(*values: Kind) -> frozenset[Kind]:
    return frozenset(values)


def principal_for_call(context: Context, tls_enabled: bool, tokens: OperatorTokens) -> Principal:
    if not tls_enabled:
        return INSECURE
    from_token = tokens.match(context.invocation_metadata() or ())
    if from_token is not None:
        return from_token
    return principal_from_auth_context(context.auth_context())
