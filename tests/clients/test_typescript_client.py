"""The Node client (clients/typescript, @grpc/grpc-js) against live services over mTLS."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from inprocess_mesh import Mothership, mothership
from support import Pki

from mesh.config import TlsConfig

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "typescript"


@pytest.fixture(scope="module")
def built_client() -> Path:
    """npm ci (when node_modules is missing) and tsc, once for the module."""
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENT, check=True, timeout=300
        )
    subprocess.run(["npx", "tsc", "-p", "tsconfig.json"], cwd=CLIENT, check=True, timeout=300)
    return CLIENT / "dist" / "cli.js"


@pytest.fixture
async def mesh(pki: Pki, tmp_path: Path) -> AsyncIterator[Mothership]:
    async with mothership(pki, tmp_path) as running:
        yield running


async def node(cli: Path, tls: TlsConfig, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "node", str(cli), *args,
        "--ca", str(tls.ca_file), "--cert", str(tls.cert_file), "--key", str(tls.key_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_node_client_pushes_a_batch_and_reads_it_back(
    built_client: Path, mesh: Mothership, pki: Pki
) -> None:
    marker = uuid.uuid4().hex
    code, out, err = await node(
        built_client, pki.agent("site-a"), "push",
        "--address", mesh.address(mesh.ingest), "--agent-id", "site-a",
        "--message", f"from node {marker} one", "--message", f"from node {marker} two",
    )  # fmt: skip
    assert code == 0, err
    reply = json.loads(out)
    assert reply["status"] == "ACK_STATUS_OK"
    assert (reply["received"], reply["written"]) == (2, 2)

    code, out, err = await node(
        built_client, pki.operator(), "query", "--address", mesh.address(mesh.storage),
        "--text", marker,
    )  # fmt: skip
    assert code == 0, err
    events = json.loads(out)["events"]
    assert sorted(e["message"] for e in events) == [
        f"from node {marker} one",
        f"from node {marker} two",
    ]
    assert {e["service"] for e in events} == {"ts-client"}
    assert all(e["source"] == "site-a/typescript" for e in events)


async def test_node_client_cannot_push_as_another_agent(
    built_client: Path, mesh: Mothership, pki: Pki
) -> None:
    code, _, err = await node(
        built_client, pki.agent("site-a"), "push",
        "--address", mesh.address(mesh.ingest), "--agent-id", "site-b", "--message", "spoofed",
    )  # fmt: skip
    assert code == 1
    assert "PERMISSION_DENIED" in err or "may not send as agent" in err
