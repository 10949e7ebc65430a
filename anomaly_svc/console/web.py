"""The console's HTTP server: pages, static assets and the JSON API, on the service's loop.

Every request passes the same guards: security headers, no CORS unless the origin is
configured, a session for everything but the login, and for every mutating request a
same-origin (or configured) ``Origin``, a JSON body and the session's CSRF token.
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from anomaly_svc.console import (
    routes_anomalies,
    routes_events,
    routes_exports,
    routes_models,
    routes_monitoring,
    routes_session,
)
from anomaly_svc.console.auth import CSRF_HEADER, SESSION_COOKIE
from anomaly_svc.console.config import ConsoleSection
from anomaly_svc.console.context import CONTEXT, SESSION, BadInput, ConsoleContext, reply
from anomaly_svc.console.mesh_client import MeshError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
PUBLIC_API = frozenset({"/api/login", "/api/login/certificate", "/api/login/options"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PAGES = frozenset({"/", "/index.html"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return reply({"error": message}, status)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mesh failures and bad input as messages a person can act on; never a traceback."""
    try:
        return await handler(request)
    except MeshError as exc:
        return _error(exc.http_status, exc.message)
    except BadInput as exc:
        return _error(400, f"Check your input: {exc}")
    except web.HTTPException as exc:
        api = request.path.startswith("/api/")
        if not api or exc.status < 400 or exc.content_type == "application/json":
            raise
        return _error(exc.status, f"{exc.reason}.")
    except (ConnectionError, TimeoutError):
        raise
    except Exception:
        reference = secrets.token_hex(4)
        log.exception("console request failed", extra={"reference": reference})
        return _error(
            500,
            f"Something went wrong in the console (reference {reference}) — the anomaly "
            "service's log has the details; try again.",
        )


def _same_origin(request: web.Request, origin: str) -> bool:
    return origin == f"{request.scheme}://{request.host}"


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx: ConsoleContext = request.app[CONTEXT]
    origin = request.headers.get("Origin")
    allowed_origin = origin is not None and origin in ctx.config.allowed_origins
    if request.method == "OPTIONS":
        if origin is None or not allowed_origin:
            return _error(403, "Cross-origin requests are not allowed.")
        return _cors(web.Response(status=204), origin, preflight=True)
    session = ctx.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is not None:
        request[SESSION] = session
    refusal = _refusal(request, origin, allowed_origin, session is not None)
    if refusal is not None:
        return refusal
    response = await handler(request)
    if allowed_origin and origin is not None and not response.prepared:
        _cors(response, origin, preflight=False)
    return response


def _refusal(
    request: web.Request, origin: str | None, allowed_origin: bool, logged_in: bool
) -> web.StreamResponse | None:
    path = request.path
    if path in PAGES and not logged_in:
        raise web.HTTPFound("/login")
    if not path.startswith("/api/"):
        return None
    if path not in PUBLIC_API and not logged_in:
        return _error(401, "Log in first.")
    if request.method in SAFE_METHODS:
        return None
    if origin is not None and not (allowed_origin or _same_origin(request, origin)):
        log.warning("cross-site request refused", extra={"origin": origin, "path": path})
        return _error(403, "Cross-site request refused.")
    if path in PUBLIC_API:
        return None
    session = request[SESSION]
    if not session.csrf_matches(request.headers.get(CSRF_HEADER)):
        log.warning("request without a valid CSRF token refused", extra={"path": path})
        return _error(403, "This request lacks the console's CSRF token — reload the page.")
    if request.method != "DELETE" and request.content_type != "application/json":
        return _error(415, "Send JSON (Content-Type: application/json).")
    return None


def _cors(response: web.StreamResponse, origin: str, preflight: bool) -> web.StreamResponse:
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers["Vary"] = "Origin"
    if preflight:
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
        response.headers["Access-Control-Allow-Headers"] = f"Content-Type, {CSRF_HEADER}"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def login_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "login.html")


def build_app(ctx: ConsoleContext) -> web.Application:
    app = web.Application(middlewares=[security_headers, errors, guard], client_max_size=1 << 20)
    app[CONTEXT] = ctx
    app.router.add_get("/", index)
    app.router.add_get("/index.html", index)
    app.router.add_get("/login", login_page)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    for module in (
        routes_session,
        routes_anomalies,
        routes_events,
        routes_models,
        routes_monitoring,
        routes_exports,
    ):
        module.add_routes(app)
    return app


def ssl_context(config: ConsoleSection) -> ssl.SSLContext | None:
    tls = config.tls
    if tls.cert_file is None or tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
