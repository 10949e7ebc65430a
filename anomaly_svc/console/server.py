"""The console's life cycle inside the anomaly service: start after the service opened,
stop (live streams first) before its gRPC server drains."""

from __future__ import annotations

import logging

from aiohttp import web

from anomaly_svc.console.auth import LoginLimiter, Sessions, TokenCheck, read_tokens
from anomaly_svc.console.config import ConsoleSection
from anomaly_svc.console.context import ConsoleContext
from anomaly_svc.console.live import LiveStreams
from anomaly_svc.console.mesh_client import MeshClients
from anomaly_svc.console.monitoring import Monitor
from anomaly_svc.console.web import build_app, ssl_context
from mesh.config import TlsConfig

log = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT_S = 2.0


class Console:
    def __init__(
        self,
        config: ConsoleSection,
        service_tls: TlsConfig,
        anomaly_address: str,
        storage_addresses: list[str],
    ) -> None:
        self.config = config
        self.service_tls = service_tls
        self.anomaly_address = config.anomaly_address or anomaly_address
        self.storage_addresses = config.storage_addresses or storage_addresses
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._context: ConsoleContext | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls.enabled else "http"
        return f"{scheme}://{self.config.host}:{self.port}"

    async def start(self) -> None:
        config = self.config
        tokens = TokenCheck(read_tokens(config.tokens_file)) if config.tokens_file else None
        clients = MeshClients(
            config, self.service_tls, self.anomaly_address, self.storage_addresses
        )
        ctx = ConsoleContext(
            config=config,
            clients=clients,
            monitor=Monitor(config.monitoring, clients),
            live=LiveStreams(config.max_live_streams),
            sessions=Sessions(config.session_ttl_s, config.max_sessions),
            tokens=tokens,
            limiter=LoginLimiter(config.login_failures_per_minute),
        )
        self._context = ctx
        runner = web.AppRunner(
            build_app(ctx),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            handler_cancellation=True,
        )
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context(config))
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        ctx.monitor.start()
        log.info("console listening", extra={"url": self.url})

    async def stop(self) -> None:
        ctx, runner = self._context, self._runner
        self._context = self._runner = None
        if ctx is not None:
            await ctx.live.close_all()
            await ctx.monitor.stop()
        if runner is not None:
            await runner.cleanup()
        if ctx is not None:
            await ctx.clients.close()
