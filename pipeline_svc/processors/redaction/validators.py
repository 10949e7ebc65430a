"""Checks that turn a regex candidate into a finding: checksums, ranges and structure.

Each function takes the matched text (or a match) and answers whether it really is what
the detector looks for, so look-alikes (timestamps, block ids, versions) survive.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re

_SEPARATORS = str.maketrans("", "", " -")

# (prefix, allowed lengths) of issuer identification numbers. Ranges are expanded below.
_IIN_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),
    (300, 305, frozenset(range(14, 20))),  # Diners Club
    (36, 36, frozenset(range(14, 20))),
    (38, 39, frozenset(range(14, 20))),
    (6011, 6011, frozenset(range(16, 20))),  # Discover
    (644, 649, frozenset(range(16, 20))),
    (65, 65, frozenset(range(16, 20))),
    (3528, 3589, frozenset(range(16, 20))),  # JCB
    (62, 62, frozenset(range(16, 20))),  # UnionPay
    (2200, 2204, frozenset(range(16, 20))),  # Mir
    (5018, 5018, frozenset(range(12, 20))),  # Maestro
    (5020, 5020, frozenset(range(12, 20))),
    (5038, 5038, frozenset(range(12, 20))),
    (5893, 5893, frozenset(range(12, 20))),
    (6304, 6304, frozenset(range(12, 20))),
    (6759, 6759, frozenset(range(12, 20))),
    (6761, 6763, frozenset(range(12, 20))),
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def known_card_prefix(digits: str) -> bool:
    length = len(digits)
    for low, high, lengths in _IIN_RANGES:
        width = len(str(low))
        if low <= int(digits[:width]) <= high and length in lengths:
            return True
    return False


def _consistent_grouping(text: str) -> bool:
    """No separators, or one kind of separator between groups of 4 (Amex 4-6-5, etc.)."""
    if text.isdigit():
        return True
    separator = " " if " " in text else "-"
    if separator == " " and "-" in text:
        return False
    groups = text.split(separator)
    return all(2 <= len(g) <= 6 for g in groups) and len(groups) >= 3


def card_ok(text: str) -> bool:
    digits = text.translate(_SEPARATORS)
    if not 12 <= len(digits) <= 19:
        return False
    return _consistent_grouping(text) and known_card_prefix(digits) and luhn_ok(digits)


def us_tin_kind(text: str) -> str | None:
    """'ssn' or 'itin' for a valid US number in AAA-GG-SSSS form, else None."""
    digits = text.translate(_SEPARATORS)
    area, group, serial = int(digits[:3]), int(digits[3:5]), int(digits[5:])
    if group == 0 or serial == 0:
        return None
    if area >= 900:
        # ITINs: 9XX with the group in 50-65, 70-88, 90-92 or 94-99.
        itin_group = 50 <= group <= 65 or 70 <= group <= 88 or 90 <= group <= 92 or group >= 94
        return "itin" if itin_group else None
    if area in (0, 666):
        return None
    return "ssn"


# IBAN length per country (ISO 13616 registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def nanp_phone_ok(digits: str) -> bool:
    """A North American number: area code and exchange start with 2-9."""
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    return len(digits) == 10 and digits[0] >= "2" and digits[3] >= "2"


def phone_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    if text.startswith("+"):
        return 8 <= len(digits) <= 15 and digits[0] != "0"
    return nanp_phone_ok(digits)


def _b64url_json(part: str) -> object:
    padded = part + "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def jwt_ok(text: str) -> bool:
    header = text.split(".", 1)[0]
    try:
        decoded = _b64url_json(header)
    except (ValueError, binascii.Error):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


def basic_credentials_ok(token: str) -> bool:
    """Base64 that decodes to printable 'user:password'."""
    try:
        decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
        text = decoded.decode("utf-8")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return ":" in text and text.isprintable()


def opaque_token_ok(token: str) -> bool:
    """Looks generated: long enough, with a digit and a letter."""
    has_digit = any(c.isdigit() for c in token)
    has_alpha = any(c.isalpha() for c in token)
    return len(token) >= 16 and has_digit and has_alpha


def mixed_token_ok(token: str) -> bool:
    """Random enough to be a key: not one repeated character, letters and digits mixed."""
    return len(set(token)) >= 6 and opaque_token_ok(token)


_PLACEHOLDERS = frozenset({"", "null", "none", "nil", "undefined", "true", "false", "*", "-"})


def secret_value_ok(value: str) -> bool:
    """An assigned value worth masking: not empty, a placeholder, or already masked."""
    bare = value.strip("\"'")
    if bare.lower() in _PLACEHOLDERS or set(bare) <= {"*", "x", "X", "."}:
        return False
    return not bare.startswith("[REDACTED")
