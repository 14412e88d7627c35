"""`snakemake --executor saje` end to end on the emulator, run as a user runs it (a subprocess).

Each test checks the account afterwards: no Batch job and no pool left (`clean_account`).
What a cloud test would do out of band (preempt a Spot node, turn throttling on, check that a
task's process is gone) goes through the emulator object; everything else is the real SDK.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.e2e.conftest import SNAKEMAKE, run_snakemake, start_snakemake, write_workflow

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FANOUT = ROOT / "workflows" / "examples" / "fanout"
TASK_CREATE = "POST /jobs/{}/addtaskcollection"
POOL_CREATE = "POST /pools"


def _delta(before: dict[str, int], after: dict[str, int], kind: str) -> int:
    return after.get(kind, 0) - before.get(kind, 0)


def _tasks(client) -> list:
    """Every task of every job on the account (the test's out-of-band view)."""
    return [t for job in client.list_jobs() for t in client.list_tasks(job.id)]


# ----------------------------------------------------------------------------- the fan-out
FANOUT_SAMPLES = 12  # of the example's 60: the same paths, a fifth of the CPU (the whole example is README's job)


def test_fanout_example_matches_a_local_run(tmp_path, saje_env, clean_account):
    remote, local = tmp_path / "remote", tmp_path / "local"
    for target in (remote, local):
        shutil.copytree(FANOUT, target, ignore=shutil.ignore_patterns(".snakemake", "results"))
        for extra in sorted((target / "data").glob("sample_*.txt"))[FANOUT_SAMPLES:]:
            extra.unlink()
    # A clone, as a user has it: the Snakefile globs data/ when it is parsed, on the node too, and
    # Snakemake's source archive carries the files git tracks (see docs/usage.md, data routes).
    subprocess.run(["git", "init", "-q"], cwd=remote, check=True)
    subprocess.run(["git", "add", "-A"], cwd=remote, check=True)
    here = subprocess.run([SNAKEMAKE, "--cores", "2", "--quiet", "all"], cwd=local, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
    assert here.returncode == 0, here.stdout

    run = run_snakemake(remote, saje_env, "--workflow-profile", str(ROOT / "profiles" / "local"),
                        "--saje-max-nodes", "3", timeout=400)

    assert run.returncode == 0, run.stdout[-4000:]
    summary = (remote / "results" / "summary.tsv").read_text()
    assert summary == (local / "results" / "summary.tsv").read_text()
    assert len(summary.splitlines()) > 1
    assert len(list((remote / "results" / "counts").glob("*.tsv"))) == FANOUT_SAMPLES
    assert "deleted" in run.stdout  # SAJE says what it cleaned up


# ----------------------------------------------------------------------------- failures
FAILING = """
rule all:
    input: "done.txt"

rule broken:
    output: "done.txt"
    shell: "echo 'the-input-is-garbage' >&2; exit 3"
"""


def test_failing_rule_shows_rule_batch_code_and_stderr_and_leaves_nothing(tmp_path, saje_env, clean_account):
    workdir = write_workflow(tmp_path / "wf", FAILING)

    run = run_snakemake(workdir, saje_env, "--retries", "1")

    assert run.returncode != 0
    out = run.stdout
    assert "rule broken" in out
    assert "FailureExitCode" in out  # the Batch failureInfo code
    assert "the-input-is-garbage" in out  # the task's stderr, in the error itself
    # --retries: Snakemake's second attempt is a new task; both attempts' logs were fetched.
    logs = workdir / ".snakemake" / "saje_logs"
    attempts = sorted(p.name for p in logs.glob("*/*") if p.is_dir())
    assert attempts == ["broken-1-a1", "broken-1-a2"], attempts
    assert "the-input-is-garbage" in next(logs.glob("*/broken-1-a2/stderr.txt")).read_text()


@pytest.mark.parametrize("resources, complaint", [
    ("threads: 8", "asks for 8 threads, but pool"),
    ("resources: mem_mb=500000", "asks for mem_mb=500000"),
])
def test_rule_larger_than_any_pool_is_refused_before_submission(tmp_path, saje_env, clean_account, resources, complaint):
    workdir = write_workflow(tmp_path / "wf", f"""
        rule huge:
            output: "huge.txt"
            {resources}
            shell: "touch {{output}}"
        """)
    before = clean_account.request_counts

    run = run_snakemake(workdir, saje_env)

    assert run.returncode != 0
    assert "SAJE cannot run rule huge" in run.stdout and complaint in run.stdout, run.stdout[-3000:]
    assert "Standard_D2s_v5" in run.stdout  # what the pool has
    after = clean_account.request_counts
    assert _delta(before, after, POOL_CREATE) == 0 and _delta(before, after, TASK_CREATE) == 0


def test_pool_batch_refuses_is_an_error_naming_the_property(tmp_path, saje_env, clean_account):
    """A request SAJE cannot judge but Batch refuses: a node agent SKU that does not fit the image."""
    workdir = write_workflow(tmp_path / "wf", FAILING)

    run = run_snakemake(workdir, saje_env, "--saje-node-agent-sku", "batch.node.el 8")

    assert run.returncode != 0
    assert "Azure Batch refused pool" in run.stdout, run.stdout[-3000:]
    assert "InvalidPropertyValue" in run.stdout and "PropertyName=nodeAgentSKUId" in run.stdout


# ----------------------------------------------------------------------------- Slurm resources
def test_slurm_resources_are_carried_and_ignored_with_one_log_line(tmp_path, saje_env, clean_account):
    """A profile written for snakemake-executor-plugin-slurm (account, partition, QOS, extra sbatch
    flags, constraints) runs unchanged: the node's Snakemake gets them, Batch ignores them."""
    workdir = write_workflow(tmp_path / "wf", """
        rule all:
            input: "a.txt", "b.txt"

        rule a:
            output: "a.txt"
            resources: constraint="skylake"
            shell: "echo {resources.slurm_partition} {resources.constraint} > {output}"

        rule b:
            output: "b.txt"
            shell: "echo {resources.slurm_partition} {resources.slurm_account} {resources.slurm_extra} > {output}"
        """)

    run = run_snakemake(workdir, saje_env,
                        "--default-resources", "slurm_account=proj123", "slurm_partition=compute", "qos=normal",
                        "slurm_extra='--mail-type=ALL'", "constraint=none", "mem_mb_per_cpu=1800",
                        "--set-resources", "b:slurm_partition=bigmem", "b:slurm_extra='--nice=150'")

    assert run.returncode == 0, run.stdout[-3000:]
    assert (workdir / "a.txt").read_text() == "compute skylake\n"  # carried to the node as given
    assert (workdir / "b.txt").read_text() == "bigmem proj123 --nice=150\n"
    said = [line for line in run.stdout.splitlines() if "are Slurm's" in line]
    assert len(said) == 1, said
    for name in ("constraint", "mem_mb_per_cpu", "qos", "slurm_account", "slurm_extra", "slurm_partition"):
        assert name in said[0]


# ----------------------------------------------------------------------------- Ctrl-C
SLOW = """
rule all:
    input: expand("slow_{{i}}.txt", i=range(3))

rule slow:
    output: "slow_{{i}}.txt"
    params: pids="{pids}"
    shell: "echo $$ >> {{params.pids}}; sleep 120; touch {{output}}"
"""


def test_ctrl_c_terminates_tasks_and_deletes_job_and_pool(tmp_path, saje_env, clean_account, monkeypatch):
    pids = tmp_path / "pids.txt"
    workdir = write_workflow(tmp_path / "wf", SLOW.format(pids=pids))
    client = clean_account.client()
    # Out of band, as a cloud test would read the account's task events: what the job's tasks
    # and the job itself were when the run asked Batch to delete the job.
    state, at_delete = clean_account.state, {}
    original_delete = state.delete_job

    def delete_job(job_id: str) -> None:
        with state.lock:
            job = state.job(job_id)
            at_delete[job_id] = (job.state, (job.rest.get("executionInfo") or {}).get("terminateReason"),
                                 {t.id: (t.state, (t.rest["executionInfo"].get("failureInfo") or {}).get("code"))
                                  for t in job.tasks.values()})
        original_delete(job_id)

    monkeypatch.setattr(state, "delete_job", delete_job)
    proc = start_snakemake(workdir, saje_env)
    try:
        running = wait_for(lambda: [t for t in _tasks(client) if t.state == "running"], 90,
                           what="tasks of the run to be running")
        assert running and list(client.list_pools())
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) >= len(running), 30,
                 what="the rule's shell to start")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
        client.close()
    assert proc.returncode != 0
    assert "could not terminate" not in out, out[-3000:]
    assert "SAJE: pool" in out and "deleted" in out, out[-3000:]
    # Before the job was deleted, Batch had terminated it and ended its running tasks as a user's
    # request ends them (completed, TaskEnded), with SAJE's reason on the job.
    [(job_state, reason, tasks)] = at_delete.values()
    assert job_state == "completed" and reason == "SAJE: run cancelled", at_delete
    ended = {t.id for t in running}
    assert ended <= set(tasks) and all(tasks[t] == ("completed", "TaskEnded") for t in ended), tasks
    assert re.search(r"SAJE: Batch job \S+ terminated; its running tasks were ended", out), out[-3000:]
    # The tasks' processes are gone (what "terminated" means on a node).
    for pid in map(int, pids.read_text().split()):
        wait_for(lambda: not _alive(pid), 15, what=f"task process {pid} to end")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ----------------------------------------------------------------------------- credentials
