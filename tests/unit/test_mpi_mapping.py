"""What tests/unit/test_mapping.py and test_pools.py leave out of an MPI rule's way to Batch.

Those cover plan_mpi (every valid and invalid combination), the multi-instance settings and
the RDMA pool spec. Here: the flavour choice and the launcher check (`plan_mpi` with
`mpi.resolve_flavor`), Slurm's srun and how it runs (`mpi.srun_translation`, the `srun`
stand-in of `mpi.srun_shim_script`, run here as a real script), the whole task
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
from snakemake_executor_saje.executor import _mpi_failure_digest
from snakemake_executor_saje.mapping import (JobMappingError, JobSpec, PoolShape, check_fits, plan_mpi, task_request,
                                             TaskOptions)

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
    assert mpi.resolve_flavor(setting, launcher) is flavor
    plan = plan_mpi(_job(launcher, tasks=4), MPI_POOL, setting)
    assert plan.flavor == flavor.value


def _job(launcher: str, rule: str = "simulate", **resources) -> JobSpec:
    return JobSpec(rule=rule, jobid=7, command="x", resources={"mpi": launcher, **resources})


@pytest.mark.parametrize("launcher", ["aprun -n 4", "jsrun", "/opt/flux/bin/flux run", "qrsh"])
@pytest.mark.parametrize("setting", ["auto", "openmpi"])
def test_foreign_launcher_refused_even_with_a_flavor(setting, launcher):
    with pytest.raises(JobMappingError, match=r"rule simulate .*belongs to"):
        check_fits(_job(launcher, tasks=4), MPI_POOL, setting)


def test_unknown_flavor_names_rule_and_choices():
    with pytest.raises(JobMappingError) as info:
        check_fits(_job("mpirun", tasks=4), MPI_POOL, "mvapich")
    msg = str(info.value)
    assert "rule simulate" in msg and "'mvapich'" in msg and "saje_mpi_flavor" in msg
    assert all(f.value in msg for f in mpi.MpiFlavor)
    with pytest.raises(JobMappingError, match="'mvapich'"):
        check_fits(_job("mpirun", tasks=4, saje_mpi_flavor="mvapich"), MPI_POOL)


# --- Slurm's srun --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "launcher, resources, ranks",
    [
        ("srun", {"tasks": 4}, 4),  # plain srun: the rule's tasks, as in a Slurm allocation
        ("srun -n 4", {"tasks": 4}, 4),
        ("srun -n4", {"tasks": 8}, 4),
        ("srun --ntasks 2", {"tasks": 4}, 2),
        ("srun --ntasks=3", {"tasks": 4}, 3),
        ("/usr/bin/srun", {"nodes": 2, "tasks_per_node": 3}, 6),
        ("srun", {"tasks_per_node": 2}, 2),
    ],
)
def test_srun_runs_as_mpirun_with_the_same_count(launcher, resources, ranks):
    plan = plan_mpi(_job(launcher, **resources), MPI_POOL)
    assert plan.srun is not None and plan.srun.ranks == ranks
    assert plan.srun.command == f"mpirun -n {ranks}"
    assert plan.launcher == launcher and plan.flavor == "openmpi"  # srun names no flavour
    assert plan_mpi(_job("mpirun", tasks=4), MPI_POOL).srun is None


@pytest.mark.parametrize(
    "launcher, fragment",
    [
        ("srun --mpi=pmix", "'--mpi=pmix' has no counterpart"),
        ("srun --cpu-bind=cores -n 4", "'--cpu-bind=cores' has no counterpart"),
        ("srun -N 2 -n 4", "'-N' has no counterpart"),
        ("srun --exclusive", "'--exclusive' has no counterpart"),
        ("srun -n", "-n needs a number of tasks"),
        ("srun -n 0", "positive number of tasks, not '0'"),
        ("srun --ntasks=four", "positive number of tasks, not 'four'"),
        ("srun -n 8", "asks for 8 ranks, but the rule has tasks=4"),
    ],
)
def test_other_srun_options_are_refused_with_the_fix(launcher, fragment):
    """Refused by check_fits, which the executor runs before any pool, job or upload."""
    with pytest.raises(JobMappingError) as info:
        check_fits(_job(launcher, rule="align", tasks=4), MPI_POOL)
    msg = str(info.value)
    assert fragment in msg and "rule align" in msg, msg
    if "tasks=4" not in fragment:
        assert "--set-resources align:mpi=mpirun" in msg


def _run_shim(tmp_path, srun: mpi.SrunTranslation, *args: str) -> subprocess.CompletedProcess:
    """The application command's snippet, run for real; `mpirun` is a stub that prints its argv."""
    (tmp_path / "stub").mkdir(exist_ok=True)
    stub = tmp_path / "stub" / "mpirun"
    stub.write_text('#!/bin/sh\necho "mpirun $*"\n')
    stub.chmod(0o755)
    script = mpi.srun_shim_script(srun, "align") + "srun " + " ".join(shlex.quote(a) for a in args) + "\n"
    env = {"AZ_BATCH_TASK_SHARED_DIR": str(tmp_path / "shared"), "PATH": f"{tmp_path / 'stub'}:/usr/bin:/bin"}
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, argv",
    [
        (["./prog", "-n", "x"], "mpirun -n 4 ./prog -n x"),  # options after the program are the program's
        (["-n", "2", "./prog"], "mpirun -n 2 ./prog"),
        (["-n3", "./prog"], "mpirun -n 3 ./prog"),
        (["--ntasks", "2", "./prog", "a b"], "mpirun -n 2 ./prog a b"),
        (["--ntasks=1", "--", "./prog"], "mpirun -n 1 ./prog"),
    ],
)
def test_srun_stand_in_runs_the_launcher(tmp_path, args, argv):
    done = _run_shim(tmp_path, mpi.SrunTranslation(tasks=4), *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == argv
    assert (tmp_path / "shared" / "saje_bin" / "srun").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--mpi=pmix", "./prog"], "srun --mpi=pmix has no counterpart"),
        (["-c", "2", "./prog"], "srun -c has no counterpart"),
        (["-n", "5", "./prog"], "asks for more ranks than the rule's tasks=4"),
        (["-n", "x", "./prog"], "positive number of tasks, not 'x'"),
        (["-n"], "needs a number of tasks"),
    ],
)
def test_srun_stand_in_refuses_what_submission_refuses(tmp_path, args, fragment):
    """An srun written in the rule's shell command (not in resources.mpi) meets the same rules."""
    done = _run_shim(tmp_path, mpi.SrunTranslation(tasks=4), *args)
    assert done.returncode == 2 and not done.stdout
    assert fragment in done.stderr, done.stderr
    if "counterpart" in fragment:
        assert "--set-resources align:mpi=mpirun" in done.stderr


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


