"""Replay of the Batch REST spec's published examples on the emulator.

The examples are api-version 2025-06-01's; an operation with none there is replayed with its
example of 2024-02-01.19.0, sent as 2025-06-01 (the operation, its body and its answer are the same
in both versions' SDK models) and checked against the 2025-06-01 schema.
Each example in examples/ (see its README for the source) is sent as its request says, through
the SDK's pipeline with shared-key auth. Only ids and preconditions are adapted: the ids the
example names are mapped to resources this test makes first (the pool a "get node" example reads,
a failed task for "reactivate"), Windows paths become the node's paths, and an image or VM size
the account does not offer becomes one it does. Expectations are not adapted: the status code
must be the example's, every header the operation declares must be present, and the body must
conform to the operation's response model (read visibility), as must the example's own body.
"""
from __future__ import annotations

import json
import re
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from azure.batch import models

from snakemake_executor_saje import catalogue
from tests.conftest import IMAGE, NODE_AGENT, VM_SIZE, completed, idle_nodes, make_pool, unique_id
from tests.conformance.conftest import API_VERSION, assert_conforms, send

EXAMPLES = sorted((Path(__file__).parent / "examples").glob("*.json"))

# Examples whose answer the service itself contradicts: (status, code) it gave instead, and why.
SERVICE_ANSWERS_OTHERWISE = {
    "Nodes_NodeReimage": (409, "OperationNotValidOnNode",
                          "the example answers 202, but reimage 'can be invoked only on Pools created with the cloud "
                          "service configuration property' (the spec's own description; those pools are retired), and "
                          "on a VM pool the service answered 409 OperationNotValidOnNode (azure-sdk-for-python, "
                          "tests/recordings/test_batch.test_batch_compute_nodes.yaml): every emulated pool is a VM one"),
}
# Examples whose request carries a property azure-batch 15.x (the emulator's schema source) lacks:
# the property the emulator refuses, and why it is absent. Listed in docs/emulator.md.
NOT_APPLICABLE = {
    "Pools_ReplacePoolProperties": ("certificateReferences", "certificates are retired (deprecated since 2024-02) "
                                    "and absent from azure-batch 15.x"),
    "Pools_CreatePool_ResourceTags": ("resourceTags", "in the REST spec for 2025-06-01 but not in azure-batch 15.x"),
}

# Examples whose status code contradicts their own operation's declared one (the SDK's, generated
# from the same TypeSpec): the replay expects the operation's.
STATUS_CONTRADICTS_OPERATION = {
    "Pools_Update_CustomerManagedKey_ForBatchManagedAccounts": "answers 201 to a PATCH the operation declares 200 "
                                                               "for (as does the example Pools_UpdatePool)",
}
# Properties some examples' own bodies carry that the 2025-06-01 response model (azure-batch 15.x) lacks;
# the emulator does not send them (issue 9, item 4).
BEYOND_MODEL = {"currentNodeCommunicationMode"}

FILE_TEXT = "0123456789abcdef\n"  # 17 bytes, the size the file examples report


# Operations the SDK names otherwise than the spec's operationId does.
SDK_NAMES = {"get_task_file": "download_task_file", "get_node_file": "download_node_file",
             "list_sub_tasks": "list_subtasks"}


