"""What one call costs in gRPC's asyncio API: a unary call against a request on an open
bidirectional stream (mesh.lockstep), client and server CPU per call, on loopback.

    .venv/bin/python -m bench.rpc_cost --calls 3000 --bytes 20000

The server is its own process; its CPU is read from /proc before and after. Both sides are
plain gRPC (no TLS, no interceptors), so the figures are the transport's own cost, the part
a stream saves, not EdgeBot's per-call work on top.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from mesh.lockstep import StreamPool, StreamPoolLimits

SERVICE = "bench.RpcCost"


def same(data: bytes) -> bytes:
    return data


async def _unary(request: bytes, context: Any) -> bytes:
    return request


async def _stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def _serve(port: int) -> None:
    async def run() -> None:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(
                    _unary, request_deserializer=same, response_serializer=same
                ),
                "Stream": grpc.stream_stream_rpc_method_handler(
                    _stream, request_deserializer=same, response_serializer=same
                ),
            },
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(run())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cost:
    name: str
    client_us: float
    server_us: float
    wall_us: float

    @property
    def together_us(self) -> float:
        return self.client_us + self.server_us

    def line(self) -> str:
        return (
            f"{self.name:<28} client {self.client_us:6.0f} µs  server {self.server_us:6.0f} µs"
            f"  together {self.together_us:6.0f} µs  wall {self.wall_us:6.0f} µs"
        )


async def measure(name: str, port: int, server_pid: int, calls: int, payload: bytes) -> Cost:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.channel_ready()
        unary = channel.unary_unary(
            f"/{SERVICE}/Unary", request_serializer=same, response_deserializer=same
        )
        pool: StreamPool[bytes, bytes] = StreamPool(
            channel.stream_stream(
                f"/{SERVICE}/Stream", request_serializer=same, response_deserializer=same
            ),
            StreamPoolLimits(timeout_s=10, max_age_s=3600),
        )
        await (unary(payload, timeout=10) if name == "unary call" else pool.call(payload))
        server_before, client_before, wall_before = (
            cpu_s(server_pid),
            time.process_time(),
            time.perf_counter(),
        )
        for _ in range(calls):
            if name == "unary call":
                await unary(payload, timeout=10)
            else:
                await pool.call(payload)
        wall = time.perf_counter() - wall_before
        client = time.process_time() - client_before
        server = cpu_s(server_pid) - server_before
        pool.close()
    return Cost(name, 1e6 * client / calls, 1e6 * server / calls, 1e6 * wall / calls)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--bytes", type=int, default=20_000, help="request and response size")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    args = parser.parse_args(argv)
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,))
    server.start()
    try:
        assert server.pid is not None
        payload = os.urandom(args.bytes)
        best: dict[str, Cost] = {}
        for _ in range(args.rounds):
            for name in ("unary call", "request on an open stream"):
                cost = asyncio.run(measure(name, port, server.pid, args.calls, payload))
                kept = best.get(name)
                if (
                    kept is None
                    or cost.client_us + cost.server_us < kept.client_us + kept.server_us
                ):
                    best[name] = cost
        print(f"{args.calls} calls of {args.bytes} bytes each way, best of {args.rounds}")
        for cost in best.values():
            print(cost.line())
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
