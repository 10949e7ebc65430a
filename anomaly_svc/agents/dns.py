"""DnsAgent: dnsmasq — NXDOMAIN bursts and query-rate spikes per client, DHCP storms."""

from __future__ import annotations

import re

from pydantic import Field

from anomaly_svc.agents.base import (
    WARNING,
    AgentSettings,
    BaseAgent,
    EventView,
    Window,
    densest,
    group_by,
    register,
    scaled,
)
from anomaly_svc.models.manager import LoadedModel
from anomaly_svc.store import AnomalyRecord

QUERY = re.compile(r"query\[\w+\] (?P<name>\S+) from (?P<client>\S+)")
NXDOMAIN = re.compile(r"(?:reply|config|cached) (?P<name>\S+) is NXDOMAIN")
DHCP_DISCOVER = re.compile(
    r"DHCPDISCOVER\((?P<iface>[^)]*)\) (?:\S+ )?(?P<mac>(?:[0-9a-f]{2}:){5}[0-9a-f]{2})"
)


class DnsSettings(AgentSettings):
    nxdomain_threshold: int = Field(50, ge=1, description="NXDOMAIN answers per client.")
    nxdomain_window_s: float = Field(60.0, gt=0)
    query_rate_threshold: int = Field(500, ge=1, description="Queries per client.")
    query_window_s: float = Field(60.0, gt=0)
    dhcp_storm_threshold: int = Field(50, ge=1, description="DHCPDISCOVERs per interface.")
    dhcp_client_threshold: int = Field(20, ge=1, description="DHCPDISCOVERs per client MAC.")
    dhcp_window_s: float = Field(60.0, gt=0)


@register
class DnsAgent(BaseAgent):
    type_name = "dns"
    settings_model = DnsSettings
    services = ("dnsmasq", "dnsmasq-dhcp")

    def analyze(self, window: Window, model: LoadedModel | None) -> list[AnomalyRecord]:
        s = self.settings
        assert isinstance(s, DnsSettings)
        queries: list[tuple[str, EventView]] = []
        nxdomains: list[tuple[str, EventView]] = []
        discovers: list[tuple[tuple[str, str], EventView]] = []
        asked_by: dict[str, str] = {}
        for event in window.events:
            if (query := QUERY.search(event.message)) is not None:
                asked_by[query["name"]] = query["client"]
                queries.append((query["client"], event))
            elif (nx := NXDOMAIN.search(event.message)) is not None:
                nxdomains.append((asked_by.get(nx["name"], "unknown"), event))
            elif (dhcp := DHCP_DISCOVER.search(event.message)) is not None:
                discovers.append(((dhcp["iface"], dhcp["mac"]), event))
        found = self._bursts(
            "nxdomain_burst", nxdomains, s.nxdomain_threshold, s.nxdomain_window_s,
            "NXDOMAIN answers for",
        )  # fmt: skip
        found += self._bursts(
            "query_spike", queries, s.query_rate_threshold, s.query_window_s, "DNS queries from"
        )
        found += self._bursts(
            "dhcp_storm", [(iface, e) for (iface, _), e in discovers], s.dhcp_storm_threshold,
            s.dhcp_window_s, "DHCPDISCOVERs on",
        )  # fmt: skip
        found += self._bursts(
            "dhcp_client_storm", [(mac, e) for (_, mac), e in discovers],
            s.dhcp_client_threshold, s.dhcp_window_s, "DHCPDISCOVERs by",
        )  # fmt: skip
        return found

    def _bursts(
        self, kind: str, keyed: list[tuple[str, EventView]], threshold: int, span: float, what: str
    ) -> list[AnomalyRecord]:
        found = []
        for key, events in group_by(keyed).items():
            run = densest(events, span)
            if len(run) >= threshold:
                found.append(self.anomaly(
                    kind, f"{run[-1].host}:{key}", run, severity=WARNING,
                    confidence=scaled(len(run), threshold),
                    description=f"{len(run)} {what} {key} within {span:g}s",
                    features={"count": len(run), "window_s": span},
                ))  # fmt: skip
        return found
