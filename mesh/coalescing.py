"""Merges requests that wait behind busy calls into one call: group commit without timers.

A downstream call (an RPC, a database transaction) has a fixed cost that a request of a
few events cannot amortise. At most ``max_calls`` calls are in flight; a request that
arrives while they all are waits, and the next call carries every waiting request (up to
``max_size`` in total). Nothing waits for a timer: under light load each request still goes
alone, at once; under load the calls grow instead of queueing. Requests submitted in the
same turn of the event loop (the batches of one merged upstream call, say) are grouped
before the first call starts, so they share it too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")


@dataclass
class _Waiting(Generic[Item, Answer]):
    item: Item
    answer: asyncio.Future[Answer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Coalescer(Generic[Item, Answer]):
    """``send`` carries a group of items in one call and answers each, in order.

    When a call of more than one item fails with an error ``alone_on`` accepts, each of its
    items is sent again alone, so that one bad item cannot fail the others; any other error
    is every item's answer.
    """

    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[Sequence[Answer]]],
        size_of: Callable[[Item], int],
        max_size: int,
        max_calls: int,
        alone_on: Callable[[BaseException], bool],
    ) -> None:
        self.send = send
        self.size_of = size_of
        self.max_size = max_size
        self.max_calls = max_calls
        self.alone_on = alone_on
        self.waiting: list[_Waiting[Item, Answer]] = []
        self.calls: set[asyncio.Task[None]] = set()
        self.start_scheduled = False

    async def submit(self, item: Item) -> Answer:
        """``item``'s own answer, or the error of the call that carried it."""
        waiting: _Waiting[Item, Answer] = _Waiting(item)
        self.waiting.append(waiting)
        if not self.start_scheduled:
            self.start_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_start)
        return await waiting.answer

    def _scheduled_start(self) -> None:
        self.start_scheduled = False
        self._start_calls()

    def _start_calls(self) -> None:
        while len(self.calls) < self.max_calls:
            group = self._take_group()
            if not group:
                return
            task = asyncio.create_task(self._carry(group), name="coalesced-call")
            self.calls.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.calls.discard(task)
        self._start_calls()

    def _take_group(self) -> list[_Waiting[Item, Answer]]:
        """The oldest waiting items that fit in ``max_size`` (at least one); items whose
        caller has gone are dropped."""
        self.waiting = [w for w in self.waiting if not w.answer.done()]
        if not self.waiting:
            return []
        group = [self.waiting.pop(0)]
        size = self.size_of(group[0].item)
        while self.waiting and size + self.size_of(self.waiting[0].item) <= self.max_size:
            size += self.size_of(self.waiting[0].item)
            group.append(self.waiting.pop(0))
        return group

    async def _carry(self, group: list[_Waiting[Item, Answer]]) -> None:
        try:
            answers = await self.send([w.item for w in group])
        except Exception as error:
            if len(group) > 1 and self.alone_on(error):
                await asyncio.gather(*(self._carry([w]) for w in group))
                return
            for waiting in group:
                _fail(waiting, error)
            return
        except BaseException as error:  # cancelled: nobody may wait for ever
            for waiting in group:
                _fail(waiting, error)
            raise
        for waiting, answer in zip(group, answers, strict=True):
            if not waiting.answer.done():
                waiting.answer.set_result(answer)


def _fail(waiting: _Waiting[Item, Answer], error: BaseException) -> None:
    if waiting.answer.done():
        return
    if isinstance(error, asyncio.CancelledError):
        waiting.answer.cancel()
        return
    waiting.answer.set_exception(error)
    # Marked as retrieved: the caller may have gone (its stream cancelled).
    with contextlib.suppress(BaseException):
        waiting.answer.exception()
