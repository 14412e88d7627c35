"""Pools, nodes, node files, supported images, autoscale, start tasks and Spot preemption,
driven through azure-batch 15.x over HTTP against the shared emulator."""
from __future__ import annotations

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from tests.conftest import (IMAGE, NODE_AGENT, completed, idle_nodes, make_job, make_pool, pool_options, read_file,
                      unique_id, wait_for)

pytestmark = pytest.mark.e2e


def _code(exc: HttpResponseError) -> str:
    return exc.error.code if exc.error else ""


def test_supported_images_carry_node_agent_skus(batch_client):
    images = list(batch_client.list_supported_images())
    skus = {i.node_agent_sku_id for i in images}
    assert NODE_AGENT in skus and "batch.node.el 8" in skus
    hpc = [i for i in images if i.image_reference.offer == IMAGE["offer"]]
    assert hpc and all(i.os_type == "linux" for i in hpc)


def test_pool_create_get_list_exists_delete(batch_client):
    pool_id = make_pool(batch_client, metadata=[models.BatchMetadataItem(name="owner", value="tests")])
    pool = batch_client.get_pool(pool_id)
    assert pool.state == "active" and pool.allocation_state == "steady"
    assert pool.current_dedicated_nodes == 1 and pool.vm_size == "standard_d2s_v3"
    assert pool.metadata[0].value == "tests"
    assert batch_client.pool_exists(pool_id) is True

    listed = list(batch_client.list_pools(filter=f"id eq '{pool_id}'", select=["id", "state"]))
    assert [(p.id, p.state) for p in listed] == [(pool_id, "active")]
    assert listed[0].vm_size is None  # $select drops the rest

    batch_client.begin_delete_pool(pool_id).result()
    # azure-batch 15.1's exception policy turns every 404 into ResourceNotFoundError, even for HEAD.
    with pytest.raises(ResourceNotFoundError):
        batch_client.pool_exists(pool_id)
    with pytest.raises(ResourceNotFoundError) as info:
        batch_client.get_pool(pool_id)
    assert _code(info.value) == "PoolNotFound"


def test_pool_errors_use_the_real_codes(batch_client):
    pool_id = make_pool(batch_client, wait=False)
    with pytest.raises(ResourceExistsError) as info:
        batch_client.create_pool(pool_options(pool_id))
    assert _code(info.value) == "PoolExists"

    with pytest.raises(HttpResponseError) as info:
        batch_client.create_pool(pool_options("bad id!"))
    assert info.value.status_code == 400 and _code(info.value) == "InvalidPropertyValue"

    options = pool_options(unique_id("pool"))
    options.vm_size = "Standard_NotASize"
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_pool(options)
    assert _code(info.value) == "InvalidPropertyValue"
    assert "vmSize" in str(info.value.response.json()["values"])

    options = pool_options(unique_id("pool"))
    options.virtual_machine_configuration.image_reference = models.BatchVmImageReference(
        publisher="nobody", offer="nothing", sku="0")
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_pool(options)
    assert _code(info.value) == "InvalidPropertyValue"

    raw = {"id": unique_id("pool"), "virtualMachineConfiguration": {
        "imageReference": IMAGE, "nodeAgentSKUId": NODE_AGENT}, "targetDedicatedNodes": 0}
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_pool(raw)
    assert _code(info.value) == "MissingRequiredProperty"
    assert info.value.response.json()["values"] == [{"key": "PropertyName", "value": "vmSize"}]

    batch_client.begin_delete_pool(pool_id)
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_pool(pool_options(pool_id))
    assert info.value.status_code == 409 and _code(info.value) == "PoolBeingDeleted"
    with pytest.raises(ResourceNotFoundError) as info:
        batch_client.get_pool(unique_id("missing"))
    assert _code(info.value) == "PoolNotFound"


