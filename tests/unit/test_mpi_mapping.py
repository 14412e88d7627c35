"""What tests/unit/test_mapping.py and test_pools.py leave out of an MPI rule's way to Batch.

Those cover plan_mpi (every valid and invalid combination), the multi-instance settings and
the RDMA pool spec. Here: the flavour choice (`executor._mpi_flavor`), the whole task
request a Slurm-style MPI rule becomes once the executor's MPI block has added the launcher
environment, hostfile script and coordination command (and that its command writes the
hostfile when run), and the digest a failed MPI task's error message shows.
"""
from __future__ import annotations

import shlex
import subprocess
from types import SimpleNamespace

import pytest

from snakemake_executor_saje import mpi
from snakemake_executor_saje.executor import _mpi_failure_digest, _mpi_flavor
from snakemake_executor_saje.mapping import JobSpec, PoolShape, plan_mpi, task_request, TaskOptions

MPI_POOL = PoolShape(pool_id="saje-run-mpi-1", vm_size="Standard_HB120rs_v3", vcpus=120, slots_per_node=1,
                     max_nodes=4, memory_gib=448, mpi=True)


# --- flavour -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "setting, launcher, flavor",
    [
        ("auto", "mpirun", mpi.MpiFlavor.OPENMPI),  # bare mpirun: HPC images' default
        ("auto", "/opt/mpich/bin/mpiexec", mpi.MpiFlavor.MPICH),
        ("auto", "/opt/hpcx-v2.20/ompi/bin/mpirun", mpi.MpiFlavor.HPCX),
        ("auto", "/opt/intel/oneapi/mpi/latest/bin/mpirun", mpi.MpiFlavor.INTELMPI),
        ("mpich", "mpirun", mpi.MpiFlavor.MPICH),  # setting or saje_mpi_flavor wins
        ("intelmpi", "/usr/lib64/openmpi/bin/mpirun", mpi.MpiFlavor.INTELMPI),
        ("HPCX", "mpirun", mpi.MpiFlavor.HPCX),
        ("", "mpiexec", mpi.MpiFlavor.OPENMPI),
    ],
)
def test_flavor_choice(setting, launcher, flavor):
    assert _mpi_flavor(setting, launcher, "simulate") is flavor


@pytest.mark.parametrize("setting", ["auto", "openmpi"])
def test_foreign_launcher_refused_even_with_a_flavor(setting):
    with pytest.raises(mpi.MpiCommandError, match=r"rule simulate: .*'srun' belongs to Slurm"):
        _mpi_flavor(setting, "srun", "simulate")


def test_unknown_flavor_names_rule_and_choices():
    with pytest.raises(mpi.MpiCommandError) as info:
        _mpi_flavor("mvapich", "mpirun", "simulate")
    msg = str(info.value)
    assert "rule simulate" in msg and "'mvapich'" in msg and "saje_mpi_flavor" in msg
    assert all(f.value in msg for f in mpi.MpiFlavor)


# --- the whole request --------------------------------------------------------------------

def _mpi_request(flavor: mpi.MpiFlavor, **resources):
    """What Executor._prepare builds for an MPI job (its MPI block, without Snakemake)."""
    job = JobSpec(rule="pi", jobid=4, command="mpirun -n 4 ./pi > out.txt",
                  resources={"mpi": "mpirun", **resources})
    plan = plan_mpi(job, MPI_POOL, "auto")
    command = mpi.hostfile_script(flavor, plan.tasks_per_node) + job.command
    options = TaskOptions(environment=mpi.application_environment(flavor, plan.nodes, plan.tasks_per_node),
                          coordination_command=mpi.coordination_command(flavor))
    return task_request(JobSpec(**{**job.__dict__, "command": command}), MPI_POOL, options, plan).as_dict()


