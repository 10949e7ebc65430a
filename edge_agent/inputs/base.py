"""What every input is: started and stopped by the agent, handing events to the spool."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from edge_agent import metrics
from edge_agent.spool import AppendResult, FileCheckpoint, Spool, severity_name
from gen.edgebot.v1 import event_pb2

log = logging.getLogger(__name__)
# A full spool refuses every flush; one warning per interval is enough to see it.
FULL_WARNING_INTERVAL_S = 10.0
_last_full_warning = -FULL_WARNING_INTERVAL_S


class Input(abc.ABC):
    """A source of events. Events count as received only once the spool committed them."""

    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin receiving."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop receiving and commit whatever is still buffered."""


async def hand_to_spool(spool: Spool, events: Sequence[event_pb2.Event]) -> AppendResult:
    """Commit events from an input that cannot wait; every event dropped is counted.

    The spool's overflow policy decides what a full spool drops: the newcomers, or the
    least severe waiting events (``evicted``) before any more severe newcomer.
    """
    try:
        result = await spool.offer(events)
    except Exception:
        log.exception("spool append failed; %d events dropped", len(events))
        metrics.SPOOL_DROPPED.labels("error").inc(len(events))
        return AppendResult(accepted=0, refused=len(events))
    if result.spool_full:
        _count_overflow(result)
        _warn_full(spool)
    return result


def _count_overflow(result: AppendResult) -> None:
    if result.refused:
        metrics.SPOOL_DROPPED.labels(result.refused_reason).inc(result.refused)
    if result.evicted:
        metrics.SPOOL_DROPPED.labels("evicted").inc(result.evicted)
    for level, count in result.dropped_levels.items():
        metrics.SPOOL_DROPPED_BY_SEVERITY.labels(severity_name(level)).inc(count)


def _warn_full(spool: Spool) -> None:
    global _last_full_warning
    now = time.monotonic()
    if now - _last_full_warning >= FULL_WARNING_INTERVAL_S:
        _last_full_warning = now
        log.warning(
            "spool full (quota %d bytes, policy %s): dropping events, "
            "see edgebot_spool_dropped_total",
            spool.max_bytes,
            spool.overflow_policy,
        )


@dataclass
class PendingCommit:
    """Events to commit (with the file position after each, for file inputs) and progress."""

    events: Sequence[event_pb2.Event]
    checkpoints: Sequence[FileCheckpoint | None] = ()
    committed: int = field(default=0)

    @property
    def remaining(self) -> int:
        return len(self.events) - self.committed


async def commit_waiting(
    spool: Spool,
    pending: PendingCommit,
    input_name: str,
    poll_s: float,
    give_up: asyncio.Event | None = None,
) -> None:
    """Commit every event, retrying every ``poll_s`` while the spool is full (nothing dropped).

    For inputs that can wait (TCP, files): their callers stop reading meanwhile, which is
    the backpressure. Once ``give_up`` is set, it returns after one more try, whatever
    remains. Spool failures propagate; ``pending.committed`` says how far it got.
    """
    blocked = False
    while pending.remaining:
        result = await spool.append(
            pending.events[pending.committed :], pending.checkpoints[pending.committed :]
        )
        pending.committed += result.accepted
        if not pending.remaining or (give_up is not None and give_up.is_set()):
            break
        if not blocked:
            blocked = True
            log.warning("spool full: input %s pauses until space frees", input_name)
        started = time.monotonic()
        await _wait(give_up, poll_s)
        metrics.INPUT_BLOCKED_SECONDS.labels(input_name).inc(time.monotonic() - started)
    if blocked:
        log.info("spool has room again: input %s resumes", input_name)


async def _wait(event: asyncio.Event | None, timeout_s: float) -> None:
    if event is None:
        await asyncio.sleep(timeout_s)
        return
    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
