"""workflows/examples/mpi end to end: `saje emulator run -- snakemake`, real MPI from PyPI.

The example's MPI rule (`resources: mpi="mpirun", tasks=2*nodes, tasks_per_node=2`, Slurm's
convention) runs a pi integration compiled with mpicc over 2 and 4 emulated nodes, between a
normal pre-processing and a normal post-processing rule. The emulated nodes' image is the
emulator's environment, so the MPI venv's bin goes on the PATH of `saje emulator run`, as
docs/mpi.md says. Checked: every rank took part, two per node, each node its own
(AZ_BATCH_NODE_ID and hostname) on 2 and 4 nodes, with Open MPI and with MPICH; a rank that
calls MPI_Abort fails the task and the Snakemake error names the nodes and shows the rank's
and the launcher's stderr; on Spot nodes (allowed), a preempted node's multi-instance task is
requeued and the workflow still succeeds.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from snakemake_executor_saje.emulator import mpi_install
from tests.conftest import TIME_SCALE
from tests.e2e.conftest import default_sigint

pytestmark = [pytest.mark.e2e, pytest.mark.mpi]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "workflows" / "examples" / "mpi"
PROFILE = REPO / "profiles" / "local-mpi"
VENV_BIN = Path(sys.executable).parent
# Shorter client polls than the profile's; everything else (Azure's 5-minute autoscale interval) is the
# profile's, on an emulator whose clock runs TIME_SCALE times faster.
FAST = ["--saje-poll-interval", "0.5", "--latency-wait", "2"]
RANK = re.compile(r"^rank (\d+) host (\S+) node (\S+)$")
LIBRARY = {"openmpi": "Open MPI", "mpich": "MPICH"}


def _mpi_bin(flavor: str) -> Path:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.fail("no C compiler (cc): the MPI wheels' mpicc needs one")
    prefix = mpi_install.default_prefix(flavor)
    if not mpi_install.is_installed(flavor, prefix):
        pytest.fail(f"no {flavor} install at {prefix}: run `bash scripts/setup.sh --mpi`")
    return mpi_install.mpi_bin(prefix)


def _workflow(tmp_path: Path) -> Path:
    wf = tmp_path / "wf"
    wf.mkdir()
    shutil.copy(EXAMPLE / "Snakefile", wf / "Snakefile")
    shutil.copytree(EXAMPLE / "src", wf / "src")
    return wf


def _image_env(flavor: str) -> dict[str, str]:
    """The environment of the emulator, i.e. of its nodes: the flavour's MPI on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE"))}
    env["PATH"] = os.pathsep.join([str(_mpi_bin(flavor)), env.get("PATH", os.defpath)])
    return env


def _snakemake(*args: str) -> list[str]:
    return [str(VENV_BIN / "snakemake"), "--workflow-profile", str(PROFILE), *FAST, *args]