@pytest.mark.parametrize(
    "flavor, env, line",
    [
        (mpi.MpiFlavor.OPENMPI, {"PRTE_MCA_plm_ssh_agent": "ssh", "OMPI_MCA_plm_rsh_agent": "ssh"}, "{} slots=2"),
        (mpi.MpiFlavor.MPICH, {"HYDRA_LAUNCHER": "ssh"}, "{}:2"),
        (mpi.MpiFlavor.INTELMPI, {"I_MPI_HYDRA_BOOTSTRAP": "ssh", "FI_PROVIDER": "tcp"}, "{}:2"),
    ],
)
def test_slurm_style_rule_becomes_a_multi_instance_task(tmp_path, flavor, env, line):
    d = _mpi_request(flavor, tasks=4, tasks_per_node=2)
    multi = d["multiInstanceSettings"]
    assert multi["numberOfInstances"] == 2 and d["requiredSlots"] == 1
    assert multi["coordinationCommandLine"].startswith("/bin/sh -c ")
    settings = {e["name"]: e["value"] for e in d["environmentSettings"]}
    assert settings["SAJE_MPI_NP"] == "4" and settings["SAJE_MPI_NODES"] == "2"
    assert settings["SAJE_MPI_FLAVOR"] == flavor.value
    for key, value in env.items():
        assert settings[key] == value
    # No hostfile path in the environment: the command writes it and exports it at run time.
    assert not set(settings) & set(mpi.hostfile_environment(flavor, "x"))

    # The command line, run as Batch runs it on the primary (without a shell; mpirun stubbed).
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "mpirun").write_text("#!/bin/sh\nenv | grep -E '_HOST_?FILE|default_hostfile' | sort > env.txt\n")
    (stub / "mpirun").chmod(0o755)
    argv = shlex.split(d["commandLine"])
    assert argv[:2] == ["/bin/bash", "-c"]
    shared = tmp_path / "shared"
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30, env={
        **settings, "PATH": f"{stub}:/usr/bin:/bin", "AZ_BATCH_TASK_SHARED_DIR": str(shared),
        "AZ_BATCH_HOST_LIST": "10.0.0.4,10.0.0.5"})
    assert run.returncode == 0, run.stderr
    hostfile = shared / "saje_mpi_hostfile"
    assert hostfile.read_text().splitlines() == [line.format("10.0.0.4"), line.format("10.0.0.5")]
    exported = dict(ln.split("=", 1) for ln in (tmp_path / "env.txt").read_text().splitlines())
    assert exported == {name: str(hostfile) for name in mpi.hostfile_environment(flavor, "")}


def test_hybrid_rule_keeps_cores_per_rank_in_the_plan():
    d = _mpi_request(mpi.MpiFlavor.OPENMPI, tasks=8, tasks_per_node=2, cpus_per_task=60)
    assert d["multiInstanceSettings"]["numberOfInstances"] == 4


# --- the digest of a failed MPI task ---------------------------------------------------------

SNAKEMAKE_STDERR = """\
Building DAG of jobs...
localrule pi:
    input: src/pi.c
    output: results/pi/n2.txt
    resources: tmpdir=/tmp, mpi=mpirun, tasks=4, tasks_per_node=2
{said}
\x00RuleException:
CalledProcessError in file "Snakefile", line 49:
Command 'mpirun -n 4 ./pi' returned non-zero exit status 3.
Error in rule pi:
    message: None
Exiting because a job execution failed. Look above for error messages
"""


def _sub(index, node, code=0, failure=None):
    return SimpleNamespace(id=index, node_info=SimpleNamespace(node_id=node, pool_id="p"), exit_code=code,
                           state="completed", failure_info=failure)


def test_digest_names_nodes_and_keeps_only_what_the_rule_said():
    said = "pi: rank 3 on host h2 (node n2) fails on purpose\n------\nMPI_ABORT was invoked on rank 3\n"
    outcome = SimpleNamespace(exit_code=1, node_id="n1")
    text = _mpi_failure_digest("pi-2-a1", outcome, [_sub(1, "n2")], {"n1": "10.0.0.4", "n2": "10.0.0.5"},
                               SNAKEMAKE_STDERR.format(said=said))
    lines = text.splitlines()
    assert lines[0] == "MPI task pi-2-a1: 2 node(s), exit code 1 on the primary"
    assert "primary    node n1 (10.0.0.4): ran the MPI launcher" in lines[1]
    assert "node n2 (10.0.0.5): coordination command exit code 0" in lines[2]
    assert lines[-2:] == ["  pi: rank 3 on host h2 (node n2) fails on purpose", "  MPI_ABORT was invoked on rank 3"]
    assert "RuleException" not in text and "resources:" not in text and "failed:" not in text


def test_digest_names_failed_subtasks_and_shortens_long_output():
    said = "\n".join(f"line {i}" for i in range(40))
    outcome = SimpleNamespace(exit_code=137, node_id="n1")
    text = _mpi_failure_digest("t", outcome, [_sub(2, "n3"), _sub(1, "n2", code=1)], {},
                               SNAKEMAKE_STDERR.format(said=said), keep=12)
    assert "failed: subtask 1 on node n2" in text
    assert text.index("subtask 1 ") < text.index("subtask 2 ")  # in subtask order
    assert "line 0" in text and "line 39" in text and "line 20" not in text
    assert "(29 lines left out, all in stderr.txt)" in text
    assert len(text.splitlines()) <= 20  # fits the error message's stderr tail


def test_digest_without_stderr():
    text = _mpi_failure_digest("t", SimpleNamespace(exit_code=None, node_id=None), [], {}, "")
    assert "1 node(s)" in text and "stderr.txt could not be downloaded" in text
    text = _mpi_failure_digest("t", SimpleNamespace(exit_code=1, node_id="n"), [], {}, SNAKEMAKE_STDERR.format(said=""))
    assert "nothing on stderr from the ranks or the launcher" in text
