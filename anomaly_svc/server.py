"""AnomalyService servicer: the anomaly store, detection agents, models, alerts and exports
over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from anomaly_svc.alerts import AlertFilter, AlertHub, AnomalyRecorder, Subscription
from anomaly_svc.config import AnomalyServiceConfig
from anomaly_svc.console import Console
from anomaly_svc.export import (
    ExportError,
    ExportManager,
    ExportNotFound,
    InvalidSpec,
    NotReady,
    PartCorrupt,
    QueueFull,
)
from anomaly_svc.export.convert import export_to_proto, spec_from_proto
from anomaly_svc.models.manager import ModelError, ModelManager, ModelState, ModelStatus
from anomaly_svc.notify import Notifier
from anomaly_svc.scheduler import CycleResult, EventSource, ResourceMonitor, Scheduler
from anomaly_svc.sources.log_entries import log_entries_feeds
from anomaly_svc.store import (
    AlertKind,
    AlertRecord,
    AnomalyQuery,
    AnomalyRecord,
    AnomalyStore,
    Changes,
    Label,
    PageTokenError,
    Status,
)
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc, event_pb2, storage_pb2, storage_pb2_grpc
from mesh import AccessPolicy, ServiceRuntime, open_channel
from mesh.errors import abort_invalid, abort_with_retry
from mesh.timeutil import is_set, now_ns, ns_to_ts, ts_to_ns
from mesh.types import Context

log = logging.getLogger(__name__)
SERVICE_NAME = anomaly_pb2.DESCRIPTOR.services_by_name["AnomalyService"].full_name
# Every method is an operator RPC (the policy's default).
POLICY = AccessPolicy(methods={})
STORAGE_SERVICE = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name

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
_ALERT_KIND_TO_PROTO = {
    AlertKind.NEW: anomaly_pb2.ALERT_KIND_NEW,
    AlertKind.ESCALATED: anomaly_pb2.ALERT_KIND_ESCALATED,
}
_MODEL_STATE_TO_PROTO = {
    ModelState.LOADED: anomaly_pb2.MODEL_STATE_LOADED,
    ModelState.REFUSED: anomaly_pb2.MODEL_STATE_REFUSED,
    ModelState.RETIRED: anomaly_pb2.MODEL_STATE_RETIRED,
}
REPLAY_PAGE = 500


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


@dataclass
class Detection:
    """What the detection RPCs use; made in AnomalyApp.open() on the running loop."""

    scheduler: Scheduler
    models: ModelManager
    hub: AlertHub
    heartbeat_s: float
    defer_on_demand: bool


class AnomalyServicer(anomaly_pb2_grpc.AnomalyServiceServicer):
    def __init__(self, store: AnomalyStore, default_page: int, max_page: int) -> None:
        self.store = store
        self.default_page = default_page
        self.max_page = max_page
        self.detection: Detection | None = None
        self.exports: ExportManager | None = None

    async def _ready(self, context: Context) -> Detection:
        if self.detection is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the anomaly service is starting")
        assert self.detection is not None
        return self.detection

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

    async def WatchAlerts(
        self, request: anomaly_pb2.WatchAlertsRequest, context: Context
    ) -> AsyncIterator[anomaly_pb2.WatchAlertsResponse]:
        detection = await self._ready(context)
        after = 0
        if request.after_alert_id:
            if not request.after_alert_id.isdigit():
                await abort_invalid(context, "after_alert_id", "not an alert id of this service")
            after = int(request.after_alert_id)
        heartbeat_s = detection.heartbeat_s
        if request.HasField("heartbeat_interval"):
            heartbeat_s = request.heartbeat_interval.ToTimedelta().total_seconds()
            if heartbeat_s <= 0:
                await abort_invalid(context, "heartbeat_interval", "must be positive")
        wanted = AlertFilter(
            max_level=request.min_severity - 1 if request.min_severity else None,
            agents=list(request.agents),
            hosts=list(request.hosts),
        )
        hub = detection.hub
        subscription = hub.subscribe()
        try:
            # A stream that starts now starts after the newest alert stored once subscribed:
            # anything newer comes through the subscription.
            last = after if request.after_alert_id else await self.store.last_alert_id()
            if request.after_alert_id:
                async for alert in self._replay(after):
                    last = alert.alert_id
                    if wanted.matches(alert.anomaly):
                        yield anomaly_pb2.WatchAlertsResponse(alert=alert_to_proto(alert))
            async for response in live_alerts(subscription, wanted, last, heartbeat_s):
                yield response
            if subscription.overflowed:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"watcher fell more than {hub.buffer} alerts behind; "
                    "reconnect with after_alert_id set to the last alert received",
                )
        finally:
            hub.unsubscribe(subscription)

    async def _replay(self, after: int) -> AsyncIterator[AlertRecord]:
        while True:
            page = await self.store.alerts_after(after, REPLAY_PAGE)
            for alert in page:
                yield alert
            if len(page) < REPLAY_PAGE:
                return
            after = page[-1].alert_id

    async def ListAgents(
        self, request: anomaly_pb2.ListAgentsRequest, context: Context
    ) -> anomaly_pb2.ListAgentsResponse:
        detection = await self._ready(context)
        infos = []
        for name, runner in detection.scheduler.runners.items():
            info = anomaly_pb2.AgentInfo(
                name=name,
                enabled=runner.settings.enabled,
                services=list(runner.agent.services),
                types=list(runner.agent.event_types),
                model_version=runner.model_version,
                anomalies_found=runner.anomalies_found,
                last_error=runner.last_error,
                deferred_cycles=runner.deferred_cycles,
                last_deferred_reason=runner.last_deferred_reason,
            )
            if runner.last_deferred_ns:
                ns_to_ts(runner.last_deferred_ns, info.last_deferred_time)
            info.interval.FromTimedelta(dt.timedelta(seconds=runner.settings.interval_s))
            if runner.last_run_ns:
                ns_to_ts(runner.last_run_ns, info.last_run_time)
            if runner.settings.enabled and runner.next_run_ns:
                ns_to_ts(runner.next_run_ns, info.next_run_time)
            infos.append(info)
        return anomaly_pb2.ListAgentsResponse(agents=infos)

    async def RunAnalysis(
        self, request: anomaly_pb2.RunAnalysisRequest, context: Context
    ) -> anomaly_pb2.RunAnalysisResponse:
        detection = await self._ready(context)
        runners = detection.scheduler.runners
        for position, name in enumerate(request.agents):
            if name not in runners:
                await abort_invalid(
                    context,
                    f"agents[{position}]",
                    f"no agent named {name!r} ({', '.join(runners)})",
                )
        start = ts_to_ns(request.start_time) if is_set(request.start_time) else None
        end = ts_to_ns(request.end_time) if is_set(request.end_time) else None
        if start is not None and end is not None and end <= start:
            await abort_invalid(context, "end_time", "must be after start_time")
        if end is not None and start is None:
            await abort_invalid(context, "start_time", "required when end_time is set")
        names = list(request.agents) or [n for n, r in runners.items() if r.settings.enabled]
        results = await asyncio.gather(
            *(
                detection.scheduler.run(
                    runners[name], scheduled=False, start_ns=start, end_ns=end,
                    defer_when_busy=detection.defer_on_demand,
                )
                for name in names
            )
        )  # fmt: skip
        return anomaly_pb2.RunAnalysisResponse(results=[result_to_proto(r) for r in results])

    async def ListModels(
        self, request: anomaly_pb2.ListModelsRequest, context: Context
    ) -> anomaly_pb2.ListModelsResponse:
        detection = await self._ready(context)
        statuses = detection.models.statuses(list(request.agents))
        return anomaly_pb2.ListModelsResponse(models=[model_to_proto(s) for s in statuses])

    async def ReloadModels(
        self, request: anomaly_pb2.ReloadModelsRequest, context: Context
    ) -> anomaly_pb2.ReloadModelsResponse:
        detection = await self._ready(context)
        statuses = await detection.models.rescan(list(request.agents), force=True)
        return anomaly_pb2.ReloadModelsResponse(models=[model_to_proto(s) for s in statuses])

    async def RollbackModel(
        self, request: anomaly_pb2.RollbackModelRequest, context: Context
    ) -> anomaly_pb2.RollbackModelResponse:
        detection = await self._ready(context)
        if not request.agent:
            await abort_invalid(context, "agent", "required")
        try:
            statuses = await detection.models.roll_back(request.agent, request.version)
        except ModelError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot roll back: {exc}")
        log.info(
            "model rollback requested",
            extra={"agent": request.agent, "version": request.version or "(previous)"},
        )
        return anomaly_pb2.RollbackModelResponse(models=[model_to_proto(s) for s in statuses])

    async def _exports(self, context: Context) -> ExportManager:
        if self.exports is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the anomaly service is starting")
        assert self.exports is not None
        return self.exports

    async def CreateExport(
        self, request: anomaly_pb2.CreateExportRequest, context: Context
    ) -> anomaly_pb2.CreateExportResponse:
        exports = await self._exports(context)
        async with export_errors(context):
            record = await exports.create(spec_from_proto(request.spec))
        return anomaly_pb2.CreateExportResponse(export=export_to_proto(record))

    async def GetExport(
        self, request: anomaly_pb2.GetExportRequest, context: Context
    ) -> anomaly_pb2.GetExportResponse:
        exports = await self._exports(context)
        if not request.id:
            await abort_invalid(context, "id", "required")
        async with export_errors(context):
            record = await exports.get(request.id)
        return anomaly_pb2.GetExportResponse(export=export_to_proto(record))

    async def ListExports(
        self, request: anomaly_pb2.ListExportsRequest, context: Context
    ) -> anomaly_pb2.ListExportsResponse:
        exports = await self._exports(context)
        if request.page_size < 0:
            await abort_invalid(context, "page_size", "must not be negative")
        if request.page_token and not _is_uuid(request.page_token):
            await abort_invalid(context, "page_token", "not a page token issued by this service")
        size = min(request.page_size or self.default_page, self.max_page)
        records, token = await exports.page(size, request.page_token)
        return anomaly_pb2.ListExportsResponse(
            exports=[export_to_proto(r) for r in records], next_page_token=token
        )

    async def DownloadExport(
        self, request: anomaly_pb2.DownloadExportRequest, context: Context
    ) -> AsyncIterator[anomaly_pb2.DownloadExportResponse]:
        exports = await self._exports(context)
        if not request.id:
            await abort_invalid(context, "id", "required")
        async with export_errors(context):
            async for chunk in exports.download(request.id, request.part_index):
                yield anomaly_pb2.DownloadExportResponse(
                    data=chunk.data, offset=chunk.offset, sha256=chunk.sha256, last=chunk.last
                )

    async def DeleteExport(
        self, request: anomaly_pb2.DeleteExportRequest, context: Context
    ) -> anomaly_pb2.DeleteExportResponse:
        exports = await self._exports(context)
        if not request.id:
            await abort_invalid(context, "id", "required")
        async with export_errors(context):
            await exports.delete(request.id)
        return anomaly_pb2.DeleteExportResponse()


@contextlib.asynccontextmanager
async def export_errors(context: Context) -> AsyncIterator[None]:
    """Export errors as status codes naming what is wrong."""
    try:
        yield
    except InvalidSpec as exc:
        await abort_invalid(context, exc.field, exc.reason)
    except ExportNotFound as exc:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except NotReady as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except QueueFull as exc:
        await abort_with_retry(
            context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), 30.0, "EXPORT_QUEUE_FULL"
        )
    except PartCorrupt as exc:
        await context.abort(grpc.StatusCode.DATA_LOSS, str(exc))
    except ExportError as exc:
        await context.abort(grpc.StatusCode.INTERNAL, str(exc))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


async def live_alerts(
    subscription: Subscription, wanted: AlertFilter, last: int, heartbeat_s: float
) -> AsyncIterator[anomaly_pb2.WatchAlertsResponse]:
    """Live alerts after ``last`` (ids up to it were replayed): a heartbeat first, then
    alerts, and heartbeats while idle; each heartbeat names the last alert id handled."""
    yield _heartbeat(last)
    while True:
        if subscription.overflowed and subscription.queue.empty():
            return
        try:
            alert = await asyncio.wait_for(subscription.queue.get(), heartbeat_s)
        except TimeoutError:
            yield _heartbeat(last)
            continue
        if alert is None:
            return
        if alert.alert_id <= last:
            continue
        last = alert.alert_id
        if wanted.matches(alert.anomaly):
            yield anomaly_pb2.WatchAlertsResponse(alert=alert_to_proto(alert))


def _heartbeat(last_alert_id: int) -> anomaly_pb2.WatchAlertsResponse:
    beat = anomaly_pb2.WatchAlertsResponse(
        heartbeat=anomaly_pb2.Heartbeat(last_alert_id=str(last_alert_id) if last_alert_id else "")
    )
    ns_to_ts(now_ns(), beat.heartbeat.time)
    return beat


def alert_to_proto(alert: AlertRecord) -> anomaly_pb2.Alert:
    message = anomaly_pb2.Alert(
        alert_id=str(alert.alert_id),
        kind=_ALERT_KIND_TO_PROTO[alert.kind],
        anomaly=to_proto(alert.anomaly),
    )
    ns_to_ts(alert.time_ns, message.time)
    return message


def result_to_proto(result: CycleResult) -> anomaly_pb2.AnalysisResult:
    message = anomaly_pb2.AnalysisResult(
        agent=result.agent,
        events_analyzed=result.events_analyzed,
        anomalies_found=result.anomalies_found,
        deferred=result.deferred,
        deferred_reason=result.deferred_reason,
        error=result.error,
    )
    message.duration.FromTimedelta(dt.timedelta(seconds=result.duration_s))
    return message


def model_to_proto(status: ModelStatus) -> anomaly_pb2.ModelInfo:
    metadata = status.metadata
    info = anomaly_pb2.ModelInfo(
        agent=status.agent,
        version=status.version,
        path=str(status.path),
        state=_MODEL_STATE_TO_PROTO[status.state],
        metrics={k: float(v) for k, v in metadata.get("metrics", {}).items()},
        feature_names=list(metadata.get("feature_names", [])),
        threshold=float(metadata.get("threshold", 0.0)),
        error=status.error,
        pinned=status.pinned,
    )
    if status.load_ns:
        ns_to_ts(status.load_ns, info.load_time)
    for key, target in (("data_start", info.data_start_time), ("data_end", info.data_end_time)):
        if key in metadata:
            target.FromDatetime(dt.datetime.fromisoformat(metadata[key].replace("Z", "+00:00")))
    return info


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
        self.runtime.before_drain.append(self._end_streams)
        self.channel: grpc.aio.Channel | None = None
        self.detection: Detection | None = None
        self.exports: ExportManager | None = None
        self.notifier: Notifier | None = None
        self.console: Console | None = None

    async def open(self) -> None:
        config = self.config
        await self.store.open()
        self.channel = open_channel(
            config.storage.addresses,
            config.tls,
            retry_services=[STORAGE_SERVICE],
            server_name=config.storage.tls_server_name,
        )
        storage = storage_pb2_grpc.StorageServiceStub(self.channel)
        source = EventSource(
            storage,
            config.cache,
            config.analysis.page_size,
            config.analysis.max_events,
            config.storage.timeout_s,
        )
        hub = AlertHub(config.alerts.subscriber_buffer)
        self.notifier = Notifier(config.notifications, self.store, hub)
        await self.notifier.start()
        models = ModelManager(config.models.dir, config.models.poll_interval_s)
        await models.start()
        scheduler = Scheduler(
            config.agents,
            source,
            AnomalyRecorder(self.store, hub, config.alerts.escalate_counts),
            models,
            ResourceMonitor(config.resources),
        )
        scheduler.add_feeds(log_entries_feeds(config.log_entries, config.store.path))
        scheduler.start()
        self.detection = Detection(
            scheduler, models, hub, config.alerts.heartbeat_s, config.resources.defer_on_demand
        )
        self.servicer.detection = self.detection
        self.exports = ExportManager(
            config.exports, config.exports_dir, storage, self.store, config.storage.timeout_s
        )
        await self.exports.open()
        self.servicer.exports = self.exports
        await self.runtime.set_serving(True)
        if config.console.enabled:
            self.console = Console(
                config.console,
                config.tls,
                f"{config.server.host}:{self.runtime.ports.grpc}",
                config.storage.addresses,
            )
            await self.console.start()

    async def _end_streams(self) -> None:
        if self.console is not None:
            await self.console.stop()
        if self.detection is not None:
            self.detection.hub.close()

    async def close(self) -> None:
        if self.console is not None:
            await self.console.stop()
        if self.exports is not None:
            await self.exports.close()
        if self.notifier is not None:
            await self.notifier.stop()
        if self.detection is not None:
            await self.detection.scheduler.stop()
            await self.detection.models.stop()
        if self.channel is not None:
            await self.channel.close()
        await self.store.close()


def build(config: AnomalyServiceConfig) -> AnomalyApp:
    return AnomalyApp(config)
