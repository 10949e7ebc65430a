"""Inputs: sources of events that commit what they receive to the spool."""

from edge_agent.inputs.base import Input, hand_to_spool
from edge_agent.inputs.syslog_udp import SyslogUdpInput

__all__ = ["Input", "SyslogUdpInput", "hand_to_spool"]
