"""The throwaway PostgreSQL the suite runs: loud when it cannot, and restartable in place."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pg_server
import pytest
from pg_server import PgServer, PgServerError


def test_missing_server_binaries_fail_loudly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(pg_server, "BIN_DIRS", (tmp_path,))
    with pytest.raises(PgServerError, match=r"PostgreSQL server binaries .*not found in"):
        PgServer.create()


async def test_a_killed_server_starts_again_with_its_data() -> None:
    server = PgServer.create()
    try:
        server.start()
        conn = await asyncpg.connect(server.dsn())
        await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        await conn.close()
        port = server.port
        server.kill()
        assert not server.running
        server.start()
        conn = await asyncpg.connect(server.dsn())
        try:
            assert await conn.fetchval("SELECT n FROM kept") == 7
        finally:
            await conn.close()
        assert server.port == port
    finally:
        server.remove()
    assert not server.root.exists()
