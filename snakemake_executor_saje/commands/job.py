"""`saje job list|status|logs|delete`: Batch jobs, their task counts, failed tasks and logs."""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from ..runs import metadata_dict
from .common import (EXIT_CONFIG, EXIT_FAILED, EXIT_OK, CliError, Context, batch_settings, confirm,
                     deletion_options, wait_gone)
from .output import fmt_counts, state_name

DEFAULT_LOG_FILES = ("stdout.txt", "stderr.txt")
TASK_COUNT_KEYS = ("active", "running", "completed", "succeeded", "failed")


# ----------------------------------------------------------------------------- pure parts
def task_counts(result: Any) -> dict[str, int]:
    """{active, running, completed, succeeded, failed} from get_job_task_counts."""
    counts = getattr(result, "task_counts", result)
    return {key: int(getattr(counts, key, 0) or 0) for key in TASK_COUNT_KEYS}


def job_summary(job: Any, counts: dict[str, int] | None) -> dict[str, Any]:
    pool_info = job.pool_info
    return {
        "id": job.id,
        "pool": pool_info.pool_id if pool_info else None,
        "state": state_name(job.state),
        "created": job.creation_time,
        "taskCounts": counts,
        "metadata": metadata_dict(job.metadata),  # saje-run, saje-workdir, saje-heartbeat, ... (runs.py)
    }


JOB_COLUMNS = ("id", "pool", "state", "active", "running", "succeeded", "failed", "created")


def job_row(summary: dict[str, Any]) -> list[Any]:
    counts = summary["taskCounts"] or {}
    return [summary["id"], summary["pool"], summary["state"],
            *(counts.get(k) for k in ("active", "running", "succeeded", "failed")), summary["created"]]


def failed_task(task: Any) -> dict[str, Any] | None:
    """The failure of a completed task (exit code, Batch failure code and message), or None."""
    from ..batch import outcome_of

    if state_name(task.state) != "completed":
        return None
    outcome = outcome_of(task)
    if outcome.succeeded:
        return None
    return {
        "id": outcome.task_id,
        "exitCode": outcome.exit_code,
        "failureCode": outcome.failure_code,
        "failureMessage": (outcome.failure_message or "").splitlines()[0] if outcome.failure_message else None,
        "node": outcome.node_id,
        "pool": outcome.pool_id,
    }


TASK_STATES = ("active", "preparing", "running", "completed", "succeeded", "failed")
TASK_FIELDS = ["id", "state", "nodeInfo", "executionInfo"]


def task_view(task: Any, now: dt.datetime) -> dict[str, Any]:
    """One task as `job tasks` shows it: a completed task's state is succeeded or failed; the
    duration runs from its start to its end (to `now` while it runs)."""
    from ..batch import outcome_of

    state = state_name(task.state)
    info = task.execution_info
    outcome = outcome_of(task)
    if state == "completed":
        state = "succeeded" if outcome.succeeded else "failed"
    start, end = (info.start_time, info.end_time) if info else (None, None)
    return {
        "id": task.id, "state": state, "node": outcome.node_id, "pool": outcome.pool_id,
        "exitCode": outcome.exit_code, "failureCode": outcome.failure_code,
        "startTime": start, "endTime": end,
        "durationSeconds": round(((end or now) - start).total_seconds(), 3) if start else None,
        "retries": int(info.retry_count or 0) if info else 0, "requeues": int(info.requeue_count or 0) if info else 0,
    }


def fmt_duration(value: float | None) -> str:
    """'42 s', '3 min 05 s', '2 h 01 min'; '-' for none."""
    if value is None:
        return "-"
    s = int(round(value))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def log_dir(base: Path, job_id: str, task_id: str) -> Path:
    """Where `job logs` puts one task's files: BASE/<job>/<task>/."""
    return base / job_id / task_id


# ----------------------------------------------------------------------------- commands
def _failed_tasks(ctx: Context, job_id: str) -> list[dict[str, Any]]:
    tasks = ctx.client.list_tasks(job_id, filter="state eq 'completed'",
                                  select=["id", "state", "executionInfo", "nodeInfo"])
    return [f for f in (failed_task(t) for t in tasks) if f]


def list_(ctx: Context) -> int:
    summaries = []
    for job in ctx.client.list_jobs():
        counts = task_counts(ctx.client.get_job_task_counts(job.id))
        summaries.append(job_summary(job, counts))
    ctx.out.emit({"jobs": summaries})
    ctx.out.table("Jobs", JOB_COLUMNS, [job_row(s) for s in summaries])
    return EXIT_OK


