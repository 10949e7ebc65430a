"""The schedule shared by polling inputs: run a poll every interval until stopped."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def every(interval_s: float, poll: Callable[[], Awaitable[None]], name: str) -> None:
    """Call ``poll`` at a fixed rate; a poll that overruns makes the next start at once.

    Missed slots are skipped, not caught up. An exception from a poll is logged and the
    schedule goes on: an input never dies of one bad poll.
    """
    next_start = time.monotonic()
    while True:
        try:
            await poll()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("input %s: poll failed", name)
        next_start += interval_s
        now = time.monotonic()
        if next_start < now:
            next_start = now
        await asyncio.sleep(next_start - now)