def test_update_resize_stop_resize_and_remove_nodes(batch_client):
    pool_id = make_pool(batch_client, dedicated=1)
    batch_client.update_pool(pool_id, models.BatchPoolUpdateOptions(
        metadata=[models.BatchMetadataItem(name="phase", value="two")]))
    assert batch_client.get_pool(pool_id).metadata[0].value == "two"

    batch_client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=3)).result()
    nodes = idle_nodes(batch_client, pool_id, 3)
    assert batch_client.get_pool(pool_id).current_dedicated_nodes == 3

    batch_client.begin_remove_nodes(pool_id, models.BatchNodeRemoveOptions(node_ids=[nodes[0].id])).result()
    wait_for(lambda: len(list(batch_client.list_nodes(pool_id))) == 2, what="node removal")
    pool = batch_client.get_pool(pool_id)
    assert pool.target_dedicated_nodes == 2 and pool.allocation_state == "steady"

    # Shrink to 0 with taskcompletion while one node is busy: the pool stays 'resizing' until the
    # task ends. Stopping the resize keeps the busy node and makes the pool steady at that size.
    job_id = make_job(batch_client, pool_id)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(id="busy", command_line="/bin/sleep 3"))
    wait_for(lambda: batch_client.get_task(job_id, "busy").state == "running", what="busy task")
    batch_client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(
        target_dedicated_nodes=0, node_deallocation_option="taskcompletion"))
    wait_for(lambda: len(list(batch_client.list_nodes(pool_id))) == 1, what="idle node removed")
    assert batch_client.get_pool(pool_id).allocation_state == "resizing"
    batch_client.begin_stop_pool_resize(pool_id).result()
    pool = wait_for(lambda: (p := batch_client.get_pool(pool_id)).allocation_state == "steady" and p)
    assert [e.code for e in pool.resize_errors] == ["ResizeStopped"]
    assert pool.current_dedicated_nodes == pool.target_dedicated_nodes == 1
    assert completed(batch_client, job_id, "busy").execution_info.result == "success"
    assert len(list(batch_client.list_nodes(pool_id))) == 1
    batch_client.begin_delete_pool(pool_id)


def test_nodes_list_get_and_node_files(batch_client):
    pool_id = make_pool(batch_client, dedicated=2, start_task=models.BatchStartTask(
        command_line="/bin/sh -c 'echo started > $AZ_BATCH_NODE_SHARED_DIR/marker'", wait_for_success=True))
    nodes = list(batch_client.list_nodes(pool_id))
    assert len(nodes) == 2 and len({n.ip_address for n in nodes}) == 2
    assert all(n.ip_address.startswith("127.") for n in nodes)
    node = batch_client.get_node(pool_id, nodes[0].id)
    assert node.state == "idle" and node.start_task_info.result == "success"
    assert node.scheduling_state == "enabled" and node.is_dedicated is True

    names = {f.name for f in batch_client.list_node_files(pool_id, node.id)}
    assert {"shared", "startup", "workitems", "applications"} <= names
    deep = {f.name for f in batch_client.list_node_files(pool_id, node.id, recursive=True)}
    assert "shared/marker" in deep and "startup/stdout.txt" in deep
    assert b"".join(batch_client.download_node_file(pool_id, node.id, "shared/marker")) == b"started\n"
    props = batch_client.get_node_file_properties(pool_id, node.id, "shared/marker")
    assert props.content_length == 8
    batch_client.delete_node_file(pool_id, node.id, "shared/marker")
    with pytest.raises(ResourceNotFoundError) as info:
        batch_client.get_node_file_properties(pool_id, node.id, "shared/marker")
    assert info.value.status_code == 404
    with pytest.raises(ResourceNotFoundError) as info:
        batch_client.get_node(pool_id, "tvmps_nosuchnode")
    assert _code(info.value) == "NodeNotFound"
    batch_client.begin_delete_pool(pool_id)


def test_start_task_failure_marks_the_node(batch_client):
    pool_id = make_pool(batch_client, wait=False, start_task=models.BatchStartTask(
        command_line="/bin/sh -c 'echo broken >&2; exit 3'", wait_for_success=True))
    node = wait_for(lambda: next((n for n in batch_client.list_nodes(pool_id) if n.state == "starttaskfailed"), None),
                    what="starttaskfailed")
    info = node.start_task_info
    assert info.state == "completed" and info.exit_code == 3 and info.result == "failure"
    assert info.failure_info.category == "usererror" and info.failure_info.code == "FailureExitCode"
    assert b"broken" in b"".join(batch_client.download_node_file(pool_id, node.id, "startup/stderr.txt"))
    batch_client.begin_delete_pool(pool_id)


