"""Configuration of the secondary sinks: the ``sinks:`` list, one entry per sink, by type.

Secrets (passwords, tokens) are never part of the configuration: an entry names the file or
the environment variable that holds them, and the sink reads it when it uses it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from mesh.config import Section

SINK_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
LokiLabel = Literal["source", "type", "service", "severity", "site", "env"]
LOKI_LABELS: tuple[LokiLabel, ...] = ("source", "type", "service", "severity", "site", "env")
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class SecondarySinkSection(Section):
    """What every secondary sink has: its name, and how the outbox worker feeds it."""

    name: str = Field(
        pattern=SINK_NAME,
        description="Name in metrics, GetStats and health; defaults to the type. Unique.",
    )
    enabled: bool = Field(
        True,
        description="A disabled sink gets nothing, and its outbox cursor is dropped: when "
        "enabled again it starts with the events stored from then on.",
    )
    batch_max_events: int = Field(1000, ge=1, description="Most events in one write.")
    batch_max_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="A write ends early once its events (as stored protobuf) reach this size.",
    )
    batch_wait_s: float = Field(
        0.0,
        ge=0,
        description="How long the worker lets a batch fill up (by events or bytes) after "
        "its first event arrived before writing it anyway; 0 writes what is there.",
    )
    write_timeout_s: float = Field(
        30.0, gt=0, description="A write taking longer counts as failed and is retried."
    )
    retry_initial_s: float = Field(0.5, gt=0, description="First delay after a failed write.")
    retry_max_s: float = Field(
        30.0, gt=0, description="Delays double (with jitter) after each failure up to this."
    )
    down_after_failures: int = Field(
        3,
        ge=1,
        description="Consecutive failed writes after which the sink reports DOWN (before "
        "that: DEGRADED). The first successful write makes it UP again.",
    )

    @model_validator(mode="before")
    @classmethod
    def _name_defaults_to_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data and isinstance(data.get("type"), str):
            return {**data, "name": data["type"]}
        return data

    @field_validator("retry_max_s")
    @classmethod
    def _max_not_below_initial(cls, value: float, info: Any) -> float:
        initial = info.data.get("retry_initial_s")
        if initial is not None and value < initial:
            raise ValueError(f"must not be below retry_initial_s ({initial})")
        return value


def _one_source(section: Section, what: str, *keys: str) -> None:
    given = [key for key in keys if getattr(section, key) is not None]
    if len(given) > 1:
        raise ValueError(f"{given[1]}: give {what} in only one of {', '.join(keys)}")


class LokiSinkSection(SecondarySinkSection):
    type: Literal["loki"]
    url: str = Field(
        description="Base URL of Loki (or a gateway), e.g. http://loki:3100; the push path "
        "is appended. Credentials never go in the URL."
    )
    push_path: str = Field("/loki/api/v1/push", description="Path of the push API.")
    tenant: str | None = Field(
        None, description="Sent as X-Scope-OrgID (multi-tenant Loki); null sends none."
    )
    username: str | None = Field(None, description="Basic-auth user (with a password source).")
    password_file: Path | None = Field(None, description="File holding the basic-auth password.")
    password_env: str | None = Field(
        None, description="Environment variable holding the basic-auth password."
    )
    bearer_token_file: Path | None = Field(None, description="File holding a bearer token.")
    bearer_token_env: str | None = Field(
        None, description="Environment variable holding a bearer token."
    )
    labels: list[LokiLabel] = Field(
        default_factory=lambda: list(LOKI_LABELS),
        description="Stream labels, only from this low-cardinality set (site and env come "
        "from the tags of the same names). Ids, hosts, addresses and free text never become "
        "labels: they go into structured metadata or the line.",
    )
    structured_metadata: bool = Field(
        True,
        description="Send the event id, host, attributes and the tags that are not labels "
        "as structured metadata (Loki 3, or 2.9+ with allow_structured_metadata).",
    )
    line_format: Literal["message", "json"] = Field(
        "message",
        description="The log line: the message alone, or a JSON document of the whole "
        "event (use json when structured metadata is off, so nothing is lost).",
    )
    gzip: bool = Field(False, description="Compress push bodies (Content-Encoding: gzip).")
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout of one push.")
    batch_wait_s: float = Field(
        1.0, ge=0, description="How long a push may wait to fill up (see batch_max_events)."
    )

    @field_validator("url")
    @classmethod
    def _plain_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials: use username and password_file")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _auth_is_consistent(self) -> LokiSinkSection:
        _one_source(self, "the password", "password_file", "password_env")
        _one_source(self, "the token", "bearer_token_file", "bearer_token_env")
        has_password = self.password_file is not None or self.password_env is not None
        has_token = self.bearer_token_file is not None or self.bearer_token_env is not None
        if has_password and self.username is None:
            raise ValueError("username: required with a password")
        if self.username is not None and not has_password:
            raise ValueError("password_file: a username needs password_file or password_env")
        if has_password and has_token:
            raise ValueError("bearer_token_file: use basic auth or a bearer token, not both")
        return self


class NatsSinkSection(SecondarySinkSection):
    type: Literal["nats"]
    servers: list[str] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        min_length=1,
        description="NATS server URLs.",
    )
    subject_prefix: str = Field(
        "events.enriched",
        description="Each event is published to <prefix>.<type> (the type with characters "
        "a subject token cannot hold replaced by '_'; 'unknown' when empty).",
    )
    stream: str = Field(
        "EDGEBOT_EVENTS",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="JetStream stream that captures <prefix>.>.",
    )
    create_stream: bool = Field(
        True, description="Create the stream at connect when it does not exist."
    )
    stream_storage: Literal["file", "memory"] = Field(
        "file", description="Storage of a stream this sink creates."
    )
    stream_max_age_s: float | None = Field(
        None, gt=0, description="Max age of messages in a stream this sink creates."
    )
    stream_max_bytes: int | None = Field(
        None, ge=1, description="Max bytes of a stream this sink creates."
    )
    duplicate_window_s: float = Field(
        120.0,
        gt=0,
        description="JetStream drops a message whose Nats-Msg-Id (the event id) it saw "
        "within this window (stream this sink creates). Keep it above retry_max_s.",
    )
    user: str | None = Field(None, description="NATS user (with a password source).")
    password_file: Path | None = Field(None, description="File holding the NATS password.")
    password_env: str | None = Field(
        None, description="Environment variable holding the NATS password."
    )
    token_file: Path | None = Field(None, description="File holding a NATS auth token.")
    token_env: str | None = Field(
        None, description="Environment variable holding a NATS auth token."
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Timeout of one connect attempt.")
    publish_timeout_s: float = Field(
        10.0, gt=0, description="How long a write waits for JetStream's acks."
    )
    max_pending: int = Field(
        4000, ge=1, description="Most publishes awaiting their JetStream ack at once."
    )
    batch_max_events: int = Field(500, ge=1, description="Most events in one write.")

    @field_validator("subject_prefix")
    @classmethod
    def _subject_tokens(cls, value: str) -> str:
        if not all(_SUBJECT_TOKEN.match(token) for token in value.split(".")):
            raise ValueError("must be dot-separated tokens of letters, digits, '_' and '-'")
        return value

    @model_validator(mode="after")
    def _auth_is_consistent(self) -> NatsSinkSection:
        _one_source(self, "the password", "password_file", "password_env")
        _one_source(self, "the token", "token_file", "token_env")
        has_password = self.password_file is not None or self.password_env is not None
        if has_password != (self.user is not None):
            raise ValueError("user: a user and a password source go together")
        return self


class FileSinkSection(SecondarySinkSection):
    type: Literal["file"]
    directory: Path = Field(description="Where the JSONL files go (created if missing).")
    prefix: str = Field(
        "events",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The active file is <prefix>.jsonl; rotated ones "
        "<prefix>-<UTC time>-<n>.jsonl(.gz).",
    )
    max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Rotate once the active file reaches this size."
    )
    rotate_every_s: float | None = Field(
        3600.0,
        gt=0,
        description="Rotate a file this long after its first line (checked when events "
        "are written); null rotates by size only.",
    )
    gzip: bool = Field(True, description="Compress rotated files (.jsonl.gz).")
    keep_files: int | None = Field(
        None, ge=1, description="Delete the oldest rotated files beyond this many; null keeps all."
    )
    fsync: bool = Field(
        True, description="fsync after each write, so a written batch survives a power loss."
    )


class EntitiesSinkSection(SecondarySinkSection):
    type: Literal["entities"]
    user_attributes: list[str] = Field(
        default_factory=lambda: ["user.name", "user", "auth.user", "user.id"],
        description="Attributes naming the User of an event; the first present wins.",
    )
    process_name_attributes: list[str] = Field(
        default_factory=lambda: ["process.name"],
        description="Attributes naming the process; the event's service is used otherwise.",
    )
    pid_attributes: list[str] = Field(
        default_factory=lambda: ["process.pid", "syslog.pid"],
        description="Attributes holding the process id. A Process entity needs a pid or "
        "a process name attribute.",
    )
    container_attributes: list[str] = Field(
        default_factory=lambda: ["container.id", "container.name", "k8s.container.name"],
        description="Attributes naming the Container of an event; the first present wins.",
    )
    max_key_bytes: int = Field(
        256, ge=16, description="Entity keys longer than this (UTF-8) are not taken."
    )
    default_page_size: int = Field(
        100, ge=1, description="QueryEntities events per page when page_size is 0."
    )
    max_page_size: int = Field(
        1000, ge=1, description="Hard limit of QueryEntities events per page."
    )
    default_neighbors: int = Field(
        50, ge=0, description="QueryEntities neighbours when max_neighbors is 0."
    )
    max_neighbors: int = Field(500, ge=0, description="Hard limit of QueryEntities neighbours.")

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> EntitiesSinkSection:
        if self.default_page_size > self.max_page_size:
            raise ValueError(
                f"default_page_size: must not exceed max_page_size ({self.max_page_size})"
            )
        if self.default_neighbors > self.max_neighbors:
            raise ValueError(
                f"default_neighbors: must not exceed max_neighbors ({self.max_neighbors})"
            )
        return self


SinkSection = Annotated[
    LokiSinkSection | NatsSinkSection | FileSinkSection | EntitiesSinkSection,
    Field(discriminator="type"),
]
