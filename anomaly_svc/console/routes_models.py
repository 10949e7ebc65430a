"""Models: what each agent serves; reload; roll back to the previous version."""

from __future__ import annotations

from aiohttp import web

from anomaly_svc.console.audit import audit
from anomaly_svc.console.context import BadInput, body, context, operator, reply, text_field
from anomaly_svc.console.mesh_client import MeshError
from anomaly_svc.console.views import agent_json, model_json
from gen.edgebot.v1 import anomaly_pb2


async def list_models(request: web.Request) -> web.Response:
    clients = context(request).clients
    models = await clients.call(
        "anomaly", clients.anomaly.ListModels, anomaly_pb2.ListModelsRequest()
    )
    agents = await clients.call(
        "anomaly", clients.anomaly.ListAgents, anomaly_pb2.ListAgentsRequest()
    )
    return reply(
        {
            "models": [model_json(m) for m in models.models],
            "agents": [agent_json(a) for a in agents.agents],
        }
    )


async def reload_models(request: web.Request) -> web.Response:
    clients = context(request).clients
    agent = text_field(await body(request), "agent", max_length=200)
    who = operator(request)
    try:
        response = await clients.call(
            "anomaly",
            clients.anomaly.ReloadModels,
            anomaly_pb2.ReloadModelsRequest(agents=[agent] if agent else []),
        )
    except MeshError as exc:
        audit(who, "reload-models", f"failed: {exc.message}", agent=agent or "(all)")
        raise
    audit(who, "reload-models", agent=agent or "(all)")
    return reply({"models": [model_json(m) for m in response.models]})


async def roll_back(request: web.Request) -> web.Response:
    clients = context(request).clients
    data = await body(request)
    agent = text_field(data, "agent", max_length=200)
    version = text_field(data, "version", max_length=200)
    if not agent:
        raise BadInput("agent: required")
    who = operator(request)
    try:
        response = await clients.call(
            "anomaly",
            clients.anomaly.RollbackModel,
            anomaly_pb2.RollbackModelRequest(agent=agent, version=version),
        )
    except MeshError as exc:
        audit(who, "rollback-model", f"failed: {exc.message}", agent=agent, version=version)
        raise
    serving = next((m.version for m in response.models if m.pinned), "")
    audit(who, "rollback-model", agent=agent, version=serving)
    return reply({"models": [model_json(m) for m in response.models]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/models", list_models)
    app.router.add_post("/api/models/reload", reload_models)
    app.router.add_post("/api/models/rollback", roll_back)