def test_injected_start_task_fault(batch_client, emulator):
    emulator.faults.update(start_task_failures=1)
    pool_id = make_pool(batch_client, wait=False, start_task=models.BatchStartTask(
        command_line="/bin/true", wait_for_success=True))
    node = wait_for(lambda: next((n for n in batch_client.list_nodes(pool_id)
                                  if n.state in ("starttaskfailed", "idle")), None), what="start task outcome")
    assert node.state == "starttaskfailed" and node.start_task_info.exit_code == 1
    batch_client.begin_delete_pool(pool_id)


def test_autoscale_enable_evaluate_grow_from_zero_and_shrink(batch_client):
    formula = ("$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 1);"
               "$tasks = $samples < 1 ? max(0, $PendingTasks.GetSample(1)) : max($PendingTasks.GetSample(1), 0);"
               "$TargetDedicatedNodes = min(2, $tasks);"
               "$NodeDeallocationOption = taskcompletion;")
    pool_id = unique_id("auto")
    batch_client.create_pool(pool_options(pool_id, enable_auto_scale=True, auto_scale_formula=formula,
                                          auto_scale_evaluation_interval="PT5M"))
    pool = batch_client.get_pool(pool_id)
    assert pool.enable_auto_scale and pool.target_dedicated_nodes == 0
    assert "$TargetDedicatedNodes=0" in pool.auto_scale_run.results

    run = batch_client.evaluate_pool_auto_scale(
        pool_id, models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = 7;"))
    assert "$TargetDedicatedNodes=7" in run.results and run.error is None
    bad = batch_client.evaluate_pool_auto_scale(
        pool_id, models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = $Nope;"))
    assert bad.error is not None and bad.error.code

    job_id = make_job(batch_client, pool_id)
    batch_client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true")
                                       for i in range(3)])
    wait_for(lambda: batch_client.get_pool(pool_id).current_dedicated_nodes >= 1, 30, what="autoscale grow")
    for i in range(3):
        assert completed(batch_client, job_id, f"t{i}").execution_info.result == "success"
    wait_for(lambda: batch_client.get_pool(pool_id).current_dedicated_nodes == 0, 30, what="autoscale shrink")

    batch_client.disable_pool_auto_scale(pool_id)
    assert batch_client.get_pool(pool_id).enable_auto_scale is False
    batch_client.enable_pool_auto_scale(pool_id, models.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = 1;", auto_scale_evaluation_interval="PT5M"))
    wait_for(lambda: batch_client.get_pool(pool_id).current_dedicated_nodes == 1, what="re-enabled autoscale")
    with pytest.raises(HttpResponseError) as info:
        batch_client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=2))
    assert info.value.status_code == 409
    batch_client.begin_delete_pool(pool_id)


def test_spot_preemption_requeues_the_task(batch_client, emulator):
    pool_id = unique_id("spot")
    batch_client.create_pool(pool_options(pool_id, dedicated=0, low_priority=1))
    node = idle_nodes(batch_client, pool_id, 1)[0]
    assert node.is_dedicated is False
    job_id = make_job(batch_client, pool_id)
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="long", command_line="/bin/sh -c 'sleep 2; echo done'"))
    wait_for(lambda: batch_client.get_task(job_id, "long").state == "running", what="task running")
    emulator.preempt(pool_id, node.id)
    task = batch_client.get_task(job_id, "long")
    assert task.state == "active" and task.execution_info.requeue_count == 1
    task = completed(batch_client, job_id, "long", timeout=40)
    assert task.execution_info.result == "success" and task.execution_info.requeue_count == 1
    assert task.node_info.node_id != node.id  # a replacement Spot node ran it
    assert read_file(batch_client, job_id, "long") == "done\n"
    batch_client.begin_delete_pool(pool_id)
