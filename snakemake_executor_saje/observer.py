"""The run as the Snakemake log shows it: progress lines while it runs, a summary at the end.

The executor feeds a `RunObserver` what it submits, what each poll finds completed, and once per
poll the nodes of its pools (one list call per pool, a few fields each) and its jobs' task counts
(one call per Batch job): a bounded number of calls however many tasks and nodes there are. From
that the observer keeps the run's record (runrecord.py) and writes a progress line when something
changed, at most one every --saje-progress-interval seconds:

    SAJE progress: pool saje-...-htc-2e5a709a (Standard_D2s_v5): nodes 1 booting, 1 idle;
      tasks 58 queued, 2 running, 0 done; waiting: pool resizing (2 nodes allocating or booting);
      cost so far 0.0012 USD

The pure parts (`progress_line`, `wait_reason`) are what the unit tests check.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from . import prices, runrecord
from .prices import PriceTable
from .runrecord import ClockMap, NodeRecord, PoolRecord, RunRecord, Sample, TaskRecord, grouped, seconds

# Records are rewritten at most this often during the run (and always at its end), so that a
# run killed half-way still leaves something to report; more often would cost too much at scale.
SAVE_SECONDS = 60.0
SHOWN_TASK_IDS = 6


@dataclass(frozen=True)
class PoolFacts:
    """What the wait reason needs of a pool besides its nodes (get_pool, asked only when tasks
    wait on a pool that has no usable node)."""

    allocation_state: str = ""
    target_dedicated: int = 0
    target_spot: int = 0
    resize_errors: tuple[str, ...] = ()  # Batch error codes


@dataclass(frozen=True)
class PoolView:
    """One pool at one poll: node counts by group (dedicated and Spot together) and its tasks."""

    pool_id: str
    vm_size: str
    nodes: dict[str, int]
    queued: int
    running: int
    done: int
    failed: int
    wait: str | None = None


# ----------------------------------------------------------------------------- pure parts
def wait_reason(queued: int, nodes: dict[str, int], facts: PoolFacts | None) -> str | None:
    """Why queued tasks are not running, in the terms a Slurm user knows from squeue's REASON."""
    if queued <= 0:
        return None
    if nodes.get("idle", 0) or nodes.get("running", 0):
        return None if nodes.get("idle", 0) else "all task slots busy"
    errors = facts.resize_errors if facts else ()
    quota = [code for code in errors if "quota" in code.lower()]
    if quota:
        return f"quota ({quota[0]}): the pool cannot grow"
    if errors:
        return f"the pool cannot grow ({errors[0]})"
    if nodes.get("unusable", 0) and not nodes.get("booting", 0) and not nodes.get("allocating", 0):
        return f"no usable node ({nodes['unusable']} unusable or start task failed)"
    if nodes.get("allocating", 0) or nodes.get("booting", 0) or (facts and facts.allocation_state == "resizing"):
        coming = nodes.get("allocating", 0) + nodes.get("booting", 0)
        return f"pool resizing ({coming} node(s) allocating or booting)" if coming else "pool resizing"
    if facts is not None and facts.target_dedicated + facts.target_spot == 0:
        return "the pool has 0 nodes; autoscale adds some at its next evaluation"
    return "no usable node"


def fmt_nodes(nodes: dict[str, int]) -> str:
    return ", ".join(f"{n} {group}" for group, n in nodes.items() if n) or "none"


def progress_line(views: list[PoolView], cost: float, currency: str, unpriced: bool) -> str:
    """One log line (one row per pool for runs with several pools)."""
    rows = []
    for v in views:
        row = (f"pool {v.pool_id} ({v.vm_size}): nodes {fmt_nodes(v.nodes)}; tasks {v.queued} queued, "
               f"{v.running} running, {v.done} done" + (f" ({v.failed} failed)" if v.failed else ""))
        rows.append(row + (f"; waiting: {v.wait}" if v.wait else ""))
    money = f"cost so far {'at least ' if unpriced else ''}{cost:.4f} {currency}"
    if len(rows) == 1:
        return f"SAJE progress: {rows[0]}; {money}"
    return "SAJE progress:\n" + "\n".join(f"  {r}" for r in rows) + f"\n  {money}"


