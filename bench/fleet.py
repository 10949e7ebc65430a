"""A fleet of simulated edge agents in one process: per agent the real ``Spool`` (SQLite,
WAL, synchronous=FULL) and the real ``Shipper`` (mTLS stream to ingest under the agent's
own certificate), fed with corpus lines parsed by the real syslog parser.

    python -m bench.fleet --spec SPEC.json --out RESULT.json

The process prints ``ready`` once its spools are filled (backlog mode) or its streams are
up (rate mode), waits for ``go`` on stdin, runs, and writes RESULT.json. Ack latency is
measured per event, from the spool append call to the ack that removed it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from bench.corpus import LineMaker, device_name, load_templates
from bench.identity import agent_id, tls
from edge_agent.config import AgentConfig
from edge_agent.parsers.syslog import Received, parse_syslog
from edge_agent.shipper import Shipper
from edge_agent.spool import AppendResult, FileCheckpoint, Spool, SpooledBatch
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import now_ns


@dataclass
class FleetSpec:
    agents: list[int]
    ingest_addresses: list[str]
    pki: str
    workdir: str
    mode: str  # "backlog": spool `events` first, then ship; "rate": offer `rate`/s live
    events: int = 0
    rate: float = 0.0
    seconds: float = 0.0
    tick_s: float = 0.02
    drain_timeout_s: float = 600.0  # what is still spooled then is reported, not waited for
    shipper: dict[str, Any] = field(default_factory=dict)


@dataclass
class FleetResult:
    appended: int = 0
    acked: int = 0
    rejected: int = 0
    offered_seconds: float = 0.0
    first_ack_s: float = 0.0
    last_ack_s: float = 0.0
    acks: list[tuple[float, int]] = field(default_factory=list)  # (s since go, events)
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)
    still_spooled: int = 0
    cpu_prefill_s: float = 0.0  # this process's CPU while it parsed and spooled the backlog
    cpu_run_s: float = 0.0  # ... from 'go' to the end (shipping; rate mode: also offering)


class TimedSpool(Spool):
    """A Spool that remembers when each event was handed to it, and reports at each ack."""

    def __init__(self, path: Path, result: FleetResult, go: list[float]) -> None:
        super().__init__(path, 1 << 34, "drop_newest")
        self.result = result
        self.go = go
        self.unbatched: deque[list[int]] = deque()  # [events, monotonic ns at append]
        self.formed: dict[str, list[tuple[int, int]]] = {}

    async def append(
        self,
        events: Sequence[event_pb2.Event],
        checkpoints: Sequence[FileCheckpoint | None] = (),
    ) -> AppendResult:
        entry = [len(events), time.monotonic_ns()]
        self.unbatched.append(entry)  # before the commit, so form_batch always finds it
        outcome = await super().append(events, checkpoints)
        entry[0] = outcome.accepted
        self.result.appended += outcome.accepted
        return outcome

    async def form_batch(self, max_events: int, max_bytes: int) -> SpooledBatch | None:
        batch = await super().form_batch(max_events, max_bytes)
        if batch is not None:
            self.formed[batch.batch_id] = self._take(len(batch.events))
        return batch

    def _take(self, count: int) -> list[tuple[int, int]]:
        runs = []
        while count and self.unbatched:
            head = self.unbatched[0]
            used = min(count, head[0])
            runs.append((used, head[1]))
            head[0] -= used
            count -= used
            if head[0] == 0:
                self.unbatched.popleft()
        return runs

    # The ack's arrival is the end of the latency; the spool's delete after it is not in it.
    async def ack(self, batch_id: str) -> int:
        now = time.monotonic_ns()
        removed = await super().ack(batch_id)
        self._acked(batch_id, removed, now)
        return removed

    async def ack_partial(self, batch_id: str, errors: Sequence[event_pb2.EventError]) -> int:
        now = time.monotonic_ns()
        removed = await super().ack_partial(batch_id, errors)
        self.result.rejected += len(errors)
        self._acked(batch_id, removed, now)
        return removed

    def _acked(self, batch_id: str, removed: int, now: int) -> None:
        result = self.result
        for count, appended in self.formed.pop(batch_id, []):
            result.latencies_ms.extend([round((now - appended) / 1e6, 2)] * count)
        result.acked += removed
        since_go = round(now / 1e9 - self.go[0], 3) if self.go else 0.0
        result.acks.append((since_go, removed))


@dataclass
class SimAgent:
    index: int
    spool: TimedSpool
    shipper: Shipper
    maker: LineMaker
    received: Received

    def events(self, count: int) -> list[event_pb2.Event]:
        stamp = now_ns()
        received = Received(stamp, self.received.src_ip, self.received.source)
        return [parse_syslog(line, received) for line in self.maker.lines(count)]


def agent_config(spec: FleetSpec, index: int, workdir: Path) -> AgentConfig:
    addresses = spec.ingest_addresses
    rotated = addresses[index % len(addresses) :] + addresses[: index % len(addresses)]
    shipper = {"ingest": {"addresses": rotated}, **spec.shipper}
    return AgentConfig.model_validate(
        {
            "agent": {"id": agent_id(index)},
            "tls": tls(Path(spec.pki), f"agent-{agent_id(index)}"),
            "logging": {"level": "WARNING", "format": "console"},
            "inputs": {"syslog_udp": {"enabled": False}},
            "spool": {"path": str(workdir / f"spool-{index:03d}.db")},
            "shipper": shipper,
        }
    )


async def build_agents(spec: FleetSpec, result: FleetResult, go: list[float]) -> list[SimAgent]:
    templates = load_templates()
    workdir = Path(spec.workdir)
    agents = []
    for index in spec.agents:
        config = agent_config(spec, index, workdir)
        spool = TimedSpool(config.spool.path, result, go)
        await spool.open()
        source = f"{config.agent.id}/syslog_udp"
        received = Received(0, f"10.{index // 250}.{index % 250}.1", source)
        maker = LineMaker(templates, device_name(index), seed=index)
        agents.append(SimAgent(index, spool, Shipper(config, spool), maker, received))
    return agents


async def prefill(agents: list[SimAgent], total: int, chunk: int = 1000) -> None:
    share = total // len(agents)
    for position, agent in enumerate(agents):
        wanted = share + (1 if position < total % len(agents) else 0)
        while wanted > 0:
            await agent.spool.append(agent.events(min(chunk, wanted)))
            wanted -= chunk


async def offer(agents: list[SimAgent], rate: float, seconds: float, tick_s: float) -> float:
    """Append ``rate`` events/s spread over the agents for ``seconds``; the time it took."""
    per_agent = rate / len(agents)
    sent = [0] * len(agents)
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        due = [int(elapsed * per_agent) - done for done in sent]
        appends = []
        for position, agent in enumerate(agents):
            if due[position] > 0:
                sent[position] += due[position]
                appends.append(agent.spool.append(agent.events(due[position])))
        await asyncio.gather(*appends)
        await asyncio.sleep(max(0.0, tick_s - (time.monotonic() - started - elapsed)))
    return time.monotonic() - started


async def drained(agents: list[SimAgent], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    # Polled: one condition over many spools.
    while any(a.spool.events for a in agents) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def shipper_errors() -> dict[str, float]:
    wanted = {
        "edgebot_shipper_reconnects_total": "reconnects",
        "edgebot_batches_retried_total": "batches_resent",
        "edgebot_dead_letters_total": "dead_letters",
    }
    found: dict[str, float] = {name: 0.0 for name in wanted.values()}
    found["acks_not_ok"] = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name in wanted:
                found[wanted[sample.name]] += sample.value
            elif sample.name == "edgebot_batches_acked_total" and sample.labels.get(
                "status"
            ) not in ("ok", "partial"):
                found["acks_not_ok"] += sample.value
    return found


async def run(spec: FleetSpec) -> FleetResult:
    result = FleetResult()
    go: list[float] = []
    agents = await build_agents(spec, result, go)
    try:
        cpu_start = time.process_time()
        if spec.mode == "backlog":
            await prefill(agents, spec.events)
            result.cpu_prefill_s = time.process_time() - cpu_start
        else:
            for agent in agents:
                agent.shipper.start()
        await asyncio.to_thread(handshake)
        go.append(time.monotonic())
        cpu_go = time.process_time()
        if spec.mode == "backlog":
            for agent in agents:
                agent.shipper.start()
        else:
            result.offered_seconds = await offer(agents, spec.rate, spec.seconds, spec.tick_s)
        await drained(agents, spec.drain_timeout_s)
        result.cpu_run_s = time.process_time() - cpu_go
    finally:
        for agent in agents:
            await agent.shipper.stop(0.5)
        result.still_spooled = sum(a.spool.events for a in agents)
        for agent in agents:
            await agent.spool.close()
    result.errors = shipper_errors()
    if result.acks:
        result.first_ack_s, result.last_ack_s = result.acks[0][0], result.acks[-1][0]
    return result


def handshake() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("fleet: expected 'go' on stdin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    spec = FleetSpec(**json.loads(args.spec.read_text()))
    result = asyncio.run(run(spec))
    args.out.write_text(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
