"""Start-task failures on the pools a run created: replace the node, and know when to give up.

A failed start task does not heal by waiting. Batch leaves the node in 'starttaskfailed', billed,
and never reruns the start task by itself, and an autoscale pool counts that node as one it has,
so the run would wait --saje-pool-ready-timeout (30 minutes) on a node that can never take a
task. The executor therefore saves the node's startup/stderr.txt, removes the node (an autoscale
pool asks for a new one at its next evaluation; a fixed-size pool is resized back to its size)
and records the failure here. When the last `GIVE_UP_AFTER` failures on a pool are alike (same
Batch failure code and exit code) and no node of it ever got through its start task, a fresh
node will fail the same way: the jobs waiting on the pool fail at once, with that stderr.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GIVE_UP_AFTER = 3
STDERR_LINES = 15


@dataclass(frozen=True)
class StartTaskFailure:
    node_id: str
    code: str
    exit_code: int | None
    stderr_file: Path | None = None  # the node's startup/stderr.txt, saved locally

    @property
    def kind(self) -> tuple[str, int | None]:
        return (self.code, self.exit_code)

    def stderr_tail(self, lines: int = STDERR_LINES) -> str:
        if self.stderr_file is None:
            return ""
        try:
            return "\n".join(self.stderr_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class PoolWatch:
    """What the executor learnt about one created pool's start tasks."""

    failures: list[StartTaskFailure] = field(default_factory=list)
    saw_usable: bool = False  # some node got through its start task (the pool had an idle or running node)
    fixed_target: tuple[int, int] | None = None  # (dedicated, spot) of a fixed-size pool
    restore_pending: bool = False  # a fixed-size pool lost a node and has to be resized back

    def record(self, failure: StartTaskFailure) -> None:
        self.failures.append(failure)
        if self.fixed_target is not None:
            self.restore_pending = True

    @property
    def troubled(self) -> bool:
        """Worth a look at the next poll rather than at the next routine pool check."""
        return self.restore_pending or (bool(self.failures) and not self.saw_usable)

    def give_up(self) -> StartTaskFailure | None:
        """The failure to report when the pool's start task fails every time the same way."""
        if self.saw_usable or len(self.failures) < GIVE_UP_AFTER:
            return None
        last = self.failures[-GIVE_UP_AFTER:]
        return last[-1] if len({f.kind for f in last}) == 1 else None

    def give_up_message(self, pool_id: str) -> str | None:
        failure = self.give_up()
        if failure is None:
            return None
        code = f"{failure.code}, exit code {failure.exit_code}" if failure.exit_code is not None else failure.code
        tail = failure.stderr_tail()
        where = f" ({failure.stderr_file})" if failure.stderr_file else ""
        return (f"SAJE: the start task of pool {pool_id} failed on {len(self.failures)} nodes, the last "
                f"{GIVE_UP_AFTER} alike ({code}), and no node got through it; the jobs waiting on this pool fail now "
                "rather than after --saje-pool-ready-timeout. Fix the start task (its command, the image, the "
                "network it needs)."
                + (f"\nIts stderr on node {failure.node_id}{where}, last lines:\n{tail}" if tail else
                   f"\nNo stderr.txt could be fetched from node {failure.node_id}."))
