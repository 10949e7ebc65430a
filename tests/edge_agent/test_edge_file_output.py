"""The file output (rotating gzip JSON Lines) and `edgebot replay`, exactly once end to end."""

from __future__ import annotations

import asyncio
import collections
import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from edge_helpers import agent_config, eventually, make_event
from inprocess_mesh import Mothership, mothership
from support import Pki, secure_channel
from test_edge_agent_process import free_tcp_port, start_agent, tail_of, wait_listening

from edge_agent.config import FileOutputSection
from edge_agent.file_output import BatchFileWriter, read_batches
from edge_agent.shipper import Shipper
from edge_agent.spool import Spool, SpooledBatch
from gen.edgebot.v1 import storage_pb2, storage_pb2_grpc


def settings(directory: Path, **overrides: object) -> FileOutputSection:
    return FileOutputSection.model_validate(
        {"enabled": True, "mode": "instead", "directory": str(directory), **overrides}
    )


def batch(seq: int, count: int, tag: str = "m") -> SpooledBatch:
    events = []
    for i in range(count):
        event = make_event(f"{tag} {seq}.{i} " + "p" * 40)
        event.attributes["net.src_ip"] = "10.0.0.7"
        event.tags["site"] = "north"
        events.append(event.SerializeToString())
    return SpooledBatch(batch_id=f"batch-{seq:04d}", seq=seq, events=tuple(events))


def closed_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl.gz"))


def test_batches_round_trip_and_files_rotate_by_size(tmp_path: Path) -> None:
    writer = BatchFileWriter(settings(tmp_path, max_file_bytes=4096), "site-a")
    writer.open()
    written = [batch(seq, 20) for seq in range(1, 31)]
    for each in written:
        writer.write(each)
    writer.close()

    files = closed_files(tmp_path)
    assert len(files) > 2, "4 KiB files: the output rotated"
    assert not list(tmp_path.glob("*.part"))
    for path in files:
        with gzip.open(path, "rt") as lines:  # a properly closed gzip file
            for line in lines:
                assert set(json.loads(line)) >= {"agent_id", "batch_id", "seq", "event"}
    report = read_batches(files)
    assert [b.batch_id for b in report.batches] == [b.batch_id for b in written]
    assert (report.bad_lines, report.incomplete_batches) == ([], [])
    first = report.batches[0]
    assert (first.agent_id, first.seq) == ("site-a", 1)
    assert [e.SerializeToString() for e in first.events] == list(written[0].events)


