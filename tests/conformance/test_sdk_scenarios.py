"""The scenarios of the azure-batch SDK's own tests, on the emulator.

Ported from sdk/batch/azure-batch/tests/test_batch.py in Azure/azure-sdk-for-python (recorded
against the real service): the same calls and the same assertions, through the installed
azure-batch 15.1 (its names: models.BatchNodeFillType, create_tasks, begin_* for long-running
operations). Windows images and commands become the account's Linux image and their shell
equivalents; a scenario of a feature the emulator does not have is listed in docs/emulator.md
("Fidelity") instead of here.
"""
from __future__ import annotations

import datetime
from urllib.parse import quote

import pytest
from azure.batch import models
from azure.batch.models import _models as private  # option models azure-batch 15.1 does not export
from azure.core.exceptions import HttpResponseError

from tests.conformance.conftest import send
from tests.conftest import (IMAGE, NODE_AGENT, VM_SIZE, completed, idle_nodes, make_job, make_pool,
                            unique_id, wait_for)


def _vm_config(**extra) -> models.VirtualMachineConfiguration:
    return models.VirtualMachineConfiguration(image_reference=models.BatchVmImageReference(**IMAGE),
                                              node_agent_sku_id=NODE_AGENT, **extra)


def _steady(client, pool_id: str) -> models.BatchPool:
    return wait_for(lambda: (lambda p: p if p.allocation_state == models.AllocationState.STEADY else None)(
        client.get_pool(pool_id)), what=f"{pool_id} steady")


@pytest.fixture
def made(batch_client):
    """Pools and jobs a scenario makes, deleted afterwards."""
    pools, jobs = [], []
    yield pools, jobs
    for job_id in jobs:
        batch_client.begin_delete_job(job_id)
    for pool_id in pools:
        batch_client.begin_delete_pool(pool_id)


def test_batch_create_pools(batch_client, made):
    pools, _ = made
    assert len(list(batch_client.list_supported_images())) > 1
    assert list(batch_client.list_supported_images())[-1].image_reference is not None

    users = [models.UserAccount(name="test-user-1", password="secret"),
             models.UserAccount(name="test-user-2", password="secret", elevation_level=models.ElevationLevel.ADMIN)]
    iaas = models.BatchPoolCreateOptions(
        id=unique_id("batch_iaas_"), vm_size=VM_SIZE, virtual_machine_configuration=_vm_config(),
        task_scheduling_policy=models.BatchTaskSchedulingPolicy(node_fill_type=models.BatchNodeFillType.PACK),
        user_accounts=users)
    assert batch_client.create_pool(iaas) is None
    pools.append(iaas.id)
    counts = [c for c in batch_client.list_pool_node_counts() if c.pool_id == iaas.id]
    assert len(counts) == 1
    assert counts[0].dedicated.total == 0 and counts[0].dedicated.leaving_pool == 0
    assert counts[0].low_priority.total == 0

    # A gallery image the account cannot see: InvalidPropertyValue (as recorded).
    fake = models.BatchPoolCreateOptions(id=unique_id("batch_image_"), vm_size=VM_SIZE,
                                         virtual_machine_configuration=models.VirtualMachineConfiguration(
                                             image_reference=models.BatchVmImageReference(
                                                 virtual_machine_image_id="/subscriptions/00000000-0000-0000-0000-000000000000"
                                                 "/resourceGroups/test/providers/Microsoft.Compute/gallery/FakeGallery"
                                                 "/images/FakeImage/versions/version"),
                                             node_agent_sku_id=NODE_AGENT))
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_pool(fake)
    assert info.value.error.code == "InvalidPropertyValue"

    disk = models.BatchPoolCreateOptions(id=unique_id("batch_disk_"), vm_size=VM_SIZE,
                                         virtual_machine_configuration=_vm_config(
                                             data_disks=[models.DataDisk(logical_unit_number=1, disk_size_gb=50)]))
    batch_client.create_pool(disk)
    pools.append(disk.id)
    got = batch_client.get_pool(disk.id)
    assert got.virtual_machine_configuration.data_disks[0].logical_unit_number == 1
    assert got.virtual_machine_configuration.data_disks[0].disk_size_gb == 50

    ade = models.BatchPoolCreateOptions(id=unique_id("batch_ade_"), vm_size=VM_SIZE, virtual_machine_configuration=_vm_config(
        disk_encryption_configuration=models.DiskEncryptionConfiguration(targets=[models.DiskEncryptionTarget.TEMPORARY_DISK])))
    batch_client.create_pool(ade)
    pools.append(ade.id)
    assert batch_client.get_pool(ade.id).virtual_machine_configuration.disk_encryption_configuration.targets == [
        models.DiskEncryptionTarget.TEMPORARY_DISK]

    assert len(list(batch_client.list_pools())) > 1
    assert len(list(batch_client.list_pools(max_results=1))) >= 3  # paged one by one, all come back
    listed = list(batch_client.list_pools(filter=f"startswith(id,'{ade.id}')", select=["id", "state"], expand=["stats"]))
    assert [p.id for p in listed] == [ade.id] and listed[0].vm_size is None


