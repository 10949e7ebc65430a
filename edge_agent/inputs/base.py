"""What every input is: started and stopped by the agent, handing events to the spool."""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Sequence

from edge_agent import metrics
from edge_agent.spool import AppendResult, Spool
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
    """Commit events; what the spool refuses or fails to store is counted as dropped."""
    try:
        result = await spool.append(events)
    except Exception:
        log.exception("spool append failed; %d events dropped", len(events))
        metrics.SPOOL_DROPPED.labels("error").inc(len(events))
        return AppendResult(accepted=0, refused=len(events))
    if result.spool_full:
        metrics.SPOOL_DROPPED.labels("spool_full").inc(result.refused)
        _warn_full(spool)
    return result


def _warn_full(spool: Spool) -> None:
    global _last_full_warning
    now = time.monotonic()
    if now - _last_full_warning >= FULL_WARNING_INTERVAL_S:
        _last_full_warning = now
        log.warning(
            "spool full (quota %d bytes): dropping new events, see edgebot_spool_dropped_total",
            spool.max_bytes,
        )
