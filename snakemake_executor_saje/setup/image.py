"""The image workflow's steps: an RDMA/MPI node image in an Azure Compute Gallery, and its test.

create:  network (a VNet for the build VM, unless subnet_id is given) -> build VM from an HPC base
         image on an RDMA size -> provisioning scripts through RunShellScript (output into logs) ->
         deallocate + generalize -> gallery, image definition (Generalized, V2, identifier, the node
         agent SKU in its tags) -> image version with a replica in the Batch account's region ->
         build VM, its OS disk and the VNet deleted (also when any step failed: `cleanup_build`).
test:    a 2-node pool from the image version (Batch data plane, shared key from listKeys), one
         multi-instance task running saje-mpi-bench over both nodes, latency/bandwidth/allreduce into
         a report, then the job and the pool deleted whatever happened.

On the emulator the scripts run locally with SAJE_VM_ROOT set to the build VM's "disk" directory,
the version is a copy of it, and nodes of pools made from it get its usr/local/bin first on PATH.
"""
from __future__ import annotations

import json
import re
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import catalogue, statedir
from . import names
from .clients import ARM_ENDPOINT, Arm
from .markers import SetupError, existing, explain, is_not_found, read_marker, wait_until

__all__ = ["BASE_IMAGES", "SCRIPTS", "ImagePlan", "image_plan", "ensure_network", "create_build_vm",
           "provision", "generalize", "ensure_gallery", "ensure_definition", "create_version", "cleanup_build",
           "test_image", "parse_bench"]

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "workflows" / "image" / "scripts"
# Short names of the HPC base images (catalogue.yaml lists their node agent SKUs).
BASE_IMAGES = {
    "ubuntu-hpc": ("microsoft-dsvm", "ubuntu-hpc", "2404"),
    "ubuntu-hpc-2204": ("microsoft-dsvm", "ubuntu-hpc", "2204"),
    "almalinux-hpc": ("almalinux", "almalinux-hpc", "8-hpc-gen2"),
}
SCRIPTS = ("10-mpi.sh", "20-packages.sh", "30-snakemake.sh", "40-mpi-bench.sh", "90-deprovision.sh")
NETWORK_API = "2023-09-01"
MPI_FLAVORS = ("openmpi", "mpich", "hpcx", "intelmpi")


@dataclass
class ImagePlan:
    deployment: str
    resource_group: str
    location: str
    publisher: str
    offer: str
    sku: str
    base_version: str
    node_agent_sku: str
    vm_size: str
    vm_name: str
    gallery: str
    definition: str
    version: str
    mpi_flavors: list[str]
    mpi_source: str = "pypi"
    python: str = "python3"
    packages: dict[str, Any] = field(default_factory=dict)
    snakemake_version: str | None = None
    snakemake_plugins: list[str] = field(default_factory=list)
    admin_username: str = "azureuser"
    subnet_id: str | None = None
    batch_account: str | None = None
    batch_resource_group: str | None = None
    batch_location: str | None = None
    test_nodes: int = 2
    test_vm_size: str | None = None
    fabric: str = "auto"
    test_timeout: float = 1800.0
    state_dir: Path = Path(".saje/image")
    scripts_dir: Path = SCRIPTS_DIR
    tags: dict[str, str] = field(default_factory=dict)

    def marker(self, step: str) -> Path:
        return self.state_dir / f"{step}.json"

    @property
    def vnet_name(self) -> str:
        return f"{self.vm_name}-vnet"

    @property
    def replica_regions(self) -> list[str]:
        regions = [self.location]
        if self.batch_location and self.batch_location not in regions:
            regions.append(self.batch_location)
        return regions


def _deployment_marker(state_root: Path, deployment: str, step: str) -> dict[str, Any] | None:
    return read_marker(state_root / "deploy" / deployment / f"{step}.json")


