"""SNMP polling (v2c and v3) of scalar OIDs and tables with pysnmp's asyncio API.

Every poll reads sysUpTime with the scalars (the clock rates are measured on, and the sign
of an agent restart), then walks each table with GETBULK. A target that does not answer
(down, or a wrong community or user) is counted in edgebot_snmp_polls_total{outcome=
"timeout"} and logged; the schedule goes on. Credentials are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from pyasn1.type import univ
from pysnmp.hlapi.v3arch.asyncio import (
    USM_AUTH_HMAC96_MD5,
    USM_AUTH_HMAC96_SHA,
    USM_AUTH_HMAC128_SHA224,
    USM_AUTH_HMAC192_SHA256,
    USM_AUTH_HMAC256_SHA384,
    USM_AUTH_HMAC384_SHA512,
    USM_AUTH_NONE,
    USM_PRIV_CBC56_DES,
    USM_PRIV_CBC168_3DES,
    USM_PRIV_CFB128_AES,
    USM_PRIV_CFB192_AES,
    USM_PRIV_CFB256_AES,
    USM_PRIV_NONE,
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    bulk_walk_cmd,
    get_cmd,
)
from pysnmp.proto import errind
from pysnmp.proto.rfc1902 import Counter32, Counter64
from pysnmp.proto.rfc1905 import (
    EndOfMibView,
    NoSuchInstance,
    NoSuchObject,
)

from edge_agent import metrics
from edge_agent.config_polling import SnmpInputConfig, SnmpOidConfig
from edge_agent.inputs.base import Input, hand_to_spool
from edge_agent.inputs.polling import every
from edge_agent.parsers.snmp import (
    COUNTER32_MODULUS,
    COUNTER64_MODULUS,
    SYS_UPTIME_OID,
    PollContext,
    RateTracker,
    Sample,
    sample_attributes,
    snmp_event,
    table_rows,
    uptime_cs,
)
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import now_ns

log = logging.getLogger(__name__)
# A table walk stops after max_rows rows times this many columns, whatever the table.
MAX_COLUMNS = 128
AUTH_PROTOCOLS = {
    "none": USM_AUTH_NONE,
    "md5": USM_AUTH_HMAC96_MD5,
    "sha": USM_AUTH_HMAC96_SHA,
    "sha224": USM_AUTH_HMAC128_SHA224,
    "sha256": USM_AUTH_HMAC192_SHA256,
    "sha384": USM_AUTH_HMAC256_SHA384,
    "sha512": USM_AUTH_HMAC384_SHA512,
}
PRIV_PROTOCOLS = {
    "none": USM_PRIV_NONE,
    "des": USM_PRIV_CBC56_DES,
    "3des": USM_PRIV_CBC168_3DES,
    "aes128": USM_PRIV_CFB128_AES,
    "aes192": USM_PRIV_CFB192_AES,
    "aes256": USM_PRIV_CFB256_AES,
}


class SnmpPollError(Exception):
    """A request that got no usable answer; ``outcome`` labels the metric."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


def credentials(config: SnmpInputConfig) -> Any:
    if config.version == "v2c":
        return CommunityData(config.community.get_secret_value(), mpModel=1)
    v3 = config.v3
    assert v3 is not None  # the config validator requires it for v3
    return UsmUserData(
        v3.user,
        authKey=v3.auth_key.get_secret_value() if v3.auth_key else None,
        privKey=v3.priv_key.get_secret_value() if v3.priv_key else None,
        authProtocol=AUTH_PROTOCOLS[v3.auth_protocol],
        privProtocol=PRIV_PROTOCOLS[v3.priv_protocol],
    )


def to_sample(oid: Any, value: Any) -> Sample:
    name = str(oid)
    if isinstance(value, NoSuchObject | NoSuchInstance | EndOfMibView):
        return Sample(name, None)
    modulus = (
        COUNTER64_MODULUS
        if isinstance(value, Counter64)
        else COUNTER32_MODULUS
        if isinstance(value, Counter32)
        else None
    )
    if isinstance(value, univ.Integer):
        return Sample(name, str(int(value)), int(value), modulus)
    return Sample(name, str(value.prettyPrint()))


