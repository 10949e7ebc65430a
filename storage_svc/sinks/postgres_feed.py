"""Every event committed to PostgreSQL, by any storage replica, handed on in seq order.

Writers take one advisory lock from assigning seq numbers until commit, so events become
visible in seq order and "everything above the last seq seen" never skips one. Writers
NOTIFY their last seq at commit; the feed LISTENs, and also polls on a timer in case a
notification was lost with its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg  # no stubs or py.typed (asyncpg 0.32)

from storage_svc.query import EventFilter
from storage_svc.sinks.base import CommitListener, SinkError, StoredEvent

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "edgebot_events_"
FETCH_LIMIT = 1000
FAILURE_LOG_INTERVAL_S = 30.0
EVERYTHING = EventFilter()

ReadAfter = Callable[[int, EventFilter, int], Awaitable[list[StoredEvent]]]
Connect = Callable[[], Awaitable[asyncpg.Connection]]
FEED_ERRORS = (
    SinkError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def notify_channel(schema: str) -> str:
    """The NOTIFY channel of one EdgeBot schema (channels are per database)."""
    return CHANNEL_PREFIX + schema


class CommitFeed:
    """Publishes committed events to ``on_commit`` while ``listening()`` is true.

    While nobody listens it only keeps its cursor at the newest committed seq, so a new
    subscriber gets no backlog (a tail replays older events from the store itself).
    """

    def __init__(
        self,
        channel: str,
        connect: Connect,
        read_after: ReadAfter,
        last_seq: Callable[[], Awaitable[int]],
        on_commit: CommitListener,
        listening: Callable[[], bool],
        poll_interval_s: float,
    ) -> None:
        self._channel = channel
        self._connect = connect
        self._read_after = read_after
        self._last_seq = last_seq
        self._on_commit = on_commit
        self._listening = listening
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._cursor = 0
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None
        self._last_failure_log = 0.0

    def start(self, cursor: int) -> None:
        """Follow commits after ``cursor``, the newest seq committed before any reader ran."""
        self._cursor = cursor
        self._task = asyncio.create_task(self._run(), name="postgres-commit-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_listener()

    def committed(self, seq: int) -> None:
        """Events up to ``seq`` were committed (here, or notified from another replica)."""
        if self._listening():
            self._wake.set()
        else:
            # Safe without a read: whoever subscribes from here on starts at or above it.
            self._cursor = max(self._cursor, seq)

    async def _run(self) -> None:
        while True:
            try:
                await self._ensure_listener()
                await self._catch_up()
            except FEED_ERRORS as exc:
                self._failed(exc)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel
            # that arrives as the event is set, and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def _catch_up(self) -> None:
        if not self._listening():
            newest = await self._last_seq()
            # Checked again after the read: a subscriber that arrived meanwhile reads its own
            # start after registering, so it may need events above ``newest``, never below.
            if not self._listening():
                self._cursor = max(self._cursor, newest)
            return
        while True:
            stored = await self._read_after(self._cursor, EVERYTHING, FETCH_LIMIT)
            if not stored:
                return
            self._cursor = stored[-1].seq
            try:
                self._on_commit(stored)
            except Exception:
                log.exception("commit listener failed; the events are stored")

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        await self._close_listener()
        conn = await self._connect()
        try:
            await conn.add_listener(self._channel, self._notified)
        except BaseException:
            await conn.close()
            raise
        self._listener = conn
        # Commits during the reconnect sent notifications nobody heard.
        self._wake.set()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            seq = int(payload)
        except ValueError:
            self._wake.set()
            return
        self.committed(seq)

    async def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(*FEED_ERRORS):
                await conn.close(timeout=2)

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
            self._last_failure_log = now
            log.warning(
                "tail feed cannot read PostgreSQL, retrying: %s: %s", type(exc).__name__, exc
            )
        if self._listener is not None and self._listener.is_closed():
            self._listener = None
