"""Names and certificates of the benchmark's services and simulated agents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mesh.pki import ensure_dev_pki

SERVICES = ("storage", "pipeline", "ingest")


def agent_id(index: int) -> str:
    return f"bench-{index:03d}"


def make_pki(directory: Path, agents: int) -> Path:
    """A dev CA, the three services' certificates and one per simulated agent."""
    ensure_dev_pki(
        directory,
        {name: () for name in SERVICES},
        agents=tuple(agent_id(i) for i in range(agents)),
        operators=("admin",),
    )
    return directory


def tls(pki: Path, stem: str) -> dict[str, Any]:
    return {
        "enabled": True,
        "ca_file": str(pki / "ca.crt"),
        "cert_file": str(pki / f"{stem}.crt"),
        "key_file": str(pki / f"{stem}.key"),
    }
