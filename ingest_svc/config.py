"""Ingest configuration: stream limits, overall bounds, where pipeline and storage are, and
the optional NATS JetStream input."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from mesh.config import ClientConfig, Section, ServiceConfig

NATS_NAME = r"^[A-Za-z0-9_-]{1,32}$"


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
    max_pipeline_calls: int = Field(
        4,
        ge=1,
        le=1024,
        description="Pipeline Process calls in flight at once. Batches arriving while all "
        "are busy wait, and the next call carries every waiting batch (up to "
        "max_pipeline_call_events): fewer, larger calls under load, no added wait under "
        "light load.",
    )
    max_pipeline_call_events: int = Field(
        5_000,
        ge=1,
        description="Most events one merged Process call carries; keep it at or below the "
        "pipeline's max_batch_events. A larger single batch still goes, alone.",
    )
    max_storage_calls: int = Field(
        4,
        ge=1,
        le=1024,
        description="Storage write calls in flight at once. Batches arriving while all are "
        "busy wait, and the next call (WriteMany) carries every waiting batch (up to "
        "max_storage_call_events), each under its own ledger entry; a batch alone goes as "
        "Write.",
    )
    max_storage_call_events: int = Field(
        5_000,
        ge=1,
        description="Most events one merged WriteMany call carries. A larger single batch "
        "still goes, alone.",
    )
    downstream_streams: bool = Field(
        True,
        description="Carry Process calls and storage writes over long-lived streams "
        "(PipelineService.ProcessStream, StorageService.WriteStream), one request at a "
        "time per stream, instead of one unary call each: the same answers for less work "
        "per batch. A service without the stream methods (UNIMPLEMENTED) gets unary calls.",
    )
    downstream_stream_max_age_s: float = Field(
        300.0,
        gt=0,
        description="A downstream stream is closed when it comes back idle after this "
        "long, and a fresh one opened: streams follow connections the services recycle.",
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


class NatsTlsSection(Section):
    ca_file: Path | None = Field(
        None, description="CA bundle that signs the NATS servers' certificates; set it for TLS."
    )
    cert_file: Path | None = Field(None, description="Client certificate (PEM), if required.")
    key_file: Path | None = Field(None, description="Client private key (PEM).")

    @model_validator(mode="after")
    def _pair(self) -> NatsTlsSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.cert_file is not None and self.ca_file is None:
            raise ValueError("ca_file: required with a client certificate")
        return self


class NatsSection(Section):
    """Raw events from NATS JetStream (the original ETL service's events.raw consumer)."""

    enabled: bool = Field(False, description="Consume the subject below from JetStream.")
    required: bool = Field(
        False,
        description="Report ingest NOT_SERVING while the NATS input is disconnected (for a "
        "NATS-only ingest). When false, only the 'edgebot.ingest.nats' health entry reports "
        "it and agent streams keep being served.",
    )
    servers: list[str] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        min_length=1,
        description="NATS server URLs (nats:// or tls://); the client fails over between them.",
    )
    subject: str = Field(
        "events.raw", pattern=r"^[^\s]+$", description="Subject the raw events are published on."
    )
    stream: str = Field(
        "EVENTS_RAW",
        pattern=NATS_NAME,
        description="JetStream stream to create when none holds the subject (an existing "
        "stream holding it is used whatever its name).",
    )
    create_stream: bool = Field(
        True, description="Create the stream when no stream holds the subject."
    )
    stream_max_age_s: float = Field(
        7 * 86_400.0, gt=0, description="Retention of a stream created here."
    )
    durable: str = Field(
        "edgebot-ingest",
        pattern=NATS_NAME,
        description="Durable pull consumer shared by every ingest replica, so they share the "
        "messages: each is delivered to one replica at a time.",
    )
    agent_id: str = Field(
        "nats",
        min_length=1,
        max_length=64,
        description="agent_id the batches are stored under (a NATS publisher is not an "
        "authenticated agent, so a batch's own agent_id is replaced).",
    )
    max_inflight_messages: int = Field(
        256,
        ge=1,
        le=10_000,
        description="Messages this replica processes at once; it fetches no more until some "
        "are acked, nak'ed or terminated.",
    )
    fetch_batch: int = Field(
        64,
        ge=1,
        le=1000,
        description="Most messages asked for per fetch; the messages of one fetch are merged "
        "into as few batches as the ingest batch limits allow (several fetches are in flight "
        "when max_inflight_messages allows).",
    )
    fetch_timeout_s: float = Field(
        1.0, gt=0, le=60, description="How long one fetch waits for messages."
    )
    max_ack_pending: int = Field(
        4096, ge=1, description="Un-acked messages the consumer allows over all replicas."
    )
    ack_wait_s: float = Field(
        30.0,
        ge=1,
        description="Redelivery after this long without an ack; a message still being "
        "processed is kept alive with in-progress signals every third of it.",
    )
    nak_delay_s: float = Field(
        2.0, gt=0, description="Redelivery delay after a downstream failure that suggests none."
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Timeout of one connect attempt.")
    reconnect_wait_s: float = Field(
        2.0,
        gt=0,
        description="Wait between connection attempts (the client retries for ever), and "
        "the first wait after a failed stream or consumer set-up.",
    )
    reconnect_max_s: float = Field(
        30.0,
        gt=0,
        description="Waits after failed set-ups double from reconnect_wait_s up to this.",
    )
    user: str | None = Field(None, description="User name for NATS user/password auth.")
    password_file: Path | None = Field(None, description="File holding that user's password.")
    tls: NatsTlsSection = Field(default_factory=NatsTlsSection, description="NATS TLS.")

    @model_validator(mode="after")
    def _credentials(self) -> NatsSection:
        if (self.user is None) != (self.password_file is None):
            raise ValueError("user and password_file go together")
        return self


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
    nats: NatsSection = Field(
        default_factory=NatsSection, description="Optional NATS JetStream input (off)."
    )
