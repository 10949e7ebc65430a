"""Where `edgebot up` puts things: ports, certificates, data, configs and logs.

The state directory holds everything a local mesh needs; a second `edgebot up` reuses its
certificates, databases and spool.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ORDER = ("storage", "pipeline", "ingest", "anomaly", "agent")
MODULES = {
    "storage": "storage_svc",
    "pipeline": "pipeline_svc",
    "ingest": "ingest_svc",
    "anomaly": "anomaly_svc",
    "agent": "edge_agent",
}
GRPC_SERVICES = {
    "storage": "edgebot.v1.StorageService",
    "pipeline": "edgebot.v1.PipelineService",
    "ingest": "edgebot.v1.IngestService",
    "anomaly": "edgebot.v1.AnomalyService",
    "agent": "",
}
DEFAULT_PORT_BASE = 50050
DEFAULT_SYSLOG_PORT = 5514
DEFAULT_AGENT_ID = "local"
OPERATOR = "admin"
ENDPOINTS_FILE = "endpoints.json"


@dataclass(frozen=True)
class Ports:
    grpc: int
    health: int
    metrics: int


def ports_for(service: str, base: int) -> Ports:
    """ingest base+1, pipeline +2, storage +3, anomaly +4, agent +5; health +100, metrics +200."""
    offset = ("ingest", "pipeline", "storage", "anomaly", "agent").index(service) + 1
    return Ports(base + offset, base + 100 + offset, base + 200 + offset)


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def configs(self) -> Path:
        return self.root / "config"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def console_tokens(self) -> Path:
        return self.root / "console-tokens"

    def config_file(self, service: str) -> Path:
        return self.configs / f"{service}.yaml"

    def tls(self, stem: str) -> dict[str, Any]:
        return {
            "enabled": True,
            "ca_file": str(self.certs / "ca.crt"),
            "cert_file": str(self.certs / f"{stem}.crt"),
            "key_file": str(self.certs / f"{stem}.key"),
        }

    def create(self) -> None:
        for directory in (self.certs, self.data, self.configs, self.logs):
            directory.mkdir(parents=True, exist_ok=True)


def console_port(base: int) -> int:
    """The anomaly service's web console: base+6 (50056 by default)."""
    return base + 6


def service_configs(
    state: StateDir, base: int, syslog_port: int, agent_id: str
) -> dict[str, dict[str, Any]]:
    """The YAML configuration of each process of the local mesh."""
    host = "127.0.0.1"

    def common(service: str, cert_stem: str) -> dict[str, Any]:
        ports = ports_for(service, base)
        return {
            "server": {
                "host": host,
                "port": ports.grpc,
                "health_port": ports.health,
                "metrics_port": ports.metrics,
            },
            "tls": state.tls(cert_stem),
            "logging": {"format": "json"},
        }

    def address(service: str) -> list[str]:
        return [f"{host}:{ports_for(service, base).grpc}"]

    return {
        "storage": common("storage", "storage")
        | {
            "sqlite": {"path": str(state.data / "events.db")},
            "outbox": {"path": str(state.data / "outbox.db")},
        },
        "pipeline": common("pipeline", "pipeline"),
        "ingest": common("ingest", "ingest")
        | {
            "pipeline": {"addresses": address("pipeline")},
            "storage": {"addresses": address("storage")},
        },
        "anomaly": common("anomaly", "anomaly")
        | {
            "store": {"path": str(state.data / "anomalies.db")},
            "storage": {"addresses": address("storage")},
            "models": {"dir": str(state.data / "models")},
            "exports": {"dir": str(state.data / "exports")},
            "console": _console(state, base, address),
        },
        "agent": common("agent", f"agent-{agent_id}")
        | {
            "agent": {"id": agent_id},
            "inputs": {"syslog_udp": {"enabled": True, "host": host, "port": syslog_port}},
            "spool": {"path": str(state.data / "spool.db")},
            "shipper": {"ingest": {"addresses": address("ingest")}},
        },
    }


def _console(state: StateDir, base: int, address: Callable[[str], list[str]]) -> dict[str, Any]:
    """The console on 127.0.0.1, logged into with the state directory's token file, calling
    the mesh with the operator certificate."""

    def metrics_url(service: str) -> str:
        return f"http://127.0.0.1:{ports_for(service, base).metrics}/metrics"

    return {
        "enabled": True,
        "host": "127.0.0.1",
        "port": console_port(base),
        "tokens_file": str(state.console_tokens),
        "client": {"tls": state.tls(f"operator-{OPERATOR}")},
        "services": {name: address(name) for name in ("ingest", "pipeline", "storage")},
        "monitoring": {
            "metrics": [
                {"name": "ingest", "kind": "ingest", "url": metrics_url("ingest")},
                {"name": "agent", "kind": "agent", "url": metrics_url("agent")},
            ]
        },
    }


def ensure_console_token(state: StateDir) -> str:
    """The console's login token, made once (readable by its owner only) and kept."""
    path = state.console_tokens
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(f"{OPERATOR}:{secrets.token_urlsafe(24)}\n")
    return path.read_text().strip().partition(":")[2]


def write_configs(state: StateDir, configs: dict[str, dict[str, Any]]) -> None:
    for service, config in configs.items():
        state.config_file(service).write_text(yaml.safe_dump(config, sort_keys=False))


def write_endpoints(state: StateDir, base: int, syslog_port: int) -> dict[str, Any]:
    endpoints: dict[str, Any] = {
        "services": {
            service: {
                "address": f"127.0.0.1:{ports_for(service, base).grpc}",
                "health_address": f"127.0.0.1:{ports_for(service, base).health}",
                "metrics_url": f"http://127.0.0.1:{ports_for(service, base).metrics}/metrics",
                "grpc_service": GRPC_SERVICES[service],
            }
            for service in SERVICE_ORDER
        },
        "syslog_udp": f"127.0.0.1:{syslog_port}",
        "operator_tls": state.tls(f"operator-{OPERATOR}"),
    }
    (state.root / ENDPOINTS_FILE).write_text(json.dumps(endpoints, indent=2))
    return endpoints


def read_endpoints(state_dir: Path) -> dict[str, Any]:
    path = state_dir / ENDPOINTS_FILE
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(
            f"edgebot: {path} not found; start the mesh with `edgebot up --state-dir "
            f"{state_dir}` or pass the address and certificates explicitly"
        ) from None
    return loaded