def image_plan(config: Mapping[str, Any]) -> ImagePlan:
    """The ImagePlan of an image config (and the deploy markers it points at); names checked first."""
    state_root = Path(config.get("state_dir") or ".saje")
    deployment = names.check_deployment_name(config.get("deployment") or "saje")
    group = _deployment_marker(state_root, deployment, "resource_group") or {}
    batch = _deployment_marker(state_root, deployment, "batch_account") or {}
    resource_group = config.get("resource_group") or group.get("name")
    if not resource_group:
        raise names.NameRuleError(
            f"No resource group: deploy first (saje deploy --name {deployment}) or set resource_group.")
    location = names.normalize_location(config.get("location") or group.get("location") or "westeurope")
    base = str(config.get("base_image") or "ubuntu-hpc")
    if base in BASE_IMAGES:
        publisher, offer, sku = BASE_IMAGES[base]
        base_version = "latest"
    else:
        parts = base.split(":")
        if len(parts) not in (3, 4) or not all(parts):
            raise names.NameRuleError(f"base_image {base!r}: use one of {', '.join(BASE_IMAGES)} or"
                                      " publisher:offer:sku[:version].")
        publisher, offer, sku = parts[:3]
        base_version = parts[3] if len(parts) == 4 else "latest"
    agent = config.get("node_agent_sku") or catalogue.node_agent_for(publisher, offer, sku)
    if not agent:
        raise names.NameRuleError(f"No Batch node agent SKU known for {publisher}:{offer}:{sku}; set node_agent_sku.")
    vm_size = str(config.get("vm_size") or "Standard_HB120rs_v3")
    size = catalogue.vm_size(vm_size)
    if size is not None and not size.rdma and not config.get("allow_non_rdma"):
        raise names.NameRuleError(f"vm_size {vm_size} has no InfiniBand (RDMA); use an HB/HC/HX/ND size, e.g."
                                  " Standard_HB120rs_v3, or set allow_non_rdma.")
    flavors = list(config.get("mpi_flavors") or ["openmpi"])
    unknown = [f for f in flavors if f not in MPI_FLAVORS]
    if unknown:
        raise names.NameRuleError(f"mpi_flavors {unknown}: known flavours are {', '.join(MPI_FLAVORS)}.")
    definition = names.check_image_definition(config.get("image_definition") or f"{offer}-{sku}-mpi")
    version = names.check_image_version(config.get("image_version") or "1.0.0")
    packages = _packages(config.get("packages_file"))
    snakemake_version = config.get("snakemake_version")
    if snakemake_version is None or snakemake_version == "caller":
        from snakemake import __version__ as snakemake_version  # the caller's
    return ImagePlan(
        deployment=deployment, resource_group=names.check_resource_group(resource_group), location=location,
        publisher=publisher, offer=offer, sku=sku, base_version=base_version, node_agent_sku=agent,
        vm_size=vm_size, vm_name=names.check_vm_name(config.get("vm_name") or f"saje-build-{definition}"[:64]),
        gallery=names.check_gallery(config.get("gallery") or "saje_gallery"), definition=definition,
        version=version, mpi_flavors=flavors, mpi_source=str(config.get("mpi_source") or "pypi"),
        python=str(config.get("python") or "python3"), packages=packages,
        snakemake_version=str(snakemake_version) if snakemake_version else None,
        snakemake_plugins=list(config.get("snakemake_plugins") or []),
        admin_username=str(config.get("admin_username") or "azureuser"),
        subnet_id=config.get("subnet_id") or None,
        batch_account=config.get("batch_account") or batch.get("name"),
        batch_resource_group=(batch.get("id") or "").split("/")[4] if batch.get("id") else resource_group,
        batch_location=names.normalize_location(batch["location"]) if batch.get("location") else None,
        test_nodes=int(config.get("test_nodes") or 2),
        test_vm_size=config.get("test_vm_size") or None,
        fabric=str(config.get("fabric") or "auto"),
        test_timeout=float(config.get("test_timeout_minutes") or 30) * 60,
        state_dir=state_root / "image" / definition / version,
        scripts_dir=Path(config.get("scripts_dir") or SCRIPTS_DIR),
        tags={"saje-deployment": deployment, "saje-image": f"{definition}/{version}"},
    )


def _packages(path: Any) -> dict[str, Any]:
    """The user's packages file: YAML with apt, dnf, pip (lists) and script (list of shell lines)."""
    if not path:
        return {}
    import yaml

    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise names.NameRuleError(f"packages_file {file} does not exist.")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict) or set(data) - {"apt", "dnf", "pip", "script"}:
        raise names.NameRuleError(f"packages_file {file}: expected a mapping with apt, dnf, pip and script lists.")
    return {k: [str(v) for v in (data.get(k) or [])] for k in ("apt", "dnf", "pip", "script")}