def test_batch_create_pool_with_blobfuse_mount(batch_client, made):
    pools, _ = made
    pool = models.BatchPoolCreateOptions(
        id=unique_id("batch_iaas_"), vm_size=VM_SIZE, virtual_machine_configuration=_vm_config(),
        task_scheduling_policy=models.BatchTaskSchedulingPolicy(node_fill_type=models.BatchNodeFillType.PACK),
        mount_configuration=[models.MountConfiguration(azure_blob_file_system_configuration=models.AzureBlobFileSystemConfiguration(
            account_name="test", container_name="https://test.blob.core.windows.net:443/test-container",
            relative_mount_path="foo", account_key="fake_account_key"))])
    assert batch_client.create_pool(pool) is None
    pools.append(pool.id)
    mount = batch_client.get_pool(pool.id).mount_configuration
    assert len(mount) == 1 and mount[0].azure_blob_file_system_configuration is not None
    assert mount[0].nfs_mount_configuration is None


def test_batch_update_pools(batch_client, made):
    pools, _ = made
    pool = models.BatchPoolCreateOptions(
        id=unique_id("batch_paas_"), vm_size=VM_SIZE, virtual_machine_configuration=_vm_config(),
        start_task=models.BatchStartTask(
            command_line='/bin/sh -c "echo hello world"',
            resource_files=[models.ResourceFile(http_url="https://blobsource.com", file_path="filename.txt")],
            environment_settings=[models.EnvironmentSetting(name="ENV_VAR", value="env_value")],
            user_identity=models.UserIdentity(auto_user=models.AutoUserSpecification(
                elevation_level=models.ElevationLevel.ADMIN))))
    batch_client.create_pool(pool)
    pools.append(pool.id)
    assert batch_client.replace_pool_properties(pool.id, models.BatchPoolReplaceOptions(
        application_package_references=[], metadata=[models.BatchMetadataItem(name="foo", value="bar")])) is None
    assert batch_client.update_pool(pool.id, models.BatchPoolUpdateOptions(
        metadata=[models.BatchMetadataItem(name="foo2", value="bar2")])) is None
    assert batch_client.pool_exists(pool.id)
    got = batch_client.get_pool(pool.id)
    assert got.id == pool.id and got.state == models.BatchPoolState.ACTIVE
    assert got.allocation_state == models.AllocationState.STEADY
    assert got.vm_size == VM_SIZE.lower()
    assert got.start_task is None  # replace_pool_properties without a start task clears it
    assert (got.metadata[0].name, got.metadata[0].value) == ("foo2", "bar2")
    selected = batch_client.get_pool(pool.id, select=["id", "state"], expand=["stats"])
    assert selected.id == pool.id and selected.state == models.BatchPoolState.ACTIVE
    assert selected.allocation_state is None and selected.vm_size is None
    batch_client.begin_delete_pool(pool.id)


