"""FirewallAgent: iptables/nftables (incl. UFW, UniFi, Proxmox prefixes) and MikroTik log
lines — port scans (one source, many ports), drop floods, new sources.

Only blocked traffic counts: a line whose rule prefix says ACCEPT/ALLOW/AUDIT logs traffic
that was let through.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from pydantic import Field

from anomaly_svc.agents.base import (
    NOTICE,
    WARNING,
    AgentSettings,
    BaseAgent,
    EventView,
    Window,
    densest,
    densest_distinct,
    group_by,
    register,
    scaled,
)
from anomaly_svc.models.manager import LoadedModel
from anomaly_svc.store import AnomalyRecord

NETFILTER = re.compile(r"\bSRC=(?P<src>[0-9A-Fa-f.:]+) DST=(?P<dst>[0-9A-Fa-f.:]+)")
NETFILTER_PROTO = re.compile(r"\bPROTO=(?P<proto>\w+)")
NETFILTER_DPT = re.compile(r"\bDPT=(?P<dpt>\d+)")
MIKROTIK = re.compile(
    r"proto (?P<proto>\w+)(?: \([^)]*\))?, (?P<src>[0-9.]+):\d+->(?P<dst>[0-9.]+):(?P<dpt>\d+)"
)
ALLOWED = re.compile(r"ACCEPT|ALLOW|AUDIT|\baccept", re.IGNORECASE)


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: str
    dport: str
    dropped: bool
    event: EventView


def parse_packet(event: EventView) -> Packet | None:
    text = event.message
    if (match := NETFILTER.search(text)) is not None:
        proto = NETFILTER_PROTO.search(text)
        dport = NETFILTER_DPT.search(text)
        prefix = text[: match.start()]
        return Packet(
            match["src"], match["dst"], proto["proto"].lower() if proto else "",
            dport["dpt"] if dport else "", not ALLOWED.search(prefix), event,
        )  # fmt: skip
    if (mikrotik := MIKROTIK.search(text)) is not None:
        prefix = text[: mikrotik.start()]
        return Packet(
            mikrotik["src"], mikrotik["dst"], mikrotik["proto"].lower(), mikrotik["dpt"],
            not ALLOWED.search(prefix), event,
        )  # fmt: skip
    return None


class FirewallSettings(AgentSettings):
    port_scan_threshold: int = Field(15, ge=2, description="Distinct blocked ports per source.")
    port_scan_window_s: float = Field(60.0, gt=0)
    drop_flood_threshold: int = Field(200, ge=1, description="Blocked packets per source.")
    drop_flood_window_s: float = Field(60.0, gt=0)
    new_source_warmup_cycles: int = Field(
        12, ge=1, description="Cycles with traffic before unseen sources are reported."
    )
    new_source_min_events: int = Field(3, ge=1, description="Blocked packets of a new source.")
    max_known_sources: int = Field(100_000, ge=1)


@register
class FirewallAgent(BaseAgent):
    type_name = "firewall"
    settings_model = FirewallSettings
    # MikroTik, UniFi and Proxmox lines often carry no program name: read every service.
    services = ()

    def __init__(self, settings: AgentSettings) -> None:
        super().__init__(settings)
        self._known: OrderedDict[str, None] = OrderedDict()
        self._cycles_with_traffic = 0

    def analyze(self, window: Window, model: LoadedModel | None) -> list[AnomalyRecord]:
        s = self.settings
        assert isinstance(s, FirewallSettings)
        packets = [p for e in window.events if (p := parse_packet(e)) is not None]
        found: list[AnomalyRecord] = []
        by_source = group_by((p.src, p.event) for p in packets if p.dropped)
        ports = {p.event.id: p.dport for p in packets}
        for src, events in by_source.items():
            run, distinct = densest_distinct(events, s.port_scan_window_s, lambda e: ports[e.id])
            if distinct >= s.port_scan_threshold:
                found.append(self.anomaly(
                    "port_scan", src, run, severity=WARNING,
                    confidence=scaled(distinct, s.port_scan_threshold),
                    description=f"{src} probed {distinct} blocked ports within "
                    f"{s.port_scan_window_s:g}s",
                    features={"distinct_ports": distinct, "packets": len(run)},
                ))  # fmt: skip
            flood = densest(events, s.drop_flood_window_s)
            if len(flood) >= s.drop_flood_threshold:
                found.append(self.anomaly(
                    "drop_flood", src, flood, severity=WARNING,
                    confidence=scaled(len(flood), s.drop_flood_threshold),
                    description=f"{len(flood)} blocked packets from {src} within "
                    f"{s.drop_flood_window_s:g}s",
                    features={"dropped": len(flood)},
                ))  # fmt: skip
        found += self._new_sources(by_source, s)
        return found

    def _new_sources(
        self, by_source: dict[str, list[EventView]], s: FirewallSettings
    ) -> list[AnomalyRecord]:
        learning = self._cycles_with_traffic < s.new_source_warmup_cycles
        found = []
        for src, events in by_source.items():
            if src in self._known:
                self._known.move_to_end(src)
                continue
            if not learning and len(events) >= s.new_source_min_events:
                found.append(self.anomaly(
                    "new_source", src, events, severity=NOTICE, confidence=0.5,
                    description=f"first blocked traffic from {src} ({len(events)} packets)",
                    features={"dropped": len(events)},
                ))  # fmt: skip
            self._known[src] = None
            while len(self._known) > s.max_known_sources:
                self._known.popitem(last=False)
        if by_source:
            self._cycles_with_traffic += 1
        return found
