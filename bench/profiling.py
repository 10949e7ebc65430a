"""py-spy sampling of the running services, summarised as the frames that take the time.

``py-spy record --format raw`` writes collapsed stacks (``outer;...;inner count``). The
summary gives, per process, the share of samples whose innermost frame is each function
("self"), and the share spent under a few named areas (gRPC, protobuf, asyncpg, ...).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

AREAS = {
    "grpc (cygrpc, ssl, aio)": re.compile(r"grpc/|cygrpc|_cython"),
    "protobuf": re.compile(r"google/protobuf|_pb2"),
    "asyncpg": re.compile(r"asyncpg/"),
    "redaction": re.compile(r"processors/redaction"),
    "other processors": re.compile(r"processors/(?!redaction)"),
    "logging": re.compile(r"/logging/|mesh/logs"),
    "tracing": re.compile(r"opentelemetry|mesh/tracing"),
    "asyncio loop": re.compile(r"asyncio/"),
}
_LINE = re.compile(r" \(([^)]*?):\d+\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("bench: --profile needs py-spy (pip install -e '.[bench]')")
    return found


def frame_name(frame: str) -> str:
    """'write (storage_svc/sinks/postgres.py:212)' -> 'write (storage_svc/sinks/postgres.py)'."""
    return _LINE.sub(lambda m: f" ({_short(m[1])})", frame)


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.replace(str(Path(__file__).resolve().parents[1]) + "/", "")


OURS = re.compile(r"\((mesh|ingest_svc|pipeline_svc|storage_svc|edge_agent)/")


def summarise(raw: str, top: int = 12) -> dict[str, Any]:
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frame_name(frames[-1])] += count
        under.update({name: count for name in {frame_name(f) for f in frames} if OURS.search(name)})
        for area, pattern in AREAS.items():
            if pattern.search(frames[-1]):
                areas[area] += count
                break
    share = {name: round(100 * n / total, 1) for name, n in own.most_common(top)} if total else {}
    by_area = {name: round(100 * n / total, 1) for name, n in areas.most_common()} if total else {}
    inclusive = (
        {name: round(100 * n / total, 1) for name, n in under.most_common(2 * top)} if total else {}
    )
    return {
        "samples": total,
        "self_percent": share,
        "inclusive_percent": inclusive,
        "area_percent": by_area,
    }


def record_command(binary: str, pid: int, seconds: float, output: Path) -> list[str]:
    options = {"--pid": pid, "--rate": 100, "--format": "raw", "--duration": int(seconds)}
    flat = [str(part) for pair in options.items() for part in pair]
    return [binary, "record", *flat, "--nonblocking", "--output", str(output)]


class Recorder:
    def __init__(self, targets: dict[str, int], out: Path, seconds: float) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.files = {role: out / f"{role}.txt" for role in targets}
        binary = py_spy()
        self.processes = [
            subprocess.Popen(
                record_command(binary, pid, seconds, self.files[role]),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for role, pid in targets.items()
        ]

    def finish(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # py-spy writes what it has, then exits
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@contextlib.asynccontextmanager
async def recording(targets: dict[str, int], out: Path, seconds: float) -> AsyncIterator[Recorder]:
    recorder = Recorder(targets, out, seconds)
    try:
        yield recorder
    finally:
        recorder.finish()


def summaries(out: Path, targets: dict[str, int]) -> dict[str, Any]:
    files = {role: out / f"{role}.txt" for role in targets}
    return {
        role: summarise(path.read_text()) if path.exists() else {"samples": 0}
        for role, path in files.items()
    }
