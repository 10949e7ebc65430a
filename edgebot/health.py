"""`edgebot health`: every service's health, on its mTLS port and its plaintext probe port."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import grpc

from edgebot.connect import add_connection_flags, operator_tls
from edgebot.layout import SERVICE_ORDER, read_endpoints
from mesh.channel import open_channel
from mesh.config import TlsConfig
from mesh.health import is_serving


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "health", help="check every service of a mesh", description=__doc__
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_connection_flags(parser)
    parser.set_defaults(handler=run)


def add_probe_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="exit 0 if a plaintext health port answers SERVING (container health checks)",
    )
    parser.add_argument("address", help="host:port of a service's plaintext health port")
    parser.add_argument("--service", default="", help="gRPC service name (default: overall)")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.set_defaults(handler=run_probe)


async def run_probe(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(args.address) as channel:
        serving = await is_serving(channel, args.service, timeout_s=args.timeout)
    print("SERVING" if serving else "NOT SERVING")
    return 0 if serving else 1


async def check_service(name: str, info: dict[str, Any], tls: TlsConfig) -> dict[str, Any]:
    async with open_channel([info["address"]], tls) as channel:
        overall = await is_serving(channel, "")
        own = await is_serving(channel, info["grpc_service"]) if info["grpc_service"] else overall
    async with grpc.aio.insecure_channel(info["health_address"]) as channel:
        probe = await is_serving(channel, "")
    return {
        "service": name,
        "address": info["address"],
        "serving": overall and own,
        "probe_port_serving": probe,
    }


async def run(args: argparse.Namespace) -> int:
    endpoints = read_endpoints(args.state_dir)
    tls = operator_tls(args)
    results = await asyncio.gather(
        *(check_service(name, endpoints["services"][name], tls) for name in SERVICE_ORDER)
    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            state = "SERVING" if result["serving"] else "NOT SERVING"
            probe = "ok" if result["probe_port_serving"] else "down"
            print(f"{result['service']:<9} {result['address']:<17} {state:<12} probe {probe}")
    healthy = all(r["serving"] and r["probe_port_serving"] for r in results)
    if not healthy:
        print("edgebot health: some services are not serving", file=sys.stderr)
    return 0 if healthy else 1
