"""Edge agent footprint: idle RSS, and RSS and CPU while shipping syslog at fixed rates.

    .venv/bin/python -m bench.agent_footprint [--rates 1000 5000] [--seconds 10]

Runs the local mesh (`edgebot up` layout, its own state dir and ports), offers RFC3164
lines over UDP at each rate, and reads the agent's RSS and CPU time from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgebot.layout import SERVICE_ORDER, StateDir
from edgebot.up import prepare_state, spawn, wait_serving

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def offer(port: int, rate: int, seconds: float) -> int:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port)
    )
    sent, started = 0, time.monotonic()
    line = b"<30>Nov 22 07:10:57 gw dnsmasq-dhcp[1234]: DHCPACK(br-lan) 192.168.1.23 aa:bb:cc"
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            transport.sendto(line)
            sent += 1
        await asyncio.sleep(0.005)
    transport.close()
    return sent


async def measure(rates: list[int], seconds: float, base: int, syslog_port: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = StateDir(Path(tmp))
        prepare_state(state, base, syslog_port, "bench")
        children = []
        try:
            for service in SERVICE_ORDER:
                child = spawn(state, service)
                children.append(child)
                await wait_serving(child, base)
            agent = children[-1].process.pid
            await asyncio.sleep(5)
            print(f"agent idle RSS: {rss_mb(agent):.1f} MB")
            print(f"{'offered/s':>10} {'sent':>8} {'CPU s per 1k events':>20} {'RSS MB':>8}")
            for rate in rates:
                cpu_before = cpu_seconds(agent)
                sent = await offer(syslog_port, rate, seconds)
                await asyncio.sleep(2)
                used = cpu_seconds(agent) - cpu_before
                print(f"{rate:>10} {sent:>8} {used / sent * 1000:>20.3f} {rss_mb(agent):>8.1f}")
        finally:
            for child in reversed(children):
                child.process.send_signal(signal.SIGTERM)
            for child in reversed(children):
                try:
                    child.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                child.log_file.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port-base", type=int, default=41000)
    parser.add_argument("--syslog-port", type=int, default=41514)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    asyncio.run(measure(args.rates, args.seconds, args.port_base, args.syslog_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
