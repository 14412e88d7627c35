"""Snakemake with SAJE and containers on the emulator: real snakemake, real SDK, real podman.

The image is built on this machine (tests/images.py: its Python and Snakemake, and a marker file
no host path has), so a rule that copies the marker proves its task ran inside the image."""
from __future__ import annotations

import pytest

from tests import images
from tests.e2e.conftest import run_snakemake, write_workflow

pytestmark = pytest.mark.e2e

# The default node image (canonical Ubuntu) has no container runtime; the Ubuntu HPC image has.
CONTAINER_NODE_IMAGE = ["--saje-image", "microsoft-dsvm:ubuntu-hpc:2404"]


@pytest.fixture(scope="module")
def image() -> str:
    return images.snakemake_image()


def test_container_image_runs_every_job_inside_the_image(tmp_path, saje_env, clean_account, image):
    workdir = write_workflow(tmp_path / "wf", """
        rule all:
            input: "in-image.txt"
        rule boxed:
            output: "in-image.txt"
            shell: "cat /opt/saje-image/marker > {output} && echo wd=$AZ_BATCH_TASK_WORKING_DIR >> {output}"
    """)
    run = run_snakemake(workdir, saje_env, "--container-image", image, *CONTAINER_NODE_IMAGE)

    assert run.returncode == 0, run.stdout[-4000:]
    lines = (workdir / "in-image.txt").read_text().splitlines()
    assert lines[0] == images.marker_text(image).strip()
    assert lines[1].startswith("wd=") and lines[1].endswith("/wd")  # the task's working directory, mapped in
    assert f"jobs run in container image {image}" in run.stdout


def test_a_rules_container_directive_is_its_tasks_image_with_sdm_apptainer(tmp_path, saje_env, clean_account, image):
    workdir = write_workflow(tmp_path / "wf", f"""
        rule all:
            input: "boxed.txt", "bare.txt"
        rule boxed:
            output: "boxed.txt"
            container: "docker://{image}"
            shell: "cat /opt/saje-image/marker > {{output}}"
        rule bare:
            output: "bare.txt"
            shell: "test -e /opt/saje-image/marker && echo image > {{output}} || echo node > {{output}}"
    """)
    run = run_snakemake(workdir, saje_env, "--sdm", "apptainer", *CONTAINER_NODE_IMAGE)

    assert run.returncode == 0, run.stdout[-4000:]
    assert (workdir / "boxed.txt").read_text() == images.marker_text(image)
    assert (workdir / "bare.txt").read_text() == "node\n"  # no container: runs on the node, as before


def test_a_rule_image_batch_cannot_run_is_refused_before_anything_is_created(tmp_path, saje_env, clean_account):
    workdir = write_workflow(tmp_path / "wf", """
        rule all:
            output: "out.txt"
            container: "library://sylabs/examples/lolcow:latest"
            shell: "echo hi > {output}"
    """)
    run = run_snakemake(workdir, saje_env, "--sdm", "apptainer", *CONTAINER_NODE_IMAGE, timeout=120)

    assert run.returncode != 0
    assert "Rule all: container 'library://sylabs/examples/lolcow:latest' is not an OCI image reference" in run.stdout
    assert not (workdir / "out.txt").exists()


def test_an_image_the_nodes_cannot_pull_fails_the_run_naming_it(tmp_path, saje_env, clean_account):
    workdir = write_workflow(tmp_path / "wf", """
        rule all:
            output: "out.txt"
            shell: "echo hi > {output}"
    """)
    run = run_snakemake(workdir, saje_env, "--container-image", "saje-tests/never-built:1", *CONTAINER_NODE_IMAGE,
                        "--saje-pool-ready-timeout", "0.1", timeout=180)

    assert run.returncode != 0
    assert "is unusable: ContainerInvalidImage" in run.stdout and "saje-tests/never-built:1" in run.stdout, run.stdout[-3000:]
    assert not (workdir / "out.txt").exists()