def test_batch_scale_pools(batch_client, made):
    pools, _ = made
    pool_id = make_pool(batch_client, unique_id("batch_scale_"), dedicated=0)
    pools.append(pool_id)
    assert batch_client.enable_pool_auto_scale(pool_id, models.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes=2", auto_scale_evaluation_interval=datetime.timedelta(minutes=6))) is None
    result = batch_client.evaluate_pool_auto_scale(pool_id, models.BatchPoolEvaluateAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes=3"))
    assert isinstance(result, models.AutoScaleRun)
    assert result.results == "$TargetDedicatedNodes=3;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"
    _steady(batch_client, pool_id)
    assert batch_client.disable_pool_auto_scale(pool_id) is None
    _steady(batch_client, pool_id)
    batch_client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(
        target_dedicated_nodes=0, target_low_priority_nodes=2)).result()
    batch_client.begin_stop_pool_resize(pool_id).result()
    _steady(batch_client, pool_id)


def test_batch_network_configuration(batch_client, made):
    pools, _ = made
    network = models.NetworkConfiguration(endpoint_configuration=models.BatchPoolEndpointConfiguration(inbound_nat_pools=[
        models.BatchInboundNatPool(name="TestEndpointConfig", protocol=models.InboundEndpointProtocol.UDP, backend_port=64444,
                                   frontend_port_range_start=60000, frontend_port_range_end=61000,
                                   network_security_group_rules=[models.NetworkSecurityGroupRule(
                                       priority=150, access=models.NetworkSecurityGroupRuleAccess.ALLOW,
                                       source_address_prefix="*")])]))
    pool_id = make_pool(batch_client, unique_id("batch_network_"), dedicated=1, network_configuration=network)
    pools.append(pool_id)
    _steady(batch_client, pool_id)
    nodes = list(batch_client.list_nodes(pool_id))
    assert len(nodes) == 1
    endpoints = nodes[0].endpoint_configuration.inbound_endpoints
    assert len(endpoints) == 2
    assert endpoints[0].name == "TestEndpointConfig.0" and endpoints[0].protocol == "udp"


def test_batch_compute_nodes(batch_client, made):
    pools, _ = made
    pool_id = make_pool(batch_client, unique_id("batch_nodes_"), dedicated=2)
    pools.append(pool_id)
    nodes = idle_nodes(batch_client, pool_id, 2)
    node = batch_client.get_node(pool_id, nodes[0].id)
    assert node.scheduling_state == models.SchedulingState.ENABLED and node.is_dedicated
    assert node.node_agent_info is not None and node.node_agent_info.version is not None
    # azure-batch 15.1 cannot send this call without an option (an empty body makes its request builder fail)
    assert batch_client.disable_node_scheduling(pool_id, nodes[0].id, models.BatchNodeDisableSchedulingOptions(
        node_disable_scheduling_option=models.BatchNodeDisableSchedulingOption.REQUEUE)) is None
    assert batch_client.enable_node_scheduling(pool_id, nodes[0].id) is None
    batch_client.begin_reboot_node(pool_id, nodes[0].id, private.BatchNodeRebootOptions(
        node_reboot_kind="terminate")).result()
    batch_client.begin_remove_nodes(pool_id, models.BatchNodeRemoveOptions(node_ids=[n.id for n in nodes])).result()


def test_batch_files(batch_client, made):
    pools, jobs = made
    pool_id = make_pool(batch_client, unique_id("batch_files_"), dedicated=1)
    pools.append(pool_id)
    node = idle_nodes(batch_client, pool_id, 1)[0].id
    job_id = make_job(batch_client, pool_id)
    jobs.append(job_id)
    assert batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="test_task", command_line='/bin/sh -c "echo hello world"')) is None
    completed(batch_client, job_id, "test_task")

    only_files = [f for f in batch_client.list_node_files(pool_id, node, recursive=True) if not f.is_directory]
    assert len(only_files) >= 2
    props = batch_client.get_node_file_properties(pool_id, node, only_files[0].name)
    assert props.content_length is not None
    head = send(batch_client, "HEAD", f"/pools/{pool_id}/nodes/{node}/files/{quote(only_files[0].name, safe='')}")
    assert "content-length" in head.headers and "content-type" in head.headers  # the SDK does not read Content-Type
    data = b"".join(batch_client.download_node_file(pool_id, node, only_files[0].name))
    assert len(data) == props.content_length
    assert batch_client.delete_node_file(pool_id, node, only_files[0].name) is None

    only_files = [f for f in batch_client.list_task_files(job_id, "test_task") if not f.is_directory]
    assert len(only_files) >= 1
    stdout = next(f for f in only_files if f.name == "stdout.txt")
    props = batch_client.get_task_file_properties(job_id, "test_task", stdout.name)
    data = b"".join(batch_client.download_task_file(job_id, "test_task", stdout.name))
    assert len(data) == props.content_length and b"hello world" in data
    assert batch_client.delete_task_file(job_id, "test_task", stdout.name) is None


