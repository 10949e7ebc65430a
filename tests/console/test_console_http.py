"""The console over plain HTTP against a live mesh: access, CSRF, CORS, audit, live streams,
and mesh errors shown as what to do."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from console_mesh import OPERATOR_TOKEN, ConsoleMesh, console_mesh, console_section
from support import Pki

from anomaly_svc.console import Console, ConsoleSection
from anomaly_svc.console.audit import AUDIT_LOGGER
from anomaly_svc.console.auth import LoginLimiter
from gen.edgebot.v1 import anomaly_pb2

pytestmark = pytest.mark.asyncio(loop_scope="module")
TRUSTED_ORIGIN = "https://ops.example"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mesh(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ConsoleMesh]:
    tmp_path = tmp_path_factory.mktemp("console-http")
    section = console_section(pki, tmp_path, allowed_origins=[TRUSTED_ORIGIN])
    async with console_mesh(pki, tmp_path, section) as running_mesh:
        await running_mesh.send_sample("ssh-bf")
        await running_mesh.wait_stored("", 6)
        await running_mesh.analyse("auth")
        yield running_mesh


async def _login(client: httpx.AsyncClient) -> str:
    reply = await client.post("/api/login", json={"token": OPERATOR_TOKEN})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["csrf"])


async def _first_anomaly(client: httpx.AsyncClient) -> str:
    listed = (await client.get("/api/anomalies", params={"agent": "auth"})).json()
    return str(listed["anomalies"][0]["id"])


async def test_access_without_login_is_refused(mesh: ConsoleMesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.url) as client:
        page = await client.get("/")
        assert page.status_code == 302
        assert page.headers["location"] == "/login"
        for method, path in (
            ("GET", "/api/anomalies"),
            ("GET", "/api/events"),
            ("GET", "/api/alerts/stream"),
            ("GET", "/api/exports/x/parts/0"),
            ("POST", "/api/models/reload"),
        ):
            reply = await client.request(method, path, json={})
            assert reply.status_code == 401, (method, path)
            assert reply.json() == {"error": "Log in first."}
        login_page = await client.get("/login")
        assert login_page.status_code == 200
        assert "Operator token" in login_page.text
        assert "default-src 'self'" in login_page.headers["content-security-policy"]
        refused = await client.post("/api/login", json={"token": "not-a-token-of-anyone"})
        assert refused.status_code == 401
        assert "edgebot_console_session" not in refused.headers.get("set-cookie", "")


async def test_login_gives_a_strict_httponly_session_and_logout_ends_it(mesh: ConsoleMesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.url) as client:
        reply = await client.post("/api/login", json={"token": OPERATOR_TOKEN})
        cookie = reply.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain HTTP here; Secure is set when served with TLS
        assert reply.json()["operator"] == "alice"
        assert (await client.get("/")).status_code == 200
        session = (await client.get("/api/session")).json()
        assert session["csrf"] == reply.json()["csrf"]
        csrf = session["csrf"]
        assert (
            await client.post("/api/logout", json={}, headers={"X-CSRF-Token": csrf})
        ).status_code == 200
        assert (await client.get("/api/session")).status_code == 401


async def test_a_forged_cross_site_post_is_refused(mesh: ConsoleMesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.url) as client:
        csrf = await _login(client)
        anomaly_id = await _first_anomaly(client)
        path = f"/api/anomalies/{anomaly_id}"
        resolve = {"action": "resolve", "notes": "forged"}
        forged = await client.post(path, json=resolve, headers={"Origin": "https://evil.example"})
        assert forged.status_code == 403
        assert forged.json()["error"] == "Cross-site request refused."
        with_token = await client.post(
            path, json=resolve, headers={"Origin": "https://evil.example", "X-CSRF-Token": csrf}
        )
        assert with_token.status_code == 403
        no_token = await client.post(path, json=resolve)
        assert no_token.status_code == 403
        assert "CSRF" in no_token.json()["error"]
        wrong_token = await client.post(path, json=resolve, headers={"X-CSRF-Token": "x" + csrf})
        assert wrong_token.status_code == 403
        form_post = await client.post(
            path, content="action=resolve", headers={"X-CSRF-Token": csrf,
                                                     "Content-Type": "text/plain"}
        )  # fmt: skip
        assert form_post.status_code == 415
        got = await mesh.stub.GetAnomaly(anomaly_pb2.GetAnomalyRequest(id=anomaly_id))
        assert got.anomaly.status == anomaly_pb2.ANOMALY_STATUS_OPEN
        assert got.anomaly.notes == ""


async def test_no_wildcard_cors_and_only_configured_origins(mesh: ConsoleMesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.url) as client:
        csrf = await _login(client)
        foreign = await client.get("/api/anomalies", headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 200
        assert not [h for h in foreign.headers if h.lower().startswith("access-control-")]
        preflight = await client.options(
            "/api/models/reload",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 403
        assert "access-control-allow-origin" not in preflight.headers
        trusted = await client.get("/api/anomalies", headers={"Origin": TRUSTED_ORIGIN})
        assert trusted.headers["access-control-allow-origin"] == TRUSTED_ORIGIN
        trusted_post = await client.post(
            "/api/models/reload", json={}, headers={"Origin": TRUSTED_ORIGIN, "X-CSRF-Token": csrf}
        )
        assert trusted_post.status_code == 200
        assert trusted_post.headers["access-control-allow-origin"] == TRUSTED_ORIGIN
    with pytest.raises(ValueError, match="'\\*' is not allowed"):
        ConsoleSection(allowed_origins=["*"])


async def test_actions_change_the_anomaly_and_are_audited(
    mesh: ConsoleMesh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    async with httpx.AsyncClient(base_url=mesh.url) as client:
        csrf = await _login(client)
        anomaly_id = await _first_anomaly(client)
        headers = {"X-CSRF-Token": csrf}
        path = f"/api/anomalies/{anomaly_id}"
        assert (
            await client.post(path, json={"action": "acknowledge"}, headers=headers)
        ).status_code == 200
        resolved = await client.post(
            path, json={"action": "resolve", "resolution": "fixed", "notes": "blocked the source"},
            headers=headers,
        )  # fmt: skip
        assert resolved.json()["anomaly"]["status"] == "resolved"
        labelled = await client.post(
            path, json={"action": "label", "label": "false_positive"}, headers=headers
        )
        assert labelled.json()["anomaly"]["label"] == "false_positive"
        bad = await client.post(path, json={"action": "label", "label": "maybe"}, headers=headers)
        assert bad.status_code == 400
        assert bad.json()["error"] == "Check your input: label: true_positive or false_positive"
        got = (await mesh.stub.GetAnomaly(anomaly_pb2.GetAnomalyRequest(id=anomaly_id))).anomaly
        assert got.status == anomaly_pb2.ANOMALY_STATUS_RESOLVED
        assert (got.resolution, got.notes) == ("fixed", "blocked the source")
        assert got.label == anomaly_pb2.OPERATOR_LABEL_FALSE_POSITIVE
        await client.post(path, json={"action": "reopen"}, headers=headers)
    records = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    updates = [r for r in records if getattr(r, "audit_action", "") == "update-anomaly"]
    assert [(r.audit_operator, r.audit_anomaly_id, r.audit_fields) for r in updates[:3]] == [  # type: ignore[attr-defined]
        ("alice", anomaly_id, "status"),
        ("alice", anomaly_id, "status,resolution,notes"),
        ("alice", anomaly_id, "label"),
    ]
    assert any(getattr(r, "audit_action", "") == "login" for r in records)
    assert "console update-anomaly by alice: ok" in caplog.text


async def test_detail_shows_the_events_around_the_anomaly(mesh: ConsoleMesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.url) as client:
        await _login(client)
        listed = (
            await client.get("/api/anomalies", params={"agent": "auth", "severity": "warning"})
        ).json()
        brute = next(a for a in listed["anomalies"] if a["type"] == "user_enumeration")
        detail = (await client.get(f"/api/anomalies/{brute['id']}")).json()
        assert detail["events_error"] == ""
        assert len(detail["events"]) == 6
        assert all(e["host"] == "sd-126005" for e in detail["events"])
        assert sum(e["in_anomaly"] for e in detail["events"]) == len(brute["event_ids"])
        assert detail["anomaly"]["features"]
        bad = await client.get("/api/anomalies", params={"severity": "loud"})
        assert bad.status_code == 400
        assert bad.json()["error"].startswith("Check your input: severity: one of emergency")


async def _read_alerts(response: httpx.Response, count: int) -> list[tuple[str, dict[str, object]]]:
    alerts: list[tuple[str, dict[str, object]]] = []
    event, event_id, data = "", "", ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data += line[6:]
        elif not line and event:
            if event == "alert":
                alerts.append((event_id, json.loads(data)))
                if len(alerts) == count:
                    return alerts
            event, event_id, data = "", "", ""
    raise AssertionError("the alert stream ended early")


async def _send_and_analyse(mesh: ConsoleMesh, sample: str, agent: str) -> None:
    before = await mesh.stored("")
    sent = await mesh.send_sample(sample)
    await mesh.wait_stored("", before + sent)
    await mesh.analyse(agent)


async def test_alert_stream_catches_up_after_a_reconnect(mesh: ConsoleMesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.url, timeout=20) as client:
        await _login(client)
        async with client.stream("GET", "/api/alerts/stream") as live:
            assert live.headers["content-type"].startswith("text/event-stream")
            await asyncio.sleep(0.3)
            await _send_and_analyse(mesh, "iptables-scan-multi-port", "firewall")
            ((last_id, alert),) = await asyncio.wait_for(_read_alerts(live, 1), 15)
        assert alert["kind"] == "new"
        assert alert["anomaly"]["agent"] == "firewall"  # type: ignore[index]
        await _send_and_analyse(mesh, "ssh-slow-bf", "auth")  # raised while nobody listens
        missed = await mesh.stub.ListAnomalies(anomaly_pb2.ListAnomaliesRequest(agents=["auth"]))
        assert any(a.dedupe_key.startswith("auth:slow_brute_force") for a in missed.anomalies)
        headers = {"Last-Event-ID": last_id}
        async with client.stream("GET", "/api/alerts/stream", headers=headers) as again:
            replayed = await asyncio.wait_for(_read_alerts(again, 1), 15)
        ids = [int(i) for i, _ in replayed]
        assert ids[0] == int(last_id) + 1  # no gap and no repeat
        bad = await client.get("/api/alerts/stream", headers={"Last-Event-ID": "abc"})
        assert bad.status_code == 400


async def test_monitoring_reports_health_sinks_and_series(mesh: ConsoleMesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.url) as client:
        await _login(client)
        await asyncio.sleep(1.2)
        data = (await client.get("/api/monitoring")).json()
        assert data["health"] == {
            "anomaly": "SERVING", "storage": "SERVING", "ingest": "SERVING",
            "pipeline": "SERVING", "agent site-a": "SERVING",
        }  # fmt: skip
        assert [(s["name"], s["health"], s["primary"]) for s in data["sinks"]] == [
            ("sqlite", "up", True)
        ]
        series = data["series"]
        assert set(series) >= {"stored_rate", "ingest_rate", "spool_depth", "outbox_lag"}
        assert list(series["spool_depth"]) == ["site-a"]
        assert data["problems"] == []
        counts = data["anomalies"]["counts"]
        assert len(counts) == 24
        assert sum(c for _, c in counts) >= 2


async def test_mesh_errors_are_told_as_what_to_do(
    pki: Pki, tmp_path: Path, mesh: ConsoleMesh
) -> None:
    section = ConsoleSection.model_validate(console_section(pki, tmp_path, services={}))
    dead_storage = "127.0.0.1:9"  # discard port: nothing listens
    console = Console(
        section,
        pki.service("anomaly"),
        f"127.0.0.1:{mesh.anomaly.runtime.ports.grpc}",
        [dead_storage],
    )
    await console.start()
    try:
        async with httpx.AsyncClient(base_url=console.url, timeout=20) as client:
            await _login(client)
            events = await client.get("/api/events")
            assert events.status_code == 503
            assert events.json() == {
                "error": "Storage is unavailable — check the storage service; retrying."
            }
            assert "Traceback" not in events.text
            anomaly_id = await _first_anomaly(client)
            detail = (await client.get(f"/api/anomalies/{anomaly_id}")).json()
            assert detail["anomaly"]["id"] == anomaly_id
            assert detail["events_error"].startswith("Storage is unavailable")
            missing = await client.get("/api/anomalies/no-such-anomaly")
            assert missing.status_code == 404
            assert missing.json()["error"].startswith("Not found: no anomaly with id")
    finally:
        await console.stop()


async def test_failed_logins_are_limited_per_client() -> None:
    limiter = LoginLimiter(per_minute=3)
    for _ in range(3):
        assert not limiter.blocked("192.0.2.7")
        limiter.failed("192.0.2.7")
    assert limiter.blocked("192.0.2.7")
    assert not limiter.blocked("192.0.2.8")


async def test_https_with_an_operator_certificate_logs_in_without_a_token(
    pki: Pki, tmp_path: Path, mesh: ConsoleMesh
) -> None:
    served = pki.service("anomaly")
    section = ConsoleSection.model_validate(
        console_section(
            pki, tmp_path, services={},
            tls={"cert_file": str(served.cert_file), "key_file": str(served.key_file),
                 "client_ca_file": str(served.ca_file)},
        )
    )  # fmt: skip
    storage = f"127.0.0.1:{mesh.storage.runtime.ports.grpc}"
    console = Console(section, served, f"127.0.0.1:{mesh.anomaly.runtime.ports.grpc}", [storage])
    await console.start()
    operator = pki.operator()
    try:
        assert console.url.startswith("https://")
        with_certificate = ssl.create_default_context(cafile=str(served.ca_file))
        with_certificate.load_cert_chain(str(operator.cert_file), str(operator.key_file))
        async with httpx.AsyncClient(base_url=console.url, verify=with_certificate) as client:
            assert (await client.get("/api/login/options")).json() == {
                "token": True, "certificate": True,
            }  # fmt: skip
            reply = await client.post("/api/login/certificate", json={})
            assert reply.json()["operator"] == "admin"
            assert "Secure" in reply.headers["set-cookie"]
            assert (await client.get("/api/anomalies")).status_code == 200
        without = ssl.create_default_context(cafile=str(served.ca_file))
        async with httpx.AsyncClient(base_url=console.url, verify=without) as anonymous:
            refused = await anonymous.post("/api/login/certificate", json={})
            assert refused.status_code == 401
    finally:
        await console.stop()


async def test_an_enabled_console_needs_a_way_to_log_in() -> None:
    with pytest.raises(ValueError, match="tokens_file: required when the console is enabled"):
        ConsoleSection(enabled=True)
    with pytest.raises(ValueError, match="client_ca_file needs cert_file"):
        ConsoleSection.model_validate({"tls": {"client_ca_file": "ca.crt"}})
