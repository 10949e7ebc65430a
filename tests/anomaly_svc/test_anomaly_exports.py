"""Exports against a real storage service and anomaly store over mTLS gRPC."""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import io
import json
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest
from anomaly_mesh import Mesh, mesh
from anomaly_samples import BGL, syslog_events
from google.protobuf import json_format
from support import Pki

from anomaly_svc.export import Dataset, ExportRecord, ExportSpec, State
from anomaly_svc.export.registry import ExportRegistry
from anomaly_svc.models.datasets import LEVELS
from anomaly_svc.store import AnomalyRecord
from edgebot.cli import main
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc, event_pb2, storage_pb2
from mesh.timeutil import NS_PER_S, now_ns, ns_to_ts

EVENTS, ANOMALIES, LABELS = (
    anomaly_pb2.EXPORT_DATASET_EVENTS,
    anomaly_pb2.EXPORT_DATASET_ANOMALIES,
    anomaly_pb2.EXPORT_DATASET_LABELS,
)
TP, FP = anomaly_pb2.OPERATOR_LABEL_TRUE_POSITIVE, anomaly_pb2.OPERATOR_LABEL_FALSE_POSITIVE


async def finished(
    stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub, export_id: str, timeout_s: float = 30
) -> anomaly_pb2.Export:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        export = (await stub.GetExport(anomaly_pb2.GetExportRequest(id=export_id))).export
        if export.state in (anomaly_pb2.EXPORT_STATE_SUCCEEDED, anomaly_pb2.EXPORT_STATE_FAILED):
            return export
        assert asyncio.get_running_loop().time() < deadline, f"export still {export.state}"
        await asyncio.sleep(0.05)


async def download(
    stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub, export_id: str, index: int
) -> tuple[bytes, str]:
    """The part's bytes, checking offsets and that only the last chunk carries the checksum."""
    data = bytearray()
    checksum = ""
    async for chunk in stub.DownloadExport(
        anomaly_pb2.DownloadExportRequest(id=export_id, part_index=index)
    ):
        assert chunk.offset == len(data)
        assert not checksum, "a chunk came after the last one"
        data.extend(chunk.data)
        if chunk.last:
            checksum = chunk.sha256
        else:
            assert not chunk.sha256
    assert checksum, "no last chunk"
    return bytes(data), checksum


async def create(
    stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub, **spec: object
) -> anomaly_pb2.Export:
    reply = await stub.CreateExport(
        anomaly_pb2.CreateExportRequest(spec=anomaly_pb2.ExportSpec(**spec))  # type: ignore[arg-type]
    )
    return reply.export


def _brute_force(ip: str, minute: int) -> list[event_pb2.Event]:
    return syslog_events(
        [
            f"Feb  3 10:{minute:02d}:0{n} gw sshd[9]: Invalid user u{n} from {ip} port 22"
            for n in range(6)
        ]
    )


async def _stored_events(m: Mesh) -> dict[str, event_pb2.Event]:
    reply = await m.writer.QueryEvents(storage_pb2.QueryEventsRequest(page_size=1000))
    return {e.id: e for e in reply.events}


async def _label(m: Mesh, anomaly_id: str, label: int) -> None:
    await m.stub.UpdateAnomaly(anomaly_pb2.UpdateAnomalyRequest(id=anomaly_id, label=label))


