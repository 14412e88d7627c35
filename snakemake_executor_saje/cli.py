"""The `saje` command: argument parsing and dispatch only; each group lives in commands/.

    saje pool create|list|resize|delete     Batch pools (commands/pool.py)
    saje job list|status|tasks|logs|delete  Batch jobs, their tasks, failed tasks, logs (commands/job.py)
    saje status [--watch]                   pools, nodes, jobs, hourly cost (commands/status.py)
    saje report [RUN]                       HTML report of a run: timeline, nodes, cost (commands/report.py)
    saje emulator start|run|status|stop     the local Batch emulator (commands/emulator.py)
    saje deploy|teardown                    the Azure resources SAJE needs (commands/deploy.py)
    saje image create|test                  RDMA/MPI node images (commands/image.py)
    saje app upload|list                    Batch application packages (commands/app.py)

Global options (--profile, --account-url, --credentials-file, --json) go before or after the
command words. Exit codes: 0 ok, 1 failed at Azure, 2 usage, 3 not found, 4 credentials or
configuration (commands/common.py, docs/cli.md).
"""
from __future__ import annotations

import argparse
import sys

from .commands import common, register_all
from .commands.common import EXIT_CONFIG, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE  # noqa: F401
from .commands.emulator import client_environment  # noqa: F401  (tests and scripts import it from here)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saje", description="SAJE: Snakemake on Azure Batch, and its local emulator.",
        epilog="Exit codes: 0 ok, 1 failed at Azure Batch, 2 usage error, 3 not found,"
               " 4 credentials or configuration problem.")
    common.global_options(parser)
    parser.add_argument("--version", action="version", version=common.version_text())
    sub_globals = argparse.ArgumentParser(add_help=False)
    common.global_options(sub_globals, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_all(commands, [sub_globals])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "raw", False):
        return int(args.func(args) or 0)
    return common.run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