def status(ctx: Context) -> int:
    job_id = ctx.args.job_id
    job = ctx.client.get_job(job_id)
    summary = job_summary(job, task_counts(ctx.client.get_job_task_counts(job_id)))
    failed = _failed_tasks(ctx, job_id)
    ctx.out.emit({"job": summary, "failedTasks": failed})
    ctx.out.table(None, JOB_COLUMNS, [job_row(summary)])
    ctx.out.table("Failed tasks", ("task", "exit code", "failure code", "message", "node"),
                  [(f["id"], f["exitCode"], f["failureCode"], f["failureMessage"], f["node"]) for f in failed])
    if failed:
        ctx.out.print(f"Logs of the failed tasks: saje job logs {job_id}")
    return EXIT_OK


class _LogCopies:
    """The run's staging container, where SAJE's tasks also upload stdout.txt/stderr.txt when they
    complete (`staging.Staging.log_files`): the copy that outlives the node autoscale removed."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.stagings: dict[str, Any] = {}

    def fetch(self, job_id: str, task_id: str, name: str, path: Path) -> str | None:
        """Download the copy of `name` to `path`; the blob it came from, or None."""
        from ..staging import Staging, log_copy_of

        copy = log_copy_of(self.ctx.client.get_task(job_id, task_id, select=["id", "outputFiles"]))
        if copy is None or not copy.holds(name):
            return None
        staging = self.stagings.get(copy.container_url)
        if staging is None:
            staging = self.stagings[copy.container_url] = Staging.attach(copy.container_url, self._credential)
        try:
            found = staging.download_blob(copy.blob(name), path)
        except Exception as exc:  # no rights on the account, account gone: say so, keep going
            self.ctx.out.info(f"{task_id}: the run's staging container {copy.container} cannot be read: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            return None
        return f"{copy.container}/{copy.blob(name)}" if found else None

    def _credential(self) -> Any:
        from ..credentials import CredentialsError, resolve_storage_credential

        try:
            return resolve_storage_credential(batch_settings(self.ctx.args))
        except CredentialsError as exc:
            raise CliError(str(exc), EXIT_CONFIG, "CredentialsError") from None


def tasks(ctx: Context) -> int:
    """Every task of a job (or those in one --state) with its node, exit code and duration: one
    paged list call, filtered by Batch where the state is Batch's own."""
    from ..batch import ServiceDate

    job_id, wanted = ctx.args.job_id, ctx.args.state
    date = ServiceDate()
    # A missing job is exit 3, not an empty list. Its Date header is the service's time: running
    # tasks' durations are measured on the service's clock, which need not be this machine's.
    ctx.client.get_job(job_id, select=["id"], raw_response_hook=date)
    server_state = "completed" if wanted in ("succeeded", "failed") else wanted
    found = ctx.client.list_tasks(job_id, select=TASK_FIELDS,
                                  filter=f"state eq '{server_state}'" if server_state else None)
    now = date.value or dt.datetime.now(dt.timezone.utc)
    views = [v for v in (task_view(t, now) for t in found) if wanted in (None, "completed") or v["state"] == wanted]
    ctx.out.emit({"job": job_id, "state": wanted, "tasks": views})
    ctx.out.table(f"Tasks of job {job_id}" + (f" ({wanted})" if wanted else ""),
                  ("task", "state", "node", "exit code", "duration", "retries", "failure code"),
                  [(v["id"], v["state"], v["node"], v["exitCode"], fmt_duration(v["durationSeconds"]),
                    v["retries"] or None, v["failureCode"]) for v in views])
    by_state: dict[str, int] = {}
    for v in views:
        by_state[v["state"]] = by_state.get(v["state"], 0) + 1
    ctx.out.print(f"{len(views)} task(s)" + (f": {fmt_counts(by_state)}" if by_state else ""))
    if by_state.get("failed"):
        ctx.out.print(f"Logs of the failed tasks: saje job logs {job_id}")
    return EXIT_OK


