"""TimestampNormalize: every event leaves with a UTC time and observed time; odd ones flagged."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from mesh.timeutil import NS_PER_S, datetime_to_ns, is_set, now_ns, ns_to_ts, ts_to_ns
from pipeline_svc.processors.base import Item, Outcome, Processor, Settings, register

FLAG_TAG = "time_flag"
_EPOCH = re.compile(r"^\d{9,19}(\.\d+)?$")
_SYSLOG_NO_YEAR = re.compile(r"^([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d{2}):(\d{2}):(\d{2})(\.\d+)?$")
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
)}  # fmt: skip


class TimestampSettings(Settings):
    attribute_keys: list[str] = Field(
        default_factory=lambda: ["timestamp", "time", "ts", "@timestamp"],
        description="Attributes read, in order, when the event has no time.",
    )
    timezone: str = Field("UTC", description="Zone for times written without an offset.")
    max_future_s: float = Field(300.0, ge=0, description="Later than now + this is flagged.")
    max_past_days: float = Field(365.0, ge=0, description="Older than this is flagged.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


def parse_time(text: str, zone: dt.tzinfo, now: dt.datetime) -> int | None:
    """Nanoseconds since the epoch for epoch s/ms/µs/ns, ISO 8601 or a year-less syslog date."""
    value = text.strip()
    if _EPOCH.match(value):
        return _epoch_ns(value)
    match = _SYSLOG_NO_YEAR.match(value)
    if match:
        return _syslog_ns(match, zone, now)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return datetime_to_ns(parsed)


def _epoch_ns(value: str) -> int:
    whole, _, fraction = value.partition(".")
    digits = len(whole)
    if digits <= 11:
        unit = NS_PER_S
    elif digits <= 14:
        unit = 1_000_000
    elif digits <= 17:
        unit = 1_000
    else:
        unit = 1
    fraction_ns = int(float("0." + fraction) * unit) if fraction else 0
    return int(whole) * unit + fraction_ns


def _syslog_ns(match: re.Match[str], zone: dt.tzinfo, now: dt.datetime) -> int | None:
    month = _MONTHS.get(match.group(1))
    if month is None:
        return None
    day, hour, minute, second = (int(match.group(i)) for i in range(2, 6))
    micros = int((match.group(6) or ".0")[1:7].ljust(6, "0"))
    local_now = now.astimezone(zone)
    for year in (local_now.year, local_now.year - 1):
        try:
            candidate = dt.datetime(year, month, day, hour, minute, second, micros, tzinfo=zone)
        except ValueError:
            continue
        # A December line read in early January belongs to last year.
        if candidate <= local_now + dt.timedelta(days=1):
            return datetime_to_ns(candidate)
    return None


@register
class TimestampNormalize(Processor):
    type_name = "timestamp_normalize"
    stage = "enrichment"
    settings_model = TimestampSettings
    settings: TimestampSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        self.zone = ZoneInfo(self.settings.timezone)

    def process(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        now = now_ns()
        now_dt = dt.datetime.fromtimestamp(now / NS_PER_S, dt.UTC)
        future_limit = now + int(self.settings.max_future_s * NS_PER_S)
        past_limit = now - int(self.settings.max_past_days * 86_400 * NS_PER_S)
        for item in items:
            event = item.event
            changed = False
            if not is_set(event.observed_time):
                ns_to_ts(now, event.observed_time)
                changed = True
            if not is_set(event.time):
                found = self._from_attributes(event.attributes, now_dt)
                ns_to_ts(found if found is not None else ts_to_ns(event.observed_time), event.time)
                changed = True
            when = ts_to_ns(event.time)
            if when > future_limit:
                event.tags[FLAG_TAG] = "future"
                changed = True
            elif when < past_limit:
                event.tags[FLAG_TAG] = "past"
                changed = True
            outcome.modified += changed
        return outcome

    def _from_attributes(self, attributes: Mapping[str, str], now: dt.datetime) -> int | None:
        for key in self.settings.attribute_keys:
            value = attributes.get(key)
            if value:
                parsed = parse_time(value, self.zone, now)
                if parsed is not None:
                    return parsed
        return None
