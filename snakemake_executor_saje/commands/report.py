"""`saje report [RUN]`: the HTML report of a run, from what the run recorded (report.py).

Runs are the folders of `.snakemake/saje_logs/` that hold a `records.json` (one per Snakemake run
with SAJE, named by its run id); without RUN, the latest one. Works offline and after the run's
Batch jobs and pools are gone: nothing here calls Azure.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_NOT_FOUND, EXIT_OK, CliError, Context

DEFAULT_DIR = Path(".snakemake") / "saje_logs"


def runs(base: Path) -> list[Path]:
    """Run folders under `base`, oldest first (by when their records were last written)."""
    from ..runrecord import RECORDS_FILE

    found = [p.parent for p in base.glob(f"*/{RECORDS_FILE}")]
    return sorted(found, key=lambda p: ((p / RECORDS_FILE).stat().st_mtime, p.name))


def report(ctx: Context) -> int:
    from .. import report as html_report
    from ..runrecord import SUMMARY_FILE

    base = ctx.args.dir
    known = runs(base)
    if ctx.args.run:
        directory = base / ctx.args.run
        if directory not in known:
            names = ", ".join(p.name for p in known[-5:]) or "none"
            raise CliError(f"No run {ctx.args.run} under {base} (runs there, latest last: {names}).",
                           EXIT_NOT_FOUND, "RunNotFound")
    elif known:
        directory = known[-1]
    else:
        raise CliError(f"No SAJE run recorded under {base}: run Snakemake with --executor saje from this folder"
                       " first, or give --dir.", EXIT_NOT_FOUND, "RunNotFound")
    path = html_report.write(directory)
    ctx.out.emit({"run": directory.name, "report": str(path), "summary": str(directory / SUMMARY_FILE)})
    ctx.out.print(f"Report of run {directory.name}: {path}")
    return EXIT_OK


def register(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("report", parents=parents,
                            help="an HTML report of a run: task timeline per node, nodes over time, cost, rules")
    p.add_argument("run", metavar="RUN", nargs="?", help="the run id (default: the latest run)")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                   help=f"where runs are recorded (default {DEFAULT_DIR}, in the workflow's folder)")
    p.set_defaults(func=report)
