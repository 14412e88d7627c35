"""The emulator's ARM side through the real azure-mgmt-* SDKs: bearer tokens from the emulator's
managed-identity endpoint, HTTPS with its certificate, ARM long-running operations via ARMPolling.
"""
from __future__ import annotations

import uuid

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from snakemake_executor_saje.emulator import Emulator


pytestmark = pytest.mark.e2e

SUB = "00000000-0000-0000-0000-000000005a1e"
SCOPES = ["https://management.azure.com/.default"]
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"


def _azurite_available() -> bool:
    from snakemake_executor_saje.emulator.azurite import find_azurite

    try:
        return bool(find_azurite())
    except Exception:
        return False


@pytest.fixture
def credential(arm_emulator: Emulator, monkeypatch: pytest.MonkeyPatch):
    """azure-identity's ManagedIdentityCredential, pointed at the emulator's token endpoint."""
    from azure.identity import ManagedIdentityCredential

    for name in ("IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in arm_emulator.identity_environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(arm_emulator.cert_path))
    monkeypatch.setenv("SSL_CERT_FILE", str(arm_emulator.cert_path))
    return ManagedIdentityCredential()


def _client(cls, emu: Emulator, credential, **kwargs):
    return cls(credential, SUB, base_url=emu.endpoint, credential_scopes=SCOPES,
               connection_verify=str(emu.cert_path), **kwargs)


@pytest.fixture
def clients(arm_emulator: Emulator, credential):
    from azure.mgmt.authorization import AuthorizationManagementClient
    from azure.mgmt.batch import BatchManagementClient
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.resource.resources import ResourceManagementClient
    from azure.mgmt.storage import StorageManagementClient

    class Clients:
        resource = _client(ResourceManagementClient, arm_emulator, credential)
        storage = _client(StorageManagementClient, arm_emulator, credential)
        batch = _client(BatchManagementClient, arm_emulator, credential)
        auth = _client(AuthorizationManagementClient, arm_emulator, credential)
        compute = _client(ComputeManagementClient, arm_emulator, credential)

    return Clients


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _group(clients, location: str = "westeurope") -> str:
    rg = _name("rg-")
    clients.resource.resource_groups.create_or_update(rg, {"location": location})
    return rg


def _register_batch(clients) -> None:
    import time

    clients.resource.providers.register("Microsoft.Batch")
    deadline = time.monotonic() + 20
    while clients.resource.providers.get("Microsoft.Batch").registration_state != "Registered":
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_resource_groups_and_api_version(clients, arm_emulator: Emulator, credential):
    import requests

    rg = _name("Rg-")
    created = clients.resource.resource_groups.create_or_update(rg, {"location": "West Europe"})
    assert created.location == "westeurope" and created.properties.provisioning_state == "Succeeded"
    assert clients.resource.resource_groups.check_existence(rg.lower()) is True  # ARM paths ignore case
    assert rg in [g.name for g in clients.resource.resource_groups.list()]
    clients.resource.resource_groups.begin_delete(rg).result()
    assert clients.resource.resource_groups.check_existence(rg) is False
    with pytest.raises(ResourceNotFoundError) as err:
        clients.resource.resource_groups.get(rg)
    assert err.value.error.code == "ResourceGroupNotFound"

    token = credential.get_token(*SCOPES).token
    url = f"{arm_emulator.endpoint}/subscriptions/{SUB}/resourcegroups"
    missing = requests.get(url, headers={"Authorization": f"Bearer {token}"}, verify=str(arm_emulator.cert_path))
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "MissingApiVersionParameter"
    bad = requests.get(url + "?api-version=latest", headers={"Authorization": f"Bearer {token}"},
                       verify=str(arm_emulator.cert_path))
    assert bad.json()["error"]["code"] == "InvalidApiVersionParameter"
    with pytest.raises(HttpResponseError) as err:
        clients.resource.resource_groups.create_or_update("bad/name.", {"location": "westeurope"})


def test_storage_account_lro_keys_containers_and_names(clients, arm_emulator: Emulator):
    rg = _group(clients)
    name = _name("sajest")
    check = clients.storage.storage_accounts.check_name_availability({"name": name, "type": "Microsoft.Storage/storageAccounts"})
    assert check.name_available
    invalid = clients.storage.storage_accounts.check_name_availability({"name": "Bad_Name", "type": "Microsoft.Storage/storageAccounts"})
    assert not invalid.name_available and invalid.reason == "AccountNameInvalid"

    poller = clients.storage.storage_accounts.begin_create(
        rg, name, {"location": "westeurope", "sku": {"name": "Standard_LRS"}, "kind": "StorageV2"})
    account = poller.result()
    assert account.provisioning_state == "Succeeded" and account.name == name
    if arm_emulator.azurite is not None:
        assert account.primary_endpoints.blob.startswith(arm_emulator.azurite.blob_endpoint)
    taken = clients.storage.storage_accounts.check_name_availability({"name": name, "type": "Microsoft.Storage/storageAccounts"})
    assert not taken.name_available and taken.reason == "AlreadyExists"
    other_rg = _group(clients)
    with pytest.raises(HttpResponseError) as err:
        clients.storage.storage_accounts.begin_create(
            other_rg, name, {"location": "westeurope", "sku": {"name": "Standard_LRS"}, "kind": "StorageV2"}).result()
    assert err.value.error.code == "StorageAccountInAnotherResourceGroup"
    with pytest.raises(HttpResponseError) as err:
        clients.storage.storage_accounts.begin_create(
            rg, "UPPER", {"location": "westeurope", "sku": {"name": "Standard_LRS"}, "kind": "StorageV2"}).result()
    assert err.value.error.code == "AccountNameInvalid" and "3 and 24" in err.value.error.message

    keys = clients.storage.storage_accounts.list_keys(rg, name)["keys"]  # `.keys` is the mapping's method
    assert [k["keyName"] for k in keys] == ["key1", "key2"]
    if arm_emulator.azurite is not None:
        assert keys[0]["value"] == arm_emulator.azurite.account_key

    container = clients.storage.blob_containers.create(rg, name, "snakemake", {})
    assert container.name == "snakemake"
    assert [c.name for c in clients.storage.blob_containers.list(rg, name)] == ["snakemake"]
    if arm_emulator.azurite is not None:
        from azure.storage.blob import BlobServiceClient

        blob = BlobServiceClient.from_connection_string(arm_emulator.azurite.connection_string,
                                                      **arm_emulator.azurite.client_options)
        assert blob.get_container_client("snakemake").exists()
    clients.storage.blob_containers.delete(rg, name, "snakemake")
    with pytest.raises(ResourceNotFoundError):
        clients.storage.blob_containers.get(rg, name, "snakemake")
    with pytest.raises(HttpResponseError):
        clients.storage.blob_containers.create(rg, name, "Bad--Name", {})


def _storage(clients, rg: str) -> str:
    name = _name("sajest")
    return clients.storage.storage_accounts.begin_create(
        rg, name, {"location": "westeurope", "sku": {"name": "Standard_LRS"}, "kind": "StorageV2"}).result().id


def test_batch_account_needs_registration_then_links_storage(clients, arm_emulator: Emulator):
    rg = _group(clients)
    storage_id = _storage(clients, rg)
    name = _name("sajeba")
    body = {"location": "westeurope", "properties": {"autoStorage": {"storageAccountId": storage_id},
                                                     "poolAllocationMode": "BatchService"}}
    if clients.resource.providers.get("Microsoft.Batch").registration_state != "Registered":
        with pytest.raises(HttpResponseError) as err:
            clients.batch.batch_account.begin_create(rg, name, body).result()
        assert err.value.error.code == "MissingSubscriptionRegistration"
    _register_batch(clients)
    avail = clients.batch.location.check_name_availability("westeurope", {"name": name, "type": "Microsoft.Batch/batchAccounts"})
    assert avail.name_available
    account = clients.batch.batch_account.begin_create(rg, name, body).result()
    assert account.provisioning_state == "Succeeded"
    assert account.auto_storage.storage_account_id == storage_id
    got = clients.batch.batch_account.get(rg, name)
    assert got.account_endpoint == arm_emulator.endpoint.split("://")[1]
    keys = clients.batch.batch_account.get_keys(rg, name)
    assert keys.account_name == name and keys.primary == arm_emulator.account_key
    taken = clients.batch.location.check_name_availability("westeurope", {"name": name, "type": "Microsoft.Batch/batchAccounts"})
    assert not taken.name_available and taken.reason == "AlreadyExists"
    with pytest.raises(HttpResponseError) as err:
        clients.batch.batch_account.begin_create(rg, "No-Dashes", body).result()
    assert err.value.error.code == "AccountNameInvalid"

    # The data plane answers under the ARM name with the listed key (SharedKey).
    from azure.batch import BatchClient
    from azure.core.credentials import AzureNamedKeyCredential

    pool_id = _name("armpool")
    pool = clients.batch.pool.create(rg, name, pool_id, {"properties": {
        "vmSize": "STANDARD_D2S_V3",
        "deploymentConfiguration": {"virtualMachineConfiguration": {
            "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404", "version": "latest"},
            "nodeAgentSkuId": "batch.node.ubuntu 24.04"}},
        "scaleSettings": {"fixedScale": {"targetDedicatedNodes": 1}},
        "interNodeCommunication": "Enabled", "taskSlotsPerNode": 1}})
    assert pool.inter_node_communication == "Enabled"
    assert pool.scale_settings.fixed_scale.target_dedicated_nodes == 1
    data = BatchClient(f"https://{got.account_endpoint}", AzureNamedKeyCredential(name, keys.primary),
                       connection_verify=str(arm_emulator.cert_path))
    remote = data.get_pool(pool_id)
    assert remote.enable_inter_node_communication is True and remote.target_dedicated_nodes == 1
    assert pool_id in [p.name for p in clients.batch.pool.list_by_batch_account(rg, name)]
    clients.batch.pool.begin_delete(rg, name, pool_id).result()
    with pytest.raises(HttpResponseError):
        clients.batch.pool.get(rg, name, pool_id)
    clients.batch.batch_account.begin_delete(rg, name).result()


