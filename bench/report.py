"""The benchmark's table, its JSON file, and a PNG chart (matplotlib, the `bench` extra)."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "rsyslog": _rsyslog_version(),
        "fsync_ms": fsync_latency(Path(tempfile.gettempdir())),
    }


def fsync_latency(directory: Path, count: int = 200) -> dict[str, float]:
    """fsync of a 4 KiB write, as the spool and PostgreSQL pay it on every commit."""
    path = directory / f"edgebot-fsync-probe-{os.getpid()}"
    spent = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            spent.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    spent.sort()
    return {q: round(spent[int(f * (count - 1))], 2) for q, f in (("p50", 0.5), ("p99", 0.99))}


def _rsyslog_version() -> str:
    try:
        done = subprocess.run(["/usr/sbin/rsyslogd", "-v"], capture_output=True, check=False)
    except OSError:
        return ""
    return done.stdout.decode(errors="replace").splitlines()[0] if done.stdout else ""


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per configuration: name, events/s, p50/p99 ack latency."""
    table = []
    limit = results.get("limit", {}).get("best")
    if limit:
        name = f"limit: raw COPY, batch {limit['batch']}, {limit['writers']} writer(s)"
        table.append({"name": name, "events_per_s": limit["events_per_s"]})
    for phase in results.get("e2e", {}).get("phases", []):
        latency = phase["latency_ms"]
        backlog = phase["offered_per_s"] is None  # latency there is time spent queued
        table.append(
            {
                "name": _phase_name(phase),
                "events_per_s": phase["events_per_s"],
                "p50_ms": None if backlog else latency["p50"],
                "p99_ms": None if backlog else latency["p99"],
            }
        )
    once = results.get("scaleout", {}).get("exactly_once")
    if once:
        name = f"EdgeBot {once['ingests']} ingest + {once['pipelines']} pipeline (backlog)"
        table.append({"name": name, "events_per_s": once["events_per_s"]})
    for peer in results.get("rsyslog", {}).get("configs", []):
        name = f"rsyslog ompgsql, {peer['workers']} worker thread(s)"
        table.append({"name": name, "events_per_s": peer["events_per_s"]})
    return table


def _phase_name(phase: dict[str, Any]) -> str:
    offered = phase["offered_per_s"]
    if offered is None:
        return "EdgeBot sustained (backlog)"
    return f"EdgeBot at {phase['name'].split()[-1]}/s offered ({offered:,.0f} appended/s)"


def ratios(results: dict[str, Any]) -> dict[str, float]:
    phases = results.get("e2e", {}).get("phases", [])
    sustained = next((p["events_per_s"] for p in phases if p["offered_per_s"] is None), None)
    found: dict[str, float] = {}
    if sustained is None:
        return found
    limit = results.get("limit", {}).get("best")
    if limit:
        found["edgebot / limit"] = round(sustained / limit["events_per_s"], 3)
    for peer in results.get("rsyslog", {}).get("configs", []):
        found[f"edgebot / rsyslog {peer['workers']}w"] = round(sustained / peer["events_per_s"], 3)
    once = results.get("scaleout", {}).get("exactly_once")
    if once and limit:
        found["edgebot 2+2 replicas / limit"] = round(
            once["events_per_s"] / limit["events_per_s"], 3
        )
    return found


def _fmt(value: float | None, pattern: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        pattern.format(value))  # fmt: skip


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'configuration':<58}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for row in rows(results):
        p50, p99 = _fmt(row.get("p50_ms"), "{:.1f}"), _fmt(row.get("p99_ms"), "{:.1f}")
        print(f"{row['name']:<58}{row['events_per_s']:>11,.0f}{p50:>9}{p99:>9}")
    for name, value in ratios(results).items():
        print(f"  {name}: {value:.0%}")
    for phase in results.get("e2e", {}).get("phases", []):
        cpu = ", ".join(f"{k} {v:.3f}" for k, v in phase["cpu_s_per_1k"].items())
        rss = ", ".join(f"{k} {v:.0f}" for k, v in phase["peak_rss_mb"].items())
        total = sum(v for k, v in phase["cpu_s_per_1k"].items() if not k.startswith("fleet "))
        print(f"  {phase['name']}: CPU s/1k events: {cpu}; all {total:.3f}"
              f" (CPU-bound ceiling on 2 idle cores: {2000 / max(total, 1e-9):,.0f} events/s)"
              f"\n{'':>4}peak RSS MB: {rss}")  # fmt: skip
    if "agent" in results:
        agent = {k: v for k, v in results["agent"].items() if k != "profile"}
        print(f"  edge agent: {agent}")
    scaleout = results.get("scaleout", {})
    if "exactly_once" in scaleout:
        print(f"  scale-out: {scaleout['exactly_once']}")
        print(f"  many agents: {scaleout['many_agents']['summary']}")
    for name, part in results.items():
        if isinstance(part, dict) and "failed" in part:
            print(f"  {name} FAILED: {part['failed']}")


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))


def draw_chart(results: dict[str, Any], path: Path) -> bool:
    """Throughput per configuration and p50/p99 ack latency per offered rate; False when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    table = rows(results)
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5), width_ratios=(3, 2))
    names = [_two_lines(row["name"]) for row in table]
    left.barh(names, [row["events_per_s"] for row in table], color=_colours(table))
    left.invert_yaxis()
    left.set_xlabel("events/s (stored; EdgeBot: durably acknowledged)")
    left.tick_params(axis="y", labelsize=7)
    latency = [row for row in table if row.get("p99_ms") is not None]
    labels = [row["name"].split(" (")[0].replace("EdgeBot at ", "") for row in latency]
    right.plot(labels, [row["p50_ms"] for row in latency], "o-", label="p50")
    right.plot(labels, [row["p99_ms"] for row in latency], "s-", label="p99")
    right.axhline(50, color="grey", linestyle="--", linewidth=1, label="target p99 50 ms")
    right.set_ylabel("ack latency, spool append to ack (ms)")
    right.set_yscale("log")
    right.legend()
    figure.suptitle(f"EdgeBot benchmark ({results.get('date', '')}, {results['machine']['cpu']}, "
                    f"{results['machine']['cores']} cores)", fontsize=10)  # fmt: skip
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _two_lines(name: str) -> str:
    if " (" in name:
        head, tail = name.split(" (", 1)
        return f"{head}\n({tail}"
    head, _, tail = name.partition(", ")
    return f"{head},\n{tail}" if tail else head


def _colours(table: list[dict[str, Any]]) -> list[str]:
    palette = {"limit": "#888888", "EdgeBot": "#2b7bba", "rsyslog": "#d9822b"}
    return [next((c for k, c in palette.items() if row["name"].startswith(k)), "#555")
            for row in table]  # fmt: skip


if __name__ == "__main__":
    import sys

    loaded = json.loads(Path(sys.argv[1]).read_text())
    print_table(loaded)
    if len(sys.argv) > 2 and draw_chart(loaded, Path(sys.argv[2])):
        print(f"wrote {sys.argv[2]}")
