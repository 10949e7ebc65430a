"""AnomalyService servicer: the anomaly store over gRPC.

Agents, models, alerts and exports arrive with their own modules; until a method has a
real implementation it answers UNIMPLEMENTED (the generated base class's behaviour).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

from anomaly_svc.config import AnomalyServiceConfig
from anomaly_svc.store import (
    AnomalyQuery,
    AnomalyRecord,
    AnomalyStore,
    Changes,
    Label,
    PageTokenError,
    Status,
)
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc, event_pb2
from mesh import AccessPolicy, ServiceRuntime
from mesh.errors import abort_invalid
from mesh.timeutil import is_set, ns_to_ts, ts_to_ns
from mesh.types import Context

log = logging.getLogger(__name__)
SERVICE_NAME = anomaly_pb2.DESCRIPTOR.services_by_name["AnomalyService"].full_name
# Every method is an operator RPC (the policy's default).
POLICY = AccessPolicy(methods={})

_STATUS_TO_PROTO = {
    Status.OPEN: anomaly_pb2.ANOMALY_STATUS_OPEN,
    Status.ACKNOWLEDGED: anomaly_pb2.ANOMALY_STATUS_ACKNOWLEDGED,
    Status.RESOLVED: anomaly_pb2.ANOMALY_STATUS_RESOLVED,
}
_STATUS_FROM_PROTO = {value: key for key, value in _STATUS_TO_PROTO.items()}
_LABEL_TO_PROTO = {
    Label.NONE: anomaly_pb2.OPERATOR_LABEL_UNSPECIFIED,
    Label.TRUE_POSITIVE: anomaly_pb2.OPERATOR_LABEL_TRUE_POSITIVE,
    Label.FALSE_POSITIVE: anomaly_pb2.OPERATOR_LABEL_FALSE_POSITIVE,
}
_LABEL_FROM_PROTO = {value: key for key, value in _LABEL_TO_PROTO.items()}
UPDATABLE_FIELDS = ("status", "resolution", "notes", "label")


def to_proto(record: AnomalyRecord) -> anomaly_pb2.Anomaly:
    anomaly = anomaly_pb2.Anomaly(
        id=record.id,
        agent=record.agent,
        host=record.host,
        type=record.type,
        severity=event_pb2.Severity.ValueType(record.severity + 1),
        confidence=record.confidence,
        description=record.description,
        features=record.features,
        status=_STATUS_TO_PROTO[record.status],
        synced=record.synced,
        resolution=record.resolution,
        notes=record.notes,
        label=_LABEL_TO_PROTO[record.label],
        dedupe_key=record.dedupe_key,
        count=record.count,
        model_version=record.model_version,
        event_ids=record.event_ids,
    )
    for ns, target in (
        (record.time_ns, anomaly.time),
        (record.created_ns, anomaly.create_time),
        (record.updated_ns, anomaly.update_time),
        (record.first_seen_ns, anomaly.first_seen_time),
        (record.last_seen_ns, anomaly.last_seen_time),
    ):
        ns_to_ts(ns, target)
    return anomaly


class AnomalyServicer(anomaly_pb2_grpc.AnomalyServiceServicer):
    def __init__(self, store: AnomalyStore, default_page: int, max_page: int) -> None:
        self.store = store
        self.default_page = default_page
        self.max_page = max_page

    async def ListAnomalies(
        self, request: anomaly_pb2.ListAnomaliesRequest, context: Context
    ) -> anomaly_pb2.ListAnomaliesResponse:
        if request.page_size < 0:
            await abort_invalid(context, "page_size", "must not be negative")
        statuses = []
        for position, value in enumerate(request.statuses):
            if value not in _STATUS_FROM_PROTO:
                await abort_invalid(context, f"statuses[{position}]", "unknown status")
            statuses.append(_STATUS_FROM_PROTO[value])
        query = AnomalyQuery(
            agents=list(request.agents),
            hosts=list(request.hosts),
            max_level=request.min_severity - 1 if request.min_severity else None,
            statuses=statuses,
            start_ns=ts_to_ns(request.start_time) if is_set(request.start_time) else None,
            end_ns=ts_to_ns(request.end_time) if is_set(request.end_time) else None,
        )
        size = min(request.page_size or self.default_page, self.max_page)
        try:
            records, token = await self.store.list(query, size, request.page_token)
        except PageTokenError as exc:
            await abort_invalid(context, "page_token", str(exc))
        return anomaly_pb2.ListAnomaliesResponse(
            anomalies=[to_proto(r) for r in records], next_page_token=token
        )

    async def GetAnomaly(
        self, request: anomaly_pb2.GetAnomalyRequest, context: Context
    ) -> anomaly_pb2.GetAnomalyResponse:
        record = await self._existing(request.id, context)
        return anomaly_pb2.GetAnomalyResponse(anomaly=to_proto(record))

    async def UpdateAnomaly(
        self, request: anomaly_pb2.UpdateAnomalyRequest, context: Context
    ) -> anomaly_pb2.UpdateAnomalyResponse:
        await self._existing(request.id, context)
        changes = await _changes(request, context)
        record = await self.store.update(request.id, changes)
        assert record is not None
        log.info(
            "anomaly updated",
            extra={"anomaly_id": request.id, "changes": [k for k, v in vars(changes).items() if v]},
        )
        return anomaly_pb2.UpdateAnomalyResponse(anomaly=to_proto(record))

    async def _existing(self, anomaly_id: str, context: Context) -> AnomalyRecord:
        if not anomaly_id:
            await abort_invalid(context, "id", "required")
        record = await self.store.get(anomaly_id)
        if record is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no anomaly with id {anomaly_id!r}")
        assert record is not None
        return record

    # Detection agents, models, alerts and exports land with the anomaly-detection work;
    # until then these answer UNIMPLEMENTED with a message saying so.
    async def WatchAlerts(
        self, request: anomaly_pb2.WatchAlertsRequest, context: Context
    ) -> AsyncIterator[anomaly_pb2.WatchAlertsResponse]:
        await _not_yet(context, "WatchAlerts")
        yield anomaly_pb2.WatchAlertsResponse()

    async def ListAgents(
        self, request: anomaly_pb2.ListAgentsRequest, context: Context
    ) -> anomaly_pb2.ListAgentsResponse:
        await _not_yet(context, "ListAgents")

    async def RunAnalysis(
        self, request: anomaly_pb2.RunAnalysisRequest, context: Context
    ) -> anomaly_pb2.RunAnalysisResponse:
        await _not_yet(context, "RunAnalysis")

    async def ListModels(
        self, request: anomaly_pb2.ListModelsRequest, context: Context
    ) -> anomaly_pb2.ListModelsResponse:
        await _not_yet(context, "ListModels")

    async def ReloadModels(
        self, request: anomaly_pb2.ReloadModelsRequest, context: Context
    ) -> anomaly_pb2.ReloadModelsResponse:
        await _not_yet(context, "ReloadModels")

    async def CreateExport(
        self, request: anomaly_pb2.CreateExportRequest, context: Context
    ) -> anomaly_pb2.CreateExportResponse:
        await _not_yet(context, "CreateExport")

    async def GetExport(
        self, request: anomaly_pb2.GetExportRequest, context: Context
    ) -> anomaly_pb2.GetExportResponse:
        await _not_yet(context, "GetExport")

    async def ListExports(
        self, request: anomaly_pb2.ListExportsRequest, context: Context
    ) -> anomaly_pb2.ListExportsResponse:
        await _not_yet(context, "ListExports")

    async def DownloadExport(
        self, request: anomaly_pb2.DownloadExportRequest, context: Context
    ) -> AsyncIterator[anomaly_pb2.DownloadExportResponse]:
        await _not_yet(context, "DownloadExport")
        yield anomaly_pb2.DownloadExportResponse()

    async def DeleteExport(
        self, request: anomaly_pb2.DeleteExportRequest, context: Context
    ) -> anomaly_pb2.DeleteExportResponse:
        await _not_yet(context, "DeleteExport")


async def _not_yet(context: Context, method: str) -> NoReturn:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED,
        f"AnomalyService.{method} is not available in this build of the anomaly service",
    )
    raise AssertionError("unreachable")


async def _changes(request: anomaly_pb2.UpdateAnomalyRequest, context: Context) -> Changes:
    paths = list(request.update_mask.paths)
    for path in paths:
        if path not in UPDATABLE_FIELDS:
            await abort_invalid(
                context,
                "update_mask",
                f"{path!r} cannot be updated ({', '.join(UPDATABLE_FIELDS)})",
            )
    if not paths:
        paths = [
            name
            for name, value in (
                ("status", request.status),
                ("resolution", request.resolution),
                ("notes", request.notes),
                ("label", request.label),
            )
            if value
        ]
    if "status" in paths and request.status not in _STATUS_FROM_PROTO:
        await abort_invalid(context, "status", "must be OPEN, ACKNOWLEDGED or RESOLVED")
    return Changes(
        status=_STATUS_FROM_PROTO[request.status] if "status" in paths else None,
        resolution=request.resolution if "resolution" in paths else None,
        notes=request.notes if "notes" in paths else None,
        label=_LABEL_FROM_PROTO[request.label] if "label" in paths else None,
    )


class AnomalyApp:
    def __init__(self, config: AnomalyServiceConfig) -> None:
        self.config = config
        self.store = AnomalyStore(config.store.path)
        self.servicer = AnomalyServicer(
            self.store, config.store.default_page_size, config.store.max_page_size
        )
        self.runtime = ServiceRuntime(
            name="anomaly",
            config=config,
            policy=POLICY,
            service_names=[SERVICE_NAME],
            register=lambda server: anomaly_pb2_grpc.add_AnomalyServiceServicer_to_server(
                self.servicer, server
            ),
        )

    async def open(self) -> None:
        await self.store.open()
        await self.runtime.set_serving(True)

    async def close(self) -> None:
        await self.store.close()


def build(config: AnomalyServiceConfig) -> AnomalyApp:
    return AnomalyApp(config)
