"""`edgebot anomalies`, `edgebot alerts` and `edgebot export` against a live in-process
anomaly service (real gRPC, mTLS) reading a real storage service."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
from pathlib import Path

import pytest
from anomaly_mesh import anomaly_config, mesh
from anomaly_samples import syslog_events
from inprocess_mesh import storage_app
from support import Pki, eventually, secure_channel

from anomaly_svc import AnomalyApp, build
from edgebot.cli import main
from gen.edgebot.v1 import event_pb2, storage_pb2, storage_pb2_grpc
from mesh.app import running


def tls_flags(pki: Pki) -> list[str]:
    operator = pki.operator()
    return ["--ca", str(operator.ca_file), "--cert", str(operator.cert_file),
            "--key", str(operator.key_file)]  # fmt: skip


class Cli:
    def __init__(self, address: str, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
        self.flags = ["--address", address, *tls_flags(pki)]
        self.capsys = capsys

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        """Run one command in a worker thread (it runs its own event loop)."""
        code = await asyncio.to_thread(main, [*argv, *self.flags])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err


def _brute_force(ip: str, minute: int) -> list[event_pb2.Event]:
    return syslog_events(
        [
            f"Feb  3 10:{minute:02d}:0{n} gw sshd[9]: Invalid user u{n} from {ip} port 22"
            for n in range(6)
        ]
    )


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_anomalies_list_get_and_update(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with mesh(pki, tmp_path) as m:
        cli = Cli(m.address, pki, capsys)
        await m.write(_brute_force("198.51.100.7", 1))
        await m.run("auth")
        code, out, _ = await cli("anomalies", "list", "--agent", "auth")
        assert code == 0
        listed = _json_lines(out)
        assert sorted(str(a["dedupe_key"]) for a in listed) == [
            "auth:brute_force:198.51.100.7",
            "auth:user_enumeration:198.51.100.7",
        ]
        code, out, _ = await cli("anomalies", "list", "--format", "table", "--status", "open")
        lines = out.splitlines()
        assert lines[0].split() == ["TIME", "(UTC)", "LEVEL", "AGENT", "TYPE", "HOST", "COUNT",
                                    "STATUS", "LABEL", "ID"]  # fmt: skip
        assert len(lines) == 3
        assert all(" auth " in line and " open " in line for line in lines[1:])

        target = str(next(a["id"] for a in listed if a["type"] == "brute_force"))
        code, out, _ = await cli("anomalies", "get", target)
        assert _json_lines(out)[0]["id"] == target
        code, out, _ = await cli("anomalies", "update", target, "--ack")
        assert _json_lines(out)[0]["status"] == "ANOMALY_STATUS_ACKNOWLEDGED"
        code, out, _ = await cli(
            "anomalies", "update", target, "--resolve", "--resolution", "fixed",
            "--notes", "blocked at the firewall", "--label", "true-positive",
        )  # fmt: skip
        resolved = _json_lines(out)[0]
        assert resolved["status"] == "ANOMALY_STATUS_RESOLVED"
        assert resolved["resolution"] == "fixed"
        assert resolved["notes"] == "blocked at the firewall"
        assert resolved["label"] == "OPERATOR_LABEL_TRUE_POSITIVE"
        code, out, _ = await cli("anomalies", "update", target, "--label", "none")
        assert "label" not in _json_lines(out)[0]
        code, out, _ = await cli("anomalies", "get", target, "--format", "table")
        assert "status:      resolved" in out
        assert "notes:       blocked at the firewall" in out
        code, out, _ = await cli("anomalies", "list", "--status", "open")
        assert len(_json_lines(out)) == 1

        code, _, err = await cli("anomalies", "update", target)
        assert code == 2
        assert "nothing to change" in err
        code, _, err = await cli("anomalies", "get", "no-such-id")
        assert code == 1
        assert "NOT_FOUND" in err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_alerts_replay_and_follow_resumes_across_a_restart(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()
    async with running(storage_app(pki, tmp_path)) as storage:
        config = anomaly_config(pki, tmp_path, storage.runtime.ports.grpc, server={"port": port})
        async with secure_channel(storage.runtime.ports.grpc, pki.service("ingest")) as channel:
            writer = storage_pb2_grpc.StorageServiceStub(channel)

            async def raise_alerts(app: AnomalyApp, ip: str, minute: int) -> None:
                batch = event_pb2.EventBatch(
                    batch_id=f"b-{ip}", agent_id="site-a", events=_brute_force(ip, minute)
                )
                await writer.Write(storage_pb2.WriteRequest(batch=batch))
                assert app.detection is not None
                scheduler = app.detection.scheduler
                await scheduler.run(
                    scheduler.runners["auth"], scheduled=False, start_ns=1, defer_when_busy=False
                )

            cli = Cli(f"127.0.0.1:{port}", pki, capsys)
            first = build(config)
            async with running(first):
                await raise_alerts(first, "198.51.100.1", 1)
                code, out, _ = await cli("alerts")
                assert code == 0
                assert [a["alert_id"] for a in _json_lines(out)] == ["1", "2"]
                code, out, _ = await cli("alerts", "--after", "1", "--format", "table")
                assert out.splitlines()[0].split()[:3] == ["ALERT", "TIME", "(UTC)"]
                assert [line.split()[0] for line in out.splitlines()[1:]] == ["2"]

                follow = ["alerts", "--follow", "--max-alerts", "6", "--heartbeat", "0.2"]
                follower = asyncio.create_task(asyncio.to_thread(main, follow + cli.flags))
                assert first.detection is not None
                hub = first.detection.hub
                await eventually(lambda: hub.watchers == 1, what="the follower to connect")
                await raise_alerts(first, "198.51.100.2", 2)
            # The service is down; the follower keeps retrying. It comes back with the same
            # store and raises four more alerts, maybe before the follower is back.
            second = build(config)
            async with running(second):
                await raise_alerts(second, "198.51.100.3", 3)
                await raise_alerts(second, "198.51.100.4", 4)
                code = await asyncio.wait_for(follower, 30)
    captured = capsys.readouterr()
    assert code == 0
    alerts = _json_lines(captured.out)
    assert [a["alert_id"] for a in alerts] == ["3", "4", "5", "6", "7", "8"]
    assert "reconnecting after alert 4" in captured.err


async def test_export_create_wait_download_and_delete(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with mesh(pki, tmp_path) as m:
        cli = Cli(m.address, pki, capsys)
        await m.write(_brute_force("198.51.100.8", 1))
        await m.run("auth")
        code, out, err = await cli(
            "export", "create", "--dataset", "events", "--dataset", "anomalies",
            "--file-format", "csv", "--gzip", "--wait", "--progress", "--poll", "0.05",
        )  # fmt: skip
        assert code == 0, err
        export = _json_lines(out)[0]
        assert export["state"] == "EXPORT_STATE_SUCCEEDED"
        assert export["report"]["row_counts"] == {"events": "6", "anomalies": "2"}
        assert err.splitlines()[-1].startswith(f"export {export['id']} succeeded [")
        assert "100.0%" in err.splitlines()[-1]

        code, out, _ = await cli("export", "list")
        assert [e["id"] for e in _json_lines(out)] == [export["id"]]
        code, out, _ = await cli("export", "get", str(export["id"]), "--format", "table")
        assert "state:       succeeded" in out
        assert "events-0001.csv.gz" in out

        target = tmp_path / "download"
        code, out, err = await cli(
            "export", "download", str(export["id"]), "--out", str(target), "--progress"
        )
        assert code == 0, err
        files = json.loads(out)["files"]
        assert [Path(f).name for f in files] == [
            "events-0001.csv.gz", "anomalies-0001.csv.gz", "report.json",
        ]  # fmt: skip
        for part in export["parts"]:  # type: ignore[attr-defined]
            data = (target / part["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == part["sha256"]
        events_csv = gzip.decompress((target / "events-0001.csv.gz").read_bytes()).decode()
        assert len(events_csv.splitlines()) == 1 + 6
        report = json.loads((target / "report.json").read_text())
        assert report["id"] == export["id"]
        assert "events-0001.csv.gz" in err

        code, _, err = await cli("export", "delete", str(export["id"]))
        assert code == 0
        code, _, err = await cli("export", "get", str(export["id"]))
        assert code == 1
        assert "NOT_FOUND" in err
        code, _, err = await cli("export", "create", "--dataset", "events",
                                 "--max-part-size", "1K")  # fmt: skip
        assert code == 1
        assert "INVALID_ARGUMENT: spec.max_part_bytes" in err
