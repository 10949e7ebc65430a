"""`edgebot config check`: a valid file prints the effective settings, a bad one names the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgebot.config_check import hide_secrets


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgebot", "config", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_valid_file_prints_effective_settings(tmp_path: Path) -> None:
    path = tmp_path / "ingest.yaml"
    path.write_text("server:\n  port: 6000\ningest:\n  max_unacked_batches: 3\n")
    result = check(str(path))
    assert result.returncode == 0, result.stderr
    assert "valid configuration for ingest" in result.stdout
    assert "max_unacked_batches: 3" in result.stdout
    assert "port: 6000" in result.stdout


def test_invalid_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("spool:\n  max_bytes: lots\n")
    result = check(str(path), "--service", "agent")
    assert result.returncode == 1
    assert "spool.max_bytes" in result.stderr
    assert "'lots'" in result.stderr


def test_unknown_service_file_asks_for_service(tmp_path: Path) -> None:
    path = tmp_path / "mystery.yaml"
    path.write_text("server:\n  port: 1\n")
    result = check(str(path))
    assert result.returncode == 2
    assert "--service" in result.stderr


def test_secrets_are_hidden() -> None:
    shown = hide_secrets(
        {
            "postgres": {"dsn": "postgresql://u:pw@db/edgebot", "pool_max": 4},
            "llm": {"api_key": "sk-123", "api_key_file": "/run/secrets/llm"},
            "hash": {"secret": "pepper"},
        }
    )
    assert shown == {
        "postgres": {"dsn": "***", "pool_max": 4},
        "llm": {"api_key": "***", "api_key_file": "/run/secrets/llm"},
        "hash": {"secret": "***"},
    }
