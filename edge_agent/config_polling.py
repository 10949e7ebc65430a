"""Configuration of the polled and device inputs: SNMP, NetFlow, NMEA GPS and HTTP JSON."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from edge_agent.parsers.json_path import PathError, parse_path, template_paths
from mesh.config import Section

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
NUMERIC_OID = re.compile(r"^\d+(\.\d+)+$")
SEVERITIES = (
    "emergency",
    "alert",
    "critical",
    "error",
    "warning",
    "notice",
    "informational",
    "debug",
)
SeverityName = Literal[
    "emergency", "alert", "critical", "error", "warning", "notice", "informational", "debug"
]


def _numeric_oid(value: str) -> str:
    oid = value.strip().lstrip(".")
    if not NUMERIC_OID.match(oid):
        raise ValueError(f"{value!r} is not a numeric OID (Debian ships no MIBs: use 1.3.6...)")
    return oid


def unique_names(kind: str, names: list[str]) -> None:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{kind} input names must be unique: {', '.join(duplicates)}")


# SNMP ----------------------------------------------------------------------------------


class SnmpOidConfig(Section):
    oid: str = Field(description="Numeric OID (no MIB names), e.g. 1.3.6.1.2.1.1.3.0.")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Attribute key suffix (snmp.<name>); defaults to the OID itself.",
    )

    @field_validator("oid")
    @classmethod
    def _numeric(cls, value: str) -> str:
        return _numeric_oid(value)

    @property
    def key(self) -> str:
        return self.name or self.oid


class SnmpV3Config(Section):
    user: str = Field(min_length=1, description="USM user name.")
    auth_protocol: Literal["none", "md5", "sha", "sha224", "sha256", "sha384", "sha512"] = Field(
        "sha", description="Authentication protocol; 'none' for noAuthNoPriv."
    )
    auth_key: SecretStr | None = Field(
        None, description="Authentication pass phrase (at least 8 characters); never logged."
    )
    priv_protocol: Literal["none", "des", "3des", "aes128", "aes192", "aes256"] = Field(
        "aes128", description="Privacy (encryption) protocol; 'none' for authNoPriv."
    )
    priv_key: SecretStr | None = Field(
        None, description="Privacy pass phrase (at least 8 characters); never logged."
    )

    @model_validator(mode="after")
    def _keys_present(self) -> Self:
        if self.auth_protocol == "none" and self.priv_protocol != "none":
            raise ValueError("priv_protocol: privacy needs authentication (set auth_protocol)")
        for protocol, name in ((self.auth_protocol, "auth_key"), (self.priv_protocol, "priv_key")):
            key: SecretStr | None = getattr(self, name)
            if protocol != "none" and (key is None or len(key.get_secret_value()) < 8):
                raise ValueError(f"{name}: a pass phrase of at least 8 characters is required")
        return self


class SnmpInputConfig(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Names the input: 'snmp:<name>'.")
    host: str = Field(min_length=1, description="Agent (target) address.")
    port: int = Field(161, ge=1, le=65535, description="Agent UDP port.")
    version: Literal["v2c", "v3"] = Field("v2c", description="SNMP version.")
    community: SecretStr = Field(SecretStr("public"), description="v2c community; never logged.")
    v3: SnmpV3Config | None = Field(None, description="v3 user credentials (version v3).")
    interval_s: float = Field(60.0, ge=0.05, description="Time between the starts of two polls.")
    timeout_s: float = Field(2.0, gt=0, le=60, description="Wait for each response this long.")
    retries: int = Field(1, ge=0, le=10, description="Re-sends of a request without response.")
    get: list[SnmpOidConfig] = Field(
        default_factory=list, description="Scalar OIDs read each poll: one event per poll."
    )
    walk: list[SnmpOidConfig] = Field(
        default_factory=list,
        description="Conceptual tables (e.g. ifTable 1.3.6.1.2.1.2.2) walked each poll: one "
        "event per row, columns as snmp.<table>.<column number>.",
    )
    rates: list[str] = Field(
        default_factory=list,
        description="Counter OIDs (a get OID or a table column, e.g. 1.3.6.1.2.1.2.2.1.10) "
        "also reported as a per-second rate (<key>.rate), 32/64-bit wrap and agent restarts "
        "handled.",
    )
    max_rows: int = Field(
        10_000, ge=1, description="Rows read from one table per poll at most (cut, logged)."
    )
    max_repetitions: int = Field(
        25, ge=1, le=1000, description="GETBULK max-repetitions used for walks."
    )

    @field_validator("rates")
    @classmethod
    def _numeric_rates(cls, value: list[str]) -> list[str]:
        return [_numeric_oid(oid) for oid in value]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.get and not self.walk:
            raise ValueError("get: at least one OID to get or a table to walk is required")
        if self.version == "v3" and self.v3 is None:
            raise ValueError("v3: user credentials are required for version v3")
        return self


# NetFlow -------------------------------------------------------------------------------


class NetflowConfig(Section):
    enabled: bool = Field(False, description="Receive NetFlow v5, v9 and IPFIX over UDP.")
    host: str = Field("0.0.0.0", description="Address the UDP socket binds to.")
    port: int = Field(2055, ge=0, le=65535, description="UDP port; 0 picks a free port.")
    receive_buffer_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="Socket receive buffer asked of the kernel (0 keeps the OS default).",
    )
    template_timeout_s: float = Field(
        1800.0, gt=0, description="A v9/IPFIX template not refreshed for this long is forgotten."
    )
    max_templates: int = Field(
        4096, ge=1, description="Templates kept over all exporters; the oldest go first."
    )
    hold_unknown_s: float = Field(
        10.0,
        ge=0,
        description="Data sets whose template has not arrived yet wait this long for it; "
        "then they are dropped and counted (edgebot_netflow_skipped_total{reason=no_template}).",
    )
    max_held_sets: int = Field(
        1000, ge=0, description="Data sets waiting for a template at most (beyond: counted)."
    )
    max_records_per_datagram: int = Field(
        10_000, ge=1, description="Flow records decoded from one datagram at most."
    )
    max_attributes_per_flow: int = Field(
        200,
        ge=40,
        le=10_000,
        description="Attributes of one flow event at most: fields of unknown elements "
        "beyond it are skipped and counted (ingest refuses events with more attributes "
        "than its max_attributes, 256 by default).",
    )
    flush_interval_s: float = Field(
        0.05, gt=0, le=5, description="Longest time a datagram waits before its spool commit."
    )
    flush_max_events: int = Field(
        1000, ge=1, description="Flow events committed to the spool in one transaction at most."
    )
    max_pending: int = Field(
        20_000,
        ge=1,
        description="Datagrams buffered while the spool is busy; beyond this they are "
        "dropped and counted (reason 'overflow').",
    )


# NMEA ----------------------------------------------------------------------------------


class NmeaInputConfig(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Names the input: 'nmea:<name>'.")
    source: str = Field(
        description="serial:///dev/ttyUSB0?baud=4800, tcp://host:port (a raw NMEA stream) "
        "or gpsd://host:port (gpsd, asked for its NMEA with ?WATCH)."
    )
    min_interval_s: float = Field(
        1.0, ge=0, description="At most one position event per interval (the latest fix)."
    )
    require_checksum: bool = Field(
        True, description="Sentences without a '*hh' checksum are counted and ignored."
    )
    max_sentence_bytes: int = Field(
        512, ge=82, le=65536, description="Longer lines are counted (oversize) and skipped."
    )
    reconnect_initial_s: float = Field(1.0, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Reconnect delays double up to this.")
    read_timeout_s: float = Field(
        30.0, gt=0, description="A source silent for this long is reconnected."
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        parse_source(value)
        return value


@dataclass(frozen=True)
class NmeaSource:
    kind: Literal["serial", "tcp", "gpsd"]
    path: str = ""
    baud: int = 4800
    host: str = ""
    port: int = 0


def parse_source(url: str) -> NmeaSource:
    """The NMEA source URL split up; ValueError says what is wrong with it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "serial":
        if not parts.path:
            raise ValueError(f"{url!r}: a device path is required (serial:///dev/ttyUSB0)")
        query = urllib.parse.parse_qs(parts.query)
        baud = query.get("baud", ["4800"])[0]
        if not baud.isdigit() or not 50 <= int(baud) <= 4_000_000:
            raise ValueError(f"{url!r}: baud must be a number of bits per second")
        return NmeaSource(kind="serial", path=parts.path, baud=int(baud))
    if parts.scheme in ("tcp", "gpsd"):
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ValueError(f"{url!r}: host and port are required ({parts.scheme}://host:port)")
        kind: Literal["tcp", "gpsd"] = "tcp" if parts.scheme == "tcp" else "gpsd"
        return NmeaSource(kind=kind, host=parts.hostname, port=port)
    raise ValueError(f"{url!r}: the scheme must be serial://, tcp:// or gpsd://")


