"""Live tail: newly committed events fanned out to subscribers, resumable by cursor.

A subscriber has a bounded buffer. Publishing never waits: a subscriber that falls more
than its buffer behind is dropped with SubscriberOverflow and can resume from its cursor,
because every published event is already committed and can be replayed from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence

from storage_svc.query import EventFilter, InvalidArgument, decode_token, encode_token, matches
from storage_svc.sinks.base import PrimarySink, StoredEvent


class SubscriberOverflow(Exception):
    def __init__(self, buffer: int, resume_seq: int) -> None:
        super().__init__(
            f"tail subscriber fell more than {buffer} events behind; "
            f"resume from cursor {encode_cursor(resume_seq)}"
        )
        self.buffer = buffer
        self.resume_seq = resume_seq


class TailClosed(Exception):
    def __init__(self, resume_seq: int) -> None:
        super().__init__(
            "storage is shutting down; resume from cursor "
            f"{encode_cursor(resume_seq)} on another replica or after the restart"
        )
        self.resume_seq = resume_seq


class _Closed(Exception):
    """The hub closed the subscription (shutdown)."""


class _Overflowed(Exception):
    """The subscription dropped events; its reader decides what to tell the client."""


def encode_cursor(seq: int) -> str:
    return encode_token({"seq": seq})


def decode_cursor(cursor: str) -> int | None:
    """The sequence number a cursor names, or None for an empty cursor (start now)."""
    if not cursor:
        return None
    seq = decode_token(cursor, "start_cursor").get("seq")
    if not isinstance(seq, int) or seq < 0:
        raise InvalidArgument("start_cursor", "not a cursor this server issued")
    return seq


class Subscription:
    def __init__(self, selection: EventFilter, buffer: int) -> None:
        self.selection = selection
        self.buffer = buffer
        self.overflowed = False
        self.closed = False
        self._pending: deque[StoredEvent] = deque()
        self._wake = asyncio.Event()

    def offer(self, events: Sequence[StoredEvent]) -> None:
        if self.overflowed:
            return
        selected = [stored for stored in events if matches(self.selection, stored.event)]
        if not selected:
            return
        # A subscriber that has taken everything is not behind, whatever the batch size.
        if self._pending and len(self._pending) + len(selected) > self.buffer:
            self.overflowed = True
            self._pending.clear()
        else:
            self._pending.extend(selected)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def forgive_overflow(self) -> None:
        """Forget an overflow; only for a reader about to re-read the store from its cursor."""
        self.overflowed = False

    async def take(self, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` pending events, waiting for some; raises on overflow."""
        while not self._pending and not self.overflowed and not self.closed:
            self._wake.clear()
            await self._wake.wait()
        if self.overflowed:
            raise _Overflowed
        if self.closed and not self._pending:
            raise _Closed
        count = min(limit, len(self._pending))
        return [self._pending.popleft() for _ in range(count)]


class TailHub:
    """The live subscribers of one storage process."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """End every subscription (the server is draining)."""
        for subscriber in tuple(self._subscribers):
            subscriber.close()

    def publish(self, events: Sequence[StoredEvent]) -> None:
        for subscriber in tuple(self._subscribers):
            subscriber.offer(events)

    @contextlib.contextmanager
    def subscribe(self, selection: EventFilter, buffer: int) -> Iterator[Subscription]:
        subscription = Subscription(selection, buffer)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)


async def follow(
    store: PrimarySink,
    hub: TailHub,
    selection: EventFilter,
    after_seq: int | None,
    buffer: int,
    page: int,
) -> AsyncGenerator[list[StoredEvent], None]:
    """Events after ``after_seq`` (or from now), stored ones first, then live ones.

    Subscribing before reading the store, and skipping live events the store already gave,
    leaves neither gaps nor repeats at the switch. "Now" is the newest seq read before
    subscribing: what commits between that read and the subscription comes from the store.
    """
    if after_seq is None:
        after_seq = await store.last_seq()
    with hub.subscribe(selection, buffer) as live:
        last = after_seq
        async for stored in _replay(store, live, selection, last, page):
            last = stored[-1].seq
            yield stored
        while True:
            try:
                taken = await live.take(page)
            except _Overflowed:
                raise SubscriberOverflow(buffer, last) from None
            except _Closed:
                raise TailClosed(last) from None
            fresh = [stored for stored in taken if stored.seq > last]
            if fresh:
                last = fresh[-1].seq
                yield fresh


async def _replay(
    store: PrimarySink, live: Subscription, selection: EventFilter, after_seq: int, page: int
) -> AsyncIterator[list[StoredEvent]]:
    last = after_seq
    while True:
        # Live events dropped while replaying were committed before this read, so it
        # returns them: a slow reader is never cut off during catch-up.
        live.forgive_overflow()
        stored = await store.events_after(last, selection, page)
        if not stored:
            return
        last = stored[-1].seq
        yield stored
