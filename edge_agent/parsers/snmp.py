"""SNMP poll results into events, and counters into rates: pure, no network.

A scalar poll becomes one event (``snmp.<key>`` per OID); a walked table becomes one event
per row (``snmp.<table>.<column>``, ``snmp.index``). Counters named in ``rates`` also get
``<attribute>.rate`` in units per second, measured on the agent's own clock (sysUpTime).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from gen.edgebot.v1 import event_pb2
from mesh.ids import uuid7
from mesh.timeutil import ns_to_ts

SYS_UPTIME_OID = "1.3.6.1.2.1.1.3.0"
COUNTER32_MODULUS = 1 << 32
COUNTER64_MODULUS = 1 << 64
CENTISECONDS_PER_S = 100


@dataclass(frozen=True)
class Sample:
    """One variable binding: its text, and its number if it has one."""

    oid: str
    text: str | None  # None: noSuchObject, noSuchInstance or endOfMibView
    number: int | None = None
    # 2**32 or 2**64 for Counter32/Counter64 (they wrap); None for other types.
    modulus: int | None = None


@dataclass
class _Previous:
    value: int
    uptime_cs: int | None
    monotonic_ns: int


class RateTracker:
    """Per-second rates of counters between consecutive polls of one target."""

    def __init__(self) -> None:
        self._previous: dict[str, _Previous] = {}
        self.resets: collections.Counter[str] = collections.Counter()

    def rate(self, sample: Sample, uptime_cs: int | None, monotonic_ns: int) -> float | None:
        """The rate since the previous sample of this OID; None for the first sample or
        after the agent restarted (sysUpTime went back) or a non-counter decreased."""
        if sample.number is None:
            return None
        previous = self._previous.get(sample.oid)
        self._previous[sample.oid] = _Previous(sample.number, uptime_cs, monotonic_ns)
        if previous is None:
            return None
        if uptime_cs is not None and previous.uptime_cs is not None:
            if uptime_cs < previous.uptime_cs:
                self.resets["agent_restart"] += 1
                return None
            elapsed_s = (uptime_cs - previous.uptime_cs) / CENTISECONDS_PER_S
        else:
            elapsed_s = (monotonic_ns - previous.monotonic_ns) / 1e9
        if elapsed_s <= 0:
            # Same agent tick: keep the older sample as the base of the next rate.
            self._previous[sample.oid] = previous
            return None
        delta = sample.number - previous.value
        if delta < 0:
            if sample.modulus is None:
                self.resets["decreased"] += 1
                return None
            self.resets["wrap"] += 1
            delta += sample.modulus
        return delta / elapsed_s


def wants_rate(oid: str, rate_oids: list[str]) -> bool:
    """Whether an OID (a scalar or a table cell) is one of the configured counters."""
    return any(oid == prefix or oid.startswith(prefix + ".") for prefix in rate_oids)


def uptime_cs(samples: list[Sample]) -> int | None:
    return next((s.number for s in samples if s.oid == SYS_UPTIME_OID), None)


def table_rows(table_oid: str, samples: list[Sample]) -> dict[str, dict[str, Sample]]:
    """Cells of a conceptual table (<table>.1.<column>.<index>) grouped by row index."""
    rows: dict[str, dict[str, Sample]] = {}
    entry = table_oid + ".1."
    for sample in samples:
        if not sample.oid.startswith(entry):
            continue
        column, _, index = sample.oid[len(entry) :].partition(".")
        if index:
            rows.setdefault(index, {})[column] = sample
    return rows


@dataclass(frozen=True)
class PollContext:
    source: str
    target: str
    version: str
    received_ns: int


def snmp_event(
    context: PollContext, message: str, values: dict[str, str], extra: dict[str, str]
) -> event_pb2.Event:
    attributes = {
        "snmp.target": context.target,
        "snmp.version": context.version,
        **extra,
        **values,
    }
    event = event_pb2.Event(
        id=uuid7(),
        type="snmp",
        source=context.source,
        host=context.target.rsplit(":", 1)[0],
        service="snmp",
        severity=event_pb2.SEVERITY_INFORMATIONAL,
        message=message,
        attributes=attributes,
    )
    ns_to_ts(context.received_ns, event.time)
    ns_to_ts(context.received_ns, event.observed_time)
    return event


def sample_attributes(
    named: list[tuple[str, Sample]],
    rate_oids: list[str],
    rates: RateTracker,
    uptime: int | None,
    monotonic_ns: int,
) -> dict[str, str]:
    """``snmp.<key>`` for each (key, sample), ``.rate`` for counters, ``snmp.missing``."""
    values: dict[str, str] = {}
    missing = []
    for key, sample in named:
        if sample.text is None:
            missing.append(key)
            continue
        values[f"snmp.{key}"] = sample.text
        if wants_rate(sample.oid, rate_oids):
            rate = rates.rate(sample, uptime, monotonic_ns)
            if rate is not None:
                values[f"snmp.{key}.rate"] = f"{rate:.3f}"
    if missing:
        values["snmp.missing"] = ",".join(missing)
    return values
