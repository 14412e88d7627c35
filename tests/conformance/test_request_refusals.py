"""Every kind of malformed body gets Azure's code, on every body the emulator reads; nothing is half-created.

Kinds (see docs/emulator.md, "Fidelity"): unknown property, read-only property, wrong JSON type or
unreadable format -> 400 InvalidRequestBody with the OData reader's Reason; missing required
property -> 400 MissingRequiredProperty; value outside an enum -> 400 InvalidPropertyValue.
"""
from __future__ import annotations

import pytest
from azure.batch import models

from tests.conftest import IMAGE, NODE_AGENT, VM_SIZE, idle_nodes, make_job, unique_id
from tests.conformance.conftest import send

BODY = "InvalidRequestBody"
MISSING = "MissingRequiredProperty"
INVALID = "InvalidPropertyValue"


def pool_body(pool_id: str, **extra):
    return {"id": pool_id, "vmSize": VM_SIZE, "targetDedicatedNodes": 0,
            "virtualMachineConfiguration": {"imageReference": IMAGE, "nodeAgentSKUId": NODE_AGENT}, **extra}


def task_body(task_id: str, **extra):
    return {"id": task_id, "commandLine": "/bin/true", **extra}


# (case id, mutation of a valid create-pool body, code, the value the error names)
POOL_CASES = [
    ("unknown", {"bogus": 1}, BODY, "The property 'bogus' does not exist on type"),
    ("read-only state", {"state": "active"}, BODY, "The property 'state' does not exist on type"),
    ("read-only currentDedicatedNodes", {"currentDedicatedNodes": 3}, BODY, "'currentDedicatedNodes'"),
    ("string for int", {"targetDedicatedNodes": "3"}, BODY, "Cannot convert a primitive value to the expected type 'Edm.Int32'"),
    ("float for int", {"taskSlotsPerNode": 1.5}, BODY, "'Edm.Int32'"),
    ("int for bool", {"enableInterNodeCommunication": 1}, BODY, "'Edm.Boolean'"),
    ("object for string", {"displayName": {"a": 1}}, BODY, "An unexpected 'StartObject' node was found"),
    ("string for object", {"startTask": "echo"}, BODY, "A 'StartObject' node was expected"),
    ("object for list", {"metadata": {"name": "a", "value": "b"}}, BODY, "A 'StartArray' node was expected"),
    ("bad duration", {"resizeTimeout": "15 minutes"}, BODY, "'Edm.Time'"),
    ("nested unknown", {"startTask": {"commandLine": "x", "cmd": "y"}}, BODY, "'cmd' does not exist on type 'Microsoft.Azure.Batch.Protocol.Entities.BatchStartTask'"),
    ("bad enum", {"taskSchedulingPolicy": {"nodeFillType": "diagonal"}}, INVALID, "taskSchedulingPolicy.nodeFillType"),
    ("bad nested enum", {"startTask": {"commandLine": "x", "userIdentity": {"autoUser": {"elevationLevel": "root"}}}},
     INVALID, "startTask.userIdentity.autoUser.elevationLevel"),
    ("missing nested required", {"startTask": {"waitForSuccess": True}}, MISSING, "startTask.commandLine"),
]


@pytest.mark.parametrize("mutation,code,named", [c[1:] for c in POOL_CASES], ids=[c[0] for c in POOL_CASES])
def test_create_pool_refusals_create_nothing(batch_client, mutation, code, named):
    pool_id = unique_id("refused")
    reply = send(batch_client, "POST", "/pools", pool_body(pool_id, **mutation))
    assert (reply.status, reply.code) == (400, code), reply.body
    assert any(named in v for v in reply.values.values()), reply.values
    assert send(batch_client, "GET", f"/pools/{pool_id}").status == 404  # nothing half-created


def test_missing_required_names_the_property(batch_client):
    body = pool_body(unique_id("refused"))
    del body["vmSize"]
    reply = send(batch_client, "POST", "/pools", body)
    assert (reply.status, reply.code, reply.values) == (400, MISSING, {"PropertyName": "vmSize"})


def test_an_unreadable_body_beats_a_missing_property(batch_client):
    reply = send(batch_client, "POST", "/pools", {"vmSize": 3})  # no id, and a number for a string
    assert reply.code == BODY


def test_enum_values_match_without_regard_to_case_and_come_back_in_the_services_spelling(batch_client):
    pool_id = unique_id("case")
    reply = send(batch_client, "POST", "/pools", pool_body(pool_id, taskSchedulingPolicy={"nodeFillType": "Pack"}))
    assert reply.status == 201, reply.body
    assert batch_client.get_pool(pool_id).task_scheduling_policy.node_fill_type == "pack"
    batch_client.begin_delete_pool(pool_id)


def test_null_is_read_as_absent(batch_client):
    pool_id = unique_id("nulls")
    reply = send(batch_client, "POST", "/pools", pool_body(pool_id, displayName=None, startTask=None))
    assert reply.status == 201, reply.body
    batch_client.begin_delete_pool(pool_id)


