"""The peer row of compare.py: snakemake-executor-plugin-azure-batch (PyPI) on the same emulator.

The peer lives in its own virtualenv (.venv-peer, made on first use) with what it pins (azure-batch
14.x, azure-mgmt-batch), the Snakemake and Azure storage plugin versions SAJE's venv has. What it
needs from Azure is given as Azure gives it, by the emulator started with --tls:
- its pool is created through ARM (`pools.create` on Microsoft.Batch/batchAccounts/{name}, where
  {name} is the first label of its account URL: `https://127.0.0.1:PORT` names the account "127");
  this module registers Microsoft.Batch, creates a resource group and that Batch account first;
- it authenticates with azure-identity (its chain reaches ManagedIdentityCredential): the
  emulator's App Service-style managed-identity endpoint (IDENTITY_ENDPOINT/IDENTITY_HEADER) and
  its certificate (REQUESTS_CA_BUNDLE), from `saje emulator start --tls`'s client environment;
- it needs a default storage provider (azure, on Azurite) and a managed identity resource id for
  its pool (any id: the nodes reach Azurite with AZURITE_CONNECTION_STRING, as SAJE's do);
- its tasks always run in a container: an image built here from this machine's programs (bash,
  coreutils, curl), imported into podman's local storage (no registry is reachable).
The one redirection: its BatchManagementClient is built without base_url, i.e. for the public
management endpoint; snakemake_child.py passes the emulator's endpoint instead (docs/performance.md).
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = ROOT / ".venv-peer"
PEER = "snakemake-executor-plugin-azure-batch==0.3.0"
SUBSCRIPTION = "5a1e0000-0000-4000-8000-00000000be01"
GROUP, LOCATION = "saje-bench-peer", "westeurope"
IDENTITY = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/peer"


def ensure_venv() -> str:
    """The peer's Python, its virtualenv made (once) with pip."""
    python = VENV / "bin" / "python"
    wanted = [PEER, f"snakemake=={importlib.metadata.version('snakemake')}",
              f"snakemake-storage-plugin-azure=={importlib.metadata.version('snakemake-storage-plugin-azure')}"]
    stamp = VENV / "saje-bench-packages.txt"
    if python.exists() and stamp.exists() and stamp.read_text() == "\n".join(wanted):
        return str(python)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted], check=True)
    stamp.write_text("\n".join(wanted))
    return str(python)


def image() -> str:
    """A container image with bash, coreutils and curl (the trivial command and its upload)."""
    sys.path.insert(0, str(ROOT))
    from tests import images

    images.PROGRAMS = (*images.PROGRAMS, "curl")
    return images.ensure_image("bench-peer")


def arm_setup(env: dict[str, str], account: str) -> None:
    """Microsoft.Batch registered, the resource group and the Batch account the peer's URL names."""
    from azure.identity import ManagedIdentityCredential
    from azure.mgmt.batch import BatchManagementClient
    from azure.mgmt.resource.resources import ResourceManagementClient

    saved = {k: os.environ.get(k) for k in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "REQUESTS_CA_BUNDLE")}
    os.environ.update({k: env[k] for k in saved})
    try:
        credential = ManagedIdentityCredential()
        options = {"base_url": env["SNAKEMAKE_SAJE_ACCOUNT_URL"], "credential_scopes": ["https://management.azure.com/.default"],
                   "connection_verify": env["REQUESTS_CA_BUNDLE"]}
        resources = ResourceManagementClient(credential, SUBSCRIPTION, **options)
        resources.providers.register("Microsoft.Batch")
        deadline = time.monotonic() + 30
        while resources.providers.get("Microsoft.Batch").registration_state != "Registered":
            if time.monotonic() > deadline:
                raise SystemExit("the emulator never registered Microsoft.Batch")
            time.sleep(0.2)
        resources.resource_groups.create_or_update(GROUP, {"location": LOCATION})
        batch = BatchManagementClient(credential, SUBSCRIPTION, **options)
        batch.batch_account.begin_create(GROUP, account, {"location": LOCATION, "properties": {
            "poolAllocationMode": "BatchService"}}).result()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def peer_run(emulator, workdir: Path, n: int) -> tuple[str, list[str], dict[str, str]]:
    """(python, snakemake arguments, environment) of the peer's run of compare.py's workflow."""
    from compare import storage_args

    python = ensure_venv()
    env = dict(emulator.env)
    url = env["SNAKEMAKE_SAJE_ACCOUNT_URL"]
    account = url.split("://", 1)[1].split(".")[0]
    arm_setup(env, account)
    storage = storage_args(emulator, env)
    extra = {k: env[k] for k in ("BENCH_BLOB_URL", "BENCH_SAS", "BENCH_PREFIX", "IDENTITY_ENDPOINT", "IDENTITY_HEADER",
                                 "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    extra["BENCH_ARM_ENDPOINT"] = url
    args = [
        "--executor", "azure-batch", "--scheduler", "greedy", "--jobs", str(n), "--latency-wait", "5", "--quiet", "all",
        "--azure-batch-account-url", url, "--azure-batch-subscription-id", SUBSCRIPTION,
        "--azure-batch-resource-group-name", GROUP, "--azure-batch-managed-identity-resource-id", IDENTITY,
        "--azure-batch-pool-vm-size", "Standard_D2s_v5", "--azure-batch-pool-node-count", "10",
        "--azure-batch-tasks-per-node", "8", "--azure-batch-pool-image-publisher", "canonical",
        "--azure-batch-pool-image-offer", "ubuntu-24_04-lts", "--azure-batch-pool-image-sku", "server",
        "--azure-batch-pool-vm-node-agent-sku-id", "batch.node.ubuntu 24.04",
        "--container-image", image(), *storage,
    ]
    return python, args, extra


if __name__ == "__main__":  # make the virtualenv ahead of a benchmark
    print(ensure_venv())
