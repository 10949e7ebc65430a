"""Edge agent configuration: identity, inputs, the durable spool and the shipper."""

from __future__ import annotations

import socket
import zoneinfo
from pathlib import Path

from pydantic import Field, field_validator

from mesh.config import ClientConfig, Section, ServiceConfig

GIB = 1024**3


class AgentSection(Section):
    id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="Agent id sent to ingest; must match the agent certificate's identity. "
        "Defaults to the hostname.",
    )
    site: str = Field("", description="Site this agent runs at (informational).")


class SyslogUdpConfig(Section):
    enabled: bool = Field(True, description="Listen for syslog datagrams (RFC 3164 and 5424).")
    host: str = Field("0.0.0.0", description="Address the UDP socket binds to.")
    port: int = Field(5514, ge=0, le=65535, description="UDP port; 0 picks a free port.")
    max_message_bytes: int = Field(
        65535, ge=64, le=65535, description="Longer datagrams are truncated (and marked)."
    )
    timezone: str = Field(
        "UTC", description="IANA zone of RFC 3164 timestamps, which carry no offset."
    )
    flush_interval_s: float = Field(
        0.02, gt=0, le=5, description="Longest time a datagram waits before its spool commit."
    )
    flush_max_events: int = Field(
        256, ge=1, description="Datagrams committed to the spool in one transaction at most."
    )
    max_pending: int = Field(
        50_000,
        ge=1,
        description="Datagrams buffered while the spool is busy; beyond this they are "
        "dropped and counted (reason 'overflow').",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class InputsSection(Section):
    syslog_udp: SyslogUdpConfig = Field(
        default_factory=SyslogUdpConfig, description="Syslog over UDP."
    )


class SpoolSection(Section):
    path: Path = Field(Path("edgebot-spool.db"), description="SQLite spool file (WAL mode).")
    max_bytes: int = Field(
        GIB,
        ge=1024,
        description="Quota of spooled event bytes; when reached new events are refused "
        "and counted as dropped (reason 'spool_full').",
    )


def _default_ingest() -> ClientConfig:
    return ClientConfig(addresses=["127.0.0.1:50051"])


class ShipperSection(Section):
    ingest: ClientConfig = Field(
        default_factory=_default_ingest,
        description="IngestService addresses, tried in turn (fail-over) on connection failure.",
    )
    batch_max_events: int = Field(
        500, ge=1, description="Events per batch at most (also capped by the server's limit)."
    )
    batch_max_wait_s: float = Field(
        1.0, ge=0, description="A partial batch is sent once its oldest event waited this long."
    )
    backoff_initial_s: float = Field(0.5, gt=0, description="First reconnect delay.")
    backoff_max_s: float = Field(30.0, gt=0, description="Reconnect delays double up to this.")
    max_in_flight: int = Field(
        4,
        ge=1,
        description="Un-acked batches in flight when the server advertises no limit.",
    )

    @field_validator("ingest")
    @classmethod
    def _has_address(cls, value: ClientConfig) -> ClientConfig:
        if not value.addresses:
            raise ValueError("addresses: at least one ingest address is required")
        return value


class AgentConfig(ServiceConfig):
    agent: AgentSection = Field(default_factory=AgentSection, description="Identity.")
    inputs: InputsSection = Field(default_factory=InputsSection, description="Inputs.")
    spool: SpoolSection = Field(default_factory=SpoolSection, description="Durable spool.")
    shipper: ShipperSection = Field(
        default_factory=ShipperSection, description="Streaming to IngestService."
    )
