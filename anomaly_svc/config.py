"""Anomaly service configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from anomaly_svc.agents import BUILT_IN, AgentSettings, validate_settings
from anomaly_svc.console.config import ConsoleSection
from anomaly_svc.notify.settings import NotificationsSection
from anomaly_svc.sources.log_entries import LogEntriesSection
from mesh.config import ClientConfig, Section, ServiceConfig


class StoreSection(Section):
    path: Path = Field(
        Path("edgebot-anomalies.db"), description="SQLite file of the anomaly store."
    )
    default_page_size: int = Field(50, ge=1, description="ListAnomalies page size by default.")
    max_page_size: int = Field(500, ge=1, description="Hard cap on ListAnomalies page size.")


def _storage_default() -> ClientConfig:
    return ClientConfig(addresses=["127.0.0.1:50053"])


class ModelsSection(Section):
    dir: Path = Field(Path("edgebot-models"), description="<dir>/<agent>/<version>/ folders.")
    poll_interval_s: float = Field(5.0, gt=0, description="How often the folder is checked.")


class ResourcesSection(Section):
    max_cpu_percent: float = Field(80.0, gt=0, le=100, description="Defer cycles above this.")
    max_memory_percent: float = Field(70.0, gt=0, le=100, description="Defer cycles above.")
    defer_on_demand: bool = Field(
        False, description="Also defer RunAnalysis calls (scheduled cycles always defer)."
    )


class AlertsSection(Section):
    heartbeat_s: float = Field(15.0, gt=0, description="Default WatchAlerts heartbeat.")
    subscriber_buffer: int = Field(
        1000,
        ge=1,
        description="Alerts queued per watcher; a watcher that falls further "
        "behind is disconnected and resumes from its last alert id.",
    )
    escalate_counts: list[int] = Field(
        default_factory=lambda: [10, 100, 1000],
        description="An anomaly recurring this many times raises an ESCALATED alert.",
    )


class CacheSection(Section):
    ttl_s: float = Field(60.0, ge=0, description="QueryEvents results kept this long; 0 = off.")
    max_entries: int = Field(64, ge=1, description="Windows kept at most (oldest evicted).")


class AnalysisSection(Section):
    page_size: int = Field(1000, ge=1, le=10_000, description="QueryEvents page size.")
    max_events: int = Field(200_000, ge=1, description="Events read per agent and cycle.")


class ExportsSection(Section):
    dir: Path | None = Field(
        None,
        description="Export files (<dir>/<export id>/) and their job registry (exports.db); "
        "default: an 'exports' folder beside store.path.",
    )
    retention_s: float = Field(
        7 * 86_400.0, gt=0, description="A finished export is deleted this long after it ended."
    )
    cleanup_interval_s: float = Field(
        600.0, gt=0, description="How often expired exports are looked for."
    )
    max_concurrent: int = Field(1, ge=1, description="Export jobs running at the same time.")
    max_pending: int = Field(
        16, ge=1, description="Queued jobs at most; CreateExport beyond it is refused."
    )
    default_batch_size: int = Field(
        1000, ge=1, description="Rows per batch when a spec leaves batch_size at 0."
    )
    max_batch_size: int = Field(
        10_000, ge=1, description="Largest batch_size a spec may ask for (bounds memory)."
    )
    min_part_bytes: int = Field(
        4096, ge=1024, description="Smallest max_part_bytes a spec may ask for."
    )
    max_export_bytes: int = Field(
        8 * 1024**3, ge=1024, description="An export that grows past this many bytes fails."
    )
    download_chunk_bytes: int = Field(
        256 * 1024,
        ge=1024,
        le=4 * 1024 * 1024,
        description="Bytes per DownloadExport message (below the gRPC message size limit).",
    )

    @field_validator("max_batch_size")
    @classmethod
    def _covers_default(cls, value: int, info: ValidationInfo) -> int:
        default = info.data.get("default_batch_size")
        if default is not None and value < default:
            raise ValueError(f"must be at least exports.default_batch_size ({default})")
        return value


class AnomalyServiceConfig(ServiceConfig):
    store: StoreSection = Field(default_factory=StoreSection)
    storage: ClientConfig = Field(default_factory=_storage_default)
    agents: list[AgentSettings] = Field(
        default_factory=lambda: [validate_settings({"type": a.type_name}) for a in BUILT_IN],
        description="Agents to run: [{type: wifi, enabled, interval_s, ...thresholds}].",
    )
    models: ModelsSection = Field(default_factory=ModelsSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    alerts: AlertsSection = Field(default_factory=AlertsSection)
    cache: CacheSection = Field(default_factory=CacheSection)
    analysis: AnalysisSection = Field(default_factory=AnalysisSection)
    exports: ExportsSection = Field(default_factory=ExportsSection)
    notifications: NotificationsSection = Field(
        default_factory=NotificationsSection,
        description="E-mail and webhook notifications of alerts: channels and rules.",
    )
    console: ConsoleSection = Field(
        default_factory=ConsoleSection, description="The operator web console (off by default)."
    )
    log_entries: LogEntriesSection = Field(
        default_factory=LogEntriesSection,
        description="Also (or only) analyse an existing syslog-ng log_entries table.",
    )

    @property
    def exports_dir(self) -> Path:
        return self.exports.dir or self.store.path.parent / "exports"

    @field_validator("agents", mode="before")
    @classmethod
    def _agent_settings(cls, value: Any) -> list[AgentSettings]:
        if not isinstance(value, list):
            raise ValueError("must be a list of {type: ..., ...} entries")
        agents = []
        for position, entry in enumerate(value):
            if isinstance(entry, AgentSettings):
                agents.append(entry)
                continue
            if not isinstance(entry, dict):
                raise ValueError(f"[{position}]: must be a mapping with a 'type'")
            try:
                agents.append(validate_settings(entry))
            except ValueError as exc:
                raise ValueError(f"[{position}] ({entry.get('type')}): {exc}") from None
        names = [a.name or a.type for a in agents]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"agent names must be unique; repeated: {', '.join(duplicates)}")
        return agents
