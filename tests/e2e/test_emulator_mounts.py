"""A pool's mountConfiguration on the emulator, through the real SDK: shares that every node sees
under AZ_BATCH_NODE_MOUNTS_DIR, a blob container mounted as a directory, mount failures leaving the
node unusable, and what the service refuses."""
from __future__ import annotations

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient

from tests import images
from tests.conftest import completed, idle_nodes, make_job, pool_options, read_file, unique_id, wait_for

pytestmark = pytest.mark.e2e

WAIT_FOR_OTHER = ("for i in $(seq 600); do test -e $AZ_BATCH_NODE_MOUNTS_DIR/shared/{other} && break; sleep 0.2; done; "
                  "cat $AZ_BATCH_NODE_MOUNTS_DIR/shared/{other}")


def nfs(relative: str = "shared", source: str = "10.0.0.4:/exports/shared") -> models.MountConfiguration:
    return models.MountConfiguration(nfs_mount_configuration=models.NfsMountConfiguration(
        source=source, relative_mount_path=relative))


def test_two_tasks_on_different_nodes_see_each_others_files_through_the_share(batch_client):
    pool_id = unique_id("mnt")
    batch_client.create_pool(pool_options(pool_id, dedicated=2, mount_configuration=[
        nfs(), models.MountConfiguration(azure_file_share_configuration=models.AzureFileShareConfiguration(
            account_name="acct", azure_file_url="https://acct.file.core.windows.net/refs", account_key="not-checked",
            relative_mount_path="refs"))]))
    try:
        idle_nodes(batch_client, pool_id, 2, timeout=60)
        job_id = make_job(batch_client, pool_id)
        # One slot per node: the two tasks run at once, on the two nodes, each waiting for the other's file.
        for me, other in (("a", "b"), ("b", "a")):
            script = f"echo $AZ_BATCH_NODE_ID > $AZ_BATCH_NODE_MOUNTS_DIR/shared/{me}; " + WAIT_FOR_OTHER.format(other=other)
            batch_client.create_task(job_id, models.BatchTaskCreateOptions(id=me, command_line=f"/bin/bash -c '{script}'"))
        a, b = (completed(batch_client, job_id, t, timeout=120) for t in ("a", "b"))
        assert a.execution_info.result == b.execution_info.result == "success"
        assert a.node_info.node_id != b.node_info.node_id
        assert read_file(batch_client, job_id, "a").strip() == b.node_info.node_id  # a read what b wrote on its node
        assert read_file(batch_client, job_id, "b").strip() == a.node_info.node_id
        node = a.node_info.node_id
        logs = {f.name for f in batch_client.list_node_files(pool_id, node, recursive=True)}
        assert {"fsmounts/nfs-shared.log", "fsmounts/fshare-refs.log"} <= logs, sorted(logs)
    finally:
        batch_client.begin_delete_pool(pool_id)


def test_a_blob_container_mount_reads_its_blobs_and_uploads_what_tasks_write(emulator_with_storage):
    store = BlobServiceClient.from_connection_string(emulator_with_storage.config.auto_storage_connection_string)
    container = unique_id("mountdata").lower().replace("_", "-")
    store.create_container(container)
    store.get_blob_client(container, "ref/genome.txt").upload_blob(b"ACGT\n")
    client = emulator_with_storage.client()
    pool_id = unique_id("blobmnt")
    client.create_pool(pool_options(pool_id, mount_configuration=[models.MountConfiguration(
        azure_blob_file_system_configuration=models.AzureBlobFileSystemConfiguration(
            account_name="devstoreaccount1", container_name=container, sas_key="sv=not-checked",
            relative_mount_path="data", blobfuse_options="-o attr_timeout=240"))]))
    try:
        idle_nodes(client, pool_id, 1, timeout=60)
        job_id = make_job(client, pool_id)
        client.create_task(job_id, models.BatchTaskCreateOptions(id="rw", command_line=(
            "/bin/bash -c 'cat $AZ_BATCH_NODE_MOUNTS_DIR/data/ref/genome.txt && mkdir -p $AZ_BATCH_NODE_MOUNTS_DIR/data/out "
            "&& echo aligned > $AZ_BATCH_NODE_MOUNTS_DIR/data/out/result.txt'")))
        task = completed(client, job_id, "rw", timeout=60)
        assert task.execution_info.result == "success", read_file(client, job_id, "rw", "stderr.txt")
        assert read_file(client, job_id, "rw") == "ACGT\n"
        assert store.get_blob_client(container, "out/result.txt").download_blob().readall() == b"aligned\n"
    finally:
        client.begin_delete_pool(pool_id)
        client.close()
        store.delete_container(container)