def operation_name(operation_id: str) -> str:
    """'Pools_EnablePoolAutoScale' -> 'enable_pool_auto_scale' (the SDK's operation name)."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id.split("_", 1)[1]).lower()
    return SDK_NAMES.get(name, name)


class World:
    """Makes what an example presumes exists, and forgets it afterwards."""

    def __init__(self, client, shared_pool: str):
        self.client, self.shared_pool = client, shared_pool
        self.pools: list[str] = []
        self.jobs: list[str] = []

    def pool(self, *, nodes: int = 0, **extra: Any) -> str:
        pool_id = make_pool(self.client, unique_id("replay"), dedicated=nodes, **extra)
        self.pools.append(pool_id)
        return pool_id

    def container_pool(self) -> str:
        """A pool without nodes whose nodes would run container tasks."""
        pool_id = unique_id("replay")
        self.client.create_pool(models.BatchPoolCreateOptions(
            id=pool_id, vm_size=VM_SIZE, target_dedicated_nodes=0, virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(**IMAGE), node_agent_sku_id=NODE_AGENT,
                container_configuration=models.BatchContainerConfiguration(type="dockerCompatible"))))
        self.pools.append(pool_id)
        return pool_id

    def job(self, pool_id: str | None = None, *, preparation: bool = False) -> str:
        job_id = unique_id("replay")
        self.client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(
            pool_id=pool_id or self.pool()), **({
                "job_preparation_task": models.BatchJobPreparationTask(command_line="/bin/true"),
                "job_release_task": models.BatchJobReleaseTask(command_line="/bin/true")} if preparation else {})))
        self.jobs.append(job_id)
        return job_id

    def finished_task(self, command: str, pool_id: str | None = None) -> tuple[str, str]:
        job_id = self.job(pool_id or self.shared_pool)
        task_id = unique_id("t")
        self.client.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line=command))
        completed(self.client, job_id, task_id)
        return job_id, task_id

    def cleanup(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        for delete, ids in ((self.client.begin_delete_job, self.jobs), (self.client.begin_delete_pool, self.pools)):
            for item in ids:
                try:
                    delete(item)
                except ResourceNotFoundError:
                    pass  # the example deleted it, or refused to make it


def _offered_pool(pool: dict[str, Any]) -> dict[str, Any]:
    """The account offers the Ubuntu HPC image and the sizes of its catalogue: use them where the
    example names an image or size this account does not offer (a precondition, like an id)."""
    vm = pool["virtualMachineConfiguration"]
    vm["imageReference"], vm["nodeAgentSKUId"] = dict(IMAGE), NODE_AGENT
    if catalogue.vm_size(pool["vmSize"]) is None:
        pool["vmSize"] = VM_SIZE
    return pool


WRITE_FILE = f"/bin/sh -c 'printf \"{FILE_TEXT.strip()}\\n\" > testFile.txt'"


def prepare(world: World, example: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any] | None]:
    """Path parameters and body for the example, its ids mapped onto resources made here."""
    params = example["parameters"]
    op = example["operationId"]
    body = next((v for v in params.values() if isinstance(v, dict)), None)
    body = json.loads(json.dumps(body)) if body is not None else None
    path: dict[str, str] = {}
    if op == "Pools_CreatePool":
        body["id"] = unique_id("replay")
        world.pools.append(body["id"])
        _offered_pool(body)
        if "mountConfiguration" in body or "containerConfiguration" in body["virtualMachineConfiguration"]:
            # Its nodes would need the example's shares reachable and its image in the machine's
            # container storage (host preconditions); the create answer is what is replayed.
            body["targetDedicatedNodes"] = 0
    elif op in ("Pools_ListPools", "Pools_ListPoolNodeCounts", "Pools_ListSupportedImages"):
        world.pool(nodes=1)  # something to list
    elif op in ("Pools_EvaluatePoolAutoScale", "Pools_DisablePoolAutoScale"):
        path["poolId"] = world.pool(enable_auto_scale=True, auto_scale_formula="$TargetDedicatedNodes = 0;",
                                    auto_scale_evaluation_interval="PT5M")
    elif op == "Pools_RemoveNodes":
        path["poolId"] = world.pool(nodes=2)
        body["nodeList"] = [n.id for n in world.client.list_nodes(path["poolId"])]
    elif op.startswith("Pools_"):
        path["poolId"] = world.pool()
    elif op == "Jobs_CreateJob":
        body["id"] = unique_id("replay")
        body["poolInfo"]["poolId"] = world.pool()
        world.jobs.append(body["id"])
    elif op == "Jobs_EnableJob":
        path["jobId"] = world.job()
        world.client.begin_disable_job(path["jobId"], models.BatchJobDisableOptions(disable_tasks="requeue")).result()
    elif op == "Jobs_ListJobPreparationAndReleaseTaskStatus":
        pool_id = world.pool(nodes=1)
        path["jobId"] = world.job(pool_id, preparation=True)
        world.client.create_task(path["jobId"], models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        completed(world.client, path["jobId"], "t")
    elif op.startswith("Jobs_"):
        path["jobId"] = world.job()
        if body and "poolInfo" in body:
            body["poolInfo"]["poolId"] = world.client.get_job(path["jobId"]).pool_info.pool_id
    elif op in ("Tasks_CreateTask", "Tasks_CreateTaskCollection"):
        # A pool without nodes: the tasks are accepted and wait. A container task's pool runs containers.
        path["jobId"] = world.job(world.container_pool() if "containerSettings" in (body or {}) else None)
    elif op == "Tasks_ListTasks":
        path["jobId"] = world.job()
        for task_id in ("task1", "task2"):
            world.client.create_task(path["jobId"], models.BatchTaskCreateOptions(id=task_id, command_line="/bin/true"))
    elif op == "Tasks_ListSubTasks":
        pool_id = world.pool(nodes=2, enable_inter_node_communication=True, task_slots_per_node=1)
        path["jobId"], path["taskId"] = world.job(pool_id), unique_id("t")
        world.client.create_task(path["jobId"], models.BatchTaskCreateOptions(
            id=path["taskId"], command_line="/bin/true",
            multi_instance_settings=models.MultiInstanceSettings(number_of_instances=2, coordination_command_line="/bin/true")))
        completed(world.client, path["jobId"], path["taskId"])
    elif op in ("Tasks_ReplaceTask", "Tasks_TerminateTask", "Tasks_GetTask", "Tasks_DeleteTask"):
        path["jobId"] = world.job()
        path["taskId"] = unique_id("t")
        world.client.create_task(path["jobId"], models.BatchTaskCreateOptions(id=path["taskId"], command_line="/bin/true"))
    elif op == "Tasks_ReactivateTask":
        path["jobId"], path["taskId"] = world.finished_task("/bin/false")
    elif op in ("Tasks_ListTaskFiles", "Tasks_GetTaskFileProperties", "Tasks_GetTaskFile", "Tasks_DeleteTaskFile"):
        path["jobId"], path["taskId"] = world.finished_task(WRITE_FILE)
        if "filePath" in params:
            path["filePath"] = params["filePath"].replace("\\", "/")
    elif op.startswith("Nodes_"):
        path["poolId"] = world.pool(nodes=1)
        path["nodeId"] = idle_nodes(world.client, path["poolId"], 1)[0].id
        if "filePath" in params:
            job_id, task_id = world.finished_task(WRITE_FILE, path["poolId"])
            path["filePath"] = f"workitems/{job_id}/job-1/{task_id}/wd/testFile.txt"
    else:
        raise AssertionError(f"no preparation for {op}")
    return path, body


@pytest.fixture
def world(batch_client, shared_pool):
    made = World(batch_client, shared_pool)
    try:
        yield made
    finally:
        made.cleanup()


APPLICABLE = [p for p in EXAMPLES if p.stem not in NOT_APPLICABLE and p.stem not in SERVICE_ANSWERS_OTHERWISE]
OTHERWISE = [p for p in EXAMPLES if p.stem in SERVICE_ANSWERS_OTHERWISE]
EMULATED_NOT = [p for p in EXAMPLES if p.stem in NOT_APPLICABLE]


def test_every_example_not_applicable_is_one_of_the_replayed_files():
    assert sorted(NOT_APPLICABLE) == sorted(p.stem for p in EMULATED_NOT)
    assert {p.stem for p in EXAMPLES} >= set(STATUS_CONTRADICTS_OPERATION)


def test_every_operation_the_emulator_serves_has_an_example(batch_client, batch_schema):
    """Each operation of the schema is sent once, its ids made up: an operation the emulator serves
    answers anything but InvalidUri/UnsupportedHttpVerb (PoolNotFound, say), and must be among the
    examples' operations; one it does not serve is refused so (docs/emulator.md, Fidelity)."""
    replayed = {operation_name(json.loads(p.read_text())["operationId"]) for p in EXAMPLES}
    served, unserved = set(), set()
    for op in batch_schema.operations:
        path = re.sub(r"\{\w+\}", "none", op.path)
        method = "GET" if op.method == "HEAD" else op.method  # a HEAD answer has no error body to read
        reply = send(batch_client, method, path, {} if op.body else None)
        (unserved if reply.code in ("InvalidUri", "UnsupportedHttpVerb") else served).add(op.name)
    assert served - replayed == set()
    assert "list_job_schedules" in unserved and "create_pool" in served  # the probe tells them apart


