"""Chaos on the service side and the client's: the emulator killed mid-run, Snakemake killed
mid-run (then `saje cleanup`, or a rerun), a start task that fails on every node.

Each case ends with outputs identical to a clean run of the same workflow, or with a failure
that names its cause well before any timeout; afterwards no pool, Batch job or staging container
of the run is left, and no process of any emulated node is.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient

from snakemake_executor_saje.emulator import Emulator, processes
from tests.conftest import FAST, wait_for
from tests.e2e.conftest import (SNAKEMAKE, VENV_BIN, assert_nothing_left, run_snakemake, start_snakemake,
                                write_workflow)
from tests.e2e.emulator_process import EmulatorProcess

pytestmark = pytest.mark.e2e

N = 6
# Each job traces itself ("<tick> <output> <pid>" every 0.5 s) into a file of the test, outside
# the workflow, so that a test can tell whether two tasks ever wrote the same output at once.
SNAKEFILE = f"""
rule all:
    input: expand("out/{{i}}.txt", i=range({N}))

rule work:
    input: "data/in.txt"
    output: "out/{{i}}.txt"
    params: trace=config.get("trace", "/dev/null")
    shell:
        "for k in 1 2 3 4 5 6 7 8; do echo \\"$k {{wildcards.i}} $$\\" >> {{params.trace}}; sleep 0.5; done; "
        "(cat {{input}}; echo output {{wildcards.i}}) > {{output}}"
