"""The run's record, its progress lines and its summary, fed made-up polls (observer.py, runrecord.py)."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from snakemake_executor_saje import observer, prices, report, runrecord
from snakemake_executor_saje.batch import TaskOutcome
from snakemake_executor_saje.observer import PoolFacts, RunObserver, wait_reason
from snakemake_executor_saje.runrecord import ClockMap, RunRecord

T0 = 1_750_000_000.0
PRICE = 0.096


class Log:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, text):
        self.lines.append(text)

    warning = error = info


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def when(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc)


def node(node_id: str, state: str, allocated: float, since: float, dedicated: bool = True, ip: str | None = None):
    return SimpleNamespace(id=node_id, state=state, allocation_time=when(allocated), state_transition_time=when(since),
                           is_dedicated=dedicated, vm_size="standard_d2s_v5", ip_address=ip)


def spec(rule: str, jobid: int, attempt: int = 1):
    return SimpleNamespace(rule=rule, jobid=jobid, attempt=attempt)


def counts(active=0, running=0, completed=0, failed=0):
    return SimpleNamespace(active=active, running=running, completed=completed, failed=failed)


def table() -> prices.PriceTable:
    return prices.PriceTable("bundled", "eastus", "USD", "2025-06", "test table", {("standard_d2s_v5", False): PRICE})


def completed_task(task_id: str, start: float, end: float, node_id: str, *, exit_code=0, retries=0, requeues=0):
    return TaskOutcome(task_id, exit_code == 0, exit_code, None if exit_code == 0 else "FailureExitCode", None, node_id,
                       "p", when(start), when(end), retries, requeues)


@pytest.fixture
def run(tmp_path):
    clock, log = Clock(), Log()
    obs = RunObserver("r1", tmp_path / "r1", log, endpoint="http://127.0.0.1:1", emulated=True,
                      progress_interval=5, clock=clock, price_loader=lambda sizes: table())
    obs.pool_added("p", "Standard_D2s_v5", spot=False, batch_job="p-job", created=True, mpi=False)
    return obs, clock, log


# ----------------------------------------------------------------------------- wait reasons
@pytest.mark.parametrize("queued, nodes, facts, reason", [
    (0, {}, None, None),
    (3, {"idle": 1}, None, None),
    (3, {"running": 2}, None, "all task slots busy"),
    (3, {}, PoolFacts("steady", 0, 0, ("AccountCoreQuotaReached",)), "quota (AccountCoreQuotaReached): the pool cannot grow"),
    (3, {}, PoolFacts("steady", 2, 0, ("AllocationTimedout",)), "the pool cannot grow (AllocationTimedout)"),
    (3, {"unusable": 2}, PoolFacts("steady", 2, 0), "no usable node (2 unusable or start task failed)"),
    (3, {"booting": 1, "allocating": 1}, PoolFacts("resizing", 2, 0), "pool resizing (2 node(s) allocating or booting)"),
    (3, {}, PoolFacts("resizing", 2, 0), "pool resizing"),
    (3, {}, PoolFacts("steady", 0, 0), "the pool has 0 nodes; autoscale adds some at its next evaluation"),
])
def test_wait_reason(queued, nodes, facts, reason):
    assert wait_reason(queued, nodes, facts) == reason


# ----------------------------------------------------------------------------- lines
def test_submission_line_names_the_batch_job_and_tasks(run):
    obs, _, log = run
    obs.submitted("p-job", "p", [(f"a-{i}-a1", spec("a", i)) for i in range(8)])
    obs.submitted("p-job", "p", [("b-9-a1", spec("b", 9))])
    assert log.lines[1].startswith("SAJE: 8 task(s) submitted to Batch job p-job (pool p): a-0-a1, a-1-a1,")
    assert log.lines[1].endswith("and 2 more (saje job tasks p-job)")
    assert "saje status --watch" in log.lines[2]  # the hint, once
    assert log.lines[3] == "SAJE: 1 task(s) submitted to Batch job p-job (pool p): b-9-a1"
    assert obs.record.first_submission == T0


def test_a_group_job_is_recorded_under_its_uuid(run, tmp_path):
    """Snakemake names a group job by a UUID, not a number: it is recorded and round-trips."""
    obs, _, log = run
    group = "db924d7a-25db-52ee-8602-be4b7d17c071"
    obs.submitted("p-job", "p", [(f"grp-{group}-a1", spec("grp", group))])
    assert obs.record.tasks[f"grp-{group}-a1"].jobid == group
    assert not obs.complained
    obs.finish()
    record, _ = runrecord.load(obs.directory)
    assert record.tasks[f"grp-{group}-a1"].jobid == group


def test_progress_lines_when_something_changed_at_most_every_interval(run):
    obs, clock, log = run
    obs.submitted("p-job", "p", [(f"a-{i}-a1", spec("a", i)) for i in range(4)])
    said = len(log.lines)
    facts = SimpleNamespace(allocation_state="resizing", target_dedicated_nodes=2, target_low_priority_nodes=0,
                            resize_errors=[])
    batch = SimpleNamespace(pool_nodes=lambda pool: nodes, task_counts=lambda job: tasks, get_pool=lambda pool: facts)
    nodes, tasks = [node("n1", "creating", T0, T0)], counts(active=4)
    clock.now = T0 + 1
    obs.observe(batch)
    assert log.lines[said:] == ["SAJE progress: pool p (Standard_D2s_v5): nodes 1 allocating; tasks 4 queued, 0 running,"
                                " 0 done; waiting: pool resizing (1 node(s) allocating or booting); cost so far 0.0000 USD"]
    clock.now = T0 + 2
    nodes = [node("n1", "idle", T0, T0 + 1.5)]
    obs.observe(batch)  # changed, but within 5 s of the last line
    assert len(log.lines) == said + 1
    clock.now = T0 + 7
    obs.observe(batch)  # unchanged since the last poll, but not since the last line: said now
    assert log.lines[-1].startswith("SAJE progress: pool p (Standard_D2s_v5): nodes 1 idle; tasks 4 queued")
    clock.now = T0 + 20
    obs.observe(batch)  # nothing changed: nothing said
    assert len(log.lines) == said + 2
    assert log.lines[-1].endswith(f"cost so far {7 * PRICE / 3600:.4f} USD")


def test_no_progress_lines_with_interval_zero(tmp_path):
    log = Log()
    obs = RunObserver("r", tmp_path, log, progress_interval=0, price_loader=lambda sizes: table())
    obs.pool_added("p", "Standard_D2s_v5", spot=False, batch_job="p-job", created=True, mpi=False)
    obs.observe(SimpleNamespace(pool_nodes=lambda p: [], task_counts=lambda j: counts(), get_pool=None))
    assert not [line for line in log.lines if line.startswith("SAJE progress")]


# ----------------------------------------------------------------------------- record and summary
def _a_run(obs, clock, ahead: float = 0.0, scale: float = 1.0):
    """Two nodes: n1 from T0 to a pool deletion at T0+100; n2 allocated at T0+10, preempted
    (Spot) at T0+40, gone by the poll at T0+60. Three tasks: one ok, one failed, one retried.
    Batch's timestamps are on a service clock `ahead` seconds ahead of this machine's, running
    `scale` times faster (a time-scaled emulator)."""
    def b(x: float) -> float:  # T0 + x of this machine's clock, on the service's
        return T0 + ahead + x * scale

    obs.pool_added("s", "Standard_D2s_v5", spot=True, batch_job="s-job", created=True, mpi=False)
    obs.submitted("p-job", "p", [("a-1-a1", spec("a", 1)), ("a-2-a1", spec("a", 2))])
    obs.submitted("s-job", "s", [("b-3-a2", spec("b", 3, attempt=2))])
    polls = {
        T0 + 20: ({"p": [node("n1", "running", b(0), b(15))], "s": [node("n2", "running", b(10), b(12), False)]},
                  counts(running=2)),
        T0 + 50: ({"p": [node("n1", "idle", b(0), b(45))], "s": [node("n2", "preempted", b(10), b(40), False)]},
                  counts(completed=1)),
        T0 + 60: ({"p": [node("n1", "idle", b(0), b(45))], "s": []}, counts(completed=1)),
    }
    for t, (nodes, tasks) in polls.items():
        clock.now = t
        if ahead or scale != 1.0:
            obs.service_clock(ClockMap(b(t - T0), t, scale))
        obs.observe(SimpleNamespace(pool_nodes=lambda pool: nodes[pool], task_counts=lambda job: tasks,
                                    get_pool=lambda pool: None))
    obs.finished(completed_task("a-1-a1", b(15), b(45), "n1"))
    obs.finished(completed_task("a-2-a1", b(16), b(30), "n1", exit_code=2, retries=1), log_dir=Path("logs/a-2"))
    obs.finished(completed_task("b-3-a2", b(12), b(38), "n2", requeues=1), peak_memory_mb=512.0)
    clock.now = T0 + 100
    obs.pools_deleted(["p", "s"])
    clock.now = T0 + 101


@pytest.mark.parametrize("ahead, scale", [(2 * 86400.0, 1.0), (3600.0, 600.0)])
def test_a_service_clock_ahead_or_faster_gives_the_same_summary(tmp_path, ahead, scale):
    """A skewed client, or a time-scaled emulator, puts Batch's timestamps hours ahead of this
    machine's clock (and spreads them): node-hours, cost and task times come out as with clocks
    that agree."""
    summaries = []
    for offset, rate in ((0.0, 1.0), (ahead, scale)):
        clock, log = Clock(), Log()
        obs = RunObserver("r1", tmp_path / f"{offset}-{rate}", log, endpoint="http://127.0.0.1:1", emulated=True,
                          progress_interval=5, clock=clock, price_loader=lambda sizes: table())
        obs.pool_added("p", "Standard_D2s_v5", spot=False, batch_job="p-job", created=True, mpi=False)
        _a_run(obs, clock, offset, rate)
        summaries.append(obs.finish())
    assert _rounded(summaries[1]) == _rounded(summaries[0])
    assert summaries[0]["cost"]["unpricedNodeHours"] > 0 and summaries[0]["cost"]["known"] > 0


def _rounded(value):
    """A summary with its numbers rounded (a scaled clock's arithmetic differs in the last bits)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_summary_of_a_run(run):
    obs, clock, log = run
    _a_run(obs, clock)
    summary = obs.finish()
    n2 = obs.record.nodes["s/n2"]
    assert n2.ended == pytest.approx(T0 + 55)  # between the poll that saw it (50) and the one that did not (60)
    assert n2.preempted_at == T0 + 40  # Batch's stateTransitionTime: billing ends there
    assert summary["nodeHours"] == [
        {"vmSize": "standard_d2s_v5", "priority": "dedicated", "nodes": 1, "nodeHours": round(100 / 3600, 6), "pricePerHour": PRICE},
        {"vmSize": "standard_d2s_v5", "priority": "spot", "nodes": 1, "nodeHours": round(30 / 3600, 6), "pricePerHour": None},
    ]
    assert summary["cost"]["known"] == pytest.approx(100 / 3600 * PRICE, abs=1e-6)
    assert summary["cost"]["total"] is None and summary["cost"]["unpricedNodeHours"] == pytest.approx(30 / 3600, abs=1e-6)
    assert summary["tasks"] == {"total": 3, "succeeded": 2, "failed": 1, "unfinished": 0}
    assert summary["retries"] == {"batch": 1, "snakemake": 1}
    assert summary["preemptions"] == {"nodes": 1, "taskRequeues": 1}
    assert summary["firstRunningAfterSeconds"] == 12.0
    written = json.loads((obs.directory / runrecord.SUMMARY_FILE).read_text())
    assert written == json.loads(json.dumps(summary))
    text = log.lines[-1]
    assert text.startswith("SAJE run summary (run r1, 1.7 min):")
    assert "estimated cost: at least 0.0027 USD" in text and "the emulator itself costs nothing" in text
    assert "saje report r1" in text
    assert obs.finish() is None  # once


def test_records_round_trip_and_feed_the_report(run):
    obs, clock, log = run
    _a_run(obs, clock)
    summary = obs.finish()
    record, again = runrecord.load(obs.directory)
    assert again == json.loads(json.dumps(summary))
    assert runrecord.summarize(record) == summary
    assert record.tasks["a-2-a1"].log_dir == "logs/a-2" and record.tasks["b-3-a2"].peak_memory_mb == 512.0
    written = json.loads((obs.directory / runrecord.RECORDS_FILE).read_text())
    task = next(t for t in written["tasks"] if t["task_id"] == "b-3-a2")
    assert task["peak_memory_mb"] == 512.0 and task["started"] == "2025-06-15T15:06:52.000Z"  # numbers stay numbers
    page = report.render(record, summary, obs.directory)
    for task_id in record.tasks:
        assert task_id in page
    assert 'id="saje-timeline"' in page and 'id="saje-nodes"' in page and 'id="saje-cost"' in page
    assert "https://cdn" not in page.split("</script>", 1)[1]  # plotly.js is inline, nothing fetched


def test_node_addresses_outlive_the_nodes(run):
    """A failed MPI task's digest names its nodes' addresses even when they left the pool before
    its completion was seen: the addresses the polls saw are kept, and written with the record."""
    obs, clock, _ = run
    pool = obs.record.pools["p"]
    obs.update_pool(pool, [node("n1", "running", T0, T0, ip="10.0.0.4"), node("n2", "running", T0, T0, ip="10.0.0.5")],
                    counts(running=1), T0 + 5)
    obs.update_pool(pool, [node("n2", "idle", T0, T0 + 8, ip=None)], counts(completed=1), T0 + 10)  # n1 gone
    assert obs.node_addresses("p") == {"n1": "10.0.0.4", "n2": "10.0.0.5"}
    assert obs.node_addresses("other") == {}
    obs.save()
    record, _ = runrecord.load(obs.directory)
    assert record.nodes["p/n1"].ip_address == "10.0.0.4"


def test_a_restored_spot_node_is_billed_again_from_its_return():
    n = runrecord.NodeRecord("p", "n", "standard_d2s_v5", False, T0 + 10, T0 + 10, T0 + 90,
                             states=[(T0 + 10, "creating"), (T0 + 15, "idle"), (T0 + 40, "preempted"), (T0 + 70, "idle")])
    assert n.billed(T0, T0 + 100) == pytest.approx(30 + 30)
    assert n.billed(T0 + 50, T0 + 100) == pytest.approx(30)  # only the run's share of a pool it did not create
    n.ended = T0 + 80
    assert n.billed(T0, T0 + 100) == pytest.approx(30 + 10)


def test_lanes_keep_overlapping_tasks_of_a_node_apart():
    T = runrecord.TaskRecord
    tasks = [T("x", "j", "p", "r", 1, 1, T0, node_id="n", started=T0, ended=T0 + 10),
             T("y", "j", "p", "r", 2, 1, T0, node_id="n", started=T0 + 5, ended=T0 + 15),
             T("z", "j", "p", "r", 3, 1, T0, node_id="n", started=T0 + 10, ended=T0 + 20),
             T("w", "j", "p", "r", 4, 1, T0, node_id="m", started=T0 + 1, ended=T0 + 2)]
    assert report.lanes(tasks) == {"x": ("n", 0), "y": ("n", 1), "z": ("n", 0), "w": ("m", 0)}


def test_node_series_adds_pools_up_and_cost_curve_rises(run):
    obs, clock, _ = run
    _a_run(obs, clock)
    obs.finish()
    times, series = report.node_series(obs.record)
    at_20 = times.index(T0 + 20)
    assert series["running"][at_20] == 2 and series["idle"][-1] == 0
    _, costs = report.cost_series(obs.record)
    assert costs[0] == 0.0 and costs == sorted(costs) and costs[-1] == pytest.approx(100 / 3600 * PRICE, abs=1e-6)


def test_record_keeping_trouble_never_stops_the_run(run):
    obs, _, log = run
    broken = SimpleNamespace(pool_nodes=lambda pool: [SimpleNamespace(id="n")], task_counts=lambda job: counts())
    obs.observe(broken)
    obs.observe(broken)
    obs.finished(SimpleNamespace(id=None))
    complaints = [line for line in log.lines if "keeping the run's record failed" in line]
    assert len(complaints) == 1


def test_peak_memory_from_benchmark_files(tmp_path):
    bench = tmp_path / "b.tsv"
    bench.write_text("s\th:m:s\tmax_rss\tmax_vms\n1.2\t0:00:01\t120.5\t300\n1.0\t0:00:01\tNA\t1\n")
    assert observer.peak_memory_mb([bench, tmp_path / "missing.tsv"]) == 120.5
    assert observer.peak_memory_mb([]) is None


def test_saje_report_command_picks_the_latest_run_and_names_the_others(run, tmp_path, capsys):
    from snakemake_executor_saje.cli import main

    assert main(["--json", "report", "--dir", str(tmp_path)]) == 3
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "RunNotFound"
    obs, clock, _ = run
    _a_run(obs, clock)
    obs.finish()
    assert main(["--json", "report", "--dir", str(tmp_path)]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["run"] == "r1" and Path(made["report"]) == obs.directory / report.REPORT_FILE
    assert Path(made["report"]).read_text().startswith("<!DOCTYPE html>")
    assert main(["--json", "report", "r0", "--dir", str(tmp_path)]) == 3
    assert "latest last: r1" in json.loads(capsys.readouterr().out)["error"]["message"]
