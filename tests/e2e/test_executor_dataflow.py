"""What a job's node sees and what comes back, in both data routes, against a plain local run.

- checkpoints: the Snakemake documentation's pattern (a directory() checkpoint, an aggregating
  input function that globs it, per-item rules) and a checkpoint without inputs; no checkpoint
  ever runs again on another job's node;
- the node check: a job whose inputs a parse-time glob changed on the node is refused, named;
- a failed job's own log: comes back to its local path and into the error; its outputs do not.

Route "staging": no default storage, SAJE moves the files. Route "storage":
--default-storage-provider azure on the emulator's Azurite, inputs uploaded and outputs read there.
"""
from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import SNAKEMAKE, run_snakemake, write_workflow

pytestmark = pytest.mark.e2e


class Route:
    """Where a run's files live: the working directory, or a blob prefix of default storage."""

    def __init__(self, name: str, emulator):
        self.name = name
        self.azurite = emulator.azurite
        self.container = f"dataflow-{uuid.uuid4().hex[:8]}"
        self.prefix = "run"

    @property
    def storage(self) -> bool:
        return self.name == "storage"

    def args(self) -> list[str]:
        if not self.storage:
            return []
        return ["--default-storage-provider", "azure", "--default-storage-prefix", f"az://{self.container}/{self.prefix}",
                "--storage-azure-account-name", self.azurite.account_name, "--envvars", "AZURITE_CONNECTION_STRING"]

    def _service(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.azurite.connection_string)

    def put(self, workdir: Path, *paths: str) -> None:
        """Route storage: the workflow's input files, uploaded where Snakemake will look for them."""
        if self.storage:
            service = self._service()
            if not service.get_container_client(self.container).exists():
                service.create_container(self.container)
            for path in paths:
                service.get_blob_client(self.container, f"{self.prefix}/{path}").upload_blob(
                    (workdir / path).read_bytes(), overwrite=True)

    def read(self, workdir: Path, path: str) -> str | None:
        """A result of the run, or None when there is none."""
        if not self.storage:
            return (workdir / path).read_text() if (workdir / path).exists() else None
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._service().get_blob_client(self.container, f"{self.prefix}/{path}").download_blob().readall().decode()
        except ResourceNotFoundError:
            return None

    def local(self, workdir: Path, path: str) -> Path:
        """Where a file of the run lands on this machine (default storage: Snakemake's local copy)."""
        return workdir / ".snakemake" / "storage" / "azure" / self.container / self.prefix / path if self.storage \
            else workdir / path

    def cleanup(self) -> None:
        if self.storage:
            from azure.core.exceptions import ResourceNotFoundError

            try:
                self._service().delete_container(self.container)
            except ResourceNotFoundError:
                pass


@pytest.fixture(params=["staging", "storage"])
def route(request, executor_emulator):
    r = Route(request.param, executor_emulator)
    yield r
    r.cleanup()


def run_locally(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, "--cores", "2", *args], cwd=workdir, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)


def twin(tmp_path: Path, snakefile: str, files: dict[str, str]) -> tuple[Path, Path]:
    """The same workflow twice: one for SAJE, one for a plain local run. Only the Snakefile is
    tracked by git (the data are not, as in many a clone)."""
    remote = write_workflow(tmp_path / "remote", snakefile, files)
    local = write_workflow(tmp_path / "local", snakefile, files)
    subprocess.run(["git", "init", "-q"], cwd=remote, check=True)
    subprocess.run(["git", "add", "Snakefile"], cwd=remote, check=True)
    return remote, local


# ----------------------------------------------------------------------------- checkpoints
CHECKPOINTS = """
import os

rule all:
    input: expand("aggregated/{{sample}}.txt", sample=["a", "b"]), "summary.txt"

checkpoint clustering:
    input: "samples/{{sample}}.txt"
    output: clusters=directory("clustering/{{sample}}")
    params: ledger="{ledger}"
    shell:
        "echo clustering >> {{params.ledger}}; mkdir -p {{output}}; "
        "for i in $(seq $(wc -l < {{input}})); do sed -n ${{{{i}}}}p {{input}} > {{output}}/$i.txt; done"

rule intermediate:
    input: "clustering/{{sample}}/{{i}}.txt"
    output: "post/{{sample}}/{{i}}.txt"
    shell: "tr a-z A-Z < {{input}} > {{output}}"

def aggregate_input(wildcards):
    checkpoint_output = checkpoints.clustering.get(**wildcards).output[0]
    return expand("post/{{sample}}/{{i}}.txt", sample=wildcards.sample,
                  i=glob_wildcards(os.path.join(checkpoint_output, "{{i}}.txt")).i)

rule aggregate:
    input: aggregate_input
    output: "aggregated/{{sample}}.txt"
    shell: "cat {{input}} > {{output}}"

# A checkpoint without inputs: nothing stops another job's node from making it again but SAJE.
checkpoint discover:
    output: directory("found")
    params: ledger="{ledger}"
    shell: "echo discover >> {{params.ledger}}; mkdir -p {{output}}; for x in p q; do echo $x > {{output}}/$x.txt; done"

rule copy:
    input: "found/{{x}}.txt"
    output: "copied/{{x}}.txt"
    shell: "cp {{input}} {{output}}"

def found(wildcards):
    return expand("copied/{{x}}.txt", x=glob_wildcards(os.path.join(checkpoints.discover.get().output[0], "{{x}}.txt")).x)

rule summary:
    input: found
    output: "summary.txt"
    shell: "cat {{input}} > {{output}}"
"""
SAMPLES = {"samples/a.txt": "x1\nx2\n", "samples/b.txt": "y1\n"}
RESULTS = ["aggregated/a.txt", "aggregated/b.txt", "summary.txt"]


