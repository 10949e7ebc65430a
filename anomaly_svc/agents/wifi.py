"""WiFiAgent: hostapd / wpa_supplicant — wrong passwords, deauth storms, churn, timeouts."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import Field

from anomaly_svc.agents.base import (
    NOTICE,
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

_MAC = r"(?P<mac>(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2})"
PSK_MISMATCH = re.compile(rf"(?P<iface>\S+): AP-STA-POSSIBLE-PSK-MISMATCH {_MAC}")
CLIENT_WRONG_KEY = re.compile(
    r"(?P<iface>\S+): (?:WPA: 4-Way Handshake failed - pre-shared key may be incorrect|"
    r"CTRL-EVENT-SSID-TEMP-DISABLED .*reason=WRONG_KEY)"
)
STA_EVENT = re.compile(rf"(?P<iface>\S+): STA {_MAC} (?P<what>.*)$")
DEAUTH = re.compile(r"IEEE 802\.11: (?:deauthenticated|disassociated)(?! due to inactivity)")
ASSOCIATED = re.compile(r"IEEE 802\.11: associated")
EAPOL_TIMEOUT = re.compile(r"EAPOL-Key timeout|handshake (?:failed|timeout)|EAPOL timeout")
MISSING_ACKS = re.compile(r"excessive missing ACKs")


class WiFiSettings(AgentSettings):
    psk_mismatch_threshold: int = Field(2, ge=1, description="Wrong-password events per station.")
    psk_burst_threshold: int = Field(5, ge=1, description="...per station: raise to warning.")
    psk_window_s: float = Field(300.0, gt=0)
    deauth_storm_threshold: int = Field(20, ge=1, description="Deauth/disassoc per AP.")
    deauth_window_s: float = Field(60.0, gt=0)
    churn_threshold: int = Field(10, ge=1, description="Associations per station.")
    churn_window_s: float = Field(600.0, gt=0)
    eapol_timeout_threshold: int = Field(3, ge=1, description="Handshake timeouts per station.")
    eapol_window_s: float = Field(300.0, gt=0)
    missing_ack_threshold: int = Field(3, ge=1, description="Missing-ACK drops per station.")
    missing_ack_window_s: float = Field(3600.0, gt=0)


@register
class WiFiAgent(BaseAgent):
    type_name = "wifi"
    settings_model = WiFiSettings
    services = ("hostapd", "wpa_supplicant")

    def analyze(self, window: Window, model: LoadedModel | None) -> list[AnomalyRecord]:
        s = self.settings
        assert isinstance(s, WiFiSettings)
        found = self._psk_mismatches(window.events, s)
        stations: list[tuple[tuple[str, str], EventView]] = []
        deauths: list[tuple[str, EventView]] = []
        for event in window.events:
            match = STA_EVENT.search(event.message)
            if match is not None:
                stations.append(((match["iface"], match["mac"].lower()), event))
                if DEAUTH.search(match["what"]):
                    deauths.append((match["iface"], event))
        by_station = group_by(stations)
        for iface, events in group_by(deauths).items():
            run = densest(events, s.deauth_window_s)
            if len(run) >= s.deauth_storm_threshold:
                found.append(
                    self.anomaly(
                        "deauth_storm", f"{run[-1].host}:{iface}", run, severity=WARNING,
                        confidence=scaled(len(run), s.deauth_storm_threshold),
                        description=f"{len(run)} deauthentications/disassociations on {iface} "
                        f"within {s.deauth_window_s:g}s",
                        features={"deauths": len(run), "stations": _distinct_macs(run)},
                    )
                )  # fmt: skip
        for (iface, mac), events in by_station.items():
            found += self._station_rules(iface, mac, events, s)
        return found

    def _psk_mismatches(self, events: Sequence[EventView], s: WiFiSettings) -> list[AnomalyRecord]:
        keyed: list[tuple[tuple[str, str], EventView]] = []
        for event in events:
            match = PSK_MISMATCH.search(event.message)
            if match is not None:
                keyed.append(((match["iface"], match["mac"].lower()), event))
            elif (client := CLIENT_WRONG_KEY.search(event.message)) is not None:
                keyed.append(((client["iface"], "self"), event))
        found = []
        for (iface, mac), station_events in group_by(keyed).items():
            run = densest(station_events, s.psk_window_s)
            if len(run) < s.psk_mismatch_threshold:
                continue
            burst = len(run) >= s.psk_burst_threshold
            found.append(
                self.anomaly(
                    "psk_mismatch", f"{run[-1].host}:{iface}:{mac}", run,
                    severity=WARNING if burst else NOTICE,
                    confidence=scaled(len(run), s.psk_mismatch_threshold),
                    description=f"{len(run)} wrong Wi-Fi password attempts by {mac} on {iface}",
                    features={"psk_mismatches": len(run), "window_s": s.psk_window_s},
                )
            )  # fmt: skip
        return found

    def _station_rules(
        self, iface: str, mac: str, events: list[EventView], s: WiFiSettings
    ) -> list[AnomalyRecord]:
        rules = (
            ("association_churn", ASSOCIATED, s.churn_threshold, s.churn_window_s, NOTICE,
             "associations"),
            ("eapol_timeouts", EAPOL_TIMEOUT, s.eapol_timeout_threshold, s.eapol_window_s,
             WARNING, "EAPOL/handshake timeouts"),
            ("missing_acks", MISSING_ACKS, s.missing_ack_threshold, s.missing_ack_window_s,
             NOTICE, "disconnects for excessive missing ACKs"),
        )  # fmt: skip
        found = []
        for kind, pattern, threshold, span, severity, what in rules:
            run = densest([e for e in events if pattern.search(e.message)], span)
            if len(run) >= threshold:
                found.append(
                    self.anomaly(
                        kind, f"{run[-1].host}:{iface}:{mac}", run, severity=severity,
                        confidence=scaled(len(run), threshold),
                        description=f"{len(run)} {what} of {mac} on {iface} within {span:g}s",
                        features={"count": len(run), "window_s": span},
                    )
                )  # fmt: skip
        return found


def _distinct_macs(events: Sequence[EventView]) -> int:
    return len({m["mac"] for e in events if (m := STA_EVENT.search(e.message)) is not None})
