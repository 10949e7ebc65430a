"""Server-Sent Events: the live views' wire format, a relay with heartbeats, a stream limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


class EventStream:
    """One open ``text/event-stream`` response."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response

    @classmethod
    async def open(cls, request: web.Request, retry_ms: int) -> EventStream:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        stream = cls(response)
        await stream._write(f"retry: {retry_ms}\n\n")
        return stream

    async def send(self, event: str, data: Any, event_id: str | None = None) -> None:
        lines = [f"event: {event}"]
        if event_id:
            lines.append(f"id: {event_id}")
        lines.extend(f"data: {line}" for line in json.dumps(data).splitlines())
        await self._write("\n".join(lines) + "\n\n")

    async def comment(self, text: str) -> None:
        await self._write(f": {text}\n\n")

    async def _write(self, text: str) -> None:
        await self.response.write(text.encode())


async def relay(
    messages: AsyncIterable[T],
    forward: Callable[[T], Awaitable[None]],
    stream: EventStream,
    heartbeat_s: float,
) -> None:
    """Forward every message; a comment line while idle keeps proxies and dead peers honest."""
    iterator = aiter(messages)
    pending: asyncio.Future[T] = asyncio.ensure_future(anext(iterator))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=heartbeat_s)
            if not done:
                await stream.comment("ping")
                continue
            try:
                message = pending.result()
            except StopAsyncIteration:
                return
            await forward(message)
            pending = asyncio.ensure_future(anext(iterator))
    finally:
        pending.cancel()
        pending.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class LiveStreams:
    """Counts open live streams (refusing past the limit) and ends them all on shutdown."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def open(self) -> int:
        return len(self._tasks)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if len(self._tasks) >= self.limit:
            raise web.HTTPTooManyRequests(
                text=json.dumps(
                    {"error": f"Too many live views are open ({self.limit}) — close some tabs."}
                ),
                content_type="application/json",
            )
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    async def close_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
