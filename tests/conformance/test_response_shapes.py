"""Every operation the emulator serves answers as the schema says: status, declared headers, body.

Where test_spec_examples.py replays Microsoft's examples, this walks the operations they do not
cover (gets, lists, files, subtasks), on resources made through the SDK, and checks each answer
against the operation's response model with read visibility, mechanically.
"""
from __future__ import annotations

from urllib.parse import quote

import pytest
from azure.batch import models

from tests.conftest import completed, idle_nodes, make_job, make_pool, unique_id
from tests.conformance.conftest import assert_conforms, send

NAT = {"name": "TestEndpointConfig", "protocol": "udp", "backendPort": 64444, "frontendPortRangeStart": 60000,
       "frontendPortRangeEnd": 61000}


@pytest.fixture(scope="module")
def world(emulator):
    """An inter-node pool of two nodes with an inbound NAT pool, a job with a preparation task,
    a finished task with files and a finished multi-instance task."""
    client = emulator.client()
    pool_id = make_pool(client, unique_id("shapes"), dedicated=2, enable_inter_node_communication=True,
                        task_slots_per_node=1, network_configuration=models.NetworkConfiguration(
                            endpoint_configuration=models.BatchPoolEndpointConfiguration(
                                inbound_nat_pools=[models.BatchInboundNatPool(**{
                                    "name": NAT["name"], "protocol": NAT["protocol"], "backend_port": NAT["backendPort"],
                                    "frontend_port_range_start": NAT["frontendPortRangeStart"],
                                    "frontend_port_range_end": NAT["frontendPortRangeEnd"]})])))
    job_id = make_job(client, pool_id, job_preparation_task=models.BatchJobPreparationTask(command_line="/bin/true"))
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="files", command_line="/bin/sh -c 'mkdir -p out && echo hi > out/a.txt'"))
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="multi", command_line="/bin/true", multi_instance_settings=models.MultiInstanceSettings(
            number_of_instances=2, coordination_command_line="/bin/true")))
    completed(client, job_id, "files")
    completed(client, job_id, "multi")
    node = idle_nodes(client, pool_id, 2)[0].id
    yield {"pool": pool_id, "job": job_id, "node": node, "client": client}
    client.begin_delete_job(job_id)
    client.begin_delete_pool(pool_id)
    client.close()


def _calls(w):
    pool, job, node = w["pool"], w["job"], w["node"]
    task_file = quote("wd/out/a.txt", safe="")
    node_file = quote(f"workitems/{job}/job-1/files/wd/out/a.txt", safe="")
    return [
        ("list_supported_images", "GET", "/supportedimages"),
        ("list_pool_node_counts", "GET", "/nodecounts"),
        ("list_pools", "GET", "/pools"),
        ("get_pool", "GET", f"/pools/{pool}"),
        ("pool_exists", "HEAD", f"/pools/{pool}"),
        ("list_nodes", "GET", f"/pools/{pool}/nodes"),
        ("get_node", "GET", f"/pools/{pool}/nodes/{node}"),
        ("list_node_files", "GET", f"/pools/{pool}/nodes/{node}/files?recursive=true"),
        ("list_jobs", "GET", "/jobs"),
        ("get_job", "GET", f"/jobs/{job}"),
        ("get_job_task_counts", "GET", f"/jobs/{job}/taskcounts"),
        ("list_job_preparation_and_release_task_status", "GET", f"/jobs/{job}/jobpreparationandreleasetaskstatus"),
        ("list_tasks", "GET", f"/jobs/{job}/tasks"),
        ("get_task", "GET", f"/jobs/{job}/tasks/files"),
        ("list_subtasks", "GET", f"/jobs/{job}/tasks/multi/subtasksinfo"),
        ("list_task_files", "GET", f"/jobs/{job}/tasks/files/files?recursive=true"),
        ("download_task_file", "GET", f"/jobs/{job}/tasks/files/files/{task_file}"),
        ("get_task_file_properties", "HEAD", f"/jobs/{job}/tasks/files/files/{task_file}"),
        ("get_node_file_properties", "HEAD", f"/pools/{pool}/nodes/{node}/files/{node_file}"),
        ("disable_node_scheduling", "POST", f"/pools/{pool}/nodes/{node}/disablescheduling"),
        ("enable_node_scheduling", "POST", f"/pools/{pool}/nodes/{node}/enablescheduling"),
        ("disable_job", "POST", f"/jobs/{job}/disable"),
        ("enable_job", "POST", f"/jobs/{job}/enable"),
    ]


