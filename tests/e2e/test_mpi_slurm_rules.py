"""MPI rules as Slurm users write them, run by `snakemake --executor saje` on the emulator.

One node: `tasks` alone, `tasks_per_node` alone, `nodes=1`, each a multi-instance task of one
instance (Azure runs those; the emulator used to run them as ordinary tasks, without
AZ_BATCH_HOST_LIST). Slurm's `srun` (plain, with the plugin docs' `{resources.mpi} -n
{resources.tasks}`, and `srun -n N`) runs as the flavour's `mpirun -n N`, said once per rule;
any other srun option is refused before anything exists on the account. With Open MPI and
MPICH from `scripts/setup.sh --mpi`, on the executor tests' shared emulator: its nodes run
with this process's PATH, which the tests point at the flavour's MPI, as docs/mpi.md says.
"""
from __future__ import annotations

import os
import re
from collections import Counter

import pytest

from snakemake_executor_saje.emulator import mpi_install
from tests.e2e.conftest import run_snakemake, write_workflow

pytestmark = [pytest.mark.e2e, pytest.mark.mpi]

# Every rank prints its rank (Open MPI: OMPI_COMM_WORLD_RANK, MPICH: PMI_RANK) and its node.
RANK = "sh -c 'echo rank $OMPI_COMM_WORLD_RANK$PMI_RANK node $AZ_BATCH_NODE_ID'"
ONE_NODE = f"""
rule all:
    input: expand("ranks/{{name}}.txt", name=["tasks", "per_node", "srun", "srun_n"])

# tasks alone: as few nodes as the VM size's cores allow, here one
rule tasks:
    output: "ranks/tasks.txt"
    resources: mpi="mpirun", tasks=4
    shell: "{{resources.mpi}} -n {{resources.tasks}} {RANK} > {{output}}"

# tasks_per_node alone: one node, as on Slurm (SAJE_MPI_NP = nodes x ranks per node)
rule per_node:
    output: "ranks/per_node.txt"
    resources: mpi="mpirun", tasks_per_node=2
    shell: "{{resources.mpi}} -n $SAJE_MPI_NP {RANK} > {{output}}"

# srun as snakemake-executor-plugin-slurm's docs write it
rule srun:
    output: "ranks/srun.txt"
    resources: mpi="srun", tasks=3
    shell: "{{resources.mpi}} -n {{resources.tasks}} {RANK} > {{output}}"

# srun with its own count, on nodes=1
rule srun_n:
    output: "ranks/srun_n.txt"
    resources: mpi="srun -n 2", nodes=1, tasks=2
    shell: "{{resources.mpi}} {RANK} > {{output}}"
"""
RANKS = {"tasks": 4, "per_node": 2, "srun": 3, "srun_n": 2}


def _mpi_bin(flavor: str) -> str:
    prefix = mpi_install.default_prefix(flavor)
    if not mpi_install.is_installed(flavor, prefix):
        pytest.fail(f"no {flavor} install at {prefix}: run `bash scripts/setup.sh --mpi`")
    return str(mpi_install.mpi_bin(prefix))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("flavor", ["openmpi", "mpich"])
def test_one_node_mpi_rules_and_srun_run(tmp_path, saje_env, clean_account, monkeypatch, flavor):
    monkeypatch.setenv("PATH", os.pathsep.join([_mpi_bin(flavor), os.environ.get("PATH", os.defpath)]))
    workdir = write_workflow(tmp_path / "wf", ONE_NODE)

    run = run_snakemake(workdir, saje_env, "--saje-mpi-flavor", flavor, "--saje-mpi-max-nodes", "2")

    assert run.returncode == 0, run.stdout[-5000:]
    for name, count in RANKS.items():
        lines = (workdir / "ranks" / f"{name}.txt").read_text().splitlines()
        ranks = Counter(int(m[1]) for m in map(re.compile(r"^rank (\d+) node (\S+)$").match, lines) if m)
        assert sorted(ranks) == list(range(count)) and set(ranks.values()) == {1}, (name, lines)
        nodes = {line.split(" node ")[1] for line in lines}
        assert len(nodes) == 1 and next(iter(nodes)).startswith("tvm"), (name, lines)  # one whole node
    # Each srun rule is translated once, and says so once, however many jobs it has.
    assert run.stdout.count("SAJE: rule srun: resources mpi='srun' runs as 'mpirun -n 3'") == 1, run.stdout[-5000:]
    assert run.stdout.count("SAJE: rule srun_n: resources mpi='srun -n 2' runs as 'mpirun -n 2'") == 1


@pytest.mark.parametrize("launcher, complaint", [
    ("srun --mpi=pmix", "srun '--mpi=pmix' has no counterpart on Azure Batch"),
    ("srun -n 8", "asks for 8 ranks, but the rule has tasks=4"),
])
def test_refused_srun_creates_nothing(tmp_path, saje_env, clean_account, launcher, complaint):
    """Refused before any pool, Batch job or upload: the account and its storage stay as they were."""
    from azure.storage.blob import BlobServiceClient

    workdir = write_workflow(tmp_path / "wf", f"""
        rule align:
            output: "out.txt"
            resources: mpi="{launcher}", tasks=4
            shell: "{{resources.mpi}} ./prog > {{output}}"
        """)
    blobs = BlobServiceClient.from_connection_string(saje_env["AZURE_STORAGE_CONNECTION_STRING"])
    containers = {c.name for c in blobs.list_containers()}
    before = clean_account.request_counts

    run = run_snakemake(workdir, saje_env)

    assert run.returncode != 0
    assert "SAJE cannot run rule align" in run.stdout and complaint in run.stdout, run.stdout[-3000:]
    if "counterpart" in complaint:
        assert "--set-resources align:mpi=mpirun" in run.stdout
    writes = {k: v for k, v in clean_account.request_counts.items() if not k.startswith(("GET", "HEAD"))
              and v != before.get(k, 0)}
    assert writes == {}, writes  # no pool, no job, no task
    assert {c.name for c in blobs.list_containers()} == containers  # nothing uploaded
