"""Secondary sinks by type: one factory per ``sinks[].type``."""

from __future__ import annotations

from storage_svc.config import StorageServiceConfig
from storage_svc.sinks.base import SecondarySink
from storage_svc.sinks.jsonl import JsonlFileSink
from storage_svc.sinks_config import FileSinkSection, SinkSection


def secondary_sink(section: SinkSection, config: StorageServiceConfig) -> SecondarySink:
    """The sink ``section`` configures (``config`` for sinks that use the primary's store)."""
    if isinstance(section, FileSinkSection):
        return JsonlFileSink(section)
    raise NotImplementedError(f"sinks: type {section.type!r} has no factory")
