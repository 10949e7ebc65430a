"""EdgeBot benchmark: the limit, EdgeBot end to end, the edge agent, rsyslog, scale-out.

    .venv/bin/python -m bench [--parts limit e2e agent rsyslog scaleout] [--events N] ...
    make bench BENCH_ARGS='--events 20000 --seconds 5'      # a short validation run

Prints a table, writes bench/results/<stamp>.json and bench/results/<stamp>.png (and
latest.json / latest.png). Everything runs on this machine; one throwaway PostgreSQL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import sys
from pathlib import Path

from bench import report, suite

PARTS = ("limit", "e2e", "agent", "rsyslog", "scaleout")
RESULTS = Path(__file__).resolve().parent / "results"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    add = p.add_argument
    add("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run")
    add("--events", type=int, default=200_000, help="sustained run: events spooled, then shipped")
    add("--rates", type=int, nargs="+", default=[1000, 5000, 10_000], help="offered events/s")
    add("--seconds", type=float, default=20.0, help="seconds per offered rate")
    add("--agents", type=int, default=4, help="simulated agents in the end-to-end runs")
    add("--fleet-procs", type=int, default=2, help="processes the simulated agents run in")
    add("--batch-max-events", type=int, default=500, help="shipper.batch_max_events")
    add("--batch-max-wait-s", type=float, default=0.02, help="shipper.batch_max_wait_s")
    add("--send-when-idle", action=argparse.BooleanOptionalAction, default=True,
        help="shipper.send_when_idle (the 200-agent run keeps the default, off)")  # fmt: skip
    add("--adaptive-max-events", type=int, default=5000, help="shipper.adaptive_max_events")
    add("--limit-events", type=int, default=100_000, help="rows per raw COPY configuration")
    add("--limit-batches", type=int, nargs="+", default=[1000, 5000], help="COPY batch sizes")
    add("--limit-writers", type=int, nargs="+", default=[1, 2], help="COPY connections")
    add("--rounds", type=int, default=2, help="raw COPY: best of this many rounds")
    add("--rsyslog-events", type=int, default=100_000, help="lines sent to rsyslog per config")
    add("--rsyslog-workers", type=int, nargs="+", default=[1, 4], help="ompgsql worker threads")
    add("--agent-lines", type=int, default=100_000, help="lines sent to the real edge agent")
    add("--idle-seconds", type=float, default=5.0, help="edge agent idle time before its RSS")
    add("--scale-events", type=int, default=50_000, help="2 ingest + 2 pipeline: events counted")
    add("--scale-agents", type=int, default=200, help="agents of the many-streams run")
    add("--scale-rate", type=float, default=2000.0, help="many-streams run: total events/s")
    add("--scale-seconds", type=float, default=60.0, help="many-streams run: seconds")
    add("--scale-batch-wait-s", type=float, default=1.0,
        help="many-streams run: shipper.batch_max_wait_s (the agent default)")  # fmt: skip
    add("--pg-fsync", action=argparse.BooleanOptionalAction, default=True,
        help="PostgreSQL with fsync and full_page_writes (durable commits)")  # fmt: skip
    add("--profile", action="store_true", help="py-spy every service in an extra sustained run")
    add("--profile-seconds", type=float, default=30.0, help="longest py-spy recording")
    add("--profile-rate", type=float, default=None,
        help="profile a run at this offered rate (for --seconds), not a backlog")  # fmt: skip
    add("--set", action="append", default=[], metavar="SERVICE.SECTION.KEY=VALUE",
        help="override a mothership setting, e.g. ingest.ingest.max_pipeline_calls=1")  # fmt: skip
    add("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add("--out", type=Path, default=RESULTS, help="where the JSON, PNG and profiles go")
    add("--keep", action="store_true", help="keep the temp dir (configs, logs, spools)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    machine = report.machine()
    header = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    stamp = started.strftime("%Y%m%d-%H%M%S")
    json_path, png_path = args.out / f"{stamp}.json", args.out / f"{stamp}.png"
    # Written after every part, so a long run that fails late keeps what it measured.
    results = suite.execute(args, lambda partial: report.write_json(header | partial, json_path))
    results |= header
    report.print_table(results)
    report.write_json(results, json_path)
    shutil.copyfile(json_path, args.out / "latest.json")
    if report.draw_chart(results, png_path):
        shutil.copyfile(png_path, args.out / "latest.png")
        print(f"\nwrote {json_path} and {png_path}")
    else:
        print(f"\nwrote {json_path} (no chart: pip install -e '.[bench]' for matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
