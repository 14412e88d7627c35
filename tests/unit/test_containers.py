"""Containers, both sides: which image a job runs in (pure, the executor's side) and the podman
command an emulated node creates a container task with (pure, the emulator's side)."""
from __future__ import annotations

from pathlib import Path

import pytest

from snakemake_executor_saje import containers
from snakemake_executor_saje.emulator import containers as engine

DEFAULT = "snakemake/snakemake:v9.27.1"


# --- the job's image ---------------------------------------------------------------------------

def test_the_run_image_is_a_non_default_container_image_or_the_container_install_mode():
    assert containers.run_image("pip", DEFAULT, DEFAULT) is None  # Snakemake's default alone asks for nothing
    assert containers.run_image("none", DEFAULT, DEFAULT) is None
    assert containers.run_image("pip", "ghcr.io/me/sm:1", DEFAULT) == "ghcr.io/me/sm:1"
    assert containers.run_image("container", DEFAULT, DEFAULT) == DEFAULT  # as the kubernetes plugin does
    assert containers.run_image("container", None, DEFAULT) == DEFAULT


def test_snakemakes_own_default_image_is_its_version():
    from snakemake import __version__

    assert containers.snakemake_default_image() == f"snakemake/snakemake:v{__version__}"


def test_rule_images_are_oci_references_only():
    assert containers.rule_image("docker://quay.io/biocontainers/bwa:0.7.18", "align") == "quay.io/biocontainers/bwa:0.7.18"
    assert containers.rule_image("ubuntu:24.04", "r") == "ubuntu:24.04"
    for url in ("library://sylabs/x:1", "oras://ghcr.io/x:1", "shub://a/b", "/images/tool.sif", "tool.simg"):
        with pytest.raises(containers.ContainerChoiceError, match=r"Rule r: .*not an OCI image.*--sdm apptainer"):
            containers.rule_image(url, "r")


def test_job_image_precedence_and_groups():
    assert containers.job_image("r", {"saje_container": "a:1"}, ("docker://b:1",), "run:1") == "a:1"
    assert containers.job_image("r", {}, ("docker://b:1",), "run:1") == "b:1"
    assert containers.job_image("r", {}, (), "run:1") == "run:1"
    assert containers.job_image("r", {}, (None,), None) is None
    assert containers.job_image("g", {}, ("docker://b:1", "docker://b:1"), None) == "b:1"
    for mixed in (("docker://b:1", "docker://c:1"), ("docker://b:1", None)):
        with pytest.raises(containers.ContainerChoiceError, match="Group g: .*one container"):
            containers.job_image("g", {}, mixed, None)


def test_apptainer_leaves_the_jobs_deployment_methods_only():
    head, tail = "python .saje/node_check.py --snakefile Snakefile", "--conda-frontend conda --nocolor"
    assert containers.without_apptainer(f"{head} --deployment-method apptainer {tail}") == f"{head} {tail}"
    assert containers.without_apptainer(f"{head} --deployment-method conda apptainer {tail}") == \
        f"{head} --deployment-method conda {tail}"
    assert containers.without_apptainer(f"{head} --deployment-method apptainer") == head
    assert containers.without_apptainer(f"{head} {tail}") == f"{head} {tail}"
    # a value of another option that happens to read like the flag is not touched
    assert containers.without_apptainer("echo '--deployment-methodology apptainer'") == "echo '--deployment-methodology apptainer'"


def test_an_existing_pool_must_agree_about_containers():
    containers.check_existing_pool("p", object(), "img:1", "r")
    containers.check_existing_pool("p", None, None, "r")
    with pytest.raises(containers.ContainerChoiceError, match="pool p runs container tasks only"):
        containers.check_existing_pool("p", object(), None, "r")
    with pytest.raises(containers.ContainerChoiceError, match="pool p has no containerConfiguration"):
        containers.check_existing_pool("p", None, "img:1", "r")


# --- the emulated node's engine ------------------------------------------------------------------

def test_images_without_a_tag_are_latest():
    assert engine.qualified("ubuntu") == "ubuntu:latest"
    assert engine.qualified("localhost:5000/x/y") == "localhost:5000/x/y:latest"
    assert engine.qualified("x/y:2") == "x/y:2"
    assert engine.qualified("x/y@sha256:abc") == "x/y@sha256:abc"


def test_create_command_runs_the_command_line_in_place_of_the_entrypoint():
    spec = engine.ContainerSpec(
        name="saje-1-2", image="img", command=("/bin/bash", "-c", "echo $X"), variables=("AZ_BATCH_TASK_ID", "X"),
        mounts=(engine.Mount("/n/root", "/n/root"), engine.Mount("/n/root/shared", "/n/root/shared", True)),
        workdir="/n/root/workitems/j/job-1/t/wd", run_options=("--shm-size", "1g"), user="0:0", labels={"k": "v"})
    argv = engine.create_argv(spec, engine="podman", ulimits={"nofile": 1024, "nproc": 512})
    assert argv[:8] == ["podman", "create", "--name", "saje-1-2", "--runtime", "runc", "--network", "host"]
    text = " ".join(argv)
    assert "--ulimit nofile=1024:1024 --ulimit nproc=512:512" in text
    assert "--volume /n/root:/n/root --volume /n/root/shared:/n/root/shared:ro" in text
    assert "--env AZ_BATCH_TASK_ID --env X" in text  # names only: values travel in the environment
    assert argv[argv.index("--entrypoint"):] == ["--entrypoint", "/bin/bash", "img:latest", "-c", "echo $X"]
    assert argv.index("--shm-size") < argv.index("--entrypoint")


def test_an_empty_command_line_runs_the_images_own_entrypoint():
    argv = engine.create_argv(engine.ContainerSpec(name="n", image="img:1", command=()), ulimits={})
    assert argv[-1] == "img:1" and "--entrypoint" not in argv and "--workdir" not in argv


def test_the_limits_are_the_emulators_own_within_the_engines_ceilings():
    import resource

    got = engine.limits()
    assert got["nofile"] == min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], engine.CEILINGS["nofile"])
    assert got["nproc"] == min(resource.getrlimit(resource.RLIMIT_NPROC)[1], engine.CEILINGS["nproc"])


def test_bind_mounts_default_to_the_whole_node_root_or_the_listed_sources():
    root = Path("/n")
    dirs = {"Shared": root / "shared", "Task": root / "workitems/j/job-1/t", "JobPrep": None}
    assert engine.bind_mounts(None, dirs, root) == [engine.Mount("/n", "/n")]
    assert engine.bind_mounts([], dirs, root) == []
    chosen = engine.bind_mounts([{"source": "Task"}, {"source": "Shared", "isReadOnly": True}, {"source": "JobPrep"}],
                                dirs, root)
    assert chosen == [engine.Mount("/n/workitems/j/job-1/t", "/n/workitems/j/job-1/t"),
                      engine.Mount("/n/shared", "/n/shared", True)]


def test_a_machine_without_an_engine_fails_with_a_container_error():
    missing = engine.Engine("x")
    missing.executable = None  # as on a machine where shutil.which finds no podman
    with pytest.raises(engine.ContainerError) as info:
        missing.missing_images(["img:1"])
    assert info.value.code == "ContainerMiscError" and "apt-get install podman runc" in info.value.details["Message"]
    missing.remove_all()  # nothing to remove, no error
