"""Issue 13 on the emulator: the start task hook, the run-wide wall-clock limit of SAJE's Batch
jobs, pools going back to zero nodes, and `.saje/` staying out of git and the workflow sources."""
from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest
from azure.batch import models

from snakemake_executor_saje import statedir
from tests.conftest import completed, make_job, wait_for
from tests.e2e.conftest import run_snakemake, write_workflow

pytestmark = pytest.mark.e2e


def test_a_tool_the_start_task_installs_is_used_by_a_rule(tmp_path, saje_env, clean_account):
    script = tmp_path / "install-tool.sh"
    script.write_text(
        "set -eu\n"
        'mkdir -p "$AZ_BATCH_NODE_SHARED_DIR/bin"\n'
        'printf \'#!/bin/sh\\necho "mytool says hi; $(cat "$AZ_BATCH_NODE_SHARED_DIR/from-command")"\\n\' '
        '> "$AZ_BATCH_NODE_SHARED_DIR/bin/mytool"\n'
        'chmod +x "$AZ_BATCH_NODE_SHARED_DIR/bin/mytool"\n')
    workdir = write_workflow(tmp_path / "wf", """
        rule all:
            output: "out.txt"
            shell: "$AZ_BATCH_NODE_SHARED_DIR/bin/mytool > {output}"
    """)
    run = run_snakemake(workdir, saje_env,
                        "--saje-start-task", 'echo "the command ran first" > "$AZ_BATCH_NODE_SHARED_DIR/from-command"',
                        "--saje-start-task-script", str(script))

    assert run.returncode == 0, run.stdout[-4000:]
    assert (workdir / "out.txt").read_text() == "mytool says hi; the command ran first\n"


def test_a_failing_start_task_is_reported_with_the_nodes_stderr(tmp_path, saje_env, clean_account):
    workdir = write_workflow(tmp_path / "wf", """
        rule all:
            output: "out.txt"
            shell: "echo hi > {output}"
    """)
    run = run_snakemake(workdir, saje_env, "--saje-start-task", "echo 'apt-get: no such package' >&2; exit 3",
                        "--saje-pool-ready-timeout", "0.1", timeout=180)

    assert run.returncode != 0
    assert "the start task failed on node" in run.stdout and "FailureExitCode" in run.stdout, run.stdout[-3000:]
    saved = list((workdir / ".snakemake" / "saje_logs").rglob("startup-stderr.txt"))
    assert saved and "apt-get: no such package" in saved[0].read_text()
    assert not (workdir / "out.txt").exists()


def test_batch_terminates_a_job_past_its_max_wall_clock_time(batch_client, shared_pool):
    """The safety net SAJE relies on, as the REST reference defines it: the job ends, its running
    tasks are terminated, terminateReason MaxWallClockTimeExpiry."""
    job_id = make_job(batch_client, shared_pool,
                      constraints=models.BatchJobConstraints(max_wall_clock_time=datetime.timedelta(seconds=2)))
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(id="sleeper", command_line="/bin/sleep 120"))

    job = wait_for(lambda: (j := batch_client.get_job(job_id)).state == "completed" and j, 60, what="the job to end")
    task = completed(batch_client, job_id, "sleeper")

    assert job.execution_info.termination_reason == "MaxWallClockTimeExpiry"
    assert task.execution_info.result == "failure" and task.execution_info.failure_info.code == "TaskEnded"
    batch_client.begin_delete_job(job_id)


def test_saje_jobs_carry_the_run_wide_wall_clock_limit(tmp_path, saje_env, clean_account):
    """A run whose Snakemake died cannot keep its tasks running: here the limit (half a minute,
    ample for the task to start) ends a task that would sleep for ten minutes, and the run
    reports the terminated task."""
    workdir = write_workflow(tmp_path / "wf", """
        rule all:
            output: "out.txt"
            shell: "sleep 600; echo late > {output}"
    """)
    run = run_snakemake(workdir, saje_env, "--saje-job-max-wall-clock", "0.5", timeout=240)

    assert run.returncode != 0
    assert "TaskEnded" in run.stdout, run.stdout[-3000:]
    assert not (workdir / "out.txt").exists()


def test_an_idle_pool_of_saje_goes_back_to_zero_nodes(tmp_path, saje_env, executor_emulator):
    """--saje-keep-pool leaves the run's pool: with no task left, its formula takes it to 0."""
    workdir = write_workflow(tmp_path / "wf", """
        rule all:
            output: "out.txt"
            shell: "echo hi > {output}"
    """)
    before = {p.id for p in executor_emulator.client().list_pools()}
    run = run_snakemake(workdir, saje_env, "--saje-keep-pool")
    assert run.returncode == 0, run.stdout[-3000:]

    client = executor_emulator.client()
    try:
        kept = [p for p in client.list_pools() if p.id not in before]
        assert len(kept) == 1 and kept[0].enable_auto_scale
        pool_id = kept[0].id
        assert "$TargetDedicatedNodes = $nodes" in kept[0].auto_scale_formula
        wait_for(lambda: (p := client.get_pool(pool_id)).current_dedicated_nodes == 0
                 and p.current_low_priority_nodes == 0 and not list(client.list_nodes(pool_id)),
                 90, what="the idle pool to reach zero nodes")
    finally:
        for pool in client.list_pools():
            if pool.id not in before:
                client.begin_delete_pool(pool.id)
        client.close()


def test_the_state_folder_ignores_itself_and_never_reaches_the_sources(tmp_path):
    repo = tmp_path / "workflow"
    repo.mkdir()
    (repo / "Snakefile").write_text("rule all:\n    shell: 'true'\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    data = statedir.ensure(repo / ".saje" / "emulator")
    (data / "batch.sqlite").write_bytes(b"state")

    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, text=True, capture_output=True, check=True).stdout.split()

    # Snakemake's source archive ships the files `git ls-files` lists (dag.get_sources).
    assert tracked == ["Snakefile"]
    assert (repo / ".saje" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert statedir.ensure(repo / ".saje") == repo / ".saje"  # idempotent
