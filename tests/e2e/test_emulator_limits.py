"""Azure's documented limits, refused by the emulator with Azure's code and status, through the SDK.

Each case: what the REST reference (or the service, where it was observed) says is refused, the
status and error code the emulator answers with, and that nothing was created or changed.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from azure.batch import models
from azure.batch.models import CreateTasksError
from azure.core.exceptions import HttpResponseError

from snakemake_executor_saje.emulator import Emulator
from tests.conformance.conftest import send
from tests.conftest import FAST, idle_nodes, make_job, make_pool, pool_options, unique_id, wait_for

pytestmark = pytest.mark.e2e


def refused(call, *args, **kwargs) -> tuple[int, str, dict[str, str]]:
    with pytest.raises(HttpResponseError) as info:
        call(*args, **kwargs)
    body = info.value.response.json()
    return info.value.status_code, body["code"], {v["key"]: v["value"] for v in body.get("values", [])}


def _autoscale(pool_id: str, interval: str):
    return pool_options(pool_id, enable_auto_scale=True, auto_scale_formula="$TargetDedicatedNodes = 0;",
                        auto_scale_evaluation_interval=interval)


@pytest.mark.parametrize("interval", ["PT4M59S", "PT1S", "PT168H1S", "P8D"])
def test_autoscale_interval_outside_5_minutes_to_168_hours_is_refused(batch_client, interval):
    pool_id = unique_id("interval")
    status, code, values = refused(batch_client.create_pool, _autoscale(pool_id, interval))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "autoScaleEvaluationInterval")
    assert "between 5 minutes and 168 hours" in values["Reason"]
    assert pool_id not in [p.id for p in batch_client.list_pools()]


def test_autoscale_interval_bounds_are_accepted_and_enable_autoscale_checks_too(batch_client):
    low, high = unique_id("iv5m"), unique_id("iv168h")
    batch_client.create_pool(_autoscale(low, "PT5M"))
    batch_client.create_pool(_autoscale(high, "PT168H"))
    assert batch_client.get_pool(high).auto_scale_evaluation_interval == timedelta(hours=168)
    status, code, values = refused(batch_client.enable_pool_auto_scale, low, models.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = 0;", auto_scale_evaluation_interval="PT30S"))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "autoScaleEvaluationInterval")
    assert batch_client.get_pool(low).auto_scale_evaluation_interval == timedelta(minutes=5)  # unchanged
    for pool_id in (low, high):
        batch_client.begin_delete_pool(pool_id)


def test_resize_timeout_under_5_minutes_is_refused_on_create_resize_and_remove(batch_client):
    pool_id = unique_id("rto")
    status, code, values = refused(batch_client.create_pool, pool_options(pool_id, dedicated=0,
                                                                          resize_timeout="PT4M"))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "resizeTimeout")
    assert "at least 5 minutes" in values["Reason"]
    make_pool(batch_client, pool_id, dedicated=1, resize_timeout="PT5M")
    status, code, values = refused(batch_client.begin_resize_pool, pool_id, models.BatchPoolResizeOptions(
        target_dedicated_nodes=2, resize_timeout="PT1M"))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "resizeTimeout")
    node = idle_nodes(batch_client, pool_id, 1)[0]
    status, code, values = refused(batch_client.begin_remove_nodes, pool_id, models.BatchNodeRemoveOptions(
        node_ids=[node.id], resize_timeout="PT10S"))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "resizeTimeout")
    pool = batch_client.get_pool(pool_id)
    assert pool.target_dedicated_nodes == 1 and pool.resize_timeout == timedelta(minutes=5)  # nothing changed
    batch_client.begin_delete_pool(pool_id)


def test_depends_on_without_uses_task_dependencies_is_refused(batch_client, shared_pool):
    job_id = make_job(batch_client, shared_pool)
    task = models.BatchTaskCreateOptions(id="after", command_line="/bin/true",
                                         depends_on=models.BatchTaskDependencies(task_ids=["first"]))
    status, code, _ = refused(batch_client.create_task, job_id, task)
    assert (status, code) == (400, "TaskDependenciesNotSpecifiedOnJob")
    with pytest.raises(CreateTasksError) as info:  # in a collection the task fails alone
        batch_client.create_tasks(job_id, [task, models.BatchTaskCreateOptions(id="alone", command_line="/bin/true")])
    assert {r.task_id: r.error.code for r in info.value.failure_tasks} == {"after": "TaskDependenciesNotSpecifiedOnJob"}
    assert [t.id for t in batch_client.list_tasks(job_id)] == ["alone"]
    with_deps = make_job(batch_client, shared_pool, uses_task_dependencies=True)
    batch_client.create_task(with_deps, task)
    assert batch_client.get_task(with_deps, "after").depends_on.task_ids == ["first"]
    for job in (job_id, with_deps):
        batch_client.begin_delete_job(job)


def test_reimage_on_a_virtual_machine_pool_is_refused(batch_client, pool):
    node = idle_nodes(batch_client, pool, 1)[0]
    # azure-batch 15.1's begin_reimage_node cannot send a request without its private options model:
    # the request as the REST reference has it, through the SDK's pipeline.
    reply = send(batch_client, "POST", f"/pools/{pool}/nodes/{node.id}/reimage", {"nodeReimageOption": "requeue"})
    assert (reply.status, reply.code) == (409, "OperationNotValidOnNode")
    assert reply.values == {"Reason": "Operation reimage can be invoked only on pools created with cloudServiceConfiguration"}
    assert batch_client.get_node(pool, node.id).state == models.BatchNodeState.IDLE


def test_an_image_past_its_batch_support_end_of_life_takes_no_new_pool(batch_client):
    eol = next(i for i in batch_client.list_supported_images() if i.node_agent_sku_id == "batch.node.ubuntu 20.04")
    assert eol.batch_support_end_of_life == datetime(2025, 4, 30, tzinfo=timezone.utc)  # still listed, as on Azure
    pool_id = unique_id("eol")
    spec = models.BatchPoolCreateOptions(
        id=pool_id, vm_size="Standard_D2s_v3",
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=eol.image_reference, node_agent_sku_id=eol.node_agent_sku_id))
    status, code, values = refused(batch_client.create_pool, spec)
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "nodeAgentSKUId")
    assert "2025-04-30" in values["Reason"]
    assert pool_id not in [p.id for p in batch_client.list_pools()]


def test_the_same_image_was_accepted_before_its_end_of_life(tmp_path):
    """The check reads the service's clock: an emulator whose clock reads 2025-01-01 accepts it."""
    with Emulator(tmp_path / "emu", clock_start=datetime(2025, 1, 1, tzinfo=timezone.utc), **FAST) as emu:
        client = emu.client()
        client.create_pool(models.BatchPoolCreateOptions(
            id="focal", vm_size="Standard_D2s_v3", virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(publisher="microsoft-azure-batch",
                                                             offer="ubuntu-server-container", sku="20-04-lts"),
                node_agent_sku_id="batch.node.ubuntu 20.04")))
        assert client.get_pool("focal").state == models.BatchPoolState.ACTIVE
        client.close()


