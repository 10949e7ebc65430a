"""NMEA 0183 sentences (GGA, RMC, VTG) into GPS fix fields: pure functions that never raise.

``parse_sentence`` checks the framing and the checksum and returns either the fields the
sentence carries or an ``NmeaError`` naming why it was refused. ``FixState`` merges the
sentences of one receiver into the latest known fix.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

KNOTS_TO_KMH = 1.852
MAX_FIELDS = 40
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")


@dataclass(frozen=True)
class NmeaError:
    """Why a line was not used: bad_checksum, no_checksum, malformed, unsupported, invalid."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Sentence:
    """What one sentence says; fields are None when the sentence leaves them empty."""

    talker: str
    kind: str
    values: dict[str, str]
    # UTC time of day (GGA, RMC) and date (RMC).
    time_of_day: dt.time | None = None
    date: dt.date | None = None


def checksum(body: bytes) -> int:
    """XOR of the bytes between '$' and '*'."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def parse_sentence(line: bytes, require_checksum: bool = True) -> Sentence | NmeaError:
    text = line.strip(b"\r\n \x00")
    if not text.startswith((b"$", b"!")):
        return NmeaError("malformed", "does not start with '$'")
    body, star, given = text[1:].partition(b"*")
    if star:
        if len(given) != 2 or not _is_hex(given):
            return NmeaError("malformed", "checksum is not two hex digits")
        if int(given, 16) != checksum(body):
            return NmeaError("bad_checksum", f"expected {checksum(body):02X}")
    elif require_checksum:
        return NmeaError("no_checksum")
    try:
        fields = body.decode("ascii").split(",")
    except UnicodeDecodeError:
        return NmeaError("malformed", "not ASCII")
    if len(fields) > MAX_FIELDS or len(fields[0]) != 5 or not fields[0].isalnum():
        return NmeaError("malformed", "bad address field")
    talker, kind = fields[0][:2], fields[0][2:]
    reader = _READERS.get(kind)
    if reader is None:
        return NmeaError("unsupported", kind)
    try:
        return reader(talker, fields[1:])
    except (ValueError, IndexError) as error:
        return NmeaError("invalid", f"{kind}: {error}")


def _is_hex(value: bytes) -> bool:
    return all(chr(b) in "0123456789ABCDEFabcdef" for b in value)


def _gga(talker: str, f: list[str]) -> Sentence:
    # time, lat, N/S, lon, E/W, quality, satellites, hdop, altitude, M, geoid separation, M
    _need(f, 12)
    values: dict[str, str | None] = {
        "gps.fix_quality": _int_text(f[5]),
        "gps.satellites": _int_text(f[6]),
    }
    values.update(_position(f[1], f[2], f[3], f[4]))
    values["gps.hdop"] = _float_text(f[7])
    values["gps.alt_m"] = _float_text(f[8])
    values["gps.geoid_sep_m"] = _float_text(f[10])
    return Sentence(talker, "GGA", _present(values), time_of_day=_time(f[0]))


def _rmc(talker: str, f: list[str]) -> Sentence:
    # time, status A/V, lat, N/S, lon, E/W, speed kn, course true, date ddmmyy, variation, E/W
    _need(f, 9)
    if f[1] not in ("A", "V"):
        raise ValueError(f"status {f[1]!r}")
    values: dict[str, str | None] = {"gps.status": "active" if f[1] == "A" else "void"}
    values.update(_position(f[2], f[3], f[4], f[5]))
    values.update(_speed(f[6], ""))
    values["gps.course"] = _float_text(f[7])
    if len(f) > 10 and f[9] and f[10] in ("E", "W"):
        variation = _number(f[9])
        values["gps.mag_variation"] = _fmt(variation if f[10] == "E" else -variation)
    return Sentence(talker, "RMC", _present(values), time_of_day=_time(f[0]), date=_date(f[8]))


def _vtg(talker: str, f: list[str]) -> Sentence:
    # course true, T, course magnetic, M, speed kn, N, speed km/h, K
    _need(f, 8)
    values: dict[str, str | None] = {
        "gps.course": _float_text(f[0]),
        "gps.course_magnetic": _float_text(f[2]),
    }
    values.update(_speed(f[4], f[6]))
    return Sentence(talker, "VTG", _present(values))


_READERS = {"GGA": _gga, "RMC": _rmc, "VTG": _vtg}


def _need(fields: list[str], count: int) -> None:
    if len(fields) < count:
        raise ValueError(f"{len(fields)} fields, at least {count} expected")


def _present(values: dict[str, str | None]) -> dict[str, str]:
    return {key: value for key, value in values.items() if value is not None}


def _fmt(value: float) -> str:
    return f"{value:.7f}".rstrip("0").rstrip(".")


def _number(text: str) -> float:
    """A decimal number as NMEA writes it (no exponent, no nan/inf, no underscores)."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def _float_text(text: str) -> str | None:
    return _fmt(_number(text)) if text else None


