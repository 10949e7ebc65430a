"""The life cycle every service process follows, and the entry point its __main__ calls."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol, TypeVar

from mesh.config import ConfigError, ServiceConfig, load_config
from mesh.server import ServiceRuntime, prepare_process

log = logging.getLogger(__name__)


class App(Protocol):
    """A service: its runtime (server) plus whatever it opens and closes around it.

    A service whose settings can change while it runs also defines
    ``async def reload(self, config) -> None`` (raising ConfigError to refuse the new
    configuration); SIGHUP re-reads the config file and calls it.
    """

    runtime: ServiceRuntime

    async def open(self) -> None:
        """Connect dependencies and report SERVING when ready (the server already listens)."""

    async def close(self) -> None:
        """Release resources after the server drained."""


ConfigT = TypeVar("ConfigT", bound=ServiceConfig)


@contextlib.asynccontextmanager
async def running(app: App) -> AsyncIterator[App]:
    """Start the server, open the app, and on exit drain, stop and close (tests use this)."""
    await app.runtime.start()
    try:
        await app.open()
        yield app
    finally:
        await app.runtime.stop()
        try:
            await app.close()
        except Exception:
            log.exception("%s: error while closing", app.runtime.name)


async def run_until_signal(app: App, reload: Callable[[], ServiceConfig] | None = None) -> None:
    async with running(app):
        if reload is not None and hasattr(app, "reload"):
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(_reload(app, reload))
            )
        await app.runtime.wait_for_stop_signal()


async def _reload(app: App, read_config: Callable[[], ServiceConfig]) -> None:
    """Apply a re-read configuration; a bad one is refused and the running one stays."""
    name = app.runtime.name
    try:
        config = read_config()
        await app.reload(config)  # type: ignore[attr-defined]
    except ConfigError as exc:
        log.error("%s: new configuration refused, keeping the running one: %s", name, exc)
        return
    log.info("%s: configuration reloaded", name)


def service_main(
    name: str,
    model: type[ConfigT],
    build: Callable[[ConfigT], App],
    argv: list[str] | None = None,
    module: str | None = None,
) -> int:
    """Parse ``--config``, validate it (exit 2 naming the bad key), run until a signal."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module or name + '_svc'}", description=f"EdgeBot {name}"
    )
    parser.add_argument("--config", type=Path, help="YAML config file (defaults are embedded)")
    args = parser.parse_args(argv)
    return asyncio.run(run_service(name, model, build, args.config))


async def run_service(
    name: str, model: type[ConfigT], build: Callable[[ConfigT], App], config_path: Path | None
) -> int:
    """Validate the configuration (2 naming the bad key), then serve until a signal (0)."""
    try:
        config = load_config(model, config_path, name)
        prepare_process(config, name)
        app = build(config)
    except ConfigError as exc:
        print(f"edgebot {name}: {exc}", file=sys.stderr)
        return 2
    try:
        await run_until_signal(app, lambda: load_config(model, config_path, name))
    except Exception as exc:
        log.debug("start-up failure", exc_info=True)
        print(f"edgebot {name}: could not start: {exc}", file=sys.stderr)
        return 1
    return 0
