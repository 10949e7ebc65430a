"""Lines and multi-line records cut from file chunks, with the file offsets they came from.

Pure and bounded: a line longer than the limit keeps its first ``max_line_bytes`` and the
rest is skipped up to the next LF; a record is cut at its line and byte limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_agent.config import MultilineConfig


@dataclass(frozen=True)
class Line:
    data: bytes  # without the LF (and a CR before it)
    start: int  # file offset of its first byte
    end: int  # file offset just past its LF
    truncated: bool = False


@dataclass(frozen=True)
class Record:
    """One event's worth of a file: a line, or a start line and its continuation lines."""

    data: bytes
    start: int
    end: int
    truncated: bool = False  # a line was longer than max_line_bytes, or the record cut short
    cut: bool = False  # ended by the multi-line limits, not by the next start line


class LineSplitter:
    def __init__(self, max_line_bytes: int, offset: int = 0) -> None:
        self.max_line_bytes = max_line_bytes
        self.reset(offset)

    def reset(self, offset: int) -> None:
        """Forget any partial line; the next byte fed is at ``offset`` in the file."""
        self._buffer = bytearray()
        self._line_start = offset
        self._offset = offset
        self._truncated = False

    @property
    def has_partial(self) -> bool:
        return bool(self._buffer) or self._truncated

    def feed(self, chunk: bytes) -> list[Line]:
        lines: list[Line] = []
        base, pos = self._offset, 0
        while True:
            newline = chunk.find(b"\n", pos)
            if newline < 0:
                self._keep(chunk, pos, len(chunk))
                break
            self._keep(chunk, pos, newline)
            lines.append(self._line(base + newline + 1))
            pos = newline + 1
        self._offset = base + len(chunk)
        return lines

    def flush(self) -> list[Line]:
        """The last line of a file that ends without LF (used once the file is finished)."""
        return [self._line(self._offset)] if self.has_partial else []

    def _keep(self, chunk: bytes, start: int, stop: int) -> None:
        room = self.max_line_bytes - len(self._buffer)
        if stop - start > room:
            self._truncated = True
            stop = start + room
        self._buffer += chunk[start:stop]

    def _line(self, end: int) -> Line:
        data = bytes(self._buffer)
        if data.endswith(b"\r") and not self._truncated:
            data = data[:-1]
        line = Line(data, self._line_start, end, self._truncated)
        self._buffer.clear()
        self._line_start = end
        self._truncated = False
        return line


class MultilineJoiner:
    """Without a config every non-empty line is a record; with one, lines are joined."""

    def __init__(self, config: MultilineConfig | None, encoding: str) -> None:
        self.config = config
        self.encoding = encoding
        self._start = re.compile(config.start_pattern) if config else None
        self._lines: list[Line] = []
        self._bytes = 0
        self._last_added = 0.0

    @property
    def pending(self) -> bool:
        return bool(self._lines)

    def reset(self) -> None:
        self._lines = []
        self._bytes = 0

    def add(self, line: Line, now: float) -> list[Record]:
        if not line.data and not self._lines:
            return []
        if self.config is None or self._start is None:
            return [Record(line.data, line.start, line.end, line.truncated)]
        records: list[Record] = []
        if self._lines:
            is_start = self._start.match(line.data.decode(self.encoding, "replace")) is not None
            full = (
                len(self._lines) >= self.config.max_lines
                or self._bytes + 1 + len(line.data) > self.config.max_bytes
            )
            if is_start or full:
                records.append(self._emit(cut=not is_start))
        self._lines.append(line)
        self._bytes += len(line.data) + (1 if len(self._lines) > 1 else 0)
        self._last_added = now
        return records

    def expire(self, now: float) -> list[Record]:
        """The pending record, if no line joined it for the timeout."""
        if self.config and self._lines and now - self._last_added >= self.config.timeout_s:
            return [self._emit(cut=False)]
        return []

    def flush(self) -> list[Record]:
        return [self._emit(cut=False)] if self._lines else []

    def _emit(self, cut: bool) -> Record:
        lines, self._lines, self._bytes = self._lines, [], 0
        data = b"\n".join(line.data for line in lines)
        limit = self.config.max_bytes if self.config else len(data)
        truncated = len(data) > limit or any(line.truncated for line in lines)
        return Record(data[:limit], lines[0].start, lines[-1].end, truncated, cut)
