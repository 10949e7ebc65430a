"""Built-in detectors: a cheap prefilter, one compiled regex and a validator each.

DESIGN's budget table: ten Python regexes in a row reach ~35k lines/s, one alternation is
slower, and each regex behind a substring check ~63k. So every detector that has a
tell-tale substring ("@", "eyJ", "://", "AKIA", ...) checks it first; the digit-based ones
rely on regexes that start with a digit class and fail fast on ordinary text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pipeline_svc.processors.redaction import validators as v

Prefilter = Callable[[str, str], bool]
"""(text, text.lower()) -> whether the detector could match at all."""
Check = Callable[[re.Match[str]], str | None]
"""A candidate match -> the kind it is (usually the detector's name), or None."""

SECRET_GROUP = "secret"
"""Patterns with this named group mask only that part (keep `password=`, mask the value)."""


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: re.Pattern[str]
    check: Check
    prefilter: Prefilter | None = None
    replacement: str | None = None
    """Fixed replacement; None means ``[REDACTED:<kind>]``."""
    numeric: bool = False
    """Needs a run of digits and separators (NUMERIC_RUN); checked once for all such."""

    @property
    def masks_group(self) -> bool:
        return SECRET_GROUP in self.pattern.groupindex


def _always(kind: str) -> Check:
    return lambda match: kind


def _whole(kind: str, valid: Callable[[str], bool]) -> Check:
    return lambda match: kind if valid(match.group(0)) else None


def _secret(kind: str, valid: Callable[[str], bool]) -> Check:
    return lambda match: kind if valid(match.group(SECRET_GROUP)) else None


def _us_tin(match: re.Match[str]) -> str | None:
    return v.us_tin_kind(match.group(0))


_CONNECTION_KEYS = ("server=", "host=", "data source=", "database=", "uid=", "user id=")


def _connection_string(match: re.Match[str]) -> str | None:
    lower = match.string.lower()
    in_connection = ";" in lower and any(key in lower for key in _CONNECTION_KEYS)
    return "connection_string" if in_connection and v.secret_value_ok(match["secret"]) else None


def _secret_assignment(match: re.Match[str]) -> str | None:
    # 'passwd: password for root changed' is the passwd program's syslog tag, not a value.
    if match["key"].lower() == "passwd" and "=" not in match["sep"]:
        return None
    return "secret" if v.secret_value_ok(match[SECRET_GROUP]) else None


_KNOWN_SCHEMES = frozenset({"bearer", "basic", "digest", "token", "negotiate", "ntlm"})


def _authorization(match: re.Match[str]) -> str | None:
    value = match.group(SECRET_GROUP)
    if value.lower() in _KNOWN_SCHEMES or not v.secret_value_ok(value):
        return None
    return "auth_header"


_SECRET_KEYWORDS = (
    r"password|passwd|passphrase|secret|token|credentials?"
    r"|(?:api|access|secret|private|signing|encryption)[_-]?key"
)
_SECRET_VALUE = r"""(?P<secret>"[^"\r\n]{1,512}"|'[^'\r\n]{1,512}'|[^\s,;&'"\])}>]{1,512})"""


def _secret_prefilter(text: str, lower: str) -> bool:
    return (
        "passw" in lower
        or "secret" in lower
        or "token" in lower
        or "api" in lower
        or "access" in lower
        or "credential" in lower
        or "passphrase" in lower
        or ("key" in lower and ("private" in lower or "signing" in lower or "encryption" in lower))
    )


def _d(
    name: str,
    pattern: str,
    check: Check,
    prefilter: Prefilter | None = None,
    flags: int = 0,
    numeric: bool = False,
) -> Detector:
    return Detector(name, re.compile(pattern, flags), check, prefilter, numeric=numeric)


NUMERIC_RUN = re.compile(r"\d[\d ()-]{7,}\d")
"""Cards, SSNs, national phone numbers and IBANs (their account part) all contain one:
9+ digits, separators between. One search gates all four."""


BUILTIN: dict[str, tuple[Detector, ...]] = {
    "private_key": (
        _d(
            "private_key",
            r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY-----"
            r"(?:.*?-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY-----|.*)",
            _always("private_key"),
            lambda t, lo: "PRIVATE KEY" in t,
            re.DOTALL,
        ),
    ),
    "jwt": (
        _d(
            "jwt",
            r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
            _whole("jwt", v.jwt_ok),
            lambda t, lo: "eyJ" in t,
        ),
    ),
    "aws_key": (
        _d(
            "aws_key",
            r"(?<![A-Z0-9])A(?:KIA|SIA)[A-Z2-7]{16}(?![A-Za-z0-9])",
            _always("aws_key"),
            lambda t, lo: "AKIA" in t or "ASIA" in t,
        ),
    ),
    "github_token": (
        _d(
            "github_token",
            r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,244})"
            r"(?![A-Za-z0-9_])",
            _whole("github_token", v.mixed_token_ok),
            lambda t, lo: "gh" in t and ("_" in t),
        ),
    ),
    "slack_token": (
        _d(
            "slack_token",
            r"(?<![A-Za-z0-9])xox[abeoprs]-[A-Za-z0-9-]{10,250}"
            r"|https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]{20,}",
            _always("slack_token"),
            lambda t, lo: "xox" in t or "hooks.slack.com" in t,
        ),
    ),
    "stripe_key": (
        _d(
            "stripe_key",
            r"(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,247}(?![A-Za-z0-9])"
            r"|(?<![A-Za-z0-9])whsec_[A-Za-z0-9]{24,}",
            _always("stripe_key"),
            lambda t, lo: "_live_" in t or "_test_" in t or "whsec_" in t,
        ),
    ),
    "auth_header": (
        _d(
            "auth_header",
            r"(?i:(?:proxy-)?authorization)[\"']?\s*[:=]\s*[\"']?(?:[A-Za-z]+\s+)?"
            r"(?P<secret>[^\s\"',;]+)",
            _authorization,
            lambda t, lo: "authorization" in lo,
        ),
        _d(
            "auth_header",
            r"\b(?:[Bb]earer|BEARER)\s+(?P<secret>[A-Za-z0-9._~+/-]{16,}=*)",
            _secret("auth_header", v.opaque_token_ok),
            lambda t, lo: "bearer" in lo,
        ),
        _d(
            "auth_header",
            r"\b(?:[Bb]asic|BASIC)\s+(?P<secret>[A-Za-z0-9+/]{6,}={0,2})(?![\w+/=])",
            _secret("auth_header", v.basic_credentials_ok),
            lambda t, lo: "basic" in lo,
        ),
    ),
    "url_credentials": (
        _d(
            "url_credentials",
            r"://[^\s/:@'\"]{0,128}:(?P<secret>[^\s@/'\"]{1,256})@",
            _secret("url_credentials", v.secret_value_ok),
            lambda t, lo: "://" in t and "@" in t,
        ),
    ),
    "connection_string": (
        _d(
            "connection_string",
            r"(?i)(?<![\w-])(?:password|pwd)\s*=\s*(?P<secret>[^;\"'\s]{1,256})",
            _connection_string,
            lambda t, lo: ";" in t and ("pwd" in lo or "password" in lo),
        ),
    ),
    "secret": (
        _d(
            "secret",
            rf"(?i)(?P<key>{_SECRET_KEYWORDS})[\"']?"
            rf"(?P<sep>\s*=\s*|\s*:\s+|\s*:(?=[\"'])|[\"']\s*:\s*){_SECRET_VALUE}",
            _secret_assignment,
            _secret_prefilter,
        ),
    ),
    "email": (
        _d(
            "email",
            r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
            r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])",
            _always("email"),
            lambda t, lo: "@" in t,
        ),
    ),
    "card": (
        _d(
            "card",
            r"[2-6](?<![\w.-][2-6])\d(?:[ -]?\d){10,17}(?![\w-]|\.\d)",
            _whole("card", v.card_ok),
            numeric=True,
        ),
    ),
    "ssn": (
        _d(
            "ssn",
            r"\d(?<![\w.-]\d)\d\d([- ])\d\d\1\d{4}(?![\w-]|\.\d)",
            _us_tin,
            numeric=True,
        ),
    ),
    "iban": (
        _d(
            "iban",
            r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d\d(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?"
            r"(?![A-Za-z0-9])",
            _whole("iban", v.iban_ok),
            numeric=True,
        ),
    ),
    "phone": (
        _d(
            "phone",
            r"(?<![\w.+-])\+[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?(?:\d[ .-]?){6,13}\d"
            r"(?![\w-]|[.:]\d)",
            _whole("phone", v.phone_ok),
            lambda t, lo: "+" in t,
        ),
        _d(
            "phone",
            r"[(\d](?<![\w.+-][(\d])(?:(?<=\()\d{3}\) ?|(?<!\()\d\d-)\d{3}-\d{4}"
            r"(?![\w-]|[.:]\d)",
            _whole("phone", v.phone_ok),
            numeric=True,
        ),
    ),
    "ipv6": (
        _d(
            "ipv6",
            r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?"
            r"(?![\w:.])",
            _whole("ipv6", v.ip_ok),
            lambda t, lo: "::" in t or t.count(":") >= 7,
        ),
    ),
    "ipv4": (
        _d(
            "ipv4",
            r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\w.]|-[A-Za-z])",
            _whole("ipv4", v.ip_ok),
            lambda t, lo: "." in t,
        ),
    ),
    "mac": (
        _d(
            "mac",
            r"[0-9A-Fa-f](?<![\w:.-][0-9A-Fa-f])(?:[0-9A-Fa-f]([:-])(?:[0-9A-Fa-f]{2}\1){4}"
            r"[0-9A-Fa-f]{2}|[0-9A-Fa-f]{3}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4})(?![\w:.-])",
            _always("mac"),
            lambda t, lo: ":" in t or "-" in t or "." in t,
        ),
    ),
}

# Order matters: self-identifying tokens first, so a JWT in an Authorization header or a
# GitHub token used as a URL password is reported as what it is; then the generic
# key/value and URL forms, then the plain-text kinds.
ORDER = tuple(BUILTIN)
OPTIONAL = frozenset({"ipv4", "ipv6", "mac"})
"""Off unless a site asks: some sites want addresses kept for correlation."""
DEFAULT_DETECTORS = tuple(name for name in ORDER if name not in OPTIONAL)