def test_digest_leaves_the_launchers_noise_out_before_the_ranks_own_lines():
    """Under load Open MPI's ssh launcher warns once per remote daemon; those warnings must not push
    the failing rank's line out of the digest."""
    warning = "[h1:00{i}] plm:ssh: Warning: setpgid(4{i},4{i}) failed in parent with errno=Operation not permitted(1)"
    abort = [f"MPI_ABORT detail {i}" for i in range(10)]
    said = "\n".join([*(warning.format(i=i) for i in range(6)), "pi: rank 3 on host h2 (node n2) fails on purpose",
                      *abort, "prterun has exited due to process rank 3 calling abort"])
    text = _mpi_failure_digest("t", SimpleNamespace(exit_code=1, node_id="n1"), [_sub(1, "n2")], {},
                               SNAKEMAKE_STDERR.format(said=said), keep=12)
    digest = text[text.index("(last lines):"):].splitlines()[1:]
    assert len(digest) == 12
    assert digest[0] == "  pi: rank 3 on host h2 (node n2) fails on purpose"
    assert "setpgid" not in text and digest[-1] == "  (6 launcher warning line(s) left out, all in stderr.txt)"
    assert digest[-2] == "  prterun has exited due to process rank 3 calling abort"
    assert "(2 lines left out, all in stderr.txt)" in text  # 12 telling lines in 11 places


def test_digest_keeps_the_launchers_noise_when_there_is_room():
    said = "[h1:001] plm:ssh: Warning: setpgid(41,41) failed in parent\npi: rank 3 fails on purpose"
    text = _mpi_failure_digest("t", SimpleNamespace(exit_code=1, node_id="n1"), [], {},
                               SNAKEMAKE_STDERR.format(said=said), keep=12)
    assert "plm:ssh: Warning: setpgid(41,41)" in text and "left out" not in text


def test_digest_without_stderr():
    text = _mpi_failure_digest("t", SimpleNamespace(exit_code=None, node_id=None), [], {}, "")
    assert "1 node(s)" in text and "stderr.txt could not be downloaded" in text
    text = _mpi_failure_digest("t", SimpleNamespace(exit_code=1, node_id="n"), [], {}, SNAKEMAKE_STDERR.format(said=""))
    assert "nothing on stderr from the ranks or the launcher" in text
