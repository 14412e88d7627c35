"""Microsoft.Compute: virtual machines (create, runCommand, deallocate, generalize, delete), their OS
disks, and Compute Gallery galleries, image definitions and image versions.

A VM's OS disk is a directory, data_dir/arm/disks/<uuid>/root: RunShellScript runs locally with
SAJE_VM_ROOT pointing there (install under "${SAJE_VM_ROOT:-}/usr/local"), and an image version
captured from the VM is a copy of that directory, data_dir/arm/images/<uuid>/root, which
`image_root` hands to whoever builds nodes from the image.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import catalogue
from ..wire import Response
from .core import ArmError, bad_request, json_response, linked_authorization_failed, not_found, parent_not_found, public

if TYPE_CHECKING:
    from .service import ArmService, Ctx

NS = "Microsoft.Compute"
VM_TYPE = "Microsoft.Compute/virtualMachines"
DISK_TYPE = "Microsoft.Compute/disks"
GALLERY_TYPE = "Microsoft.Compute/galleries"
IMAGE_TYPE = "Microsoft.Compute/galleries/images"
VERSION_TYPE = "Microsoft.Compute/galleries/images/versions"
VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}[A-Za-z0-9_]$|^[A-Za-z0-9]$")
GALLERY_NAME = re.compile(r"^[A-Za-z0-9]+([_.][A-Za-z0-9]+)*$")
IMAGE_NAME = re.compile(r"^[A-Za-z0-9]+([-_.][A-Za-z0-9]+)*$")
VERSION_NAME = re.compile(r"^\d{1,9}\.\d{1,9}\.\d{1,9}$")
OUTPUT_LIMIT = 4096  # RunShellScript keeps the last 4 KB of each stream
SKELETON = ("usr/local/bin", "usr/local/lib", "usr/bin", "etc/profile.d", "opt", "root", "tmp")


def _status(code: str, display: str, time: str, level: str = "Info") -> dict[str, Any]:
    return {"code": code, "level": level, "displayStatus": display, "time": time}


class ComputeProvider:
    def __init__(self, arm: "ArmService"):
        self.arm = arm
        self.disks_dir = arm.root / "disks"
        self.images_dir = arm.root / "images"
        self._running: set[str] = set()
        self._run_lock = threading.Lock()
        arm.cleanup[VM_TYPE.lower()] = self._drop_vm
        arm.cleanup[DISK_TYPE.lower()] = self._drop_disk
        arm.cleanup[VERSION_TYPE.lower()] = self._drop_version

    # ----------------------------------------------------------------- images for the Batch data plane
    def image_root(self, image_id: str) -> Path | None:
        record = self.arm.resources.get(image_id)
        if record is not None and record["type"].lower() == IMAGE_TYPE.lower():
            versions = [v for v in self.arm.resources.find(type_=VERSION_TYPE, within=record["id"])
                        if v["properties"]["provisioningState"] == "Succeeded"
                        and not v["properties"]["publishingProfile"].get("excludeFromLatest")]
            if not versions:
                return None
            record = max(versions, key=lambda v: tuple(int(p) for p in v["name"].split(".")))
        if record is None or record["type"].lower() != VERSION_TYPE.lower():
            return None
        if record["properties"]["provisioningState"] != "Succeeded":
            return None
        root = Path(record["_root"])
        return root if root.is_dir() else None

    def image_usable_by_batch(self, image_id: str) -> bool:
        """The hook BatchState calls: the version exists and has a replica in a Batch account's region."""
        root = self.image_root(image_id)
        if root is None:
            return False
        regions = self.arm.batch.regions()
        if not regions:
            return True
        version = next((v for v in self.arm.resources.find(type_=VERSION_TYPE) if v.get("_root") == str(root)), None)
        targets = {t["name"] for t in version["properties"]["publishingProfile"]["targetRegions"]} if version else set()
        return bool(targets & regions)

    # ----------------------------------------------------------------- routes
    def handle_sub(self, ctx: "Ctx", tail: list[str]) -> Response:
        low = [t.lower() for t in tail]
        types = {"virtualmachines": VM_TYPE, "galleries": GALLERY_TYPE, "disks": DISK_TYPE}
        if len(low) == 1 and low[0] in types and ctx.method == "GET":
            scope = f"/subscriptions/{ctx.sub}"
            self.arm.authorize(ctx, f"{types[low[0]]}/read", scope)
            return json_response(200, {"value": [self._view(r) for r in self.arm.resources.find(type_=types[low[0]], within=scope)]})
        raise ArmError(404, "InvalidResourceType", f"The resource type '{'/'.join(tail)}' could not be found in the namespace '{NS}'.")

    def handle_rg(self, ctx: "Ctx", rg: str, tail: list[str]) -> Response:
        low = [t.lower() for t in tail]
        group = self.arm.require_group(ctx, rg)
        base = f"{group['id']}/providers/{NS}"
        if low[0] == "virtualmachines":
            if len(tail) == 1:
                return self._list(ctx, VM_TYPE, group["id"])
            rid = f"{base}/virtualMachines/{tail[1]}"
            if len(tail) == 2:
                return self._vm(ctx, rg, rid, tail[1])
            if len(tail) == 3:
                return self._vm_action(ctx, rg, rid, tail[1], low[2])
        if low[0] == "disks":
            if len(tail) == 1:
                return self._list(ctx, DISK_TYPE, group["id"])
            if len(tail) == 2:
                return self._disk(ctx, rg, f"{base}/disks/{tail[1]}", tail[1])
        if low[0] == "galleries":
            if len(tail) == 1:
                return self._list(ctx, GALLERY_TYPE, group["id"])
            gallery_id = f"{base}/galleries/{tail[1]}"
            if len(tail) == 2:
                return self._gallery(ctx, rg, gallery_id, tail[1])
            if low[2] == "images":
                if len(tail) == 3:
                    return self._list(ctx, IMAGE_TYPE, gallery_id)
                image_id = f"{gallery_id}/images/{tail[3]}"
                if len(tail) == 4:
                    return self._image(ctx, rg, gallery_id, image_id, tail[3])
                if low[4] == "versions":
                    if len(tail) == 5:
                        return self._list(ctx, VERSION_TYPE, image_id)
                    if len(tail) == 6:
                        return self._version(ctx, rg, image_id, f"{image_id}/versions/{tail[5]}", tail[5])
        raise ArmError(404, "InvalidResourceType", f"The resource type '{'/'.join(tail)}' could not be found in the namespace '{NS}'.")

    def _list(self, ctx: "Ctx", type_: str, within: str) -> Response:
        self.arm.authorize(ctx, f"{type_}/read", within)
        return json_response(200, {"value": [self._view(r) for r in self.arm.resources.find(type_=type_, within=within)]})

    def _view(self, record: dict[str, Any], expand: str = "") -> dict[str, Any]:
        view = public(record)
        if record["type"] == VM_TYPE:
            view["properties"] = {k: v for k, v in view["properties"].items() if k != "instanceView"}
            if "instanceview" in expand.lower():
                view["properties"]["instanceView"] = self._instance_view(record)
        if record["type"] == VERSION_TYPE and "replicationstatus" not in expand.lower():
            view["properties"] = {k: v for k, v in view["properties"].items() if k != "replicationStatus"}
        return view

    def _read_or_delete(self, ctx: "Ctx", record: dict[str, Any] | None, type_: str, name: str, rg: str, rid: str,
                        location: str | None = None) -> Response | None:
        """GET and DELETE (LRO) of a plain resource; None for PUT/PATCH."""
        if ctx.method == "GET":
            self.arm.authorize(ctx, f"{type_}/read", rid)
            if record is None:
                raise not_found(type_, name, rg)
            return json_response(200, self._view(record, ctx.request.query.get("$expand", "")))
        if ctx.method == "DELETE":
            self.arm.authorize(ctx, f"{type_}/delete", rid)
            if record is None:
                return Response.empty(204)
            children = [r for r in self.arm.resources.find(within=rid) if r["id"].lower() != rid.lower()]
            if children:
                raise ArmError(409, "CannotDeleteResource",
                               f"Can not delete resource before nested resources are deleted: {children[0]['id']}.")
            self._refuse_busy_disk(record)
            record["properties"]["provisioningState"] = "Deleting"
            self.arm.resources.put(record)
            return self.arm.lro(ctx, NS, record.get("location", location or "global"),
                                lambda: self.arm.delete_resource(record), status=202)
        if ctx.method not in ("PUT", "PATCH"):
            raise ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed.")
        self.arm.authorize(ctx, f"{type_}/write", rid)
        return None

    def _refuse_busy_disk(self, record: dict[str, Any]) -> None:
        if record["type"] == DISK_TYPE and record.get("managedBy"):
            raise ArmError(409, "OperationNotAllowed",
                           f"Disk {record['name']} is attached to VM {record['managedBy']}.")

    def _created(self, ctx: "Ctx", record: dict[str, Any], work, status: int = 201) -> Response:
        """Store `record` as Creating and answer 201 with Azure-AsyncOperation, as Compute does."""
        self.arm.resources.put(record)

        def run() -> None:
            work()
            record["properties"]["provisioningState"] = "Succeeded"
            self.arm.resources.put(record)

        def failed(error: dict[str, Any]) -> None:
            record["properties"]["provisioningState"] = "Failed"
            self.arm.resources.put(record)

        return self.arm.lro(ctx, NS, record["location"], run, status=status, body=self._view(record),
                            location_header=False, on_failure=failed)

    # ----------------------------------------------------------------- virtual machines
    def _vm(self, ctx: "Ctx", rg: str, rid: str, name: str) -> Response:
        existing = self.arm.resources.get(rid)
        answered = self._read_or_delete(ctx, existing, VM_TYPE, name, rg, rid)
        if answered is not None:
            return answered
        body = ctx.body()
        if existing is not None:
            if "tags" in body:
                existing["tags"] = body["tags"] or {}
            self.arm.resources.put(existing)
            return json_response(200, self._view(existing))
        if not VM_NAME.match(name):
            raise ArmError(400, "InvalidParameter", f"The VM name '{name}' is invalid: 1-64 letters, digits, '-', '_' "
                           "and '.', not starting with '_' nor ending with '.' or '-'.", target="vmName")
        from .service import normalize_location

        location = normalize_location(body.get("location"))
        props = body.get("properties") or {}
        size = (props.get("hardwareProfile") or {}).get("vmSize")
        if not size:
            raise ArmError(400, "InvalidParameter", "Required parameter 'hardwareProfile.vmSize' is missing (null).",
                           target="hardwareProfile.vmSize")
        if catalogue.vm_size(size) is None:
            raise ArmError(409, "SkuNotAvailable", f"The requested VM size '{size}' is not available in location "
                           f"'{location}'.", target="vmSize")
        storage_profile = props.get("storageProfile") or {}
        image = storage_profile.get("imageReference") or {}
        source_root: Path | None = None
        if image.get("id"):
            source_root = self.image_root(image["id"])
            if source_root is None:
                raise ArmError(404, "NotFound", f"The gallery image '{image['id']}' is not available.",
                               target="imageReference")
            exact = image["id"].rstrip("/").rsplit("/", 1)[-1]
        else:
            if catalogue.find_image(image.get("publisher"), image.get("offer"), image.get("sku")) is None:
                raise ArmError(404, "PlatformImageNotFound",
                               f"The platform image '{image.get('publisher')}:{image.get('offer')}:{image.get('sku')}:"
                               f"{image.get('version', 'latest')}' is not available. Verify that all fields in the "
                               "storage profile are correct.", target="imageReference")
            exact = "2025.06.01" if image.get("version", "latest") == "latest" else image["version"]
        os_profile = props.get("osProfile") or {}
        if not os_profile.get("adminUsername"):
            raise ArmError(400, "InvalidParameter", "Required parameter 'osProfile.adminUsername' is missing (null).",
                           target="adminUsername")
        if not props.get("networkProfile"):
            raise ArmError(400, "InvalidParameter", "Required parameter 'networkProfile' is missing (null).",
                           target="networkProfile")
        os_disk = dict(storage_profile.get("osDisk") or {})
        disk_name = os_disk.get("name") or f"{name}_OsDisk_1_{uuid.uuid4().hex}"
        disk_id = f"{rid.rsplit('/providers/', 1)[0]}/providers/{NS}/disks/{disk_name}"
        if self.arm.resources.get(disk_id) is not None:
            raise ArmError(409, "ConflictingUserInput", f"Disk {disk_name} already exists in resource group.")
        disk_dir = self.disks_dir / uuid.uuid4().hex
        vm_id = str(uuid.uuid4())
        os_disk.update({"name": disk_name, "osType": "Linux", "createOption": os_disk.get("createOption", "FromImage"),
                        "deleteOption": os_disk.get("deleteOption", "Detach"), "diskSizeGB": os_disk.get("diskSizeGB", 64),
                        "managedDisk": {"id": disk_id, "storageAccountType":
                                        (os_disk.get("managedDisk") or {}).get("storageAccountType", "Premium_LRS")}})
        safe_os = {k: v for k, v in os_profile.items() if k not in ("adminPassword", "customData")}
        safe_os.setdefault("computerName", name)
        record = {
            "id": rid, "name": name, "type": VM_TYPE, "location": location, "tags": body.get("tags") or {},
            "properties": {"vmId": vm_id, "hardwareProfile": {"vmSize": size},
                           "storageProfile": {"imageReference": {**image, "exactVersion": exact}, "osDisk": os_disk,
                                              "dataDisks": []},
                           "osProfile": safe_os, "networkProfile": props["networkProfile"],
                           "provisioningState": "Creating", "timeCreated": self.arm.iso_now()},
            "_power": "starting", "_generalized": False, "_hyperv": "V2",
        }
        disk = {"id": disk_id, "name": disk_name, "type": DISK_TYPE, "location": location, "managedBy": rid,
                "sku": {"name": os_disk["managedDisk"]["storageAccountType"]},
                "properties": {"osType": "Linux", "hyperVGeneration": "V2", "diskSizeGB": os_disk["diskSizeGB"],
                               "diskState": "Attached", "provisioningState": "Succeeded", "timeCreated": self.arm.iso_now(),
                               "creationData": {"createOption": "FromImage", "imageReference": image}},
                "_dir": str(disk_dir)}
        self.arm.resources.put(disk)
        record["_disk"] = disk_id

        def work() -> None:
            root = disk_dir / "root"
            if source_root is not None:
                shutil.copytree(source_root, root, symlinks=True)
            for sub in SKELETON:
                (root / sub).mkdir(parents=True, exist_ok=True)
            record["_power"] = "running"

        return self._created(ctx, record, work)

    def _instance_view(self, vm: dict[str, Any]) -> dict[str, Any]:
        power = vm.get("_power", "running")
        state = vm["properties"]["provisioningState"]
        now = self.arm.iso_now()
        statuses = [_status(f"ProvisioningState/{state.lower()}", f"Provisioning {state.lower()}", now)]
        if vm.get("_generalized"):
            statuses.append(_status("OSState/generalized", "VM generalized", now))
        statuses.append(_status(f"PowerState/{power}", f"VM {power}", now))
        return {"computerName": vm["properties"]["osProfile"].get("computerName"), "osName": "ubuntu",
                "osVersion": "24.04", "hyperVGeneration": vm.get("_hyperv", "V2"), "statuses": statuses,
                "vmAgent": {"vmAgentVersion": "2.13.1.1", "statuses": [_status("ProvisioningState/succeeded", "Ready", now)]}}

    def _vm_action(self, ctx: "Ctx", rg: str, rid: str, name: str, action: str) -> Response:
        vm = self.arm.resources.get(rid)
        if action == "instanceview" and ctx.method == "GET":
            self.arm.authorize(ctx, f"{VM_TYPE}/instanceView/read", rid)
            if vm is None:
                raise not_found(VM_TYPE, name, rg)
            return json_response(200, self._instance_view(vm))
        names = {"runcommand": "runCommand", "deallocate": "deallocate", "generalize": "generalize",
                 "start": "start", "poweroff": "powerOff", "restart": "restart"}
        if action not in names or ctx.method != "POST":
            raise ArmError(404, "InvalidResourceType", f"The resource type 'virtualMachines/{action}' could not be found.")
        self.arm.authorize(ctx, f"{VM_TYPE}/{names[action]}/action", rid)
        if vm is None:
            raise not_found(VM_TYPE, name, rg)
        power = vm.get("_power")
        if vm["properties"]["provisioningState"] != "Succeeded" and action != "deallocate":
            raise ArmError(409, "OperationNotAllowed", f"Operation '{names[action]}' is not allowed on VM '{name}' "
                           f"since the VM is in provisioning state '{vm['properties']['provisioningState']}'.")
        if action == "generalize":
            if power not in ("deallocated", "stopped"):
                raise ArmError(409, "OperationNotAllowed", f"Operation 'generalize' is not allowed on VM '{name}' since "
                               "the VM is running. Please stop/deallocate the VM first.")
            vm["_generalized"] = True
            self.arm.resources.put(vm)
            return Response.empty(200)
        if action in ("start", "restart") and vm.get("_generalized"):
            raise ArmError(409, "OperationNotAllowed", f"Operation '{names[action]}' is not allowed on VM '{name}' since "
                           "the VM is generalized.")
        if action == "runcommand":
            return self._run_command(ctx, vm)

        def work() -> None:
            if action == "deallocate":
                vm["_power"] = "deallocated"
            elif action == "poweroff":
                vm["_power"] = "stopped"
            else:
                vm["_power"] = "running"
            self.arm.resources.put(vm)

        vm["_power"] = {"deallocate": "deallocating", "poweroff": "stopping"}.get(action, "starting")
        self.arm.resources.put(vm)
        return self.arm.lro(ctx, NS, vm["location"], work, status=202)

    def _run_command(self, ctx: "Ctx", vm: dict[str, Any]) -> Response:
        if vm.get("_power") != "running":
            raise ArmError(409, "OperationNotAllowed", "The operation requires the VM to be running (or set to run).")
        body = ctx.body()
        if str(body.get("commandId", "")).lower() != "runshellscript":
            raise ArmError(400, "InvalidParameter", f"The command id '{body.get('commandId')}' is not supported on a "
                           "Linux VM; use RunShellScript.", target="commandId")
        script = body.get("script") or []
        if not isinstance(script, list) or not all(isinstance(line, str) for line in script):
            raise bad_request("script must be a list of lines.", "script")
        with self._run_lock:
            if vm["id"].lower() in self._running:
                raise ArmError(409, "Conflict", "Run command extension execution is in progress. Please wait for "
                               "completion before invoking a run command.")
            self._running.add(vm["id"].lower())
        params = {str(p.get("name")): str(p.get("value", "")) for p in body.get("parameters") or [] if p.get("name")}
        disk = self.arm.resources.get(vm["_disk"])
        root = Path(disk["_dir"]) / "root"

        def work() -> dict[str, Any]:
            try:
                return self._execute(root, script, params)
            finally:
                with self._run_lock:
                    self._running.discard(vm["id"].lower())

        return self.arm.lro(ctx, NS, vm["location"], work, status=202)

    def _execute(self, root: Path, script: list[str], params: dict[str, str]) -> dict[str, Any]:
        """RunShellScript, locally: bash in the VM's disk directory, like waagent's run-command handler."""
        work = root / "var/lib/waagent/run-command/download" / uuid.uuid4().hex[:8]
        work.mkdir(parents=True, exist_ok=True)
        (work / "script.sh").write_text("\n".join(script) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IDENTITY_", "AZURE_", "MSI_"))}
        env.update(params)
        env.update({"SAJE_VM_ROOT": str(root), "HOME": str(root / "root"),
                    "PATH": f"{root}/usr/local/bin:{root}/usr/bin:{env.get('PATH', '/usr/bin:/bin')}",
                    "LD_LIBRARY_PATH": f"{root}/usr/local/lib:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")})
        try:
            done = subprocess.run(["bash", str(work / "script.sh")], cwd=work, env=env, capture_output=True,
                                  timeout=self.arm.run_command_timeout)
            rc, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out, err = -1, exc.stdout or b"", (exc.stderr or b"") + b"\nTimed out.\n"
        (work / "stdout").write_bytes(out)
        (work / "stderr").write_bytes(err)
        text_out = out.decode("utf-8", "replace")[-OUTPUT_LIMIT:]
        text_err = err.decode("utf-8", "replace")[-OUTPUT_LIMIT:]
        if rc == 0:
            head, code, level, display = "Enable succeeded: ", "ProvisioningState/succeeded", "Info", "Provisioning succeeded"
        else:
            head = f"Enable failed: failed to execute command: command terminated with exit status={rc}"
            code, level, display = "ProvisioningState/failed", "Error", "Provisioning failed"
        message = f"{head}\n[stdout]\n{text_out}\n[stderr]\n{text_err}"
        return {"value": [{"code": code, "level": level, "displayStatus": display, "message": message}]}

    def _drop_vm(self, vm: dict[str, Any]) -> None:
        disk = self.arm.resources.get(vm.get("_disk", ""))
        if disk is None:
            return
        if vm["properties"]["storageProfile"]["osDisk"].get("deleteOption") == "Delete":
            self.arm.delete_resource(disk)
        else:
            disk["managedBy"] = None
            disk["properties"]["diskState"] = "Unattached"
            self.arm.resources.put(disk)

    # ----------------------------------------------------------------- disks
    def _disk(self, ctx: "Ctx", rg: str, rid: str, name: str) -> Response:
        existing = self.arm.resources.get(rid)
        answered = self._read_or_delete(ctx, existing, DISK_TYPE, name, rg, rid)
        if answered is not None:
            return answered
        raise ArmError(400, "OperationNotAllowed", "The emulator creates disks only with their virtual machines.")

    def _drop_disk(self, disk: dict[str, Any]) -> None:
        shutil.rmtree(disk.get("_dir", ""), ignore_errors=True)

    # ----------------------------------------------------------------- galleries
    def _gallery(self, ctx: "Ctx", rg: str, rid: str, name: str) -> Response:
        existing = self.arm.resources.get(rid)
        answered = self._read_or_delete(ctx, existing, GALLERY_TYPE, name, rg, rid)
        if answered is not None:
            return answered
        body = ctx.body()
        props = body.get("properties") or {}
        if existing is not None:
            if "description" in props:
                existing["properties"]["description"] = props["description"]
            return json_response(200, self._view(self.arm.resources.put(existing)))
        if not GALLERY_NAME.match(name) or len(name) > 80:
            raise ArmError(400, "InvalidParameter", f"The gallery name '{name}' is invalid: letters, digits, '_' and "
                           "'.', not starting or ending with '_' or '.', up to 80 characters.", target="galleryName")
        from .service import normalize_location

        record = {"id": rid, "name": name, "type": GALLERY_TYPE, "location": normalize_location(body.get("location")),
                  "tags": body.get("tags") or {},
                  "properties": {"description": props.get("description", ""), "provisioningState": "Creating",
                                 "identifier": {"uniqueName": f"{uuid.uuid4()}-{name.upper()}"}}}
        return self._created(ctx, record, lambda: None)

    def _image(self, ctx: "Ctx", rg: str, gallery_id: str, rid: str, name: str) -> Response:
        existing = self.arm.resources.get(rid)
        answered = self._read_or_delete(ctx, existing, IMAGE_TYPE, name, rg, rid)
        if answered is not None:
            return answered
        gallery = self.arm.resources.get(gallery_id)
        if gallery is None:
            raise parent_not_found(gallery_id.rsplit("/", 1)[-1])
        body = ctx.body()
        props = body.get("properties") or {}
        if existing is not None:
            for key in ("description", "features", "recommended", "endOfLifeDate"):
                if key in props:
                    existing["properties"][key] = props[key]
            return json_response(200, self._view(self.arm.resources.put(existing)))
        if not IMAGE_NAME.match(name) or len(name) > 80:
            raise ArmError(400, "InvalidParameter", f"The gallery image name '{name}' is invalid: letters, digits, "
                           "'-', '_' and '.', up to 80 characters.", target="galleryImageName")
        for key in ("osType", "osState", "identifier"):
            if not props.get(key):
                raise ArmError(400, "InvalidParameter", f"Required parameter '{key}' is missing (null).", target=key)
        ident = props["identifier"]
        if not all(ident.get(k) for k in ("publisher", "offer", "sku")):
            raise ArmError(400, "InvalidParameter", "The identifier needs publisher, offer and sku.", target="identifier")
        if props["osState"] not in ("Generalized", "Specialized"):
            raise ArmError(400, "InvalidParameter", f"The osState '{props['osState']}' is invalid.", target="osState")
        from .service import normalize_location

        record = {"id": rid, "name": name, "type": IMAGE_TYPE, "location": normalize_location(body.get("location")),
                  "tags": body.get("tags") or {},
                  "properties": {"osType": props["osType"], "osState": props["osState"],
                                 "hyperVGeneration": props.get("hyperVGeneration", "V1"),
                                 "identifier": ident, "features": props.get("features") or [],
                                 "description": props.get("description", ""),
                                 "recommended": props.get("recommended") or {},
                                 "architecture": props.get("architecture", "x64"), "provisioningState": "Creating"}}
        return self._created(ctx, record, lambda: None)

    def _version(self, ctx: "Ctx", rg: str, image_id: str, rid: str, name: str) -> Response:
        existing = self.arm.resources.get(rid)
        answered = self._read_or_delete(ctx, existing, VERSION_TYPE, name, rg, rid)
        if answered is not None:
            return answered
        image = self.arm.resources.get(image_id)
        if image is None:
            parts = image_id.split("/")
            raise parent_not_found(f"{parts[-3]}/{parts[-1]}")
        body = ctx.body()
        props = body.get("properties") or {}
        if existing is not None:
            return json_response(200, self._view(existing))
        if not VERSION_NAME.match(name):
            raise ArmError(400, "InvalidParameter", f"The gallery image version name '{name}' is invalid: it must be "
                           "Major.Minor.Patch with 32-bit integers.", target="galleryImageVersionName")
        from .service import normalize_location

        location = normalize_location(body.get("location"))
        source = ((props.get("storageProfile") or {}).get("source") or {})
        vm_ref = source.get("virtualMachineId") or source.get("id")
        if not vm_ref:
            raise ArmError(400, "InvalidParameter", "Required parameter 'storageProfile.source.virtualMachineId' is "
                           "missing (null).", target="storageProfile.source")
        if not self.arm.allowed(ctx.oid, f"{VM_TYPE}/read", vm_ref):
            raise linked_authorization_failed(ctx.oid, f"{VERSION_TYPE}/write", rid, f"{VM_TYPE}/read", vm_ref)
        vm = self.arm.resources.get(vm_ref)
        if vm is None or vm["type"] != VM_TYPE:
            raise ArmError(404, "NotFound", f"The source virtual machine '{vm_ref}' was not found.",
                           target="storageProfile.source.virtualMachineId")
        if image["properties"]["osState"] == "Generalized" and not (vm.get("_generalized") and vm.get("_power") == "deallocated"):
            raise ArmError(409, "OperationNotAllowed", f"The source virtual machine '{vm_ref}' must be generalized and "
                           "deallocated to create a generalized image version.")
        if vm.get("_hyperv", "V2") != image["properties"].get("hyperVGeneration", "V1"):
            raise ArmError(400, "InvalidParameter", f"The HyperVGeneration of the source '{vm.get('_hyperv', 'V2')}' "
                           f"does not match the HyperVGeneration of the gallery image definition "
                           f"'{image['properties'].get('hyperVGeneration', 'V1')}'.", target="hyperVGeneration")
        publishing = dict(props.get("publishingProfile") or {})
        targets = publishing.get("targetRegions") or [{"name": location}]
        targets = [{"name": normalize_location(t.get("name")), "regionalReplicaCount": t.get("regionalReplicaCount", 1),
                    "storageAccountType": t.get("storageAccountType", "Standard_LRS")} for t in targets]
        if location not in {t["name"] for t in targets}:
            raise ArmError(400, "InvalidParameter", f"The publishingProfile.targetRegions must include the image "
                           f"version's location '{location}'.", target="publishingProfile.targetRegions")
        publishing.update({"targetRegions": targets, "replicaCount": publishing.get("replicaCount", 1),
                           "excludeFromLatest": bool(publishing.get("excludeFromLatest", False)),
                           "publishedDate": self.arm.iso_now(), "storageAccountType": publishing.get("storageAccountType", "Standard_LRS")})
        disk = self.arm.resources.get(vm["_disk"])
        image_dir = self.images_dir / uuid.uuid4().hex
        record = {"id": rid, "name": name, "type": VERSION_TYPE, "location": location, "tags": body.get("tags") or {},
                  "properties": {"publishingProfile": publishing, "provisioningState": "Creating",
                                 "storageProfile": {"source": {"virtualMachineId": vm["id"]},
                                                    "osDiskImage": {"sizeInGB": disk["properties"]["diskSizeGB"],
                                                                    "hostCaching": "ReadWrite"}},
                                 "replicationStatus": {"aggregatedState": "InProgress", "summary": [
                                     {"region": t["name"], "state": "Replicating", "progress": 0} for t in targets]}},
                  "_root": str(image_dir / "root")}

        def work() -> None:
            shutil.copytree(Path(disk["_dir"]) / "root", image_dir / "root", symlinks=True)
            record["properties"]["replicationStatus"] = {"aggregatedState": "Completed", "summary": [
                {"region": t["name"], "state": "Completed", "progress": 100} for t in targets]}

        return self._created(ctx, record, work)

    def _drop_version(self, version: dict[str, Any]) -> None:
        root = version.get("_root")
        if root:
            shutil.rmtree(Path(root).parent, ignore_errors=True)
