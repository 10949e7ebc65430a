"""A PostgreSQL server with TLS for the log_entries source tests.

It reuses tests/storage_svc/pg_server.py (loaded by file path under its own module name, so
the storage tests and these share one module) and turns TLS on with the suite's dev CA before
the server starts; plain connections keep working.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import Pki

STORAGE_TESTS = Path(__file__).resolve().parents[1] / "storage_svc"


def _pg_server_module() -> ModuleType:
    loaded = sys.modules.get("pg_server")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("pg_server", STORAGE_TESTS / "pg_server.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pg_server"] = module
    spec.loader.exec_module(module)
    return module


pg_server_module = _pg_server_module()


def _install_tls(server: Any, pki: Pki) -> None:
    """Server certificate and key readable by the postgres user, key mode 0600."""
    root: Path = server.root
    data_dir: Path = server.data_dir
    tls = pki.service("storage")
    assert tls.cert_file is not None
    assert tls.key_file is not None
    target = root / "tls"
    target.mkdir()
    cert, key = target / "server.crt", target / "server.key"
    shutil.copy(tls.cert_file, cert)
    shutil.copy(tls.key_file, key)
    key.chmod(0o600)
    if os.geteuid() == 0:
        user = pwd.getpwnam(pg_server_module.RUN_AS)
        for path in (target, cert, key):
            os.chown(path, user.pw_uid, user.pw_gid)
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write(f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n")


@pytest.fixture(scope="session")
def tls_pg_server(pki: Pki) -> Iterator[Any]:
    server = pg_server_module.PgServer.create()
    try:
        _install_tls(server, pki)
        server.start()
        yield server
    finally:
        server.remove()
