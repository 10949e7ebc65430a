"""Ingest configuration: stream limits, overall bounds, and where pipeline and storage are."""

from __future__ import annotations

from pydantic import Field

from mesh.config import ClientConfig, Section, ServiceConfig


class IngestSection(Section):
    max_unacked_batches: int = Field(
        8, ge=1, le=1024, description="Batches one stream may have in flight (advertised)."
    )
    max_events_per_batch: int = Field(5_000, ge=1, description="Largest batch accepted.")
    max_batch_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest serialized batch accepted."
    )
    max_inflight_batches: int = Field(
        256, ge=1, description="Batches processed at once over all streams; bounds memory."
    )
    max_streams: int = Field(1_000, ge=1, description="Concurrent agent streams.")
    max_streams_per_caller: int = Field(
        4,
        ge=1,
        description="Concurrent streams of one caller (one agent id, or one operator): a "
        "single certificate cannot take every stream slot.",
    )
    hello_timeout_s: float = Field(
        10.0, gt=0, description="A stream whose hello has not arrived by then is ended."
    )
    stream_idle_timeout_s: float | None = Field(
        900.0,
        gt=0,
        description="A stream with no batch in flight that sends nothing for this long is "
        "ended (UNAVAILABLE with a retry delay; agents reconnect when they have data); "
        "also bounds a message trickled in byte by byte. null: never.",
    )
    retry_delay_s: float = Field(
        1.0, gt=0, description="Delay suggested in RETRY acks and RESOURCE_EXHAUSTED errors."
    )
    max_message_bytes: int = Field(64 * 1024, ge=1, description="Longest event message.")
    max_attributes: int = Field(256, ge=0, description="Most attributes (and tags) per event.")
    max_field_bytes: int = Field(
        8 * 1024,
        ge=1,
        description="Longest attribute/tag/trace-context key or value, host, service, type, "
        "source, and hello agent_version/hostname.",
    )
    max_raw_bytes: int = Field(
        256 * 1024, ge=1, description="Longest Event.raw (the original bytes of an event)."
    )


def _client(address: str) -> ClientConfig:
    return ClientConfig(addresses=[address])


class IngestServiceConfig(ServiceConfig):
    ingest: IngestSection = Field(default_factory=IngestSection)
    pipeline: ClientConfig = Field(
        default_factory=lambda: _client("127.0.0.1:50052"), description="PipelineService."
    )
    storage: ClientConfig = Field(
        default_factory=lambda: _client("127.0.0.1:50053"), description="StorageService."
    )
