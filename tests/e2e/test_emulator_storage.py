"""Resource files from and output files to Azurite, through real SAS URLs, round-tripping bytes."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
from azure.batch import models
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from tests.conftest import completed, make_job, make_pool, read_file, unique_id

pytestmark = pytest.mark.e2e


def _sas_url(service: BlobServiceClient, container: str, **permissions: bool) -> str:
    token = generate_container_sas(service.account_name, container, account_key=service.credential.account_key,
                                   permission=ContainerSasPermissions(**permissions),
                                   expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"{service.url.rstrip('/')}/{container}?{token}"


def test_resource_and_output_files_round_trip_through_azurite(emulator_with_storage):
    emu = emulator_with_storage
    service = BlobServiceClient.from_connection_string(emu.azurite.connection_string)
    inputs, outputs = unique_id("in").lower(), unique_id("out").lower()
    service.create_container(inputs)
    service.create_container(outputs)
    payload = os.urandom(300_000)
    service.get_blob_client(inputs, "data/sample.bin").upload_blob(payload)
    service.get_blob_client(inputs, "other/ignored.txt").upload_blob(b"not wanted")
    service.get_blob_client(inputs, "auto.txt").upload_blob(b"from auto-storage")

    client = emu.client()
    pool_id = make_pool(client, dedicated=1)
    job_id = make_job(client, pool_id)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="copy", command_line="/bin/sh -c 'ls -R; cp data/sample.bin result.bin; cat auto.txt'",
        resource_files=[
            models.ResourceFile(storage_container_url=_sas_url(service, inputs, read=True, list=True), blob_prefix="data/"),
            models.ResourceFile(auto_storage_container_name=inputs, blob_prefix="auto.txt"),
        ],
        output_files=[models.OutputFile(
            file_pattern="result.bin",
            destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
                container_url=_sas_url(service, outputs, write=True, create=True), path="results/result.bin")),
            upload_options=models.OutputFileUploadConfiguration(upload_condition="tasksuccess"))],
    ))
    task = completed(client, job_id, "copy", timeout=60)
    assert task.execution_info.result == "success", read_file(client, job_id, "copy", "stderr.txt")
    listing = read_file(client, job_id, "copy")
    assert "ignored.txt" not in listing and listing.rstrip().endswith("from auto-storage")
    assert service.get_blob_client(outputs, "results/result.bin").download_blob().readall() == payload

    # A read-only SAS cannot take an upload: the task fails with the upload error code.
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="denied", command_line="/bin/sh -c 'echo x > x.txt'",
        output_files=[models.OutputFile(
            file_pattern="x.txt",
            destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
                container_url=_sas_url(service, outputs, read=True))),
            upload_options=models.OutputFileUploadConfiguration(upload_condition="taskcompletion"))]))
    denied = completed(client, job_id, "denied", timeout=60).execution_info
    assert denied.result == "failure" and denied.failure_info.code.startswith("FileUpload")
    client.begin_delete_pool(pool_id)
    client.close()
