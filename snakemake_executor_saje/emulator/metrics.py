"""The pool metrics an autoscale formula reads ($PendingTasks, $CurrentDedicatedNodes, ...).

Samples are taken by the scheduler every `autoscale_sample_interval`; a formula sees the history
kept here, like the service's 25-minute window (older samples are dropped).
"""
from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from . import autoscale

if TYPE_CHECKING:
    from .model import Pool
    from .state import BatchState

HISTORY = timedelta(minutes=25)


def instantaneous(state: "BatchState", pool: "Pool") -> dict[str, float]:
    """Current values of the task and node metrics for one pool (caller holds the lock)."""
    active = running = succeeded = failed = 0
    for job in state.jobs.values():
        if job.pool_id != pool.id or job.state != "active":
            continue
        for task in job.tasks.values():
            # As the autoscale docs define them: $ActiveTasks counts a multi-instance task once per
            # instance ("includes the number of instances set on the task"), $RunningTasks once.
            if task.state == "active":
                active += task.instances
            elif task.state in ("running", "preparing"):
                running += 1
            elif task.state == "completed":
                if (task.rest.get("executionInfo") or {}).get("result") == "failure":
                    failed += 1
                else:
                    succeeded += 1
    dedicated = sum(1 for n in pool.nodes.values() if n.dedicated and n.removing is None)
    low = sum(1 for n in pool.nodes.values() if not n.dedicated and n.removing is None)
    preempted = sum(1 for n in pool.nodes.values() if n.state == "preempted")
    return {
        "ActiveTasks": active, "RunningTasks": running, "PendingTasks": active + running,
        "SucceededTasks": succeeded, "FailedTasks": failed,
        "CurrentDedicatedNodes": dedicated, "CurrentLowPriorityNodes": low, "PreemptedNodeCount": preempted,
        "UsableNodeCount": sum(1 for n in pool.nodes.values() if n.state in ("idle", "running")),
        "TaskSlotsPerNode": pool.slots_per_node,
    }


def record_sample(state: "BatchState", pool: "Pool") -> None:
    now = state.clock.now()
    for name, value in instantaneous(state, pool).items():
        history = pool.samples.setdefault(name, [])
        history.append(autoscale.Sample(now, float(value)))
        while history and now - history[0].time > HISTORY:
            history.pop(0)
    pool.last_sample = state.clock.monotonic()


def pool_metrics(state: "BatchState", pool: "Pool") -> tuple[dict[str, list[Any]], dict[str, float]]:
    """(sample history per metric, current values incl. the current targets) for `autoscale.evaluate`."""
    if not pool.samples:
        record_sample(state, pool)
    current = instantaneous(state, pool)
    current["TargetDedicatedNodes"] = float(pool.rest.get("targetDedicatedNodes") or current["CurrentDedicatedNodes"])
    current["TargetLowPriorityNodes"] = float(pool.rest.get("targetLowPriorityNodes") or current["CurrentLowPriorityNodes"])
    return pool.samples, current
