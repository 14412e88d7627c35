"""Multi-instance tasks: coordination on every node, application on the primary, subtask records."""
from __future__ import annotations

import time

import pytest
from azure.batch import models

from tests.conftest import completed, make_job, make_pool, read_file, wait_for

pytestmark = pytest.mark.e2e

ENV_DUMP = "/bin/sh -c 'env | grep ^AZ_BATCH_ | sort > $AZ_BATCH_TASK_SHARED_DIR/env-$AZ_BATCH_IS_CURRENT_NODE_MASTER.txt'"


def _env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_multi_instance_across_two_nodes(batch_client):
    pool_id = make_pool(batch_client, dedicated=2, enable_inter_node_communication=True, task_slots_per_node=1)
    nodes = {n.id: n.ip_address for n in batch_client.list_nodes(pool_id)}
    job_id = make_job(batch_client, pool_id)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line="/bin/sh -c 'env | grep ^AZ_BATCH_ | sort; cat $AZ_BATCH_TASK_SHARED_DIR/env-true.txt >/dev/null'",
        multi_instance_settings=models.MultiInstanceSettings(number_of_instances=2,
                                                             coordination_command_line=ENV_DUMP)))
    task = completed(batch_client, job_id, "mpi")
    assert task.execution_info.result == "success", read_file(batch_client, job_id, "mpi", "stderr.txt")
    primary = _env(read_file(batch_client, job_id, "mpi"))
    hosts = primary["AZ_BATCH_HOST_LIST"].split(",")
    assert sorted(hosts) == sorted(nodes.values())
    assert primary["AZ_BATCH_IS_CURRENT_NODE_MASTER"] == "true"
    assert primary["AZ_BATCH_MASTER_NODE"].split(":")[0] == nodes[task.node_info.node_id] == hosts[0]
    assert primary["AZ_BATCH_NODE_LIST"].split(";") == hosts
    assert primary["AZ_BATCH_TASK_SHARED_DIR"] == primary["AZ_BATCH_TASK_DIR"]  # the task dir, above wd

    subtasks = list(batch_client.list_subtasks(job_id, "mpi"))
    # The primary is the task itself; subtasks are the other instances, numbered from 1.
    assert [s.id for s in subtasks] == [1]
    sub = subtasks[0]
    assert sub.state == "completed" and sub.exit_code == 0
    assert sub.node_info.node_id != task.node_info.node_id and sub.node_info.node_id in nodes
    # The coordination command ran on the other node too, with that node's view.
    other = _env(b"".join(batch_client.download_node_file(
        pool_id, sub.node_info.node_id, f"workitems/{job_id}/job-1/mpi/env-false.txt")).decode())
    assert other["AZ_BATCH_IS_CURRENT_NODE_MASTER"] == "false" and other["AZ_BATCH_HOST_LIST"] == primary["AZ_BATCH_HOST_LIST"]
    assert other["AZ_BATCH_NODE_ID"] == sub.node_info.node_id
    batch_client.begin_delete_pool(pool_id)


