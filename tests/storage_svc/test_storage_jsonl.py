"""The JSONL file sink on real files: the document of an event, rotation by size and by time,
compression, how many files are kept, and repair after a crash."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

from storage_helpers import event, events, jsonl_ids

from gen.edgebot.v1 import event_pb2
from storage_svc.sinks.base import BatchWrite
from storage_svc.sinks.jsonl import JsonlFileSink
from storage_svc.sinks_config import FileSinkSection


def sink(directory: Path, **settings: Any) -> JsonlFileSink:
    return JsonlFileSink(
        FileSinkSection.model_validate({"type": "file", "directory": str(directory), **settings})
    )


def batch(numbers: range) -> BatchWrite:
    return BatchWrite(f"outbox-{numbers.start}", "", numbers.start, events(numbers))


async def write_all(target: JsonlFileSink, numbers: range, per_batch: int) -> None:
    for start in range(numbers.start, numbers.stop, per_batch):
        await target.write(batch(range(start, min(start + per_batch, numbers.stop))))


async def test_a_line_is_the_whole_event_as_json(tmp_path: Path) -> None:
    made = event(
        7,
        severity=event_pb2.SEVERITY_WARNING,
        attributes={"net.src_ip": "10.0.0.1"},
        tags={"site": "a"},
        raw=b"\x00raw",
    )
    made.time.nanos = 123_456_789
    target = sink(tmp_path)
    await target.open()
    outcome = await target.write(BatchWrite("b", "", 1, [made]))
    await target.close()
    [line] = (tmp_path / "events.jsonl").read_text().splitlines()
    assert json.loads(line) == {
        "id": "ev-000007",
        "time": "2023-11-14T22:13:27.123456Z",
        "time_ns": 1_700_000_007_123_456_789,
        "type": "syslog",
        "source": "site-a/syslog-udp",
        "host": "router-1",
        "service": "sshd",
        "severity": "warning",
        "level": 4,
        "message": "message 7",
        "attributes": {"net.src_ip": "10.0.0.1"},
        "tags": {"site": "a"},
        "raw_base64": "AHJhdw==",
    }
    assert (outcome.written, target.state().written) == (1, 1)


async def test_files_rotate_by_size_and_are_compressed(tmp_path: Path) -> None:
    target = sink(tmp_path, max_bytes=2048)
    await target.open()
    await write_all(target, range(40), per_batch=3)
    await target.close()
    rotated = target.rotated_files()
    assert len(rotated) >= 3
    assert all(path.name.endswith(".jsonl.gz") for path in rotated)
    for path in rotated:
        assert len(gzip.decompress(path.read_bytes())) <= 2048
    assert jsonl_ids(tmp_path) == [f"ev-{n:06d}" for n in range(40)]


async def test_only_the_newest_rotated_files_are_kept(tmp_path: Path) -> None:
    target = sink(tmp_path, max_bytes=1024, keep_files=2, gzip=False)
    await target.open()
    await write_all(target, range(60), per_batch=2)
    await target.close()
    rotated = target.rotated_files()
    assert len(rotated) == 2
    assert all(path.suffix == ".jsonl" for path in rotated)
    kept = jsonl_ids(tmp_path)
    assert kept == [f"ev-{n:06d}" for n in range(60 - len(kept), 60)]


async def test_a_file_rotates_once_its_first_line_is_old_enough(tmp_path: Path) -> None:
    target = sink(tmp_path, rotate_every_s=0.2)
    await target.open()
    await target.write(batch(range(0, 2)))
    await target.write(batch(range(2, 4)))
    assert target.rotated_files() == []
    await asyncio.sleep(0.25)
    await target.write(batch(range(4, 6)))
    await target.close()
    [rotated] = target.rotated_files()
    assert gzip.decompress(rotated.read_bytes()).count(b"\n") == 4
    assert (tmp_path / "events.jsonl").read_text().count("\n") == 2


async def test_a_partial_last_line_from_a_crash_is_removed_at_open(tmp_path: Path) -> None:
    target = sink(tmp_path)
    await target.open()
    await target.write(batch(range(0, 3)))
    await target.close()
    with (tmp_path / "events.jsonl").open("ab") as file:
        file.write(b'{"id":"ev-0000')  # the crash cut this line short
    reopened = sink(tmp_path)
    await reopened.open()
    await reopened.write(batch(range(3, 5)))
    await reopened.close()
    assert jsonl_ids(tmp_path) == [f"ev-{n:06d}" for n in range(5)]


async def test_a_compression_a_crash_interrupted_is_finished_at_open(tmp_path: Path) -> None:
    rotated = tmp_path / "events-20240101T000000Z-0000.jsonl"
    rotated.write_text('{"id":"ev-a"}\n{"id":"ev-b"}\n')
    (tmp_path / "events-20240101T000000Z-0000.jsonl.gz.tmp").write_bytes(b"\x1f\x8b half")
    target = sink(tmp_path)
    await target.open()
    await target.close()
    assert sorted(path.name for path in target.directory.glob("*")) == [
        "events-20240101T000000Z-0000.jsonl.gz",
        "events.jsonl",
    ]
    assert jsonl_ids(tmp_path) == ["ev-a", "ev-b"]
