"""--saje-mounts into Batch's mountConfiguration (pure), and the pools that carry it."""
from __future__ import annotations

import pytest

from snakemake_executor_saje.mapping import JobSpec
from snakemake_executor_saje.mounts import MountSettingError, parse_mounts
from snakemake_executor_saje.pools import pool_class_for, pool_spec
from snakemake_executor_saje.settings import ExecutorSettings

ENV = {"REFS_KEY": "a2V5a2V5a2V5", "LAB_PASSWORD": "pa55word-very", "SCRATCH_SAS": "?sv=2024&sig=abc"}
IDENTITY = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nodes"


def as_dicts(text, **kw):
    return [m.as_dict() for m in parse_mounts(text, environ=ENV, **kw)]


def test_each_kind_of_file_system():
    nfs, smb, files, blob, files_nfs = as_dicts(
        "data=nfs://10.0.0.4/exports/data?options=vers=4,minorversion=1 "
        "lab=smb://alice@fileserver/projects?secret_env=LAB_PASSWORD "
        "refs=https://myacct.file.core.windows.net/refs?secret_env=REFS_KEY&options=-o+vers=3.0 "
        "scratch=https://myacct.blob.core.windows.net/scratch?secret_env=SCRATCH_SAS "
        "nfsrefs=nfs://myacct.file.core.windows.net/myacct/refs")
    assert nfs == {"nfsMountConfiguration": {"source": "10.0.0.4:/exports/data", "relativeMountPath": "data",
                                             "mountOptions": "vers=4,minorversion=1"}}
    assert smb == {"cifsMountConfiguration": {"username": "alice", "source": "//fileserver/projects",
                                              "relativeMountPath": "lab", "password": "pa55word-very"}}
    assert files == {"azureFileShareConfiguration": {
        "accountName": "myacct", "azureFileUrl": "https://myacct.file.core.windows.net/refs", "relativeMountPath": "refs",
        "mountOptions": "-o vers=3.0", "accountKey": "a2V5a2V5a2V5"}}
    assert blob == {"azureBlobFileSystemConfiguration": {
        "accountName": "myacct", "containerName": "scratch", "relativeMountPath": "scratch", "sasKey": "sv=2024&sig=abc"}}
    assert files_nfs["nfsMountConfiguration"]["source"] == "myacct.file.core.windows.net:/myacct/refs"


def test_a_blob_container_without_a_secret_uses_the_node_identity():
    (blob,) = as_dicts("s=https://myacct.blob.core.windows.net/scratch", node_identity=IDENTITY)
    assert blob["azureBlobFileSystemConfiguration"]["identityReference"] == {"resourceId": IDENTITY}
    with pytest.raises(MountSettingError, match="secret_env=VAR.*--saje-node-identity"):
        parse_mounts("s=https://myacct.blob.core.windows.net/scratch", environ=ENV)
    (keyed,) = as_dicts("s=https://myacct.blob.core.windows.net/scratch?secret_env=REFS_KEY", node_identity=IDENTITY)
    assert keyed["azureBlobFileSystemConfiguration"]["accountKey"] == ENV["REFS_KEY"]  # a key given wins


@pytest.mark.parametrize("text, message", [
    ("data", "is not PATH=URL"),
    ("/abs=nfs://h/e", "relative and without '..'"),
    ("../up=nfs://h/e", "relative and without '..'"),
    ("a=nfs://h/e a=nfs://h/f", "two file systems are mounted at 'a'"),
    ("a=ftp://h/e", "not a file system SAJE can mount"),
    ("a=smb://server/share?secret_env=LAB_PASSWORD", "needs its user"),
    ("a=https://myacct.file.core.windows.net/refs", "add \\?secret_env=VAR"),
    ("a=https://myacct.file.core.windows.net/refs?secret_env=UNSET_VAR", "UNSET_VAR .* is not set"),
    ("a=nfs://h/e?mode=x", "unknown query parameter"),
    (" ".join(f"m{i}=nfs://h/e{i}" for i in range(11)), "at most 10"),
])
def test_entries_refused_with_what_to_write(text, message):
    with pytest.raises(MountSettingError, match=message):
        parse_mounts(text, environ=ENV)


def test_no_secret_in_an_error():
    with pytest.raises(MountSettingError) as info:
        parse_mounts("a=https://x.blob.core.windows.net/c/d?sv=1&sig=SECRETSIG", environ=ENV)
    assert "SECRETSIG" not in str(info.value)


def test_every_pool_saje_creates_mounts_them_and_bad_settings_are_refused_at_once(monkeypatch):
    monkeypatch.setenv("REFS_KEY", ENV["REFS_KEY"])
    s = ExecutorSettings(mounts="data=nfs://10.0.0.4/exports/data refs=https://myacct.file.core.windows.net/refs?secret_env=REFS_KEY")
    for job in (JobSpec(rule="r", jobid=1, command="x"), JobSpec(rule="m", jobid=2, command="x", resources={"mpi": "mpirun", "nodes": 2})):
        spec = pool_spec(pool_class_for(job, s), s, "run", snakemake_version="9.27.1").as_dict()
        assert [m.get("nfsMountConfiguration", {}).get("relativeMountPath") for m in spec["mountConfiguration"]][0] == "data"
    from snakemake_interface_common.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="--saje-mounts: a: environment variable NOPE"):
        ExecutorSettings(mounts="a=https://myacct.file.core.windows.net/refs?secret_env=NOPE")
