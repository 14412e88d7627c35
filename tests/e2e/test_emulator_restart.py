"""The emulator on its data dir: a restart is the same account to its clients (key, endpoint,
Azurite's port), what a killed emulator left running is stopped at the next start, one emulator
at a time, every process of every node ends with the emulator or its node, and the files are
private to the emulator's user."""
from __future__ import annotations

import json
import os
import socket
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.batch import models
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from snakemake_executor_saje.emulator import Emulator, processes
from snakemake_executor_saje.emulator.datadir import DataDirInUse
from tests.conftest import FAST, completed, make_job, make_pool, read_file, wait_for
from tests.e2e.emulator_process import EmulatorProcess

pytestmark = pytest.mark.e2e

# A task that leaves a process outside its own process group and session, as a daemonizing MPI
# launcher does: `setsid` starts `sleep` in a new session, and the task's shell exits at once.
ESCAPE = "/bin/sh -c 'setsid sleep 300 >/dev/null 2>&1 < /dev/null & sleep 1'"


def _read_sas(service: BlobServiceClient, container: str) -> str:
    token = generate_container_sas(service.account_name, container, account_key=service.credential.account_key,
                                   permission=ContainerSasPermissions(read=True, list=True),
                                   expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"{service.url.rstrip('/')}/{container}?{token}"


def _node_processes(data_dir: Path) -> list[int]:
    return processes.processes_under(data_dir / "nodes")


def test_a_restart_is_the_same_account_to_its_clients(tmp_path):
    data = tmp_path / "emu"
    with Emulator(data, with_azurite=True, **FAST) as first:
        endpoint, key, blob = first.endpoint, first.account_key, first.azurite.blob_endpoint
        client = first.client()  # a client made before the restart...
        pool_id = make_pool(client, "kept", dedicated=1)
        service = BlobServiceClient.from_connection_string(first.azurite.connection_string)
        service.create_container("kept")
        service.get_blob_client("kept", "x.txt").upload_blob(b"before the restart")
        pid = os.getpid()
    with Emulator(data, with_azurite=True, **FAST) as second:
        assert (second.endpoint, second.account_key, second.azurite.blob_endpoint) == (endpoint, key, blob)
        assert client.get_pool(pool_id).id == pool_id  # ...still reaches it and is still accepted
        assert service.get_blob_client("kept", "x.txt").download_blob().readall() == b"before the restart"
        assert second.data.running_record()["pid"] == pid
        with pytest.raises(DataDirInUse, match="already running"):
            Emulator(data, **FAST).start()
        assert second.data.running_record()["pid"] == pid  # the refused one did not touch the record
    client.close()
    assert not (data / "emulator.json").exists()
    # A port given explicitly wins over the remembered one, and is the one remembered from then on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Emulator(data, port=port, **FAST) as third:
        assert third.endpoint == f"http://127.0.0.1:{port}" != endpoint
    with Emulator(data, **FAST) as fourth:
        assert fourth.endpoint == f"http://127.0.0.1:{port}" and fourth.account_key == key


def test_what_a_killed_emulator_left_is_stopped_and_its_tasks_requeued(tmp_path):
    """kill -9 of the emulator: Azurite and the task processes outlive it. The next start on the
    data dir stops them, and the task that was running is requeued as after a node reboot; it
    downloads its input again from Azurite, whose port (in the task's SAS URL) has not changed."""
    emu = EmulatorProcess(tmp_path / "emu", "--with-azurite")
    try:
        env = emu.start()
        service = BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
        service.create_container("inputs")
        service.get_blob_client("inputs", "in.txt").upload_blob(b"input of the task\n")
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential

        credential = AzureNamedKeyCredential(env["SNAKEMAKE_SAJE_ACCOUNT_NAME"], env["SNAKEMAKE_SAJE_ACCOUNT_KEY"])
        client = BatchClient(env["SNAKEMAKE_SAJE_ACCOUNT_URL"], credential, retry_backoff_factor=0.2)
        pool_id = make_pool(client, "p", dedicated=1)
        job_id = make_job(client, pool_id, "j")
        client.create_task(job_id, models.BatchTaskCreateOptions(
            id="long", command_line="/bin/sh -c 'cat in.txt; exec sleep 300'",
            resource_files=[models.ResourceFile(storage_container_url=_read_sas(service, "inputs"))]))
        wait_for(lambda: client.get_task(job_id, "long").state == "running", 60, what="the task to run")
        before = set(wait_for(lambda: _node_processes(emu.data_dir), 30, what="the task's processes"))
        azurite = emu.data_dir.joinpath("emulator.json").read_text()
        assert '"azurite"' in azurite

        emu.kill9()
        azurite_pid = processes.ProcessId.from_dict(json.loads(azurite)["azurite"])
        assert azurite_pid.alive() and all(processes.ProcessId.of(p).alive() for p in before)

        again = emu.start()
        assert again == env  # same endpoint, key and blob endpoint
        assert not azurite_pid.alive()
        assert not set(_node_processes(emu.data_dir)) & before
        assert any("did not stop cleanly; stopped what it left: Azurite" in line for line in emu.output), emu.output
        wait_for(lambda: client.get_task(job_id, "long").state == "running", 60, what="the requeued task to run")
        task = client.get_task(job_id, "long")
        assert task.execution_info.requeue_count == 1 and task.execution_info.retry_count == 0
        wait_for(lambda: read_file(client, job_id, "long").count("input of the task") == 2, 30,
                 what="the requeued task to print its input again")
        client.close()
    finally:
        emu.stop()
    assert not _node_processes(emu.data_dir)


def test_shutdown_and_node_removal_end_processes_that_left_their_group(tmp_path):
    with Emulator(tmp_path / "emu", **FAST) as emu:
        client = emu.client()
        pool_id = make_pool(client, "p", dedicated=2, task_slots_per_node=1)
        job_id = make_job(client, pool_id, "j")
        client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=t, command_line=ESCAPE) for t in ("a", "b")])
        nodes = {completed(client, job_id, t).node_info.node_id for t in ("a", "b")}
        assert len(nodes) == 2
        roots = {n: emu.data.nodes / pool_id / n for n in nodes}
        escaped = {n: processes.processes_under(root) for n, root in roots.items()}
        assert all(escaped.values()), escaped  # the tasks are done, their `sleep`s still run
        # One node leaves the pool: its processes go with it, the other node's stay.
        leaving = sorted(nodes)[0]
        client.begin_remove_nodes(pool_id, models.BatchNodeRemoveOptions(node_ids=[leaving]))
        wait_for(lambda: not processes.processes_under(roots[leaving]), 30, what="the removed node's processes to end")
        staying = next(n for n in nodes if n != leaving)
        assert processes.processes_under(roots[staying]) == escaped[staying]
        client.close()
    assert not _node_processes(tmp_path / "emu")
    assert not any(processes.ProcessId.of(p).alive() for p in escaped[staying])