@pytest.mark.parametrize("content, mode, complaint", [
    ('{"credentials": [{"name": "ci", "batch_account_url": "http://127.0.0.1:1/x",'
     ' "batch_account_name": "x", "batch_account_key": "c2VjcmV0LXZhbHVlLTEyMzQ1Ng=="}]}', 0o644,
     "readable or writable by group or others"),
    ('{"credentials": [{"name": "ci", "batch_account_key": "c2VjcmV0LXZhbHVlLTEyMzQ1Ng==" ', 0o600,
     "is not valid JSON"),
], ids=["world-readable", "corrupt"])
def test_bad_credentials_file_is_a_clear_error_and_nothing_is_submitted(tmp_path, saje_env, clean_account,
                                                                        content, mode, complaint):
    secrets = tmp_path / "saje.json"
    secrets.write_text(content)
    secrets.chmod(mode)
    env = {k: v for k, v in saje_env.items() if k not in ("SNAKEMAKE_SAJE_ACCOUNT_NAME", "SNAKEMAKE_SAJE_ACCOUNT_KEY")}
    env.update(SNAKEMAKE_SAJE_CREDENTIAL_PROFILE="ci", SNAKEMAKE_SAJE_CREDENTIALS_FILE=str(secrets))
    workdir = write_workflow(tmp_path / "wf", FAILING)
    before = clean_account.request_counts

    run = run_snakemake(workdir, env)

    assert run.returncode != 0
    assert complaint in run.stdout and str(secrets) in run.stdout, run.stdout[-3000:]
    assert "c2VjcmV0LXZhbHVlLTEyMzQ1Ng==" not in run.stdout
    assert clean_account.request_counts == before  # not one Batch call


