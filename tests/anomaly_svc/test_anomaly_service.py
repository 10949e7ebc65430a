"""The detection RPCs against a real in-process storage service over mTLS gRPC."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import pytest
from anomaly_mesh import Mesh, mesh
from anomaly_samples import HDFS, crowdsec_events, openwrt_events, syslog_events
from google.protobuf.duration_pb2 import Duration
from support import Pki, eventually

from anomaly_svc.alerts import AlertFilter, AlertHub
from anomaly_svc.models.datasets import load
from anomaly_svc.models.train import MODEL_FILE, train
from anomaly_svc.server import live_alerts
from anomaly_svc.store import AlertKind, AlertRecord, AnomalyRecord
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc, event_pb2


async def test_run_analysis_finds_the_expected_anomalies(pki: Pki, tmp_path: Path) -> None:
    async with mesh(pki, tmp_path) as m:
        await m.write(crowdsec_events("ssh-bf"))
        await m.write(crowdsec_events("sshd-success-logs"))
        await m.write(crowdsec_events("iptables-scan-multi-port"))
        await m.write(openwrt_events())
        results = await m.run("auth", "firewall", "wifi")
        assert {name: r.error for name, r in results.items()} == {
            "auth": "",
            "firewall": "",
            "wifi": "",
        }
        assert results["wifi"].anomalies_found == 2
        assert sorted(a.dedupe_key for a in await m.anomalies("auth")) == [
            "auth:brute_force:35.188.49.176",
            "auth:password_change:openwrt:root",
            "auth:user_enumeration:35.188.49.176",
        ]
        assert sorted(a.dedupe_key for a in await m.anomalies("firewall")) == [
            "firewall:port_scan:127.0.0.2",
            "firewall:port_scan:62.34.17.168",
        ]
        agents = {
            a.name: a for a in (await m.stub.ListAgents(anomaly_pb2.ListAgentsRequest())).agents
        }
        assert set(agents) == {"wifi", "auth", "firewall", "dns", "logpattern", "volume"}
        assert agents["auth"].anomalies_found == 3
        assert "sshd" in agents["auth"].services
        assert agents["auth"].interval.seconds == 300
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await m.run("nope")
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _alerts(
    stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub, count: int, after: str = ""
) -> list[anomaly_pb2.Alert]:
    received: list[anomaly_pb2.Alert] = []
    stream = stub.WatchAlerts(
        anomaly_pb2.WatchAlertsRequest(after_alert_id=after, heartbeat_interval=Duration(seconds=5))
    )
    async for response in stream:
        if response.HasField("alert"):
            received.append(response.alert)
        if len(received) == count:
            stream.cancel()
            break
    return received


def _brute_force(ip: str, minute: int) -> list[event_pb2.Event]:
    return syslog_events(
        [
            f"Feb  3 10:{minute:02d}:0{n} gw sshd[9]: Invalid user u{n} from {ip} port 22"
            for n in range(6)
        ]
    )


async def test_watch_alerts_resumes_without_gap_or_repeat(pki: Pki, tmp_path: Path) -> None:
    async with mesh(pki, tmp_path) as m:
        await m.write(_brute_force("198.51.100.1", 1))
        first_watch = asyncio.create_task(_alerts(m.stub, 2))
        await eventually(lambda: m.anomaly.detection.hub.watchers == 1)  # type: ignore[union-attr]
        await m.run("auth")
        seen = await first_watch
        assert [a.kind for a in seen] == [anomaly_pb2.ALERT_KIND_NEW] * 2
        # Disconnected: two more sources raise four alerts while nobody watches.
        await m.write(_brute_force("198.51.100.2", 2) + _brute_force("198.51.100.3", 3))
        await m.run("auth")
        resumed = asyncio.create_task(_alerts(m.stub, 6, after=seen[-1].alert_id))
        await eventually(lambda: m.anomaly.detection.hub.watchers == 1)  # type: ignore[union-attr]
        await m.write(_brute_force("198.51.100.4", 4))
        await m.run("auth")
        rest = await resumed
        ids = [int(a.alert_id) for a in seen + rest]
        assert ids == sorted(set(ids)), "alert ids repeat or go backwards"
        assert ids == list(range(ids[0], ids[0] + 8)), "an alert was lost"
        keys = {a.anomaly.dedupe_key for a in rest}
        assert {f"auth:brute_force:198.51.100.{n}" for n in (2, 3, 4)} <= keys


async def test_heartbeats_on_idle_streams_and_streams_end_at_shutdown(
    pki: Pki, tmp_path: Path
) -> None:
    async with mesh(pki, tmp_path) as m:
        await m.write(_brute_force("198.51.100.1", 1))
        await m.run("auth")
        existing = await m.anomaly.store.last_alert_id()
        assert existing == 2
        stream = m.stub.WatchAlerts(
            anomaly_pb2.WatchAlertsRequest(heartbeat_interval=Duration(nanos=100_000_000))
        )
        # At once: where this stream starts, so a client that sees no alert can still resume.
        first = await stream.read()
        assert first.heartbeat.last_alert_id == "2"
        idle = await stream.read()
        assert idle.heartbeat.last_alert_id == "2"
        await m.write(_brute_force("198.51.100.2", 2))
        await m.run("auth")
        received: list[str] = []
        while len(received) < 2:
            response = await stream.read()
            if response.HasField("alert"):
                received.append(response.alert.alert_id)
        assert received == ["3", "4"]
        after = await stream.read()
        assert after.heartbeat.last_alert_id == "4"
        await m.anomaly.runtime.stop()
        ended = await asyncio.wait_for(stream.read(), 5)
        assert ended is grpc.aio.EOF


async def _agent_info(m: Mesh, name: str) -> anomaly_pb2.AgentInfo:
    agents = await m.stub.ListAgents(anomaly_pb2.ListAgentsRequest())
    return next(a for a in agents.agents if a.name == name)


async def test_cycles_are_deferred_and_reported_when_resources_are_short(
    pki: Pki, tmp_path: Path
) -> None:
    async with mesh(
        pki,
        tmp_path,
        resources={"max_memory_percent": 0.001, "max_cpu_percent": 100},
        agents=[{"type": "auth", "interval_s": 0.05}, {"type": "wifi"}],
    ) as m:
        assert m.anomaly.detection is not None
        scheduler = m.anomaly.detection.scheduler
        result = await scheduler.run(scheduler.runners["wifi"], scheduled=True)
        assert result.deferred
        assert "resources.max_memory_percent" in result.deferred_reason
        on_demand = await m.run("auth")
        assert not on_demand["auth"].deferred
        # The scheduled loop of auth (every 50 ms) is deferred, and ListAgents says so.
        for _ in range(200):
            auth = await _agent_info(m, "auth")
            if auth.deferred_cycles >= 2:
                break
            await asyncio.sleep(0.02)
        assert auth.deferred_cycles >= 2
        assert "resources.max_memory_percent" in auth.last_deferred_reason
        assert auth.last_deferred_time.seconds > 0
        wifi = await _agent_info(m, "wifi")
        assert wifi.deferred_cycles == 1
    async with mesh(
        pki,
        tmp_path / "strict",
        resources={"max_memory_percent": 0.001, "max_cpu_percent": 100, "defer_on_demand": True},
    ) as m:
        reply = await m.run("auth", "wifi")
        assert all(r.deferred and "memory" in r.deferred_reason for r in reply.values())


async def test_storage_down_is_a_clear_cycle_error(pki: Pki, tmp_path: Path) -> None:
    async with mesh(pki, tmp_path) as m:
        await m.storage.runtime.stop()
        results = await m.run("auth")
        assert "storage QueryEvents failed: UNAVAILABLE" in results["auth"].error
        agents = await m.stub.ListAgents(anomaly_pb2.ListAgentsRequest())
        auth = next(a for a in agents.agents if a.name == "auth")
        assert "UNAVAILABLE" in auth.last_error


def _hdfs_events() -> list[event_pb2.Event]:
    lines = []
    for raw in (HDFS / "HDFS_5k.log").read_text().splitlines()[3000:]:
        date, clock, _pid, _level, rest = raw.split(" ", 4)
        component, _, message = rest.partition(": ")
        stamp = f"Nov {int(date[4:6]):2d} 20{date[:2]} {clock[:2]}:{clock[2:4]}:{clock[4:6]}"
        lines.append(f"<14>{stamp} dn1 {component.split('$')[0]}: {message}")
    return syslog_events(lines)


async def test_model_hot_reload_scores_with_the_new_version(pki: Pki, tmp_path: Path) -> None:
    trained = train("logpattern", load(HDFS, "hdfs"), tmp_path / "training")
    async with mesh(pki, tmp_path) as m:
        await m.write(_hdfs_events())
        before = await m.run("logpattern")
        assert before["logpattern"].error == ""
        assert all(a.type != "model_session" for a in await m.anomalies("logpattern"))
        shutil.copytree(trained.path, m.models / "logpattern" / trained.version)
        await _wait_for_model(m, trained.version, anomaly_pb2.MODEL_STATE_LOADED)
        await m.run("logpattern")
        scored = [a for a in await m.anomalies("logpattern") if a.type == "model_session"]
        assert scored, "the deployed model found no anomalous session"
        assert {a.model_version for a in scored} == {trained.version}
        broken = m.models / "logpattern" / "99990101T000000000000Z"
        shutil.copytree(trained.path, broken)
        (broken / MODEL_FILE).write_text("garbage\n")
        await _wait_for_model(m, broken.name, anomaly_pb2.MODEL_STATE_REFUSED)
        listed = await m.stub.ListModels(anomaly_pb2.ListModelsRequest(agents=["logpattern"]))
        states = {i.version: i.state for i in listed.models}
        assert states[trained.version] == anomaly_pb2.MODEL_STATE_LOADED
        agents = await m.stub.ListAgents(anomaly_pb2.ListAgentsRequest())
        assert (
            next(a for a in agents.agents if a.name == "logpattern").model_version
            == trained.version
        )
        reloaded = await m.stub.ReloadModels(anomaly_pb2.ReloadModelsRequest())
        refused = next(i for i in reloaded.models if i.version == broken.name)
        assert refused.state == anomaly_pb2.MODEL_STATE_REFUSED
        assert refused.error


async def _wait_for_model(m: Mesh, version: str, state: int) -> None:
    for _ in range(100):
        listed = await m.stub.ListModels(anomaly_pb2.ListModelsRequest(agents=["logpattern"]))
        if any(i.version == version and i.state == state for i in listed.models):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"model {version} never reached state {state}")


async def test_a_watcher_that_falls_behind_is_dropped_after_its_buffer() -> None:
    hub = AlertHub(buffer=2)
    subscription = hub.subscribe()
    anomaly = AnomalyRecord("auth", "gw", 1, "brute_force", 4, 0.9, "d", "auth:brute_force:x")
    for alert_id in (1, 2, 3):
        hub.publish(AlertRecord(alert_id, AlertKind.NEW, anomaly, alert_id))
    assert subscription.overflowed
    assert hub.watchers == 0
    stream = live_alerts(subscription, AlertFilter(), 0, 60)
    live = [r.alert.alert_id async for r in stream if r.HasField("alert")]
    # The stream ends after what it holds; the RPC then answers RESOURCE_EXHAUSTED and the
    # client resumes after alert 2, where the store replays alert 3.
    assert live == ["1", "2"]


async def test_repeated_windows_are_served_from_the_ttl_cache(pki: Pki, tmp_path: Path) -> None:
    async with mesh(pki, tmp_path, cache={"ttl_s": 0.5, "max_entries": 4}) as m:
        assert m.anomaly.detection is not None
        source = m.anomaly.detection.scheduler.source
        await m.write(_brute_force("198.51.100.9", 1))
        first = await m.run("auth")
        queries = source.queries
        assert queries >= 1
        again = await m.run("auth")
        assert source.queries == queries, "the same window was queried again within the TTL"
        assert again["auth"].events_analyzed == first["auth"].events_analyzed == 6
        await asyncio.sleep(0.6)
        await m.run("auth")
        assert source.queries > queries, "an expired window was served from the cache"