async def test_events_anomalies_and_labels_round_trip(pki: Pki, tmp_path: Path) -> None:
    async with mesh(pki, tmp_path) as m:
        await m.write(_brute_force("198.51.100.1", 1) + _brute_force("198.51.100.2", 2))
        await m.write(syslog_events(["<14>Feb  3 11:00:00 gw cron[1]: job done"]))
        await m.run("auth")
        found = {a.dedupe_key: a for a in await m.anomalies("auth")}
        confirmed = found["auth:brute_force:198.51.100.1"]
        rejected = found["auth:brute_force:198.51.100.2"]
        await _label(m, confirmed.id, TP)
        await _label(m, rejected.id, FP)

        created = await create(m.stub, datasets=[EVENTS, ANOMALIES, LABELS])
        assert created.id
        assert created.state in (anomaly_pb2.EXPORT_STATE_PENDING, anomaly_pb2.EXPORT_STATE_RUNNING)
        export = await finished(m.stub, created.id)
        assert export.state == anomaly_pb2.EXPORT_STATE_SUCCEEDED, export.error
        assert export.progress == 1.0
        assert [(p.index, p.name) for p in export.parts] == [
            (0, "events-0001.jsonl"),
            (1, "anomalies-0001.jsonl"),
            (2, "labels-0001.csv"),
        ]
        files = {}
        for part in export.parts:
            data, checksum = await download(m.stub, export.id, part.index)
            assert checksum == part.sha256 == hashlib.sha256(data).hexdigest()
            assert len(data) == part.size_bytes
            files[part.name] = data

        stored = await _stored_events(m)
        exported = [
            json_format.Parse(line, event_pb2.Event())
            for line in files["events-0001.jsonl"].decode().splitlines()
        ]
        assert {e.id: e for e in exported} == stored
        assert [e.time.ToNanoseconds() for e in exported] == sorted(
            e.time.ToNanoseconds() for e in exported
        ), "events are not oldest first"

        anomalies = [
            json_format.Parse(line, anomaly_pb2.Anomaly())
            for line in files["anomalies-0001.jsonl"].decode().splitlines()
        ]
        for anomaly in anomalies:
            current = await m.stub.GetAnomaly(anomaly_pb2.GetAnomalyRequest(id=anomaly.id))
            assert anomaly == current.anomaly

        labels = list(csv.DictReader(io.StringIO(files["labels-0001.csv"].decode())))
        header = files["labels-0001.csv"].decode().splitlines()[0]
        assert header == "id,anomaly_id,agent,anomaly_type,host,time,label"
        by_label = {
            value: sorted(r["id"] for r in labels if r["label"] == value)
            for value in ("true_positive", "false_positive")
        }
        assert by_label["true_positive"] == sorted(confirmed.event_ids)
        assert by_label["false_positive"] == sorted(rejected.event_ids)

        report = export.report
        assert dict(report.row_counts) == {
            "events": len(stored),
            "anomalies": len(anomalies),
            "labels": len(labels),
        }
        times = [e.time.ToNanoseconds() for e in stored.values()]
        times += [a.time.ToNanoseconds() for a in anomalies]
        assert report.min_time.ToNanoseconds() == min(times)
        assert report.max_time.ToNanoseconds() == max(times)
        assert export.rows_written == sum(report.row_counts.values())

        listed = await m.stub.ListExports(anomaly_pb2.ListExportsRequest())
        assert [e.id for e in listed.exports] == [export.id]
        await m.stub.DeleteExport(anomaly_pb2.DeleteExportRequest(id=export.id))
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await m.stub.GetExport(anomaly_pb2.GetExportRequest(id=export.id))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert not (m.config.exports_dir / export.id).exists()


def _numbered_events(count: int, without_host: int = 0) -> list[event_pb2.Event]:
    base = now_ns() - 3600 * NS_PER_S
    events = []
    for n in range(count):
        event = event_pb2.Event(
            id=f"ev-{n:06d}",
            type="syslog",
            source="site-a/syslog-udp",
            host="" if n < without_host else f"host-{n % 5}",
            service="app",
            severity=event_pb2.SEVERITY_INFORMATIONAL,
            message=f"request {n} served in {n % 97} ms for user{n % 13} path /a/{n}",
            attributes={"n": str(n)},
        )
        ns_to_ts(base + n * 1_000_000, event.time)
        events.append(event)
    return events


async def _write_many(m: Mesh, events: list[event_pb2.Event], batch: int = 2000) -> None:
    for start in range(0, len(events), batch):
        await m.write(events[start : start + batch], batch_id=f"bulk-{start}")


