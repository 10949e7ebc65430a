"""What every console handler shares, and small helpers for reading requests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from anomaly_svc.console.auth import LoginLimiter, Session, Sessions, TokenCheck
from anomaly_svc.console.config import ConsoleSection
from anomaly_svc.console.live import LiveStreams
from anomaly_svc.console.mesh_client import MeshClients
from anomaly_svc.console.monitoring import Monitor


@dataclass
class ConsoleContext:
    config: ConsoleSection
    clients: MeshClients
    monitor: Monitor
    live: LiveStreams
    sessions: Sessions
    tokens: TokenCheck | None
    limiter: LoginLimiter


CONTEXT = web.AppKey("console", ConsoleContext)
SESSION = web.RequestKey("console.session", Session)


class BadInput(ValueError):
    """A request parameter the console cannot use; the message names it."""


def context(request: web.Request) -> ConsoleContext:
    return request.app[CONTEXT]


def operator(request: web.Request) -> str:
    session = request.get(SESSION)
    return session.operator if session is not None else "anonymous"


def reply(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda v: json.dumps(v, default=str))


async def body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput("the request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadInput("the request body must be a JSON object")
    return data


def text_field(data: dict[str, Any], name: str, max_length: int = 2000) -> str:
    value = data.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadInput(f"{name}: must be text")
    if len(value) > max_length:
        raise BadInput(f"{name}: at most {max_length} characters")
    return value.strip()


def page_size(request: web.Request, default: int, maximum: int) -> int:
    raw = request.query.get("page_size", "")
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise BadInput(f"page_size: a whole number from 1 to {maximum}")
    return int(raw)
