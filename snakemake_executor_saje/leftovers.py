"""What runs left on the account: their pools, Batch jobs and staging containers, found by their
tags (runs.py), judged alive or gone, and deleted. `saje cleanup`, `saje status` and a rerun of
a workflow directory whose last Snakemake died all go through here.

Only what carries a run tag is ever touched: pools SAJE created for a run (never a pool given
with --saje-pool-id or made with `saje pool create`), the run's Batch jobs, its staging container.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from .runs import RunTag, Verdict, judge, metadata_dict

JOB, POOL, CONTAINER = "job", "pool", "container"
ORDER = {JOB: 0, POOL: 1, CONTAINER: 2}  # jobs first: deleting one ends its tasks


@dataclass(frozen=True)
class Resource:
    kind: str  # job, pool or container
    id: str
    state: str | None = None


@dataclass
class RunLeftovers:
    """One run's tagged resources; `tag` is the one with the latest heartbeat among them."""

    tag: RunTag
    resources: list[Resource] = field(default_factory=list)

    def add(self, tag: RunTag, resource: Resource) -> None:
        if tag.heartbeat > self.tag.heartbeat:
            self.tag = tag
        self.resources.append(resource)
        self.resources.sort(key=lambda r: (ORDER[r.kind], r.id))

    def of(self, kind: str) -> list[Resource]:
        return [r for r in self.resources if r.kind == kind]

    def summary(self, verdict: Verdict | None = None) -> dict[str, Any]:
        tag = self.tag
        out = {"run": tag.run_id, "host": tag.host, "user": tag.user, "pid": tag.pid, "workdir": tag.workdir,
               "started": tag.started.isoformat(), "heartbeat": tag.heartbeat.isoformat(),
               "pools": [r.id for r in self.of(POOL)], "jobs": [r.id for r in self.of(JOB)],
               "containers": [r.id for r in self.of(CONTAINER)]}
        if verdict is not None:
            out.update(gone=verdict.gone, reason=verdict.reason)
        return out


def _state(value: Any) -> str | None:
    return str(getattr(value, "value", value)).lower() if value is not None else None


def group(items: Iterable[tuple[RunTag | None, Resource]]) -> list[RunLeftovers]:
    """Tagged resources by run, oldest run first (pure: the listing is the caller's)."""
    runs: dict[str, RunLeftovers] = {}
    for tag, resource in items:
        if tag is None:
            continue
        if tag.run_id not in runs:
            runs[tag.run_id] = RunLeftovers(tag)
        runs[tag.run_id].add(tag, resource)
    return sorted(runs.values(), key=lambda r: r.tag.started)


def find(client, blob_service=None) -> list[RunLeftovers]:
    """Every tagged run on the Batch account (and in the blob account, when one is given)."""
    items: list[tuple[RunTag | None, Resource]] = []
    for job in client.list_jobs(select=["id", "state", "metadata"]):
        items.append((RunTag.from_metadata(metadata_dict(job.metadata)), Resource(JOB, job.id, _state(job.state))))
    for pool in client.list_pools(select=["id", "state", "metadata"]):
        items.append((RunTag.from_metadata(metadata_dict(pool.metadata)), Resource(POOL, pool.id, _state(pool.state))))
    if blob_service is not None:
        for container in blob_service.list_containers(include_metadata=True):
            items.append((RunTag.from_metadata(container.metadata), Resource(CONTAINER, container.name)))
    return group(items)


def judged(runs: Iterable[RunLeftovers], **options: Any) -> list[tuple[RunLeftovers, Verdict]]:
    return [(run, judge(run.tag, **options)) for run in runs]


def delete(run: RunLeftovers, client, blob_service=None,
           on_error: Callable[[Resource, Exception], None] | None = None) -> list[Resource]:
    """Delete the run's jobs (their running tasks end), pools and containers; what was deleted.
    Deletions are started, not waited for (Batch finishes them in the background); one that
    fails is passed to `on_error` and the others still go."""
    deleted = []
    for resource in run.resources:
        try:
            if resource.kind == JOB:
                client.begin_delete_job(resource.id)
            elif resource.kind == POOL:
                client.begin_delete_pool(resource.id)
            elif blob_service is not None:
                blob_service.delete_container(resource.id)
            else:
                continue
        except ResourceNotFoundError:
            pass
        except HttpResponseError as exc:
            if on_error is not None:
                on_error(resource, exc)
            continue
        deleted.append(resource)
    return deleted


def terminate(run: RunLeftovers, batch) -> dict[str, str]:
    """Terminate the run's unfinished jobs through `batch` (a BatchGateway): Batch ends their running
    tasks, and the call waits until they have ended. {job id: what went wrong} for the others."""
    unfinished = [r.id for r in run.of(JOB) if r.state not in ("completed", "deleting")]
    return batch.terminate_jobs(unfinished, "SAJE: the Snakemake of this run is gone; a rerun took over")


def take_over(tag: RunTag, batch, blob_service=None, *, warn: Callable[[str], None]) -> None:
    """What a run does before its first task goes out: a run of the same workflow directory whose
    Snakemake is gone (killed, then `snakemake --unlock`) may still have tasks running that write
    the outputs this run is about to make. Terminate its jobs and wait until their tasks have
    ended, then delete what it left; say so through `warn`. A run that is alive is left alone,
    with a warning. Reattaching instead would need that run's tasks to be this run's jobs, which
    they are not (other job ids, another staging container, outputs this run would never see)."""
    try:
        found = find(batch.client, blob_service)
    except Exception as exc:  # noqa: BLE001 - a listing problem must not stop the run
        warn(f"could not look for earlier runs of this workflow directory: {exc}")
        return
    same = [run for run in found if run.tag.workdir == tag.workdir and run.tag.run_id != tag.run_id]
    for run, verdict in judged(same):
        other = run.tag
        what = f"run {other.run_id} of this workflow directory (started {other.started:%Y-%m-%d %H:%M:%S} UTC on {other.host})"
        if not verdict.gone:
            warn(f"{what} looks alive ({verdict.reason}); its tasks are left alone. Two runs writing the same "
                 "outputs is unsafe: stop one of them.")
            continue
        try:
            unfinished = terminate(run, batch)
        except Exception as exc:  # noqa: BLE001
            warn(f"{what} was left by a Snakemake that is gone ({verdict.reason}), and its jobs could not be "
                 f"terminated ({exc}); its tasks may still be running: saje cleanup --run {other.run_id} --yes")
            continue
        deleted = delete(run, batch.client, blob_service,
                         on_error=lambda r, e: warn(f"could not delete {r.kind} {r.id} of run {other.run_id}: {e}"))
        warn(f"{what} was left by a Snakemake that is gone ({verdict.reason}). Its tasks were terminated so that "
             "none of them can write an output this run makes again"
             + (f" (not confirmed for {', '.join(f'{j}: {why}' for j, why in unfinished.items())})" if unfinished
                else "")
             + f"; deleted: {', '.join(f'{r.kind} {r.id}' for r in deleted) or 'nothing'}.")
