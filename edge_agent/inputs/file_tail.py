"""Log files: glob patterns followed by polling, through rotation and restarts.

Files are tracked by identity (device:inode), not by name, so a file renamed by rotation
is read to its end under its new name (or, if no pattern matches it any more, until it
stops growing for ``rotate_wait_s``) while the new file is read from its start. A file
that shrinks, or whose first bytes change, was truncated (copytruncate) and is read
again from offset 0.

Exactly once across restarts: each commit to the spool carries the file position just
past its last line, saved in the same transaction (``Spool.append`` checkpoints). On
start a file resumes at its checkpoint when its first bytes still match the saved
fingerprint (otherwise the inode was reused or the file rewritten: offset 0). Lines read
but not committed are simply read again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import socket
import stat
import time
import zoneinfo
from dataclasses import dataclass, field

from edge_agent import metrics
from edge_agent.config import FileInputConfig
from edge_agent.inputs.base import Input, PendingCommit, commit_waiting
from edge_agent.inputs.lines import LineSplitter, MultilineJoiner, Record
from edge_agent.parsers.syslog import Received, has_syslog_header, parse_syslog
from edge_agent.spool import FileCheckpoint, Spool
from gen.edgebot.v1 import event_pb2
from mesh.ids import uuid7
from mesh.timeutil import now_ns, ns_to_ts

log = logging.getLogger(__name__)
# Enough of a log file's head (timestamps, host names) to tell two files apart.
FINGERPRINT_BYTES = 256


def read_chunk(fd: int, size: int, offset: int) -> bytes:
    """One bounded read; the only way file contents are read."""
    return os.pread(fd, size, offset)


@dataclass
class _TrackedFile:
    identity: str
    path: str
    fd: int
    offset: int  # next byte to read
    committed: int  # position up to which every line is in the spool
    fingerprint: bytes
    splitter: LineSplitter
    joiner: MultilineJoiner
    gone_since: float | None = None  # no pattern matches it any more
    last_growth: float = field(default_factory=time.monotonic)


def _match_files(patterns: list[str]) -> dict[str, str]:
    """Regular files the patterns match now: identity -> path (first match wins)."""
    found: dict[str, str] = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern, recursive=True)):
            try:
                info = os.stat(path)
            except OSError:
                continue  # renamed or deleted since the glob
            if stat.S_ISREG(info.st_mode):
                found.setdefault(_identity(info), path)
    return found


def _identity(info: os.stat_result) -> str:
    return f"{info.st_dev}:{info.st_ino}"


@dataclass(frozen=True)
class _Opened:
    path: str
    fd: int
    identity: str
    size: int
    head: bytes


def _open_file(path: str) -> _Opened | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        log.warning("cannot open %s: %s", path, error)
        return None
    info = os.fstat(fd)
    return _Opened(path, fd, _identity(info), info.st_size, read_chunk(fd, FINGERPRINT_BYTES, 0))


def _find_renamed(checkpoint: FileCheckpoint) -> _Opened | None:
    """The checkpointed file under another name in the same directory, if it is there."""
    directory = os.path.dirname(checkpoint.path) or "."
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        try:
            if entry.is_file() and _identity(entry.stat()) == checkpoint.identity:
                return _open_file(entry.path)
        except OSError:
            continue
    return None


def _size_and_head(fd: int) -> tuple[int, bytes]:
    return os.fstat(fd).st_size, read_chunk(fd, FINGERPRINT_BYTES, 0)


class FileTailInput(Input):
    def __init__(self, config: FileInputConfig, spool: Spool, agent_id: str) -> None:
        self.config = config
        self.spool = spool
        self.name = f"file:{config.name}"
        self.source = f"{agent_id}/{self.name}"
        self.hostname = socket.gethostname()
        self.zone = zoneinfo.ZoneInfo(config.timezone)
        self.polls = 0
        self._files: dict[str, _TrackedFile] = {}
        self._checkpoints: dict[str, FileCheckpoint] = {}
        self._first_start = False
        self._task: asyncio.Task[None] | None = None

    @property
    def tracked_paths(self) -> list[str]:
        return sorted(tracked.path for tracked in self._files.values())

    async def start(self) -> None:
        state = await self.spool.file_input_state(self.config.name)
        self._checkpoints = dict(state.checkpoints)
        self._first_start = not state.started
        await self._discover()
        await self._resume_rotated_away()
        # Checkpoints of files that are no longer there are dropped; the input is marked
        # started so that files appearing from now on are read from their beginning.
        stale = [identity for identity in self._checkpoints if identity not in self._files]
        await self.spool.save_file_checkpoints(
            self.config.name,
            [self._checkpoint(t, t.committed) for t in self._files.values()],
            stale,
        )
        self._checkpoints.clear()
        self._first_start = False
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-tail")
        log.info("tailing files", extra={"input": self.name, "files": self.tracked_paths})

    async def _resume_rotated_away(self) -> None:
        """Finish files renamed out of the patterns while the agent was down (or before it
        had read them to the end): looked for by identity next to their last known path."""
        for identity, checkpoint in self._checkpoints.items():
            if identity in self._files:
                continue
            opened = await asyncio.to_thread(_find_renamed, checkpoint)
            if opened is None:
                continue
            self._track(opened)
            tracked = self._files.get(identity)
            if tracked is not None:
                tracked.gone_since = time.monotonic()

    async def stop(self) -> None:
        """Stop reading; lines read but not committed are read again on the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for tracked in list(self._files.values()):
            self._close(tracked)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:
                log.exception("file input %s: poll failed; retrying", self.name)
            await asyncio.sleep(self.config.poll_interval_s)

    async def poll(self) -> None:
        """Notice new, renamed and vanished files, then read every tracked file to its end."""
        await self._discover()
        for tracked in list(self._files.values()):
            try:
                await self._follow(tracked)
            except Exception:
                self._rewind(tracked)
                raise
        self.polls += 1

    async def _discover(self) -> None:
        found = await asyncio.to_thread(_match_files, self.config.paths)
        for identity, path in found.items():
            tracked = self._files.get(identity)
            if tracked is None:
                opened = await asyncio.to_thread(_open_file, path)
                if opened is not None:
                    self._track(opened)
            elif tracked.path != path:
                metrics.FILE_ROTATIONS.labels(self.name, "rename").inc()
                log.info("%s: %s renamed to %s", self.name, tracked.path, path)
                tracked.path = path
                tracked.gone_since = None
                # The new name is where a restart looks for the file first.
                await self.spool.save_file_checkpoints(
                    self.config.name, [self._checkpoint(tracked, tracked.committed)]
                )
        now = time.monotonic()
        for identity, tracked in self._files.items():
            if identity not in found and tracked.gone_since is None:
                tracked.gone_since = now
        metrics.FILES_TRACKED.labels(self.name).set(len(self._files))

    def _track(self, opened: _Opened) -> None:
        if opened.identity in self._files:  # the name moved to a file already tracked
            os.close(opened.fd)
            return
        offset = self._start_offset(opened.identity, opened.size, opened.head)
        checkpoint = self._checkpoints.get(opened.identity)
        if checkpoint is not None and checkpoint.path != opened.path:
            metrics.FILE_ROTATIONS.labels(self.name, "rename").inc()
        self._files[opened.identity] = _TrackedFile(
            opened.identity,
            opened.path,
            opened.fd,
            offset,
            offset,
            opened.head,
            LineSplitter(self.config.max_line_bytes, offset),
            MultilineJoiner(self.config.multiline, self.config.encoding),
        )
        log.info("%s: following %s from offset %d", self.name, opened.path, offset)

    def _start_offset(self, identity: str, size: int, head: bytes) -> int:
        checkpoint = self._checkpoints.get(identity)
        if checkpoint is not None:
            if head.startswith(checkpoint.fingerprint) and checkpoint.offset <= size:
                return checkpoint.offset
            # Truncated or rewritten while the agent was down, or a reused inode.
            metrics.FILE_ROTATIONS.labels(self.name, "truncate").inc()
            return 0
        if self._first_start and self.config.start_at == "end":
            return size
        return 0

    async def _follow(self, tracked: _TrackedFile) -> None:
        size, head = await asyncio.to_thread(_size_and_head, tracked.fd)
        if size < tracked.offset or not head.startswith(tracked.fingerprint):
            await self._restart_truncated(tracked, head)
        tracked.fingerprint = head
        records: list[Record] = []
        while chunk := await asyncio.to_thread(
            read_chunk, tracked.fd, self.config.read_bytes, tracked.offset
        ):
            tracked.offset += len(chunk)
            tracked.last_growth = time.monotonic()
            metrics.INPUT_BYTES.labels(self.name).inc(len(chunk))
            now = time.monotonic()
            for line in tracked.splitter.feed(chunk):
                records.extend(tracked.joiner.add(line, now))
            if len(records) >= self.config.commit_max_events:
                await self._commit(tracked, records)
                records = []
        records.extend(tracked.joiner.expire(time.monotonic()))
        finished = self._finished(tracked)
        if finished:
            for line in tracked.splitter.flush():
                records.extend(tracked.joiner.add(line, time.monotonic()))
            records.extend(tracked.joiner.flush())
        await self._commit(tracked, records)
        if finished:
            await self._retire(tracked)

    async def _restart_truncated(self, tracked: _TrackedFile, head: bytes) -> None:
        """Keep the partial line or record of the old contents, then read from offset 0."""
        metrics.FILE_ROTATIONS.labels(self.name, "truncate").inc()
        log.info("%s: %s was truncated; reading it from the start", self.name, tracked.path)
        records = [r for line in tracked.splitter.flush() for r in tracked.joiner.add(line, 0)]
        records.extend(tracked.joiner.flush())
        tracked.fingerprint = head
        tracked.offset = tracked.committed = 0
        tracked.splitter.reset(0)
        events = [self._event(record, tracked.path) for record in records]
        checkpoints = [None] * len(events)
        await commit_waiting(
            self.spool, PendingCommit(events, checkpoints), self.name, self.config.blocked_poll_s
        )
        await self.spool.save_file_checkpoints(self.config.name, [self._checkpoint(tracked, 0)])

    def _finished(self, tracked: _TrackedFile) -> bool:
        if tracked.gone_since is None:
            return False
        quiet_s = time.monotonic() - max(tracked.gone_since, tracked.last_growth)
        return quiet_s >= self.config.rotate_wait_s

    async def _commit(self, tracked: _TrackedFile, records: list[Record]) -> None:
        if not records:
            return
        metrics.MESSAGES_RECEIVED.labels(self.name).inc(len(records))
        for record in records:
            if record.truncated:
                metrics.FRAMING_ERRORS.labels(self.name, "oversize").inc()
        events = [self._event(record, tracked.path) for record in records]
        checkpoints = [self._checkpoint(tracked, record.end) for record in records]
        pending = PendingCommit(events, checkpoints)
        await commit_waiting(self.spool, pending, self.name, self.config.blocked_poll_s)
        tracked.committed = records[-1].end

    def _rewind(self, tracked: _TrackedFile) -> None:
        """After a failed commit: read again from what the spool has."""
        tracked.offset = tracked.committed
        tracked.splitter.reset(tracked.committed)
        tracked.joiner.reset()

    async def _retire(self, tracked: _TrackedFile) -> None:
        log.info("%s: finished %s", self.name, tracked.path)
        await self.spool.save_file_checkpoints(self.config.name, forget=[tracked.identity])
        self._close(tracked)

    def _close(self, tracked: _TrackedFile) -> None:
        self._files.pop(tracked.identity, None)
        os.close(tracked.fd)
        metrics.FILES_TRACKED.labels(self.name).set(len(self._files))

    def _checkpoint(self, tracked: _TrackedFile, offset: int) -> FileCheckpoint:
        return FileCheckpoint(
            self.config.name, tracked.identity, tracked.path, offset, tracked.fingerprint
        )

    def _event(self, record: Record, path: str) -> event_pb2.Event:
        received_ns = now_ns()
        event = self._file_event(record, received_ns)
        if self.config.parser == "syslog":
            event = self._as_syslog(record, received_ns, event)
        event.attributes["file.path"] = path
        event.attributes["file.offset"] = str(record.start)
        if record.truncated:
            event.attributes["input.truncated"] = "true"
        if record.cut:
            event.attributes["multiline.cut"] = "true"
        return event

    def _as_syslog(
        self, record: Record, received_ns: int, file_event: event_pb2.Event
    ) -> event_pb2.Event:
        """The line parsed as syslog; lines without a syslog header stay file events."""
        data = record.data
        if file_event.raw or self.config.encoding.replace("_", "-").lower() != "utf-8":
            data = file_event.message.encode()
        if not has_syslog_header(data):
            return file_event
        event = parse_syslog(data, Received(received_ns, "", self.source, self.zone))
        if event.type != "syslog":
            file_event.attributes["parse.error"] = event.attributes["parse.error"]
            return file_event
        del event.attributes["net.src_ip"]
        event.host = event.host or self.hostname
        event.raw = file_event.raw or record.data
        return event

    def _file_event(self, record: Record, received_ns: int) -> event_pb2.Event:
        try:
            text = record.data.decode(self.config.encoding)
            raw = b""
        except UnicodeDecodeError:
            text = record.data.decode(self.config.encoding, "replace")
            raw = record.data  # the original bytes, since the message had some replaced
        event = event_pb2.Event(
            id=uuid7(), type="file", source=self.source, host=self.hostname, message=text, raw=raw
        )
        ns_to_ts(received_ns, event.time)
        ns_to_ts(received_ns, event.observed_time)
        return event
