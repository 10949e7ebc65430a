"""Health checks of other services, and a monitor that turns them into our own readiness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)


async def is_serving(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 2.0) -> bool:
    """True when the peer answers SERVING for ``service`` within the timeout."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class DependencyMonitor:
    """Polls the health of required dependencies; reports all-up/any-down transitions."""

    def __init__(
        self,
        dependencies: Mapping[str, tuple[grpc.aio.Channel, str]],
        on_change: Callable[[bool, dict[str, bool]], Awaitable[None]],
        interval_s: float = 2.0,
    ) -> None:
        self.dependencies = dict(dependencies)
        self.on_change = on_change
        self.interval_s = interval_s
        self.state: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready: bool | None = None

    async def check_once(self) -> bool:
        results = await asyncio.gather(
            *(is_serving(channel, service) for channel, service in self.dependencies.values())
        )
        self.state = dict(zip(self.dependencies, results, strict=True))
        ready = all(results)
        if ready != self._ready:
            self._ready = ready
            down = [name for name, up in self.state.items() if not up]
            if ready:
                log.info("dependencies serving: %s", ", ".join(self.dependencies))
            else:
                log.warning("dependencies not serving: %s", ", ".join(down))
            await self.on_change(ready, self.state)
        return ready

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dependency-monitor")

    async def _loop(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:
                log.exception("dependency health check failed")
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
