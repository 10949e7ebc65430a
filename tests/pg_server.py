"""A throwaway PostgreSQL server for the tests (and the bench), from the installed binaries.

The server lives in its own temp dir (data, unix socket, log), listens on a free port on
127.0.0.1 only, and is thrown away at the end. As root it runs as the unprivileged
``postgres`` user, because initdb and postgres refuse to run as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

BIN_DIRS = (
    Path("/usr/local/bin"),
    *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True),
)
REQUIRED = ("initdb", "postgres", "pg_isready", "psql")
RUN_AS = "postgres"
TEST_DATABASE = "edgebot_test"
START_TIMEOUT_S = 30.0
# fsync off only risks data on an OS crash; a killed postgres keeps every commit (hence
# synchronous_commit stays on: the kill tests rely on it).
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
}


@dataclass(frozen=True)
class PgSchema:
    """Where one test's tables live: a database and a schema of it."""

    dsn: str
    schema: str

    async def connect(self) -> asyncpg.Connection:
        """A connection whose unqualified table names are this schema's."""
        return await asyncpg.connect(self.dsn, server_settings={"search_path": self.schema})


class PgServerError(RuntimeError):
    """The throwaway server could not be found, initialised or started."""


def find_bin_dir() -> Path:
    for directory in BIN_DIRS:
        if all((directory / name).exists() for name in REQUIRED):
            return directory
    searched = ", ".join(str(d) for d in BIN_DIRS) or "/usr/local/bin"
    raise PgServerError(
        f"PostgreSQL server binaries ({', '.join(REQUIRED)}) not found in {searched}; "
        "install them (Debian: apt-get install postgresql) to run the PostgreSQL tests"
    )


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class PgServer:
    """One postgres process over one data dir; stop, kill and start again on the same port."""

    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data_dir = root / "data"
        self.socket_dir = root / "socket"
        self.log_path = root / "postgres.log"
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._user = pwd.getpwnam(RUN_AS) if os.geteuid() == 0 else None

    @classmethod
    def create(cls) -> PgServer:
        """A fresh, initialised, not yet started server in a new temp dir."""
        bin_dir = find_bin_dir()
        root = Path(tempfile.mkdtemp(prefix="edgebot-pg-"))
        server = cls(bin_dir, root, free_tcp_port())
        try:
            server._initdb()
        except BaseException:
            server.remove()
            raise
        return server

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run_kwargs(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        self.socket_dir.mkdir()
        if self._user is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        command = [
            str(self.bin_dir / "initdb"),
            *("-D", str(self.data_dir), "-U", "postgres", "-E", "UTF8"),
            *("--auth=trust", "--no-sync", "--locale=C.UTF-8"),
        ]
        done = subprocess.run(command, capture_output=True, check=False, **self._run_kwargs())
        if done.returncode != 0:
            raise PgServerError(
                f"initdb failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
            )

    def start(self) -> None:
        """Start postgres (again) and wait until it accepts connections."""
        if self._process is not None:
            raise PgServerError("postgres is already running")
        command = [
            str(self.bin_dir / "postgres"),
            *("-D", str(self.data_dir), "-p", str(self.port), "-k", str(self.socket_dir)),
            *(arg for key, value in SETTINGS.items() for arg in ("-c", f"{key}={value}")),
        ]
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._run_kwargs(),
            )
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        probe = [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)]
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                self._process = None
                raise PgServerError(f"postgres exited at start-up:\n{self.log_tail()}")
            if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
                self._ensure_test_database()
                return
            time.sleep(0.05)
        self.kill()
        raise PgServerError(f"postgres not ready after {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def _ensure_test_database(self) -> None:
        psql = [str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port)]
        psql += ["-U", "postgres", "-d", "postgres", "-tAc"]
        exists = subprocess.run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{TEST_DATABASE}'"],
            capture_output=True,
            check=True,
        )
        if exists.stdout.strip() != b"1":
            subprocess.run(
                [*psql, f"CREATE DATABASE {TEST_DATABASE}"], capture_output=True, check=True
            )

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended, the data stays consistent."""
        self._end(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL to the postmaster and every backend at once, as a crash leaves them."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # Each backend is its own process group leader (postgres calls setsid), so a
        # signal to the postmaster's group reaches the postmaster alone.
        backends = psutil.Process(process.pid).children(recursive=True)
        targets = [psutil.Process(process.pid), *backends] if sig == signal.SIGKILL else []
        for target in targets:
            with contextlib.suppress(psutil.NoSuchProcess):
                target.send_signal(sig)
        if not targets:
            process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # Backends left behind hold the old shared memory; a new postmaster on the same
        # data dir refuses to start until they are gone.
        psutil.wait_procs(backends, timeout=10)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    async def create_database(self) -> str:
        """A new empty database; its DSN. (About 0.2 s: tests use fresh_schema.)"""
        name = f"test_{uuid.uuid4().hex}"
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn(name)

    def fresh_schema(self) -> PgSchema:
        """A schema name no test used yet, in the shared test database (the sink creates it)."""
        return PgSchema(self.dsn(TEST_DATABASE), f"test_{uuid.uuid4().hex}")


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    """A fresh server in a temp dir, started, and removed (data and all) afterwards."""
    server = PgServer.create()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with running_server() as server:
        yield server
