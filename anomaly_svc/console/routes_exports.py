"""Exports: create (what, range, format, compression), watch progress, download, delete."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
from aiohttp import web

from anomaly_svc.console.audit import audit
from anomaly_svc.console.context import BadInput, body, context, operator, page_size, reply
from anomaly_svc.console.mesh_client import MeshError, describe
from anomaly_svc.console.views import DATASETS, FORMATS, export_json, parse_time
from gen.edgebot.v1 import anomaly_pb2, storage_pb2


def export_spec(data: dict[str, Any]) -> anomaly_pb2.ExportSpec:
    datasets = data.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise BadInput(f"datasets: choose at least one of {', '.join(DATASETS)}")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise BadInput(f"datasets: unknown {unknown[0]!r} ({', '.join(DATASETS)})")
    fmt = data.get("format", "jsonl")
    if fmt not in FORMATS:
        raise BadInput(f"format: one of {', '.join(FORMATS)}")
    compression = data.get("compression", "none")
    if compression not in ("none", "gzip"):
        raise BadInput("compression: none or gzip")
    spec = anomaly_pb2.ExportSpec(
        datasets=[DATASETS[d] for d in datasets],  # type: ignore[misc]
        format=FORMATS[fmt],  # type: ignore[arg-type]
        gzip=compression == "gzip",
        filter=storage_pb2.EventFilter(),
    )
    for name, target in (("start", spec.filter.start_time), ("end", spec.filter.end_time)):
        raw = data.get(name)
        if raw:
            if not isinstance(raw, str):
                raise BadInput(f"{name}: an ISO 8601 time")
            try:
                target.CopyFrom(parse_time(raw, name))
            except ValueError as exc:
                raise BadInput(str(exc)) from None
    return spec


async def create_export(request: web.Request) -> web.Response:
    clients = context(request).clients
    spec = export_spec(await body(request))
    who = operator(request)
    try:
        response = await clients.call(
            "anomaly", clients.anomaly.CreateExport, anomaly_pb2.CreateExportRequest(spec=spec)
        )
    except MeshError as exc:
        audit(who, "create-export", f"failed: {exc.message}")
        raise
    export = export_json(response.export)
    audit(who, "create-export", export_id=export["id"], datasets=",".join(export["datasets"]),
          format=export["format"])  # fmt: skip
    return reply({"export": export}, 201)


async def list_exports(request: web.Request) -> web.Response:
    clients = context(request).clients
    response = await clients.call(
        "anomaly",
        clients.anomaly.ListExports,
        anomaly_pb2.ListExportsRequest(
            page_size=page_size(request, 50, 500), page_token=request.query.get("page_token", "")
        ),
    )
    return reply(
        {
            "exports": [export_json(e) for e in response.exports],
            "next_page_token": response.next_page_token,
        }
    )


async def get_export(request: web.Request) -> web.Response:
    clients = context(request).clients
    response = await clients.call(
        "anomaly",
        clients.anomaly.GetExport,
        anomaly_pb2.GetExportRequest(id=request.match_info["export_id"]),
    )
    return reply({"export": export_json(response.export)})


async def delete_export(request: web.Request) -> web.Response:
    clients = context(request).clients
    export_id = request.match_info["export_id"]
    who = operator(request)
    try:
        await clients.call(
            "anomaly", clients.anomaly.DeleteExport, anomaly_pb2.DeleteExportRequest(id=export_id)
        )
    except MeshError as exc:
        audit(who, "delete-export", f"failed: {exc.message}", export_id=export_id)
        raise
    audit(who, "delete-export", export_id=export_id)
    return reply({"deleted": export_id})


def _part_index(request: web.Request) -> int:
    raw = request.match_info["part"]
    if not raw.isdigit():
        raise BadInput("part: the index of a part of the export")
    return int(raw)


async def download_export(request: web.Request) -> web.StreamResponse:
    """Streams one part; a part whose SHA-256 differs from the server's is cut off unfinished."""
    ctx = context(request)
    clients = ctx.clients
    export_id = request.match_info["export_id"]
    index = _part_index(request)
    found = await clients.call(
        "anomaly", clients.anomaly.GetExport, anomaly_pb2.GetExportRequest(id=export_id)
    )
    part = next((p for p in found.export.parts if p.index == index), None)
    if part is None:
        raise BadInput(f"part: export {export_id} has no part {index}")
    who = operator(request)
    call = clients.anomaly.DownloadExport(
        anomaly_pb2.DownloadExportRequest(id=export_id, part_index=index),
        metadata=clients.metadata,
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{_safe_name(part.name)}"',
            "Content-Length": str(part.size_bytes),
            "Cache-Control": "no-store",
        }
    )
    digest = hashlib.sha256()
    try:
        async for chunk in call:
            if not response.prepared:
                await response.prepare(request)
            for start in range(0, len(chunk.data), ctx.config.download_chunk_bytes):
                piece = chunk.data[start : start + ctx.config.download_chunk_bytes]
                digest.update(piece)
                await response.write(piece)
            if chunk.last and chunk.sha256 and chunk.sha256 != digest.hexdigest():
                audit(who, "download-export", "failed: checksum mismatch", export_id=export_id)
                raise ConnectionAbortedError("export part checksum mismatch")
    except grpc.aio.AioRpcError as exc:
        audit(who, "download-export", f"failed: {exc.code().name}", export_id=export_id)
        if not response.prepared:
            raise describe("anomaly", exc) from None
        raise ConnectionAbortedError("export download failed midway") from None
    finally:
        call.cancel()
    if not response.prepared:
        await response.prepare(request)
    await response.write_eof()
    audit(who, "download-export", export_id=export_id, part=index)
    return response


def _safe_name(name: str) -> str:
    return "".join(c for c in name if c.isalnum() or c in "._-") or "export"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/exports", list_exports)
    app.router.add_post("/api/exports", create_export)
    app.router.add_get("/api/exports/{export_id}", get_export)
    app.router.add_delete("/api/exports/{export_id}", delete_export)
    app.router.add_get("/api/exports/{export_id}/parts/{part}", download_export)
