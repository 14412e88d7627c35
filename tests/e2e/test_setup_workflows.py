"""The setup workflows end to end on the emulator: `saje deploy` (twice: the second makes no ARM write),
`saje image create`, `saje image test`, a pool from the image, `saje teardown`, and the refusals
(names Azure would reject, a principal without rights) leaving nothing half-made. Every check of what
exists goes through the real azure-mgmt-* and azure-batch SDKs.

The tests of this module share one deployment and run in file order (deploy -> image -> teardown).
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from snakemake_executor_saje.emulator import Emulator
from tests.conftest import FAST
from tests.e2e.test_arm_setup import _azurite_available

pytestmark = pytest.mark.e2e

SUB = "00000000-0000-0000-0000-000000005a1e"
SCOPES = ["https://management.azure.com/.default"]
NAME = "e2e"
RG = "saje-e2e-rg"
STORAGE = "sajee2est" + uuid.uuid4().hex[:8]
BATCH = "sajee2eba" + uuid.uuid4().hex[:8]
WORKER = str(uuid.uuid4())  # the batch-level identity (a user-assigned managed identity)


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = Emulator(tmp_path_factory.mktemp("setup-emu"), tls=True, with_azurite=_azurite_available(), **FAST)
    emulator.start()
    emulator.arm.retry_after = 1
    try:
        yield emulator
        assert emulator.schema_refusals == []  # the image test's pool, job and task bodies are Azure-valid
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("setup-work")


@pytest.fixture(scope="module")
def env(emu: Emulator) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items()
              if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE_", "IDENTITY_", "MSI_", "IMDS_"))}
    values.update(emu.identity_environment())
    values.update({"REQUESTS_CA_BUNDLE": str(emu.cert_path), "SSL_CERT_FILE": str(emu.cert_path),
                   "SAJE_ARM_ENDPOINT": emu.endpoint, "SAJE_ARM_CA_BUNDLE": str(emu.cert_path),
                   "AZURE_SUBSCRIPTION_ID": SUB, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{values.get('PATH', '')}"})
    return values


@pytest.fixture(scope="module")
def clients(emu: Emulator, env: dict[str, str]):
    from azure.identity import ManagedIdentityCredential

    with pytest.MonkeyPatch.context() as patch:  # the token endpoint, for this module's own SDK clients
        for key in ("IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET"):
            patch.delenv(key, raising=False)
        for key, value in emu.identity_environment().items():
            patch.setenv(key, value)
        patch.setenv("REQUESTS_CA_BUNDLE", str(emu.cert_path))
        patch.setenv("SSL_CERT_FILE", str(emu.cert_path))
        yield _clients(emu, ManagedIdentityCredential())


def _clients(emu: Emulator, credential):
    from azure.mgmt.authorization import AuthorizationManagementClient
    from azure.mgmt.batch import BatchManagementClient
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.resource.resources import ResourceManagementClient
    from azure.mgmt.storage import StorageManagementClient

    def make(cls):
        return cls(credential, SUB, base_url=emu.endpoint, credential_scopes=SCOPES, connection_verify=str(emu.cert_path))

    class Clients:
        resource = make(ResourceManagementClient)
        storage = make(StorageManagementClient)
        batch = make(BatchManagementClient)
        auth = make(AuthorizationManagementClient)
        compute = make(ComputeManagementClient)

    return Clients


def saje(workdir: Path, env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake_executor_saje.cli", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


def deploy_args(saje_json: Path) -> list[str]:
    return ["deploy", "--name", NAME, "--location", "westeurope", "--resource-group", RG, "--storage-account", STORAGE,
            "--batch-account", BATCH, "--batch-managed-identity", WORKER, "--saje-json", str(saje_json)]


def markers(workdir: Path) -> dict[str, tuple[float, str]]:
    found = {}
    for path in sorted((workdir / ".saje").rglob("*.json")):
        found[str(path.relative_to(workdir))] = (path.stat().st_mtime, path.read_text())
    return found


def count_arm_writes(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    writes: list[str] = []
    handle = emu.frontend.arm

    def counting(request):
        if request.method not in ("GET", "HEAD"):
            writes.append(f"{request.method} {request.raw_path}")
        return handle(request)

    monkeypatch.setattr(emu.frontend, "arm", counting)
    return writes


# ----------------------------------------------------------------------------- deploy
def test_deploy_creates_the_account_and_a_ready_profile(emu, env, workdir, clients, monkeypatch):
    saje_json = workdir / "saje.json"
    import time

    started = time.monotonic()
    done = saje(workdir, env, *deploy_args(saje_json))
    print(f"deploy took {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    assert clients.resource.resource_groups.check_existence(RG)
    account = clients.storage.storage_accounts.get_properties(RG, STORAGE)
    assert account.provisioning_state == "Succeeded"
    assert [c.name for c in clients.storage.blob_containers.list(RG, STORAGE)] == ["snakemake"]
    batch = clients.batch.batch_account.get(RG, BATCH)
    assert batch.auto_storage.storage_account_id == account.id
    assert getattr(batch.pool_allocation_mode, "value", batch.pool_allocation_mode) == "BatchService"
    assert clients.resource.providers.get("Microsoft.Batch").registration_state == "Registered"
    scope = f"/subscriptions/{SUB}/resourceGroups/{RG}"
    assignments = list(clients.auth.role_assignments.list_for_scope(scope, filter=f"principalId eq '{WORKER}'"))
    assert len(assignments) == 1 and assignments[0].role_definition_id.endswith("b24988ac-6180-42a0-ab88-20f7382dd24c")

    # The profile is ready for `snakemake --executor saje --workflow-profile profiles/e2e`; the key is only in saje.json.
    profile = (workdir / "profiles" / NAME / "config.yaml").read_text()
    assert "executor: saje" in profile and f"saje-credential-profile: {NAME}" in profile
    assert stat.S_IMODE(saje_json.stat().st_mode) == 0o600
    from snakemake_executor_saje.credentials import get_profile

    entry = get_profile(NAME, saje_json)
    keys = clients.batch.batch_account.get_keys(RG, BATCH)
    assert entry.level == "batch" and entry.batch_account_key == keys.primary and entry.batch_account_name == BATCH
    assert keys.primary not in done.stdout + done.stderr and keys.primary not in profile
    for step in ("provider", "resource_group", "role_assignment", "storage", "containers", "batch_account", "profile"):
        assert (workdir / ".saje" / "deploy" / NAME / f"{step}.json").is_file()

    # The batch-level identity can now use the account (Contributor on the group).
    from azure.identity import ManagedIdentityCredential
    from azure.mgmt.batch import BatchManagementClient

    worker = BatchManagementClient(ManagedIdentityCredential(client_id=WORKER), SUB, base_url=emu.endpoint,
                                   credential_scopes=SCOPES, connection_verify=str(emu.cert_path))
    assert worker.batch_account.get(RG, BATCH).name == BATCH


def test_second_deploy_changes_nothing(emu, env, workdir, monkeypatch):
    before = markers(workdir)
    writes = count_arm_writes(emu, monkeypatch)
    done = saje(workdir, env, *deploy_args(workdir / "saje.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in done.stderr + done.stdout
    assert writes == []
    assert markers(workdir) == before


def test_deploy_dry_run_and_summary_make_no_azure_call(emu, env, workdir, monkeypatch):
    writes = count_arm_writes(emu, monkeypatch)
    for flag in ("--dry-run", "--summary"):
        done = saje(workdir, env, *deploy_args(workdir / "saje.json"), flag)
        assert done.returncode == 0, done.stderr[-3000:]
    assert writes == []


# ----------------------------------------------------------------------------- image
def test_image_create_captures_a_gallery_version_and_deletes_the_build_vm(emu, env, workdir, clients):
    done = saje(workdir, env, "image", "create", "--deployment", NAME, "--image-version", "1.0.0",
                "--python", sys.executable, "--json", timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    document = json.loads(done.stdout)
    version_id = document["version"]["id"]
    gallery, definition = "saje_gallery", "ubuntu-hpc-2404-mpi"
    image = clients.compute.gallery_images.get(RG, gallery, definition)
    assert image.os_state == "Generalized" and image.hyper_v_generation == "V2"
    assert image.identifier.publisher == "saje" and image.tags["saje-node-agent-sku"] == "batch.node.ubuntu 24.04"
    version = clients.compute.gallery_image_versions.get(RG, gallery, definition, "1.0.0")
    assert version.id == version_id and version.provisioning_state == "Succeeded"
    assert "westeurope" in [r.name for r in version.publishing_profile.target_regions]
    # The build VM and its OS disk are gone.
    assert list(clients.compute.virtual_machines.list(RG)) == []
    assert list(clients.compute.disks.list_by_resource_group(RG)) == []
    # What the provisioning scripts installed is in the image: the MPI wheel and the benchmark.
    root = emu.arm.image_root(version_id)
    assert (root / "usr/local/bin/mpirun").exists() and (root / "usr/local/bin/saje-mpi-bench").exists()
    logs = workdir / ".saje/image" / definition / "1.0.0" / "provision"
    assert "MPI flavour openmpi installed" in (logs / "10-mpi.sh.log").read_text()


def test_image_test_runs_mpi_on_the_image_and_removes_its_pool(emu, env, workdir):
    done = saje(workdir, env, "image", "test", "--deployment", NAME, "--image-version", "1.0.0", "--json", timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)["test-report"]
    bench = report["benchmark"]
    assert bench["ranks"] == 2 and len(set(bench["hosts"])) == 2
    assert bench["latency_us"] > 0 and bench["bandwidth_MBps"] > 0 and bench["allreduce_us"] > 0
    text = (workdir / ".saje/image/ubuntu-hpc-2404-mpi/1.0.0/test-report.txt").read_text()
    assert "latency" in text and "bandwidth" in text
    assert not any(p.id == report["pool_id"] for p in emu.client().list_pools())


def test_pool_from_the_image_sees_its_software(emu, clients, workdir):
    import time

    from azure.batch import models

    keys = clients.batch.batch_account.get_keys(RG, BATCH)
    account = clients.batch.batch_account.get(RG, BATCH)
    from snakemake_executor_saje.setup.clients import Arm

    batch = Arm(SUB, None, emu.endpoint, str(emu.cert_path)).batch_data_client(account.account_endpoint, BATCH, keys.primary)
    version = json.loads((workdir / ".saje/image/ubuntu-hpc-2404-mpi/1.0.0/version.json").read_text())
    pool_id = f"from-image-{uuid.uuid4().hex[:6]}"
    batch.create_pool(models.BatchPoolCreateOptions(
        id=pool_id, vm_size="Standard_HB120rs_v3", target_dedicated_nodes=1, task_slots_per_node=1,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(virtual_machine_image_id=version["id"]),
            node_agent_sku_id=version["node_agent_sku"])))
    try:
        batch.create_job(models.BatchJobCreateOptions(id=pool_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
        batch.create_task(pool_id, models.BatchTaskCreateOptions(
            id="which", command_line="/bin/sh -c 'command -v mpirun saje-mpi-bench; echo root=$SAJE_IMAGE_ROOT'"))
        deadline = time.monotonic() + 60
        while str(batch.get_task(pool_id, "which").state).lower().rsplit(".", 1)[-1] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        out = b"".join(batch.download_task_file(pool_id, "which", "stdout.txt")).decode()
        root = str(emu.arm.image_root(version["id"]))
        assert f"{root}/usr/local/bin/mpirun" in out and f"root={root}" in out
    finally:
        batch.begin_delete_job(pool_id)
        batch.begin_delete_pool(pool_id)
    deadline = time.monotonic() + 60
    while any(p.id == pool_id for p in batch.list_pools()):
        assert time.monotonic() < deadline
        time.sleep(0.3)


# ----------------------------------------------------------------------------- teardown
def test_teardown_removes_what_deploy_made(emu, env, workdir, clients):
    done = saje(workdir, env, "teardown", "--name", NAME, "--saje-json", str(workdir / "saje.json"), "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert clients.resource.resource_groups.check_existence(RG) is False
    assert clients.batch.location.check_name_availability(
        "westeurope", {"name": BATCH, "type": "Microsoft.Batch/batchAccounts"}).name_available
    scope = f"/subscriptions/{SUB}"
    assert not [a for a in clients.auth.role_assignments.list_for_scope(scope) if a.principal_id == WORKER]
    assert not (workdir / "profiles" / NAME).exists()
    assert json.loads((workdir / "saje.json").read_text())["credentials"] == []
    assert list((workdir / ".saje" / "deploy" / NAME).glob("*.json")) == []
    again = saje(workdir, env, "teardown", "--name", NAME, "--yes")
    assert again.returncode == 0 and "Nothing to tear down" in again.stderr


def test_teardown_keeps_a_resource_group_that_existed(emu, env, workdir, clients, tmp_path):
    rg = f"kept-{uuid.uuid4().hex[:6]}"
    clients.resource.resource_groups.create_or_update(rg, {"location": "westeurope"})
    args = ["--name", "keep", "--resource-group", rg, "--storage-account", "sajekeep" + uuid.uuid4().hex[:8],
            "--batch-account", "sajekeepba" + uuid.uuid4().hex[:8], "--saje-json", str(tmp_path / "s.json")]
    assert saje(tmp_path, env, "deploy", *args).returncode == 0
    done = saje(tmp_path, env, "teardown", *args, "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert clients.resource.resource_groups.check_existence(rg)
    assert [r.name for r in clients.resource.resources.list_by_resource_group(rg)] == []


# ----------------------------------------------------------------------------- refusals
def test_invalid_names_are_refused_before_any_call(emu, env, tmp_path, clients, monkeypatch):
    writes = count_arm_writes(emu, monkeypatch)
    for option, value, words in (("--storage-account", "Bad_Name", "Storage account name 'Bad_Name'"),
                                 ("--batch-account", "ab", "3-24"),
                                 ("--resource-group", "bad/group.", "Resource group name")):
        done = saje(tmp_path, env, "deploy", "--name", "bad", option, value)
        assert done.returncode == 2, done.stderr
        assert words in done.stderr and "Nothing was created" in done.stderr
    done = saje(tmp_path, env, "image", "create", "--deployment", "bad", "--resource-group", "x",
                "--image-version", "1.0")
    assert done.returncode == 2 and "Major.Minor.Patch" in done.stderr
    assert writes == [] and not (tmp_path / ".saje").exists()
    assert clients.resource.resource_groups.check_existence("bad-rg") is False


def test_taken_storage_name_is_refused_with_a_clear_message(emu, env, tmp_path, clients):
    other = f"owner-{uuid.uuid4().hex[:6]}"
    taken = "sajetaken" + uuid.uuid4().hex[:8]
    clients.resource.resource_groups.create_or_update(other, {"location": "westeurope"})
    clients.storage.storage_accounts.begin_create(other, taken, {"location": "westeurope", "sku": {"name": "Standard_LRS"},
                                                                 "kind": "StorageV2"}).result()
    rg = f"taken-{uuid.uuid4().hex[:6]}"
    done = saje(tmp_path, env, "deploy", "--name", "taken", "--resource-group", rg, "--storage-account", taken,
                "--saje-json", str(tmp_path / "s.json"))
    assert done.returncode == 1
    assert f"Storage account name {taken!r} is not available" in done.stderr
    # The run rolled back the group it had made.
    assert clients.resource.resource_groups.check_existence(rg) is False
    assert list((tmp_path / ".saje/deploy/taken").glob("*.json")) in ([], [tmp_path / ".saje/deploy/taken/provider.json"])


def test_principal_without_rights_gets_a_clear_error_and_nothing_is_made(emu, env, tmp_path, clients):
    nobody = str(uuid.uuid4())
    rg = f"denied-{uuid.uuid4().hex[:6]}"
    args = ["deploy", "--name", "denied", "--resource-group", rg, "--managed-identity", nobody,
            "--saje-json", str(tmp_path / "s.json")]
    done = saje(tmp_path, env, *args)
    assert done.returncode == 1
    assert "Permission denied" in done.stderr and "AuthorizationFailed" in done.stderr and nobody in done.stderr
    assert clients.resource.resource_groups.check_existence(rg) is False

    # Contributor on the subscription can make the group but not the role assignment: the run stops
    # there and removes the group it made, so nothing is left half-made.
    emu.arm.grant(nobody, "Contributor", f"/subscriptions/{SUB}")
    done = saje(tmp_path, env, *args, "--batch-principal-id", str(uuid.uuid4()))
    assert done.returncode == 1
    assert "Permission denied" in done.stderr and "roleAssignments/write" in done.stderr
    assert "removing what this run" in done.stdout + done.stderr
    assert clients.resource.resource_groups.check_existence(rg) is False
    assert not (tmp_path / ".saje/deploy/denied/resource_group.json").exists()
