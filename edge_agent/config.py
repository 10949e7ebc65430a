"""Edge agent configuration: identity, inputs, the durable spool and the shipper."""

from __future__ import annotations

import codecs
import re
import socket
import zoneinfo
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from edge_agent.config_polling import (
    HttpInputConfig,
    NetflowConfig,
    NmeaInputConfig,
    SnmpInputConfig,
    unique_names,
)
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


def _check_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


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
    receive_buffer_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="Socket receive buffer asked of the kernel (0 keeps the OS default); "
        "bursts beyond it are dropped by the kernel (edgebot_input_kernel_drops).",
    )
    max_pending: int = Field(
        50_000,
        ge=1,
        description="Datagrams buffered while the spool is busy; beyond this they are "
        "dropped and counted (reason 'overflow').",
    )
    max_tracked_sources: int = Field(
        256,
        ge=0,
        description="Senders counted one by one in edgebot_input_source_messages_total; "
        "later ones are counted together as 'other', so the metric stays bounded.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return _check_zone(value)


class SyslogTlsConfig(Section):
    """TLS on a syslog TCP listener (RFC 5425); the files are the agent's PEM files."""

    enabled: bool = Field(False, description="Require TLS on every connection.")
    cert_file: Path | None = Field(None, description="Server certificate (PEM).")
    key_file: Path | None = Field(None, description="Server private key (PEM).")
    ca_file: Path | None = Field(
        None,
        description="CA bundle for client certificates: presented ones are verified against "
        "it; required when require_client_cert is true.",
    )
    require_client_cert: bool = Field(
        False, description="Refuse senders that present no certificate signed by ca_file."
    )
    handshake_timeout_s: float = Field(
        10.0, gt=0, description="A sender that does not finish the handshake in time is cut."
    )

    @model_validator(mode="after")
    def _files_present(self) -> Self:
        if not self.enabled:
            return self
        needed = ["cert_file", "key_file"] + (["ca_file"] if self.require_client_cert else [])
        for name in needed:
            path = getattr(self, name)
            if path is None:
                raise ValueError(f"{name}: required when TLS is enabled")
            if not path.is_file():
                raise ValueError(f"{name}: file not found: {path}")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file: file not found: {self.ca_file}")
        return self


class SyslogTcpConfig(Section):
    enabled: bool = Field(False, description="Listen for syslog over TCP (RFC 6587 framing).")
    host: str = Field("0.0.0.0", description="Address the TCP listener binds to.")
    port: int = Field(5514, ge=0, le=65535, description="TCP port; 0 picks a free port.")
    max_message_bytes: int = Field(
        65536,
        ge=64,
        le=16 * 1024 * 1024,
        description="Longer frames are truncated (attribute input.truncated) and the rest "
        "of the frame is skipped; counted as framing error 'oversize'.",
    )
    max_connections: int = Field(
        256, ge=1, description="Connections beyond this are closed at once and counted."
    )
    idle_timeout_s: float = Field(
        300.0, gt=0, description="A connection that sends nothing for this long is closed."
    )
    timezone: str = Field(
        "UTC", description="IANA zone of RFC 3164 timestamps, which carry no offset."
    )
    read_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="Bytes read from a socket at once."
    )
    blocked_poll_s: float = Field(
        0.2,
        gt=0,
        le=60,
        description="While the spool is full reading pauses; it retries the commit this often.",
    )
    max_tracked_sources: int = Field(
        256,
        ge=0,
        description="Senders counted one by one in edgebot_input_source_messages_total; "
        "later ones are counted together as 'other', so the metric stays bounded.",
    )
    tls: SyslogTlsConfig = Field(default_factory=SyslogTlsConfig, description="TLS.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return _check_zone(value)


def _default_syslog_tls() -> SyslogTcpConfig:
    return SyslogTcpConfig(port=6514)


class MultilineConfig(Section):
    """Joins continuation lines (stack traces) to the line that starts a record."""

    start_pattern: str = Field(
        description="Regex (Python re, searched from the line start) that a record's first "
        "line matches; other lines continue the current record."
    )
    max_lines: int = Field(500, ge=1, description="A record reaching this many lines is cut.")
    max_bytes: int = Field(
        256 * 1024, ge=64, description="A record reaching this many bytes is cut."
    )
    timeout_s: float = Field(
        1.0, gt=0, description="A record with no new line for this long is complete."
    )

    @field_validator("start_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression: {error}") from None
        return value


class FileInputConfig(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Names the input: source '<agent>/file:<name>' and the checkpoints.",
    )
    paths: list[str] = Field(
        min_length=1, description="Glob patterns (** allowed); files appearing later count."
    )
    start_at: Literal["beginning", "end"] = Field(
        "beginning",
        description="Where to start in files found at this input's very first start; files "
        "that appear afterwards are always read from the beginning.",
    )
    encoding: str = Field(
        "utf-8", description="Text encoding (ASCII-compatible); invalid bytes are replaced."
    )
    parser: Literal["raw", "syslog"] = Field(
        "raw", description="raw: one event per line; syslog: lines with a syslog header parsed."
    )
    timezone: str = Field("UTC", description="IANA zone of syslog timestamps without offset.")
    multiline: MultilineConfig | None = Field(None, description="Multi-line records.")
    poll_interval_s: float = Field(
        0.25, gt=0, le=60, description="How often files are checked for new data and rotation."
    )
    max_line_bytes: int = Field(
        65536,
        ge=64,
        le=16 * 1024 * 1024,
        description="Longer lines are truncated (attribute input.truncated), the rest skipped.",
    )
    read_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="Bytes read from a file at once."
    )
    commit_max_events: int = Field(
        500, ge=1, description="Events committed to the spool in one transaction at most."
    )
    rotate_wait_s: float = Field(
        1.0,
        ge=0,
        description="A file no pattern matches any more (renamed away, deleted) is read to "
        "its end and closed once it has not grown for this long.",
    )
    blocked_poll_s: float = Field(
        0.2, gt=0, le=60, description="While the spool is full, how often the commit is retried."
    )

    @field_validator("encoding")
    @classmethod
    def _ascii_compatible(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        if "\n".encode(value) != b"\n":
            raise ValueError(f"encoding {value!r} is not ASCII-compatible; lines split on LF")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return _check_zone(value)


class InputsSection(Section):
    syslog_udp: SyslogUdpConfig = Field(
        default_factory=SyslogUdpConfig, description="Syslog over UDP."
    )
    syslog_tcp: SyslogTcpConfig = Field(
        default_factory=SyslogTcpConfig, description="Syslog over TCP (TLS optional)."
    )
    syslog_tls: SyslogTcpConfig = Field(
        default_factory=_default_syslog_tls,
        description="A second TCP listener, meant for TLS (RFC 5425, port 6514): the same "
        "keys as syslog_tcp; set tls.enabled and the files.",
    )
    files: list[FileInputConfig] = Field(default_factory=list, description="Log files to tail.")
    snmp: list[SnmpInputConfig] = Field(
        default_factory=list, description="SNMP targets polled (one input per target)."
    )
    netflow: NetflowConfig = Field(
        default_factory=NetflowConfig, description="NetFlow v5/v9 and IPFIX collector (UDP)."
    )
    nmea: list[NmeaInputConfig] = Field(
        default_factory=list, description="NMEA 0183 GPS receivers (serial, TCP or gpsd)."
    )
    http: list[HttpInputConfig] = Field(
        default_factory=list, description="HTTP JSON APIs polled (e.g. weather)."
    )

    @model_validator(mode="after")
    def _tls_listener_uses_tls(self) -> Self:
        if self.syslog_tls.enabled and not self.syslog_tls.tls.enabled:
            raise ValueError("syslog_tls.tls.enabled: must be true (use syslog_tcp for plain TCP)")
        return self

    @field_validator("files", "snmp", "nmea", "http")
    @classmethod
    def _unique_names(
        cls,
        value: list[FileInputConfig]
        | list[SnmpInputConfig]
        | list[NmeaInputConfig]
        | list[HttpInputConfig],
        info: ValidationInfo,
    ) -> Any:
        kind = {"files": "file"}.get(str(info.field_name), str(info.field_name))
        unique_names(kind, [entry.name for entry in value])
        return value


MIN_DISK_RESERVE_BYTES = 4 * 1024 * 1024


class SpoolSection(Section):
    path: Path = Field(Path("edgebot-spool.db"), description="SQLite spool file (WAL mode).")
    max_bytes: int = Field(
        GIB,
        ge=1024,
        description="Quota of spooled event bytes. When it is reached, inputs that can "
        "wait (TCP, files) pause; the others apply spool.overflow_policy.",
    )
    min_free_disk_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Free space the spool leaves on its disk: below it the spool counts as "
        "full (reason 'disk_full'), so acks and WAL checkpoints (up to 1 MiB at a time) "
        "never meet a full disk. 0 disables the check; otherwise at least 4 MiB.",
    )

    @field_validator("min_free_disk_bytes")
    @classmethod
    def _reserve_holds_a_checkpoint(cls, value: int) -> int:
        if 0 < value < MIN_DISK_RESERVE_BYTES:
            raise ValueError(f"must be 0 or at least {MIN_DISK_RESERVE_BYTES} (4 MiB)")
        return value

    overflow_policy: Literal["drop_newest", "drop_lowest_severity"] = Field(
        "drop_lowest_severity",
        description="What a full spool drops for inputs that cannot wait (UDP syslog, "
        "NetFlow, SNMP, NMEA, HTTP polls): 'drop_lowest_severity' evicts waiting events "
        "less severe than the newcomer (least severe, then oldest, first; events already "
        "in a batch are never evicted) and refuses it only when none are; 'drop_newest' "
        "refuses every newcomer. Counted in edgebot_spool_dropped_total{reason} and "
        "edgebot_spool_dropped_by_severity_total{severity}.",
    )


