"""Inputs: sources of events that commit what they receive to the spool."""

from edge_agent.inputs.base import Input, hand_to_spool
from edge_agent.inputs.file_tail import FileTailInput
from edge_agent.inputs.syslog_tcp import SyslogTcpInput
from edge_agent.inputs.syslog_udp import SyslogUdpInput

__all__ = ["FileTailInput", "Input", "SyslogTcpInput", "SyslogUdpInput", "hand_to_spool"]
