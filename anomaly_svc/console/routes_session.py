"""Log in (token or operator certificate), who am I, log out."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from anomaly_svc.console.audit import audit
from anomaly_svc.console.auth import SESSION_COOKIE, Session
from anomaly_svc.console.context import SESSION, body, context, reply, text_field
from mesh.identity import Kind, principal_from_spiffe


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


def _session_json(session: Session) -> dict[str, Any]:
    return {"operator": session.operator, "method": session.method, "csrf": session.csrf_token}


def _logged_in(request: web.Request, session: Session) -> web.Response:
    response = reply(_session_json(session))
    response.set_cookie(
        SESSION_COOKIE,
        session.id,
        httponly=True,
        samesite="Strict",
        secure=context(request).config.tls.enabled,
        path="/",
        max_age=int(context(request).config.session_ttl_s),
    )
    return response


async def login(request: web.Request) -> web.Response:
    ctx = context(request)
    client = client_address(request)
    if ctx.limiter.blocked(client):
        audit("anonymous", "login", "refused: too many failures", client=client)
        return reply({"error": "Too many failed logins — wait a minute and try again."}, 429)
    token = text_field(await body(request), "token", max_length=512)
    name = ctx.tokens.operator_for(token) if ctx.tokens is not None and token else None
    if name is None:
        ctx.limiter.failed(client)
        audit("anonymous", "login", "refused: unknown token", client=client)
        return reply({"error": "That token is not valid — check it and try again."}, 401)
    session = ctx.sessions.open(name, "token")
    audit(name, "login", client=client)
    return _logged_in(request, session)


def certificate_operator(request: web.Request) -> str | None:
    """The operator named by the verified client certificate of this connection, if any."""
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    for kind, value in (peer or {}).get("subjectAltName", ()):
        if kind == "URI":
            principal = principal_from_spiffe(value)
            if principal.kind is Kind.OPERATOR:
                return principal.name
    return None


async def login_with_certificate(request: web.Request) -> web.Response:
    name = certificate_operator(request)
    client = client_address(request)
    if name is None:
        audit("anonymous", "login-certificate", "refused: no operator certificate", client=client)
        return reply(
            {"error": "Your browser sent no operator certificate — log in with a token."}, 401
        )
    session = context(request).sessions.open(name, "certificate")
    audit(name, "login-certificate", client=client)
    return _logged_in(request, session)


async def whoami(request: web.Request) -> web.Response:
    session: Session = request[SESSION]
    return reply(_session_json(session))


async def options(request: web.Request) -> web.Response:
    """What the login page can offer."""
    ctx = context(request)
    return reply(
        {
            "token": ctx.tokens is not None,
            "certificate": certificate_operator(request) is not None,
        }
    )


async def logout(request: web.Request) -> web.Response:
    session: Session = request[SESSION]
    context(request).sessions.close(session.id)
    audit(session.operator, "logout", client=client_address(request))
    response = reply({"ok": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/login/certificate", login_with_certificate)
    app.router.add_get("/api/login/options", options)
    app.router.add_get("/api/session", whoami)
    app.router.add_post("/api/logout", logout)