def test_batch_tasks(batch_client, made):
    pools, jobs = made
    pool_id = make_pool(batch_client, unique_id("batch_tasks_"), dedicated=0)  # tasks wait, as recorded
    pools.append(pool_id)
    job_id = make_job(batch_client, pool_id, task_failure_mode=models.BatchTaskFailureMode.PERFORM_EXIT_OPTIONS_JOB_ACTION)
    jobs.append(job_id)
    hello = '/bin/sh -c "echo hello world"'

    exit_conditions = models.ExitConditions(
        exit_codes=[models.ExitCodeMapping(code=1, exit_options=models.ExitOptions(job_action=models.BatchJobActionKind.TERMINATE))],
        exit_code_ranges=[models.ExitCodeRangeMapping(start=2, end=4, exit_options=models.ExitOptions(
            job_action=models.BatchJobActionKind.DISABLE))],
        default=models.ExitOptions(job_action=models.BatchJobActionKind.NONE))
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(id="task1", command_line=hello, exit_conditions=exit_conditions))
    task = batch_client.get_task(job_id, "task1")
    assert task.exit_conditions.default.job_action == models.BatchJobActionKind.NONE
    assert task.exit_conditions.exit_codes[0].code == 1
    assert task.exit_conditions.exit_codes[0].exit_options.job_action == models.BatchJobActionKind.TERMINATE

    container_url = "https://test.blob.core.windows.net:443/test-container"
    outputs = [models.OutputFile(file_pattern=f"../{name}.txt", destination=models.OutputFileDestination(
        container=models.OutputFileBlobContainerDestination(container_url=container_url, path=f"taskLogs/{name}.txt")),
        upload_options=models.OutputFileUploadConfiguration(upload_condition=condition))
        for name, condition in (("stdout", models.OutputFileUploadCondition.TASK_COMPLETION),
                                ("stderr", models.OutputFileUploadCondition.TASK_FAILURE))]
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(id="task2", command_line=hello, output_files=outputs))
    assert len(batch_client.get_task(job_id, "task2").output_files) == 2

    auto_user = models.AutoUserSpecification(scope=models.AutoUserScope.TASK, elevation_level=models.ElevationLevel.ADMIN)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(id="task3", command_line=hello,
                                                                   user_identity=models.UserIdentity(auto_user=auto_user)))
    task = batch_client.get_task(job_id, "task3")
    assert task.user_identity.auto_user.scope == models.AutoUserScope.TASK
    assert task.user_identity.auto_user.elevation_level == models.ElevationLevel.ADMIN

    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="task5", command_line=hello, container_settings=models.BatchTaskContainerSettings(
            image_name="ubuntu:latest", registry=models.ContainerRegistryReference(username="username", password="password"))))
    task = batch_client.get_task(job_id, "task5")
    assert task.container_settings.image_name == "ubuntu:latest" and task.container_settings.registry.username == "username"

    batch_client.create_task(job_id, models.BatchTaskCreateOptions(id="task6", command_line=hello,
                                                                   user_identity=models.UserIdentity(username="task-user")))
    assert batch_client.get_task(job_id, "task6").user_identity.username == "task-user"

    result = batch_client.create_task_collection(job_id, models.BatchTaskGroup(task_values=[
        models.BatchTaskCreateOptions(id=f"task{i}", command_line=hello) for i in range(7, 10)]))
    assert len(result.result_values) == 3
    assert result.result_values[0].status == models.BatchTaskAddStatus.SUCCESS
    assert len(list(batch_client.list_tasks(job_id))) == 8  # task4 (authentication token settings) is not sent
    counts = batch_client.get_job_task_counts(job_id)
    assert counts.task_counts.completed == 0 and counts.task_counts.succeeded == 0

    assert batch_client.terminate_task(job_id, "task6") is None
    assert batch_client.get_task(job_id, "task6").state == models.BatchTaskState.COMPLETED
    assert batch_client.reactivate_task(job_id, "task6") is None
    assert batch_client.get_task(job_id, "task6").state == models.BatchTaskState.ACTIVE
    assert batch_client.replace_task(job_id, "task6", models.BatchTask(
        constraints=models.BatchTaskConstraints(max_task_retry_count=1))) is None
    assert list(batch_client.list_subtasks(job_id, "task6")) == []
    assert batch_client.delete_task(job_id, "task6") is None

    # Bulk add failure: one task over the request size, refused with RequestBodyTooLarge even alone.
    files = [models.ResourceFile(http_url=f"https://mystorageaccount.blob.core.windows.net/files/resourceFile{i}",
                                 file_path=f"resourceFile{i}") for i in range(10000)]
    too_big = [models.BatchTaskCreateOptions(id="mytask", command_line="sleep 1", resource_files=files)]
    for concurrency in (None, 3):
        with pytest.raises(models.CreateTasksError) as info:
            batch_client.create_tasks(job_id, too_big, max_concurrency=concurrency)
        assert info.value.errors[-1].error.code == "RequestBodyTooLarge"

    # Bulk add success: tasks whose chunk of 100 is over the limit (the service refuses it whole),
    # split by the SDK until they fit. The SDK's test adds 733; 150 make one chunk the SDK must
    # split and one it need not, the two paths of its splitting, at a fifth of the cost.
    files = files[:100]
    many = [models.BatchTaskCreateOptions(id=f"mytask{i}", command_line="sleep 1", resource_files=files) for i in range(150)]
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_task_collection(job_id, models.BatchTaskGroup(task_values=many[:100]))
    assert info.value.status_code == 413 and info.value.error.code == "RequestBodyTooLarge"
    result = batch_client.create_tasks(job_id, many)
    assert len(result.result_values) == 150
    assert all(r.status == models.BatchTaskAddStatus.SUCCESS for r in result.result_values)


