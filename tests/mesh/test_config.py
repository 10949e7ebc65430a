"""Configuration: YAML + EDGEBOT_* overrides, and start-up failures that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import AgentConfig
from ingest_svc.config import IngestSection, IngestServiceConfig
from mesh.config import ConfigError, ServerConfig, ServiceConfig, load_config
from pipeline_svc.config import PipelineServiceConfig
from pipeline_svc.pipeline import Pipeline
from storage_svc import StorageServiceConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_need_no_file() -> None:
    config = load_config(IngestServiceConfig, None, "ingest", environ={})
    assert config.tls.enabled is True
    assert config.pipeline.addresses == ["127.0.0.1:50052"]
    assert config.ingest.max_unacked_batches == 8


def test_yaml_values_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 6000\ningest:\n  max_unacked_batches: 3\n")
    config = load_config(IngestServiceConfig, path, "ingest", environ={})
    assert config.server.port == 6000
    assert config.ingest.max_unacked_batches == 3


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: not-a-port\n")
    with pytest.raises(ConfigError, match=r"server\.port: .*integer.*'not-a-port'"):
        load_config(ServiceConfig, path, "pipeline", environ={})


def test_out_of_range_value_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "ingest:\n  max_unacked_batches: 0\n")
    with pytest.raises(ConfigError, match=r"ingest\.max_unacked_batches: .*greater than"):
        load_config(IngestServiceConfig, path, "ingest", environ={})


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  prot: 6000\n")
    with pytest.raises(ConfigError, match=r"server\.prot: unknown key"):
        load_config(ServiceConfig, path, "pipeline", environ={})


def test_env_overrides_file_and_service_prefix_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 6000\n")
    environ = {
        "EDGEBOT_SERVER__PORT": "7000",
        "EDGEBOT_INGEST_SERVER__PORT": "7001",
        "EDGEBOT_INGEST_PIPELINE__ADDRESSES": '["10.0.0.1:1", "10.0.0.2:1"]',
        "EDGEBOT_STORAGE__ADDRESSES": '["10.0.0.9:1"]',
        "EDGEBOT_UNRELATED": "ignored",
    }
    config = load_config(IngestServiceConfig, path, "ingest", environ=environ)
    assert config.server.port == 7001
    assert config.pipeline.addresses == ["10.0.0.1:1", "10.0.0.2:1"]
    other = load_config(ServiceConfig, path, "storage", environ=environ)
    assert other.server.port == 7000
    # A service-specific section is reached only through the service's own prefix.
    assert config.storage.addresses == ["127.0.0.1:50053"]


def test_bad_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"tls\.enabled: .*'perhaps'"):
        load_config(ServiceConfig, None, "storage", environ={"EDGEBOT_TLS__ENABLED": "perhaps"})


def test_unknown_processor_type_names_its_position() -> None:
    config = PipelineServiceConfig.model_validate(
        {"pipeline": {"processors": [{"type": "severity_map"}, {"type": "nope"}]}}
    )
    with pytest.raises(ConfigError, match=r"pipeline\.processors\.1\.type: unknown processor"):
        Pipeline.from_config(config.pipeline)


def test_bad_processor_setting_names_the_field() -> None:
    config = PipelineServiceConfig.model_validate(
        {"pipeline": {"processors": [{"type": "timestamp_normalize", "timezone": "Mars/Base"}]}}
    )
    with pytest.raises(ConfigError, match=r"pipeline\.processors\.0\.timezone: .*Mars/Base"):
        Pipeline.from_config(config.pipeline)


def test_missing_certificate_file_names_the_key(tmp_path: Path) -> None:
    config = ServiceConfig.model_validate(
        {"tls": {"ca_file": str(tmp_path / "nope.crt"), "cert_file": "x", "key_file": "y"}}
    )
    with pytest.raises(ConfigError, match=r"tls\.ca_file: file not found"):
        config.tls.require_files("tls")


@pytest.mark.parametrize("module", ["pipeline_svc", "ingest_svc", "anomaly_svc"])
def test_service_refuses_to_start_with_a_bad_value(tmp_path: Path, module: str) -> None:
    path = write(tmp_path, "server:\n  grace_period_s: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", module, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "server.grace_period_s" in result.stderr
    assert "greater than or equal to 0" in result.stderr


def test_errors_never_repeat_secrets_or_url_credentials(tmp_path: Path) -> None:
    agent = write(
        tmp_path,
        "inputs:\n  http:\n    - name: weather\n"
        "      url: ftp://user:hunter2pass@api.example/v1?api_key=k3yk3yk3y\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(AgentConfig, agent, "agent", environ={})
    message = str(caught.value)
    assert "inputs.http.0.url" in message
    assert "ftp://user:***@api.example/v1?***" in message
    assert "hunter2pass" not in message
    assert "k3yk3yk3y" not in message

    storage = write(tmp_path, "postgres:\n  dsn: {url: 'postgresql://edgebot:s3cr3tpw@db/e'}\n")
    with pytest.raises(ConfigError, match=r"postgres\.dsn: .*valid string") as caught:
        load_config(StorageServiceConfig, storage, "storage", environ={})
    assert "s3cr3tpw" not in str(caught.value)


def test_every_server_and_ingest_limit_is_a_documented_key() -> None:
    for model in (ServerConfig, IngestSection):
        undocumented = [name for name, f in model.model_fields.items() if not f.description]
        assert undocumented == [], model.__name__
    limits = {
        "max_message_bytes",
        "max_concurrent_streams",
        "max_connections",
        "handshake_timeout_s",
        "max_connection_idle_s",
    }
    assert limits <= set(ServerConfig.model_fields)
    ingest_limits = {"max_streams", "max_streams_per_caller", "hello_timeout_s"}
    assert ingest_limits | {"stream_idle_timeout_s", "max_raw_bytes"} <= set(
        IngestSection.model_fields
    )