"""
FILES = {"data/in.txt": "the same input for every job\n"}
HEARTBEAT = ["--saje-heartbeat-interval", "0.05"]


def _outputs(workdir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((workdir / "out").glob("*.txt"))}


@pytest.fixture(scope="module")
def clean_outputs(tmp_path_factory, executor_emulator) -> dict[str, str]:
    """What the workflow makes when nothing goes wrong."""
    from tests.e2e.conftest import client_environment

    workdir = write_workflow(tmp_path_factory.mktemp("clean") / "wf", SNAKEFILE, FILES)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE"))}
    env.update(client_environment(executor_emulator))
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
    run = run_snakemake(workdir, env)
    assert run.returncode == 0, run.stdout[-4000:]
    outputs = _outputs(workdir)
    assert len(outputs) == N and outputs["3.txt"] == "the same input for every job\noutput 3\n"
    return outputs


def _client(env: dict[str, str]) -> BatchClient:
    return BatchClient(env["SNAKEMAKE_SAJE_ACCOUNT_URL"],
                       AzureNamedKeyCredential(env["SNAKEMAKE_SAJE_ACCOUNT_NAME"], env["SNAKEMAKE_SAJE_ACCOUNT_KEY"]))


def _running_tasks(client: BatchClient, workdir: Path) -> list:
    """Running tasks of the Batch jobs whose run tag names `workdir`."""
    jobs = [j for j in client.list_jobs() if {m.name: m.value for m in j.metadata or []}.get("saje-workdir")
            == str(workdir.resolve())]
    return [t for j in jobs for t in client.list_tasks(j.id, filter="state eq 'running'")]


def _tagged_containers(env: dict[str, str], run_id: str | None = None) -> list[str]:
    service = BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
    return [c.name for c in service.list_containers(include_metadata=True)
            if (c.metadata or {}).get("saje_run") and run_id in (None, (c.metadata or {}).get("saje_run"))]


def _saje(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "saje"), *args], env=env, capture_output=True, text=True, timeout=120)


def _kill_snakemake_once_tasks_run(proc: subprocess.Popen, client: BatchClient, workdir: Path, running: int) -> None:
    try:
        wait_for(lambda: len(_running_tasks(client, workdir)) >= running, 120, 0.2,
                 what=f"{running} task(s) of the run to be running")
    except BaseException:
        proc.kill()
        print(proc.communicate()[0][-4000:])
        raise
    proc.send_signal(signal.SIGKILL)  # no clean-up of any kind: the machine went away
    proc.communicate(timeout=60)


def _no_node_processes(data_dir: Path) -> None:
    wait_for(lambda: not processes.processes_under(data_dir / "nodes"), 30,
             what="every process of the emulated nodes to end")


# ----------------------------------------------------------------------------- the service dies
@pytest.mark.timeout(420)
def test_emulator_killed_mid_run_comes_back_and_the_run_ends_as_a_clean_one(tmp_path, clean_outputs):
    emu = EmulatorProcess(tmp_path / "emulator", "--with-azurite")
    proc = None
    try:
        env = emu.start()
        client_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE"))},
                      **env, "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", os.defpath)])}
        workdir = write_workflow(tmp_path / "wf", SNAKEFILE, FILES)
        proc = start_snakemake(workdir, client_env, *HEARTBEAT)
        client = _client(env)
        wait_for(lambda: _running_tasks(client, workdir), 120, 0.2, what="a task of the run to be running")

        emu.kill9()  # the service dies with tasks running; Azurite and the task processes do not
        time.sleep(1.0)
        assert emu.start() == env  # same endpoint, key and storage: the run's clients carry on
        out, _ = proc.communicate(timeout=300)

        assert proc.returncode == 0, out[-6000:]
        assert _outputs(workdir) == clean_outputs
        assert_nothing_left_on(client)
        assert _tagged_containers(env) == []
        client.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        emu.stop()
    _no_node_processes(emu.data_dir)


def assert_nothing_left_on(client: BatchClient) -> None:
    wait_for(lambda: not list(client.list_jobs()) and not list(client.list_pools()), 30,
             what="every job and pool of the run to be deleted")


# ----------------------------------------------------------------------------- the client dies
@pytest.mark.timeout(300)
def test_snakemake_killed_leaves_a_run_that_cleanup_finds_and_deletes(tmp_path, saje_env, clean_account):
    workdir = write_workflow(tmp_path / "wf", SNAKEFILE, FILES)
    client = _client(saje_env)
    proc = start_snakemake(workdir, saje_env, *HEARTBEAT)
    _kill_snakemake_once_tasks_run(proc, client, workdir, running=1)

    status = _saje(saje_env, "status", "--json")
    assert status.returncode == 0, status.stderr
    run = next(r for r in json.loads(status.stdout)["runs"] if r["workdir"] == str(workdir.resolve()))
    assert run["gone"] and f"pid {proc.pid} on this machine" in run["reason"]
    assert run["pools"] and run["jobs"]

    dry = _saje(saje_env, "cleanup", "--run", run["run"], "--json")
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)
    assert listed["dryRun"] and listed["deleted"] == [] and listed["containersChecked"]
    gone = listed["gone"][0]
    assert gone["pools"] == run["pools"] and gone["jobs"] == run["jobs"] and len(gone["containers"]) == 1
    assert [p.id for p in client.list_pools()] == run["pools"]  # a dry run deletes nothing

    done = _saje(saje_env, "cleanup", "--run", run["run"], "--yes", "--json")
    assert done.returncode == 0, done.stderr
    deleted = {(d["kind"], d["id"]) for d in json.loads(done.stdout)["deleted"]}
    assert deleted == {("job", j) for j in run["jobs"]} | {("pool", p) for p in run["pools"]} | {
        ("container", gone["containers"][0])}
    assert_nothing_left_on(client)
    assert _tagged_containers(saje_env, run["run"]) == []
    _no_node_processes(clean_account.config.data_dir)
    again = _saje(saje_env, "cleanup", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["gone"] == []
    client.close()


def _overlaps(trace: Path) -> list[str]:
    """Outputs written by two tasks at once: after the first line of a later task (pid) for an
    output, a line of an earlier one."""
    seen: dict[str, list[str]] = defaultdict(list)
    problems = []
    for line in trace.read_text().splitlines():
        _, output, pid = line.split()
        pids = seen[output]
        if pid not in pids:
            pids.append(pid)
        elif pids[-1] != pid:
            problems.append(f"output {output}: task {pid} still wrote after task {pids[-1]} had started")
    return problems


@pytest.mark.timeout(420)
def test_a_rerun_after_snakemake_was_killed_terminates_the_dead_runs_tasks(tmp_path, saje_env, clean_account,
                                                                          clean_outputs):
    workdir = write_workflow(tmp_path / "wf", SNAKEFILE, FILES)
    trace = tmp_path / "trace.txt"
    client = _client(saje_env)
    proc = start_snakemake(workdir, saje_env, *HEARTBEAT, "--config", f"trace={trace}")
    _kill_snakemake_once_tasks_run(proc, client, workdir, running=2)
    assert len(_running_tasks(client, workdir)) >= 2  # the dead run's tasks run on without it

    unlock = subprocess.run([SNAKEMAKE, "--unlock"], cwd=workdir, env=saje_env, capture_output=True, text=True,
                            timeout=120)
    assert unlock.returncode == 0, unlock.stderr
    rerun = run_snakemake(workdir, saje_env, *HEARTBEAT, "--config", f"trace={trace}", timeout=300)

    assert rerun.returncode == 0, rerun.stdout[-6000:]
    assert re.search(r"run \S+ of this workflow directory .* was left by a Snakemake that is gone", rerun.stdout)
    assert "Its tasks were terminated" in rerun.stdout
    assert _outputs(workdir) == clean_outputs
    assert _overlaps(trace) == []
    assert len({line.split()[2] for line in trace.read_text().splitlines()}) > N  # the dead run's tasks did run
    assert _tagged_containers(saje_env) == []
    _no_node_processes(clean_account.config.data_dir)
    client.close()


# ----------------------------------------------------------------------------- start tasks that fail
@pytest.mark.timeout(300)
@pytest.mark.parametrize("scaling", [["--saje-nodes", "1"], []], ids=["fixed-one-node", "autoscale"])
def test_a_start_task_failing_on_every_node_fails_the_run_early_with_its_stderr(tmp_path, scaling):
    """The only node's start task fails: SAJE takes the node out and the pool gets another one; when
    three nodes fail alike and none succeeds, the run fails with the start task's stderr, long
    before --saje-pool-ready-timeout (30 minutes), and nothing is left."""
    with Emulator(tmp_path / "emu", with_azurite=True, **FAST) as emu:
        emu.faults.update(start_task_failures=1000)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE"))}
        from snakemake_executor_saje.cli import client_environment

        env.update(client_environment(emu))
        env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
        workdir = write_workflow(tmp_path / "wf", SNAKEFILE, FILES)
        # Bounded well below the default --saje-pool-ready-timeout of 30 minutes: that is the point.
        run = run_snakemake(workdir, env, "--saje-snakemake-install", "pip", *scaling, timeout=240)

        assert run.returncode != 0
        message = run.stdout
        assert re.search(r"the start task of pool \S+ failed on \d+ nodes, the last 3 alike \(FailureExitCode, "
                         r"exit code 1\)", message), message[-5000:]
        assert "start task failed (injected fault)" in message  # its stderr, in the error itself
        failed_nodes = set(re.findall(r"the start task failed on node (\S+) of pool", message))
        assert len(failed_nodes) >= 3  # each failed node was replaced by a fresh one
        assert "taken out of pool" in message
        assert not list(workdir.glob("out/*.txt"))
        assert_nothing_left(emu)
        _no_node_processes(emu.config.data_dir)


@pytest.mark.timeout(300)
def test_a_node_whose_start_task_failed_is_replaced_and_the_run_ends_as_a_clean_one(tmp_path, clean_outputs):
    """The only node of a fixed-size pool fails its start task (every one of its three tries):
    SAJE takes it out, resizes the pool back, and the new node runs the workflow."""
    with Emulator(tmp_path / "emu", with_azurite=True, **FAST) as emu:
        emu.faults.update(start_task_failures=3)  # maxTaskRetryCount 2: the first node's three tries
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE"))}
        from snakemake_executor_saje.cli import client_environment

        env.update(client_environment(emu))
        env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
        workdir = write_workflow(tmp_path / "wf", SNAKEFILE, FILES)
        run = run_snakemake(workdir, env, "--saje-start-task", "echo tools installed", "--saje-nodes", "1",
                            timeout=240)

        assert run.returncode == 0, run.stdout[-5000:]
        assert _outputs(workdir) == clean_outputs
        failed = re.findall(r"the start task failed on node (\S+) of pool", run.stdout)
        assert len(failed) == 1 and f"node(s) {failed[0]} taken out of pool" in run.stdout
        assert_nothing_left(emu)
        _no_node_processes(emu.config.data_dir)
