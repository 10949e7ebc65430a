"""The log file input on real files: rotation, restarts, multi-line, encodings, big files."""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from edge_helpers import eventually
from prometheus_client import REGISTRY

from edge_agent import AgentConfig
from edge_agent.config import FileInputConfig
from edge_agent.inputs import file_tail
from edge_agent.inputs.file_tail import FileTailInput
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError, load_config

HOSTNAME = socket.gethostname()
MakeInput = Callable[..., Awaitable[FileTailInput]]


class Collector:
    """Takes every event out of the spool (as the shipper would on acks) and keeps them."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.events: list[event_pb2.Event] = []

    async def take(self) -> list[event_pb2.Event]:
        while (batch := await self.spool.form_batch(10_000, 1 << 30)) is not None:
            self.events.extend(event_pb2.Event.FromString(data) for data in batch.events)
            await self.spool.ack(batch.batch_id)
        return self.events

    async def until(self, count: int, within: float = 10) -> list[event_pb2.Event]:
        async with asyncio.timeout(within):
            while True:
                if len(await self.take()) >= count:
                    break
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # anything beyond the expected count would show up too
        return await self.take()

    @property
    def messages(self) -> list[str]:
        return [event.message for event in self.events]


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    spool = Spool(tmp_path / "spool.db", 1 << 30)
    await spool.open()
    yield spool
    await spool.close()


@pytest.fixture
def collector(spool: Spool) -> Collector:
    return Collector(spool)


@pytest.fixture
async def make_input(spool: Spool) -> AsyncIterator[MakeInput]:
    started: list[FileTailInput] = []

    async def make(target: Spool = spool, **settings: Any) -> FileTailInput:
        config = FileInputConfig.model_validate(
            {"name": "app", "poll_interval_s": 0.02, "rotate_wait_s": 0.1, **settings}
        )
        tail = FileTailInput(config, target, "site-a")
        await tail.start()
        started.append(tail)
        return tail

    yield make
    for tail in started:
        await tail.stop()


def numbered(start: int, stop: int) -> bytes:
    return b"".join(b"line %06d\n" % n for n in range(start, stop))


def numbers(events: list[event_pb2.Event]) -> collections.Counter[int]:
    return collections.Counter(int(e.message.removeprefix("line ")) for e in events)


async def polls(tail: FileTailInput, count: int = 2) -> None:
    """Wait until the input has looked at the files ``count`` more times."""
    target = tail.polls + count
    await eventually(lambda: tail.polls >= target, what=f"{count} polls")


BLOCKS = 60  # of 50 lines
BLOCK = 50
ROTATE_EVERY = 12  # blocks
RESTART_AFTER = 24  # blocks: right after a rotation, the worst moment


class NumberedWriter:
    """A program appending numbered lines to its log, reopening it by name on request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next = 0
        self.file: BinaryIO = path.open("ab", buffering=0)

    def write(self, count: int) -> None:
        self.file.write(numbered(self.next, self.next + count))
        self.next += count

    def reopen(self) -> None:
        self.file.close()
        self.file = self.path.open("ab", buffering=0)