class SnmpInput(Input):
    def __init__(self, config: SnmpInputConfig, spool: Spool, agent_id: str) -> None:
        self.config = config
        self.spool = spool
        self.name = f"snmp:{config.name}"
        self.source = f"{agent_id}/{self.name}"
        self.target_text = f"{config.host}:{config.port}"
        self.rates = RateTracker()
        self._engine: Any = None
        self._target: Any = None
        self._auth = credentials(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(
            every(self.config.interval_s, self.poll, self.name), name=f"{self.name}-poll"
        )
        log.info(
            "SNMP polling",
            extra={"input": self.name, "target": self.target_text, "version": self.config.version},
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None
            self._target = None

    async def poll(self) -> None:
        """One poll: its events are committed together; a failure is counted and logged."""
        try:
            events = await self._poll_events()
        except SnmpPollError as error:
            metrics.SNMP_POLLS.labels(self.name, error.outcome).inc()
            log.warning("SNMP poll of %s failed (%s): %s", self.target_text, error.outcome, error)
            return
        metrics.SNMP_POLLS.labels(self.name, "ok").inc()
        metrics.MESSAGES_RECEIVED.labels(self.name).inc(len(events))
        await hand_to_spool(self.spool, events)

    async def _poll_events(self) -> list[event_pb2.Event]:
        if self._engine is None:
            self._engine = SnmpEngine()
        if self._target is None:
            self._target = await self._make_target()
        scalars = await self._get([SYS_UPTIME_OID, *(o.oid for o in self.config.get)])
        monotonic_ns = time.monotonic_ns()
        uptime = uptime_cs(scalars)
        context = PollContext(self.source, self.target_text, self.config.version, now_ns())
        events = []
        if self.config.get:
            events.append(self._scalar_event(context, scalars[1:], uptime, monotonic_ns))
        for table in self.config.walk:
            cells = await self._walk(table.oid)
            events.extend(self._row_events(context, table, cells, uptime, monotonic_ns))
        self._count_resets()
        return events

    async def _make_target(self) -> Any:
        try:
            return await UdpTransportTarget.create(
                (self.config.host, self.config.port),
                timeout=self.config.timeout_s,
                retries=self.config.retries,
            )
        except Exception as error:
            raise SnmpPollError("error", f"cannot resolve {self.config.host}: {error}") from None

    async def _get(self, oids: list[str]) -> list[Sample]:
        indication, status, index, var_binds = await get_cmd(
            self._engine,
            self._auth,
            self._target,
            ContextData(),
            *(ObjectType(ObjectIdentity(oid)) for oid in oids),
            lookupMib=False,
        )
        _check(indication, status, index)
        return [to_sample(oid, value) for oid, value in var_binds]

    async def _walk(self, table_oid: str) -> list[Sample]:
        samples: list[Sample] = []
        limit = self.config.max_rows * MAX_COLUMNS
        async for indication, status, index, var_binds in bulk_walk_cmd(
            self._engine,
            self._auth,
            self._target,
            ContextData(),
            0,
            self.config.max_repetitions,
            ObjectType(ObjectIdentity(table_oid)),
            lookupMib=False,
            lexicographicMode=False,
        ):
            _check(indication, status, index)
            samples.extend(to_sample(oid, value) for oid, value in var_binds)
            if len(samples) >= limit:
                log.warning("SNMP walk of %s cut at %d cells", table_oid, limit)
                break
        return samples

    def _scalar_event(
        self, context: PollContext, samples: list[Sample], uptime: int | None, mono: int
    ) -> event_pb2.Event:
        named = [(oid.key, sample) for oid, sample in zip(self.config.get, samples, strict=True)]
        values = sample_attributes(named, self.config.rates, self.rates, uptime, mono)
        extra = {"snmp.sys_uptime_s": f"{uptime / 100:.2f}"} if uptime is not None else {}
        message = f"snmp poll {context.target}: {len(values)} values"
        return snmp_event(context, message, values, extra)

    def _row_events(
        self,
        context: PollContext,
        table: SnmpOidConfig,
        cells: list[Sample],
        uptime: int | None,
        mono: int,
    ) -> list[event_pb2.Event]:
        rows = table_rows(table.oid, cells)
        if len(rows) > self.config.max_rows:
            skipped = len(rows) - self.config.max_rows
            metrics.INPUT_RECORDS_SKIPPED.labels(self.name, "max_rows").inc(skipped)
        events = []
        for index, columns in list(rows.items())[: self.config.max_rows]:
            named = [(f"{table.key}.{column}", sample) for column, sample in columns.items()]
            values = sample_attributes(named, self.config.rates, self.rates, uptime, mono)
            extra = {"snmp.table": table.key, "snmp.index": index}
            message = f"snmp {context.target} {table.key} row {index}"
            events.append(snmp_event(context, message, values, extra))
        return events

    def _count_resets(self) -> None:
        for reason, count in self.rates.resets.items():
            metrics.SNMP_COUNTER_RESETS.labels(self.name, reason).inc(count)
            if reason == "agent_restart":
                log.info("SNMP agent %s restarted (sysUpTime went back)", self.target_text)
        self.rates.resets.clear()


def _check(indication: Any, status: Any, index: Any) -> None:
    if indication:
        outcome = "timeout" if isinstance(indication, errind.RequestTimedOut) else "error"
        raise SnmpPollError(outcome, str(indication))
    if status:
        raise SnmpPollError("error", f"{status.prettyPrint()} at variable {index}")
