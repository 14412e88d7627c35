"""Application packages and allocation-mode checks end to end: ARM (azure-mgmt-batch) on the
emulator's HTTPS side with Azurite as auto-storage, `saje app upload`, and `snakemake --executor
saje` against an ARM-made Batch account."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.conftest import make_pool, wait_for
from tests.e2e.conftest import VENV_BIN, run_snakemake, write_workflow
from tests.e2e.test_arm_setup import SUB, _group, _name, _register_batch, _storage, clients, credential  # noqa: F401

pytestmark = pytest.mark.e2e
SAJE = str(VENV_BIN / "saje")


def _account(clients, mode: str) -> tuple[str, str]:
    """A Batch account with auto-storage, in `mode`; returns (resource group, account name)."""
    rg = _group(clients)
    _register_batch(clients)
    name = _name("sajeapp")
    body = {"location": "westeurope", "properties": {"autoStorage": {"storageAccountId": _storage(clients, rg)},
                                                     "poolAllocationMode": mode}}
    clients.batch.batch_account.begin_create(rg, name, body).result()
    return rg, name


def _environment(emu, clients, rg: str, account: str) -> dict[str, str]:
    """What a user of that account has: its endpoint and key, ARM through the managed identity."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE", "MSI_",
                                                                       "IDENTITY_", "IMDS_"))}
    keys = clients.batch.batch_account.get_keys(rg, account)
    env.update(emu.identity_environment())
    env.update({
        "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
        "SNAKEMAKE_SAJE_ACCOUNT_URL": emu.endpoint, "SNAKEMAKE_SAJE_ACCOUNT_NAME": account,
        "SNAKEMAKE_SAJE_ACCOUNT_KEY": keys.primary, "AZURE_SUBSCRIPTION_ID": SUB,
        "AZURE_STORAGE_CONNECTION_STRING": emu.azurite.connection_string,
        "SAJE_ARM_ENDPOINT": emu.endpoint, "SAJE_ARM_CA_BUNDLE": str(emu.cert_path),
        "REQUESTS_CA_BUNDLE": str(emu.cert_path), "SSL_CERT_FILE": str(emu.cert_path),
    })
    return env


def _one_rule(tmp_path: Path, shell: str, resources: str = "") -> Path:
    return write_workflow(tmp_path / "wf", f"""
        rule all:
            output: "out.txt"
            {resources}
            shell: "{shell}"
    """)


def _tool_zip(path: Path) -> Path:
    """A package holding bin/greet, an executable (its mode travels in the zip)."""
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("bin/greet")
        info.external_attr = 0o755 << 16
        zf.writestr(info, "#!/bin/sh\necho \"greetings from the package, version $1\"\n")
    return path


def test_a_rule_runs_a_program_from_a_package_uploaded_with_saje_app_upload(arm_emulator, clients, tmp_path):
    rg, account = _account(clients, "BatchService")
    env = _environment(arm_emulator, clients, rg, account)
    zip_path = _tool_zip(tmp_path / "greet.zip")

    upload = subprocess.run([SAJE, "--json", "app", "upload", "greet", "1.0", str(zip_path), "--default",
                             "--resource-group", rg, "--batch-account", account, "--subscription", SUB],
                            env=env, text=True, capture_output=True, timeout=120)
    assert upload.returncode == 0, upload.stderr
    assert '"variable": "AZ_BATCH_APP_PACKAGE_greet_1_0"' in upload.stdout
    versions = list(clients.batch.application_package.list(rg, account, "greet"))
    assert [(v.name, v.state) for v in versions] == [("1.0", "Active")]
    assert clients.batch.application.get(rg, account, "greet").default_version == "1.0"

    workdir = write_workflow(tmp_path / "wf", """
        rule all:
            input: "versioned.txt", "default.txt"

        rule versioned:
            output: "versioned.txt"
            resources: saje_app_packages="greet:1.0"
            shell: "$AZ_BATCH_APP_PACKAGE_greet_1_0/bin/greet 1.0 > {output}"

        rule default:
            output: "default.txt"
            resources: saje_app_packages="greet"
            shell: "$AZ_BATCH_APP_PACKAGE_greet/bin/greet default > {output}"
    """)
    run = run_snakemake(workdir, env, timeout=240)

    assert run.returncode == 0, run.stdout[-4000:]
    assert (workdir / "versioned.txt").read_text() == "greetings from the package, version 1.0\n"
    assert (workdir / "default.txt").read_text() == "greetings from the package, version default\n"