@pytest.mark.parametrize(
    ("rotation", "pattern"),
    [("rename", "app.log*"), ("rename", "app.log"), ("copytruncate", "app.log")],
    ids=["rename-rotated-names-matched", "rename-only-current-name", "copytruncate"],
)
async def test_rotation_while_writing_and_a_restart_keeps_every_line_once(
    tmp_path: Path,
    make_input: MakeInput,
    collector: Collector,
    rotation: str,
    pattern: str,
) -> None:
    log_path = tmp_path / "app.log"
    settings = {"paths": [str(tmp_path / pattern)]}
    writer = NumberedWriter(log_path)
    rename_before, truncate_before = rotations_seen("rename"), rotations_seen("truncate")
    tail = await make_input(**settings)
    rotations = restarts = 0
    for block in range(1, BLOCKS + 1):
        writer.write(BLOCK)
        await asyncio.sleep(0.002)
        if block % ROTATE_EVERY == 0 and block < BLOCKS:
            rotations += 1
            rotated = tmp_path / f"app.log.{rotations}"
            if rotation == "rename":
                if pattern == "app.log":
                    # Only the current name is matched: a file renamed away before any poll
                    # saw it is never found (as with other tailers). A real log lives far
                    # longer than a poll interval; under load here it might not.
                    await collector.until(writer.next)
                log_path.rename(rotated)
                # The program writes on to the renamed file until told to reopen its log
                # (logrotate's postrotate signal).
                writer.write(1)
                await asyncio.sleep(0.03)
                writer.write(1)
                writer.reopen()
            else:
                # copytruncate loses what the tailer has not read when the file is cut
                # (as with logrotate); wait for it, then cut while lines keep coming.
                await collector.until(writer.next)
                shutil.copyfile(log_path, rotated)
                os.truncate(log_path, 0)
        if block == RESTART_AFTER:
            await tail.stop()
            writer.write(30)  # written while the agent is down
            tail = await make_input(**settings)
            restarts += 1
    writer.file.close()
    assert (rotations, restarts) == (BLOCKS // ROTATE_EVERY - 1, 1)

    events = await collector.until(writer.next, within=60)
    counts = numbers(events)
    assert sorted(counts) == list(range(writer.next))
    assert set(counts.values()) == {1}, [n for n, c in counts.items() if c > 1][:10]
    assert {e.type for e in events} == {"file"}
    assert {e.source for e in events} == {"site-a/file:app"}
    if rotation == "copytruncate":
        assert rotations_seen("truncate") - truncate_before == rotations
    elif pattern == "app.log*":
        # The renamed file stayed matched under its new name and was read on as the same file.
        # A restart right after a rename may notice that rename once more. On a loaded
        # machine a file can be created and renamed away between two polls: it is first
        # seen under its rotated name, so that rename cannot be noticed (its lines are
        # still read once, as asserted above).
        assert 1 <= rotations_seen("rename") - rename_before <= rotations + 1


def rotations_seen(kind: str) -> float:
    value = REGISTRY.get_sample_value(
        "edgebot_file_rotations_total", {"input": "file:app", "kind": kind}
    )
    return value or 0.0


async def test_file_renamed_away_while_down_is_finished(
    tmp_path: Path, make_input: MakeInput, collector: Collector
) -> None:
    log_path = tmp_path / "app.log"
    writer = NumberedWriter(log_path)
    writer.write(100)
    tail = await make_input(paths=[str(log_path)])
    await collector.until(100)
    await tail.stop()
    writer.write(10)  # after the last read, before the rotation
    log_path.rename(tmp_path / "app.log.1")
    writer.write(10)  # the program has not reopened its log yet
    writer.reopen()
    writer.write(5)
    writer.file.close()
    await make_input(paths=[str(log_path)])
    counts = numbers(await collector.until(125))
    assert sorted(counts) == list(range(125))
    assert set(counts.values()) == {1}


async def test_copytruncate_while_down_and_file_regrown_past_checkpoint(
    tmp_path: Path, make_input: MakeInput, collector: Collector
) -> None:
    log_path = tmp_path / "app.log"
    log_path.write_bytes(numbered(0, 100))
    tail = await make_input(paths=[str(log_path)])
    await collector.until(100)
    await tail.stop()
    os.truncate(log_path, 0)
    log_path.write_bytes(numbered(100, 400))  # longer than the checkpoint offset
    await make_input(paths=[str(log_path)])
    counts = numbers(await collector.until(400))
    assert sorted(counts) == list(range(400))
    assert set(counts.values()) == {1}


@pytest.mark.parametrize("start_at", ["beginning", "end"])
async def test_start_at(
    tmp_path: Path, make_input: MakeInput, collector: Collector, start_at: str
) -> None:
    log_path = tmp_path / "old.log"
    log_path.write_bytes(numbered(0, 10))
    tail = await make_input(paths=[str(tmp_path / "*.log")], start_at=start_at)
    with log_path.open("ab") as writer:
        writer.write(numbered(10, 13))
    expected = list(range(13)) if start_at == "beginning" else [10, 11, 12]
    assert sorted(numbers(await collector.until(len(expected)))) == expected
    # start_at applies to the very first start only: after a restart, a file that
    # appeared meanwhile is read whole, and the old one resumes at its checkpoint.
    await tail.stop()
    (tmp_path / "new.log").write_bytes(numbered(100, 105))
    with log_path.open("ab") as writer:
        writer.write(numbered(13, 15))
    await make_input(paths=[str(tmp_path / "*.log")], start_at=start_at)
    events = await collector.until(len(expected) + 7)
    assert sorted(numbers(events)) == sorted([*expected, 13, 14, 100, 101, 102, 103, 104])


PYTHON_TRACE = """2024-05-01 10:00:00,001 ERROR worker failed
Traceback (most recent call last):
  File "/app/worker.py", line 10, in run
    step()
  File "/app/worker.py", line 20, in step
    raise ValueError("boom")
ValueError: boom
"""
JAVA_TRACE = """2024-05-01 10:00:01,002 ERROR request failed
java.lang.IllegalStateException: bad state
\tat com.example.Service.handle(Service.java:42)
\tat com.example.Server.run(Server.java:7)
Caused by: java.io.IOException: closed
\t... 2 more
"""


async def test_multiline_stack_traces_become_one_event(
    tmp_path: Path, make_input: MakeInput, collector: Collector
) -> None:
    log_path = tmp_path / "app.log"
    log_path.write_text(PYTHON_TRACE + JAVA_TRACE + "2024-05-01 10:00:02,003 INFO fine\n")
    await make_input(
        paths=[str(log_path)],
        multiline={"start_pattern": r"\d{4}-\d{2}-\d{2} ", "timeout_s": 0.2},
    )
    events = await collector.until(3)
    assert collector.messages == [
        PYTHON_TRACE.rstrip("\n"),
        JAVA_TRACE.rstrip("\n"),
        "2024-05-01 10:00:02,003 INFO fine",
    ]
    offsets = [int(e.attributes["file.offset"]) for e in events]
    assert offsets == [0, len(PYTHON_TRACE), len(PYTHON_TRACE) + len(JAVA_TRACE)]


async def test_multiline_limits_cut_records(
    tmp_path: Path, make_input: MakeInput, collector: Collector
) -> None:
    log_path = tmp_path / "app.log"
    log_path.write_text("START\n" + "".join(f"  more {i}\n" for i in range(7)))
    await make_input(
        paths=[str(log_path)],
        multiline={"start_pattern": "START", "max_lines": 3, "timeout_s": 0.1},
    )
    events = await collector.until(3)
    assert [e.message.count("\n") + 1 for e in events] == [3, 3, 2]
    assert [e.attributes.get("multiline.cut") for e in events] == ["true", "true", None]


async def test_encodings_and_invalid_bytes(
    tmp_path: Path, make_input: MakeInput, collector: Collector
) -> None:
    (tmp_path / "utf8.log").write_bytes(b"caf\xc3\xa9 ok\nbroken \xff\xfe here\r\n")
    (tmp_path / "latin.log").write_bytes(b"caf\xe9 latin\n")
    await make_input(paths=[str(tmp_path / "utf8.log")])
    await make_input(name="latin", paths=[str(tmp_path / "latin.log")], encoding="latin-1")
    events = await collector.until(3)
    by_message = {e.message: e for e in events}
    assert set(by_message) == {"café ok", "broken \ufffd\ufffd here", "café latin"}
    assert by_message["broken \ufffd\ufffd here"].raw == b"broken \xff\xfe here"
    assert by_message["café ok"].raw == b""
    assert by_message["café latin"].source == "site-a/file:latin"


async def test_new_files_matching_the_glob_are_picked_up(
    tmp_path: Path, make_input: MakeInput, collector: Collector
) -> None:
    (tmp_path / "logs").mkdir()
    tail = await make_input(paths=[str(tmp_path / "logs" / "**" / "*.log")])
    assert tail.tracked_paths == []
    nested = tmp_path / "logs" / "deep" / "er"
    nested.mkdir(parents=True)
    (nested / "late.log").write_bytes(numbered(0, 3))
    (tmp_path / "logs" / "ignored.txt").write_bytes(numbered(50, 53))
    events = await collector.until(3)
    assert sorted(numbers(events)) == [0, 1, 2]
    assert {e.attributes["file.path"] for e in events} == {str(nested / "late.log")}
    assert {e.host for e in events} == {HOSTNAME}


async def test_syslog_parser_for_files(
    tmp_path: Path, make_input: MakeInput, collector: Collector
) -> None:
    log_path = tmp_path / "syslog"
    log_path.write_bytes(
        b"Nov 22 07:10:57 router1 dnsmasq[812]: query A example.com\n"
        b"<30>1 2024-11-22T08:00:01Z router1 ntpd - - - synced\n"
        b"a plain line without a header\n"
    )
    await make_input(paths=[str(log_path)], parser="syslog", timezone="Europe/Berlin")
    first, second, plain = await collector.until(3)
    assert (first.type, first.host, first.service, first.message) == (
        "syslog",
        "router1",
        "dnsmasq",
        "query A example.com",
    )
    assert first.attributes["syslog.pid"] == "812"
    assert first.time.ToDatetime().hour == 6  # 07:10:57 in Berlin (CET) is 06:10:57 UTC
    assert "net.src_ip" not in first.attributes
    assert (second.type, second.service, second.message) == ("syslog", "ntpd", "synced")
    assert (plain.type, plain.host, plain.message) == (
        "file",
        HOSTNAME,
        "a plain line without a header",
    )
    assert first.attributes["file.path"] == str(log_path)


async def test_long_lines_are_truncated_and_counted(
    tmp_path: Path, make_input: MakeInput, collector: Collector
) -> None:
    log_path = tmp_path / "app.log"
    log_path.write_bytes(b"short\n" + b"x" * 5000 + b"\nafter\n")
    before = (
        REGISTRY.get_sample_value(
            "edgebot_input_framing_errors_total", {"input": "file:app", "reason": "oversize"}
        )
        or 0
    )
    await make_input(paths=[str(log_path)], max_line_bytes=100, read_bytes=1024)
    events = await collector.until(3)
    assert collector.messages == ["short", "x" * 100, "after"]
    assert events[1].attributes["input.truncated"] == "true"
    after = REGISTRY.get_sample_value(
        "edgebot_input_framing_errors_total", {"input": "file:app", "reason": "oversize"}
    )
    assert after == before + 1


async def test_large_file_is_read_in_bounded_chunks(
    tmp_path: Path,
    make_input: MakeInput,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log_path = tmp_path / "big.log"
    lines = 20_000
    with log_path.open("wb") as out:
        for start in range(0, lines, 1000):
            out.write(b"".join(b"%06d %s\n" % (n, b"b" * 992) for n in range(start, start + 1000)))
    assert log_path.stat().st_size == 20 * 1000 * 1000
    reads: list[int] = []
    real_read = file_tail.read_chunk

    def recording_read(fd: int, size: int, offset: int) -> bytes:
        reads.append(size)
        return real_read(fd, size, offset)

    monkeypatch.setattr(file_tail, "read_chunk", recording_read)
    await make_input(paths=[str(log_path)], read_bytes=65536, commit_max_events=1000)
    events = await collector.until(lines, within=30)
    assert [int(e.message[:6]) for e in events] == list(range(lines))
    assert max(reads) == 65536
    assert len(reads) >= 20 * 1000 * 1000 // 65536


async def test_full_spool_makes_the_file_input_wait(tmp_path: Path, make_input: MakeInput) -> None:
    small = Spool(tmp_path / "small.db", 16 * 1024)
    await small.open()
    log_path = tmp_path / "app.log"
    log_path.write_bytes(numbered(0, 1000))
    dropped = REGISTRY.get_sample_value("edgebot_spool_dropped_total", {"reason": "spool_full"})
    tail = await make_input(target=small, paths=[str(log_path)], blocked_poll_s=0.01)
    await eventually(
        lambda: (
            (
                REGISTRY.get_sample_value(
                    "edgebot_input_blocked_seconds_total", {"input": "file:app"}
                )
                or 0
            )
            > 0
        ),
        what="the file input to wait for room",
    )
    collector = Collector(small)
    counts = numbers(await collector.until(1000))
    assert sorted(counts) == list(range(1000))
    assert set(counts.values()) == {1}
    assert (
        REGISTRY.get_sample_value("edgebot_spool_dropped_total", {"reason": "spool_full"})
        == dropped
    )
    await tail.stop()
    await small.close()


def test_bad_file_input_config_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "edge.yaml"
    for body, key in [
        ("inputs:\n  files:\n  - name: a\n    paths: []\n", r"inputs\.files\.0\.paths"),
        (
            "inputs:\n  files:\n  - name: a\n    paths: [x]\n    encoding: utf-16\n",
            r"inputs\.files\.0\.encoding: .*ASCII",
        ),
        (
            "inputs:\n  files:\n  - name: a\n    paths: [x]\n    multiline:\n"
            "      start_pattern: '('\n",
            r"inputs\.files\.0\.multiline\.start_pattern",
        ),
        (
            "inputs:\n  files:\n  - {name: a, paths: [x]}\n  - {name: a, paths: [y]}\n",
            r"inputs\.files: .*unique: a",
        ),
    ]:
        bad.write_text(body)
        with pytest.raises(ConfigError, match=key):
            load_config(AgentConfig, bad, "agent", environ={})
