"""The one I/O edge to the Batch service: bulk create, one filtered list per poll, logs, cleanup.

Everything here is a thin call on `azure.batch.BatchClient`; retries (429/503 with Retry-After,
dropped connections) are the SDK's own retry policy, bounded by time and told that POST is safe
to retry here (resilience.py). Creation is idempotent: every pool, job and task SAJE creates has
an id of its own choosing that carries the run's id, and a retried create that finds it already
there (PoolExists, JobExists, TaskExists: the first reply was lost after Batch acted on it)
counts as created by this run, so no duplicate task runs and shutdown deletes what the run made.
"""
from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from azure.batch import BatchClient, models
from azure.batch.models import CreateTasksError
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.rest import HttpRequest

from .runrecord import ClockMap, seconds
from .resilience import BatchRetryPolicy, Patience, describe_http_error, diagnose  # noqa: F401 (re-exported)


# What a poll needs of a task; keeping the list short keeps each poll cheap at 10,000 tasks.
POLL_FIELDS = ["id", "state", "stateTransitionTime", "executionInfo", "nodeInfo"]
# What the run's record needs of a node (observer.py): its lifetime, state and priority.
NODE_FIELDS = ["id", "state", "stateTransitionTime", "allocationTime", "isDedicated", "vmSize", "ipAddress"]
CREATE_CONCURRENCY = 4
TERMINATE_REASON = "SAJE: run cancelled"
TERMINATE_WAIT_SECONDS = 120.0
TERMINATE_POLL_SECONDS = 1
# azure-batch 15.1 fails before sending a job terminate without options (no content type), and
# exports its options model only from the private module its signature names; later versions
# export it from azure.batch.models.
_TerminateOptions = getattr(models, "BatchJobTerminateOptions", None) or models._models.BatchJobTerminateOptions


def connect(endpoint: str, credential: Any, patience: Patience | None = None) -> BatchClient:
    """The BatchClient SAJE uses: the SDK's client with `BatchRetryPolicy` bounded by `patience`."""
    return BatchClient(endpoint, credential, retry_policy=BatchRetryPolicy(patience))


class BatchSubmitError(Exception):
    """Tasks Batch refused; the message names them with the Batch error codes."""


def owned_by(resource_id: str, run_id: str) -> bool:
    """A pool or job whose id carries the run's id is the run's: ids are made from it, and the
    run id (time + random part) is new for every run."""
    return bool(run_id) and re.sub(r"[^A-Za-z0-9_-]", "_", run_id) in resource_id


