"""Managed identities on the emulator's nodes, through the real SDKs: a pool made through ARM with a
user-assigned identity (the only way Azure makes one), a task that gets a token from its node's
identity endpoint (IMDS's protocol) and reads a private blob with no key and no SAS, and resource
files, a manifest SAJE's fetch script reads and output files that reach storage with an
identityReference, against the session's HTTPS Azurite that takes Entra tokens."""
from __future__ import annotations

from pathlib import Path

import pytest
from azure.batch import BatchClient, models
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient

import snakemake_executor_saje.fetch_inputs
from tests.conftest import completed, read_file, unique_id
from tests.e2e.test_arm_setup import SUB, _group, _name, _register_batch, _storage, clients, credential  # noqa: F401

pytestmark = pytest.mark.e2e
IDENTITY = f"/subscriptions/{SUB}/resourceGroups/identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nodes"
OTHER = IDENTITY.replace("/nodes", "/other")
READ_WITH_IDENTITY = """
import os, sys
from azure.identity import ManagedIdentityCredential
from azure.storage.blob import BlobClient
print(os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"], file=sys.stderr)
blob = BlobClient(sys.argv[1], sys.argv[2], sys.argv[3], credential=ManagedIdentityCredential())
sys.stdout.write(blob.download_blob().readall().decode())
"""


@pytest.fixture
def account(arm_emulator, clients):
    """(resource group, account name, data-plane client) of a Batch account with auto-storage."""
    rg = _group(clients)
    _register_batch(clients)
    name = _name("sajeid")
    clients.batch.batch_account.begin_create(rg, name, {"location": "westeurope", "properties": {
        "autoStorage": {"storageAccountId": _storage(clients, rg)}}}).result()
    key = clients.batch.batch_account.get_keys(rg, name).primary
    batch = BatchClient(arm_emulator.endpoint, AzureNamedKeyCredential(name, key), connection_verify=str(arm_emulator.cert_path))
    yield rg, name, batch
    batch.close()


def _identity_pool(clients, rg: str, account: str, identities: list[str], identity: dict | None = None,
                   **properties) -> str:
    """A one-node pool made through ARM with `identities` (or the `identity` body given)."""
    pool_id = unique_id("idpool")
    clients.batch.pool.create(rg, account, pool_id, {
        "identity": identity or {"type": "UserAssigned", "userAssignedIdentities": {i: {} for i in identities}},
        "properties": {
            "vmSize": "STANDARD_D2S_V3",
            "deploymentConfiguration": {"virtualMachineConfiguration": {
                "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404", "version": "latest"},
                "nodeAgentSkuId": "batch.node.ubuntu 24.04"}},
            "scaleSettings": {"fixedScale": {"targetDedicatedNodes": 1}},
            "taskSlotsPerNode": 2,
            **properties}})
    return pool_id


def test_a_task_reads_a_blob_with_its_node_identity_and_no_sas(arm_emulator, clients, account):
    rg, name, batch = account
    pool_id = _identity_pool(clients, rg, name, [IDENTITY])
    try:
        store = BlobServiceClient.from_connection_string(arm_emulator.azurite.connection_string,
                                                         **arm_emulator.azurite.client_options)
        container = _name("private")
        store.create_container(container)  # private: no public access, and the task gets no SAS
        base = f"{store.url.rstrip('/')}/{container}"
        for blob, data in {"secret.txt": b"read with ManagedIdentityCredential\n", "input.txt": b"a resource file\n",
                           "listed.txt": b"a manifest line\n", "read.py": READ_WITH_IDENTITY.encode(),
                           "saje-fetch-inputs.py": Path(snakemake_executor_saje.fetch_inputs.__file__).read_bytes(),
                           "saje-inputs.tsv": f"{base}/listed.txt\tlisted.txt\t\t{IDENTITY}\n".encode()}.items():
            store.get_blob_client(container, blob).upload_blob(data)

        pool = batch.get_pool(pool_id)  # the data plane shows the identity (read-only there)
        (assigned,) = pool.identity.user_assigned_identities
        assert (pool.identity.type, assigned.resource_id) == ("UserAssigned", IDENTITY)
        assert clients.batch.pool.get(rg, name, pool_id).identity.user_assigned_identities[IDENTITY].client_id == \
            assigned.client_id

        reference = models.BatchNodeIdentityReference(resource_id=IDENTITY)
        job_id = unique_id("idjob")
        batch.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
        batch.create_task(job_id, models.BatchTaskCreateOptions(
            id="reader",
            command_line=f"/bin/bash -c 'python3 saje-fetch-inputs.py saje-inputs.tsv && python3 read.py {store.url}"
                         f" {container} secret.txt > out.txt && cat input.txt listed.txt >> out.txt'",
            resource_files=[models.ResourceFile(http_url=f"{base}/{blob}", file_path=blob, identity_reference=reference)
                            for blob in ("input.txt", "read.py", "saje-fetch-inputs.py", "saje-inputs.tsv")],
            output_files=[models.OutputFile(file_pattern="out.txt", destination=models.OutputFileDestination(
                container=models.OutputFileBlobContainerDestination(container_url=base, path="out/out.txt",
                                                                    identity_reference=reference)),
                upload_options=models.OutputFileUploadConfiguration(upload_condition="taskSuccess"))]))
        # An identity the pool does not have gets no token: the download is refused as Batch refuses it.
        stranger = models.BatchNodeIdentityReference(resource_id=IDENTITY.replace("/nodes", "/stranger"))
        batch.create_task(job_id, models.BatchTaskCreateOptions(id="stranger", command_line="/bin/true", resource_files=[
            models.ResourceFile(http_url=f"{base}/input.txt", file_path="input.txt", identity_reference=stranger)]))

        task = completed(batch, job_id, "reader", timeout=90)
        stderr = read_file(batch, job_id, "reader", "stderr.txt")
        assert task.execution_info.result == "success", stderr
        assert store.get_blob_client(container, "out/out.txt").download_blob().readall() == (
            b"read with ManagedIdentityCredential\na resource file\na manifest line\n")
        node = batch.get_node(pool_id, task.node_info.node_id)
        assert stderr.startswith(f"http://{node.ip_address}:")  # the node's own identity endpoint
        assert completed(batch, job_id, "stranger", timeout=90).execution_info.failure_info.code == "BlobAccessDenied"
    finally:
        clients.batch.pool.begin_delete(rg, name, pool_id)


def test_pool_identities_azure_refuses(arm_emulator, clients, account):
    rg, name, _ = account
    for identity in ({"type": "UserAssigned"}, {"type": "UserAssigned", "userAssignedIdentities": {"/not/an/identity": {}}}):
        with pytest.raises(HttpResponseError) as info:
            _identity_pool(clients, rg, name, [], identity=identity)
        assert info.value.status_code == 400 and info.value.error.code == "InvalidParameter"
    # A blob mount with an identity the pool does not have is refused with the data plane's code.
    with pytest.raises(HttpResponseError) as info:
        _identity_pool(clients, rg, name, [IDENTITY], mountConfiguration=[{"azureBlobFileSystemConfiguration": {
            "accountName": "devstoreaccount1", "containerName": "c", "relativeMountPath": "m",
            "identityReference": {"resourceId": OTHER}}}])
    assert info.value.error.code == "InvalidPropertyValue"
