"""The edge agent process: inputs -> durable spool -> shipper, plus health on its own ports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from pydantic import BaseModel

from edge_agent.config import AgentConfig
from edge_agent.config_polling import HttpInputConfig, NmeaInputConfig, SnmpInputConfig
from edge_agent.file_output import BatchFileWriter
from edge_agent.inputs.base import Input
from edge_agent.inputs.file_tail import FileTailInput
from edge_agent.inputs.netflow import NetflowInput
from edge_agent.inputs.syslog_tcp import SyslogTcpInput
from edge_agent.inputs.syslog_udp import SyslogUdpInput
from edge_agent.shipper import FileShipper, Shipper, SpoolConsumer
from edge_agent.spool import Spool
from mesh import AccessPolicy, ServiceRuntime
from mesh.config import ConfigError

log = logging.getLogger(__name__)
# The agent serves no RPCs of its own: only health and reflection, open to verified callers.
POLICY = AccessPolicy(methods={})


class AgentApp:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.spool = Spool(
            config.spool.path,
            config.spool.max_bytes,
            config.spool.overflow_policy,
            config.spool.min_free_disk_bytes,
        )
        self.files = (
            BatchFileWriter(config.file_output, config.agent.id)
            if config.file_output.enabled
            else None
        )
        self.shipper = _consumer(config, self.spool, self.files)
        self.inputs = _inputs(config, self.spool)
        self.runtime = ServiceRuntime(
            name="agent",
            config=config,
            policy=POLICY,
            service_names=[],
            register=lambda server: None,
        )

    async def open(self) -> None:
        await self.spool.open()
        if self.files is not None:
            await asyncio.to_thread(self.files.open)
        self.shipper.start()
        for source in self.inputs.values():
            await source.start()
        await self.runtime.set_serving(True)
        log.info(
            "edge agent running",
            extra={"agent_id": self.config.agent.id, "inputs": list(self.inputs)},
        )

    async def reload(self, config: AgentConfig) -> None:
        """Apply a re-read configuration without dropping the ingest stream.

        Inputs that changed are restarted, new ones started, removed ones stopped; the
        others keep running. Shipper settings apply from the next stream; the spool quota
        and overflow policy at once. What only a restart can change is refused (ConfigError).
        """
        fixed = _restart_only_changes(self.config, config)
        if fixed:
            raise ConfigError(
                f"{', '.join(fixed)}: cannot change while the agent runs; restart it instead"
            )
        old, new = _input_specs(self.config), _input_specs(config)
        built = _build_changed(old, new, self.spool, config.agent.id)
        for name in [n for n in old if n not in new or n in built]:
            await self._stop_input(self.inputs.pop(name))
        for name, source in built.items():
            try:
                await source.start()
            except Exception:
                log.exception("input %s could not start with the new configuration", name)
                continue
            self.inputs[name] = source
        self.spool.max_bytes = config.spool.max_bytes
        self.spool.overflow_policy = config.spool.overflow_policy
        self.spool.min_free_disk_bytes = config.spool.min_free_disk_bytes
        if isinstance(self.shipper, Shipper | FileShipper):
            self.shipper.settings = config.shipper
        self.config = config
        log.info(
            "edge agent reloaded",
            extra={"restarted": sorted(built), "inputs": sorted(self.inputs)},
        )

    async def _stop_input(self, source: Input) -> None:
        try:
            await source.stop()
        except Exception:
            log.exception("input %s failed to stop cleanly", source.name)

    async def close(self) -> None:
        for source in self.inputs.values():
            await self._stop_input(source)
        await self.shipper.stop(self.config.server.grace_period_s)
        if self.files is not None:
            await asyncio.to_thread(self.files.close)
        await self.spool.close()


def _consumer(config: AgentConfig, spool: Spool, files: BatchFileWriter | None) -> SpoolConsumer:
    """Who empties the spool: the stream to ingest (with a file copy), or only the files."""
    if files is not None and config.file_output.mode == "instead":
        return FileShipper(config, spool, files)
    return Shipper(config, spool, archive=files)


InputFactory = Callable[[Spool, str], Input]


def _input_specs(config: AgentConfig) -> dict[str, tuple[BaseModel, InputFactory]]:
    """The enabled inputs by name: their settings and how to build each."""
    inputs = config.inputs
    specs: dict[str, tuple[BaseModel, InputFactory]] = {}
    if inputs.syslog_udp.enabled:
        udp = inputs.syslog_udp
        specs["syslog_udp"] = (udp, partial(_build, SyslogUdpInput, udp))
    for name, tcp in (("syslog_tcp", inputs.syslog_tcp), ("syslog_tls", inputs.syslog_tls)):
        if tcp.enabled:
            specs[name] = (tcp, partial(_tcp_input, tcp, name=name))
    for files in inputs.files:
        specs[f"file:{files.name}"] = (files, partial(_build, FileTailInput, files))
    for target in inputs.snmp:
        specs[f"snmp:{target.name}"] = (target, partial(_snmp_input, target))
    if inputs.netflow.enabled:
        specs["netflow"] = (inputs.netflow, partial(_build, NetflowInput, inputs.netflow))
    for receiver in inputs.nmea:
        specs[f"nmea:{receiver.name}"] = (receiver, partial(_nmea_input, receiver))
    for api in inputs.http:
        specs[f"http:{api.name}"] = (api, partial(_http_input, api))
    return specs


def _build(
    kind: Callable[[Any, Spool, str], Input], settings: Any, spool: Spool, agent: str
) -> Input:
    return kind(settings, spool, agent)


def _tcp_input(settings: Any, spool: Spool, agent: str, name: str) -> Input:
    return SyslogTcpInput(settings, spool, agent, name)


# The SNMP, HTTP and serial libraries are imported only by an agent that polls with them:
# together they add about 11 MB to the memory of an agent that imports them.


def _snmp_input(settings: SnmpInputConfig, spool: Spool, agent: str) -> Input:
    from edge_agent.inputs.snmp import SnmpInput

    return SnmpInput(settings, spool, agent)


def _http_input(settings: HttpInputConfig, spool: Spool, agent: str) -> Input:
    from edge_agent.inputs.http_poll import HttpPollInput

    return HttpPollInput(settings, spool, agent)


def _nmea_input(settings: NmeaInputConfig, spool: Spool, agent: str) -> Input:
    from edge_agent.inputs.nmea import NmeaInput

    return NmeaInput(settings, spool, agent)


def _inputs(config: AgentConfig, spool: Spool) -> dict[str, Input]:
    """The enabled inputs by name; a TLS listener whose files cannot be loaded fails here."""
    return {
        name: factory(spool, config.agent.id) for name, (_, factory) in _input_specs(config).items()
    }


def _build_changed(
    old: dict[str, tuple[BaseModel, InputFactory]],
    new: dict[str, tuple[BaseModel, InputFactory]],
    spool: Spool,
    agent_id: str,
) -> dict[str, Input]:
    """Inputs that are new or whose settings changed, built (not started) from ``new``."""
    built = {}
    for name, (settings, factory) in new.items():
        if name in old and old[name][0] == settings:
            continue
        try:
            built[name] = factory(spool, agent_id)
        except Exception as error:
            raise ConfigError(f"inputs.{name}: {error}") from error
    return built


RESTART_ONLY = ("agent", "server", "tls", "auth", "logging", "tracing", "file_output")


def _restart_only_changes(running: AgentConfig, fresh: AgentConfig) -> list[str]:
    changed = [key for key in RESTART_ONLY if getattr(running, key) != getattr(fresh, key)]
    if running.spool.path != fresh.spool.path:
        changed.append("spool.path")
    if running.shipper.ingest.addresses != fresh.shipper.ingest.addresses:
        # Breakers are per address; a new list is a new rotation.
        changed.append("shipper.ingest.addresses")
    return changed


def build(config: AgentConfig) -> AgentApp:
    return AgentApp(config)


__all__ = ["AgentApp", "build"]