@dataclass(frozen=True)
class CompletedTasks:
    """One poll's completed tasks and the service's clock when it listed them (None: not told)."""

    tasks: list[models.BatchTask]
    service_time: dt.datetime | None


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What the run keeps of a completed task: a few hundred bytes, where the SDK's BatchTask of
    a listing is 3 KB (thousands of them wait for their outputs at the end of a large run)."""

    task_id: str
    succeeded: bool
    exit_code: int | None
    failure_code: str | None
    failure_message: str | None
    node_id: str | None
    pool_id: str | None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    retry_count: int = 0  # Batch's own retries of the task
    requeue_count: int = 0  # times Batch put it back in the queue after losing its node


def outcome_of(task: models.BatchTask) -> TaskOutcome:
    info = task.execution_info
    failure = info.failure_info if info else None
    node = task.node_info
    result = str(info.result).lower() if info and info.result else ""
    return TaskOutcome(
        task_id=task.id,
        succeeded=result.endswith("success") and failure is None,
        exit_code=info.exit_code if info else None,
        failure_code=failure.code if failure else None,
        failure_message=failure.message if failure else None,
        node_id=node.node_id if node else None,
        pool_id=node.pool_id if node else None,
        start_time=info.start_time if info else None,
        end_time=info.end_time if info else None,
        retry_count=int(info.retry_count or 0) if info else 0,
        requeue_count=int(info.requeue_count or 0) if info else 0,
    )


class BatchGateway:
    def __init__(self, client: BatchClient):
        self.client = client

    # ----------------------------------------------------------------- pools
    def pool_exists(self, pool_id: str) -> bool:
        # azure-batch 15.1 raises ResourceNotFoundError on the 404 its own pool_exists expects.
        try:
            return bool(self.client.pool_exists(pool_id))
        except ResourceNotFoundError:
            return False

    def get_pool(self, pool_id: str) -> models.BatchPool:
        return self.client.get_pool(pool_id)

    def create_pool(self, spec: models.BatchPoolCreateOptions, run_id: str) -> bool:
        """Create the pool; True when this run owns it: created now, or found existing with the
        run's id in its own (a retried create whose first reply was lost). False: someone else's."""
        try:
            self.client.create_pool(spec)
            return True
        except ResourceExistsError:
            return owned_by(spec.id, run_id)

    def delete_pool(self, pool_id: str, *, wait: bool = False) -> None:
        try:
            poller = self.client.begin_delete_pool(pool_id)
            if wait:
                poller.result()
        except ResourceNotFoundError:
            pass

    def pool_nodes(self, pool_id: str) -> list[models.BatchNode]:
        """Every node of a pool with `NODE_FIELDS`: one call per 1,000 nodes."""
        return list(self.client.list_nodes(pool_id, select=NODE_FIELDS))

    def failed_start_tasks(self, pool_id: str) -> list[models.BatchNode]:
        return list(self.client.list_nodes(pool_id, filter="state eq 'starttaskfailed'",
                                           select=["id", "state", "startTaskInfo"]))

    def unusable_nodes(self, pool_id: str) -> list[models.BatchNode]:
        """Nodes Batch cannot use, with their errors (a container image that could not be pulled)."""
        return list(self.client.list_nodes(pool_id, filter="state eq 'unusable'", select=["id", "state", "errors"]))

    def remove_nodes(self, pool_id: str, node_ids: Sequence[str]) -> None:
        """Take nodes out of the pool (an autoscale pool replaces them at its next evaluation)."""
        self.client.begin_remove_nodes(pool_id, models.BatchNodeRemoveOptions(
            node_ids=list(node_ids), node_deallocation_option="requeue"))

    def resize_pool(self, pool_id: str, dedicated: int, spot: int) -> None:
        self.client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(
            target_dedicated_nodes=dedicated, target_low_priority_nodes=spot))

    def set_pool_metadata(self, pool_id: str, items: Sequence[models.BatchMetadataItem]) -> None:
        """Replace the pool's metadata (PATCH: the other properties stay)."""
        self.client.update_pool(pool_id, models.BatchPoolUpdateOptions(metadata=list(items)))

    def set_job_metadata(self, job_id: str, metadata: dict[str, str]) -> None:
        self.client.update_job(job_id, models.BatchJobUpdateOptions(metadata=_items(metadata)))

    # ----------------------------------------------------------------- jobs
    def ensure_job(self, job_id: str, pool_id: str, run_id: str, *, display_name: str | None = None,
                   environment: dict[str, str] | None = None, max_wall_clock: dt.timedelta | None = None,
                   metadata: dict[str, str] | None = None,
                   preparation: models.BatchJobPreparationTask | None = None) -> bool:
        """Create the job; True when this run owns it (see `create_pool`). `max_wall_clock` is its
        constraints.maxWallClockTime (Batch terminates it, and its running tasks, that long after
        its creation); `preparation` runs on each node before the job's first task there."""
        job = models.BatchJobCreateOptions(
            id=job_id, display_name=display_name, pool_info=models.BatchPoolInfo(pool_id=pool_id),
            job_preparation_task=preparation,
            constraints=models.BatchJobConstraints(max_wall_clock_time=max_wall_clock) if max_wall_clock else None,
            common_environment_settings=[models.EnvironmentSetting(name=k, value=v) for k, v in sorted((environment or {}).items())] or None,
            metadata=_items(metadata) if metadata else None,
        )
        try:
            self.client.create_job(job)
            return True
        except ResourceExistsError:
            return owned_by(job_id, run_id)

    def delete_job(self, job_id: str, *, wait: bool = False) -> None:
        try:
            poller = self.client.begin_delete_job(job_id)
            if wait:
                poller.result()
        except ResourceNotFoundError:
            pass

    def terminate_jobs(self, job_ids: Sequence[str], reason: str = TERMINATE_REASON, *,
                       wait_seconds: float = TERMINATE_WAIT_SECONDS) -> dict[str, str]:
        """Terminate the jobs, one call each however many tasks they have: Batch ends their running
        tasks (completed, failureInfo TaskEnded) and records `reason` as the job's terminateReason.
        Then wait, at most `wait_seconds` in all, until no job is 'terminating' any more, so that
        the tasks have ended before the caller deletes jobs and pools. Returns {job id: what went
        wrong} for the jobs Batch refused or that were still terminating at the deadline (deleting
        them ends their tasks too); a job already gone or completed counts as terminated."""
        pollers, problems = {}, {}
        for job_id in job_ids:
            try:
                pollers[job_id] = self.client.begin_terminate_job(
                    job_id, _TerminateOptions(termination_reason=reason), polling_interval=TERMINATE_POLL_SECONDS)
            except (ResourceNotFoundError, ResourceExistsError):
                pass
            except HttpResponseError as exc:
                problems[job_id] = describe_http_error(exc)
        deadline = time.monotonic() + wait_seconds
        for job_id, poller in pollers.items():
            poller.wait(timeout=max(0.0, deadline - time.monotonic()))
            if not poller.done():
                problems[job_id] = f"still terminating after {wait_seconds:g} s"
        return problems

    # ----------------------------------------------------------------- tasks
    def submit(self, job_id: str, tasks: Sequence[models.BatchTaskCreateOptions]) -> None:
        """Create tasks in chunks of 100, in parallel; raise naming every task Batch refused."""
        if not tasks:
            return
        try:
            self.client.create_tasks(job_id, list(tasks), max_concurrency=CREATE_CONCURRENCY)
        except CreateTasksError as exc:
            refused = [r for r in exc.failure_tasks if not (r.error and r.error.code == "TaskExists")]
            if not refused:
                if not exc.errors:
                    return
                raise BatchSubmitError("Submitting tasks to Azure Batch failed: "
                                       + diagnose(exc.errors[0]).explain()) from None
            lines = [f"{r.task_id}: {r.error.code if r.error else '?'} "
                     f"{(r.error.message.value if r.error and r.error.message else '')}".strip() for r in refused]
            raise BatchSubmitError("Azure Batch refused these tasks:\n  " + "\n  ".join(lines)) from None

    def completed_since(self, job_id: str, since: dt.datetime | None) -> CompletedTasks:
        """Tasks that completed at or after `since`: one filtered, paged list call per poll.

        `since` is a time on the service's clock, which need not be the caller's (clock skew; a
        time-scaled emulator runs hours ahead): the answer carries the service's time when the
        listing began (the first page's Date header), from which the next poll's `since` is taken.
        """
        flt = "state eq 'completed'"
        if since is not None:
            flt += f" and stateTransitionTime ge DateTime'{since.astimezone(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}'"
        date = ServiceDate()
        tasks = list(self.client.list_tasks(job_id, filter=flt, select=POLL_FIELDS, raw_response_hook=date))
        return CompletedTasks(tasks, date.value)

    def emulator_clock(self) -> ClockMap:
        """SAJE's emulator only (GET /_saje/clock, on this host): its service clock, time scale
        included, against this machine's. Azure's clock is read from a listing's Date header."""
        answer = self.client.send_request(HttpRequest("GET", "/_saje/clock"))
        answer.raise_for_status()
        found = answer.json()
        return ClockMap(seconds(found["now"]), float(found["hostTime"]), float(found["timeScale"]))

    def task_counts(self, job_id: str) -> models.BatchTaskCounts:
        """The job's tasks by state (active, running, completed, succeeded, failed): one call."""
        return self.client.get_job_task_counts(job_id).task_counts

    def subtasks(self, job_id: str, task_id: str) -> list[models.BatchSubtask]:
        return list(self.client.list_subtasks(job_id, task_id))

    def download_task_file(self, job_id: str, task_id: str, name: str, target: Path) -> bool:
        return _save(lambda: self.client.download_task_file(job_id, task_id, name), target)

    def download_node_file(self, pool_id: str, node_id: str, name: str, target: Path) -> bool:
        return _save(lambda: self.client.download_node_file(pool_id, node_id, name), target)


