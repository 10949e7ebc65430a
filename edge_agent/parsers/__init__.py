"""Parsers: bytes from an input into Events (pure functions)."""

from edge_agent.parsers.syslog import Received, parse_syslog

__all__ = ["Received", "parse_syslog"]
