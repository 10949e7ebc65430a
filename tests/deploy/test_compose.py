"""compose.yaml: accepted by docker-compose, and every service's settings are valid config."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgebot.config_check import CONFIG_CLASSES
from edgebot.layout import MODULES
from mesh.config import ServiceConfig, load_config
from storage_svc import StorageServiceConfig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
EDGEBOT_SERVICES = ("storage", "pipeline", "ingest", "anomaly", "agent")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_docker_compose_accepts_the_file() -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is a test peer: scripts/ensure_peers.sh installs it"
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("service", EDGEBOT_SERVICES)
def test_service_environment_is_a_valid_configuration(service: str) -> None:
    spec = compose()["services"][service]
    environment = {key: str(value) for key, value in spec["environment"].items()}
    package, class_name = CONFIG_CLASSES[service]
    model = getattr(__import__(package), class_name)
    config: ServiceConfig = load_config(model, None, service, environ=environment)
    assert spec["command"] == [MODULES[service]]
    assert config.server.host == "0.0.0.0"
    assert config.tls.enabled
    probe = spec["healthcheck"]["test"]
    assert probe[-1] == f"127.0.0.1:{config.server.health_port}"


def test_prometheus_scrapes_every_metrics_port() -> None:
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = set(scrape["scrape_configs"][0]["static_configs"][0]["targets"])
    services = compose()["services"]
    expected = {
        f"{name}:{services[name]['environment']['EDGEBOT_SERVER__METRICS_PORT']}"
        for name in EDGEBOT_SERVICES
    }
    assert targets == expected


def test_storage_writes_to_timescaledb_and_fans_out_to_loki_and_nats() -> None:
    services = compose()["services"]
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert services["loki"]["image"].startswith("grafana/loki:")
    assert "-js" in services["nats"]["command"]
    storage = services["storage"]
    environment = {key: str(value) for key, value in storage["environment"].items()}
    config = load_config(StorageServiceConfig, None, "storage", environ=environment)
    assert config.storage.primary == "postgres"
    assert "@timescaledb:5432/" in config.postgres.dsn
    kinds = {sink.type: sink for sink in config.sinks}
    assert set(kinds) == {"loki", "nats", "entities"}
    assert kinds["loki"].url == "http://loki:3100"  # type: ignore[union-attr]
    assert kinds["nats"].servers == ["nats://nats:4222"]  # type: ignore[union-attr]
    assert storage["depends_on"]["timescaledb"]["condition"] == "service_healthy"
