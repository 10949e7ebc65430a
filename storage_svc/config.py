"""Storage configuration: which primary sink, its database file, query and tail limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from mesh.config import Section, ServiceConfig


class StorageSection(Section):
    primary: Literal["sqlite"] = Field(
        "sqlite",
        description="The primary sink: the ack to the edge means this sink committed. "
        "Only the embedded 'sqlite' exists so far.",
    )


class SqliteSection(Section):
    path: Path = Field(
        Path("edgebot-events.db"),
        description="Database file; a relative path is relative to the working directory.",
    )
    busy_timeout_ms: int = Field(
        5000,
        ge=0,
        description="How long a statement waits for a lock held by another connection "
        "before the write fails (and the batch is retried).",
    )
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "FULL",
        description="SQLite synchronous mode. FULL syncs the WAL on every commit, so an "
        "acknowledged batch survives a power loss; NORMAL survives only a process crash.",
    )


class QuerySection(Section):
    max_page_size: int = Field(1000, ge=1, description="Hard limit of events per QueryEvents page.")
    default_page_size: int = Field(
        100, ge=1, description="Page size when a request leaves page_size at 0."
    )
    max_page_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="A page ends early (with a next_page_token) once its events reach this "
        "size, so it stays under clients' default 4 MiB message limit.",
    )

    @field_validator("default_page_size")
    @classmethod
    def _within_max(cls, value: int, info: ValidationInfo) -> int:
        limit = info.data.get("max_page_size")
        if limit is not None and value > limit:
            raise ValueError(f"must not exceed query.max_page_size ({limit})")
        return value


class TailSection(Section):
    subscriber_buffer: int = Field(
        1000,
        ge=1,
        description="Events a TailEvents subscriber may fall behind before its stream ends "
        "with RESOURCE_EXHAUSTED (writes never wait for a subscriber).",
    )
    max_events_per_response: int = Field(
        500, ge=1, description="Most events sent in one TailEvents response."
    )
    max_response_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="A TailEvents response is split once its events reach this size.",
    )


class StorageServiceConfig(ServiceConfig):
    storage: StorageSection = Field(default_factory=StorageSection)
    sqlite: SqliteSection = Field(default_factory=SqliteSection)
    query: QuerySection = Field(default_factory=QuerySection)
    tail: TailSection = Field(default_factory=TailSection)