def _default_ingest() -> ClientConfig:
    return ClientConfig(addresses=["127.0.0.1:50051"])


class ShipperSection(Section):
    ingest: ClientConfig = Field(
        default_factory=_default_ingest,
        description="IngestService addresses, tried in turn (fail-over) on connection failure.",
    )
    gzip: bool = Field(
        False,
        description="Compress batches; worth it only where the link is slower than the CPU "
        "(a LAN is not).",
    )
    batch_max_events: int = Field(
        500,
        ge=1,
        description="Events per batch at most (also capped by the server's limit); with "
        "adaptive_batching, the size batches start at and shrink back to.",
    )
    adaptive_batching: bool = Field(
        True,
        description="Grow batches (doubling, up to adaptive_max_events and the server's "
        "limit) while a backlog waits behind full batches, and halve them again when "
        "batches leave half empty: big batches under load, low latency when quiet.",
    )
    adaptive_max_events: int = Field(
        5000, ge=1, description="Largest batch adaptive batching grows to."
    )
    batch_max_wait_s: float = Field(
        1.0, ge=0, description="A partial batch is sent once its oldest event waited this long."
    )
    send_when_idle: bool = Field(
        False,
        description="Send what is spooled at once while no batch on the stream awaits its "
        "ack, instead of waiting up to batch_max_wait_s; while batches are in flight, new "
        "events still gather into the next one (as TCP's Nagle algorithm does). Lowest "
        "latency, but at low rates nearly every arrival becomes its own batch, and each "
        "batch has a fixed cost in every hop.",
    )
    backoff_initial_s: float = Field(0.5, gt=0, description="First reconnect delay.")
    backoff_max_s: float = Field(30.0, gt=0, description="Reconnect delays double up to this.")
    breaker_failures: int = Field(
        3,
        ge=1,
        description="Consecutive failed connection attempts after which an ingest address's "
        "circuit breaker opens: fail-over skips it until it is probed again.",
    )
    breaker_open_s: float = Field(
        30.0,
        gt=0,
        description="How long an open breaker keeps its address out of rotation before one "
        "probe; a probe that fails opens it again. When every address is open, the one due "
        "soonest is tried anyway, at the backoff's pace.",
    )
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