def test_role_assignments_and_authorization_failed(clients, arm_emulator: Emulator, monkeypatch: pytest.MonkeyPatch):
    from azure.identity import ManagedIdentityCredential
    from azure.mgmt.batch import BatchManagementClient

    _register_batch(clients)
    rg = _group(clients)
    storage_id = _storage(clients, rg)
    account = clients.batch.batch_account.begin_create(
        rg, _name("sajeba"), {"location": "westeurope", "properties": {"autoStorage": {"storageAccountId": storage_id}}}).result()
    role = clients.auth.role_definitions.get(f"/subscriptions/{SUB}", CONTRIBUTOR)
    assert role.role_name == "Contributor"

    worker = str(uuid.uuid4())  # the batch-level identity: no role yet
    worker_batch = _client(BatchManagementClient, arm_emulator, ManagedIdentityCredential(client_id=worker))
    pool_body = {"properties": {"vmSize": "STANDARD_D2S_V3", "deploymentConfiguration": {"virtualMachineConfiguration": {
        "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404"},
        "nodeAgentSkuId": "batch.node.ubuntu 24.04"}}, "scaleSettings": {"fixedScale": {"targetDedicatedNodes": 0}}}}
    with pytest.raises(HttpResponseError) as err:
        worker_batch.pool.create(rg, account.name, _name("p"), pool_body)
    assert err.value.status_code == 403 and err.value.error.code == "AuthorizationFailed"
    assert worker in err.value.error.message and "Microsoft.Batch/batchAccounts/pools/write" in err.value.error.message

    scope = f"/subscriptions/{SUB}/resourceGroups/{rg}"
    params = {"properties": {"roleDefinitionId": role.id, "principalId": worker, "principalType": "ServicePrincipal"}}
    assignment = clients.auth.role_assignments.create(scope, str(uuid.uuid4()), params)
    assert assignment.principal_id == worker and assignment.scope == scope
    with pytest.raises(HttpResponseError) as err:
        clients.auth.role_assignments.create(scope, str(uuid.uuid4()), params)
    assert err.value.error.code == "RoleAssignmentExists"
    assert clients.auth.role_assignments.get(scope, assignment.name).principal_id == worker

    pool_id = _name("p")
    assert worker_batch.pool.create(rg, account.name, pool_id, pool_body).name == pool_id
    # Contributor cannot hand out roles.
    from azure.mgmt.authorization import AuthorizationManagementClient

    worker_auth = _client(AuthorizationManagementClient, arm_emulator, ManagedIdentityCredential(client_id=worker))
    with pytest.raises(HttpResponseError) as err:
        worker_auth.role_assignments.create(scope, str(uuid.uuid4()), {"properties": {
            "roleDefinitionId": role.id, "principalId": str(uuid.uuid4())}})
    assert err.value.error.code == "AuthorizationFailed"
    clients.auth.role_assignments.delete(scope, assignment.name)
    with pytest.raises(HttpResponseError):
        worker_batch.pool.get(rg, account.name, pool_id)


