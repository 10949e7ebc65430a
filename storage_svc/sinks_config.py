"""Configuration of the secondary sinks: the ``sinks:`` list, one entry per sink, by type."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from mesh.config import Section

SINK_NAME = r"^[a-z][a-z0-9_-]{0,31}$"


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


SinkSection = Annotated[FileSinkSection, Field(discriminator="type")]