class FileOutputSection(Section):
    """Batches written to rotating gzip JSON Lines files, for sites with no link home."""

    enabled: bool = Field(False, description="Write spooled batches to files.")
    mode: Literal["alongside", "instead"] = Field(
        "alongside",
        description="'alongside': a copy of every batch is written before it is streamed, "
        "and the ingest ack still decides when it leaves the spool; 'instead': no stream, "
        "a batch leaves the spool once its file write is fsynced (ship the files later "
        "with `edgebot replay`).",
    )
    directory: Path = Field(Path("edgebot-outbox"), description="Where the files are written.")
    max_file_bytes: int = Field(
        64 * 1024 * 1024,
        ge=4096,
        description="A file is closed and a new one started once it reaches this compressed size.",
    )
    rotate_interval_s: float = Field(
        3600.0, gt=0, description="A file is also closed once it has been open this long."
    )


class AgentConfig(ServiceConfig):
    agent: AgentSection = Field(default_factory=AgentSection, description="Identity.")
    inputs: InputsSection = Field(default_factory=InputsSection, description="Inputs.")
    spool: SpoolSection = Field(default_factory=SpoolSection, description="Durable spool.")
    shipper: ShipperSection = Field(
        default_factory=ShipperSection, description="Streaming to IngestService."
    )
    file_output: FileOutputSection = Field(
        default_factory=FileOutputSection, description="Batches to local files."
    )
