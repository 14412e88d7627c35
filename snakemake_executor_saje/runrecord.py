"""What a run did, recorded while it runs: its tasks, its nodes, its pools over time.

Batch forgets a run once its jobs and pools are deleted (SAJE deletes them when the run ends), so
the executor keeps its own record, fed by what each status poll fetches, and writes it to
``.snakemake/saje_logs/<run>/records.json``. `summarize` turns it into the end-of-run summary
(node-hours by VM size and priority, estimated cost, tasks by outcome, retries, preemptions, time
to the first running task, data moved); `saje report` draws it. Everything here is pure: the
executor's poll feeds it, and tests feed it made-up observations.

Times are POSIX seconds in memory and ISO 8601 UTC strings in the files.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from .prices import PriceTable

RECORDS_FILE = "records.json"
# The records' moments (POSIX seconds here, ISO 8601 in the files).
TIME_FIELDS = frozenset({"submitted", "started", "ended", "allocated", "first_seen", "last_seen", "missing_at",
                         "preempted_at", "deleted", "time"})
SUMMARY_FILE = "summary.json"
FORMAT = 1

# Node states (REST spelling) by what they mean for a run; the progress line and the report use
# these groups. 'allocating' is a VM Azure is still getting; 'booting' is joining the pool.
NODE_GROUPS: dict[str, frozenset[str]] = {
    "allocating": frozenset({"creating"}),
    "booting": frozenset({"starting", "waitingforstarttask", "rebooting", "reimaging", "upgradingos"}),
    "idle": frozenset({"idle"}),
    "running": frozenset({"running"}),
    "preempted": frozenset({"preempted"}),
    "unusable": frozenset({"unusable", "starttaskfailed", "unknown", "offline"}),
    "leaving": frozenset({"leavingpool", "deallocating", "deallocated"}),
}
# Azure bills a VM from its allocation until it is released; a preempted or deallocated one is not billed.
UNBILLED_STATES = frozenset({"preempted", "deallocated"})


def group_of(state: str) -> str:
    for group, states in NODE_GROUPS.items():
        if state in states:
            return group
    return "unusable"


def grouped(states: dict[str, int]) -> dict[str, int]:
    """{'idle': 2, 'starttaskfailed': 1} -> {'idle': 2, 'unusable': 1}, in NODE_GROUPS order."""
    out = dict.fromkeys(NODE_GROUPS, 0)
    for state, n in states.items():
        out[group_of(state)] += n
    return {k: v for k, v in out.items() if v}


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seconds(value: Any) -> float | None:
    """POSIX seconds from an ISO string, an aware datetime, a number, or None."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class ClockMap:
    """One moment read on the service's clock and on this machine's, and how many service seconds
    pass per second here: 1 on Azure (then only the skew counts), an emulator's time scale."""

    service: float
    local: float
    scale: float = 1.0

    def to_local(self, moment: float) -> float:
        return self.local + (moment - self.service) / self.scale


@dataclass
class TaskRecord:
    """One Batch task of the run (one Snakemake job attempt)."""

    task_id: str
    batch_job: str
    pool_id: str
    rule: str
    jobid: str  # Snakemake's job id: a number, or a UUID for a group job
    attempt: int
    submitted: float
    outcome: str = "unfinished"  # succeeded | failed | unfinished (the run ended first)
    node_id: str | None = None
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    failure_code: str | None = None
    retries: int = 0  # Batch's own retries of this task (executionInfo.retryCount)
    requeues: int = 0  # times Batch put it back in the queue after losing its node (preemption)
    log_dir: str | None = None  # where its stdout/stderr were saved (failed tasks)
    peak_memory_mb: float | None = None  # max_rss of the rule's benchmark file, when it has one

    @property
    def runtime(self) -> float | None:
        return self.ended - self.started if self.started is not None and self.ended is not None else None


@dataclass
class NodeRecord:
    """One node seen in a pool of the run, from its allocation until it left the pool."""

    pool_id: str
    node_id: str
    vm_size: str
    dedicated: bool
    allocated: float  # Batch's allocationTime
    first_seen: float
    last_seen: float
    state: str = ""
    ip_address: str = ""  # what AZ_BATCH_HOST_LIST and MPI launchers' messages name it by
    ended: float | None = None  # left the pool (between two polls: the midpoint) or pool deleted
    missing_at: float | None = None  # the poll that found it gone (its end lies in [last_seen, missing_at])
    preempted_at: float | None = None
    states: list[tuple[float, str]] = field(default_factory=list)  # (Batch stateTransitionTime, state)

    def billed(self, start: float, until: float) -> float:
        """Seconds Azure bills this node within [start, until]: from its allocation until it left
        the pool, less the time it spent preempted or deallocated (Azure may restore a preempted
        Spot node within 48 hours; it is billed again from then)."""
        end = min(x for x in (self.ended, until) if x is not None)
        cursor, billing, total = min(max(self.allocated, start), end), True, 0.0
        for moment, state in sorted(self.states):
            moment = min(max(moment, cursor), end)
            total += moment - cursor if billing else 0.0
            cursor, billing = moment, state not in UNBILLED_STATES
        return total + (max(0.0, end - cursor) if billing else 0.0)