def test_one_instance_is_still_a_multi_instance_task(emulator_with_storage):
    """numberOfInstances 1 is valid (the spec's default) and runs as a multi-instance task, as on
    Azure: common resource files into the task's shared dir, the coordination command, then the
    application command with the multi-instance variables naming one host; no subtasks (the
    primary, ID 0, is never listed among them)."""
    from azure.storage.blob import BlobServiceClient

    from tests.conftest import unique_id

    emu = emulator_with_storage
    container = unique_id("common").lower()
    blobs = BlobServiceClient.from_connection_string(emu.azurite.connection_string)
    blobs.create_container(container)
    blobs.get_blob_client(container, "input.txt").upload_blob(b"shared input\n")
    client = emu.client()
    pool_id = make_pool(client, dedicated=1, enable_inter_node_communication=True, task_slots_per_node=1)
    [node] = client.list_nodes(pool_id)
    job_id = make_job(client, pool_id)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="one", command_line="/bin/sh -c 'env | grep -e ^AZ_BATCH_ -e ^CCP_NODES= | sort; "
                               "cat $AZ_BATCH_TASK_SHARED_DIR/input.txt $AZ_BATCH_TASK_SHARED_DIR/env-true.txt >&2'",
        multi_instance_settings=models.MultiInstanceSettings(
            number_of_instances=1, coordination_command_line=ENV_DUMP,
            common_resource_files=[models.ResourceFile(auto_storage_container_name=container)])))
    task = completed(client, job_id, "one")
    err = read_file(client, job_id, "one", "stderr.txt")
    assert task.execution_info.result == "success", err
    env = _env(read_file(client, job_id, "one"))
    assert env["AZ_BATCH_HOST_LIST"] == env["AZ_BATCH_NODE_LIST"] == node.ip_address
    assert env["AZ_BATCH_MASTER_NODE"] == f"{node.ip_address}:6000"
    assert env["AZ_BATCH_IS_CURRENT_NODE_MASTER"] == "true"
    assert env["AZ_BATCH_TASK_SHARED_DIR"] == env["AZ_BATCH_TASK_DIR"]
    assert env["CCP_NODES"] == f"1 {node.ip_address} 2"  # Standard_D2s_v3: 2 cores
    # The common file reached the shared dir, and the coordination command ran before the application.
    assert err.startswith("shared input\n") and "AZ_BATCH_IS_CURRENT_NODE_MASTER=true" in err, err
    assert list(client.list_subtasks(job_id, "one")) == []
    # A multi-instance task holds its whole node, as on Azure.
    assert task.required_slots == 1 and task.node_info.node_id == node.id
    client.begin_delete_pool(pool_id)
    client.close()


def test_failing_coordination_fails_the_task(batch_client):
    pool_id = make_pool(batch_client, dedicated=2, enable_inter_node_communication=True)
    job_id = make_job(batch_client, pool_id)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="bad", command_line="/bin/true", multi_instance_settings=models.MultiInstanceSettings(
            number_of_instances=2,
            coordination_command_line="/bin/sh -c 'test $AZ_BATCH_IS_CURRENT_NODE_MASTER = true'")))
    info = completed(batch_client, job_id, "bad").execution_info
    assert info.result == "failure" and info.failure_info.code == "FailureExitCode"
    assert [s.exit_code for s in batch_client.list_subtasks(job_id, "bad")] == [1]
    batch_client.begin_delete_pool(pool_id)


def test_multi_instance_never_scheduled_without_inter_node_communication(batch_client):
    pool_id = make_pool(batch_client, dedicated=2)  # enableInterNodeCommunication false
    job_id = make_job(batch_client, pool_id)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="stuck", command_line="/bin/true",
        multi_instance_settings=models.MultiInstanceSettings(number_of_instances=2, coordination_command_line="/bin/true")))
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(id="plain", command_line="/bin/true"))
    completed(batch_client, job_id, "plain")  # the pool is working...
    time.sleep(0.5)
    stuck = batch_client.get_task(job_id, "stuck")
    assert stuck.state == "active" and stuck.node_info is None  # ...but accepts and never schedules this one
    assert list(batch_client.list_subtasks(job_id, "stuck")) == []
    batch_client.begin_delete_pool(pool_id)


# A program every node runs over ssh from the primary, from the task's working directory (the
# same path on every node), as an MPI launcher's daemons would.
PROG = b'#!/bin/sh\necho "prog ran on $AZ_BATCH_NODE_ID"\n'
RUN_EVERYWHERE = ("/bin/sh -c 'for h in $(echo $AZ_BATCH_HOST_LIST | tr , \" \"); do "
                  "ssh $h \"cd $AZ_BATCH_TASK_WORKING_DIR && ./prog\" || exit 1; done'")