# HTTP JSON poller ----------------------------------------------------------------------


def _check_path(value: str) -> str:
    try:
        parse_path(value)
    except PathError as error:
        raise ValueError(str(error)) from None
    return value


class HttpMappingConfig(Section):
    """JSON paths (dotted, list indices like a[0].b; 'items[].x' = one event per item)."""

    message: str = Field(
        "", description="Message template: {path} is replaced by the value at that path."
    )
    host: str = Field("", description="Host template; empty: the URL's host.")
    service: str = Field("", description="Service template; empty: the input name.")
    severity: SeverityName = Field("informational", description="Severity of every event.")
    time: str | None = Field(
        None, description="Path of the source time: ISO 8601 text or Unix seconds/ms."
    )
    attributes: dict[str, str] = Field(
        default_factory=dict, description="Attribute key -> JSON path."
    )

    @field_validator("time")
    @classmethod
    def _time_path(cls, value: str | None) -> str | None:
        return None if value is None else _check_path(value)

    @field_validator("attributes")
    @classmethod
    def _attribute_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for key, path in value.items():
            if not key or len(key) > 128:
                raise ValueError(f"attribute key {key!r}: 1..128 characters")
            try:
                parse_path(path)
            except PathError as error:
                raise ValueError(f"{key}: {error}") from None
        return value

    @model_validator(mode="after")
    def _one_item_list(self) -> Self:
        paths = [*self.attributes.values(), *([self.time] if self.time else [])]
        for template in (self.message, self.host, self.service):
            try:
                paths.extend(template_paths(template))
            except PathError as error:
                raise ValueError(f"template {template!r}: {error}") from None
        lists = {parse_path(p).items_prefix for p in paths} - {None}
        if len(lists) > 1:
            raise ValueError(f"paths iterate over more than one list: {sorted(map(str, lists))}")
        return self