@dataclass
class PoolRecord:
    pool_id: str
    vm_size: str
    spot: bool  # the pool class puts its nodes on Spot
    batch_job: str
    created: bool  # made by this run (else an existing pool: only the run's span is counted)
    mpi: bool = False
    deleted: float | None = None


@dataclass
class Sample:
    """One poll's view of one pool: node counts by group, and its job's tasks."""

    time: float
    pool_id: str
    dedicated: dict[str, int]
    spot: dict[str, int]
    queued: int
    running: int
    done: int
    failed: int


@dataclass
class RunRecord:
    run_id: str
    started: float
    endpoint: str = ""
    emulated: bool = False
    first_submission: float | None = None
    first_running_seen: float | None = None
    ended: float | None = None
    pools: dict[str, PoolRecord] = field(default_factory=dict)
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)  # "pool/node"
    samples: list[Sample] = field(default_factory=list)
    uploaded_bytes: int = 0
    downloaded_bytes: int = 0
    prices: PriceTable | None = None

    # ------------------------------------------------------------------ (de)serialization
    def to_json(self) -> dict[str, Any]:
        def times(obj: Any) -> dict[str, Any]:
            # Shallow, not dataclasses.asdict: its deep copy of 10,000 task records doubled the
            # memory a save takes, and the document is only read to be written.
            return {name: iso(value) if name in TIME_FIELDS else value
                    for name, value in ((f.name, getattr(obj, f.name)) for f in fields(obj))}

        nodes = []
        for node in self.nodes.values():
            row = times(node)
            row["states"] = [[iso(t), s] for t, s in node.states]
            nodes.append(row)
        return {
            "format": FORMAT, "runId": self.run_id, "endpoint": self.endpoint, "emulated": self.emulated,
            "started": iso(self.started), "ended": iso(self.ended), "firstSubmission": iso(self.first_submission),
            "firstRunningSeen": iso(self.first_running_seen),
            "data": {"uploadedBytes": self.uploaded_bytes, "downloadedBytes": self.downloaded_bytes},
            "prices": self.prices.only(p.vm_size for p in self.pools.values()).to_json() if self.prices else None,
            "pools": [times(p) for p in self.pools.values()],
            "tasks": [times(t) for t in self.tasks.values()],
            "nodes": nodes,
            "samples": [times(s) for s in self.samples],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunRecord":
        def build(kind: type, row: dict[str, Any]) -> Any:
            names = {f.name for f in fields(kind)}
            return kind(**{name: seconds(value) if name in TIME_FIELDS else value
                           for name, value in row.items() if name in names})

        record = cls(data["runId"], seconds(data["started"]) or 0.0, data.get("endpoint", ""), bool(data.get("emulated")),
                     seconds(data.get("firstSubmission")), seconds(data.get("firstRunningSeen")), seconds(data.get("ended")))
        moved = data.get("data") or {}
        record.uploaded_bytes, record.downloaded_bytes = int(moved.get("uploadedBytes", 0)), int(moved.get("downloadedBytes", 0))
        record.prices = PriceTable.from_json(data["prices"]) if data.get("prices") else None
        for row in data.get("pools") or []:
            pool = build(PoolRecord, row)
            record.pools[pool.pool_id] = pool
        for row in data.get("tasks") or []:
            task = build(TaskRecord, row)
            record.tasks[task.task_id] = task
        for row in data.get("nodes") or []:
            node = build(NodeRecord, {**row, "states": []})
            node.states = [(seconds(t) or 0.0, s) for t, s in row.get("states") or []]
            record.nodes[f"{node.pool_id}/{node.node_id}"] = node
        record.samples = [build(Sample, s) for s in data.get("samples") or []]
        return record


def write_json(path: Path, document: Any) -> None:
    """Write through a temporary name, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8") as out:  # streamed: no copy of the whole text in memory
        json.dump(document, out, indent=1)
        out.write("\n")
    os.replace(partial, path)


def load(directory: Path) -> tuple[RunRecord, dict[str, Any] | None]:
    """A run's records (and its summary, when the run got to write one)."""
    record = RunRecord.from_json(json.loads((directory / RECORDS_FILE).read_text()))
    summary_path = directory / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return record, summary


# ----------------------------------------------------------------------------- summary
def node_hours(record: RunRecord, until: float) -> dict[tuple[str, bool], float]:
    """Billed node-hours by (VM size, Spot), from each node's allocation to its release."""
    hours: dict[tuple[str, bool], float] = {}
    for node in record.nodes.values():
        pool = record.pools.get(node.pool_id)
        start = record.started if pool is None or not pool.created else node.allocated
        key = (node.vm_size.lower(), not node.dedicated)
        hours[key] = hours.get(key, 0.0) + node.billed(start, until) / 3600
    return hours


def cost(hours: dict[tuple[str, bool], float], prices: PriceTable | None) -> dict[str, Any]:
    """Known cost, and the node-hours without a price (so the known cost is a floor, never 0 for them)."""
    known, unknown = 0.0, 0.0
    for (size, spot), h in hours.items():
        price = prices.hourly(size, spot) if prices else None
        if price is None:
            unknown += h
        else:
            known += price * h
    return {"known": known, "total": known if unknown == 0 else None, "unpricedNodeHours": unknown,
            "currency": prices.currency if prices else "USD"}


def cost_at(record: RunRecord, t: float) -> float:
    """The known cost of the run up to time `t` (for the progress line and the cost curve)."""
    return cost(node_hours(record, t), record.prices)["known"]


def summarize(record: RunRecord) -> dict[str, Any]:
    """The end-of-run summary (summary.json)."""
    until = record.ended or max([record.started, *(n.last_seen for n in record.nodes.values())])
    hours = node_hours(record, until)
    money = cost(hours, record.prices)
    outcomes: dict[str, int] = {}
    for task in record.tasks.values():
        outcomes[task.outcome] = outcomes.get(task.outcome, 0) + 1
    starts = [t.started for t in record.tasks.values() if t.started is not None]
    first_running = min(starts) if starts else record.first_running_seen
    nodes_by_size: dict[tuple[str, bool], int] = {}
    for node in record.nodes.values():
        key = (node.vm_size.lower(), not node.dedicated)
        nodes_by_size[key] = nodes_by_size.get(key, 0) + 1
    return {
        "format": FORMAT,
        "runId": record.run_id,
        "endpoint": record.endpoint,
        "emulated": record.emulated,
        "started": iso(record.started),
        "ended": iso(until),
        "durationSeconds": round(until - record.started, 3),
        "nodeHours": [{"vmSize": size, "priority": "spot" if spot else "dedicated", "nodes": nodes_by_size.get((size, spot), 0),
                       "nodeHours": round(h, 6),
                       "pricePerHour": record.prices.hourly(size, spot) if record.prices else None}
                      for (size, spot), h in sorted(hours.items())],
        "cost": {**{k: (round(v, 6) if isinstance(v, float) else v) for k, v in money.items()},
                 "prices": record.prices.about() if record.prices else None},
        "tasks": {"total": len(record.tasks), **{k: outcomes.get(k, 0) for k in ("succeeded", "failed", "unfinished")}},
        "retries": {"batch": sum(t.retries for t in record.tasks.values()),
                    "snakemake": sum(1 for t in record.tasks.values() if t.attempt > 1)},
        "preemptions": {"nodes": sum(1 for n in record.nodes.values() if n.preempted_at is not None),
                        "taskRequeues": sum(t.requeues for t in record.tasks.values())},
        "firstRunningAfterSeconds": (round(first_running - record.first_submission, 3)
                                     if first_running is not None and record.first_submission is not None else None),
        "data": {"uploadedBytes": record.uploaded_bytes, "downloadedBytes": record.downloaded_bytes},
    }


def summary_lines(summary: dict[str, Any], directory: Path) -> list[str]:
    """The summary as the log shows it."""
    tasks, retries, pre = summary["tasks"], summary["retries"], summary["preemptions"]
    money = summary["cost"]
    currency = money["currency"]
    lines = [f"SAJE run summary (run {summary['runId']}, {_duration(summary['durationSeconds'])}):",
             f"  tasks: {tasks['succeeded']} succeeded, {tasks['failed']} failed"
             + (f", {tasks['unfinished']} unfinished" if tasks["unfinished"] else "")
             + f"; retries: {retries['batch']} by Batch, {retries['snakemake']} by Snakemake;"
             f" preemptions: {pre['nodes']} node(s), {pre['taskRequeues']} task(s) requeued"]
    if summary["firstRunningAfterSeconds"] is not None:
        lines.append(f"  first task running {_duration(summary['firstRunningAfterSeconds'])} after the first submission")
    for row in summary["nodeHours"]:
        price = f"{row['pricePerHour']:g} {currency}/h" if row["pricePerHour"] is not None else "price unknown"
        lines.append(f"  node-hours: {row['vmSize']} {row['priority']}: {row['nodeHours']:.4f} h"
                     f" on {row['nodes']} node(s) at {price}")
    total = (f"{money['total']:.4f} {currency}" if money["total"] is not None
             else f"at least {money['known']:.4f} {currency} ({money['unpricedNodeHours']:.4f} node-hours at an unknown price)")
    prices = PriceTable.from_json(money["prices"]).describe() if money.get("prices") else "no price table"
    lines.append(f"  estimated cost: {total}" + (" at Azure prices (the emulator itself costs nothing)" if summary["emulated"] else ""))
    lines.append(f"  prices: {prices}")
    data = summary["data"]
    lines.append(f"  data moved by SAJE: {_size(data['uploadedBytes'])} up to blob storage, {_size(data['downloadedBytes'])} down")
    lines.append(f"  summary: {directory / SUMMARY_FILE}; a report with a timeline: saje report {summary['runId']}")
    return lines


def _duration(s: float) -> str:
    s = float(s)
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def task_rows(record: RunRecord) -> Iterable[TaskRecord]:
    return sorted(record.tasks.values(), key=lambda t: (t.started or t.submitted, t.task_id))