def test_body_that_is_not_json_or_not_an_object(batch_client):
    for raw in (b"{not json", b"[1, 2]", b'"text"'):
        reply = send(batch_client, "POST", "/pools", raw=raw)
        assert (reply.status, reply.code) == (400, BODY), raw


# ----------------------------------------------------------------------------- jobs
JOB_CASES = [
    ("unknown", {"bogus": True}, BODY, "'bogus'"),
    ("read-only state", {"state": "active"}, BODY, "'state'"),
    ("read-only executionInfo", {"executionInfo": {}}, BODY, "'executionInfo'"),
    ("bad enum", {"onAllTasksComplete": "explode"}, INVALID, "onAllTasksComplete"),
    ("string for int", {"priority": "high"}, BODY, "'Edm.Int32'"),
    ("missing poolInfo", {"poolInfo": None}, MISSING, "poolInfo"),
    ("prep task without command", {"jobPreparationTask": {"waitForSuccess": True}}, MISSING, "jobPreparationTask.commandLine"),
]


@pytest.mark.parametrize("mutation,code,named", [c[1:] for c in JOB_CASES], ids=[c[0] for c in JOB_CASES])
def test_create_job_refusals_create_nothing(batch_client, shared_pool, mutation, code, named):
    job_id = unique_id("refused")
    reply = send(batch_client, "POST", "/jobs", {"id": job_id, "poolInfo": {"poolId": shared_pool}, **mutation})
    assert (reply.status, reply.code) == (400, code), reply.body
    assert any(named in v for v in reply.values.values()), reply.values
    assert send(batch_client, "GET", f"/jobs/{job_id}").status == 404


# ----------------------------------------------------------------------------- tasks
TASK_CASES = [
    ("unknown", {"cmd": "x"}, BODY, "'cmd'"),
    ("read-only state", {"state": "active"}, BODY, "'state'"),
    ("read-only executionInfo", {"executionInfo": {"retryCount": 0}}, BODY, "'executionInfo'"),
    ("string for int", {"requiredSlots": "1"}, BODY, "'Edm.Int32'"),
    ("bad duration", {"constraints": {"maxWallClockTime": "1h"}}, BODY, "'Edm.Time'"),
    ("bad enum", {"outputFiles": [{"filePattern": "*", "destination": {"container": {"containerUrl": "http://x"}},
                                   "uploadOptions": {"uploadCondition": "sometimes"}}]}, INVALID, "outputFiles[0].uploadOptions.uploadCondition"),
    ("missing in list item", {"environmentSettings": [{"value": "v"}]}, MISSING, "environmentSettings[0].name"),
    ("multi-instance without coordination command", {"multiInstanceSettings": {"numberOfInstances": 2}}, MISSING,
     "multiInstanceSettings.coordinationCommandLine"),
]


@pytest.mark.parametrize("mutation,code,named", [c[1:] for c in TASK_CASES], ids=[c[0] for c in TASK_CASES])
def test_create_task_refusals_create_nothing(batch_client, job, mutation, code, named):
    task_id = unique_id("refused")
    reply = send(batch_client, "POST", f"/jobs/{job}/tasks", task_body(task_id, **mutation))
    assert (reply.status, reply.code) == (400, code), reply.body
    assert any(named in v for v in reply.values.values()), reply.values
    assert send(batch_client, "GET", f"/jobs/{job}/tasks/{task_id}").status == 404


def test_task_collection_that_cannot_be_read_adds_nothing(batch_client, job):
    good, bad = unique_id("good"), unique_id("bad")
    reply = send(batch_client, "POST", f"/jobs/{job}/addtaskcollection",
                 {"value": [task_body(good), task_body(bad, bogus=1)]})
    assert (reply.status, reply.code) == (400, BODY), reply.body
    assert [t.id for t in batch_client.list_tasks(job)] == []


def test_task_collection_invalid_task_fails_alone(batch_client, job):
    """A task the service read but refuses gets its own clienterror; the others are added."""
    good, bad = unique_id("good"), unique_id("bad")
    reply = send(batch_client, "POST", f"/jobs/{job}/addtaskcollection",
                 {"value": [task_body(good), {"id": bad}]})
    assert reply.status == 200, reply.body
    results = {r["taskId"]: r for r in reply.body["value"]}
    assert results[good]["status"] == "success"
    assert results[bad]["status"] == "clienterror"
    assert results[bad]["error"]["code"] == MISSING
    assert [t.id for t in batch_client.list_tasks(job)] == [good]


def test_task_collection_without_value(batch_client, job):
    assert send(batch_client, "POST", f"/jobs/{job}/addtaskcollection", {}).code == MISSING
    assert send(batch_client, "POST", f"/jobs/{job}/addtaskcollection", {"value": {}}).code == BODY


