"""A deliberately slow gRPC client: raw HTTP/2 frames over mTLS, so a test can open a call,
send a message prefix and then trickle its bytes (which no gRPC library lets one do).

Only what a slowloris needs: the connection preface, SETTINGS (and acks), one HEADERS frame
per call (HPACK literals, no Huffman), DATA frames, and noticing when the server ends a call
(a frame with END_STREAM, or RST_STREAM) or the connection (GOAWAY, EOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from pathlib import Path

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def _hpack_length(value: int) -> bytes:
    """HPACK integer with a 7-bit prefix and the Huffman bit clear."""
    if value < 127:
        return bytes([value])
    out = bytearray([127])
    value -= 127
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    encoded_name, encoded_value = name.encode(), value.encode()
    return (
        b"\x00"  # literal header field without indexing, new name
        + _hpack_length(len(encoded_name))
        + encoded_name
        + _hpack_length(len(encoded_value))
        + encoded_value
    )


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    header = struct.pack("!I", len(payload))[1:] + bytes([kind, flags])
    return header + struct.pack("!I", stream_id & 0x7FFFFFFF) + payload


def grpc_message(payload: bytes) -> bytes:
    return b"\x00" + struct.pack("!I", len(payload)) + payload


class SlowClient:
    """One HTTP/2 connection to a gRPC server; calls on odd stream ids 1, 3, 5, ..."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.next_stream = 1
        self.ended: set[int] = set()
        self.closed = asyncio.Event()
        self._frames = asyncio.create_task(self._read_frames())

    @classmethod
    async def connect(cls, port: int, ca: Path, cert: Path, key: Path) -> SlowClient:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        context.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
        writer.write(PREFACE + frame(SETTINGS, 0, 0))
        await writer.drain()
        return cls(reader, writer)

    async def open_call(self, path: str) -> int:
        stream_id = self.next_stream
        self.next_stream += 2
        block = b"".join(
            _literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "https"),
                (":path", path),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        await self.send(frame(HEADERS, END_HEADERS, stream_id, block))
        return stream_id

    async def send_data(self, stream_id: int, data: bytes) -> None:
        await self.send(frame(DATA, 0, stream_id, data))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def trickle(self, stream_id: int, data: bytes, interval_s: float) -> int:
        """Send ``data`` one byte per interval until done or the server ends the call."""
        sent = 0
        for byte in data:
            if stream_id in self.ended or self.closed.is_set():
                break
            with contextlib.suppress(ConnectionError):
                await self.send_data(stream_id, bytes([byte]))
                sent += 1
            await asyncio.sleep(interval_s)
        return sent

    async def _read_frames(self) -> None:
        try:
            while True:
                header = await self.reader.readexactly(9)
                length = int.from_bytes(header[:3], "big")
                kind, flags = header[3], header[4]
                stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
                payload = await self.reader.readexactly(length)
                if kind == SETTINGS and not flags & ACK:
                    await self.send(frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    await self.send(frame(PING, ACK, 0, payload))
                elif kind == RST_STREAM or (kind in (HEADERS, DATA) and flags & END_STREAM):
                    self.ended.add(stream_id)
                elif kind == GOAWAY:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self.closed.set()

    async def close(self) -> None:
        self._frames.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._frames
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