def test_batch_jobs(batch_client, shared_pool, made):
    _, jobs = made
    job = models.BatchJobCreateOptions(
        id=unique_id("batch_job1_"), pool_info=models.BatchPoolInfo(pool_id=shared_pool),
        job_preparation_task=models.BatchJobPreparationTask(command_line='/bin/sh -c "echo hello world"'),
        job_release_task=models.BatchJobReleaseTask(command_line='/bin/sh -c "echo goodbye world"'))
    assert batch_client.create_job(job, ocp_date=datetime.datetime.now(datetime.timezone.utc)) is None
    jobs.append(job.id)
    assert batch_client.replace_job(job.id, models.BatchJob(
        priority=500, constraints=models.BatchJobConstraints(max_task_retry_count=3),
        pool_info=models.BatchPoolInfo(pool_id=shared_pool))) is None
    assert batch_client.update_job(job.id, models.BatchJobUpdateOptions(priority=900)) is None
    got = batch_client.get_job(job.id)
    assert got.id == job.id and got.constraints.max_task_retry_count == 3 and got.priority == 900

    auto = models.BatchJobCreateOptions(
        id=unique_id("batch_job2_"), all_tasks_complete_mode=models.BatchAllTasksCompleteMode.TERMINATE_JOB,
        task_failure_mode=models.BatchTaskFailureMode.PERFORM_EXIT_OPTIONS_JOB_ACTION,
        pool_info=models.BatchPoolInfo(pool_id=shared_pool))
    assert batch_client.create_job(auto) is None
    jobs.append(auto.id)
    got = batch_client.get_job(auto.id)
    assert got.all_tasks_complete_mode == models.BatchAllTasksCompleteMode.TERMINATE_JOB
    assert got.task_failure_mode == models.BatchTaskFailureMode.PERFORM_EXIT_OPTIONS_JOB_ACTION
    assert {job.id, auto.id} <= {j.id for j in batch_client.list_jobs()}

    batch_client.begin_disable_job(job.id, models.BatchJobDisableOptions(disable_tasks="requeue")).result()
    batch_client.begin_enable_job(job.id).result()
    assert list(batch_client.list_job_preparation_and_release_task_status(job.id)) == []
    # azure-batch 15.1 cannot terminate without an options body (an empty one fails in its request builder)
    batch_client.begin_terminate_job(job.id, private.BatchJobTerminateOptions(termination_reason="UserTerminate")).result()
    batch_client.begin_delete_job(auto.id).result()
    jobs.remove(auto.id)
