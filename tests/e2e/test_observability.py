"""A run seen while it runs and after (issue 12): progress lines in Snakemake's log before the first
job finishes, a summary whose node-hours and cost agree with the emulator's own record of its
nodes' lifetimes, and `saje report`'s page rendered in headless Chromium with every task on it.

One run serves the module: six benchmarked jobs and one that fails (--keep-going), on the
executor tests' emulator, with real Snakemake, SDK, HTTP and Azurite.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from snakemake_executor_saje import catalogue, runrecord
from snakemake_executor_saje.cli import client_environment
from tests.e2e.chromium import render
from tests.e2e.conftest import VENV_BIN, assert_nothing_left, run_snakemake, write_workflow

pytestmark = pytest.mark.e2e

POLL = 1.0  # --saje-poll-interval of the run
SNAKEFILE = """
rule all:
    input: expand("out/{i}.txt", i=range(6)), "out/broken.txt"

rule work:
    output: "out/{i}.txt"
    benchmark: "bench/{i}.tsv"
    shell: "sleep 2; echo {wildcards.i} > {output}"

rule broken:
    output: "out/broken.txt"
    shell: "echo doomed >&2; exit 3"
"""


@dataclass
class Run:
    workdir: Path
    log: list[str]
    directory: Path  # .snakemake/saje_logs/<run>
    record: runrecord.RunRecord
    summary: dict
    lifetimes: list[dict]  # the emulator's record of the run's nodes
    env: dict[str, str]


@pytest.fixture(scope="module")
def run(executor_emulator, tmp_path_factory) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE"))}
    env.update(client_environment(executor_emulator))
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
    workdir = write_workflow(tmp_path_factory.mktemp("observed"), SNAKEFILE)
    done = run_snakemake(workdir, env, "--keep-going", "--saje-poll-interval", str(POLL),
                         "--saje-progress-interval", "1")
    assert done.returncode == 1, done.stdout  # the broken rule fails the run; the others finished
    assert_nothing_left(executor_emulator)
    [directory] = [p.parent for p in (workdir / ".snakemake" / "saje_logs").glob(f"*/{runrecord.RECORDS_FILE}")]
    record, summary = runrecord.load(directory)
    assert summary is not None
    pools = set(record.pools)
    # The emulator's clock runs TIME_SCALE times faster than ours: its lifetimes, on this host's clock.
    clock = executor_emulator.state.clock
    on_host = runrecord.ClockMap(runrecord.seconds(clock.iso_now()), time.time(), clock.scale)
    lifetimes = [{**n, "allocated": on_host.to_local(runrecord.seconds(n["allocationTime"])),
                  "removed": on_host.to_local(runrecord.seconds(n["removalTime"])) if n["removalTime"] else None}
                 for n in executor_emulator.state.node_lifetimes() if n["poolId"] in pools]
    return Run(workdir, done.stdout.splitlines(), directory, record, summary, lifetimes, env)


def test_progress_lines_come_before_the_first_job_finishes(run: Run):
    first_finish = next(i for i, line in enumerate(run.log) if line.startswith("Finished jobid"))
    before = run.log[:first_finish]
    submitted = [line for line in before if re.match(r"SAJE: \d+ task\(s\) submitted to Batch job \S+-job \(pool ", line)]
    assert submitted, "\n".join(run.log)
    assert any("saje status --watch" in line for line in before)
    progress = [line for line in before if line.startswith("SAJE progress: pool ")]
    assert any(re.search(r"nodes \d+ (allocating|booting|idle|running)", line) for line in progress), "\n".join(before)
    # Tasks in flight are counted; not necessarily with "0 done": the broken rule's task fails at
    # once and, on a loaded machine, can be counted before the first progress line is written.
    counts = [re.search(r"tasks (\d+) queued, (\d+) running, (\d+) done", line) for line in progress]
    assert any(c and int(c[1]) + int(c[2]) > 0 for c in counts), "\n".join(before)
    assert all("cost so far" in line for line in progress)
    # every task is named by a submission line (or counted in its "and N more")
    named = sum(int(re.match(r"SAJE: (\d+) task", line).group(1)) for line in submitted)
    assert named == len(run.record.tasks) == 7


def test_summary_is_logged_and_counts_the_outcomes(run: Run):
    text = "\n".join(run.log)
    assert "SAJE run summary (run " in text and f"saje report {run.record.run_id}" in text
    assert run.summary["tasks"] == {"total": 7, "succeeded": 6, "failed": 1, "unfinished": 0}
    assert run.summary["firstRunningAfterSeconds"] > 0
    assert run.summary["data"]["uploadedBytes"] > 0 and run.summary["data"]["downloadedBytes"] > 0
    broken = next(t for t in run.record.tasks.values() if t.rule == "broken")
    assert (broken.outcome, broken.exit_code, broken.failure_code) == ("failed", 1, "FailureExitCode")  # Snakemake's
    assert (run.workdir / broken.log_dir / "stderr.txt").exists()
    assert all(t.peak_memory_mb is not None for t in run.record.tasks.values() if t.rule == "work")


def test_node_hours_and_cost_agree_with_the_emulators_node_lifetimes(run: Run):
    """Each node's start is Batch's allocationTime; its end is known to within the polls around it
    (a node autoscale removed) or is the pool's deletion: the emulator's removal time must fall
    there, within one poll interval."""
    ours = {n.node_id: n for n in run.record.nodes.values()}
    theirs = {n["nodeId"]: n for n in run.lifetimes}
    assert set(ours) == set(theirs) and ours
    total_ours = total_theirs = slack = 0.0
    for node_id, node in ours.items():
        emulated = theirs[node_id]
        allocated, removed = emulated["allocated"], emulated["removed"]
        assert removed is not None, f"node {node_id} is still in a pool"
        assert node.allocated == pytest.approx(allocated, abs=0.01)
        if node.missing_at is not None:  # autoscale took it: gone between two polls
            assert node.last_seen - 0.05 <= removed <= node.missing_at + 0.05
            uncertainty = (node.missing_at - node.last_seen) / 2
        else:  # the run deleted its pool
            uncertainty = POLL
        assert abs(node.ended - removed) <= uncertainty + 0.05, (node_id, node.ended, removed)
        total_ours += node.billed(run.record.started, run.record.ended) / 3600
        total_theirs += (removed - allocated) / 3600
        slack += (uncertainty + 0.05) / 3600
    [row] = run.summary["nodeHours"]
    assert (row["vmSize"], row["priority"], row["nodes"]) == ("standard_d2s_v5", "dedicated", len(ours))
    assert row["nodeHours"] == pytest.approx(total_ours, abs=1e-5)
    assert abs(row["nodeHours"] - total_theirs) <= slack
    price = catalogue.hourly_price("Standard_D2s_v5")
    assert run.summary["cost"]["total"] == pytest.approx(row["nodeHours"] * price, abs=1e-5)
    assert run.summary["cost"]["prices"]["kind"] == "bundled"  # the emulator: no network


def test_report_renders_in_headless_chromium_with_every_task(run: Run, tmp_path):
    done = subprocess.run([str(VENV_BIN / "saje"), "--json", "report"], cwd=run.workdir, env=run.env, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    page = Path(run.workdir / json.loads(done.stdout)["report"])
    assert page.parent == run.directory
    shown = render(page, ready="document.querySelectorAll('#saje-timeline .main-svg').length > 0"
                               " && document.querySelectorAll('#saje-cost .main-svg').length > 0",
                   evaluate="""() => ({
                       tasks: document.getElementById('saje-timeline').data.filter(t => t.meta === 'tasks')
                           .flatMap(t => t.customdata.map(c => c[0])),
                       bars: document.querySelectorAll('#saje-timeline .bars .point').length,
                       links: [...document.querySelectorAll('a')].map(a => a.getAttribute('href')),
                   })""")
    assert shown.errors == [] and shown.remote_requests == []
    assert sorted(shown.value["tasks"]) == sorted(run.record.tasks)  # every task, the failed one too
    assert shown.value["bars"] >= len(run.record.tasks)
    assert shown.distinct_colours() > 50  # drawn, not blank
    broken = next(t for t in run.record.tasks.values() if t.rule == "broken")
    for link in shown.value["links"]:
        assert (page.parent / link).resolve().exists()
    assert any(link.endswith(f"{broken.task_id}/stderr.txt") for link in shown.value["links"])
    (tmp_path / "report.png").write_bytes(shown.screenshot)