def test_only_the_primary_gets_resource_files_common_ones_reach_every_node(emulator_with_storage):
    """As on Azure: a program among the task's resourceFiles is on the primary only, so the other
    node (which sees its own files at the primary's paths) cannot run it; among the
    commonResourceFiles, copied into each node's working dir by SAJE's coordination command, it
    runs on every node."""
    from azure.storage.blob import BlobServiceClient

    from snakemake_executor_saje import mpi
    from tests.conftest import unique_id

    emu = emulator_with_storage
    container = unique_id("prog").lower()
    BlobServiceClient.from_connection_string(emu.azurite.connection_string).create_container(container)
    BlobServiceClient.from_connection_string(emu.azurite.connection_string).get_blob_client(
        container, "prog").upload_blob(PROG)
    client = emu.client()
    pool_id = make_pool(client, dedicated=2, enable_inter_node_communication=True, task_slots_per_node=1)
    nodes = [n.id for n in client.list_nodes(pool_id)]
    job_id = make_job(client, pool_id)
    prog = models.ResourceFile(auto_storage_container_name=container, blob_prefix="prog")
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="primary-only", command_line=RUN_EVERYWHERE, resource_files=[prog],
        multi_instance_settings=models.MultiInstanceSettings(number_of_instances=2, coordination_command_line="/bin/true")))
    task = completed(client, job_id, "primary-only", timeout=60)
    assert task.execution_info.result == "failure"
    out, err = read_file(client, job_id, "primary-only"), read_file(client, job_id, "primary-only", "stderr.txt")
    assert out == f"prog ran on {task.node_info.node_id}\n"  # the primary's own ssh hop found it
    assert "prog" in err and "not found" in err, err  # the other node has no ./prog

    common = models.ResourceFile(auto_storage_container_name=container, blob_prefix="prog",
                                 file_path=mpi.COMMON_FILES_DIR, file_mode="0755")
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="common", command_line=RUN_EVERYWHERE,
        multi_instance_settings=models.MultiInstanceSettings(
            number_of_instances=2, common_resource_files=[common],
            coordination_command_line=mpi.coordination_command(common_dir=mpi.COMMON_FILES_DIR))))
    task = completed(client, job_id, "common", timeout=60)
    assert task.execution_info.result == "success", read_file(client, job_id, "common", "stderr.txt")
    ran = sorted(read_file(client, job_id, "common").splitlines())
    assert ran == sorted(f"prog ran on {n}" for n in nodes)
    client.begin_delete_pool(pool_id)


def test_autoscale_counts_a_queued_multi_instance_task_once_per_instance(batch_client):
    """The autoscale docs: $ActiveTasks includes the instances of a multi-instance task; $RunningTasks
    counts tasks. A 3-instance task waiting on an empty pool is 3 active tasks."""
    pool_id = make_pool(batch_client, dedicated=0, wait=False, enable_inter_node_communication=True,
                        task_slots_per_node=1)
    job_id = make_job(batch_client, pool_id)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="wide", command_line="/bin/true",
        multi_instance_settings=models.MultiInstanceSettings(number_of_instances=3, coordination_command_line="/bin/true")))
    batch_client.enable_pool_auto_scale(pool_id, models.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = 0;", auto_scale_evaluation_interval="PT5M"))
    time.sleep(1.5)  # let the emulator take a sample with the task queued
    run = batch_client.evaluate_pool_auto_scale(pool_id, models.BatchPoolEvaluateAutoScaleOptions(
        auto_scale_formula="$a = max($ActiveTasks.GetSample(1)); $r = max($RunningTasks.GetSample(1)); $TargetDedicatedNodes = 0;"))
    assert "$a=3" in run.results and "$r=0" in run.results, run.results


def test_autoscale_counts_a_running_multi_instance_task_once(batch_client):
    pool_id = make_pool(batch_client, dedicated=2, enable_inter_node_communication=True, task_slots_per_node=1)
    job_id = make_job(batch_client, pool_id)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="busy", command_line="/bin/sleep 4",
        multi_instance_settings=models.MultiInstanceSettings(number_of_instances=2, coordination_command_line="/bin/true")))
    wait_for(lambda: batch_client.get_task(job_id, "busy").state == models.BatchTaskState.RUNNING, what="task running")
    batch_client.disable_pool_auto_scale(pool_id)
    batch_client.enable_pool_auto_scale(pool_id, models.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = 2;", auto_scale_evaluation_interval="PT5M"))
    time.sleep(1.0)
    run = batch_client.evaluate_pool_auto_scale(pool_id, models.BatchPoolEvaluateAutoScaleOptions(
        auto_scale_formula="$r = max($RunningTasks.GetSample(1)); $TargetDedicatedNodes = 2;"))
    assert "$r=1" in run.results, run.results
