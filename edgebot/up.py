"""`edgebot up`: the whole mesh on one machine, each service its own process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc

from edgebot.layout import (
    MODULES,
    OPERATOR,
    SERVICE_ORDER,
    StateDir,
    console_port,
    ensure_console_token,
    ports_for,
    service_configs,
    write_configs,
    write_endpoints,
)
from mesh.health import is_serving
from mesh.pki import ensure_dev_pki

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@dataclass
class Child:
    service: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def prepare_state(state: StateDir, base: int, syslog_port: int, agent_id: str) -> None:
    """Certificates on first run (kept afterwards), configs and endpoints every run."""
    state.create()
    ensure_dev_pki(
        state.certs,
        {name: (f"{name}.edgebot.svc",) for name in SERVICE_ORDER if name != "agent"},
        agents=(agent_id,),
        operators=(OPERATOR,),
    )
    ensure_console_token(state)
    write_configs(state, service_configs(state, base, syslog_port, agent_id))
    write_endpoints(state, base, syslog_port)


def spawn(state: StateDir, service: str) -> Child:
    log_path = state.logs / f"{service}.log"
    log_file = log_path.open("ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", MODULES[service], "--config", str(state.config_file(service))],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    return Child(service, process, log_path, log_file)


async def wait_serving(child: Child, base: int) -> None:
    """Poll the plaintext health port until SERVING; fail fast if the process exits."""
    address = f"127.0.0.1:{ports_for(child.service, base).health}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with grpc.aio.insecure_channel(address) as channel:
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{child.service} exited with code {child.process.returncode}; "
                    f"last lines of {child.log_path}:\n{child.tail()}"
                )
            if await is_serving(channel, "", timeout_s=1.0):
                return
            await asyncio.sleep(0.2)
    raise RuntimeError(
        f"{child.service} did not report SERVING within {STARTUP_TIMEOUT_S:.0f}s; "
        f"last lines of {child.log_path}:\n{child.tail()}"
    )


def stop_all(children: list[Child]) -> None:
    """SIGTERM in reverse start order (the agent drains first), then wait, then SIGKILL."""
    for child in reversed(children):
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in reversed(children):
        remaining = max(0.1, deadline - time.monotonic())
        try:
            child.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            print(f"edgebot: {child.service} did not stop in time; killing it", file=sys.stderr)
            child.process.kill()
            child.process.wait()
        child.log_file.close()


def banner(state: StateDir, base: int, syslog_port: int) -> str:
    rows = [
        f"  {svc:<9} grpc 127.0.0.1:{ports_for(svc, base).grpc}"
        f"  health 127.0.0.1:{ports_for(svc, base).health}"
        f"  metrics http://127.0.0.1:{ports_for(svc, base).metrics}/metrics"
        for svc in SERVICE_ORDER
    ]
    state_flag = f" --state-dir {state.root}"
    return "\n".join(
        [
            f"EdgeBot mesh is up (state in {state.root}, logs in {state.logs}):",
            *rows,
            "",
            f"Operator console: http://127.0.0.1:{console_port(base)}/ "
            f"(token: the line after 'admin:' in {state.console_tokens})",
            "",
            "Send a syslog line to the edge agent:",
            f"  logger -n 127.0.0.1 -P {syslog_port} -d --rfc3164 -t myapp 'hello edgebot'",
            "Query what was stored:",
            f"  edgebot events{state_flag}",
            f"  edgebot events{state_flag} --follow",
            f"  edgebot health{state_flag}",
            "Press Ctrl-C to stop.",
        ]
    )


async def _watch(children: list[Child], stop: asyncio.Event) -> Child | None:
    """Wait for Ctrl-C/SIGTERM, or return the first child that died on its own."""
    while not stop.is_set():
        for child in children:
            if child.process.poll() is not None:
                return child
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
    return None


async def run_up(state: StateDir, base: int, syslog_port: int, agent_id: str) -> int:
    prepare_state(state, base, syslog_port, agent_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    children: list[Child] = []
    try:
        for service in SERVICE_ORDER:
            child = spawn(state, service)
            children.append(child)
            await wait_serving(child, base)
        print(banner(state, base, syslog_port), flush=True)
        died = await _watch(children, stop)
        if died is not None:
            print(
                f"edgebot: {died.service} exited with code {died.process.returncode}; "
                f"stopping the mesh. Last lines of {died.log_path}:\n{died.tail()}",
                file=sys.stderr,
            )
            return 1
        print("edgebot: stopping...", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"edgebot: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all(children)
