"""`edgebot certs`: a development CA with service, agent and operator certificates."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgebot.layout import OPERATOR, SERVICE_ORDER
from mesh.pki import ensure_dev_pki


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "certs",
        help="create a dev CA and certificates (existing files are kept)",
        description="Creates ca.crt/ca.key, one certificate per service (SANs localhost, "
        "127.0.0.1 and <service>.<namespace>.svc), agent certificates naming "
        "spiffe://edgebot/agent/<id>, and operator certificates.",
    )
    parser.add_argument("--out", type=Path, default=Path(".edgebot/certs"))
    parser.add_argument(
        "--agent", action="append", default=[], help="agent id to issue a certificate for"
    )
    parser.add_argument(
        "--operator", action="append", default=[], help=f"operator name (default {OPERATOR})"
    )
    parser.add_argument(
        "--namespace", default="edgebot", help="Kubernetes namespace for service DNS names"
    )
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    services = {
        name: (name, f"{name}.{args.namespace}.svc", f"{name}.{args.namespace}.svc.cluster.local")
        for name in SERVICE_ORDER
        if name != "agent"
    }
    ensure_dev_pki(
        args.out,
        services,
        agents=tuple(args.agent),
        operators=tuple(args.operator or [OPERATOR]),
    )
    for path in sorted(args.out.glob("*.crt")):
        print(path)
    return 0