def _world_accessible(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o007:
            found.append(f"{oct(mode & 0o777)} {path.relative_to(root)}")
    return found


def test_the_data_dir_is_private(tmp_path):
    """The SQLite file holds SAS URLs and the node folders hold the tasks' files: nothing in the data
    dir is readable by other users, whatever the umask (a task's own files included)."""
    old = os.umask(0o022)
    try:
        with Emulator(tmp_path / "emu", with_azurite=True, tls=True, **FAST) as emu:
            client = emu.client(connection_verify=str(emu.cert_path))
            service = BlobServiceClient.from_connection_string(emu.azurite.connection_string,
                                                               **emu.azurite.client_options)
            service.create_container("inputs")
            service.get_blob_client("inputs", "sub/data.txt").upload_blob(b"x")
            job_id = make_job(client, make_pool(client, dedicated=1))
            client.create_task(job_id, models.BatchTaskCreateOptions(
                id="t", command_line="/bin/sh -c 'mkdir -p out && echo y > out/y.txt && cat sub/data.txt'",
                resource_files=[models.ResourceFile(storage_container_url=_read_sas(service, "inputs"))]))
            assert completed(client, job_id, "t").execution_info.result == "success"
            root = emu.config.data_dir
            assert stat.S_IMODE(root.stat().st_mode) == 0o700
            for name in ("batch.sqlite", "account.json", "emulator.json", "tls/key.pem"):
                assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
            assert _world_accessible(root) == []
            client.close()
    finally:
        os.umask(old)


def test_an_existing_data_dir_is_made_private(tmp_path):
    data = tmp_path / "emu"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with Emulator(data, **FAST):
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