# ----------------------------------------------------------------------------- scaling
FOUR = """
rule all:
    input: expand("out_{{i}}.txt", i=range(4))

rule work:
    output: "out_{{i}}.txt"
    shell: "sleep {seconds}; echo {{wildcards.i}} > {{output}}"
"""


class PoolWatcher(threading.Thread):
    """Samples every pool's currentDedicatedNodes/currentLowPriorityNodes through the SDK."""

    def __init__(self, emulator):
        super().__init__(daemon=True)
        self.client = emulator.client()
        self.samples: list[tuple[str, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pool in self.client.list_pools(select=["id", "currentDedicatedNodes", "currentLowPriorityNodes"]):
                self.samples.append((pool.id, pool.current_dedicated_nodes or 0, pool.current_low_priority_nodes or 0))
            time.sleep(0.2)

    def finish(self) -> None:
        self.stop.set()
        self.join(5)
        self.client.close()


def test_autoscale_pool_grows_from_zero_and_shrinks_back(tmp_path, saje_env, clean_account):
    """profiles/local's values, Azure's 5-minute interval included, on the time-scaled emulator: the
    executor sends a loopback endpoint the interval it would send Azure, and the pool still moves."""
    workdir = write_workflow(tmp_path / "wf", FOUR.format(seconds=3))
    watcher = PoolWatcher(clean_account)
    watcher.start()
    try:
        run = run_snakemake(workdir, saje_env, "--workflow-profile", str(ROOT / "profiles" / "local"),
                            "--saje-max-nodes", "2", "--saje-keep-pool")
        assert run.returncode == 0, run.stdout[-3000:]
        assert "kept (--saje-keep-pool)" in run.stdout
        pool_id = wait_for(lambda: watcher.samples and watcher.samples[-1][0], 5, what="a pool sample")
        assert watcher.client.get_pool(pool_id).auto_scale_evaluation_interval == timedelta(minutes=5)
        # Idle now: the formula takes the pool back to 0 nodes.
        wait_for(lambda: watcher.samples[-1] == (pool_id, 0, 0), 60, what=f"{pool_id} to shrink to 0 nodes")
    finally:
        watcher.finish()
        client = clean_account.client()
        for pool in client.list_pools():
            client.begin_delete_pool(pool.id)
        client.close()
    nodes = [dedicated for pid, dedicated, _ in watcher.samples if pid == pool_id]
    assert nodes[0] == 0, nodes[:5]  # created with no node
    assert max(nodes) == 2, nodes  # four 1-slot tasks on 2-slot nodes, max 2 nodes
    assert nodes[-1] == 0


def test_preempted_spot_node_requeues_the_task_and_the_run_succeeds(tmp_path, saje_env, clean_account):
    workdir = write_workflow(tmp_path / "wf", FOUR.format(seconds=4))
    client = clean_account.client()
    proc = start_snakemake(workdir, saje_env, "--preemptible-rules", "work", "--preemptible-retries", "1")
    try:
        task = wait_for(lambda: next((t for t in _tasks(client) if t.state == "running" and t.node_info), None), 90,
                        what="a task running on a Spot node")
        pool_id, node_id = task.node_info.pool_id, task.node_info.node_id
        assert client.get_node(pool_id, node_id).is_dedicated is False
        clean_account.preempt(pool_id, node_id)
        job_id = next(iter(client.list_jobs())).id
        requeued = wait_for(lambda: (client.get_task(job_id, task.id).execution_info.requeue_count or 0) >= 1, 20,
                            what=f"task {task.id} to be requeued")
        assert requeued
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        client.close()
    assert proc.returncode == 0, out[-3000:]
    assert sorted(p.name for p in workdir.glob("out_*.txt")) == [f"out_{i}.txt" for i in range(4)]
    assert "-a2" not in out  # Batch requeued the task; Snakemake never had to retry it
    # The run's summary (issue 12) counts the requeue and the Spot node-hours, priced as unknown
    # (the bundled table has no Spot prices): not free.
    [summary] = [json.loads(p.read_text()) for p in workdir.glob(".snakemake/saje_logs/*/summary.json")]
    assert summary["preemptions"]["taskRequeues"] >= 1 and summary["retries"]["snakemake"] == 0
    assert {row["priority"] for row in summary["nodeHours"]} == {"spot"}
    assert summary["cost"]["total"] is None and summary["cost"]["unpricedNodeHours"] > 0


# ----------------------------------------------------------------------------- throttling
THROTTLED = """
localrules: all, seed

rule all:
    input: expand("result_{{i}}.txt", i=range(6))

rule seed:
    output: "seed.txt"
    shell: "echo seed > {{output}}"

rule step:
    input: "seed.txt"
    output: "result_{{i}}.txt"
    log: "logs/step_{{i}}.log"
    benchmark: "bench/step_{{i}}.tsv"
    params: ledger="{ledger}"
    shell: "echo {{wildcards.i}} >> {{params.ledger}}; cat {{input}} > {{output}}; echo ok > {{log}}"
"""


def test_throttling_429_and_503_the_run_succeeds_without_duplicate_tasks(tmp_path, saje_env, clean_account):
    ledger = tmp_path / "ledger.txt"
    workdir = write_workflow(tmp_path / "wf", THROTTLED.format(ledger=ledger))
    faults = clean_account.faults
    faults.update(throttle_count=6, throttle_status=429, retry_after_seconds=1)
    before = clean_account.request_counts

    def throttle_again_once_tasks_exist():
        wait_for(lambda: _delta(before, clean_account.request_counts, TASK_CREATE) > 0, 90, what="tasks")
        faults.update(throttle_count=6, throttle_status=503)

    second = threading.Thread(target=throttle_again_once_tasks_exist, daemon=True)
    second.start()
    run = run_snakemake(workdir, saje_env)
    second.join(5)

    assert run.returncode == 0, run.stdout[-4000:]
    assert faults.throttle_count == 0  # every injected 429 and 503 was met
    ran = ledger.read_text().split()
    assert sorted(ran) == [str(i) for i in range(6)], ran  # each task ran exactly once
    for i in range(6):
        assert (workdir / f"result_{i}.txt").read_text() == "seed\n"
        assert (workdir / "logs" / f"step_{i}.log").read_text() == "ok\n"
        assert (workdir / "bench" / f"step_{i}.tsv").exists()
