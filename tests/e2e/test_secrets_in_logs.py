"""A full run of the mesh as processes with every kind of secret configured and used, then
a grep of every log for each of them.

Secrets: the password in storage's PostgreSQL DSN (the database demands it: scram), an
operator bearer token (used, and a wrong one tried), the HMAC secret of hash_fields (its
pseudonyms are checked), the LLM API key (the fake API checks the header), and the HTTP
poller's bearer token and the API key in its URL's query. The run also goes through the
paths where secrets tend to leak: PostgreSQL down for a while (connection errors), a
refused SIGHUP reload, a failing poll, a denied call, DEBUG logging everywhere, shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import yaml
from mesh_processes import MeshProcesses, send_numbered
from support import free_port_base, free_udp_port

from edgebot.layout import StateDir, ports_for
from gen.edgebot.v1 import event_pb2, storage_pb2, storage_pb2_grpc
from mesh.channel import open_channel
from mesh.config import TlsConfig

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "storage_svc"), str(TESTS / "pipeline_svc")]

from fake_llm import FakeLlm, fake_llm_server  # noqa: E402
from pg_server import TEST_DATABASE, PgServer  # noqa: E402

pytestmark = pytest.mark.slow
RUN = uuid.uuid4().hex[:12]
SECRETS = {
    "postgres password": f"pgPw{RUN}",
    "operator token": f"opTok{RUN}",
    "wrong operator token": f"wrongTok{RUN}",
    "hash_fields secret": f"hashSalt{RUN}",
    "LLM API key": f"llmKey{RUN}",
    "HTTP bearer token": f"httpTok{RUN}",
    "HTTP query API key": f"queryKey{RUN}",
}
DB_USER = "edgebot_writer"
HBA = (
    "local all all trust\n"
    "host all postgres 127.0.0.1/32 trust\n"
    f"host all {DB_USER} 127.0.0.1/32 scram-sha-256\n"
)


@pytest.fixture
def postgres() -> Iterator[PgServer]:
    """A PostgreSQL of its own whose role for EdgeBot needs its password."""
    server = PgServer.create()
    try:
        (server.data_dir / "pg_hba.conf").write_text(HBA)
        server.start()
        asyncio.run(_create_role(server))
        yield server
    finally:
        server.remove()


async def _create_role(server: PgServer) -> None:
    conn = await asyncpg.connect(server.dsn())
    try:
        password = SECRETS["postgres password"]
        await conn.execute(f"CREATE ROLE {DB_USER} LOGIN SUPERUSER PASSWORD '{password}'")
    finally:
        await conn.close()
    wrong = f"postgresql://{DB_USER}:not-it@127.0.0.1:{server.port}/{TEST_DATABASE}"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)


class PolledApi:
    """The HTTP API the agent polls: demands the token and the key, fails its first poll."""

    def __init__(self) -> None:
        self.authorized = 0
        self.calls = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.calls += 1
                token_ok = self.headers.get("Authorization") == (
                    f"Bearer {SECRETS['HTTP bearer token']}"
                )
                key_ok = f"api_key={SECRETS['HTTP query API key']}" in self.path
                api.authorized += token_ok and key_ok
                status = 503 if api.calls == 1 else 200 if token_ok and key_ok else 401
                body = json.dumps({"reading": api.calls}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/reading"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def polled_api() -> Iterator[PolledApi]:
    api = PolledApi()
    yield api
    api.close()


@pytest.fixture
def fake_llm() -> Iterator[FakeLlm]:
    with fake_llm_server() as fake:
        yield fake


def write_secret(directory: Path, name: str, secret: str) -> str:
    path = directory / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return str(path)


def overrides(
    secrets_dir: Path, postgres: PgServer, llm: FakeLlm, api: PolledApi
) -> dict[str, dict[str, Any]]:
    tokens = write_secret(secrets_dir, "operator-tokens", SECRETS["operator token"])
    dsn = (
        f"postgresql://{DB_USER}:{SECRETS['postgres password']}@127.0.0.1:{postgres.port}/"
        f"{TEST_DATABASE}"
    )
    processors = [
        {"type": "drop_fields"},
        {"type": "mask_patterns"},
        {
            "type": "hash_fields",
            "fields": ["net.src_ip"],
            "secret_file": write_secret(secrets_dir, "hash", SECRETS["hash_fields secret"]),
        },
        {"type": "safety_validator"},
        {"type": "timestamp_normalize"},
        {"type": "severity_map"},
        {
            "type": "llm_enrichment",
            "base_url": llm.url,
            "model": "small",
            "api_key_file": write_secret(secrets_dir, "llm", SECRETS["LLM API key"]),
            "min_severity": "info",
            "budget_s": 2.0,
        },
    ]
    http_input = {
        "name": "reading",
        "url": f"{api.url}?api_key={SECRETS['HTTP query API key']}",
        "interval_s": 0.5,
        "bearer_token_file": write_secret(secrets_dir, "http", SECRETS["HTTP bearer token"]),
        "mapping": {"message": "reading {reading}"},
    }
    common = {"auth": {"operator_tokens_file": tokens}, "logging": {"level": "DEBUG"}}
    return {
        "storage": common
        | {
            "storage": {"primary": "postgres"},
            "postgres": {"dsn": dsn, "schema_name": "secrets_run", "connect_timeout_s": 2},
        },
        "pipeline": common | {"pipeline": {"processors": processors}},
        "ingest": common,
        "anomaly": common,
        "agent": common
        | {
            "inputs": {"http": [http_input]},
            "shipper": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        },
    }


@pytest.fixture
async def mesh(
    tmp_path: Path, postgres: PgServer, fake_llm: FakeLlm, polled_api: PolledApi
) -> AsyncIterator[MeshProcesses]:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    processes = MeshProcesses(StateDir(tmp_path / "state"), free_port_base(), free_udp_port())
    processes.prepare(overrides(secrets_dir, postgres, fake_llm, polled_api))
    try:
        await processes.start_all()
        yield processes
    finally:
        processes.stop_all()


def _token_call(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def query_with_token(mesh: MeshProcesses, marker: str) -> list[event_pb2.Event]:
    """QueryEvents as an operator by token (over the agent's certificate)."""
    agent_tls = TlsConfig.model_validate(mesh.state.tls(f"agent-{mesh.agent_id}"))
    address = f"127.0.0.1:{ports_for('storage', mesh.port_base).grpc}"
    request = storage_pb2.QueryEventsRequest(
        filter=storage_pb2.EventFilter(text=marker), page_size=1000
    )
    async with open_channel([address], agent_tls) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.QueryEvents(request, metadata=_token_call(SECRETS["wrong operator token"]))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        response = await stub.QueryEvents(
            request, metadata=_token_call(SECRETS["operator token"]), timeout=10
        )
    return list(response.events)


async def wait_stored(mesh: MeshProcesses, marker: str, count: int) -> list[event_pb2.Event]:
    deadline = time.monotonic() + 90
    events: list[event_pb2.Event] = []
    while time.monotonic() < deadline:
        events = await query_with_token(mesh, marker)
        if len(events) >= count:
            return events
        await asyncio.sleep(0.5)
    raise AssertionError(f"{len(events)} of {count} events stored\n{mesh.log_tail('storage')}")


async def refused_reload(mesh: MeshProcesses) -> None:
    """SIGHUP the pipeline with a configuration it must refuse; the running one stays."""
    path = mesh.state.config_file("pipeline")
    good = path.read_text()
    bad = yaml.safe_load(good)
    llm = bad["pipeline"]["processors"][-1]
    llm["base_url"] = f"ftp://user:{SECRETS['LLM API key']}@llm.invalid/v1"
    path.write_text(yaml.safe_dump(bad))
    mesh.processes["pipeline"].send_signal(signal.SIGHUP)
    log = mesh.state.logs / "pipeline.log"
    deadline = time.monotonic() + 15
    while "new configuration refused" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, mesh.log_tail("pipeline")
        await asyncio.sleep(0.1)
    path.write_text(good)


def config_check_output(mesh: MeshProcesses) -> str:
    storage_config = str(mesh.state.config_file("storage"))
    done = subprocess.run(
        [sys.executable, "-m", "edgebot", "config", "check", storage_config],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


async def test_no_secret_reaches_any_log_of_a_full_run(
    mesh: MeshProcesses, postgres: PgServer, fake_llm: FakeLlm, polled_api: PolledApi
) -> None:
    marker = f"secrets-{RUN}"
    syslog = mesh.syslog_port
    started = time.monotonic()
    sent = await send_numbered(syslog, f"{marker} before", 20, rate_per_s=100)
    await wait_stored(mesh, f"{marker} before", len(sent))

    postgres.stop()
    await send_numbered(syslog, f"{marker} outage", 20, rate_per_s=100)
    await asyncio.sleep(3)  # storage fails its writes meanwhile, and says so
    postgres.start()
    events = await wait_stored(mesh, marker, 40)

    await refused_reload(mesh)
    checked = config_check_output(mesh)
    deadline = time.monotonic() + 15
    while polled_api.authorized < 2:
        assert time.monotonic() < deadline, "the HTTP poller never authenticated"
        await asyncio.sleep(0.2)
    mesh.stop_all()
    print(f"full run took {time.monotonic() - started:.1f} s")

    # Each secret was in use, so its absence from the logs means something.
    pseudonym = hmac.new(
        SECRETS["hash_fields secret"].encode(), b"127.0.0.1", hashlib.sha256
    ).hexdigest()[:16]
    assert {e.attributes["net.src_ip"] for e in events} == {f"h:{pseudonym}"}
    llm_auth = {h.get("authorization") for h in fake_llm.headers}
    assert f"Bearer {SECRETS['LLM API key']}" in llm_auth
    assert "***" in checked

    logs = {path.name: path.read_text(errors="replace") for path in mesh.state.logs.glob("*.log")}
    assert set(logs) == {f"{service}.log" for service in mesh.processes}
    everything = "\n".join(logs.values())
    assert "denied" in everything  # the wrong token's call
    assert "new configuration refused" in logs["pipeline.log"]
    assert "HTTP poll http:reading" in logs["agent.log"]
    leaks = [
        (what, name)
        for what, secret in SECRETS.items()
        for name, text in {**logs, "edgebot config check": checked}.items()
        if secret in text
    ]
    assert leaks == []