# ----------------------------------------------------------------------------- updates, actions
def test_updates_and_actions_are_read_against_their_own_models(batch_client, shared_pool):
    """Patch, replace, resize, autoscale, node actions, job terminate/disable: each body has a model."""
    job_id = make_job(batch_client, shared_pool)
    task_id = unique_id("t")
    batch_client.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line="/bin/true"))
    node = idle_nodes(batch_client, shared_pool, 1)[0].id
    pool = f"/pools/{shared_pool}"
    cases = [
        ("PATCH", pool, {"targetDedicatedNodes": 5}, BODY),  # not updatable: not on BatchPoolUpdateOptions
        ("PATCH", pool, {"taskSchedulingPolicy": {"nodeFillType": "zigzag"}}, INVALID),
        ("POST", f"{pool}/updateproperties", {"metadata": []}, MISSING),  # applicationPackageReferences
        ("POST", f"{pool}/updateproperties", {"metadata": [], "applicationPackageReferences": [], "state": "x"}, BODY),
        ("POST", f"{pool}/resize", {"targetDedicatedNodes": "2"}, BODY),
        ("POST", f"{pool}/resize", {"nodeDeallocationOption": "later"}, INVALID),
        ("POST", f"{pool}/resize", {"vmSize": "big"}, BODY),
        ("POST", f"{pool}/enableautoscale", {"formula": "$TargetDedicatedNodes=1;"}, BODY),
        ("POST", f"{pool}/evaluateautoscale", {}, MISSING),
        ("POST", f"{pool}/evaluateautoscale", {"autoScaleFormula": 1}, BODY),
        ("POST", f"{pool}/removenodes", {"nodeList": node}, BODY),
        ("POST", f"{pool}/removenodes", {}, MISSING),
        ("POST", f"{pool}/nodes/{node}/reboot", {"nodeRebootOption": "now"}, INVALID),
        ("POST", f"{pool}/nodes/{node}/reimage", {"nodeReimageOption": "now"}, INVALID),
        ("POST", f"{pool}/nodes/{node}/disablescheduling", {"nodeDisableSchedulingOption": "never"}, INVALID),
        ("POST", f"{pool}/nodes/{node}/disablescheduling", {"option": "requeue"}, BODY),
        ("PATCH", f"/jobs/{job_id}", {"priority": "1"}, BODY),
        ("PATCH", f"/jobs/{job_id}", {"usesTaskDependencies": True}, BODY),  # create-only
        ("PUT", f"/jobs/{job_id}", {"priority": 1}, MISSING),  # poolInfo
        ("PUT", f"/jobs/{job_id}", {"poolInfo": {"poolId": shared_pool}, "id": job_id}, BODY),  # id is read-only
        ("POST", f"/jobs/{job_id}/disable", {}, MISSING),
        ("POST", f"/jobs/{job_id}/disable", {"disableTasks": "pause"}, INVALID),
        ("POST", f"/jobs/{job_id}/terminate", {"reason": "x"}, BODY),
        ("PUT", f"/jobs/{job_id}/tasks/{task_id}", {"constraints": {"maxTaskRetryCount": "3"}}, BODY),
        ("PUT", f"/jobs/{job_id}/tasks/{task_id}", {"commandLine": "/bin/false"}, BODY),  # read-only once created
    ]
    for method, path, body, code in cases:
        reply = send(batch_client, method, path, body)
        assert (reply.status, reply.code) == (400, code), (method, path, body, reply.body)
    # none of it changed anything
    assert batch_client.get_job(job_id).state == "active"
    assert batch_client.get_pool(shared_pool).target_dedicated_nodes == 2
    assert batch_client.get_node(shared_pool, node).scheduling_state == "enabled"
    batch_client.begin_delete_job(job_id)


# ----------------------------------------------------------------------------- api-versions
def test_each_api_version_is_read_with_its_own_schema(batch_client):
    """azure-batch 14.x's api-version has the properties its SDK sends and 15.x dropped
    (certificateReferences, targetNodeCommunicationMode); 2025-06-01 refuses them as unknown."""
    extra = {"certificateReferences": [], "targetNodeCommunicationMode": "simplified"}
    old_id, new_id = unique_id("v14"), unique_id("v15")
    assert send(batch_client, "POST", "/pools", pool_body(old_id, **extra), api_version="2024-02-01.19.0").status == 201
    reply = send(batch_client, "POST", "/pools", pool_body(new_id, **extra))
    assert (reply.status, reply.code) == (400, BODY), reply.body
    refused = send(batch_client, "POST", "/pools", pool_body(unique_id("v14"), bogus=1), api_version="2024-02-01.19.0")
    assert "'Microsoft.Azure.Batch.Protocol.Entities.PoolAddParameter'" in refused.values["Reason"]
    # each version answers with its own model's properties
    assert "targetNodeCommunicationMode" in send(batch_client, "GET", f"/pools/{old_id}", api_version="2024-02-01.19.0").body
    assert "targetNodeCommunicationMode" not in send(batch_client, "GET", f"/pools/{old_id}").body
    batch_client.begin_delete_pool(old_id)