def test_a_mount_that_fails_leaves_the_node_unusable_with_the_mount_error(emulator_with_storage):
    client = emulator_with_storage.client()
    pool_id = unique_id("badmnt")
    client.create_pool(pool_options(pool_id, mount_configuration=[models.MountConfiguration(
        azure_blob_file_system_configuration=models.AzureBlobFileSystemConfiguration(
            account_name="devstoreaccount1", container_name="no-such-container", account_key="k",
            relative_mount_path="data"))]))
    try:
        node = wait_for(lambda: next((n for n in client.list_nodes(pool_id) if n.state == "unusable"), None), 60,
                        what="the node to be unusable")
        error = node.errors[0]
        assert (error.code, error.message) == ("MountConfigurationError",
                                               "An error was encountered while configuring specified mount(s)")
        details = {d.name: d.value for d in error.error_details}
        assert details["MountConfigurationPath"] == "data" and "no-such-container" in details["Message"]
    finally:
        client.begin_delete_pool(pool_id)
        client.close()


def test_two_file_systems_at_one_path_are_accepted_and_fail_on_the_node(batch_client):
    """The REST spec's example Pools_CreatePool_MountConfiguration (201) mounts two shares at one
    path: the service accepts the pool; the node cannot mount both, and is unusable."""
    pool_id = unique_id("samemnt")
    batch_client.create_pool(pool_options(pool_id, mount_configuration=[nfs("same"), nfs("same", "10.0.0.5:/other")]))
    try:
        node = wait_for(lambda: next((n for n in batch_client.list_nodes(pool_id) if n.state == "unusable"), None), 60,
                        what="the node to be unusable")
        error = node.errors[0]
        assert error.code == "MountConfigurationError"
        assert {d.name: d.value for d in error.error_details}["MountConfigurationPath"] == "same"
    finally:
        batch_client.begin_delete_pool(pool_id)


def test_container_tasks_see_the_pools_mounts(batch_client):
    image = images.small_image()
    pool_id = unique_id("ctrmnt")
    options = pool_options(pool_id, mount_configuration=[nfs(source=f"10.0.0.4:/exports/{pool_id}")])
    options.virtual_machine_configuration.container_configuration = models.BatchContainerConfiguration(
        type="dockerCompatible", container_image_names=[image])
    batch_client.create_pool(options)
    try:
        idle_nodes(batch_client, pool_id, 1, timeout=60)
        job_id = make_job(batch_client, pool_id)
        settings = models.BatchTaskContainerSettings(image_name=image)
        batch_client.create_task(job_id, models.BatchTaskCreateOptions(id="write", container_settings=settings,
            command_line="/bin/bash -c 'echo from-container > $AZ_BATCH_NODE_MOUNTS_DIR/shared/x'"))
        assert completed(batch_client, job_id, "write", timeout=60).execution_info.result == "success"
        batch_client.create_task(job_id, models.BatchTaskCreateOptions(id="read", container_settings=settings,
            command_line="/bin/bash -c 'cat $AZ_BATCH_NODE_MOUNTS_DIR/shared/x'"))
        assert completed(batch_client, job_id, "read", timeout=60).execution_info.result == "success"
        assert read_file(batch_client, job_id, "read") == "from-container\n"
    finally:
        batch_client.begin_delete_pool(pool_id)


@pytest.mark.parametrize("mounts, reason", [
    ([nfs(f"m{i}", f"10.0.0.4:/e{i}") for i in range(11)], "at most 10"),
    ([models.MountConfiguration(nfs_mount_configuration=models.NfsMountConfiguration(source="s", relative_mount_path="a"),
                                cifs_mount_configuration=models.CifsMountConfiguration(
                                    username="u", password="p", source="//s/x", relative_mount_path="b"))], "exactly one"),
    ([models.MountConfiguration(azure_blob_file_system_configuration=models.AzureBlobFileSystemConfiguration(
        account_name="a", container_name="c", account_key="k", sas_key="s", relative_mount_path="d"))], "exactly one"),
])
def test_mount_configurations_the_service_refuses(batch_client, mounts, reason):
    pool_id = unique_id("refused")
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_pool(pool_options(pool_id, mount_configuration=mounts))
    assert info.value.error.code == "InvalidPropertyValue"
    assert reason in str(info.value)
    assert pool_id not in {p.id for p in batch_client.list_pools()}
