"""Anomaly service configuration."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mesh.config import Section, ServiceConfig


class StoreSection(Section):
    path: Path = Field(
        Path("edgebot-anomalies.db"), description="SQLite file of the anomaly store."
    )
    default_page_size: int = Field(50, ge=1, description="ListAnomalies page size by default.")
    max_page_size: int = Field(500, ge=1, description="Hard cap on ListAnomalies page size.")


class AnomalyServiceConfig(ServiceConfig):
    store: StoreSection = Field(default_factory=StoreSection)