def _hint(p: ImagePlan) -> str:
    return f"Markers and logs are in {p.state_dir}/."


def _call(p: ImagePlan, doing: str, fn: Callable[[], Any]) -> Any:
    from azure.core.exceptions import AzureError

    try:
        return fn()
    except AzureError as exc:
        raise explain(exc, doing, state_hint=_hint(p)) from None


def _existing(p: ImagePlan, doing: str, get: Callable[[], Any]) -> Any:
    """What ``get`` returns, or None when Azure answers 404."""
    return existing(get, doing, _hint(p))


def _record(kind: str, rid: str | None, name: str, created: bool, run_id: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "id": rid, "name": name, "created": created, "run_id": run_id if created else None, **extra}


# ----------------------------------------------------------------------------- build VM
def ensure_network(arm: Arm, p: ImagePlan, run_id: str) -> dict[str, Any]:
    """A VNet with one subnet for the build VM (no public IP: run-command needs none)."""
    from azure.core.exceptions import HttpResponseError

    if p.subnet_id:
        return _record("network", p.subnet_id, p.subnet_id.rsplit("/", 1)[-1], False, run_id, subnet_id=p.subnet_id)
    vnet_id = f"{arm.group_scope(p.resource_group)}/providers/Microsoft.Network/virtualNetworks/{p.vnet_name}"
    subnet_id = f"{vnet_id}/subnets/default"
    body = {"location": p.location, "tags": p.tags, "properties": {
        "addressSpace": {"addressPrefixes": ["10.83.0.0/16"]},
        "subnets": [{"name": "default", "properties": {"addressPrefix": "10.83.0.0/24"}}]}}
    try:
        try:
            arm.resource.resources.get_by_id(vnet_id, api_version=NETWORK_API)
            return _record("network", vnet_id, p.vnet_name, False, run_id, subnet_id=subnet_id)
        except HttpResponseError as exc:
            if not is_not_found(exc) or getattr(getattr(exc, "error", None), "code", "") == "NoRegisteredProviderFound":
                raise
        arm.resource.resources.begin_create_or_update_by_id(vnet_id, body, api_version=NETWORK_API).result()
    except HttpResponseError as exc:
        code = getattr(getattr(exc, "error", None), "code", "")
        if code in ("NoRegisteredProviderFound", "InvalidResourceType") and arm.endpoint != ARM_ENDPOINT:
            # The emulator does not model Microsoft.Network; its VMs take any subnet id.
            return _record("network", None, p.vnet_name, False, run_id, subnet_id=subnet_id, emulated=True)
        raise explain(exc, f"creating virtual network {p.vnet_name}", state_hint=_hint(p)) from None
    return _record("network", vnet_id, p.vnet_name, True, run_id, subnet_id=subnet_id)


