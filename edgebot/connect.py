"""How the CLI reaches a service: from the state directory or from explicit flags."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

from edgebot.layout import DEFAULT_PORT_BASE, read_endpoints
from mesh.channel import open_channel
from mesh.config import TlsConfig


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".edgebot"),
        help="state directory of `edgebot up` (addresses and operator certificate)",
    )
    group.add_argument("--address", help="host:port of the service (overrides the state dir)")
    group.add_argument("--ca", type=Path, help="CA certificate (PEM)")
    group.add_argument("--cert", type=Path, help="operator client certificate (PEM)")
    group.add_argument("--key", type=Path, help="operator client key (PEM)")
    group.add_argument(
        "--plaintext", action="store_true", help="connect without TLS (development meshes only)"
    )


def operator_tls(args: argparse.Namespace) -> TlsConfig:
    if args.plaintext:
        return TlsConfig(enabled=False)
    if args.ca and args.cert and args.key:
        return TlsConfig(ca_file=args.ca, cert_file=args.cert, key_file=args.key)
    endpoints = read_endpoints(args.state_dir)
    return TlsConfig.model_validate(endpoints["operator_tls"])


def service_address(args: argparse.Namespace, service: str) -> str:
    if args.address:
        return str(args.address)
    if (args.state_dir / "endpoints.json").exists():
        endpoints = read_endpoints(args.state_dir)
        return str(endpoints["services"][service]["address"])
    from edgebot.layout import ports_for

    return f"127.0.0.1:{ports_for(service, DEFAULT_PORT_BASE).grpc}"


def operator_channel(args: argparse.Namespace, service: str) -> grpc.aio.Channel:
    return open_channel([service_address(args, service)], operator_tls(args))