def _items(metadata: dict[str, str] | None) -> list[models.BatchMetadataItem]:
    return [models.BatchMetadataItem(name=k, value=v) for k, v in (metadata or {}).items()]


class ServiceDate:
    """A `raw_response_hook` that keeps the service's time from the first answer's Date header
    (the first page of a listing): Azure's clock need not be this machine's, nor is a time-scaled
    emulator's."""

    def __init__(self) -> None:
        self.value: dt.datetime | None = None
        self._seen = False

    def __call__(self, pipeline_response: Any) -> None:
        if not self._seen:
            self._seen = True
            self.value = http_date(pipeline_response.http_response.headers.get("Date") or "")


def http_date(text: str) -> dt.datetime | None:
    """An RFC 1123 Date header as an aware datetime; None when absent or malformed."""
    try:
        return email.utils.parsedate_to_datetime(text) if text else None
    except (TypeError, ValueError):
        return None


def _save(download, target: Path) -> bool:
    """Write a downloaded file to `target`; False (nothing written) when Batch refuses or has none."""
    try:
        data = b"".join(download())
    except AzureError:  # refused, none there, or the service out of reach: no log file, not a crash
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return True


def quiet_azure_sdk_logging() -> None:
    """The SDKs log warnings (failsafe deserialization tracebacks for 4xx bodies, every credential
    DefaultAzureCredential tried) that SAJE's own messages already carry; SAJE_DEBUG=1 keeps them."""
    import os

    if not os.environ.get("SAJE_DEBUG"):
        logging.getLogger("azure").setLevel(logging.ERROR)
