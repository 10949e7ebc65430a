"""The ``console`` section of the anomaly service's configuration."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from mesh.config import Section, TlsConfig


class ConsoleTlsSection(Section):
    cert_file: Path | None = Field(
        None, description="Serve the console over HTTPS with this certificate (PEM)."
    )
    key_file: Path | None = Field(None, description="Private key of cert_file (PEM).")
    client_ca_file: Path | None = Field(
        None,
        description="Ask browsers for a client certificate signed by this CA; an operator "
        "certificate (spiffe://edgebot/operator/<name>) logs in without a token.",
    )

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _pairs(self) -> ConsoleTlsSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file (HTTPS)")
        return self


class ConsoleClientSection(Section):
    """How the console calls the mesh: as an operator, like any other client."""

    tls: TlsConfig | None = Field(
        None,
        description="TLS of the console's gRPC calls, e.g. an operator certificate; "
        "default: the service's own tls section.",
    )
    token_file: Path | None = Field(
        None,
        description="File whose first line is an operator bearer token (one of the services' "
        "auth.operator_tokens_file lines), sent on every call.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Deadline of each unary call.")


def _default_services() -> dict[str, list[str]]:
    return {
        "ingest": ["127.0.0.1:50051"],
        "pipeline": ["127.0.0.1:50052"],
        "storage": ["127.0.0.1:50053"],
    }


class MetricsTarget(Section):
    name: str = Field(..., min_length=1, description="Shown in charts, e.g. the agent id.")
    kind: str = Field(
        ...,
        pattern="^(ingest|agent)$",
        description="ingest (ingest rate, ack latency) or agent (spool depth).",
    )
    url: str = Field(
        ...,
        pattern="^https?://",
        description="Prometheus exposition URL, e.g. http://127.0.0.1:50251/metrics.",
    )


class MonitoringSection(Section):
    sample_interval_s: float = Field(5.0, gt=0, description="How often charts get a point.")
    history_points: int = Field(360, ge=2, le=100_000, description="Points kept per series.")
    scrape_timeout_s: float = Field(2.0, gt=0, description="Deadline of a metrics scrape.")
    metrics: list[MetricsTarget] = Field(
        default_factory=list,
        description="Prometheus endpoints read for ingest rate, ack latency and spool depth.",
    )
    anomaly_bucket_s: float = Field(
        3600.0, ge=1, description="Width of one bar of the anomalies-over-time chart."
    )
    anomaly_buckets: int = Field(24, ge=1, le=1000, description="Bars of that chart.")
    max_anomalies: int = Field(
        5000, ge=1, description="Anomalies read for the chart at most (newest first)."
    )


class ConsoleSection(Section):
    enabled: bool = Field(False, description="Serve the operator web console.")
    host: str = Field("127.0.0.1", description="Address the console's HTTP server binds to.")
    port: int = Field(8480, ge=0, le=65535, description="Console HTTP port; 0 picks one.")
    tokens_file: Path | None = Field(
        None,
        description="Operator login tokens, one per line as 'name:token' (or a bare token, "
        "shown as operator-<n>); compared in constant time.",
    )
    session_ttl_s: float = Field(8 * 3600.0, gt=0, description="A login lasts this long.")
    max_sessions: int = Field(1000, ge=1, description="Open sessions; the oldest is dropped.")
    login_failures_per_minute: int = Field(
        10, ge=1, description="Failed logins allowed per client address per minute."
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Other origins that may call the API (CORS); none by default, never '*'.",
    )
    tls: ConsoleTlsSection = Field(default_factory=ConsoleTlsSection)
    client: ConsoleClientSection = Field(default_factory=ConsoleClientSection)
    anomaly_address: str | None = Field(
        None, description="AnomalyService address; default: this process's own gRPC port."
    )
    storage_addresses: list[str] | None = Field(
        None, description="StorageService addresses; default: the storage section's."
    )
    services: dict[str, list[str]] = Field(
        default_factory=_default_services,
        description="Services whose gRPC health the Monitoring page shows: name -> addresses "
        "(the anomaly service and storage are always included).",
    )
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)
    context_window_s: float = Field(
        300.0, ge=0, description="Events shown this long before and after an anomaly."
    )
    context_max_events: int = Field(200, ge=1, le=1000, description="Events around an anomaly.")
    events_page_size: int = Field(100, ge=1, le=1000, description="Events per search page.")
    anomalies_page_size: int = Field(50, ge=1, le=500, description="Anomalies per page.")
    sse_heartbeat_s: float = Field(15.0, gt=0, description="Idle live streams get a ping.")
    sse_retry_ms: int = Field(2000, ge=100, description="Browser reconnect delay of live views.")
    max_live_streams: int = Field(64, ge=1, description="Open live streams (alerts, tails).")
    download_chunk_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest piece of an export download written at once."
    )

    @model_validator(mode="after")
    def _login_possible(self) -> ConsoleSection:
        if self.enabled and self.tokens_file is None and self.tls.client_ca_file is None:
            raise ValueError(
                "tokens_file: required when the console is enabled "
                "(or tls.client_ca_file for certificate logins)"
            )
        if "*" in self.allowed_origins:
            raise ValueError("allowed_origins: '*' is not allowed; list the origins")
        return self
