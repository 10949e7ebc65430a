"""Storage configuration: which primary sink, its database file, query and tail limits,
the secondary sinks and the outbox that feeds them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mesh.config import Section, ServiceConfig
from storage_svc.sinks_config import EntitiesSinkSection, SinkSection


class StorageSection(Section):
    primary: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        description="The primary sink: the ack to the edge means this sink committed. "
        "'sqlite' (embedded, the default) or 'postgres' (the postgres section).",
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


class PostgresSection(Section):
    dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/edgebot",
        description="libpq connection URI of the database. A password in it is never logged; "
        "prefer a password file (PGPASSFILE) or EDGEBOT_STORAGE_POSTGRES__DSN.",
    )
    schema_name: str = Field(
        "public",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Schema that holds EdgeBot's tables (created if missing); several "
        "EdgeBot installations can share one database in different schemas.",
    )
    pool_min_size: int = Field(1, ge=0, description="Connections kept open in the pool.")
    pool_max_size: int = Field(8, ge=1, description="Most connections the pool opens.")
    max_concurrent_writes: int = Field(
        2,
        ge=1,
        description="Write transactions in flight at once (at most pool_max_size). Batches "
        "arriving while all are busy wait and are committed together, each under its own "
        "ledger entry, in the next transaction (group commit).",
    )
    max_group_events: int = Field(
        20_000,
        ge=1,
        description="Most events one group-commit transaction carries; a larger single "
        "batch still goes, alone.",
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="How long opening one connection may take."
    )
    command_timeout_s: float = Field(
        30.0, gt=0, description="Client-side limit on one statement; the write then fails."
    )
    statement_timeout_ms: int = Field(
        30_000, ge=0, description="Server-side statement_timeout of every session (0: none)."
    )
    gin_pending_list_limit_kb: int = Field(
        64,
        ge=64,
        le=2_097_151,
        description="gin_pending_list_limit of every storage session: the pending list of "
        "the GIN indexes (attributes, tags) that an insert merges into the index once it "
        "is this full. PostgreSQL's 4,096 makes one commit in every ~50,000 events do a "
        "merge of ~100 ms while it holds the seq lock, stalling every writer; 64 (the "
        "least) spreads that work as merges of a few ms.",
    )
    retention_days: int | None = Field(
        None,
        ge=1,
        description="Drop whole day partitions (TimescaleDB: chunks) older than this many "
        "days; null keeps everything.",
    )
    partitions_ahead_days: int = Field(
        2, ge=0, description="Day partitions created ahead of today (and yesterday's)."
    )
    maintenance_interval_s: float = Field(
        3600.0,
        gt=0,
        description="How often partitions ahead are created and retention is applied.",
    )
    tail_poll_interval_s: float = Field(
        0.5,
        gt=0,
        description="How often TailEvents looks for events written through other replicas "
        "when no notification woke it sooner.",
    )

    @field_validator("pool_max_size")
    @classmethod
    def _at_least_min(cls, value: int, info: ValidationInfo) -> int:
        smallest = info.data.get("pool_min_size")
        if smallest is not None and value < smallest:
            raise ValueError(f"must not be below postgres.pool_min_size ({smallest})")
        return value

    @model_validator(mode="after")
    def _pool_holds_the_writes(self) -> PostgresSection:
        if self.max_concurrent_writes > self.pool_max_size:
            raise ValueError(
                f"max_concurrent_writes ({self.max_concurrent_writes}) must not exceed "
                f"pool_max_size ({self.pool_max_size})"
            )
        return self


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


class OutboxSection(Section):
    path: Path = Field(
        Path("edgebot-outbox.db"),
        description="SQLite file of the durable outbox that feeds the secondary sinks; "
        "opened only when a secondary sink is enabled.",
    )
    max_events: int = Field(
        1_000_000,
        ge=1,
        description="Most events the outbox holds. When a commit would exceed it, the "
        "oldest events are dropped for the sinks that have not taken them yet (counted in "
        'edgebot_outbox_dropped_total{sink,reason="full"}); the primary and the ack are '
        "never affected.",
    )
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "FULL",
        description="SQLite synchronous mode of the outbox. FULL: an acknowledged batch "
        "reaches the secondaries after a power loss too; NORMAL: after a process crash.",
    )
    busy_timeout_ms: int = Field(
        5000, ge=0, description="How long an outbox statement waits for a lock."
    )
    poll_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often an idle sink worker looks at the outbox when no commit "
        "woke it sooner.",
    )
    stats_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the outbox depth and lag gauges and the per-sink health "
        "entries are refreshed.",
    )
    recovery_batch_events: int = Field(
        10_000,
        ge=1,
        description="At open, batches whose outbox commit did not happen (a crash between "
        "the primary's commit and the outbox's) are read back from the primary; at most "
        "this many events per batch.",
    )


class StorageServiceConfig(ServiceConfig):
    storage: StorageSection = Field(default_factory=StorageSection)
    sqlite: SqliteSection = Field(default_factory=SqliteSection)
    postgres: PostgresSection = Field(default_factory=PostgresSection)
    query: QuerySection = Field(default_factory=QuerySection)
    tail: TailSection = Field(default_factory=TailSection)
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    sinks: list[SinkSection] = Field(
        default_factory=list,
        description="Secondary sinks (loki, nats, file, entities), fed through the outbox "
        "after the primary committed. Default: none (the primary only).",
    )

    @field_validator("sinks")
    @classmethod
    def _unique_sink_names(cls, sinks: list[SinkSection]) -> list[SinkSection]:
        seen: dict[str, int] = {}
        for index, sink in enumerate(sinks):
            if sink.name in ("sqlite", "postgres"):
                raise ValueError(f"sinks.{index}.name: {sink.name!r} is a primary sink's name")
            if sink.name in seen:
                raise ValueError(
                    f"sinks.{index}.name: {sink.name!r} is already the name of "
                    f"sinks.{seen[sink.name]}"
                )
            seen[sink.name] = index
        graphs = [i for i, sink in enumerate(sinks) if sink.type == "entities" and sink.enabled]
        if len(graphs) > 1:
            raise ValueError(
                f"sinks.{graphs[1]}: only one entities sink (the graph lives in the primary "
                f"store, and sinks.{graphs[0]} already keeps it)"
            )
        return sinks

    @property
    def entity_graph(self) -> EntitiesSinkSection | None:
        """The enabled entities sink, if any (QueryEntities needs one)."""
        for sink in self.secondary_sinks:
            if isinstance(sink, EntitiesSinkSection):
                return sink
        return None

    @property
    def secondary_sinks(self) -> list[SinkSection]:
        return [sink for sink in self.sinks if sink.enabled]