def logs(ctx: Context) -> int:
    from ..batch import BatchGateway

    args = ctx.args
    job_id = args.job_id
    ctx.client.get_job(job_id, select=["id"])  # a missing job is exit 3, not "no failed tasks"
    if args.task_ids:
        task_ids = list(args.task_ids)
        for task_id in task_ids:
            ctx.client.get_task(job_id, task_id, select=["id"])  # exit 3 names the missing task
    elif args.all:
        task_ids = [t.id for t in ctx.client.list_tasks(job_id, select=["id"])]
    else:
        task_ids = [f["id"] for f in _failed_tasks(ctx, job_id)]
    gateway, copies = BatchGateway(ctx.client), _LogCopies(ctx)
    names = list(dict.fromkeys(args.file or DEFAULT_LOG_FILES))
    downloaded: list[dict[str, Any]] = []
    for task_id in task_ids:
        target = log_dir(args.dir, job_id, task_id)
        got, missing, sources = [], [], {}
        for name in names:
            path = target / name
            if gateway.download_task_file(job_id, task_id, name, path):
                sources[name] = "node"
            elif blob := copies.fetch(job_id, task_id, name, path):
                sources[name] = f"staging:{blob}"
                ctx.out.info(f"{task_id}: {name} from the run's staging container ({blob}): "
                             "the task's node is gone or has not kept the file")
            else:
                missing.append(name)
                ctx.out.info(f"{task_id}: no {name} (the task has not run, or its node is gone and the run's "
                             "staging container has no copy)")
                continue
            got.append(str(path))
        downloaded.append({"task": task_id, "directory": str(target), "files": got, "missing": missing,
                           "sources": sources})
    ctx.out.emit({"job": job_id, "tasks": downloaded})
    if not task_ids:
        ctx.out.print(f"Job {job_id} has no failed tasks; name tasks or pass --all to fetch others.")
        return EXIT_OK
    ctx.out.table(f"Logs of job {job_id}", ("task", "directory", "files", "from", "missing"),
                  [(d["task"], d["directory"], len(d["files"]), _sources(d["sources"]), ", ".join(d["missing"]))
                   for d in downloaded])
    if not any(d["files"] for d in downloaded):
        raise CliError(f"No log file of job {job_id} could be downloaded.", EXIT_FAILED, "NoLogs")
    return EXIT_OK


def _sources(sources: dict[str, str]) -> str:
    """'node', 'staging container', or both, for the table."""
    kinds = {"node" if where == "node" else "staging container" for where in sources.values()}
    return ", ".join(sorted(kinds))


def delete(ctx: Context) -> int:
    args = ctx.args
    job_id = args.job_id
    counts = task_counts(ctx.client.get_job_task_counts(job_id))  # not found: exit 3 first
    confirm(ctx, f"Delete job {job_id} and its {sum(counts[k] for k in ('active', 'running', 'completed'))}"
                 " task(s)? Running tasks are stopped.")
    ctx.client.begin_delete_job(job_id, polling_interval=max(1, int(args.poll_interval)))
    ctx.out.info(f"Deleting job {job_id}.")
    if args.wait:
        wait_gone(ctx, f"job {job_id}", lambda: ctx.client.get_job(job_id, select=["id"]))
    ctx.out.emit({"deleted": job_id, "waited": bool(args.wait)})
    return EXIT_OK


# ----------------------------------------------------------------------------- parser
def register(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    group = commands.add_parser("job", help="list jobs, show failed tasks, fetch logs, delete jobs",
                                parents=parents)
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("list", parents=parents, help="jobs with their task counts")
    p.set_defaults(func=list_)

    p = actions.add_parser("status", parents=parents,
                           help="a job's task counts and its failed tasks (exit code, failure code)")
    p.add_argument("job_id", metavar="JOB")
    p.set_defaults(func=status)

    p = actions.add_parser("tasks", parents=parents,
                           help="a job's tasks: state, node, exit code, duration (like squeue/sacct for a job)")
    p.add_argument("job_id", metavar="JOB")
    p.add_argument("--state", choices=TASK_STATES, default=None,
                   help="only tasks in this state (succeeded and failed are completed tasks by outcome)")
    p.set_defaults(func=tasks)

    p = actions.add_parser("logs", parents=parents,
                           help="download stdout.txt/stderr.txt of the failed (or named) tasks, from their"
                                " node or, once the node is gone, from the run's staging container")
    p.add_argument("job_id", metavar="JOB")
    p.add_argument("task_ids", metavar="TASK", nargs="*", help="tasks to fetch (default: every failed task)")
    p.add_argument("--all", action="store_true", help="every task of the job, not only failed ones")
    p.add_argument("--dir", type=Path, default=Path("saje-logs"),
                   help="base directory; files go to DIR/<job>/<task>/ (default ./saje-logs)")
    p.add_argument("--file", action="append", metavar="NAME",
                   help="task file to fetch instead of stdout.txt and stderr.txt (repeatable)")
    p.set_defaults(func=logs)

    p = actions.add_parser("delete", parents=parents, help="delete a job and its tasks (asks first unless --yes)")
    p.add_argument("job_id", metavar="JOB")
    deletion_options(p, "the job is gone")
    p.set_defaults(func=delete)


__all__ = ["register", "task_counts", "job_summary", "job_row", "failed_task", "log_dir", "task_view", "fmt_duration"]