def _ssh_public_key() -> str:
    """A throw-away key: nobody logs in to the build VM (run-command does the work); Azure wants one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " saje-build"


def create_build_vm(arm: Arm, p: ImagePlan, run_id: str, network: Mapping[str, Any]) -> dict[str, Any]:
    vms = arm.compute.virtual_machines
    existing = _existing(p, f"reading VM {p.vm_name}", lambda: vms.get(p.resource_group, p.vm_name))
    if existing is not None:
        raise SetupError(f"A VM {p.vm_name} already exists in {p.resource_group} (a build left over?). Delete it"
                         f" (the workflow's cleanup rule, or az vm delete) or set vm_name. {_hint(p)}")
    body = {
        "location": p.location, "tags": p.tags,
        "properties": {
            "hardwareProfile": {"vmSize": p.vm_size},
            "storageProfile": {
                "imageReference": {"publisher": p.publisher, "offer": p.offer, "sku": p.sku, "version": p.base_version},
                "osDisk": {"createOption": "FromImage", "deleteOption": "Delete",
                           "managedDisk": {"storageAccountType": "Premium_LRS"}}},
            "osProfile": {"computerName": p.vm_name[:15], "adminUsername": p.admin_username,
                          "linuxConfiguration": {"disablePasswordAuthentication": True, "ssh": {"publicKeys": [{
                              "path": f"/home/{p.admin_username}/.ssh/authorized_keys",
                              "keyData": _ssh_public_key()}]}}},
            "networkProfile": {"networkApiVersion": "2022-11-01", "networkInterfaceConfigurations": [{
                "name": f"{p.vm_name}-nic", "properties": {
                    "primary": True, "deleteOption": "Delete",
                    "ipConfigurations": [{"name": "ipconfig", "properties": {"subnet": {"id": network["subnet_id"]}}}]}}]},
        },
    }
    vm = _call(p, f"creating build VM {p.vm_name} ({p.vm_size}, {p.publisher}:{p.offer}:{p.sku})",
               lambda: vms.begin_create_or_update(p.resource_group, p.vm_name, body).result())
    return _record("build_vm", vm.id, vm.name, True, run_id, os_disk=vm.storage_profile.os_disk.name,
                   vm_size=p.vm_size, image=f"{p.publisher}:{p.offer}:{p.sku}:{p.base_version}")


def script_parameters(p: ImagePlan, script: str) -> dict[str, str]:
    """The environment each provisioning script gets (run-command parameters)."""
    params = {"PYTHON": p.python}
    if script.startswith("10-"):
        params.update({"MPI_FLAVORS": " ".join(p.mpi_flavors), "MPI_SOURCE": p.mpi_source})
    elif script.startswith("20-"):
        params.update({"APT_PACKAGES": " ".join(p.packages.get("apt", [])),
                       "DNF_PACKAGES": " ".join(p.packages.get("dnf", [])),
                       "PIP_PACKAGES": " ".join(shlex.quote(x) for x in p.packages.get("pip", [])),
                       "USER_SCRIPT": "\n".join(p.packages.get("script", []))})
    elif script.startswith("30-"):
        params.update({"SNAKEMAKE_VERSION": p.snakemake_version or "",
                       "SNAKEMAKE_PLUGINS": " ".join(p.snakemake_plugins)})
    return params


def script_lines(p: ImagePlan, script: str) -> list[str]:
    """common.sh, the files the script needs (as here-documents), then the script itself."""
    text = (p.scripts_dir / "common.sh").read_text()
    if script.startswith("40-"):
        source = (p.scripts_dir / "saje-mpi-bench.c").read_text()
        fence = f"SAJE_EOF_{uuid.uuid4().hex[:8]}"
        text += f"cat > saje-mpi-bench.c <<'{fence}'\n{source}{fence}\n"
    text += (p.scripts_dir / script).read_text()
    return text.splitlines()


def provision(arm: Arm, p: ImagePlan, script: str, log_path: Path) -> dict[str, Any]:
    """Run one provisioning script on the build VM; its output goes to ``log_path`` (failure: raise)."""
    params = script_parameters(p, script)
    started = time.monotonic()
    result = _call(p, f"running {script} on {p.vm_name}", lambda: arm.compute.virtual_machines.begin_run_command(
        p.resource_group, p.vm_name, {"commandId": "RunShellScript", "script": script_lines(p, script),
                                      "parameters": [{"name": k, "value": v} for k, v in params.items()]}).result())
    status = (result.value or [None])[0]
    code = getattr(status, "code", "") or ""
    message = getattr(status, "message", "") or ""
    statedir.ensure(log_path.parent)
    log_path.write_text(f"# {script} on {p.vm_name} ({code}, {time.monotonic() - started:.1f} s)\n"
                        f"# parameters: {json.dumps(params, sort_keys=True)}\n{message}\n")
    if not code.endswith("succeeded"):
        tail = "\n".join(message.strip().splitlines()[-15:])
        raise SetupError(f"Provisioning script {script} failed on {p.vm_name} ({code}); full output in {log_path}."
                         f" Last lines:\n{tail}")
    return {"script": script, "code": code, "log": str(log_path)}


def generalize(arm: Arm, p: ImagePlan, run_id: str) -> dict[str, Any]:
    vms = arm.compute.virtual_machines
    _call(p, f"deallocating {p.vm_name}", lambda: vms.begin_deallocate(p.resource_group, p.vm_name).result())
    _call(p, f"generalizing {p.vm_name}", lambda: vms.generalize(p.resource_group, p.vm_name))
    vm = _call(p, f"reading {p.vm_name}", lambda: vms.get(p.resource_group, p.vm_name))
    return _record("generalized", vm.id, vm.name, False, run_id)


# ----------------------------------------------------------------------------- gallery
def ensure_gallery(arm: Arm, p: ImagePlan, run_id: str) -> dict[str, Any]:
    galleries = arm.compute.galleries
    found = _existing(p, f"reading gallery {p.gallery}", lambda: galleries.get(p.resource_group, p.gallery))
    if found is not None:
        return _record("gallery", found.id, found.name, False, run_id)
    made = _call(p, f"creating gallery {p.gallery}", lambda: galleries.begin_create_or_update(
        p.resource_group, p.gallery, {"location": p.location, "tags": p.tags,
                                      "properties": {"description": "SAJE node images (RDMA/MPI)"}}).result())
    return _record("gallery", made.id, made.name, True, run_id)


def ensure_definition(arm: Arm, p: ImagePlan, run_id: str) -> dict[str, Any]:
    images = arm.compute.gallery_images
    found = _existing(p, f"reading image definition {p.definition}",
                      lambda: images.get(p.resource_group, p.gallery, p.definition))
    if found is not None:
        state = str(getattr(found.os_state, "value", found.os_state))
        generation = str(getattr(found.hyper_v_generation, "value", found.hyper_v_generation))
        if state != "Generalized" or generation != "V2":
            raise SetupError(f"Image definition {p.definition} exists as {state}/{generation}; SAJE images are"
                             " Generalized/V2: choose another image_definition.")
        return _record("definition", found.id, found.name, False, run_id, node_agent_sku=found.tags.get(
            "saje-node-agent-sku", p.node_agent_sku) if found.tags else p.node_agent_sku)
    body = {"location": p.location,
            "tags": {**p.tags, "saje-node-agent-sku": p.node_agent_sku,
                     "saje-base-image": f"{p.publisher}:{p.offer}:{p.sku}", "saje-mpi": " ".join(p.mpi_flavors)},
            "properties": {
                "osType": "Linux", "osState": "Generalized", "hyperVGeneration": "V2", "architecture": "x64",
                "identifier": {"publisher": "saje", "offer": p.offer, "sku": p.definition},
                "description": f"SAJE MPI image ({', '.join(p.mpi_flavors)}) from {p.publisher}:{p.offer}:{p.sku};"
                               f" Batch node agent {p.node_agent_sku}",
                "features": [{"name": "IsAcceleratedNetworkSupported", "value": "True"}],
                "recommended": {"vCPUs": {"min": 1}, "memory": {"min": 1}}}}
    made = _call(p, f"creating image definition {p.definition}", lambda: images.begin_create_or_update(
        p.resource_group, p.gallery, p.definition, body).result())
    return _record("definition", made.id, made.name, True, run_id, node_agent_sku=p.node_agent_sku)


def create_version(arm: Arm, p: ImagePlan, run_id: str, vm: Mapping[str, Any],
                   definition: Mapping[str, Any]) -> dict[str, Any]:
    versions = arm.compute.gallery_image_versions
    found = _existing(p, f"reading image version {p.version}",
                      lambda: versions.get(p.resource_group, p.gallery, p.definition, p.version))
    if found is not None:
        raise SetupError(f"Image version {p.definition}/{p.version} already exists; set image_version to a new"
                         " Major.Minor.Patch (versions are immutable).")
    body = {"location": p.location, "tags": p.tags, "properties": {
        "storageProfile": {"source": {"virtualMachineId": vm["id"]}},
        "publishingProfile": {"targetRegions": [{"name": r, "regionalReplicaCount": 1,
                                                 "storageAccountType": "Standard_LRS"} for r in p.replica_regions]}}}
    made = _call(p, f"capturing image version {p.definition}/{p.version} (replicas: {', '.join(p.replica_regions)})",
                 lambda: versions.begin_create_or_update(p.resource_group, p.gallery, p.definition, p.version,
                                                         body).result())
    agent = definition.get("node_agent_sku") or p.node_agent_sku
    return _record("version", made.id, made.name, True, run_id, node_agent_sku=agent, regions=p.replica_regions,
                   pool_settings={"saje-mpi-image": made.id, "saje-mpi-node-agent-sku": agent,
                                  "saje-mpi-vm-size": p.vm_size, "saje-mpi-flavor": p.mpi_flavors[0]})


def cleanup_build(arm: Arm, p: ImagePlan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Delete the build VM, its OS disk and NIC and the VNet SAJE made; fine when some are gone already."""
    from azure.core.exceptions import AzureError

    done: list[str] = []
    vms = arm.compute.virtual_machines
    vm = _existing(p, f"reading VM {p.vm_name}", lambda: vms.get(p.resource_group, p.vm_name))
    marker = read_marker(p.marker("build_vm")) or {}
    disk = marker.get("os_disk") or (vm.storage_profile.os_disk.name if vm is not None else None)
    if vm is not None:
        _call(p, f"deleting build VM {p.vm_name}", lambda: vms.begin_delete(p.resource_group, p.vm_name).result())
        done.append(f"vm {p.vm_name}")
        log(f"deleted build VM {p.vm_name}")
    if disk and _existing(p, f"reading disk {disk}", lambda: arm.compute.disks.get(p.resource_group, disk)) is not None:
        _call(p, f"deleting disk {disk}", lambda: arm.compute.disks.begin_delete(p.resource_group, disk).result())
        done.append(f"disk {disk}")
        log(f"deleted OS disk {disk}")
    network = read_marker(p.marker("network")) or {}
    if network.get("created") and network.get("id"):
        try:
            arm.resource.resources.begin_delete_by_id(network["id"], api_version=NETWORK_API).result()
            done.append(f"vnet {network['name']}")
            log(f"deleted virtual network {network['name']}")
        except AzureError as exc:
            if not is_not_found(exc):
                raise explain(exc, f"deleting virtual network {network['name']}", state_hint=_hint(p)) from None
    return {"kind": "cleanup", "deleted": done, "vm": p.vm_name}