def run_example(tmp_path: Path, flavor: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """What docs/mpi.md tells users to type, in a copy of the example."""
    wf = _workflow(tmp_path)
    cmd = [str(VENV_BIN / "saje"), "emulator", "run", "--data-dir", str(tmp_path / "emulator"),
           "--time-scale", str(TIME_SCALE), "--",
           *_snakemake("--saje-mpi-flavor", flavor, *args)]
    proc = subprocess.Popen(cmd, cwd=wf, env=_image_env(flavor), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # stop snakemake and Azurite too, and show how far it got
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        pytest.fail(f"the example did not finish in {timeout}s:\n{stderr[-6000:]}")
    out = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    print(out.stdout[-4000:])
    print(out.stderr[-8000:], file=sys.stderr)
    return out


def _ranks(path: Path) -> dict[int, tuple[str, str]]:
    ranks = {}
    for line in path.read_text().splitlines():
        m = RANK.match(line)
        if m:
            ranks[int(m[1])] = (m[2], m[3])
    return ranks


def check_run(wf: Path, nodes: int, flavor: str) -> None:
    out = wf / "results" / "pi" / f"n{nodes}.txt"
    ranks = _ranks(out)
    assert sorted(ranks) == list(range(2 * nodes)), out.read_text()  # every rank took part
    per_node = Counter(node for _, node in ranks.values())
    assert len(per_node) == nodes and set(per_node.values()) == {2}, per_node  # 2 ranks on each node
    per_host = Counter(host for host, _ in ranks.values())
    assert len(per_host) == nodes and set(per_host.values()) == {2}, per_host  # each node its own hostname
    assert all(node.startswith("tvm") for node in per_node)
    text = out.read_text()
    pi = float(re.search(r"^pi (\S+) error", text, re.M)[1])
    assert abs(pi - 3.141592653589793) < 1e-9
    assert re.search(rf"^library .*{LIBRARY[flavor]}", text, re.M), text


@pytest.mark.timeout(420)
@pytest.mark.parametrize("flavor", ["openmpi", "mpich"])
def test_example_runs_every_rank_on_2_and_4_nodes(tmp_path, flavor):
    out = run_example(tmp_path, flavor)
    assert out.returncode == 0, out.stderr[-4000:]
    wf = tmp_path / "wf"
    for nodes in (2, 4):
        check_run(wf, nodes, flavor)
    report = (wf / "results" / "report.tsv").read_text().splitlines()
    assert report[0].split("\t") == ["run", "ranks", "hosts", "nodes", "pi", "error"]
    rows = {line.split("\t")[0]: line.split("\t") for line in report[1:]}
    assert rows["n2"][1:4] == ["4", "2", "2"] and rows["n4"][1:4] == ["8", "4", "4"]
    # Both multi-instance tasks went to one MPI pool, the other rules to an HTC pool; all deleted.
    assert len(re.findall(r"pool \S+-mpi-\S+ \(Standard_HB120rs_v3, MPI\) created", out.stderr)) == 1
    assert len(re.findall(r"pool \S+-mpi-\S+ deleted", out.stderr)) == 1


@pytest.mark.timeout(480)
@pytest.mark.parametrize("flavor", ["openmpi", "mpich"])
def test_failing_rank_fails_the_task_and_shows_nodes_and_stderr(tmp_path, flavor):
    # A 60-minute autoscale interval (6 s at the tests' time scale): with 5 minutes the failed task's
    # nodes can leave the pool (and take its files along) before the executor's next poll downloads the logs.
    # A wall-clock limit, as docs/mpi.md advises for MPI rules: Open MPI 5's prterun sometimes
    # deadlocks in its own finalize after an MPI_Abort (PMIx_server_finalize waiting for a progress
    # thread stuck in pmix_pending_resolve; openpmix/prrte#1839), after it printed its report.
    out = run_example(tmp_path, flavor, "--config", "nodes=[2]", "fail_rank=3", "--saje-autoscale-interval", "60",
                      "--set-resources", "pi:runtime=2", timeout=400)
    assert out.returncode != 0
    message = out.stderr[out.stderr.index("Error in rule pi:"):]
    assert re.search(r"SAJE: rule pi \(task pi-\d+-a1, Batch job \S+\) on node tvm\S+ failed with exit code", message)
    # the digest: every node of the task, then what the ranks and the launcher said
    assert "MPI task pi-" in message and "2 node(s)" in message
    assert re.search(r"primary +node tvm\S+ \(127\.[\d.]+\): ran the MPI launcher", message)
    assert re.search(r"subtask 1 +node tvm\S+ \(127\.[\d.]+\): coordination command exit code 0", message)
    failing = re.search(r"pi: rank 3 on host (\S+) \(node (tvm\S+)\) fails on purpose", message)
    assert failing, message
    subtask_node = re.search(r"subtask 1 +node (tvm\S+)", message)[1]
    assert failing[2] == subtask_node  # rank 3 of 2x2 ranks runs on the second node
    assert "mpi_abort" in message.lower()  # the launcher's own report (Open MPI: MPI_ABORT, MPICH: MPI_Abort)
    assert "mpi-failure.txt" in message  # and the digest is among the job's log files
    assert not (tmp_path / "wf" / "results" / "pi" / "n2.txt").exists()


SPOT_SNAKEFILE = """
rule all:
    input: "ranks.txt"

rule spread:
    output: "ranks.txt"
    resources: mpi="mpirun", tasks=2, tasks_per_node=1
    shell: "{resources.mpi} -n {resources.tasks} sh -c 'sleep 4; echo rank on $AZ_BATCH_NODE_ID' > {output}"
"""


@pytest.mark.timeout(300)
def test_preempted_spot_mpi_task_is_requeued(tmp_path, monkeypatch):
    """Spot for MPI only with --saje-mpi-allow-spot; a preempted node requeues the whole task."""
    from snakemake_executor_saje.cli import client_environment
    from snakemake_executor_saje.emulator import Emulator

    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "Snakefile").write_text(SPOT_SNAKEFILE)
    image = _image_env("openmpi")
    monkeypatch.setenv("PATH", image["PATH"])  # the in-process emulator's nodes inherit it
    # A new account's Spot quota (100 cores) holds no HB120 node: this account was granted two.
    emu = Emulator(tmp_path / "emulator", with_azurite=True, time_scale=TIME_SCALE, low_priority_core_quota=240)
    emu.start()
    try:
        env = {**image, **client_environment(emu)}
        refused = subprocess.run(_snakemake("--saje-mpi-flavor", "openmpi", "--preemptible-rules", "spread",
                                            "--preemptible-retries", "0"),
                                 cwd=wf, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0
        assert "spot nodes are refused for MPI pools" in refused.stderr and "--saje-mpi-allow-spot" in refused.stderr

        proc = subprocess.Popen(
            _snakemake("--saje-mpi-flavor", "openmpi", "--preemptible-rules", "spread", "--saje-mpi-allow-spot",
                       "--preemptible-retries", "1"),
            cwd=wf, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=default_sigint)
        try:
            client = emu.client()
            pool_id, job_id, task_id, nodes = _running_multi_instance_task(client)
            victim = nodes[-1]  # a subtask's node, not the primary
            assert not next(n for n in client.list_nodes(pool_id) if n.id == victim).is_dedicated
            emu.preempt(pool_id, victim)
            task = client.get_task(job_id, task_id)
            assert task.execution_info.requeue_count >= 1
            output, _ = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=60)
        print(output[-6000:])
        assert proc.returncode == 0, output[-4000:]
        ranks = (wf / "ranks.txt").read_text().split("\n")
        assert len([r for r in ranks if r.startswith("rank on ")]) == 2
        assert victim not in (wf / "ranks.txt").read_text()  # the rerun ran on the replacement node
    finally:
        emu.stop()


def _running_multi_instance_task(client, timeout: float = 90.0):
    """(pool, job, task, [primary node, subtask nodes...]) once an MPI task runs on all its nodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in client.list_jobs():
            for task in client.list_tasks(job.id, filter="state eq 'running'"):
                if not task.multi_instance_settings or task.node_info is None:
                    continue
                subs = [s for s in client.list_subtasks(job.id, task.id) if s.node_info is not None]
                if len(subs) + 1 >= task.multi_instance_settings.number_of_instances:
                    return (task.node_info.pool_id, job.id, task.id,
                            [task.node_info.node_id, *(s.node_info.node_id for s in subs)])
        time.sleep(0.2)
    pytest.fail("no multi-instance task reached the running state")
