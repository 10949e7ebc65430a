"""The anomaly store and its RPCs: one row per ongoing anomaly, filters, paging, updates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from support import Pki, make_config, secure_channel

from anomaly_svc import AnomalyApp, AnomalyServiceConfig, build
from anomaly_svc.store import AnomalyRecord
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc, event_pb2
from mesh.app import running

BASE_NS = 1_767_323_045 * 10**9


@dataclass
class Anomalies:
    app: AnomalyApp
    stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub


@pytest.fixture
async def anomalies(pki: Pki, tmp_path: Path) -> AsyncIterator[Anomalies]:
    config = make_config(
        AnomalyServiceConfig, pki, "anomaly", store={"path": str(tmp_path / "a.db")}
    )
    async with running(build(config)) as app:
        async with secure_channel(app.runtime.ports.grpc, pki.operator()) as channel:
            yield Anomalies(app, anomaly_pb2_grpc.AnomalyServiceStub(channel))


def record(
    key: str, minute: int, level: int = 4, agent: str = "auth", host: str = "gw"
) -> AnomalyRecord:
    return AnomalyRecord(
        agent=agent,
        host=host,
        time_ns=BASE_NS + minute * 60 * 10**9,
        type="ssh_brute_force",
        severity=level,
        confidence=0.9,
        description=f"failed logins from {key}",
        dedupe_key=key,
        features={"failures": 12.0},
    )


async def test_same_dedupe_key_updates_one_row(anomalies: Anomalies) -> None:
    store = anomalies.app.store
    first, created = await store.record(record("203.0.113.7", 0, level=4))
    again, created_again = await store.record(record("203.0.113.7", 5, level=2))
    assert (created, created_again) == (True, False)
    assert again.id == first.id
    assert again.count == 2
    assert again.severity == 2
    assert again.last_seen_ns == BASE_NS + 5 * 60 * 10**9
    listed = await anomalies.stub.ListAnomalies(anomaly_pb2.ListAnomaliesRequest())
    assert [a.id for a in listed.anomalies] == [first.id]
    assert listed.anomalies[0].severity == event_pb2.SEVERITY_CRITICAL


async def test_list_filters_and_pages_newest_first(anomalies: Anomalies) -> None:
    store = anomalies.app.store
    for minute in range(7):
        await store.record(record(f"k{minute}", minute, level=3 if minute % 2 else 6))
    await store.record(record("other-agent", 9, agent="wifi"))
    seen: list[str] = []
    request = anomaly_pb2.ListAnomaliesRequest(agents=["auth"], page_size=3)
    while True:
        page = await anomalies.stub.ListAnomalies(request)
        seen += [a.dedupe_key for a in page.anomalies]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == [f"k{m}" for m in range(6, -1, -1)]
    severe = await anomalies.stub.ListAnomalies(
        anomaly_pb2.ListAnomaliesRequest(min_severity=event_pb2.SEVERITY_ERROR)
    )
    assert sorted(a.dedupe_key for a in severe.anomalies) == ["k1", "k3", "k5"]


async def test_update_status_resolution_and_label(anomalies: Anomalies) -> None:
    stored, _ = await anomalies.app.store.record(record("x", 0))
    reply = await anomalies.stub.UpdateAnomaly(
        anomaly_pb2.UpdateAnomalyRequest(
            id=stored.id,
            status=anomaly_pb2.ANOMALY_STATUS_RESOLVED,
            resolution="blocked at firewall",
            notes="source was a scanner",
            label=anomaly_pb2.OPERATOR_LABEL_TRUE_POSITIVE,
        )
    )
    fetched = await anomalies.stub.GetAnomaly(anomaly_pb2.GetAnomalyRequest(id=stored.id))
    for anomaly in (reply.anomaly, fetched.anomaly):
        assert anomaly.status == anomaly_pb2.ANOMALY_STATUS_RESOLVED
        assert anomaly.resolution == "blocked at firewall"
        assert anomaly.label == anomaly_pb2.OPERATOR_LABEL_TRUE_POSITIVE
    masked = await anomalies.stub.UpdateAnomaly(
        anomaly_pb2.UpdateAnomalyRequest(
            id=stored.id, notes="", update_mask=FieldMask(paths=["notes"])
        )
    )
    assert masked.anomaly.notes == ""
    assert masked.anomaly.resolution == "blocked at firewall"


async def test_unknown_id_and_bad_mask_are_clear_errors(anomalies: Anomalies) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await anomalies.stub.GetAnomaly(anomaly_pb2.GetAnomalyRequest(id="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    stored, _ = await anomalies.app.store.record(record("y", 0))
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await anomalies.stub.UpdateAnomaly(
            anomaly_pb2.UpdateAnomalyRequest(id=stored.id, update_mask=FieldMask(paths=["agent"]))
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "update_mask" in (bad.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as token:
        await anomalies.stub.ListAnomalies(anomaly_pb2.ListAnomaliesRequest(page_token="%%%"))
    assert token.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_anomalies_are_operator_only(anomalies: Anomalies, pki: Pki) -> None:
    async with secure_channel(anomalies.app.runtime.ports.grpc, pki.agent("site-a")) as channel:
        stub = anomaly_pb2_grpc.AnomalyServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListAnomalies(anomaly_pb2.ListAnomaliesRequest())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