# ----------------------------------------------------------------------------- test
_BENCH = re.compile(r"SAJE_BENCH\s+(.*)")


def parse_bench(stdout: str) -> dict[str, Any]:
    """The SAJE_BENCH line of saje-mpi-bench's output as numbers (SetupError when there is none)."""
    for line in stdout.splitlines():
        match = _BENCH.search(line)
        if match:
            values: dict[str, Any] = {}
            for item in match.group(1).split():
                key, _, value = item.partition("=")
                try:
                    values[key] = float(value) if "." in value else int(value)
                except ValueError:
                    values[key] = value
            if isinstance(values.get("hosts"), str):
                values["hosts"] = values["hosts"].split(",")
            return values
    raise SetupError("saje-mpi-bench printed no SAJE_BENCH line; see the task's stdout/stderr in the report.")


def _value(x: Any) -> str:
    return str(getattr(x, "value", x)).lower()


def _fabric(arm: Arm, p: ImagePlan) -> str:
    if p.fabric != "auto":
        return p.fabric
    return "infiniband" if arm.endpoint == ARM_ENDPOINT else "tcp"


def test_image(arm: Arm, p: ImagePlan, version: Mapping[str, Any], log: Callable[[str], None] = print,
               poll: float = 2.0) -> dict[str, Any]:
    """A multi-instance MPI benchmark on a pool made from the image; the pool is deleted afterwards."""
    from azure.batch import models
    from azure.core.exceptions import AzureError

    from ..mpi import Fabric, MpiFlavor, application_environment, coordination_command, hostfile_script

    if not p.batch_account:
        raise SetupError(f"No Batch account: deploy first (saje deploy --name {p.deployment}) or set batch_account.")
    rg = p.batch_resource_group or p.resource_group
    account = _call(p, f"reading Batch account {p.batch_account}", lambda: arm.batch.batch_account.get(rg, p.batch_account))
    keys = _call(p, f"reading the keys of {p.batch_account}", lambda: arm.batch.batch_account.get_keys(rg, p.batch_account))
    client = arm.batch_data_client(account.account_endpoint, p.batch_account, keys.primary)
    flavor = MpiFlavor(p.mpi_flavors[0])
    fabric = Fabric(_fabric(arm, p))
    suffix = uuid.uuid4().hex[:6]
    pool_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"saje-imagetest-{p.definition}-{p.version}-{suffix}")[:64]
    job_id = f"{pool_id}-job"[:64]
    nodes = p.test_nodes
    report: dict[str, Any] = {"image": version["id"], "pool_id": pool_id, "nodes": nodes,
                              "vm_size": p.test_vm_size or p.vm_size, "mpi_flavor": flavor.value, "fabric": fabric.value}
    started = time.monotonic()
    try:
        client.create_pool(models.BatchPoolCreateOptions(
            id=pool_id, vm_size=p.test_vm_size or p.vm_size, target_dedicated_nodes=nodes,
            enable_inter_node_communication=True, task_slots_per_node=1,
            virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(virtual_machine_image_id=version["id"]),
                node_agent_sku_id=version.get("node_agent_sku") or p.node_agent_sku)))
        log(f"pool {pool_id}: {nodes} x {p.test_vm_size or p.vm_size} from {p.definition}/{p.version}")

        def idle() -> bool:
            states = [_value(n.state) for n in client.list_nodes(pool_id)]
            bad = [s for s in states if s in ("starttaskfailed", "unusable")]
            if bad:
                raise SetupError(f"Nodes of the test pool became {bad[0]}; the image does not boot as a Batch node.")
            return len(states) == nodes and all(s == "idle" for s in states)

        wait_until(f"{nodes} idle nodes in {pool_id}", idle, p.test_timeout, poll)
        report["pool_ready_seconds"] = round(time.monotonic() - started, 1)
        client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
        env = application_environment(flavor, nodes, 1, fabric=fabric)
        command = hostfile_script(flavor, 1) + "mpirun -n $SAJE_MPI_NP saje-mpi-bench\n"
        client.create_task(job_id, models.BatchTaskCreateOptions(
            id="bench", command_line=f"/bin/sh -c {shlex.quote(command)}",
            multi_instance_settings=models.MultiInstanceSettings(
                number_of_instances=nodes, coordination_command_line=coordination_command(flavor)),
            environment_settings=[models.EnvironmentSetting(name=k, value=v) for k, v in env.items()],
            user_identity=models.UserIdentity(auto_user=models.AutoUserSpecification(
                scope="pool", elevation_level="admin")),
            constraints=models.BatchTaskConstraints(max_wall_clock_time=__import__("datetime").timedelta(
                seconds=p.test_timeout))))
        log("multi-instance task 'bench' submitted (saje-mpi-bench: ping-pong and allreduce)")
        task = wait_until("the benchmark task to complete", lambda: (
            lambda t: t if _value(t.state) == "completed" else None)(client.get_task(job_id, "bench")), p.test_timeout, poll)

        def text(name: str) -> str:
            try:
                return b"".join(client.download_task_file(job_id, "bench", name)).decode("utf-8", "replace")
            except AzureError:
                return ""

        stdout, stderr = text("stdout.txt"), text("stderr.txt")
        info = task.execution_info
        report.update({"exit_code": info.exit_code if info else None, "stdout": stdout[-4000:], "stderr": stderr[-4000:]})
        if not info or info.exit_code != 0:
            raise SetupError(f"The MPI benchmark failed on the image (exit code {info.exit_code if info else '?'}):"
                             f" {stderr.strip()[-1500:] or stdout.strip()[-1500:]}")
        report["benchmark"] = parse_bench(stdout)
        report["ok"] = True
        return report
    finally:
        for what, delete in (("job", lambda: client.begin_delete_job(job_id)),
                             ("pool", lambda: client.begin_delete_pool(pool_id))):
            try:
                delete()
            except AzureError as exc:
                if not is_not_found(exc):
                    log(f"could not delete test {what}: {exc}")
        try:
            wait_until(f"pool {pool_id} to be deleted", lambda: not any(
                pl.id == pool_id for pl in client.list_pools(filter=f"id eq '{pool_id}'")), 600, poll)
            log(f"pool {pool_id} deleted")
        except SetupError as exc:
            log(f"warning: {exc} It is being deleted; check with `saje pool list`.")
        client.close()


def write_report(report: Mapping[str, Any], json_path: Path, text_path: Path) -> None:
    statedir.ensure(json_path.parent)
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    bench = report.get("benchmark") or {}
    lines = [f"SAJE image test: {report.get('image')}",
             f"pool: {report.get('nodes')} x {report.get('vm_size')} ({report.get('pool_id')}, deleted)",
             f"MPI: {report.get('mpi_flavor')} over {report.get('fabric')}",
             f"hosts: {', '.join(bench.get('hosts') or [])}",
             f"latency (8 B ping-pong, one way): {bench.get('latency_us')} us",
             f"bandwidth (4 MiB ping-pong): {bench.get('bandwidth_MBps')} MB/s",
             f"allreduce (1 double, {bench.get('ranks')} ranks): {bench.get('allreduce_us')} us"]
    text_path.write_text("\n".join(lines) + "\n")
