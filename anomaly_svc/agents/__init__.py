"""Detection agents. Importing this package registers every built-in agent type."""

from anomaly_svc.agents import auth, dns, firewall, logpattern, volume, wifi
from anomaly_svc.agents.base import (
    AGENT_TYPES,
    AgentSettings,
    BaseAgent,
    EventView,
    Window,
    create,
    validate_settings,
)

BUILT_IN = (wifi.WiFiAgent, auth.AuthAgent, firewall.FirewallAgent, dns.DnsAgent,
            logpattern.LogPatternAgent, volume.VolumeAgent)  # fmt: skip

__all__ = [
    "AGENT_TYPES",
    "BUILT_IN",
    "AgentSettings",
    "BaseAgent",
    "EventView",
    "Window",
    "create",
    "validate_settings",
]
