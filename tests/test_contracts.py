"""The contracts: buf lint (STANDARD) passes and gen/ is exactly what `make gen` writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_buf_lint_passes() -> None:
    result = subprocess.run(
        [str(BIN / "buf"), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_matches_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_check.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "gen/ matches proto/" in result.stdout


def test_services_import_only_gen_and_mesh() -> None:
    services = ("edge_agent", "ingest_svc", "pipeline_svc", "storage_svc", "anomaly_svc")
    offenders = []
    for service in services:
        others = [s for s in (*services, "edgebot") if s != service]
        for path in sorted((ROOT / service).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                stripped = line.strip()
                if stripped.startswith(("import ", "from ")) and any(
                    stripped.split()[1].split(".")[0] == other for other in others
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {stripped}")
    assert offenders == []


def test_mesh_imports_no_service() -> None:
    forbidden = (
        "edge_agent",
        "ingest_svc",
        "pipeline_svc",
        "storage_svc",
        "anomaly_svc",
        "edgebot",
    )
    offenders = [
        f"{path.name}: {line.strip()}"
        for path in sorted((ROOT / "mesh").rglob("*.py"))
        for line in path.read_text().splitlines()
        if line.strip().startswith(("import ", "from "))
        and line.strip().split()[1].split(".")[0] in forbidden
    ]
    assert offenders == []
