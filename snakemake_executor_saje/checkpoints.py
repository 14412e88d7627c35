"""Which checkpoint outputs a job's node needs, so that its Snakemake sees the job as here.

On the node, Snakemake parses the workflow afresh and evaluates the job's input functions with
no checkpoint done yet: each ``checkpoints.<name>.get(...)`` finds the checkpoint's output only
if the file is there and the checkpoint counts as done. When the output is missing, the node's
Snakemake plans to run the checkpoint itself (which fails for want of its inputs, or silently
repeats it). When it is there, Snakemake marks the checkpoint done and evaluates the function
with it, as the submitting Snakemake did.

`needed_outputs` replays that evaluation here: it runs the job's input functions against a
growing set of done checkpoints, starting empty, and collects every finished checkpoint output
they ask for. Those files go to the node with the job.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from snakemake.io import is_flagged
from snakemake_interface_common.exceptions import WorkflowError

# An input function can ask for one checkpoint after another; more rounds than this would be a loop.
_MAX_ROUNDS = 100


class UnseenOutputs(WorkflowError):
    """Default storage: Snakemake evaluated a job's input functions here without the local copy
    of checkpoint outputs they read. The checkpoint finished in an earlier run (SAJE fetches the
    outputs of those finishing in this one) and Snakemake keeps no local copy between runs, so a
    `glob_wildcards` over it saw nothing; the node, given the files, would see them."""

    def __init__(self, job: Any, files: list[Any]):
        queries = ", ".join(f.storage_object.query if getattr(f, "is_storage", False) else str(f) for f in files)
        super().__init__(
            f"SAJE: job {job} reads the output of a checkpoint finished before this run ({queries}), which had no "
            "local copy when Snakemake evaluated its input function here, so Snakemake planned it without that "
            "output's files. SAJE has fetched the copy now: run Snakemake again.\n")


def needed_outputs(job: Any) -> list[Any]:
    """The outputs of finished checkpoints that the input functions of `job` (every job of a
    group job) read, in the order they are asked for; [] for most jobs."""
    jobs = list(job.jobs) if job.is_group() else [job]
    workflow = jobs[0].rule.workflow
    done = set(workflow.checkpoints.created_output)
    if not done:
        return []
    needed: list[Any] = []
    for one in jobs:
        for f in _asked_for(workflow, one.rule, one.wildcards_dict, done):
            if f not in needed:
                needed.append(f)
    return needed


def _asked_for(workflow: Any, rule: Any, wildcards: dict, done: set) -> list[Any]:
    seen: set = set()
    asked: list[Any] = []
    for _ in range(_MAX_ROUNDS):
        with _done_checkpoints(workflow, seen):
            files, _mapping, _deps, incomplete = rule.expand_input(wildcards)
        if not incomplete:
            break
        targets = [f for f in files if is_flagged(f, "checkpoint_target")]
        new = [o for t in targets for o in _outputs_of_checkpoint(workflow, t) if o not in seen]
        finished = [o for o in new if o in done]
        if not finished:  # a checkpoint not done yet (one of the same group job): the node makes it
            break
        seen.update(new)
        asked.extend(finished)
    return asked


def _outputs_of_checkpoint(workflow: Any, target: Any) -> list[Any]:
    """All outputs of the checkpoint job whose first output is `target` (what
    IncompleteCheckpointException names)."""
    for rule in workflow.rules:
        if rule.is_checkpoint and rule.is_producer(target):
            outputs, _ = rule.expand_output(rule.get_wildcards(target))
            if outputs and str(outputs[0]) == str(target):
                return list(outputs)
    return [target]


@contextmanager
def _done_checkpoints(workflow: Any, outputs: set) -> Iterator[None]:
    """Evaluate as if exactly `outputs` were the outputs of finished checkpoints (the set
    `checkpoints.<name>.get()` consults); the real set comes back afterwards, whatever happens."""
    root = workflow.checkpoints
    real = root._created_output
    root._created_output = set(outputs)
    try:
        yield
    finally:
        root._created_output = real
