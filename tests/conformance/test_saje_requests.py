"""Every request body SAJE builds for its example workflows validates against the Batch schema.

The pools of each bundled profile (HTC and MPI classes), the tasks of the fan-out and MPI examples
(plain, with staged files and outputs, multi-instance with common files) are built with SAJE's own
pure builders, serialised exactly as azure-batch sends them, and read as the service reads them.
The example workflows' end-to-end runs cover the rest (job create, terminate, delete, the image
test's pool, job and multi-instance task): the fixtures of those tests assert the emulator refused
no body of theirs (`Emulator.schema_refusals`).
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from azure.batch import models
from azure.batch._utils.model_base import SdkJSONEncoder

from snakemake_executor_saje import mpi, pools
from snakemake_executor_saje.emulator.schema import request as request_schema
from snakemake_executor_saje.mapping import JobSpec, TaskOptions, task_request
from snakemake_executor_saje.settings import ExecutorSettings

PROFILES = sorted((Path(__file__).resolve().parents[2] / "profiles").glob("*/config.yaml"))


def wire(model) -> dict:
    """The body azure-batch puts on the wire for `model`."""
    return json.loads(json.dumps(model, cls=SdkJSONEncoder, exclude_readonly=True))


def profile_settings(path: Path) -> ExecutorSettings:
    names = {f.name for f in fields(ExecutorSettings)}
    values = {}
    for key, value in (yaml.safe_load(path.read_text()) or {}).items():
        name = key.removeprefix("saje-").replace("-", "_")
        if key.startswith("saje-") and name in names:
            values[name] = value
    return ExecutorSettings(**values)


FANOUT = JobSpec(rule="transform", jobid=3, command="snakemake --target-jobs 'transform:sample=a'", threads=1,
                 resources={"mem_mb": 1000})
MPI_JOB = JobSpec(rule="pi", jobid=5, command="snakemake --target-jobs 'pi:'", threads=1,
                  resources={"mpi": "mpirun", "tasks": 4, "nodes": 2})


@pytest.mark.parametrize("profile", PROFILES, ids=[p.parent.name for p in PROFILES])
@pytest.mark.parametrize("job", [FANOUT, MPI_JOB], ids=["htc", "mpi"])
def test_pool_bodies_of_each_profile_validate(profile, job):
    settings = profile_settings(profile)
    pool_class = pools.pool_class_for(job, settings)
    spec = pools.pool_spec(pool_class, settings, "run1", snakemake_version="9.0.0",
                           pip_packages=("snakemake-storage-plugin-azure",))
    request_schema.validated("BatchPoolCreateOptions", wire(spec))


@pytest.mark.parametrize("profile", PROFILES, ids=[p.parent.name for p in PROFILES])
def test_pool_bodies_of_each_profile_are_accepted_by_the_service(profile, batch_client):
    """Beyond the schema, Azure's limits: the autoscale interval (5 minutes to 168 hours), the
    resize timeout (at least 5 minutes), the image's support life, the VM size, the inter-node
    pool size. Each profile's pools, sent as azure-batch sends them, are created."""
    from tests.conformance.conftest import send
    from tests.conftest import unique_id

    settings = profile_settings(profile)
    for job in (FANOUT, MPI_JOB):
        spec = pools.pool_spec(pools.pool_class_for(job, settings), settings, "run1", snakemake_version="9.0.0",
                               pool_id=unique_id("profile"))
        body = wire(spec)
        reply = send(batch_client, "POST", "/pools", body)
        try:
            assert reply.status == 201, (profile.parent.name, job.rule, reply.body)
        finally:
            send(batch_client, "DELETE", f"/pools/{body['id']}")


@pytest.mark.parametrize("profile", PROFILES, ids=[p.parent.name for p in PROFILES])
@pytest.mark.parametrize("job", [FANOUT, MPI_JOB], ids=["htc", "mpi"])
def test_task_bodies_of_the_examples_validate(profile, job):
    settings = profile_settings(profile)
    pool_class = pools.pool_class_for(job, settings)
    shape = pools.pool_shape(pool_class, settings, "saje-run1-pool")
    staged = models.ResourceFile(http_url="https://acct.blob.core.windows.net/saje/run1/in.txt?sv=x", file_path="data/in.txt")
    output = models.OutputFile(
        file_pattern="results/out.txt",
        destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
            container_url="https://acct.blob.core.windows.net/saje?sv=x", path="run1/results/out.txt")),
        upload_options=models.OutputFileUploadConfiguration(upload_condition=models.OutputFileUploadCondition.TASK_SUCCESS))
    options = TaskOptions(max_task_retries=1, max_wall_clock_minutes=60, environment={"SAJE_RUN": "run1"},
                          resource_files=[staged], output_files=[output],
                          coordination_command=mpi.coordination_command(common_dir=mpi.COMMON_FILES_DIR) if shape.mpi else None,
                          common_resource_files=[staged] if shape.mpi else ())
    task = task_request(job, shape, options)
    body = request_schema.validated("BatchTaskCreateOptions", wire(task))
    assert ("multiInstanceSettings" in body) == bool(shape.mpi)
    request_schema.validated("BatchTaskGroup", {"value": [wire(task)]})


def test_emulator_keeps_the_refused_bodies(emulator, batch_client, job):
    """What the e2e fixtures assert on: a refused body is recorded with its operation and reason."""
    from tests.conformance.conftest import send

    before = len(emulator.schema_refusals)
    send(batch_client, "POST", f"/jobs/{job}/tasks", {"id": "x", "commandLine": "true", "bogus": 1})
    send(batch_client, "POST", f"/jobs/{job}/addtaskcollection", {"value": [{"id": "y"}]})
    new = emulator.schema_refusals[before:]
    assert [(r["operation"], r["code"]) for r in new] == [("create_task", "InvalidRequestBody"),
                                                         ("create_task_collection", "MissingRequiredProperty")]


@pytest.mark.parametrize("profile", PROFILES, ids=[p.parent.name for p in PROFILES])
@pytest.mark.parametrize("job", [FANOUT, MPI_JOB], ids=["htc", "mpi"])
def test_arm_pool_bodies_of_each_profile_validate(profile, job):
    """A pool with a node identity goes through ARM (armpools): its body reads as azure-mgmt-batch's Pool."""
    from snakemake_executor_saje.armpools import arm_pool_body
    from snakemake_executor_saje.emulator.schema import arm as arm_schema

    settings = profile_settings(profile)
    spec = pools.pool_spec(pools.pool_class_for(job, settings), settings, "run1", snakemake_version="9.0.0",
                           pip_packages=("snakemake-storage-plugin-azure",))
    identity = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id"
    op = arm_schema.operation_for("PUT", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Batch/batchAccounts/a/pools/"
                                  + spec.id, "2025-06-01")
    assert arm_schema.problems(op, json.loads(json.dumps(arm_pool_body(spec, [identity])))) == []
