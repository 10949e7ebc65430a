"""The peer: rsyslog (imtcp -> ompgsql) storing the same syslog into PostgreSQL.

Its own instance (``rsyslogd -n -f CONF -i PIDFILE``, never the system one), a TCP input on
a free loopback port, in-memory (LinkedList) queues, one INSERT per message through
ompgsql into a plain table with two btree indexes, in its own database on the benchmark's
server. The rate is rows counted over time, between 10 % and 90 % of the lines sent.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.pg import PgServer
from bench.procs import Sampler, Watched

from pg_server import free_tcp_port  # isort: skip  (on the path bench.pg sets)

RSYSLOGD = "/usr/sbin/rsyslogd"
TABLE = """CREATE TABLE syslog_events (
    reported_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    host text NOT NULL,
    program text NOT NULL,
    facility smallint NOT NULL,
    severity smallint NOT NULL,
    message text NOT NULL
)"""
INDEXES = (
    "CREATE INDEX syslog_events_time ON syslog_events (reported_at)",
    "CREATE INDEX syslog_events_host_time ON syslog_events (host, reported_at)",
)
CONF = """global(workDirectory="{work}")
module(load="imtcp" maxSessions="100")
module(load="ompgsql")
template(name="pgrow" type="list" option.stdsql="on") {{
  constant(value="INSERT INTO syslog_events (reported_at, received_at, host, program, facility, severity, message) VALUES ('")
  property(name="timereported" dateformat="pgsql" date.inUTC="on")
  constant(value="','")
  property(name="timegenerated" dateformat="pgsql" date.inUTC="on")
  constant(value="','")
  property(name="hostname")
  constant(value="','")
  property(name="programname")
  constant(value="',")
  property(name="syslogfacility")
  constant(value=",")
  property(name="syslogseverity")
  constant(value=",'")
  property(name="msg" droplastlf="on")
  constant(value="')")
}}
ruleset(name="to_pg" queue.type="LinkedList" queue.size="200000") {{
  action(type="ompgsql" server="127.0.0.1" port="{pg_port}" db="{db}" user="postgres"
         pass="" template="pgrow" queue.type="LinkedList" queue.size="200000"
         queue.workerThreads="{workers}")
}}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="to_pg")
"""  # noqa: E501


@dataclass(frozen=True)
class PeerResult:
    workers: int
    sent: int
    stored: int
    events_per_s: float
    cpu_s_per_1k: dict[str, float]
    peak_rss_mb: dict[str, float]


def available() -> str | None:
    """Why the peer cannot run here, or None."""
    if not Path(RSYSLOGD).exists():
        return "rsyslogd not installed (apt-get install rsyslog rsyslog-pgsql)"
    if not list(Path("/usr/lib").glob("*/rsyslog/ompgsql.so")) and not list(
        Path("/usr/lib/rsyslog").glob("ompgsql.so")
    ):
        return "ompgsql not installed (apt-get install rsyslog-pgsql)"
    return None


async def fresh_database(server: PgServer, name: str) -> str:
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(server.dsn(name))
    try:
        for statement in (TABLE, *INDEXES):
            await conn.execute(statement)
    finally:
        await conn.close()
    return server.dsn(name)


def send_lines(port: int, lines: list[bytes], chunk: int = 500) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for start in range(0, len(lines), chunk):
            sock.sendall(b"\n".join(lines[start : start + chunk]) + b"\n")


async def rows_over_time(dsn: str, expected: int, stall_s: float) -> list[tuple[float, int]]:
    """(seconds, rows) every 0.25 s until every line is stored or nothing moved for stall_s."""
    conn = await asyncpg.connect(dsn)
    started = time.monotonic()
    samples: list[tuple[float, int]] = [(0.0, 0)]
    try:
        while samples[-1][1] < expected:
            await asyncio.sleep(0.25)
            rows = await conn.fetchval("SELECT COUNT(*) FROM syslog_events")
            samples.append((time.monotonic() - started, rows))
            moved = [s for s in samples if s[1] == rows]
            if rows and time.monotonic() - started - moved[0][0] > stall_s:
                break
    finally:
        await conn.close()
    return samples


def steady(samples: list[tuple[float, int]], total: int) -> float:
    t10 = next((t for t, rows in samples if rows >= 0.1 * total), None)
    t90 = next((t for t, rows in samples if rows >= 0.9 * total), None)
    r10 = next((rows for _, rows in samples if rows >= 0.1 * total), 0)
    r90 = next((rows for _, rows in samples if rows >= 0.9 * total), 0)
    if t10 is None or t90 is None or t90 <= t10:
        last_t, last_rows = samples[-1]
        return last_rows / last_t if last_t else 0.0
    return (r90 - r10) / (t90 - t10)


async def measure(
    server: PgServer, postgres: Watched, lines: list[bytes], workers: int, work: Path
) -> PeerResult:
    db = f"rsyslog_w{workers}"
    dsn = await fresh_database(server, db)
    port = free_tcp_port()
    conf = write_conf(work, CONF.format(work=work, pg_port=server.port, db=db,
                                        workers=workers, port=port))  # fmt: skip
    process = start_rsyslog(conf, work)
    try:
        await wait_listening(port, process)
        roles = [Watched("rsyslogd", process.pid), postgres]
        async with Sampler(roles) as sampler:
            sender = asyncio.create_task(asyncio.to_thread(send_lines, port, lines))
            samples = await rows_over_time(dsn, len(lines), stall_s=10.0)
            await sender
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(work / "spool", ignore_errors=True)
    stored = samples[-1][1]
    per_1k = max(stored, 1) / 1000
    return PeerResult(
        workers=workers,
        sent=len(lines),
        stored=stored,
        events_per_s=round(steady(samples, len(lines)), 1),
        cpu_s_per_1k={r: round(c / per_1k, 4) for r, c in sampler.cpu_used().items()},
        peak_rss_mb=sampler.peaks(),
    )


def write_conf(work: Path, text: str) -> Path:
    """The config file, checked by rsyslogd -N1 first."""
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "rsyslog.conf"
    conf.write_text(text)
    check = subprocess.run([RSYSLOGD, "-N1", "-f", str(conf)], capture_output=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"rsyslog refused {conf}: {check.stderr.decode(errors='replace')}")
    return conf


def start_rsyslog(conf: Path, work: Path) -> subprocess.Popen[bytes]:
    with (work / "rsyslogd.log").open("ab") as log:
        return subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(work / "rsyslogd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


async def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rsyslogd exited with code {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError("rsyslogd did not listen within 15 s")
