"""A client with no proto files at hand: `buf curl` over mTLS, through server reflection."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from support import Pki, make_config

from mesh.app import running
from storage_svc import StorageServiceConfig, build

BUF = str(Path(sys.executable).parent / "buf")


async def buf_curl(pki: Pki, *args: str) -> tuple[int, str, str]:
    tls = pki.operator()
    process = await asyncio.create_subprocess_exec(
        BUF, "curl", "--protocol", "grpc",
        "--cacert", str(tls.ca_file), "--cert", str(tls.cert_file), "--key", str(tls.key_file),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_buf_curl_lists_services_and_calls_rpcs_via_reflection(
    pki: Pki, tmp_path: Path
) -> None:
    config = make_config(
        StorageServiceConfig, pki, "storage", sqlite={"path": str(tmp_path / "e.db")}
    )
    async with running(build(config)) as app:
        url = f"https://127.0.0.1:{app.runtime.ports.grpc}"
        code, out, err = await buf_curl(pki, "--list-services", url)
        assert code == 0, err
        assert "edgebot.v1.StorageService" in out.split()
        code, out, err = await buf_curl(
            pki,
            "-d",
            '{"service": "edgebot.v1.StorageService"}',
            f"{url}/grpc.health.v1.Health/Check",
        )
        assert code == 0, err
        assert json.loads(out) == {"status": "SERVING"}
        code, out, err = await buf_curl(
            pki, "-d", "{}", f"{url}/edgebot.v1.StorageService/GetStats"
        )
        assert code == 0, err
        assert "sinks" in json.loads(out)