def submission_line(batch_job: str, pool_id: str, task_ids: list[str]) -> str:
    """Like the Slurm plugin's per-job line, once per submitted batch: the Batch job and its tasks."""
    shown = ", ".join(task_ids[:SHOWN_TASK_IDS])
    more = len(task_ids) - SHOWN_TASK_IDS
    return (f"SAJE: {len(task_ids)} task(s) submitted to Batch job {batch_job} (pool {pool_id}): {shown}"
            + (f" and {more} more (saje job tasks {batch_job})" if more > 0 else ""))


def watch_hint(emulated: bool) -> str:
    where = (" from another terminal with this run's SNAKEMAKE_SAJE_ACCOUNT_URL, _NAME and _KEY "
             "(what saje emulator start prints)" if emulated else "")
    return (f"SAJE: watch the run{where}: saje status --watch (pools, nodes, tasks, cost), "
            "saje job tasks JOB (each task's state, node, exit code)")


# ----------------------------------------------------------------------------- the observer
class RunObserver:
    def __init__(self, run_id: str, directory: Path, logger: logging.Logger | Any, *, endpoint: str = "",
                 emulated: bool = False, progress_interval: float = 5.0, clock=time.time,
                 price_loader: Callable[[list[str]], PriceTable] | None = None):
        self.record = RunRecord(run_id, clock(), endpoint, emulated)
        self.price_loader = price_loader or (lambda sizes: prices.load(endpoint, sizes))
        self.directory = Path(directory)
        self.logger = logger
        self.progress_interval = float(progress_interval)
        self.clock = clock
        self.last_line_at = float("-inf")
        self.last_shown: tuple | None = None
        self.last_saved = clock()
        self.hinted = False
        self.complained = False
        self.staging = None  # a staging.Staging, for the data-moved figures
        self.clock_map = ClockMap(0.0, 0.0)  # until told otherwise: the service's clock is ours

    # ------------------------------------------------------------------ fed by the executor
    def service_clock(self, mapping: ClockMap) -> None:
        """How the service's clock maps onto this machine's (see ClockMap): Batch's timestamps
        (allocation, state transitions, task start and end) are on its clock, the run's own moments
        on this machine's. A skewed client, or a time-scaled emulator running hours ahead, must not
        mix the two (a node would seem allocated after it was deleted, and bill negative hours)."""
        self.clock_map = mapping

    def _local(self, value: Any) -> float | None:
        """A Batch timestamp on this machine's clock."""
        moment = seconds(value)
        return None if moment is None else self.clock_map.to_local(moment)

    def pool_added(self, pool_id: str, vm_size: str, *, spot: bool, batch_job: str, created: bool, mpi: bool) -> None:
        """A pool the run uses; its first use of a VM size (re)loads the prices, said once per source."""
        sizes = {p.vm_size.lower() for p in self.record.pools.values()}
        self.record.pools.setdefault(pool_id, PoolRecord(pool_id, vm_size, spot, batch_job, created, mpi))
        if vm_size.lower() in sizes and self.record.prices is not None:
            return
        self._safely(self._load_prices, sorted({*sizes, vm_size.lower()}))

    def _load_prices(self, sizes: list[str]) -> None:
        before = self.record.prices.describe() if self.record.prices else None
        self.record.prices = self.price_loader(sizes)
        if self.record.prices.describe() != before:
            self.logger.info(f"SAJE: cost estimates use the {self.record.prices.describe()}.")

    def submitted(self, batch_job: str, pool_id: str, tasks: Iterable[tuple[str, Any]]) -> None:
        """Tasks just created in `batch_job`: (task id, its job's mapping.JobSpec: rule, jobid, attempt)."""
        self._safely(self._submitted, batch_job, pool_id, list(tasks))

    def _submitted(self, batch_job: str, pool_id: str, tasks: list[tuple[str, Any]]) -> None:
        now = self.clock()
        ids = []
        for task_id, spec in tasks:
            self.record.tasks[task_id] = TaskRecord(task_id, batch_job, pool_id, spec.rule, str(spec.jobid),
                                                    int(spec.attempt), now)
            ids.append(task_id)
        if not ids:
            return
        if self.record.first_submission is None:
            self.record.first_submission = now
        self.logger.info(submission_line(batch_job, pool_id, ids))
        if not self.hinted:
            self.hinted = True
            self.logger.info(watch_hint(self.record.emulated))

    def node_addresses(self, pool_id: str) -> dict[str, str]:
        """node id -> IP address (what AZ_BATCH_HOST_LIST and MPICH's messages use) of every node
        the run's polls saw in the pool: also of those gone since, as a failed MPI task's nodes can
        be by the time its logs come down (an idle pool lets them go at its next autoscale)."""
        return {rec.node_id: rec.ip_address for rec in self.record.nodes.values()
                if rec.pool_id == pool_id and rec.ip_address}

    def finished(self, outcome: Any, *, log_dir: Path | None = None, peak_memory_mb: float | None = None) -> None:
        """A completed task (batch.TaskOutcome)."""
        self._safely(self._finished, outcome, log_dir, peak_memory_mb)

    def _finished(self, outcome: Any, log_dir: Path | None, peak_memory_mb: float | None) -> None:
        record = self.record.tasks.get(outcome.task_id)
        if record is None:
            return
        record.outcome = "succeeded" if outcome.succeeded else "failed"
        record.started, record.ended = self._local(outcome.start_time), self._local(outcome.end_time)
        record.exit_code = outcome.exit_code
        record.failure_code = outcome.failure_code
        record.retries, record.requeues = outcome.retry_count, outcome.requeue_count
        record.node_id = outcome.node_id or record.node_id
        record.log_dir = str(log_dir) if log_dir is not None and record.outcome == "failed" else None
        record.peak_memory_mb = peak_memory_mb

    def observe(self, batch: Any, now: float | None = None, *, say: bool = True) -> None:
        """One poll: the nodes of every pool (one list call each) and the task counts of every
        Batch job (one call each); then a progress line if something changed."""
        self._safely(self._observe, batch, self.clock() if now is None else now, say)

    def _safely(self, action: Callable[..., None], *args: Any) -> None:
        """Record keeping is a courtesy: whatever goes wrong in it, the run goes on (said once)."""
        try:
            action(*args)
        except Exception as exc:  # noqa: BLE001
            if not self.complained:
                self.complained = True
                self.logger.warning(f"SAJE: keeping the run's record failed ({exc!r}); the run goes on, "
                                    "its summary may be incomplete.")

    def _observe(self, batch: Any, now: float, say: bool) -> None:
        from azure.core.exceptions import AzureError

        views = []
        for pool in self.record.pools.values():
            try:
                nodes = batch.pool_nodes(pool.pool_id)
                counts = batch.task_counts(pool.batch_job)
            except AzureError:
                return  # the status query reports Batch trouble; try again next poll
            view = self.update_pool(pool, nodes, counts, now)
            if view.wait is not None and view.nodes.get("idle", 0) + view.nodes.get("running", 0) == 0:
                view = PoolView(**{**view.__dict__, "wait": wait_reason(view.queued, view.nodes, _facts(batch, pool.pool_id))})
            views.append(view)
        if say:
            self._maybe_say(views, now)
        if now - self.last_saved >= SAVE_SECONDS:
            self.save()

    def update_pool(self, pool: PoolRecord, nodes: list[Any], counts: Any, now: float) -> PoolView:
        """Fold one listing of a pool's nodes and its job's task counts into the record."""
        seen: set[str] = set()
        states: dict[bool, dict[str, int]] = {True: {}, False: {}}
        for node in nodes:
            state = _state(node.state)
            key = f"{pool.pool_id}/{node.id}"
            seen.add(key)
            rec = self.record.nodes.get(key)
            if rec is None:
                allocated = self._local(node.allocation_time) or now
                rec = self.record.nodes[key] = NodeRecord(pool.pool_id, node.id, node.vm_size or pool.vm_size,
                                                          bool(node.is_dedicated), allocated, now, now)
            rec.last_seen = now
            rec.ip_address = node.ip_address or rec.ip_address
            if state != rec.state:
                rec.states.append((self._local(node.state_transition_time) or now, state))
                rec.state = state
            if state == "preempted" and rec.preempted_at is None:
                rec.preempted_at = self._local(node.state_transition_time) or now
            dedicated = bool(node.is_dedicated)
            states[dedicated][state] = states[dedicated].get(state, 0) + 1
        for key, rec in self.record.nodes.items():
            if rec.pool_id == pool.pool_id and rec.ended is None and key not in seen:
                rec.ended, rec.missing_at = (rec.last_seen + now) / 2, now  # it left between those two polls
        queued, running = int(counts.active or 0), int(counts.running or 0)
        done, failed = int(counts.completed or 0), int(counts.failed or 0)
        if running and self.record.first_running_seen is None:
            self.record.first_running_seen = now
        sample = Sample(now, pool.pool_id, states[True], states[False], queued, running, done, failed)
        last = next((s for s in reversed(self.record.samples) if s.pool_id == pool.pool_id), None)
        if last is None or (last.dedicated, last.spot, last.queued, last.running, last.done) != (
                sample.dedicated, sample.spot, sample.queued, sample.running, sample.done):
            self.record.samples.append(sample)
        groups = grouped({s: states[True].get(s, 0) + states[False].get(s, 0) for s in {*states[True], *states[False]}})
        return PoolView(pool.pool_id, pool.vm_size, groups, queued, running, done, failed,
                        wait_reason(queued, groups, None))

    def pools_deleted(self, pool_ids: Iterable[str], now: float | None = None) -> None:
        """The run deleted these pools: their nodes' billing ends now (Azure releases them with the pool)."""
        now = self.clock() if now is None else now
        for pool_id in pool_ids:
            pool = self.record.pools.get(pool_id)
            if pool is not None:
                pool.deleted = now
            for rec in self.record.nodes.values():
                if rec.pool_id == pool_id and rec.ended is None:
                    rec.ended = now
            self.record.samples.append(Sample(now, pool_id, {}, {}, 0, 0, 0, 0))

    # ------------------------------------------------------------------ output
    def _maybe_say(self, views: list[PoolView], now: float) -> None:
        if self.progress_interval <= 0 or not views:
            return
        shown = tuple((v.pool_id, tuple(v.nodes.items()), v.queued, v.running, v.done, v.failed, v.wait) for v in views)
        if shown == self.last_shown or now - self.last_line_at < self.progress_interval:
            return
        money = runrecord.cost(runrecord.node_hours(self.record, now), self.record.prices)
        self.logger.info(progress_line(views, money["known"], money["currency"], money["total"] is None))
        self.last_shown, self.last_line_at = shown, now

    def save(self) -> None:
        if self.staging is not None:
            self.record.uploaded_bytes, self.record.downloaded_bytes = self.staging.traffic()
        try:
            runrecord.write_json(self.directory / runrecord.RECORDS_FILE, self.record.to_json())
        except OSError as exc:
            self.logger.warning(f"SAJE: could not write the run's records to {self.directory}: {exc}")
        self.last_saved = self.clock()

    def finish(self) -> dict[str, Any] | None:
        """End of run: write records and summary, log the summary. None when nothing was submitted."""
        if not self.record.tasks or self.record.ended is not None:
            return None
        self.record.ended = self.clock()
        self.save()
        summary = runrecord.summarize(self.record)
        try:
            runrecord.write_json(self.directory / runrecord.SUMMARY_FILE, summary)
        except OSError as exc:
            self.logger.warning(f"SAJE: could not write the run summary: {exc}")
        self.logger.info("\n".join(runrecord.summary_lines(summary, self.directory)))
        return summary


def peak_memory_mb(benchmarks: Iterable[Any]) -> float | None:
    """The largest max_rss (MB) in a job's Snakemake benchmark files, where they are here; Batch
    itself does not report a task's memory."""
    peak = None
    for path in benchmarks:
        try:
            lines = Path(str(path)).read_text().splitlines()
        except OSError:
            continue
        header = lines[0].split("\t") if lines else []
        if "max_rss" not in header:
            continue
        column = header.index("max_rss")
        for line in lines[1:]:
            cells = line.split("\t")
            try:
                value = float(cells[column])
            except (IndexError, ValueError):
                continue  # Snakemake writes NA when it could not measure
            peak = value if peak is None else max(peak, value)
    return peak


def _state(value: Any) -> str:
    return str(getattr(value, "value", value) or "").lower()


def _facts(batch: Any, pool_id: str) -> PoolFacts | None:
    from azure.core.exceptions import AzureError

    try:
        pool = batch.get_pool(pool_id)
    except AzureError:
        return None
    return PoolFacts(_state(pool.allocation_state), int(pool.target_dedicated_nodes or 0),
                     int(pool.target_low_priority_nodes or 0),
                     tuple(e.code for e in pool.resize_errors or [] if e.code))
