"""The edge agent: inputs, parsers, a durable SQLite spool and the shipper to ingest."""

from edge_agent.agent import AgentApp, build
from edge_agent.config import AgentConfig
from edge_agent.parsers.syslog import Received, parse_syslog
from edge_agent.shipper import AGENT_VERSION, Shipper
from edge_agent.spool import AppendResult, Spool, SpooledBatch

__all__ = [
    "AGENT_VERSION",
    "AgentApp",
    "AgentConfig",
    "AppendResult",
    "Received",
    "Shipper",
    "Spool",
    "SpooledBatch",
    "build",
    "parse_syslog",
]
