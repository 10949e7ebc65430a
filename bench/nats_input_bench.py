"""The NATS input end to end: messages waiting in JetStream until stored and acked.

Run: .venv/bin/python -m bench.nats_input_bench [--messages 20000] [--events-per-message 1]
     [--inflight 256] [--fetch-batch 64] [--rounds 3]

Starts its own nats-server (-js) and storage (SQLite, synchronous=FULL), pipeline and ingest
as separate processes over mTLS on loopback (the fault tests' MeshProcesses). Each round
publishes --messages JSON messages in the original ETL shape (a JSON array of
--events-per-message events each, or one object when it is 1) to a fresh stream while ingest
is stopped, starts ingest, and times from its SERVING until the consumer has nothing pending
or un-acked; best of --rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from mesh_processes import MeshProcesses  # noqa: E402
from nats_server import NatsServer  # noqa: E402
from support import free_port_base, free_udp_port  # noqa: E402

from edgebot.layout import StateDir  # noqa: E402

STREAM, DURABLE = "EVENTS_RAW", "edgebot-ingest"


def etl_event(number: int, index: int) -> dict[str, Any]:
    return {
        "id": f"bench-{number}-{index}",
        "type": "connect",
        "source": "bench",
        "timestamp": int(time.time() * 1000),
        "metadata": {"host_id": f"host-{number % 20}"},
        "payload": f"sshd[{number}]: Accepted publickey for deploy from 10.0.{index % 250}.1",
    }


def body(number: int, events: int) -> bytes:
    if events == 1:
        return json.dumps(etl_event(number, 0)).encode()
    return json.dumps([etl_event(number, index) for index in range(events)]).encode()


async def publish(url: str, messages: int, events: int) -> None:
    client = await nats.connect(url)
    js = client.jetstream()
    await js.add_stream(name=STREAM, subjects=["events.raw"])
    pending = []
    for number in range(messages):
        pending.append(js.publish("events.raw", body(number, events)))
        if len(pending) == 500:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await client.close()


async def drained(url: str) -> None:
    client = await nats.connect(url)
    js = client.jetstream()
    try:
        while True:
            try:
                info = await js.consumer_info(STREAM, DURABLE)
            except nats.js.errors.NotFoundError:
                info = None
            if info is not None and info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.05)
    finally:
        await client.close()


async def one_round(root: Path, args: argparse.Namespace) -> float:
    server = NatsServer(root / "nats")
    server.root.mkdir(parents=True)
    server.start()
    mesh = MeshProcesses(StateDir(root / "state"), free_port_base(), free_udp_port())
    nats_settings = {
        "enabled": True,
        "servers": [server.url],
        "max_inflight_messages": args.inflight,
        "fetch_batch": args.fetch_batch,
    }
    mesh.prepare({"ingest": {"nats": nats_settings, "logging": {"level": "WARNING"}}})
    try:
        await mesh.start_and_wait("storage")
        await mesh.start_and_wait("pipeline")
        await publish(server.url, args.messages, args.events_per_message)
        await mesh.start_and_wait("ingest")
        started = time.perf_counter()
        await drained(server.url)
        return time.perf_counter() - started
    finally:
        mesh.stop_all()
        server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--events-per-message", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--fetch-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgebot-nats-bench-") as tmp:
        times = [await one_round(Path(tmp) / f"r{n}", args) for n in range(args.rounds)]
    best = min(times)
    events = args.messages * args.events_per_message
    print(
        f"{args.messages} messages x {args.events_per_message} events, in flight "
        f"{args.inflight}, fetch {args.fetch_batch}: best {best:.2f}s of {len(times)} -> "
        f"{args.messages / best:,.0f} messages/s, {events / best:,.0f} events/s"
    )


if __name__ == "__main__":
    asyncio.run(main())
