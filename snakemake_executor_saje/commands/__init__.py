"""The `saje` command groups, one module each; cli.py only parses and dispatches.

Extension point: a new group (e.g. ``deploy``, ``teardown``, ``image``) is a module here with

    def register(commands, parents):   # commands: the top-level subparsers;
        p = commands.add_parser("image", parents=parents, help=...)   # parents: global options
        ...
        p.set_defaults(func=create)     # func(ctx: common.Context) -> int exit code

and its name added to ``GROUPS``. A command function gets a ``common.Context``: ``ctx.args``
(parsed arguments, global options included), ``ctx.out`` (rich tables, messages on stderr,
``emit`` for the --json document) and ``ctx.client`` (a BatchClient made on first use from
the same credential resolution as the executor). It returns an exit code or raises
``common.CliError(message, exit_code, code)``; Azure SDK errors and credential errors are
turned into exit codes by ``common.run_command`` (see common.py for the codes). Commands that
take raw arguments instead of a Context (the emulator's) set ``raw=True`` in set_defaults.
"""
from __future__ import annotations

import importlib

# Order is the order of `saje --help`.
GROUPS = ("deploy", "image", "app", "pool", "job", "status", "report", "cleanup", "emulator")


def register_all(commands, parents) -> None:
    for name in GROUPS:
        importlib.import_module(f"{__name__}.{name}").register(commands, parents)