VM_BODY = {
    "location": "westeurope",
    "properties": {
        "hardwareProfile": {"vmSize": "Standard_HB120rs_v3"},
        "storageProfile": {"imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404",
                                              "version": "latest"},
                           "osDisk": {"createOption": "FromImage", "managedDisk": {"storageAccountType": "Premium_LRS"}}},
        "osProfile": {"computerName": "build", "adminUsername": "azureuser", "adminPassword": "S3cret!pass-word"},
        "networkProfile": {"networkApiVersion": "2022-11-01", "networkInterfaceConfigurations": [
            {"name": "nic", "properties": {"primary": True, "ipConfigurations": [{"name": "ip", "properties": {
                "subnet": {"id": f"/subscriptions/{SUB}/resourceGroups/x/providers/Microsoft.Network/virtualNetworks/v/subnets/s"}}}]}}]},
    },
}


def test_image_pipeline_vm_run_command_gallery_version(clients, arm_emulator: Emulator):
    _register_batch(clients)
    rg = _group(clients)
    vm = clients.compute.virtual_machines.begin_create_or_update(rg, "build-vm", VM_BODY).result()
    assert vm.provisioning_state == "Succeeded"
    view = clients.compute.virtual_machines.get(rg, "build-vm", expand="instanceView")
    assert "PowerState/running" in [s.code for s in view.instance_view.statuses]

    script = ['mkdir -p "${SAJE_VM_ROOT:-}/usr/local/bin"',
              'printf \'#!/bin/sh\\necho pong-$1\\n\' > "${SAJE_VM_ROOT:-}/usr/local/bin/saje-ping"',
              'chmod +x "${SAJE_VM_ROOT:-}/usr/local/bin/saje-ping"', 'echo installed $FLAVOUR', 'echo warn >&2']
    result = clients.compute.virtual_machines.begin_run_command(
        rg, "build-vm", {"commandId": "RunShellScript", "script": script,
                         "parameters": [{"name": "FLAVOUR", "value": "hpcx"}]}).result()
    status = result.value[0]
    assert status.code == "ProvisioningState/succeeded"
    assert status.message.startswith("Enable succeeded:") and "[stdout]\ninstalled hpcx" in status.message
    assert "[stderr]\nwarn" in status.message
    second = clients.compute.virtual_machines.begin_run_command(
        rg, "build-vm", {"commandId": "RunShellScript", "script": ["saje-ping x", "exit 3"]}).result().value[0]
    assert second.code == "ProvisioningState/failed" and "exit status=3" in second.message and "pong-x" in second.message

    with pytest.raises(HttpResponseError) as err:
        clients.compute.virtual_machines.generalize(rg, "build-vm")
    assert err.value.error.code == "OperationNotAllowed"
    gallery = clients.compute.galleries.begin_create_or_update(rg, "saje_gallery", {"location": "westeurope"}).result()
    assert gallery.provisioning_state == "Succeeded"
    image = clients.compute.gallery_images.begin_create_or_update(rg, "saje_gallery", "ubuntu-hpc-mpi", {
        "location": "westeurope", "properties": {
            "osType": "Linux", "osState": "Generalized", "hyperVGeneration": "V2",
            "identifier": {"publisher": "saje", "offer": "ubuntu-hpc", "sku": "2404-mpi"},
            "features": [{"name": "IsAcceleratedNetworkSupported", "value": "True"}]}}).result()
    version_body = {"location": "westeurope", "properties": {
        "storageProfile": {"source": {"virtualMachineId": vm.id}},
        "publishingProfile": {"targetRegions": [{"name": "westeurope", "regionalReplicaCount": 1}]}}}
    with pytest.raises(HttpResponseError) as err:  # not yet generalized and deallocated
        clients.compute.gallery_image_versions.begin_create_or_update(rg, "saje_gallery", image.name, "1.0.0", version_body).result()
    assert err.value.error.code == "OperationNotAllowed"

    clients.compute.virtual_machines.begin_deallocate(rg, "build-vm").result()
    clients.compute.virtual_machines.generalize(rg, "build-vm")
    codes = [s.code for s in clients.compute.virtual_machines.get(rg, "build-vm", expand="instanceView").instance_view.statuses]
    assert "OSState/generalized" in codes and "PowerState/deallocated" in codes
    version = clients.compute.gallery_image_versions.begin_create_or_update(
        rg, "saje_gallery", image.name, "1.0.0", version_body).result()
    assert version.provisioning_state == "Succeeded"
    root = arm_emulator.arm.image_root(version.id)
    assert root is not None and (root / "usr/local/bin/saje-ping").exists()
    assert arm_emulator.arm.image_root(image.id) == root  # the definition means its latest version
    assert arm_emulator.state.gallery_image_exists(version.id)

    # Delete the build VM and then its OS disk (deleteOption defaults to Detach).
    disk_name = vm.storage_profile.os_disk.name
    clients.compute.virtual_machines.begin_delete(rg, "build-vm").result()
    with pytest.raises(ResourceNotFoundError):
        clients.compute.virtual_machines.get(rg, "build-vm")
    clients.compute.disks.begin_delete(rg, disk_name).result()
    with pytest.raises(ResourceNotFoundError):
        clients.compute.disks.get(rg, disk_name)
    assert arm_emulator.arm.image_root(version.id) is not None  # the image outlives its build VM