class HttpInputConfig(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Names the input: 'http:<name>'.")
    url: str = Field(description="http:// or https:// URL polled.")
    interval_s: float = Field(300.0, ge=0.05, description="Time between the starts of two polls.")
    method: Literal["GET", "POST"] = Field("GET", description="HTTP method.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers (values never logged)."
    )
    body: str | None = Field(None, description="Request body (POST), sent as is.")
    bearer_token_file: Path | None = Field(
        None, description="File holding a bearer token, read at every poll; never logged."
    )
    bearer_token_env: str | None = Field(
        None, description="Environment variable holding a bearer token; never logged."
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="Whole-request timeout.")
    max_response_bytes: int = Field(
        1024 * 1024, ge=64, description="Longer responses are abandoned and counted."
    )
    max_json_depth: int = Field(
        64, ge=1, le=512, description="Deeper JSON is refused (raw event, parse.error)."
    )
    max_field_bytes: int = Field(
        8192,
        ge=64,
        description="Longest mapped attribute value, host or service (UTF-8 bytes); longer "
        "ones are cut and named in attribute http.truncated. Keep it within ingest's "
        "max_field_bytes.",
    )
    max_message_bytes: int = Field(
        65536,
        ge=64,
        description="Longest message (UTF-8 bytes); a longer one is cut and named in "
        "http.truncated. Keep it within ingest's max_message_bytes.",
    )
    max_events_per_poll: int = Field(
        1000, ge=1, description="Events from one response at most (the rest counted)."
    )
    verify_tls: bool = Field(True, description="Verify the server certificate (https).")
    mapping: HttpMappingConfig = Field(
        default_factory=HttpMappingConfig, description="JSON paths to event fields."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r}: an http:// or https:// URL with a host is required")
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> Self:
        if self.bearer_token_file is not None and self.bearer_token_env is not None:
            raise ValueError("bearer_token_file: give a token file or an env variable, not both")
        if self.bearer_token_file is not None and not self.bearer_token_file.is_file():
            raise ValueError(f"bearer_token_file: file not found: {self.bearer_token_file}")
        return self