def test_core_quotas_stop_a_resize_with_an_error_naming_the_quota(tmp_path):
    """Per VM series, in total, and for Spot: the pool gets what fits, then a resize error."""
    with Emulator(tmp_path / "emu", dedicated_core_quota=20, low_priority_core_quota=4,
                  vm_family_core_quotas={"standardDSv3Family": 6}, **FAST) as emu:
        client = emu.client()

        def errors(pool_id: str) -> list:
            def steady():
                pool = client.get_pool(pool_id)
                return pool if pool.allocation_state == models.AllocationState.STEADY else None
            pool = wait_for(steady, what=f"{pool_id} steady")
            return pool.current_dedicated_nodes, pool.current_low_priority_nodes, [e.code for e in pool.resize_errors or []]

        client.create_pool(pool_options("series", dedicated=5))  # Standard_D2s_v3: 2 vCPUs, quota 6 -> 3 nodes
        assert errors("series") == (3, 0, ["AccountVMSeriesCoreQuotaReached"])
        message = client.get_pool("series").resize_errors[0].message
        assert "standardDSv3Family" in message and "6 cores" in message
        client.create_pool(models.BatchPoolCreateOptions(
            id="total", vm_size="Standard_D4s_v5", target_dedicated_nodes=5,  # 4 vCPUs; 20 - 6 in use -> 3 nodes
            virtual_machine_configuration=pool_options("x").virtual_machine_configuration))
        assert errors("total") == (3, 0, ["AccountCoreQuotaReached"])
        client.create_pool(pool_options("spot", dedicated=0, low_priority=3))  # 2 vCPUs each, Spot quota 4
        assert errors("spot") == (0, 2, ["AccountLowPriorityCoreQuotaReached"])
        client.close()
