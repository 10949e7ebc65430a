"""Each agent on real log lines from ../shared/data and on small hand-built incidents."""

from __future__ import annotations

import pytest
from anomaly_samples import (
    Expected,
    crowdsec_events,
    expected_alerts,
    openwrt_events,
    syslog_events,
    window,
)

from anomaly_svc.agents import EventView, Window, create, validate_settings
from anomaly_svc.store import AnomalyRecord
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import NS_PER_S


def analyze(
    agent_type: str, events: list[event_pb2.Event], **settings: object
) -> list[AnomalyRecord]:
    agent = create(validate_settings({"type": agent_type, **settings}))
    return agent.analyze(window(events), None)


def source_ips(found: list[AnomalyRecord]) -> set[str]:
    return {a.dedupe_key.split(":", 2)[2] for a in found}


def test_wifi_reports_the_wrong_password_events_of_the_openwrt_log() -> None:
    events = openwrt_events()
    psk_ids = {e.id for e in events if "AP-STA-POSSIBLE-PSK-MISMATCH" in e.message}
    found = analyze("wifi", events)
    assert len(psk_ids) == 6
    assert {a.type for a in found} == {"psk_mismatch"}
    assert sorted(a.dedupe_key for a in found) == [
        "wifi:psk_mismatch:openwrt:wlan0:1a:f8:d6:90:52:b9",
        "wifi:psk_mismatch:openwrt:wlan0:c0:d0:12:7e:bc:97",
    ]
    assert {i for a in found for i in a.event_ids} == psk_ids
    assert all(a.features["psk_mismatches"] >= 2 for a in found)


def test_openwrt_log_raises_only_the_root_password_change_for_auth() -> None:
    found = analyze("auth", openwrt_events())
    assert [(a.type, a.dedupe_key) for a in found] == [
        ("password_change", "auth:password_change:openwrt:root")
    ]
    assert analyze("dns", openwrt_events()) == []
    assert analyze("firewall", openwrt_events()) == []


@pytest.mark.parametrize("expected", expected_alerts(), ids=lambda e: e.test)
def test_crowdsec_samples_alert_on_exactly_the_expected_sources(expected: Expected) -> None:
    events = crowdsec_events(expected.test)
    found = analyze("auth", events) + analyze("firewall", events)
    assert source_ips(found) == set(expected.source_ips)
    if expected.count == 0:
        assert found == []


def test_accepted_traffic_is_not_a_port_scan() -> None:
    # UFW AUDIT logs allowed packets: 127.0.0.1 hits 16 ports in the sample without an alert.
    events = crowdsec_events("iptables-scan-multi-port")
    found = analyze("firewall", events, port_scan_threshold=15)
    assert "firewall:port_scan:127.0.0.1" not in {a.dedupe_key for a in found}
    stricter = analyze("firewall", events, port_scan_threshold=18)
    assert stricter == []


def test_login_after_many_failures_is_an_error() -> None:
    lines = [
        f"Jan  5 10:00:{n:02d} gw sshd[1]: Failed password for admin from 198.51.100.9 "
        f"port {4000 + n} ssh2"
        for n in range(6)
    ]
    lines.append(
        "Jan  5 10:00:30 gw sshd[1]: Accepted password for admin from 198.51.100.9 port 4100 ssh2"
    )
    found = {a.type: a for a in analyze("auth", syslog_events(lines))}
    assert set(found) == {"brute_force", "login_after_failures"}
    assert found["login_after_failures"].severity == 3
    assert found["login_after_failures"].features["failures_before"] == 6


def test_dns_nxdomain_burst_and_dhcp_storm() -> None:
    lines = []
    for n in range(12):
        lines.append(
            f"Mar  1 09:00:{n:02d} gw dnsmasq[5]: query[A] x{n}.bad.example from 192.168.1.50"
        )
        lines.append(f"Mar  1 09:00:{n:02d} gw dnsmasq[5]: reply x{n}.bad.example is NXDOMAIN")
        lines.append(
            f"Mar  1 09:00:{n:02d} gw dnsmasq-dhcp[5]: DHCPDISCOVER(br-lan) 02:00:00:00:00:01"
        )
    found = analyze("dns", syslog_events(lines), nxdomain_threshold=10, dhcp_client_threshold=10)
    assert sorted(a.dedupe_key for a in found) == [
        "dns:dhcp_client_storm:gw:02:00:00:00:00:01",
        "dns:nxdomain_burst:gw:192.168.1.50",
    ]
    assert analyze("dns", syslog_events(lines)) == []


def _counts_window(start_s: int, length_s: int, per_service: dict[str, int]) -> Window:
    events = []
    for service, count in per_service.items():
        for n in range(count):
            time_ns = (start_s + n * length_s // max(1, count)) * NS_PER_S
            events.append(EventView(f"{service}-{start_s}-{n}", time_ns, "gw", service, 6, "m"))
    events.sort(key=lambda e: e.time_ns)
    return Window(start_s * NS_PER_S, (start_s + length_s) * NS_PER_S, events)


def test_volume_learns_a_baseline_then_reports_spikes_and_silence() -> None:
    agent = create(validate_settings({"type": "volume", "warmup_cycles": 5}))
    start = 1_700_000_000
    for cycle in range(6):
        normal = _counts_window(start + cycle * 300, 300, {"hostapd": 60, "dnsmasq": 40})
        assert agent.analyze(normal, None) == []
    spike = _counts_window(start + 6 * 300, 300, {"hostapd": 600})
    found = {a.type: a for a in agent.analyze(spike, None)}
    assert set(found) == {"rate_spike", "silence"}
    assert found["rate_spike"].dedupe_key == "volume:rate_spike:gw:hostapd"
    assert found["silence"].dedupe_key == "volume:silence:gw:dnsmasq"
    assert found["silence"].time_ns == spike.end_ns


def test_logpattern_flags_new_templates_only_after_warmup() -> None:
    agent = create(validate_settings({"type": "logpattern", "warmup_lines": 50}))
    routine = [
        f"Mar  1 09:00:{n % 60:02d} gw netifd: Interface 'wan{n % 3}' is now up" for n in range(60)
    ]
    assert agent.analyze(window(syslog_events(routine)), None) == []
    novel = ["Mar  1 09:05:00 gw kernel: Out of memory: Killed process 812 (dnsmasq)"]
    found = agent.analyze(window(syslog_events(routine[:5] + novel)), None)
    assert [a.type for a in found] == ["new_template"]
    assert "Out of memory" in found[0].description