@pytest.mark.parametrize("example_file", EMULATED_NOT, ids=[p.stem for p in EMULATED_NOT])
def test_spec_example_of_a_feature_not_emulated_is_refused_naming_it(example_file: Path, world: World,
                                                                      batch_client, batch_schema):
    """What the emulator does not have is refused loudly (never accepted and ignored): the
    request reader names the property, as it does for any property the schema lacks."""
    reply, _, _ = _replay(example_file, world, batch_client, batch_schema)
    prop, _why = NOT_APPLICABLE[example_file.stem]
    assert reply.status == 400 and reply.code == "InvalidRequestBody", reply.body
    assert f"'{prop}'" in reply.values.get("Reason", ""), reply.body


@pytest.mark.parametrize("example_file", OTHERWISE, ids=[p.stem for p in OTHERWISE])
def test_spec_example_the_service_contradicts_gets_the_services_answer(example_file: Path, world: World,
                                                                       batch_client, batch_schema):
    reply, _, _ = _replay(example_file, world, batch_client, batch_schema)
    status, code, _why = SERVICE_ANSWERS_OTHERWISE[example_file.stem]
    assert (reply.status, reply.code) == (status, code), reply.body


@pytest.mark.parametrize("example_file", APPLICABLE, ids=[p.stem for p in APPLICABLE])
def test_spec_example_replays(example_file: Path, world: World, batch_client, batch_schema):
    reply, op, example = _replay(example_file, world, batch_client, batch_schema)
    expected_status, expected = next(iter(example["responses"].items()))  # exists: 200 (404 is the other case)
    if example_file.stem in STATUS_CONTRADICTS_OPERATION:
        assert reply.status in op.statuses, reply.body
    else:
        assert reply.status == int(expected_status), reply.body
    if op.response is None and op.method == "GET":  # a file download: the body is the file
        assert reply.body == FILE_TEXT and reply.headers["content-length"] == expected["Content-Length"]
        reply.body = None
    assert_conforms(batch_schema, op, reply, sent_client_request_id=True)
    if op.response and expected.get("body") is not None:  # the example's own body obeys the same schema
        assert _example_body_problems(batch_schema, op, expected["body"]) == []
    if op.name == "create_task_collection":  # and each task fares as the example says
        outcome = {r["taskId"]: r["status"] for r in reply.body["value"]}
        assert outcome == {r["taskId"]: r["status"] for r in expected["body"]["value"]}, reply.body


