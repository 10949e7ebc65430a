"""Long fuzz runs of the edge parsers and of ingest's request decoding.

    .venv/bin/python -m bench.fuzz [--examples 5000] [--atheris-seconds 60] [--targets ...]

Two engines over the same targets (tests/fuzz/fuzz_targets.py, whose contract is: nothing
raises, every input becomes events that ingest accepts or a counted error):
- Hypothesis with the structure-aware strategies of tests/fuzz/strategies.py;
- atheris (libFuzzer, coverage-guided) where it is installed: one child process per target,
  seeded with real syslog lines from shared/data and with inputs drawn from the strategies.
Prints how many inputs each target tried and what became of them; exits non-zero when a
target failed (atheris leaves the crashing input in the reported directory).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path[:0] = [str(ROOT / "tests" / "fuzz"), str(ROOT / "tests")]

TARGETS = ("syslog", "netflow", "nmea", "http_json", "ingest_request")
INSTRUMENTED = (
    "edge_agent.parsers.http_json",
    "edge_agent.parsers.json_path",
    "edge_agent.parsers.netflow",
    "edge_agent.parsers.nmea",
    "edge_agent.parsers.syslog",
    "ingest_svc.decoding",
    "ingest_svc.validation",
)
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def _hypothesis_plan() -> dict[str, tuple[Any, Callable[[Any], object]]]:
    import fuzz_targets
    import strategies

    def http(body: bytes) -> None:
        for mapping in fuzz_targets.HTTP_MAPPINGS:
            fuzz_targets.http_json(body, mapping)

    return {
        "syslog": (strategies.SYSLOG_LINES, fuzz_targets.syslog),
        "netflow": (strategies.NETFLOW_DATAGRAMS, fuzz_targets.netflow),
        "nmea": (strategies.NMEA_LINES, fuzz_targets.nmea),
        "http_json": (strategies.JSON_BODIES, http),
        "ingest_request": (strategies.INGEST_REQUESTS, fuzz_targets.ingest_request),
    }


def _fuzzer(strategy: Any, target: Callable[[Any], object], config: Any) -> Callable[[], None]:
    from hypothesis import given

    @config
    @given(strategy)
    def fuzz(value: Any) -> None:
        target(value)

    return fuzz  # type: ignore[no-any-return]


def run_hypothesis(targets: list[str], examples: int) -> bool:
    import fuzz_targets
    from hypothesis import HealthCheck, settings

    plan = _hypothesis_plan()
    ok = True
    for name in targets:
        strategy, target = plan[name]
        fuzz_targets.reset()
        started = time.monotonic()

        try:
            _fuzzer(strategy, target, settings(
                max_examples=examples, deadline=None, database=None,
                suppress_health_check=list(HealthCheck),
            ))()  # fmt: skip
        except Exception as error:
            ok = False
            print(f"hypothesis {name}: FAILED: {type(error).__name__}: {str(error)[:500]}")
        elapsed = time.monotonic() - started
        for line in fuzz_targets.summary():
            print(f"hypothesis {line} in {elapsed:.0f} s")
    return ok


# atheris ---------------------------------------------------------------------------------


def _seeds(name: str, count: int) -> list[bytes]:
    """Starting inputs: strategy draws (and real syslog lines) as bytes for each target."""
    strategy = _hypothesis_plan()[name][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # .example() is meant for interactive use
        drawn = [strategy.example() for _ in range(count)]
    seeds = []
    for value in drawn:
        if isinstance(value, list):  # netflow datagrams, NMEA lines
            seeds.extend(value if name == "netflow" else [b"".join(value)])
        else:
            seeds.append(value)
    if name == "syslog":
        for path in sorted(SHARED_DATA.glob("samples/**/*.log"))[:4]:
            seeds.extend(path.read_bytes().splitlines()[:50])
    return [seed[:65_536] for seed in seeds]


def run_atheris(targets: list[str], seconds: int, seeds: int) -> bool:
    if importlib.util.find_spec("atheris") is None:
        print("atheris: not installed here (its wheels are x86_64 Linux only): skipped")
        return True
    ok = True
    for name in targets:
        work = Path(tempfile.mkdtemp(prefix=f"edgebot-fuzz-{name}-"))
        corpus = work / "corpus"
        corpus.mkdir()
        for index, seed in enumerate(_seeds(name, seeds)):
            (corpus / f"seed-{index:04d}").write_bytes(seed)
        command = [
            sys.executable, "-m", "bench.fuzz", "--atheris-child", name, "--",
            f"-max_total_time={seconds}", f"-artifact_prefix={work}/", "-max_len=70000",
            "-rss_limit_mb=4096", str(corpus),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
        runs = _DONE.findall(done.stderr)
        if done.returncode != 0 or not runs:
            ok = False
            tail = "\n".join(done.stderr.splitlines()[-30:])
            print(f"atheris {name}: FAILED (exit {done.returncode}); inputs in {work}\n{tail}")
            continue
        count, elapsed = runs[-1]
        corpus_size = len(list(corpus.iterdir()))
        print(f"atheris {name}: {count} inputs in {elapsed} s (corpus {corpus_size} inputs)")
        shutil.rmtree(work)
    return ok


def atheris_child(name: str, libfuzzer_args: list[str]) -> None:
    """Runs inside the child process: instrument the parsers, then fuzz one target."""
    import atheris

    # Only our parsers are instrumented: pydantic, protobuf & co. would slow every run.
    with atheris.instrument_imports(include=["edge_agent.parsers", "ingest_svc"]):
        for module in INSTRUMENTED:
            importlib.import_module(module)
    import fuzz_targets

    def one_input(data: bytes) -> None:
        if name == "syslog":
            fuzz_targets.syslog(data)
        elif name == "netflow":
            fuzz_targets.netflow([data])
        elif name == "nmea":
            fuzz_targets.nmea(data.split(b"\n"))
        elif name == "http_json":
            for mapping in fuzz_targets.HTTP_MAPPINGS:
                fuzz_targets.http_json(data, mapping)
        else:
            fuzz_targets.ingest_request(data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--examples", type=int, default=5000, help="Hypothesis inputs per target")
    parser.add_argument("--atheris-seconds", type=int, default=60, help="0 skips atheris")
    parser.add_argument("--seeds", type=int, default=40, help="strategy draws seeding atheris")
    parser.add_argument("--atheris-child", choices=TARGETS, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.atheris_child:
        atheris_child(args.atheris_child, [a for a in rest if a != "--"])
        return 0
    os.environ.setdefault("PYTHONHASHSEED", "0")
    ok = run_hypothesis(args.targets, args.examples)
    if args.atheris_seconds:
        ok = run_atheris(args.targets, args.atheris_seconds, args.seeds) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
