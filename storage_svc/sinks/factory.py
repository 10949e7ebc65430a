"""Secondary sinks by type: one factory per ``sinks[].type``."""

from __future__ import annotations

from typing import assert_never

from storage_svc.config import StorageServiceConfig
from storage_svc.entities import EntityStore
from storage_svc.sinks.base import SecondarySink
from storage_svc.sinks.entities import EntitySink
from storage_svc.sinks.jsonl import JsonlFileSink
from storage_svc.sinks.loki import LokiSink
from storage_svc.sinks.nats import NatsSink
from storage_svc.sinks.postgres_entities import PostgresEntityStore
from storage_svc.sinks.sqlite_entities import SqliteEntityStore
from storage_svc.sinks_config import (
    EntitiesSinkSection,
    FileSinkSection,
    LokiSinkSection,
    NatsSinkSection,
    SinkSection,
)


def secondary_sink(section: SinkSection, config: StorageServiceConfig) -> SecondarySink:
    """The sink ``section`` configures (``config`` for sinks that use the primary's store)."""
    match section:
        case FileSinkSection():
            return JsonlFileSink(section)
        case LokiSinkSection():
            return LokiSink(section)
        case NatsSinkSection():
            return NatsSink(section)
        case EntitiesSinkSection():
            return EntitySink(section, entity_store(config))
    assert_never(section)


def entity_store(config: StorageServiceConfig) -> EntityStore:
    """The graph's tables live in the primary's database."""
    if config.storage.primary == "postgres":
        return PostgresEntityStore(config.postgres)
    return SqliteEntityStore(config.sqlite)