def _int_text(text: str) -> str | None:
    if text and not text.isdigit():
        raise ValueError(f"not a whole number: {text!r}")
    return str(int(text)) if text else None


def _speed(knots: str, kmh: str) -> dict[str, str | None]:
    if not knots and not kmh:
        return {}
    kn = _number(knots) if knots else _number(kmh) / KNOTS_TO_KMH
    km = _number(kmh) if kmh else kn * KNOTS_TO_KMH
    return {"gps.speed_kn": _fmt(kn), "gps.speed_kmh": _fmt(round(km, 3))}


def _position(lat: str, ns: str, lon: str, ew: str) -> dict[str, str | None]:
    if not lat or not lon:
        return {}
    latitude = _degrees(lat, 2, ns, "NS", 90.0)
    longitude = _degrees(lon, 3, ew, "EW", 180.0)
    return {"gps.lat": _fmt(latitude), "gps.lon": _fmt(longitude)}


def _degrees(text: str, degree_digits: int, hemisphere: str, letters: str, limit: float) -> float:
    """ddmm.mmmm (or dddmm.mmmm) and a hemisphere letter as signed decimal degrees."""
    whole = text.split(".")[0]
    if hemisphere not in letters or len(whole) != degree_digits + 2 or not whole.isdigit():
        raise ValueError(f"coordinate {text!r} {hemisphere!r}")
    degrees, minutes = int(text[:degree_digits]), _number(text[degree_digits:])
    if minutes >= 60:
        raise ValueError(f"minutes {minutes} out of range")
    value = degrees + minutes / 60
    if value > limit:
        raise ValueError(f"coordinate {value} out of range")
    return -value if hemisphere == letters[1] else value


def _time(text: str) -> dt.time | None:
    if not text:
        return None
    whole, _, fraction = text.partition(".")
    if len(whole) != 6 or not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise ValueError(f"time {text!r}")
    micros = int(fraction.ljust(6, "0")[:6]) if fraction else 0
    # Leap second 60 is clamped: datetime cannot hold it.
    return dt.time(int(whole[:2]), int(whole[2:4]), min(int(whole[4:]), 59), micros, dt.UTC)


def _date(text: str) -> dt.date | None:
    if not text:
        return None
    if len(text) != 6 or not text.isdigit():
        raise ValueError(f"date {text!r}")
    # Two-digit years: NMEA 0183 receivers in use report 20yy.
    return dt.date(2000 + int(text[4:]), int(text[2:4]), int(text[:2]))


@dataclass
class FixState:
    """The latest fix of one receiver, merged from its sentences."""

    values: dict[str, str] = field(default_factory=dict)
    date: dt.date | None = None
    fix_time: dt.datetime | None = None
    sentences: list[str] = field(default_factory=list)

    def update(self, sentence: Sentence) -> None:
        self.values.update(sentence.values)
        self.values["gps.talker"] = sentence.talker
        if sentence.date is not None:
            self.date = sentence.date
        if sentence.time_of_day is not None and self.date is not None:
            self._advance(dt.datetime.combine(self.date, sentence.time_of_day))
        if sentence.kind not in self.sentences:
            self.sentences.append(sentence.kind)

    def _advance(self, candidate: dt.datetime) -> None:
        # A time of day past midnight before the next RMC brings the new date.
        if self.fix_time is not None and candidate < self.fix_time - dt.timedelta(hours=12):
            candidate += dt.timedelta(days=1)
        self.fix_time = candidate

    @property
    def has_position(self) -> bool:
        return "gps.lat" in self.values and "gps.lon" in self.values

    def take(self) -> tuple[dict[str, str], dt.datetime | None]:
        """The fix to report; the list of sentences seen restarts for the next report."""
        values = {**self.values, "gps.sentences": ",".join(self.sentences)}
        self.sentences = []
        return values, self.fix_time
