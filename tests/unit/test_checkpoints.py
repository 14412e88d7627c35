"""Which finished checkpoint outputs a job's node needs: Snakemake's own DAG, built in-process."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from snakemake_executor_saje.checkpoints import needed_outputs

SNAKEFILE = """
import os
from glob import glob

rule all:
    input: expand("aggregated/{sample}.txt", sample=["a"]), "both.txt", "plain.txt"

checkpoint clustering:
    input: "samples/{sample}.txt"
    output: directory("clustering/{sample}")
    shell: "false"

checkpoint listing:
    output: "list.txt", "list.md5"
    shell: "false"

rule aggregate:
    input: lambda wc: sorted(glob(os.path.join(checkpoints.clustering.get(sample=wc.sample).output[0], "*.txt")))
    output: "aggregated/{sample}.txt"
    shell: "false"

def both_input(wildcards):
    names = open(checkpoints.listing.get().output[0]).read().split()
    return [checkpoints.clustering.get(sample=name).output[0] for name in names]

rule both:
    input: both_input
    output: "both.txt"
    shell: "false"

rule plain:
    input: "samples/a.txt"
    output: "plain.txt"
    shell: "false"
"""


@pytest.fixture
def dag(tmp_path, monkeypatch):
    """Snakemake's DAG of SNAKEFILE with both checkpoints done (their outputs on disk)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import DAGSettings, OutputSettings, ResourceSettings

    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE))
    for name, text in {"samples/a.txt": "a\n", "clustering/a/1.txt": "1\n", "clustering/a/2.txt": "2\n",
                       "list.txt": "a\n", "list.md5": "x\n"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=tmp_path / "Snakefile",
                                    workdir=tmp_path)
        workflow_api.dag(DAGSettings())
        workflow = workflow_api._workflow
        workflow._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        workflow._build_dag()
        yield {job.rule.name: job for job in workflow.dag.jobs}


def test_the_aggregating_job_needs_the_checkpoint_directory_it_globs(dag):
    assert [str(f) for f in dag["aggregate"].input] == ["clustering/a/1.txt", "clustering/a/2.txt"]
    assert [str(f) for f in needed_outputs(dag["aggregate"])] == ["clustering/a"]


def test_a_function_asking_for_checkpoints_in_turn_needs_each_with_all_its_outputs(dag):
    assert [str(f) for f in needed_outputs(dag["both"])] == ["list.txt", "list.md5", "clustering/a"]


def test_jobs_without_checkpoint_functions_need_nothing_and_the_real_state_is_kept(dag):
    workflow = dag["plain"].rule.workflow
    before = set(workflow.checkpoints.created_output)
    assert needed_outputs(dag["plain"]) == []
    assert set(workflow.checkpoints.created_output) == before and Path("clustering/a") in map(Path, before)
