"""--saje-node-identity end to end: snakemake with SAJE on an ARM-made Batch account of the
session's HTTPS emulator, whose Azurite takes Entra tokens. The run's pool is created through ARM
with the identity; its inputs, sources, outputs and logs travel with it, and no task carries a SAS;
a rule reads a private blob with it."""
from __future__ import annotations

import copy

import pytest
from azure.storage.blob import BlobServiceClient

from tests.e2e.conftest import run_snakemake, write_workflow
from tests.e2e.test_arm_setup import SUB, _name, clients, credential  # noqa: F401
from tests.e2e.test_ecosystem_arm import _account, _environment

pytestmark = pytest.mark.e2e
IDENTITY = f"/subscriptions/{SUB}/resourceGroups/identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/run"


def test_a_run_with_a_node_identity_moves_its_files_with_no_sas(arm_emulator, clients, tmp_path, monkeypatch):
    rg, account = _account(clients, "BatchService")
    store = BlobServiceClient.from_connection_string(arm_emulator.azurite.connection_string,
                                                     **arm_emulator.azurite.client_options)
    container = _name("refs")
    store.create_container(container)
    store.get_blob_client(container, "reference.txt").upload_blob(b"reference read with the node identity\n")
    read = ("from azure.identity import ManagedIdentityCredential; from azure.storage.blob import BlobClient; "
            f"print(BlobClient('{store.url}', '{container}', 'reference.txt', credential=ManagedIdentityCredential())"
            ".download_blob().readall().decode(), end='')")
    workdir = write_workflow(tmp_path / "wf", f"""
        rule all:
            input: "out.txt"
        rule use:
            input: "in.txt"
            output: "out.txt"
            shell: "python -c \\"{read}\\" > {{output}} && cat {{input}} >> {{output}}"
    """, {"in.txt": "staged with the identity\n"})
    tasks: list[dict] = []  # every task body the service accepted, as SAJE sent it
    validate = arm_emulator.state.validate_task
    monkeypatch.setattr(arm_emulator.state, "validate_task",
                        lambda body, read=None: (tasks.append(copy.deepcopy(body)), validate(body, read))[1])

    run = run_snakemake(workdir, _environment(arm_emulator, clients, rg, account), "--saje-node-identity", IDENTITY)

    assert run.returncode == 0, run.stdout[-4000:]
    assert (workdir / "out.txt").read_text() == "reference read with the node identity\nstaged with the identity\n"
    assert list(clients.batch.pool.list_by_batch_account(rg, account)) == []  # the ARM-made pool is gone too
    (task,) = tasks
    files = [*task["resourceFiles"], *(o["destination"]["container"] for o in task["outputFiles"])]
    assert {f["filePath"] for f in task["resourceFiles"]} >= {"in.txt"}
    for file in files:
        url = file.get("httpUrl") or file["containerUrl"]
        assert "?" not in url and "sig=" not in url, url
        assert file["identityReference"] == {"resourceId": IDENTITY}
