"""A PostgreSQL server with TLS for the log_entries source tests.

It reuses tests/pg_server.py and turns TLS on with the suite's dev CA before the server
starts; plain connections keep working.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_server import RUN_AS, PgServer
from support import Pki


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
        user = pwd.getpwnam(RUN_AS)
        for path in (target, cert, key):
            os.chown(path, user.pw_uid, user.pw_gid)
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write(f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n")


@pytest.fixture(scope="session")
def tls_pg_server(pki: Pki) -> Iterator[Any]:
    server = PgServer.create()
    try:
        _install_tls(server, pki)
        server.start()
        yield server
    finally:
        server.remove()