NETWORK_API = "2024-05-01"


def test_a_pool_joins_only_a_subnet_that_exists(clients, arm_emulator: Emulator):
    """Microsoft.Network virtual networks and subnets (through azure-mgmt-resource's generic resource
    calls), and the Batch side's check: a pool's subnetId must name one of them; a subnet in use by a
    pool cannot be deleted."""
    from azure.mgmt.resource.resources.models import GenericResource

    rg = _group(clients)
    _register_batch(clients)
    account = _name("sajenet")
    clients.batch.batch_account.begin_create(rg, account, {"location": "westeurope"}).result()
    vnet_id = f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/saje-vnet"
    subnet_id = f"{vnet_id}/subnets/batch"
    resources = clients.resource.resources
    vnet = resources.begin_create_or_update_by_id(vnet_id, GenericResource(
        location="westeurope", properties={"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                                           "subnets": [{"name": "batch", "properties": {"addressPrefix": "10.0.1.0/24"}}]},
    ), api_version=NETWORK_API).result()
    assert vnet.properties["provisioningState"] == "Succeeded"
    assert [s["id"] for s in vnet.properties["subnets"]] == [subnet_id]
    assert resources.get_by_id(subnet_id, api_version=NETWORK_API).properties["addressPrefix"] == "10.0.1.0/24"

    def pool(pool_id: str, subnet: str) -> dict:
        return {"properties": {
            "vmSize": "STANDARD_D2S_V3", "networkConfiguration": {"subnetId": subnet},
            "deploymentConfiguration": {"virtualMachineConfiguration": {
                "imageReference": {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server"},
                "nodeAgentSkuId": "batch.node.ubuntu 24.04"}}}}

    with pytest.raises(HttpResponseError) as err:  # no such subnet: the data plane's refusal, through ARM
        clients.batch.pool.create(rg, account, "nosubnet", pool("nosubnet", f"{vnet_id}/subnets/missing"))
    assert err.value.error.code == "InvalidPropertyValue" and "subnetId" in str(err.value)
    assert arm_emulator.state.pools.get("nosubnet") is None
    created = clients.batch.pool.create(rg, account, "onsubnet", pool("onsubnet", subnet_id))
    assert created.network_configuration.subnet_id == subnet_id

    with pytest.raises(HttpResponseError) as err:
        resources.begin_delete_by_id(subnet_id, api_version=NETWORK_API).result()
    assert err.value.error.code == "InUseSubnetCannotBeDeleted"
    clients.batch.pool.begin_delete(rg, account, "onsubnet").result()
    resources.begin_delete_by_id(vnet_id, api_version=NETWORK_API).result()
    with pytest.raises(ResourceNotFoundError):
        resources.get_by_id(subnet_id, api_version=NETWORK_API)
    assert not arm_emulator.state.subnet_exists(subnet_id)
    clients.batch.batch_account.begin_delete(rg, account).result()