def test_checkpoints_give_the_local_results_and_never_run_again_on_a_node(tmp_path, saje_env, clean_account, route):
    ledger, local_ledger = tmp_path / "ledger.txt", tmp_path / "local-ledger.txt"
    remote = write_workflow(tmp_path / "remote", CHECKPOINTS.format(ledger=ledger), SAMPLES)
    local = write_workflow(tmp_path / "local", CHECKPOINTS.format(ledger=local_ledger), SAMPLES)
    route.put(remote, *SAMPLES)
    here = run_locally(local)
    assert here.returncode == 0, here.stdout[-3000:]

    run = run_snakemake(remote, saje_env, *route.args(), timeout=400)

    assert run.returncode == 0, run.stdout[-5000:]
    for path in RESULTS:
        assert route.read(remote, path) == (local / path).read_text(), path
    assert (local / "aggregated" / "a.txt").read_text() == "X1\nX2\n"  # the reference is the real thing
    # Each checkpoint job ran once, as its own task: never again on the node of a job reading it.
    assert sorted(ledger.read_text().split()) == sorted(local_ledger.read_text().split()) == \
        ["clustering", "clustering", "discover"]


# ----------------------------------------------------------------------------- the node check, failed jobs
GLOBBING = """
SAMPLES = glob_wildcards("data/{s}.fastq").s

rule all:
    input: "counts/total.txt", expand("aligned/{s}.bam", s=SAMPLES)

rule count:
    input: "data/{s}.fastq"
    output: "counts/{s}.txt"
    shell: "wc -l < {input} > {output}"

rule total:
    input: expand("counts/{s}.txt", s=SAMPLES)
    output: "counts/total.txt"
    shell: "cat {input} > {output}"

rule align:
    input: "data/{s}.fastq"
    output: "aligned/{s}.bam"
    log: "logs/align/{s}.log"
    benchmark: "bench/align/{s}.tsv"
    shell: "echo 'aligning {wildcards.s}' > {log}; echo '[bwa_idx_load_from_disk] fail to locate the index files' >> {log}; echo partial > {output}; exit 1"
"""
FASTQ = {"data/A.fastq": "@r1\nACGT\n+\nIIII\n", "data/B.fastq": "@r1\nACGT\n+\nIIII\n@r2\nTTTT\n+\nIIII\n"}


def test_node_refuses_a_job_a_glob_changed_and_a_failed_jobs_log_comes_back(tmp_path, saje_env, clean_account, route):
    remote, local = twin(tmp_path, GLOBBING, FASTQ)
    route.put(remote, *FASTQ)
    here = run_locally(local, "--keep-going")
    assert here.returncode != 0 and (local / "counts" / "total.txt").exists(), here.stdout[-3000:]

    run = run_snakemake(remote, saje_env, "--keep-going", *route.args(), timeout=400)

    out = run.stdout
    assert run.returncode != 0
    # (2) data/ is not in the sources archive: on the node the sample list is empty, and the job
    # that sums the counts would have "succeeded" with an empty file. It is refused, named.
    assert "rule total" in out and "did not run: refused to run the job" in out, out[-5000:]
    assert "job total: 2 input file(s) planned by the submitting Snakemake but not by the node's" in out
    assert "counts/A.txt" in out and "glob_wildcards" in out and "sample sheet under version control" in out
    assert route.read(remote, "counts/total.txt") is None
    for sample in "AB":  # the per-sample jobs see their own input on the node, as planned
        assert route.read(remote, f"counts/{sample}.txt") == (local / "counts" / f"{sample}.txt").read_text()
    # (3) The failed alignments' own logs are where Snakemake's error points, as after a local
    # run, and their last lines are in SAJE's error; their outputs are not taken as done.
    for sample in "AB":
        log = route.local(remote, f"logs/align/{sample}.log")
        assert log.read_text() == (local / "logs" / "align" / f"{sample}.log").read_text()
        assert f"log {log.relative_to(remote)} (last lines):\naligning {sample}\n" \
               "[bwa_idx_load_from_disk] fail to locate the index files" in out
        assert route.read(remote, f"aligned/{sample}.bam") is None
        assert not route.local(remote, f"aligned/{sample}.bam").exists()
        assert not (local / "aligned" / f"{sample}.bam").exists()
