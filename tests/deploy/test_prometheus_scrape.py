"""The real Prometheus scrapes a running mesh, loads the alert rules, and sees ingestion."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from mesh_processes import MeshProcesses, send_numbered, wait_for_all
from support import free_port_base, free_udp_port

from edgebot.layout import SERVICE_ORDER, StateDir, ports_for

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_list())} rules found" in result.stdout


def rule_list() -> list[dict[str, object]]:
    rules: list[dict[str, object]] = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    return rules


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[MeshProcesses]:
    processes = MeshProcesses(StateDir(tmp_path / "state"), free_port_base(), free_udp_port())
    processes.prepare()
    try:
        await processes.start_all()
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture
def prometheus(tmp_path: Path, mesh: MeshProcesses) -> Iterator[str]:
    port = free_port_base(offsets=(0,))
    targets = [f"127.0.0.1:{ports_for(s, mesh.port_base).metrics}" for s in SERVICE_ORDER]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "edgebot", "static_configs": [{"targets": targets}]}],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)
        shutil.rmtree(tmp_path / "tsdb", ignore_errors=True)


def api(base: str, path: str, **params: str) -> dict[str, object]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        loaded: dict[str, object] = json.loads(response.read())
    return loaded


async def poll(base: str, query: str, minimum: float, timeout_s: float = 40) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    value = 0.0
    while loop.time() < deadline:
        try:
            body = await asyncio.to_thread(api, base, "/api/v1/query", query=query)
        except OSError:
            body = {}
        data = body.get("data")
        results = data.get("result", []) if isinstance(data, dict) else []
        if results:
            value = float(results[0]["value"][1])
            if value >= minimum:
                return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"{query} stayed at {value} (< {minimum}) for {timeout_s}s")


async def test_prometheus_sees_ingestion_and_loads_the_rules(
    mesh: MeshProcesses, prometheus: str
) -> None:
    marker = uuid.uuid4().hex
    sent = await send_numbered(mesh.syslog_port, marker, 50, 200)
    assert len(await wait_for_all(mesh, marker, len(sent), 30)) == len(sent)
    assert await poll(prometheus, "sum(mothership_ingestion_events_total)", 50) >= 50
    assert await poll(prometheus, 'sum(edgebot_messages_received_total{input="syslog_udp"})', 50)
    assert await poll(prometheus, 'sum(mothership_database_writes_total{result="ok"})', 1)
    assert await poll(prometheus, "count(edgebot_service_serving == 1)", 5) == 5
    rules = await asyncio.to_thread(api, prometheus, "/api/v1/rules")
    data = rules["data"]
    assert isinstance(data, dict)
    loaded = [rule for group in data["groups"] for rule in group["rules"]]
    assert len(loaded) == len(rule_list())
    assert all(rule["health"] == "ok" for rule in loaded), loaded
