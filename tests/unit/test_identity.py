"""Node managed identity, the pure parts: the ARM pool body SAJE creates identity pools with, staging
by identity instead of SAS, and the emulated nodes' IMDS answers."""
from __future__ import annotations

from datetime import timedelta

import pytest
from azure.storage.blob import BlobServiceClient

from snakemake_executor_saje import armpools
from snakemake_executor_saje.emulator import imds
from snakemake_executor_saje.emulator.auth import TokenIssuer
from snakemake_executor_saje.emulator.timeutil import parse_duration
from snakemake_executor_saje.mapping import JobSpec
from snakemake_executor_saje.pools import pool_class_for, pool_spec
from snakemake_executor_saje.settings import ExecutorSettings
from snakemake_executor_saje.staging import Staging, _manifest_line, under

IDENTITY = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nodes"


def test_the_arm_body_of_a_pool_saje_builds_carries_the_identity():
    s = ExecutorSettings(image="microsoft-dsvm:ubuntu-hpc:2404", node_identity=IDENTITY, start_task="echo hi",
                         mounts="data=nfs://10.0.0.4/exports/data", autoscale_interval=6)
    spec = pool_spec(pool_class_for(JobSpec(rule="r", jobid=1, command="x"), s, "img:1"), s, "run",
                     snakemake_version="9.27.1")
    body = armpools.arm_pool_body(spec, [IDENTITY])
    assert body["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}}
    props = body["properties"]
    vmc = props["deploymentConfiguration"]["virtualMachineConfiguration"]
    assert vmc["imageReference"] == {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404", "version": "latest"}
    assert vmc["nodeAgentSkuId"] == "batch.node.ubuntu 24.04"
    assert vmc["containerConfiguration"]["type"] == "DockerCompatible"  # ARM's enum spelling
    assert parse_duration(props["scaleSettings"]["autoScale"]["evaluationInterval"]) == timedelta(minutes=6)
    assert props["taskSchedulingPolicy"] == {"nodeFillType": "Pack"} and props["interNodeCommunication"] == "Disabled"
    assert props["startTask"]["userIdentity"] == {"autoUser": {"scope": "Pool", "elevationLevel": "Admin"}}
    assert props["mountConfiguration"][0]["nfsMountConfiguration"]["source"] == "10.0.0.4:/exports/data"
    gallery = armpools.arm_pool_body(pool_spec(pool_class_for(JobSpec(rule="m", jobid=2, command="x", resources={
        "mpi": "mpirun", "nodes": 2}), ExecutorSettings(mpi_image="/subscriptions/s/resourceGroups/g/providers/"
        "Microsoft.Compute/galleries/x/images/y", mpi_node_agent_sku="batch.node.ubuntu 24.04")),
        ExecutorSettings(snakemake_install="none"), "run", fixed_nodes=2), [])
    assert "identity" not in gallery
    vmc = gallery["properties"]["deploymentConfiguration"]["virtualMachineConfiguration"]
    assert vmc["imageReference"] == {"id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/x/images/y"}
    assert gallery["properties"]["interNodeCommunication"] == "Enabled"


def test_identity_ids_and_the_setting():
    assert armpools.is_user_assigned_identity(IDENTITY)
    assert not armpools.is_user_assigned_identity("/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/x")
    from snakemake_interface_common.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="--saje-node-identity 'nodes' is not the resource id of a user-assigned identity"):
        ExecutorSettings(node_identity="nodes")


def test_staging_by_identity_makes_no_sas(monkeypatch):
    # No account key and no Entra credential: any attempt to sign a SAS would fail.
    staging = Staging(BlobServiceClient("https://acct.blob.core.windows.net"), "saje-run", identity=IDENTITY)
    monkeypatch.setattr(staging, "_sas", lambda *a, **k: pytest.fail("a SAS was signed"))
    expiry, cut = staging.expiry(timedelta(days=30))  # no user delegation key limits an identity
    assert not cut
    source = staging.resource_file("sources/a b.tar.xz", "a b.tar.xz", expiry)
    assert source.http_url == "https://acct.blob.core.windows.net/saje-run/sources/a%20b.tar.xz"
    assert source.identity_reference.resource_id == IDENTITY
    (common,) = under(".saje-common", [source])
    assert common.identity_reference.resource_id == IDENTITY and common.file_path == ".saje-common/a b.tar.xz"
    rules = [*staging.output_files("t-1-a1", ["out.txt", "dir/"], expiry), *staging.log_files("t-1-a1", expiry)]
    assert len(rules) == 5
    for rule in rules:
        destination = rule.destination.container
        assert destination.container_url == "https://acct.blob.core.windows.net/saje-run"  # no "?sv=...&sig=..."
        assert destination.identity_reference.resource_id == IDENTITY
    assert _manifest_line(source) == (f"https://acct.blob.core.windows.net/saje-run/sources/a%20b.tar.xz\ta b.tar.xz\t"
                                      f"\t{IDENTITY}\n")


# --- the emulated IMDS ------------------------------------------------------------------------------

def test_imds_answers_and_refusals():
    issuer = TokenIssuer()
    one, two = imds.Identity(IDENTITY), imds.Identity(IDENTITY.replace("nodes", "other"))
    path, query = imds.TOKEN_PATH, {"api-version": "2018-02-01", "resource": "https://storage.azure.com/"}
    status, body = imds.token_response(issuer, [one], path, query, {"metadata": "true"})
    assert status == 200 and body["client_id"] == one.client_id and body["resource"] == "https://storage.azure.com/"
    claims = issuer.verify(body["access_token"], "https://storage.azure.com/")
    assert (claims["oid"], claims["appid"], claims["xms_mirid"]) == (one.principal_id, one.client_id, IDENTITY)
    assert imds.token_response(issuer, [one], path, query, {})[1]["error"] == "bad_request_102"
    assert imds.token_response(issuer, [one, two], path, query, {"metadata": "true"})[0] == 400
    for key, value in (("client_id", two.client_id), ("object_id", two.principal_id), ("msi_res_id", two.resource_id)):
        status, body = imds.token_response(issuer, [one, two], path, {**query, key: value}, {"metadata": "true"})
        assert status == 200 and body["client_id"] == two.client_id, key
    assert imds.token_response(issuer, [], path, query, {"metadata": "true"})[1] == {
        "error": "invalid_request", "error_description": "Identity not found"}
    assert imds.token_response(issuer, [one], "/metadata/instance", query, {"metadata": "true"})[0] == 404


def test_identity_ids_are_stable_and_distinct():
    a, b = imds.Identity(IDENTITY), imds.Identity(IDENTITY.upper())
    assert (a.client_id, a.principal_id) == (b.client_id, b.principal_id)  # ARM ids compare without case
    assert a.client_id != a.principal_id
    assert imds.pool_identity([]) == {"type": "None"}


def test_without_arm_the_run_is_refused_saying_what_to_set(monkeypatch):
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    with pytest.raises(armpools.NodeIdentityError) as info:
        armpools.ArmPools.connect("https://acct.westeurope.batch.azure.com", ExecutorSettings(node_identity=IDENTITY), None)
    message = str(info.value)
    assert "only when the pool is created through Azure Resource Manager" in message
    assert "no subscription id is known" in message and "AZURE_SUBSCRIPTION_ID" in message