def test_a_missing_package_fails_the_task_with_application_package_error(arm_emulator, clients, tmp_path):
    rg, account = _account(clients, "BatchService")
    env = _environment(arm_emulator, clients, rg, account)
    workdir = _one_rule(tmp_path, "echo never > {output}", 'resources: saje_app_packages="nosuchtool:2.0"')
    run = run_snakemake(workdir, env, timeout=240)

    assert run.returncode != 0
    assert "ApplicationPackageError" in run.stdout and "nosuchtool" in run.stdout, run.stdout[-3000:]


def test_spot_nodes_are_refused_on_a_batch_service_account_before_anything_is_created(arm_emulator, clients, tmp_path):
    rg, account = _account(clients, "BatchService")
    env = _environment(arm_emulator, clients, rg, account)
    workdir = _one_rule(tmp_path, "echo hi > {output}")
    before = {p.id for p in arm_emulator.client().list_pools()}

    run = run_snakemake(workdir, env, "--saje-spot", timeout=240)

    assert run.returncode != 0
    assert f"Batch account {account} is in Batch service pool allocation mode" in run.stdout, run.stdout[-3000:]
    assert "UserSubscription" in run.stdout and "low-priority-vms-retirement" in run.stdout
    assert {p.id for p in arm_emulator.client().list_pools()} == before


def test_spot_nodes_run_on_a_user_subscription_account(arm_emulator, clients, tmp_path):
    rg, account = _account(clients, "UserSubscription")
    env = _environment(arm_emulator, clients, rg, account)
    workdir = _one_rule(tmp_path, "echo $AZ_BATCH_NODE_IS_DEDICATED > {output}")
    run = run_snakemake(workdir, env, "--saje-spot", timeout=240)

    assert run.returncode == 0, run.stdout[-4000:]
    assert (workdir / "out.txt").read_text() == "false\n"


def _saje_app(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([SAJE, "--json", "app", *args, "--subscription", SUB], env=env, text=True,
                          capture_output=True, timeout=120)


def test_saje_app_upload_refuses_what_azure_cannot_take(arm_emulator, clients, tmp_path):
    rg, account = _account(clients, "BatchService")
    env = _environment(arm_emulator, clients, rg, account)
    not_zip = tmp_path / "tool.tar"
    not_zip.write_text("not a zip")
    assert _saje_app(env, "upload", "tool", "1", str(not_zip), "--resource-group", rg,
                     "--batch-account", account).returncode == 2

    bare = _name("sajebare")  # an account with no auto-storage: nowhere to keep packages
    clients.batch.batch_account.begin_create(rg, bare, {"location": "westeurope"}).result()
    out = _saje_app(env, "upload", "tool", "1", str(_tool_zip(tmp_path / "t.zip")), "--resource-group", rg,
                    "--batch-account", bare)
    assert out.returncode == 1 and "AutoStorageNotConfigured" in out.stdout, out.stdout + out.stderr


def test_a_pools_package_reference_is_checked_and_installed_for_its_start_task(arm_emulator, clients, tmp_path):
    """Pool-level references name the application's full ARM id; an unmet one is refused with 409
    InvalidApplicationPackageReferences (REST reference); a met one is on every node."""
    rg, account = _account(clients, "BatchService")
    env = _environment(arm_emulator, clients, rg, account)
    assert _saje_app(env, "upload", "greet", "2.0", str(_tool_zip(tmp_path / "g.zip")), "--resource-group", rg,
                     "--batch-account", account).returncode == 0
    app_id = clients.batch.application.get(rg, account, "greet").id
    client = arm_emulator.client()
    try:
        with pytest.raises(HttpResponseError) as refused:
            make_pool(client, wait=False, application_package_references=[
                models.BatchApplicationPackageReference(application_id=app_id, version="9.9")])
        assert refused.value.status_code == 409 and refused.value.error.code == "InvalidApplicationPackageReferences"

        pool_id = make_pool(client, wait=False, application_package_references=[
            models.BatchApplicationPackageReference(application_id=app_id, version="2.0")],
            start_task=models.BatchStartTask(
                command_line="/bin/sh -c '$AZ_BATCH_APP_PACKAGE_greet_2_0/bin/greet pool'", wait_for_success=True))
        node = wait_for(lambda: next((n for n in client.list_nodes(pool_id) if n.state in ("idle", "starttaskfailed")),
                                     None), 60, what="the node to run its start task")
        assert node.state == "idle", node.start_task_info
        out = b"".join(client.download_node_file(pool_id, node.id, "startup/stdout.txt")).decode()
        assert out == "greetings from the package, version pool\n"
        client.begin_delete_pool(pool_id)
    finally:
        client.close()
