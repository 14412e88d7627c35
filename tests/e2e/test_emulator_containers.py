"""Container pools and container tasks on the emulator, through the real SDK: the images are pulled
(from local storage) when a node starts, tasks run in a real container engine (podman) with the
node's directories and the task's variables, and what Azure refuses fails with Batch's codes."""
from __future__ import annotations

import subprocess

import pytest
from azure.batch import models

from snakemake_executor_saje.emulator import containers
from tests import images
from tests.conftest import completed, idle_nodes, make_job, pool_options, read_file, unique_id, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def image() -> str:
    return images.small_image()


@pytest.fixture(scope="module")
def container_pool(emulator, image):
    """One node, two slots, the small image pre-fetched."""
    client = emulator.client()
    pool_id = unique_id("ctr")
    client.create_pool(container_pool_options(pool_id, [image], task_slots_per_node=2))
    idle_nodes(client, pool_id, 1, timeout=60)
    yield pool_id
    client.begin_delete_pool(pool_id)
    client.close()


def container_pool_options(pool_id: str, images: list[str], kind: str = "dockerCompatible", **extra):
    options = pool_options(pool_id, dedicated=1, **extra)
    options.virtual_machine_configuration.container_configuration = models.BatchContainerConfiguration(
        type=kind, container_image_names=images)
    return options


def container(image: str, **extra) -> models.BatchTaskContainerSettings:
    return models.BatchTaskContainerSettings(image_name=image, **extra)


def test_task_runs_inside_the_image_with_the_nodes_directories_and_variables(batch_client, emulator, container_pool, image):
    job_id = make_job(batch_client, container_pool)
    script = ("cat /opt/saje-image/marker > from-image.txt && pwd && echo task=$AZ_BATCH_TASK_ID && echo var=$MY_VAR"
              " && echo path=$PATH && test -d $AZ_BATCH_NODE_SHARED_DIR && test ! -e " + str(emulator.config.data_dir / "batch.sqlite"))
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="inside", command_line=f"/bin/bash -c '{script}'", container_settings=container(image),
        environment_settings=[models.EnvironmentSetting(name="MY_VAR", value="from-settings")]))
    task = completed(batch_client, job_id, "inside", timeout=60)
    assert task.execution_info.result == "success", (task.execution_info.failure_info, read_file(batch_client, job_id, "inside", "stderr.txt"))
    out = read_file(batch_client, job_id, "inside").splitlines()
    node = batch_client.get_node(container_pool, task.node_info.node_id)
    assert read_file(batch_client, job_id, "inside", "wd/from-image.txt") == images.marker_text(image)
    assert out[0].endswith(f"/workitems/{job_id}/job-1/inside/wd")  # AZ_BATCH_TASK_WORKING_DIR, mapped in
    assert "task=inside" in out and "var=from-settings" in out
    # The image's own PATH, not the emulator's (whose venv is on every host task's PATH).
    assert [line for line in out if line.startswith("path=")] == ["path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert node.state in ("idle", "running")


def test_a_failing_command_keeps_its_exit_code_and_the_container_is_removed(batch_client, emulator, container_pool, image):
    job_id = make_job(batch_client, container_pool)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="exit3", command_line="/bin/bash -c 'echo oops >&2; exit 3'", container_settings=container(image)))
    task = completed(batch_client, job_id, "exit3", timeout=60)
    assert task.execution_info.exit_code == 3 and task.execution_info.failure_info.code == "FailureExitCode"
    assert "oops" in read_file(batch_client, job_id, "exit3", "stderr.txt")
    assert _containers_of(emulator) == []


def test_terminating_a_running_container_task_removes_its_container(batch_client, emulator, container_pool, image):
    job_id = make_job(batch_client, container_pool)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="sleeper", command_line="/bin/bash -c 'sleep 300'", container_settings=container(image)))
    wait_for(lambda: batch_client.get_task(job_id, "sleeper").state == "running" and _containers_of(emulator),
             60, what="the container task to run")
    batch_client.terminate_task(job_id, "sleeper")
    task = completed(batch_client, job_id, "sleeper")
    assert task.execution_info.failure_info.code == "TaskEnded"
    wait_for(lambda: _containers_of(emulator) == [], 30, what="the container to be removed")


def test_image_default_working_directory_and_chosen_bind_mounts(batch_client, container_pool, image):
    job_id = make_job(batch_client, container_pool)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="isolated", command_line="/bin/bash -c 'pwd; test -d $AZ_BATCH_TASK_DIR && echo task-dir; "
                                    "test -e $AZ_BATCH_NODE_SHARED_DIR || echo no-shared'",
        container_settings=container(image, working_directory="containerImageDefault", container_host_batch_bind_mounts=[
            models.ContainerHostBatchBindMountEntry(source="Task", is_read_only=False)])))
    task = completed(batch_client, job_id, "isolated", timeout=60)
    assert task.execution_info.result == "success"
    assert read_file(batch_client, job_id, "isolated").splitlines() == ["/", "task-dir", "no-shared"]


def test_a_missing_image_fails_the_task_with_container_invalid_image(batch_client, container_pool):
    job_id = make_job(batch_client, container_pool)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="noimage", command_line="/bin/true", container_settings=container("saje-tests/absent:1")))
    info = completed(batch_client, job_id, "noimage", timeout=60).execution_info.failure_info
    assert (info.category, info.code) == ("usererror", "ContainerInvalidImage")
    assert {d.name: d.value for d in info.details}["ContainerImage"] == "saje-tests/absent:1"


def test_container_settings_and_container_pools_go_together(batch_client, container_pool, shared_pool, image):
    on_container_pool = make_job(batch_client, container_pool)
    batch_client.create_task(on_container_pool, models.BatchTaskCreateOptions(id="bare", command_line="/bin/true"))
    on_plain_pool = make_job(batch_client, shared_pool)
    batch_client.create_task(on_plain_pool, models.BatchTaskCreateOptions(
        id="boxed", command_line="/bin/true", container_settings=container(image)))
    for job_id, task_id in ((on_container_pool, "bare"), (on_plain_pool, "boxed")):
        info = completed(batch_client, job_id, task_id, timeout=60).execution_info.failure_info
        assert info.code == "ContainerInvalidSettings", (job_id, info)


def test_a_pool_whose_image_cannot_be_pulled_gets_unusable_nodes(batch_client):
    pool_id = unique_id("ctr-bad")
    batch_client.create_pool(container_pool_options(pool_id, ["saje-tests/absent:2"], "criCompatible"))
    try:
        node = wait_for(lambda: next((n for n in batch_client.list_nodes(pool_id) if n.state == "unusable"), None), 60,
                        what="the node to be unusable")
        assert node.errors[0].code == "ContainerInvalidImage"
        assert {d.name: d.value for d in node.errors[0].error_details}["ContainerImage"] == "saje-tests/absent:2"
    finally:
        batch_client.begin_delete_pool(pool_id)


def _containers_of(emulator) -> list[str]:
    label = f"{containers.LABEL}={containers.Engine.instance_for(emulator.config.data_dir)}"
    done = subprocess.run([images.podman(), "ps", "--all", "--quiet", "--filter", f"label={label}"],
                          text=True, stdout=subprocess.PIPE)
    return done.stdout.split()
