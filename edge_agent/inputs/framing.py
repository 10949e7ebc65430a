"""Syslog over TCP (RFC 6587): frames cut from a byte stream, framing detected per frame.

A frame that starts with a count, a space and ``<`` (``57 <13>1 ...``) is octet-counted;
anything else runs to the next LF or NUL (CR before it is dropped), which covers
``logger -T``, rsyslog's traditional framing and Python's ``SysLogHandler`` (NUL). The
``<`` check keeps a plain line such as ``404 not found`` from being read as a count.
Memory is bounded: a frame longer than ``max_frame_bytes`` is cut there (``truncated``,
error ``oversize``) and its remainder is skipped, which keeps the stream in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Counts longer than this are not octet counting (10 digits reach 9.9 GB).
MAX_COUNT_DIGITS = 10
DELIMITER = re.compile(rb"[\n\x00]")
SEPARATORS = b"\n\r\x00"
_DIGITS = frozenset(b"0123456789")
DELIMITED = 0
NEED_MORE = -1


@dataclass(frozen=True)
class Frame:
    data: bytes
    truncated: bool = False
    # Why the frame is not whole: "oversize" (cut at the limit), "incomplete" (the
    # stream ended inside an octet-counted frame).
    error: str | None = None


class Framer:
    """Feed bytes as they arrive; get back every frame completed so far."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._skip_bytes = 0  # rest of an oversized octet-counted frame
        self._skip_line = False  # rest of an oversized delimited frame
        self._ended = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        return self._frames()

    def finish(self) -> list[Frame]:
        """The stream ended: whatever is buffered becomes a last frame."""
        self._ended = True
        frames = self._frames()
        self._buffer.clear()
        return frames

    def _frames(self) -> list[Frame]:
        frames: list[Frame] = []
        while self._skip_rest():
            del self._buffer[: _leading_separators(self._buffer)]
            if not self._buffer:
                break
            frame = self._next_frame()
            if frame is None:
                break
            frames.append(frame)
        return frames

    def _skip_rest(self) -> bool:
        """Drop what is left of an oversized frame; False while more of it is to come."""
        if self._skip_bytes:
            dropped = min(self._skip_bytes, len(self._buffer))
            del self._buffer[:dropped]
            self._skip_bytes -= dropped
            return not self._skip_bytes
        if self._skip_line:
            end = DELIMITER.search(self._buffer)
            if end is None:
                self._buffer.clear()
                return False
            del self._buffer[: end.end()]
            self._skip_line = False
        return True

    def _next_frame(self) -> Frame | None:
        count, header = self._octet_header()
        if count == NEED_MORE:
            return None
        if count == DELIMITED:
            return self._delimited_frame()
        return self._counted_frame(count, header)

    def _octet_header(self) -> tuple[int, int]:
        """(count, header length) of an octet-counted frame, or (DELIMITED | NEED_MORE, 0)."""
        buffer = self._buffer
        digits = 0
        while digits < len(buffer) and digits <= MAX_COUNT_DIGITS and buffer[digits] in _DIGITS:
            digits += 1
        if digits == 0 or digits > MAX_COUNT_DIGITS or buffer[0] == ord("0"):
            return DELIMITED, 0
        if len(buffer) < digits + 2:
            return (DELIMITED if self._ended else NEED_MORE), 0
        if buffer[digits] != ord(" ") or buffer[digits + 1] != ord("<"):
            return DELIMITED, 0
        return int(buffer[:digits]), digits + 1

    def _counted_frame(self, count: int, header: int) -> Frame | None:
        limit = self.max_frame_bytes
        available = len(self._buffer) - header
        if count > limit and available >= limit:
            data = bytes(self._buffer[header : header + limit])
            del self._buffer[: header + limit]
            self._skip_bytes = count - limit
            return Frame(data, truncated=True, error="oversize")
        if available >= count:
            data = bytes(self._buffer[header : header + count])
            del self._buffer[: header + count]
            return Frame(data)
        if not self._ended:
            return None
        data = bytes(self._buffer[header : header + limit])
        self._buffer.clear()
        return Frame(data, truncated=True, error="incomplete")

    def _delimited_frame(self) -> Frame | None:
        limit = self.max_frame_bytes
        end = DELIMITER.search(self._buffer)
        if end is None and (self._ended or len(self._buffer) > limit):
            data = bytes(self._buffer[:limit])
            self._skip_line = len(self._buffer) > limit
            self._buffer.clear()
            if self._skip_line:
                return Frame(data, truncated=True, error="oversize")
            return Frame(data.rstrip(b"\r"))
        if end is None:
            return None
        data = bytes(self._buffer[: end.start()]).rstrip(b"\r")
        del self._buffer[: end.end()]
        if len(data) > limit:
            return Frame(data[:limit], truncated=True, error="oversize")
        return Frame(data)


def _leading_separators(buffer: bytearray) -> int:
    index = 0
    while index < len(buffer) and buffer[index] in SEPARATORS:
        index += 1
    return index