def _example_body_problems(batch_schema, op, body) -> list[str]:
    """What in an example's own answer the response model does not describe, apart from enum casing
    (the SDK reads every enum without regard to case: CaseInsensitiveEnumMeta; recorded answers
    say "Spread", "None") and the properties of BEYOND_MODEL."""
    items = body["value"] if op.paged else [body]
    return [str(p) for item in items for p in batch_schema.problems(op.response, item, request=False)
            if not (p.kind == "enum" and batch_schema.canonical_enum(p.expected["enum"], str(p.value)))
            and not (p.kind == "unknown" and p.path.rsplit(".", 1)[-1] in BEYOND_MODEL)]


def _replay(example_file: Path, world: World, batch_client, batch_schema):
    """Send the example's request, its ids mapped onto resources made here: (reply, operation, example)."""
    example = json.loads(example_file.read_text())
    op = batch_schema.operation_named(operation_name(example["operationId"]))
    path_params, body = prepare(world, example)
    params = example["parameters"]
    path = op.path
    for name, value in path_params.items():
        path = path.replace("{" + name + "}", quote(value, safe=""))
    assert "{" not in path, path
    query = "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items()
                     if not isinstance(v, dict) and k in ("recursive", "$filter", "$select", "$expand", "maxresults"))
    headers = {"client-request-id": params["client-request-id"]}
    if "ocp-date" in params:  # the request's own time: shared-key auth refuses a date long past
        headers["ocp-date"] = formatdate(usegmt=True)
    version = params["api-version"] if params["api-version"].startswith(API_VERSION) else API_VERSION
    reply = send(batch_client, op.method, path + (f"?{query}" if query else ""), body, api_version=version,
                 headers=headers)
    return reply, op, example

