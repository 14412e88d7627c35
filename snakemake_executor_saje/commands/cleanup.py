"""`saje cleanup`: delete what runs whose Snakemake is gone left behind (pools, jobs, containers).

A Snakemake killed with `kill -9` (or a lost machine, a closed laptop) cannot delete its pools,
Batch jobs and staging container, and its nodes keep costing. Everything a run creates carries
its tag (runs.py): this command lists the tagged runs, judges each alive or gone (its Snakemake
process gone on this machine, or no heartbeat for --older-than / three heartbeat intervals), and
shows what it would delete and why. Nothing is deleted without --yes. A run that is alive is never
touched; neither is anything without a run tag (pools from --saje-pool-id or `saje pool create`).

Staging containers are looked for when a blob account is known: AZURE_STORAGE_CONNECTION_STRING,
or --storage-account-url (default $SNAKEMAKE_SAJE_STORAGE_ACCOUNT_URL) with an Entra credential.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from .common import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError, Context

COLUMNS = ("run", "host", "user", "workflow directory", "started", "why", "deletes")


def _blob_service(ctx: Context):
    from ..staging import blob_service

    url = ctx.args.storage_account_url or os.environ.get("SNAKEMAKE_SAJE_STORAGE_ACCOUNT_URL")
    found = blob_service(url)
    return found[0] if found else None


def _older_than(text: str):
    from ..runs import parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        raise CliError(f"--older-than {text!r} is not a duration such as 90s, 15m, 2h or 1d.",
                       EXIT_USAGE, "UsageError") from None


def _row(summary: dict[str, Any]) -> list[Any]:
    deletes = [f"{len(summary[k])} {k}" for k in ("jobs", "pools", "containers") if summary[k]]
    return [summary["run"], summary["host"], summary["user"], summary["workdir"], summary["started"][:19],
            summary["reason"], ", ".join(deletes) or "-"]


def cleanup(ctx: Context) -> int:
    from .. import leftovers

    args = ctx.args
    limit = _older_than(args.older_than)
    service = _blob_service(ctx)
    found = leftovers.find(ctx.client, service)
    if args.run:
        found = [r for r in found if r.tag.run_id == args.run]
        if not found:
            raise CliError(f"No pool, job or container of run {args.run} was found.", EXIT_NOT_FOUND, "RunNotFound")
    judged = leftovers.judged(found, older_than=limit)
    gone = [(run, verdict) for run, verdict in judged if verdict.gone]
    alive = [(run, verdict) for run, verdict in judged if not verdict.gone]
    deleted, failures = [], []
    if args.yes:
        for run, _ in gone:
            done = leftovers.delete(run, ctx.client, service,
                                    on_error=lambda r, e: failures.append(f"{r.kind} {r.id}: {e}"))
            deleted.extend({"run": run.tag.run_id, "kind": r.kind, "id": r.id} for r in done)
    ctx.out.emit({
        "dryRun": not args.yes, "containersChecked": service is not None,
        "gone": [run.summary(verdict) for run, verdict in gone],
        "alive": [run.summary(verdict) for run, verdict in alive],
        "deleted": deleted, "errors": failures,
    })
    title = "Deleted" if args.yes else "Would delete (dry run: add --yes to delete)"
    ctx.out.table(f"{title}: runs whose Snakemake is gone", COLUMNS,
                  [_row(run.summary(verdict)) for run, verdict in gone])
    for run, verdict in gone:
        for resource in run.resources:
            ctx.out.print(f"  {run.tag.run_id}: {resource.kind} {resource.id}")
    if alive:
        ctx.out.table("Left alone: runs that are alive", COLUMNS, [_row(run.summary(verdict)) for run, verdict in alive])
    if service is None:
        ctx.out.info("Staging containers were not checked: no blob account (set AZURE_STORAGE_CONNECTION_STRING "
                     "or --storage-account-url).")
    for failure in failures:
        ctx.out.info(f"could not delete {failure}")
    if failures:
        raise CliError(f"{len(failures)} deletion(s) failed; the others were done.", EXIT_FAILED, "DeleteFailed")
    if not gone:
        ctx.out.info("Nothing to clean up.")
    elif args.yes:
        ctx.out.info(f"Deleting {len(deleted)} resource(s) of {len(gone)} run(s); Batch finishes pool and job "
                     "deletions in the background.")
    return EXIT_OK


def register(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "cleanup", parents=parents, help="delete pools, jobs and containers of runs whose Snakemake is gone",
        description="List (default) or delete (--yes) the pools, Batch jobs and staging containers of runs "
                    "whose Snakemake is gone: its process ended on this machine, or it wrote no heartbeat "
                    "for --older-than (and for three of its heartbeat intervals).")
    p.add_argument("--yes", "-y", action="store_true", help="delete; without it nothing is changed (dry run)")
    p.add_argument("--run", metavar="RUN_ID", help="only this run (the saje-run metadata value)")
    p.add_argument("--older-than", default="15m", metavar="DURATION",
                   help="a run on another machine is gone when its last heartbeat is older than this"
                        " (90s, 15m, 2h, 1d; default 15m)")
    p.add_argument("--storage-account-url", metavar="URL",
                   help="blob account of the staging containers (default $SNAKEMAKE_SAJE_STORAGE_ACCOUNT_URL;"
                        " AZURE_STORAGE_CONNECTION_STRING wins)")
    p.set_defaults(func=cleanup)