async def test_parts_stay_within_max_part_bytes_and_report_missing_fields(
    pki: Pki, tmp_path: Path
) -> None:
    async with mesh(pki, tmp_path, exports={"min_part_bytes": 1024}) as m:
        events = _numbered_events(3000, without_host=7)
        await _write_many(m, events)
        limit = 16 * 1024
        for gzipped in (False, True):
            created = await create(
                m.stub, datasets=[EVENTS], format=anomaly_pb2.EXPORT_FORMAT_CSV,
                gzip=gzipped, batch_size=500, max_part_bytes=limit,
            )  # fmt: skip
            export = await finished(m.stub, created.id)
            assert export.state == anomaly_pb2.EXPORT_STATE_SUCCEEDED, export.error
            assert len(export.parts) > 1
            ids = []
            for part in export.parts:
                assert part.size_bytes <= limit
                data, checksum = await download(m.stub, export.id, part.index)
                assert hashlib.sha256(data).hexdigest() == checksum == part.sha256
                text = (gzip.decompress(data) if gzipped else data).decode()
                rows = list(csv.DictReader(io.StringIO(text)))
                assert len(rows) == part.rows
                ids += [r["id"] for r in rows]
            assert ids == [e.id for e in events], "rows lost, doubled or out of order"
            assert export.parts[0].name.endswith(".csv.gz" if gzipped else ".csv")
            assert dict(export.report.row_counts) == {"events": 3000}
            assert dict(export.report.missing_fields) == {"events.host": 7}
            assert export.bytes_written == sum(p.size_bytes for p in export.parts)

        created = await create(
            m.stub, datasets=[EVENTS], format=anomaly_pb2.EXPORT_FORMAT_PARQUET,
            batch_size=250, max_part_bytes=limit,
        )  # fmt: skip
        export = await finished(m.stub, created.id)
        assert export.state == anomaly_pb2.EXPORT_STATE_SUCCEEDED, export.error
        assert len(export.parts) > 1
        rows = 0
        for part in export.parts:
            data, _ = await download(m.stub, export.id, part.index)
            table = pq.read_table(io.BytesIO(data))
            assert table.num_rows == part.rows
            assert table.column("time").type.unit == "ns"
            rows += table.num_rows
        assert rows == 3000


async def test_filters_and_time_range_select_what_is_exported(pki: Pki, tmp_path: Path) -> None:
    async with mesh(pki, tmp_path) as m:
        events = _numbered_events(100)
        await _write_many(m, events)
        flt = storage_pb2.EventFilter(hosts=["host-1"], text="user1 ")
        ns_to_ts(events[10].time.ToNanoseconds(), flt.start_time)
        ns_to_ts(events[90].time.ToNanoseconds(), flt.end_time)
        created = await create(m.stub, datasets=[EVENTS], filter=flt, gzip=True)
        export = await finished(m.stub, created.id)
        data, _ = await download(m.stub, export.id, 0)
        got = [json.loads(line)["id"] for line in gzip.decompress(data).decode().splitlines()]
        expected = [e.id for e in events[10:90] if e.host == "host-1" and "user1 " in e.message]
        assert got == expected
        assert export.parts[0].name == "events-0001.jsonl.gz"


