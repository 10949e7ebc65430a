"""The HTTP JSON poller against a local HTTP server (stdlib ThreadingHTTPServer)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from edge_helpers import eventually
from edge_peers import Drain
from prometheus_client import REGISTRY

from edge_agent import AgentConfig
from edge_agent.config_polling import HttpInputConfig
from edge_agent.inputs.http_poll import HttpPollInput
from edge_agent.parsers.json_path import MISSING, lookup, parse_path
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError, load_config

TOKEN = "s3cr3t-token-value"
API_KEY = "api-key-in-query"
WEATHER = {
    "location": {"name": "Oslo", "country": "Norway"},
    "current": {
        "temp_c": 3.5,
        "condition": {"text": "Light snow"},
        "last_updated_epoch": 1_700_000_000,
        "wind_kph": None,
    },
}
ITEMS = {
    "site": "north",
    "items": [
        {"name": "pump-1", "state": "on", "at": "2024-05-01T10:00:00Z", "rpm": 1200},
        {"name": "pump-2", "state": "off", "at": "2024-05-01T10:00:05+02:00"},
        {"name": "pump-3", "tags": ["a", "b"]},
    ],
}


class Handler(BaseHTTPRequestHandler):
    seen_headers: list[dict[str, str]] = []

    def do_GET(self) -> None:
        self.seen_headers.append(dict(self.headers))
        path = self.path.split("?")[0]
        if path == "/slow":
            time.sleep(1.5)
        if path == "/auth" and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.answer(401, b'{"error": "unauthorized"}')
        bodies = {
            "/weather": json.dumps(WEATHER).encode(),
            "/items": json.dumps(ITEMS).encode(),
            "/auth": json.dumps(WEATHER).encode(),
            "/slow": b"{}",
            "/big": json.dumps({"blob": "x" * 5000}).encode(),
            "/deep": b"[" * 100_000 + b"]" * 100_000,
            "/deepish": b'{"a":' * 40 + b"1" + b"}" * 40,
            "/invalid": b"<html>not json</html>",
        }
        if path == "/error":
            return self.answer(503, b"busy")
        self.answer(200, bodies[path])

    do_POST = do_GET

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    spool = Spool(tmp_path / "spool.db", 1 << 30)
    await spool.open()
    yield spool
    await spool.close()


def polls(name: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "edgebot_http_polls_total", {"input": f"http:{name}", "outcome": outcome}
    )
    return value or 0.0


async def poll_once(spool: Spool, **settings: Any) -> HttpPollInput:
    """Start an input (its first poll runs at once), wait for its outcome, stop it."""
    config = HttpInputConfig.model_validate({"interval_s": 3600, **settings})
    poller = HttpPollInput(config, spool, "site-a")
    outcomes = ("ok", "http_status", "timeout", "transport", "oversize", "invalid_json")
    outcomes += ("too_deep", "token")
    before = sum(polls(config.name, o) for o in outcomes)
    await poller.start()
    try:
        await eventually(lambda: sum(polls(config.name, o) for o in outcomes) > before, 10)
    finally:
        await poller.stop()
    return poller


async def test_weather_mapping(http_server: str, spool: Spool) -> None:
    await poll_once(
        spool,
        name="weather",
        url=f"{http_server}/weather?key={API_KEY}",
        mapping={
            "message": "{location.name}: {current.temp_c} C, {current.condition.text}",
            "host": "{location.name}",
            "time": "current.last_updated_epoch",
            "severity": "notice",
            "attributes": {
                "weather.temp_c": "current.temp_c",
                "weather.country": "location.country",
                "weather.wind_kph": "current.wind_kph",
                "weather.missing": "current.nope",
            },
        },
    )
    (event,) = await Drain(spool).count(1)
    assert (event.type, event.source, event.host, event.service) == (
        "http",
        "site-a/http:weather",
        "Oslo",
        "weather",
    )
    assert event.message == "Oslo: 3.5 C, Light snow"
    assert event.severity == event_pb2.SEVERITY_NOTICE
    assert event.time.seconds == 1_700_000_000
    assert event.attributes["weather.temp_c"] == "3.5"
    assert event.attributes["weather.country"] == "Norway"
    assert "weather.wind_kph" not in event.attributes  # null
    assert "weather.missing" not in event.attributes
    assert event.attributes["http.url"] == f"{http_server}/weather"  # no API key stored
    assert event.attributes["http.status"] == "200"


async def test_one_event_per_item(http_server: str, spool: Spool) -> None:
    await poll_once(
        spool,
        name="pumps",
        url=f"{http_server}/items",
        method="POST",
        body='{"q": 1}',
        max_events_per_poll=2,
        mapping={
            "message": "{items[].name} is {items[].state} at {site}",
            "time": "items[].at",
            "attributes": {"pump.name": "items[].name", "pump.rpm": "items[].rpm", "site": "site"},
        },
    )
    events = await Drain(spool).count(2)
    assert [e.message for e in events] == ["pump-1 is on at north", "pump-2 is off at north"]
    assert [e.attributes["site"] for e in events] == ["north", "north"]
    assert events[0].attributes["pump.rpm"] == "1200"
    assert "pump.rpm" not in events[1].attributes
    assert events[0].time.ToJsonString() == "2024-05-01T10:00:00Z"
    assert events[1].time.ToJsonString() == "2024-05-01T08:00:05Z"
    assert events[0].host == "127.0.0.1"
    skipped = REGISTRY.get_sample_value(
        "edgebot_input_records_skipped_total", {"input": "http:pumps", "reason": "max_events"}
    )
    assert skipped == 1


async def test_bearer_token_from_file_or_env_is_sent_and_never_logged(
    http_server: str,
    spool: Spool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    caplog.set_level(logging.DEBUG)
    await poll_once(
        spool,
        name="auth",
        url=f"{http_server}/auth",
        bearer_token_file=str(token_file),
        headers={"X-Site": "north"},
    )
    assert polls("auth", "ok") == 1
    assert Handler.seen_headers[-1]["X-Site"] == "north"
    token_file.write_text("wrong-token")
    await poll_once(
        spool, name="auth2", url=f"{http_server}/auth", bearer_token_file=str(token_file)
    )
    assert polls("auth2", "http_status") == 1
    monkeypatch.setenv("EDGE_TEST_TOKEN", TOKEN)
    await poll_once(
        spool, name="auth3", url=f"{http_server}/auth", bearer_token_env="EDGE_TEST_TOKEN"
    )
    assert polls("auth3", "ok") == 1
    monkeypatch.setenv("EDGE_TEST_TOKEN", "")
    await poll_once(
        spool, name="auth4", url=f"{http_server}/auth", bearer_token_env="EDGE_TEST_TOKEN"
    )
    assert polls("auth4", "token") == 1
    assert TOKEN not in caplog.text
    assert "wrong-token" not in caplog.text


@pytest.mark.parametrize(
    ("path", "settings", "outcome"),
    [
        ("/error", {}, "http_status"),
        ("/slow", {"timeout_s": 0.3}, "timeout"),
        ("/big", {"max_response_bytes": 1000}, "oversize"),
    ],
)
async def test_failures_are_counted_without_events(
    http_server: str, spool: Spool, path: str, settings: dict[str, Any], outcome: str
) -> None:
    name = f"fail{path.replace('/', '-')}"
    await poll_once(spool, name=name, url=f"{http_server}{path}", **settings)
    assert polls(name, outcome) == 1
    assert spool.events == 0


@pytest.mark.parametrize(
    ("path", "outcome", "reason"),
    [
        ("/invalid", "invalid_json", "invalid JSON"),
        ("/deep", "too_deep", "deeper than 64"),
        ("/deepish", "too_deep", "deeper than 32"),
    ],
)
async def test_unreadable_bodies_are_kept_as_raw(
    http_server: str, spool: Spool, path: str, outcome: str, reason: str
) -> None:
    name = f"raw{path.replace('/', '-')}"
    depth = {"max_json_depth": 32} if path == "/deepish" else {}
    await poll_once(
        spool, name=name, url=f"{http_server}{path}", max_response_bytes=1 << 20, **depth
    )
    assert polls(name, outcome) == 1
    (event,) = await Drain(spool).count(1)
    assert event.type == "raw"
    assert reason in event.attributes["parse.error"]
    assert event.raw.startswith(
        b"<html>" if path == "/invalid" else b"[" if path == "/deep" else b"{"
    )


async def test_connection_refused_is_a_transport_failure(spool: Spool) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    await poll_once(spool, name="down", url=f"http://127.0.0.1:{port}/x")
    assert polls("down", "transport") == 1


def test_paths() -> None:
    document = {"a": {"b": [{"c": 1}, {"c": 2}]}, "list": [[1, 2], [3]]}
    assert lookup(document, parse_path("a.b[1].c").steps) == 2
    assert lookup(document, parse_path("list[0][1]").steps) == 2
    assert lookup(document, parse_path("a.b[5].c").steps) is MISSING
    assert lookup(document, parse_path("a.x").steps) is MISSING
    assert parse_path("a.b[].c").items_prefix == ("a", "b")
    assert parse_path("a.b[].c").item_steps == ("c",)


def test_http_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "edge.yaml"
    base = "name: w, url: 'http://h/x'"
    mapping_of = {
        "bad path": "{attributes: {t: 'a..b'}}",
        "two lists": "{message: '{a[]} {b[].c}'}",
        "two items": "{attributes: {t: 'a[][]'}}",
        "severity": "{severity: loud}",
    }
    for body, key in [
        ("{name: w, url: 'ftp://h/x'}", r"inputs\.http\.0\.url"),
        (f"{{{base}, mapping: {mapping_of['bad path']}}}", r"http\.0\.mapping\.attributes"),
        (f"{{{base}, mapping: {mapping_of['two lists']}}}", r"http\.0\.mapping: .*more than one"),
        (f"{{{base}, mapping: {mapping_of['two items']}}}", r"only one '\[\]'"),
        (f"{{{base}, mapping: {mapping_of['severity']}}}", r"http\.0\.mapping\.severity"),
        (f"{{{base}, bearer_token_file: /nonexistent}}", r"inputs\.http\.0: .*bearer_token_file"),
        (f"{{{base}, max_response_bytes: 1}}", r"inputs\.http\.0\.max_response_bytes"),
    ]:
        bad.write_text(f"inputs:\n  http:\n  - {body}\n")
        with pytest.raises(ConfigError, match=key):
            load_config(AgentConfig, bad, "agent", environ={})
