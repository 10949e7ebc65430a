"""The original services' environment variables as deprecated aliases of EdgeBot settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from edgebot.config_check import CONFIG_CLASSES
from mesh.config import ConfigError, ServiceConfig, load_config
from mesh.env_aliases import ALIASES, SetProcessorField, Unmapped, replace_dsn_part
from pipeline_svc import PipelineServiceConfig
from pipeline_svc.pipeline import Pipeline
from pipeline_svc.processors.llm import LlmEnrichment
from storage_svc import StorageServiceConfig

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/edgebot"


def storage(environ: dict[str, str], path: Path | None = None) -> StorageServiceConfig:
    return load_config(StorageServiceConfig, path, "storage", environ=environ)


def pipeline(environ: dict[str, str], path: Path | None = None) -> PipelineServiceConfig:
    return load_config(PipelineServiceConfig, path, "pipeline", environ=environ)


def processors(config: PipelineServiceConfig) -> list[tuple[str, dict[str, Any]]]:
    return [(p.type, p.settings()) for p in config.pipeline.processors]


def test_mothership_db_dsn_makes_postgres_the_primary() -> None:
    config = storage({"MOTHERSHIP_DB_DSN": "postgresql://ms:pw@db:5433/mothership"})
    assert config.storage.primary == "postgres"
    assert config.postgres.dsn == "postgresql://ms:pw@db:5433/mothership"
    assert config.env_notices == [
        "MOTHERSHIP_DB_DSN is deprecated: it sets storage postgres.dsn, storage.primary; use "
        "EDGEBOT_STORAGE_POSTGRES__DSN and EDGEBOT_STORAGE_STORAGE__PRIMARY=postgres instead"
    ]


def test_tsdb_enabled_false_keeps_the_embedded_primary_and_later_rows_win() -> None:
    config = storage({"MOTHERSHIP_DB_DSN": "postgresql://db/ms", "TSDB_ENABLED": "false"})
    assert config.storage.primary == "sqlite"
    assert storage({"TSDB_ENABLED": "on"}).storage.primary == "postgres"


@pytest.mark.parametrize("prefix", ["TSDB", "PG"])
def test_tsdb_and_pg_parts_edit_the_storage_dsn(prefix: str) -> None:
    database = "TSDB_DATABASE" if prefix == "TSDB" else "PG_DB"
    user = "TSDB_USERNAME" if prefix == "TSDB" else "PG_USER"
    config = storage(
        {
            f"{prefix}_HOST": "tsdb.internal",
            f"{prefix}_PORT": "6432",
            database: "aegisflux",
            user: "etl",
            f"{prefix}_PASSWORD": "p@ss word",
        }
    )
    assert config.postgres.dsn == "postgresql://etl:p%40ss%20word@tsdb.internal:6432/aegisflux"
    assert config.storage.primary == "sqlite"
    assert len(config.env_notices) == 5
    assert all("use EDGEBOT_STORAGE_POSTGRES__DSN" in n for n in config.env_notices)


def test_dsn_parts_keep_the_rest_of_the_file_dsn(tmp_path: Path) -> None:
    path = tmp_path / "storage.yaml"
    path.write_text("postgres:\n  dsn: postgresql://u:secret@old:5432/db?sslmode=require\n")
    config = storage({"TSDB_HOST": "new"}, path)
    assert config.postgres.dsn == "postgresql://u:secret@new:5432/db?sslmode=require"


def test_replace_dsn_part_handles_ipv6_and_a_missing_port() -> None:
    assert (
        replace_dsn_part(DEFAULT_DSN, "host", "::1") == "postgresql://postgres@[::1]:5432/edgebot"
    )
    assert replace_dsn_part("postgresql://db/x", "user", "me") == "postgresql://me@db/x"


def test_edgebot_variable_wins_and_the_notice_says_so() -> None:
    config = storage(
        {
            "PG_HOST": "old-host",
            "EDGEBOT_STORAGE_POSTGRES__DSN": "postgresql://new-host/edgebot",
        }
    )
    assert config.postgres.dsn == "postgresql://new-host/edgebot"
    assert config.env_notices == [
        "PG_HOST is deprecated and ignored: EDGEBOT_STORAGE_POSTGRES__DSN (a whole URI) is set "
        "and wins; remove the old variable"
    ]
    both = storage(
        {
            "MOTHERSHIP_DB_DSN": "postgresql://db/ms",
            "EDGEBOT_STORAGE_STORAGE__PRIMARY": "sqlite",
        }
    )
    assert both.storage.primary == "sqlite"
    assert both.postgres.dsn == "postgresql://db/ms"
    assert "storage.primary comes from the EDGEBOT_* variable" in both.env_notices[0]


@pytest.mark.parametrize("service", ["ingest", "pipeline", "storage", "anomaly"])
def test_mothership_log_level_reaches_every_mothership_service(service: str) -> None:
    package, class_name = CONFIG_CLASSES[service]
    model = getattr(__import__(package), class_name)
    config = load_config(model, None, service, environ={"MOTHERSHIP_LOG_LEVEL": "warn"})
    assert config.logging.level == "WARNING"
    assert config.env_notices == [
        f"MOTHERSHIP_LOG_LEVEL is deprecated: it sets {service} logging.level; use "
        "EDGEBOT_LOGGING__LEVEL instead"
    ]
    winner = load_config(
        model,
        None,
        service,
        environ={"MOTHERSHIP_LOG_LEVEL": "DEBUG", "EDGEBOT_LOGGING__LEVEL": "ERROR"},
    )
    assert winner.logging.level == "ERROR"


def test_aliases_do_not_reach_other_services() -> None:
    from edge_agent.config import AgentConfig
    from ingest_svc import IngestServiceConfig

    environ = {"MOTHERSHIP_DB_DSN": "postgresql://db/ms", "MOTHERSHIP_LOG_LEVEL": "DEBUG"}
    ingest = load_config(IngestServiceConfig, None, "ingest", environ=environ)
    assert ingest.env_notices == [n for n in ingest.env_notices if "MOTHERSHIP_LOG_LEVEL" in n]
    agent = load_config(AgentConfig, None, "agent", environ=environ)
    assert agent.logging.level == "INFO"
    assert agent.env_notices == []


def test_nats_url_sets_the_ingest_nats_servers_without_enabling_the_input() -> None:
    from ingest_svc import IngestServiceConfig

    environ = {"NATS_URL": "nats://nats-1:4222, nats://nats-2:4222"}
    config = load_config(IngestServiceConfig, None, "ingest", environ=environ)
    assert config.nats.servers == ["nats://nats-1:4222", "nats://nats-2:4222"]
    assert config.nats.enabled is False
    assert config.env_notices == [
        "NATS_URL is deprecated: it sets ingest nats.servers; use EDGEBOT_INGEST_NATS__SERVERS "
        "instead"
    ]


def test_af_env_and_fake_rdns_add_enrichment_before_quality_validation() -> None:
    config = pipeline({"AF_ENV": "prod", "AF_FAKE_RDNS": "true"})
    listed = processors(config)
    assert listed[-3:] == [
        ("site_environment", {"environment": "prod"}),
        ("reverse_dns", {"mode": "fake"}),
        ("quality_validation", {}),
    ]
    Pipeline.from_config(config.pipeline)  # the order is one the loader accepts


def test_af_fake_rdns_false_adds_nothing_and_turns_a_configured_one_real(tmp_path: Path) -> None:
    assert processors(pipeline({"AF_FAKE_RDNS": "false"})) == processors(pipeline({}))
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "pipeline:\n  processors:\n    - {type: drop_fields}\n"
        "    - {type: reverse_dns, mode: fake, timeout_s: 0.5}\n"
    )
    assert processors(pipeline({"AF_FAKE_RDNS": "0"}, path))[1] == (
        "reverse_dns",
        {"mode": "real", "timeout_s": 0.5},
    )


def llm_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "pipeline:\n  processors:\n    - {type: drop_fields}\n    - {type: mask_patterns}\n"
        "    - {type: llm_enrichment, enabled: false, base_url: 'http://127.0.0.1:9/v1', "
        f"model: small{extra}}}\n"
    )
    return path


def test_llm_enabled_and_api_key_reach_the_llm_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOTHERSHIP_LLM_API_KEY", "sk-from-the-old-env")
    environ = {"MOTHERSHIP_LLM_ENABLED": "true", "MOTHERSHIP_LLM_API_KEY": "sk-from-the-old-env"}
    config = pipeline(environ, llm_file(tmp_path))
    stage = config.pipeline.processors[2]
    assert stage.enabled is True
    assert stage.settings()["api_key_env"] == "MOTHERSHIP_LLM_API_KEY"
    built = Pipeline.from_config(config.pipeline)
    llm = [p for p in built.processors if isinstance(p, LlmEnrichment)]
    assert [p.enricher.limits.api_key for p in llm] == ["sk-from-the-old-env"]
    # The key itself never enters the configuration (config check prints it).
    assert "sk-from-the-old-env" not in json.dumps(config.model_dump(mode="json"))
    disabled = pipeline({"MOTHERSHIP_LLM_ENABLED": "no"}, llm_file(tmp_path))
    assert disabled.pipeline.processors[2].enabled is False


def test_llm_api_key_does_not_replace_a_configured_key_file(tmp_path: Path) -> None:
    config = pipeline(
        {"MOTHERSHIP_LLM_API_KEY": "x"}, llm_file(tmp_path, ", api_key_file: /run/key")
    )
    assert "api_key_env" not in config.pipeline.processors[2].settings()


def test_llm_enabled_without_a_configured_stage_fails_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"MOTHERSHIP_LLM_ENABLED .*no 'llm_enrichment'"):
        pipeline({"MOTHERSHIP_LLM_ENABLED": "true"})
    assert pipeline({"MOTHERSHIP_LLM_ENABLED": "false"}).env_notices


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TSDB_PORT": "54x"}, r"TSDB_PORT \(for postgres.dsn \(port\)\): not a TCP port"),
        ({"TSDB_ENABLED": "maybe"}, r"TSDB_ENABLED .*not a boolean"),
        ({"MOTHERSHIP_LOG_LEVEL": "loud"}, r"logging\.level \(set by MOTHERSHIP_LOG_LEVEL\)"),
    ],
)
def test_bad_alias_values_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        storage(environ)


def test_loki_variables_make_one_loki_sink_and_keep_the_password_in_the_environment() -> None:
    config = storage(
        {
            "LOKI_ENABLED": "true",
            "LOKI_URL": "http://loki:3100",
            "LOKI_TENANT_ID": "acme",
            "LOKI_USERNAME": "edgebot",
            "LOKI_PASSWORD": "s3cret",
            "LOKI_BATCH_SIZE": "250",
            "LOKI_BATCH_TIMEOUT_SECONDS": "2.5",
        }
    )
    (sink,) = config.sinks
    assert sink.type == "loki"
    assert (sink.url, sink.tenant, sink.username) == ("http://loki:3100", "acme", "edgebot")  # type: ignore[union-attr]
    assert sink.password_env == "LOKI_PASSWORD"  # type: ignore[union-attr]
    assert (sink.batch_max_events, sink.batch_wait_s) == (250, 2.5)
    assert "s3cret" not in config.model_dump_json()
    assert all("deprecated" in n or "instead" in n for n in config.env_notices)


def test_loki_disabled_adds_no_sink() -> None:
    assert storage({"LOKI_ENABLED": "false"}).sinks == []


def _model_has_path(model: type[BaseModel], path: tuple[str, ...]) -> bool:
    node: Any = model
    for key in path:
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return False
        field = node.model_fields.get(key)
        if field is None:
            return False
        node = field.annotation
    return True


@pytest.mark.parametrize("alias", ALIASES, ids=lambda a: f"{a.name}-{a.target.describe()}")
def test_every_alias_row_points_at_a_real_key(alias: Any) -> None:
    target = alias.target
    if isinstance(target, Unmapped):
        return
    for service in alias.services:
        package, class_name = CONFIG_CLASSES[service]
        model = getattr(__import__(package), class_name)
        assert issubclass(model, ServiceConfig)
        assert _model_has_path(model, target.key_path), (service, target.key_path)
        if isinstance(target, SetProcessorField):
            assert target.field_name in _entry_fields(target), target


def _entry_fields(target: SetProcessorField) -> set[str]:
    """The settings a typed list entry (a processor, or a storage sink) accepts."""
    if target.key_path == ("sinks",):
        from storage_svc.sinks_config import LokiSinkSection

        assert target.processor_type == "loki"
        return set(LokiSinkSection.model_fields)
    from pipeline_svc.processors.base import REGISTRY

    return {*REGISTRY[target.processor_type].settings_model.model_fields, "enabled"}


def test_edgebot_config_check_shows_the_alias_and_its_notice(tmp_path: Path) -> None:
    path = tmp_path / "storage.yaml"
    path.write_text("sqlite:\n  path: /tmp/x.db\n")
    result = subprocess.run(
        [sys.executable, "-m", "edgebot", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, MOTHERSHIP_DB_DSN="postgresql://ms:hunter2@db/ms"),
    )
    assert result.returncode == 0, result.stderr
    assert "# warning: MOTHERSHIP_DB_DSN is deprecated" in result.stdout
    assert "EDGEBOT_STORAGE_POSTGRES__DSN" in result.stdout
    assert "primary: postgres" in result.stdout
    assert "hunter2" not in result.stdout


def test_a_service_logs_the_deprecation_notice_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "server: {port: 0, health_port: null, metrics_port: null, grace_period_s: 0}\n"
        "tls: {enabled: false}\nlogging: {format: json}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline_svc", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, MOTHERSHIP_LOG_LEVEL="debug", AF_ENV="staging"),
    )
    assert process.stderr is not None
    lines: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            if line.startswith("{"):
                lines.append(json.loads(line))
            if any(entry["msg"] == "pipeline listening" for entry in lines):
                break
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    notices = {e["deprecated_env"]: e for e in lines if "deprecated_env" in e}
    assert set(notices) == {"MOTHERSHIP_LOG_LEVEL", "AF_ENV"}
    assert notices["MOTHERSHIP_LOG_LEVEL"]["level"] == "warning"
    assert "use EDGEBOT_LOGGING__LEVEL" in notices["MOTHERSHIP_LOG_LEVEL"]["msg"]
    # The alias took effect: the process logs at DEBUG.
    assert any(entry["level"] == "debug" for entry in lines)