async def test_bad_requests_name_the_field(pki: Pki, tmp_path: Path) -> None:
    async with mesh(pki, tmp_path, exports={"max_batch_size": 5000}) as m:
        backwards = storage_pb2.EventFilter()
        ns_to_ts(2 * NS_PER_S, backwards.start_time)
        ns_to_ts(NS_PER_S, backwards.end_time)
        for spec, field in (
            ({}, "spec.datasets"),
            ({"datasets": [EVENTS, EVENTS]}, "spec.datasets"),
            ({"datasets": [0]}, "spec.datasets[0]"),
            ({"datasets": [EVENTS], "batch_size": 5001}, "spec.batch_size"),
            ({"datasets": [EVENTS], "max_part_bytes": 100}, "spec.max_part_bytes"),
            ({"datasets": [EVENTS], "filter": backwards}, "spec.filter.end_time"),
            ({"datasets": [ANOMALIES], "agents": [""]}, "spec.agents[0]"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await create(m.stub, **spec)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (refused.value.details() or "").startswith(f"{field}:"), spec

        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await download(m.stub, "0190a0a0-0000-7000-8000-000000000000", 0)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        export = await finished(m.stub, (await create(m.stub, datasets=[ANOMALIES])).id)
        with pytest.raises(grpc.aio.AioRpcError) as past_the_end:
            await download(m.stub, export.id, 5)
        assert past_the_end.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as token:
            await m.stub.ListExports(anomaly_pb2.ListExportsRequest(page_token="nope"))
        assert token.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Bytes changed on disk after the export: the download ends with DATA_LOSS.
        part = m.config.exports_dir / export.id / export.parts[0].name
        part.write_bytes(part.read_bytes() + b"tampered\n")
        with pytest.raises(grpc.aio.AioRpcError) as tampered:
            await download(m.stub, export.id, 0)
        assert tampered.value.code() == grpc.StatusCode.DATA_LOSS


async def test_storage_down_fails_the_export_with_the_reason(pki: Pki, tmp_path: Path) -> None:
    async with mesh(pki, tmp_path) as m:
        await m.storage.runtime.stop()
        export = await finished(m.stub, (await create(m.stub, datasets=[EVENTS])).id)
        assert export.state == anomaly_pb2.EXPORT_STATE_FAILED
        assert export.error.startswith("storage AggregateEvents failed: UNAVAILABLE")
        assert not export.parts
        with pytest.raises(grpc.aio.AioRpcError) as not_ready:
            await download(m.stub, export.id, 0)
        assert not_ready.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_list_pages_newest_first_and_expired_exports_are_cleaned_up(
    pki: Pki, tmp_path: Path
) -> None:
    async with mesh(pki, tmp_path, exports={"retention_s": 0.5, "cleanup_interval_s": 0.1}) as m:
        ids = [(await create(m.stub, datasets=[ANOMALIES])).id for _ in range(3)]
        first = await m.stub.ListExports(anomaly_pb2.ListExportsRequest(page_size=2))
        assert [e.id for e in first.exports] == ids[::-1][:2]
        second = await m.stub.ListExports(
            anomaly_pb2.ListExportsRequest(page_size=2, page_token=first.next_page_token)
        )
        assert [e.id for e in second.exports] == ids[:1]
        assert not second.next_page_token
        exports = [await finished(m.stub, export_id) for export_id in ids]
        for export in exports:
            assert export.state == anomaly_pb2.EXPORT_STATE_SUCCEEDED
            retention = export.expire_time.ToNanoseconds() - export.complete_time.ToNanoseconds()
            assert retention == NS_PER_S // 2
        assert all((m.config.exports_dir / i).is_dir() for i in ids)
        for _ in range(100):
            listed = await m.stub.ListExports(anomaly_pb2.ListExportsRequest())
            if not listed.exports:
                break
            await asyncio.sleep(0.05)
        assert not listed.exports
        assert not any((m.config.exports_dir / i).exists() for i in ids)


async def test_delete_cancels_a_running_export(pki: Pki, tmp_path: Path) -> None:
    async with mesh(pki, tmp_path) as m:
        await _write_many(m, _numbered_events(20_000), batch=5000)
        created = await create(m.stub, datasets=[EVENTS], batch_size=50)
        for _ in range(400):
            export = (await m.stub.GetExport(anomaly_pb2.GetExportRequest(id=created.id))).export
            if export.rows_written:
                break
            await asyncio.sleep(0.01)
        assert export.state == anomaly_pb2.EXPORT_STATE_RUNNING
        assert 0 < export.progress < 1
        await m.stub.DeleteExport(anomaly_pb2.DeleteExportRequest(id=created.id))
        assert not (m.config.exports_dir / created.id).exists()
        await asyncio.sleep(0.2)
        assert not (m.config.exports_dir / created.id).exists(), "the job kept writing"
        listed = await m.stub.ListExports(anomaly_pb2.ListExportsRequest())
        assert not listed.exports


async def test_after_a_restart_running_exports_fail_and_pending_ones_run(
    pki: Pki, tmp_path: Path
) -> None:
    registry = ExportRegistry(tmp_path / "exports" / "exports.db")
    await registry.open()
    spec = ExportSpec((Dataset.ANOMALIES,), storage_pb2.EventFilter())
    interrupted = ExportRecord("0190a0a0-0000-7000-8000-000000000001", spec, State.RUNNING, 1)
    queued = ExportRecord("0190a0a0-0000-7000-8000-000000000002", spec, State.PENDING, 2)
    await registry.add(interrupted)
    await registry.set_state(interrupted.id, State.RUNNING)
    await registry.add(queued)
    await registry.close()
    half_written = tmp_path / "exports" / interrupted.id / "anomalies-0001.jsonl"
    half_written.parent.mkdir(parents=True)
    half_written.write_text('{"id": "torn')
    async with mesh(pki, tmp_path) as m:
        await m.anomaly.store.record(
            AnomalyRecord("auth", "gw", now_ns(), "brute_force", 4, 0.9, "d", "auth:x")
        )
        failed = await finished(m.stub, interrupted.id)
        assert failed.state == anomaly_pb2.EXPORT_STATE_FAILED
        assert "interrupted by a restart" in failed.error
        assert not half_written.parent.exists()
        ran = await finished(m.stub, queued.id)
        assert ran.state == anomaly_pb2.EXPORT_STATE_SUCCEEDED, ran.error
        assert dict(ran.report.row_counts) == {"anomalies": 1}


def _bgl_events() -> tuple[list[event_pb2.Event], list[str]]:
    """BGL_2k as stored events, and the ids of the lines Loghub marks anomalous."""
    events, anomalous = [], []
    for n, line in enumerate(BGL.read_text().splitlines()):
        label, epoch, _, _, _, _, _, component, level, message = line.split(" ", 9)
        event = event_pb2.Event(
            id=f"bgl-{n:05d}", type="syslog", source="site-a/file", host="bgl",
            service=component, message=message,
            severity=event_pb2.Severity.ValueType(LEVELS.get(level, 6) + 1),
        )  # fmt: skip
        ns_to_ts(int(epoch) * NS_PER_S + n, event.time)
        events.append(event)
        if label != "-":
            anomalous.append(event.id)
    return events, anomalous


async def test_operator_labels_export_trains_a_model_with_edgebot_train(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The feedback loop: operators label anomalies; the export trains the next model."""
    events, anomalous = _bgl_events()
    normal = [e.id for e in events if e.id not in set(anomalous)]
    async with mesh(pki, tmp_path) as m:
        await _write_many(m, events, batch=1000)
        store = m.anomaly.store
        labelled = []
        for n, start in enumerate(range(0, len(anomalous), 100)):
            ids = anomalous[start : start + 100]
            record = AnomalyRecord(
                "logpattern", "bgl", now_ns(), "rare_template", 3, 0.8, "rare", f"lp:{n}",
                event_ids=ids,
            )  # fmt: skip
            labelled.append(((await store.record(record))[0].id, TP))
        flagged_normal = AnomalyRecord(
            "logpattern", "bgl", now_ns(), "rare_template", 4, 0.6, "rare", "lp:fp",
            event_ids=normal[:40],
        )  # fmt: skip
        labelled.append(((await store.record(flagged_normal))[0].id, FP))
        # Unlabelled anomalies give no label rows.
        await store.record(
            AnomalyRecord("logpattern", "bgl", now_ns(), "x", 4, 0.5, "x", "lp:open")
        )
        for anomaly_id, label in labelled:
            await _label(m, anomaly_id, label)
        created = await create(m.stub, datasets=[EVENTS, LABELS], gzip=True, batch_size=400)
        export = await finished(m.stub, created.id)
        assert export.state == anomaly_pb2.EXPORT_STATE_SUCCEEDED, export.error
        assert dict(export.report.row_counts) == {
            "events": 2000,
            "labels": len(anomalous) + 40,
        }
        paths = {}
        for part in export.parts:
            data, _ = await download(m.stub, export.id, part.index)
            paths[part.name] = tmp_path / part.name
            paths[part.name].write_bytes(data)
    code = await asyncio.to_thread(
        main,
        ["train", "--format", "export", "--data", str(paths["events-0001.jsonl.gz"]),
         "--labels", str(paths["labels-0001.csv.gz"]), "--unlabelled", "normal",
         "--out", str(tmp_path / "models")],
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "train 1400 / held-out 600 (lines)" in printed.out
    f1 = float(printed.out.split(" F1 ")[1].split()[0])
    assert f1 >= 0.90
    refused = await asyncio.to_thread(
        main,
        ["train", "--format", "export", "--data", str(paths["events-0001.jsonl.gz"]),
         "--labels", str(paths["labels-0001.csv.gz"]), "--out", str(tmp_path / "models")],
    )  # fmt: skip
    assert refused == 2
    assert "--unlabelled normal" in capsys.readouterr().err
