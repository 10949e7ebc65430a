"""The edge agent process: inputs -> durable spool -> shipper, plus health on its own ports."""

from __future__ import annotations

import asyncio
import logging

from edge_agent.config import AgentConfig
from edge_agent.file_output import BatchFileWriter
from edge_agent.inputs.base import Input
from edge_agent.inputs.file_tail import FileTailInput
from edge_agent.inputs.http_poll import HttpPollInput
from edge_agent.inputs.netflow import NetflowInput
from edge_agent.inputs.nmea import NmeaInput
from edge_agent.inputs.snmp import SnmpInput
from edge_agent.inputs.syslog_tcp import SyslogTcpInput
from edge_agent.inputs.syslog_udp import SyslogUdpInput
from edge_agent.shipper import FileShipper, Shipper, SpoolConsumer
from edge_agent.spool import Spool
from mesh import AccessPolicy, ServiceRuntime

log = logging.getLogger(__name__)
# The agent serves no RPCs of its own: only health and reflection, open to verified callers.
POLICY = AccessPolicy(methods={})


class AgentApp:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.spool = Spool(config.spool.path, config.spool.max_bytes, config.spool.overflow_policy)
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
        for source in self.inputs:
            await source.start()
        await self.runtime.set_serving(True)
        log.info(
            "edge agent running",
            extra={"agent_id": self.config.agent.id, "inputs": [i.name for i in self.inputs]},
        )

    async def close(self) -> None:
        for source in self.inputs:
            try:
                await source.stop()
            except Exception:
                log.exception("input %s failed to stop cleanly", source.name)
        await self.shipper.stop(self.config.server.grace_period_s)
        if self.files is not None:
            await asyncio.to_thread(self.files.close)
        await self.spool.close()


def _consumer(config: AgentConfig, spool: Spool, files: BatchFileWriter | None) -> SpoolConsumer:
    """Who empties the spool: the stream to ingest (with a file copy), or only the files."""
    if files is not None and config.file_output.mode == "instead":
        return FileShipper(config, spool, files)
    return Shipper(config, spool, archive=files)


def _inputs(config: AgentConfig, spool: Spool) -> list[Input]:
    """The enabled inputs; a TLS listener whose files cannot be loaded fails here."""
    agent_id, inputs = config.agent.id, config.inputs
    enabled: list[Input] = []
    if inputs.syslog_udp.enabled:
        enabled.append(SyslogUdpInput(inputs.syslog_udp, spool, agent_id))
    for name, tcp in (("syslog_tcp", inputs.syslog_tcp), ("syslog_tls", inputs.syslog_tls)):
        if tcp.enabled:
            enabled.append(SyslogTcpInput(tcp, spool, agent_id, name))
    enabled.extend(FileTailInput(files, spool, agent_id) for files in inputs.files)
    enabled.extend(SnmpInput(target, spool, agent_id) for target in inputs.snmp)
    if inputs.netflow.enabled:
        enabled.append(NetflowInput(inputs.netflow, spool, agent_id))
    enabled.extend(NmeaInput(receiver, spool, agent_id) for receiver in inputs.nmea)
    enabled.extend(HttpPollInput(api, spool, agent_id) for api in inputs.http)
    return enabled


def build(config: AgentConfig) -> AgentApp:
    return AgentApp(config)


__all__ = ["AgentApp", "build"]
