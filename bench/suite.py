"""The whole benchmark in one run: limit, EdgeBot end to end, the edge agent, rsyslog,
scale-out. Every part shares one throwaway PostgreSQL server; each writes into its own
schema or database."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from bench import profiling, rsyslog_peer
from bench.corpus import load_templates, stream
from bench.edge import measure_edge
from bench.endtoend import Fleet, PhaseResult, postgres_pid, run_phase
from bench.identity import make_pki
from bench.limit import best, measure_limit
from bench.mothership import Mothership
from bench.pg import PgServer, count_events, prepared_schema, server_version, start_server
from bench.procs import Watched
from bench.scaleout import exactly_once, many_agents


def shipper_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "batch_max_events": args.batch_max_events,
        "batch_max_wait_s": args.batch_max_wait_s,
        "adaptive_max_events": args.adaptive_max_events,
        "send_when_idle": args.send_when_idle,
    }


async def run_limit(args: argparse.Namespace, server: PgServer) -> dict[str, Any]:
    results = await measure_limit(
        server, args.limit_events, args.limit_batches, args.limit_writers, args.rounds
    )
    print(f"limit: {best(results)}", flush=True)
    return {"configs": [asdict(r) for r in results], "best": asdict(best(results))}


async def with_mothership(
    args: argparse.Namespace, server: PgServer, work: Path, pki: Path, ingests: int = 1,
    pipelines: int = 1,
) -> Mothership:  # fmt: skip
    store = await prepared_schema(server)
    directory = Path(tempfile.mkdtemp(prefix="mothership-", dir=work))
    mothership = Mothership(
        directory, pki, store, ingests, pipelines, args.log_level, overrides(args.set)
    )
    try:
        await mothership.start()
    except BaseException:
        mothership.stop()
        raise
    return mothership


def overrides(settings: list[str]) -> dict[str, dict[str, Any]]:
    """``--set storage.postgres.max_concurrent_writes=1`` as {kind: {section: {key: value}}}
    (values parsed as YAML)."""
    found: dict[str, dict[str, Any]] = {}
    for setting in settings:
        path, separator, text = setting.partition("=")
        parts = path.split(".")
        if not separator or len(parts) != 3:
            raise SystemExit(f"bench: --set {setting!r}: expected SERVICE.SECTION.KEY=VALUE")
        kind, section, key = parts
        found.setdefault(kind, {}).setdefault(section, {})[key] = yaml.safe_load(text)
    return found


async def run_endtoend(
    args: argparse.Namespace, server: PgServer, work: Path, pki: Path
) -> dict[str, Any]:
    mothership = await with_mothership(args, server, work, pki)
    fleet = Fleet(work / "e2e", pki, args.agents, args.fleet_procs, shipper_settings(args))
    phases: list[PhaseResult] = []
    try:
        specs = fleet.specs(mothership.ingest_addresses, "backlog", events=args.events)
        phases.append(await run_phase("sustained", mothership, server, specs, None))
        print(f"sustained: {phases[-1].events_per_s:,.0f} events/s", flush=True)
        for rate in args.rates:
            specs = fleet.specs(
                mothership.ingest_addresses, "rate", rate=rate, seconds=args.seconds
            )
            phases.append(await run_phase(f"rate {rate}", mothership, server, specs, rate))
            print(f"rate {rate}: p99 {phases[-1].latency_ms['p99']} ms", flush=True)
        stored = await count_events(mothership.store)
        profile = await profile_hops(args, mothership, server, fleet) if args.profile else {}
    finally:
        mothership.stop()
    acked = sum(p.acked for p in phases)
    return {"phases": [asdict(p) for p in phases], "stored": asdict(stored), "acked": acked,
            "profile": profile}  # fmt: skip


async def profile_hops(
    args: argparse.Namespace, mothership: Mothership, server: PgServer, fleet: Fleet
) -> dict[str, Any]:
    """A second run with py-spy sampling every service, a backlog or at ``--profile-rate``
    offered; top frames per hop."""
    targets = {s.role: s.process.pid for s in mothership.services}
    out = Path(args.out) / "profiles"
    recorder = profiling.recording(targets, out, args.profile_seconds)
    rate = args.profile_rate
    if rate is None:
        specs = fleet.specs(mothership.ingest_addresses, "backlog", events=args.events)
    else:
        specs = fleet.specs(mothership.ingest_addresses, "rate", rate=rate, seconds=args.seconds)
    await run_phase("profiled", mothership, server, specs, rate, during=recorder)
    return profiling.summaries(out, targets)


async def run_edge(
    args: argparse.Namespace, server: PgServer, work: Path, pki: Path, index: int
) -> dict[str, Any]:
    mothership = await with_mothership(args, server, work, pki)
    lines = list(itertools.islice(stream(load_templates(), 20, seed=7), args.agent_lines))
    profile = Path(args.out) / "profiles" if args.profile else None
    try:
        result = await measure_edge(
            index, pki, work / "edge", mothership.store, mothership.ingest_addresses, lines,
            shipper_settings(args), args.idle_seconds, profile,
        )  # fmt: skip
    finally:
        mothership.stop()
    print(f"edge agent: {result}", flush=True)
    found: dict[str, Any] = asdict(result)
    if profile is not None:
        found["profile"] = profiling.summaries(profile, {"agent": 0})
    return found


async def run_rsyslog(args: argparse.Namespace, server: PgServer, work: Path) -> dict[str, Any]:
    missing = rsyslog_peer.available()
    if missing:
        raise SystemExit(f"bench: rsyslog peer unavailable: {missing} (make bench installs it)")
    lines = list(itertools.islice(stream(load_templates(), args.agents), args.rsyslog_events))
    postgres = Watched("postgres", postgres_pid(server), with_children=True)
    results = []
    for workers in args.rsyslog_workers:
        peer = await rsyslog_peer.measure(server, postgres, lines, workers, work / f"rs{workers}")
        print(f"rsyslog {workers} worker(s): {peer.events_per_s:,.0f} msgs/s", flush=True)
        results.append(asdict(peer))
    return {"configs": results}


async def run_scaleout(
    args: argparse.Namespace, server: PgServer, work: Path, pki: Path
) -> dict[str, Any]:
    shipper = shipper_settings(args)
    mothership = await with_mothership(args, server, work, pki, ingests=2, pipelines=2)
    fleet = Fleet(work / "once", pki, args.agents, args.fleet_procs, shipper)
    try:
        once = await exactly_once(mothership, server, fleet, args.scale_events)
    finally:
        mothership.stop()
    print(f"scale-out: {once}", flush=True)
    mothership = await with_mothership(args, server, work, pki)
    modest = shipper | {"batch_max_wait_s": args.scale_batch_wait_s, "send_when_idle": False}
    try:
        fleet = Fleet(work / "many", pki, args.scale_agents, args.fleet_procs, modest)
        many = await many_agents(mothership, server, fleet, args.scale_rate, args.scale_seconds)
    finally:
        mothership.stop()
    print(f"200 agents: {many['summary']}", flush=True)
    return {"exactly_once": once, "many_agents": many}


async def run(
    args: argparse.Namespace, progress: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="edgebot-bench-"))
    pki = make_pki(work / "pki", max(args.agents, args.scale_agents) + 1)
    server = start_server(durable=args.pg_fsync)
    results: dict[str, Any] = {"postgres": await server_version(server)}
    parts = {
        "limit": lambda: run_limit(args, server),
        "e2e": lambda: run_endtoend(args, server, work, pki),
        "agent": lambda: run_edge(args, server, work, pki, max(args.agents, args.scale_agents)),
        "rsyslog": lambda: run_rsyslog(args, server, work),
        "scaleout": lambda: run_scaleout(args, server, work, pki),
    }
    try:
        for name, part in parts.items():
            if name in args.parts:
                results[name] = await _part(name, part, progress)
                progress(results)
    finally:
        server.remove()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return results


async def _part(
    name: str,
    part: Callable[[], Awaitable[dict[str, Any]]],
    progress: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """A part's results; a part that fails is recorded as such and the run goes on."""
    try:
        return await part()
    except Exception as error:
        print(f"bench: {name} failed: {type(error).__name__}: {error}", flush=True)
        return {"failed": f"{type(error).__name__}: {error}"}


def execute(args: argparse.Namespace, progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    return asyncio.run(run(args, progress))