def test_every_served_operation_answers_to_its_schema(world, batch_schema):
    client = world["client"]
    bodies = {"disable_job": {"disableTasks": "requeue"}}
    checked = []
    for name, method, path in _calls(world):
        op = batch_schema.operation_named(name)
        if name == "get_node_file_properties" and world["node"] not in _task_node(client, world["job"]):
            path = path.replace(world["node"], _task_node(client, world["job"]))
        reply = send(client, method, path, bodies.get(name), headers={"client-request-id": "00000000-0000-0000-0000-000000000000"})
        assert reply.status in op.statuses, (name, reply.status, reply.body)
        if op.response is None and method == "GET":  # a file download: the body is the file
            reply.body = None
        assert_conforms(batch_schema, op, reply, sent_client_request_id=True)
        checked.append(name)
    assert len(checked) == len(_calls(world))


def _task_node(client, job_id: str) -> str:
    return client.get_task(job_id, "files").node_info.node_id


def test_file_shapes(world):
    client, job = world["client"], world["job"]
    listing = send(client, "GET", f"/jobs/{job}/tasks/files/files?recursive=true").body["value"]
    entries = {e["name"]: e for e in listing}
    assert "properties" not in entries["wd/out"] and entries["wd/out"]["isDirectory"] is True
    assert entries["wd/out/a.txt"]["properties"]["contentLength"] == "3"  # int64: a JSON string
    head = send(client, "HEAD", f"/jobs/{job}/tasks/files/files/{quote('wd/out/a.txt', safe='')}")
    assert head.headers["ocp-batch-file-isdirectory"] == "false"
    assert head.headers["content-length"] == "3"


def test_entity_tags_are_bare_and_nodes_and_subtasks_carry_none(world):
    client, pool, job = world["client"], world["pool"], world["job"]
    got = send(client, "GET", f"/pools/{pool}")
    assert got.headers["etag"] == got.body["eTag"] and got.body["eTag"].startswith("0x8D")
    assert "currentNodeCommunicationMode" not in got.body
    for node in send(client, "GET", f"/pools/{pool}/nodes").body["value"]:
        assert not {"eTag", "lastModified", "previousState", "previousStateTransitionTime"} & set(node)
    for sub in send(client, "GET", f"/jobs/{job}/tasks/multi/subtasksinfo").body["value"]:
        assert not {"eTag", "lastModified"} & set(sub)
    # conditional requests still work with the bare tag, quoted or not
    etag = got.body["eTag"]
    assert send(client, "GET", f"/pools/{pool}", headers={"If-None-Match": f'"{etag}"'}).status == 304
    assert send(client, "GET", f"/pools/{pool}", headers={"If-Match": etag}).status == 200


def test_nodes_report_their_inbound_nat_endpoints(world):
    client, pool = world["client"], world["pool"]
    nodes = send(client, "GET", f"/pools/{pool}/nodes").body["value"]
    ports = []
    for node in nodes:
        endpoint, ssh = node["endpointConfiguration"]["inboundEndpoints"]
        assert endpoint["name"].startswith("TestEndpointConfig.") and endpoint["protocol"] == "udp"
        assert endpoint["backendPort"] == 64444 and endpoint["publicIPAddress"] == node["ipAddress"]
        assert NAT["frontendPortRangeStart"] <= endpoint["frontendPort"] <= NAT["frontendPortRangeEnd"]
        assert ssh["backendPort"] == 22 and ssh["protocol"] == "tcp"
        ports.append(endpoint["frontendPort"])
    assert len(set(ports)) == len(nodes) == 2
