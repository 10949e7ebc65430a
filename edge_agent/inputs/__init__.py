"""Inputs: sources of events that commit what they receive to the spool."""

from edge_agent.inputs.base import Input, hand_to_spool
from edge_agent.inputs.file_tail import FileTailInput
from edge_agent.inputs.http_poll import HttpPollInput
from edge_agent.inputs.netflow import NetflowInput
from edge_agent.inputs.nmea import NmeaInput
from edge_agent.inputs.snmp import SnmpInput
from edge_agent.inputs.syslog_tcp import SyslogTcpInput
from edge_agent.inputs.syslog_udp import SyslogUdpInput

__all__ = [
    "FileTailInput",
    "HttpPollInput",
    "Input",
    "NetflowInput",
    "NmeaInput",
    "SnmpInput",
    "SyslogTcpInput",
    "SyslogUdpInput",
    "hand_to_spool",
]