def test_a_file_cut_by_a_crash_is_recovered_and_its_broken_batch_not_replayed(
    tmp_path: Path,
) -> None:
    crashed = BatchFileWriter(settings(tmp_path), "site-a")
    crashed.open()
    for seq in (1, 2, 3):
        crashed.write(batch(seq, 50))
    (part,) = tmp_path.glob("*.part")
    whole = part.stat().st_size
    crashed.write(batch(4, 50))
    # The process dies while batch 4 is on its way to disk: only part of it got there.
    with part.open("r+b") as raw:
        raw.truncate(whole + (part.stat().st_size - whole) // 2)

    restarted = BatchFileWriter(settings(tmp_path), "site-a")
    restarted.open()
    restarted.write(batch(4, 50))  # the spool still held batch 4
    restarted.close()

    assert not list(tmp_path.glob("*.part"))
    report = read_batches(closed_files(tmp_path))
    assert [b.seq for b in report.batches] == [1, 2, 3, 4]
    assert all(len(b.events) == 50 for b in report.batches)


def test_bad_lines_are_reported_with_file_line_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl.gz"
    good = json.dumps(
        {"agent_id": "a", "batch_id": "b", "seq": 1, "batch_size": 1, "index": 0,
         "event": {"id": "e", "message": "kept"}}
    )  # fmt: skip
    with gzip.open(path, "wt") as out:
        out.write("not json\n")
        out.write(json.dumps({"agent_id": "a", "batch_id": "c", "seq": "x"}) + "\n")
        out.write(good + "\n")
    report = read_batches([path])
    assert [b.events[0].message for b in report.batches] == ["kept"]
    assert report.bad_lines == [
        f"{path}:1: not JSON (Expecting value)",
        f"{path}:2: seq: missing or not a int",
    ]


async def stored_counts(ship: Mothership, pki: Pki, marker: str) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    request = storage_pb2.QueryEventsRequest(
        filter=storage_pb2.EventFilter(text=marker), page_size=1000
    )
    async with secure_channel(ship.storage.runtime.ports.grpc, pki.operator()) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        while True:
            page = await stub.QueryEvents(request, timeout=10)
            counts.update(event.message for event in page.events)
            if not page.next_page_token:
                return counts
            request.page_token = page.next_page_token


async def replay(config_path: Path, files: list[Path]) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgebot", "replay", "--config", str(config_path),
        "--timeout", "60", *map(str, files),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, text
    return text


async def test_agent_killed_while_writing_files_then_replayed_twice_stores_once(
    pki: Pki, tmp_path: Path
) -> None:
    """Air-gapped: the agent writes only files; kill -9 mid-way; replay ships every line
    once, and a second replay of the same files stores nothing more."""
    log_file = tmp_path / "app.log"
    output_dir = tmp_path / "outbox"
    tcp_port = free_tcp_port()
    config = agent_config(
        pki,
        tmp_path,
        ["127.0.0.1:1"],
        inputs={
            "syslog_udp": {"enabled": False},
            "syslog_tcp": {"enabled": True, "host": "127.0.0.1", "port": tcp_port},
            "files": [{"name": "app", "paths": [str(log_file)], "poll_interval_s": 0.05}],
        },
        file_output={"enabled": True, "mode": "instead", "directory": str(output_dir)},
    )
    config_path = tmp_path / "edge.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    agent_log = tmp_path / "agent.log"
    agent = start_agent(config_path, agent_log)
    try:
        await wait_listening(tcp_port, agent, agent_log)
        with log_file.open("ab", buffering=0) as writer:
            for block in range(40):
                writer.write(
                    b"".join(b"air %06d\n" % n for n in range(block * 50, block * 50 + 50))
                )
                await asyncio.sleep(0.01)
                if block == 20:
                    await eventually(lambda: any(output_dir.glob("*.part")), within=10)
                    agent.send_signal(signal.SIGKILL)
                    assert agent.wait(timeout=10) == -signal.SIGKILL
                    agent = start_agent(config_path, agent_log)
        await wait_listening(tcp_port, agent, agent_log)

        def files_hold_every_line() -> bool:
            report = read_batches(sorted(output_dir.glob("*.jsonl.gz*")))
            return sum(len(b.events) for b in report.batches) >= 2000

        await eventually(files_hold_every_line, within=30, what="2000 lines in the files")
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
    assert not list(output_dir.glob("*.part")), tail_of(agent_log)
    files = closed_files(output_dir)

    async with mothership(pki, tmp_path) as ship:
        replay_config = agent_config(
            pki,
            tmp_path / "replay",
            [ship.address(ship.ingest)],
            shipper={"batch_max_wait_s": 0.05},
        )
        replay_path = tmp_path / "replay.yaml"
        replay_path.write_text(yaml.safe_dump(replay_config.model_dump(mode="json")))

        first = await replay(replay_path, files)
        counts = await stored_counts(ship, pki, "air ")
        assert sorted(counts) == [f"air {n:06d}" for n in range(2000)]
        assert set(counts.values()) == {1}
        assert "2000 events acknowledged (0 already stored)" in first, first

        second = await replay(replay_path, files)
        assert "2000 events acknowledged (2000 already stored)" in second, second
        assert await stored_counts(ship, pki, "air ") == counts


async def test_alongside_copy_replayed_later_is_answered_as_duplicates(
    pki: Pki, tmp_path: Path
) -> None:
    async with mothership(pki, tmp_path) as ship:
        config = agent_config(
            pki,
            tmp_path,
            [ship.address(ship.ingest)],
            file_output={"enabled": True, "mode": "alongside", "directory": str(tmp_path / "copy")},
        )
        spool = Spool(config.spool.path, config.spool.max_bytes)
        await spool.open()
        archive = BatchFileWriter(config.file_output, config.agent.id)
        archive.open()
        shipper = Shipper(config, spool, archive=archive)
        shipper.start()
        events = [make_event(f"copy {i:04d}") for i in range(700)]
        await spool.append(events)
        await eventually(lambda: spool.events == 0, within=20, what="streamed")
        await shipper.stop(0)
        archive.close()
        await spool.close()
        assert shipper.stats.events_accepted == 700

        config_path = tmp_path / "edge.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        output = await replay(config_path, closed_files(tmp_path / "copy"))
        assert "700 events acknowledged (700 already stored)" in output, output
        counts = await stored_counts(ship, pki, "copy ")
        assert len(counts) == 700
        assert set(counts.values()) == {1}
