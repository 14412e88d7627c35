"""Microsoft.Batch: Batch accounts (create LRO, keys, name check) and pools through ARM.

Every ARM Batch account is served by the emulator's one Batch data plane: its accountEndpoint is
the emulator's host:port, its keys are the emulator's account key (the account name is
registered with the front end, so SharedKey works under the ARM name too), and ARM pools are
pools of that data plane, their ARM shape mapped to and from the data-plane shape.
"""
from __future__ import annotations

import base64
import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ...armpools import is_user_assigned_identity
from .. import imds
from ..errors import BatchError
from ..wire import Response
from .applications import ApplicationProvider
from .core import ArmError, bad_request, json_response, linked_authorization_failed, not_found, parent_not_found, public

if TYPE_CHECKING:
    from .service import ArmService, Ctx

NS = "Microsoft.Batch"
ACCOUNT_TYPE = "Microsoft.Batch/batchAccounts"
POOL_TYPE = "Microsoft.Batch/batchAccounts/pools"
ACCOUNT_NAME = re.compile(r"^[a-z0-9]{3,24}$")
POOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _invalid_name_message(name: str) -> str:
    return (f"Account name '{name}' is invalid. Batch account names must be 3 to 24 characters long and contain "
            "only lower-case letters and numbers.")


class BatchProvider:
    def __init__(self, arm: "ArmService"):
        self.arm = arm
        self.secondary_key = base64.b64encode(os.urandom(64)).decode()
        arm.cleanup[POOL_TYPE.lower()] = self._drop_pool
        self.applications = ApplicationProvider(arm)
        for account in arm.resources.find(type_=ACCOUNT_TYPE):
            self._register_keys(account["name"])

    # ----------------------------------------------------------------- helpers
    @property
    def endpoint_host(self) -> str:
        return urlsplit(self.arm.emulator.endpoint).netloc

    def _register_keys(self, name: str) -> None:
        frontend = getattr(self.arm.emulator, "frontend", None)
        if frontend is not None:
            frontend.accounts[name] = (self.arm.emulator.account_key, self.secondary_key)

    def regions(self) -> set[str]:
        return {a["location"] for a in self.arm.resources.find(type_=ACCOUNT_TYPE)}

    def name_problem(self, name: str, location: str, rid: str | None = None) -> tuple[str, str] | None:
        if not ACCOUNT_NAME.match(name or ""):
            return "Invalid", _invalid_name_message(name)
        for other in self.arm.resources.find(type_=ACCOUNT_TYPE, where=lambda r: r["name"].lower() == name.lower()):
            if other["location"] == location and (rid is None or other["id"].lower() != rid.lower()):
                return "AlreadyExists", f"An account named '{name}' is already in use in location '{location}'."
        return None

    # ----------------------------------------------------------------- routes
    def handle_sub(self, ctx: "Ctx", tail: list[str]) -> Response:
        low = [t.lower() for t in tail]
        if len(low) == 3 and low[0] == "locations" and low[2] == "checknameavailability" and ctx.method == "POST":
            self.arm.authorize(ctx, "Microsoft.Batch/locations/checkNameAvailability/action", f"/subscriptions/{ctx.sub}")
            from .service import normalize_location

            body = ctx.body()
            problem = self.name_problem(str(body.get("name", "")), normalize_location(tail[1]))
            if problem is None:
                return json_response(200, {"nameAvailable": True})
            return json_response(200, {"nameAvailable": False, "reason": problem[0], "message": problem[1]})
        if low == ["batchaccounts"] and ctx.method == "GET":
            scope = f"/subscriptions/{ctx.sub}"
            self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/read", scope)
            return json_response(200, {"value": [self._view(r) for r in self.arm.resources.find(type_=ACCOUNT_TYPE, within=scope)]})
        if len(low) == 3 and low[0] == "locations" and low[2] == "quotas":
            return json_response(200, {"accountQuota": 1})
        raise ArmError(404, "InvalidResourceType", f"The resource type '{'/'.join(tail)}' could not be found in the namespace '{NS}'.")

    def handle_rg(self, ctx: "Ctx", rg: str, tail: list[str]) -> Response:
        low = [t.lower() for t in tail]
        group = self.arm.require_group(ctx, rg)
        if low[0] != "batchaccounts":
            raise ArmError(404, "InvalidResourceType", f"The resource type '{tail[0]}' could not be found in the namespace '{NS}'.")
        if len(tail) == 1:
            self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/read", group["id"])
            return json_response(200, {"value": [self._view(r) for r in self.arm.resources.find(type_=ACCOUNT_TYPE, within=group["id"])]})
        name = tail[1]
        rid = f"{group['id']}/providers/{NS}/batchAccounts/{name}"
        if len(tail) == 2:
            return self._account(ctx, rg, rid, name)
        account = self.arm.resources.get(rid)
        if len(tail) == 3 and low[2] == "listkeys" and ctx.method == "POST":
            self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/listKeys/action", rid)
            if account is None:
                raise not_found(ACCOUNT_TYPE, name, rg)
            return json_response(200, {"accountName": account["name"], "primary": self.arm.emulator.account_key,
                                       "secondary": self.secondary_key})
        if low[2] == "applications":
            if account is None:
                raise parent_not_found(name)
            return self.applications.handle(ctx, account, tail[2:])
        if low[2] == "pools":
            if account is None:
                raise parent_not_found(name)
            if len(tail) == 3 and ctx.method == "GET":
                self.arm.authorize(ctx, f"{POOL_TYPE}/read", rid)
                rows = self.arm.resources.find(type_=POOL_TYPE, within=rid)
                return json_response(200, {"value": [v for v in (self._pool_view(r) for r in rows) if v]})
            if len(tail) == 4:
                return self._pool(ctx, account, tail[3])
            if len(tail) == 5 and ctx.method == "POST" and low[4] in ("stopresize", "disableautoscale"):
                return self._pool_action(ctx, account, tail[3], low[4])
        raise ArmError(404, "InvalidResourceType", f"The resource type '{'/'.join(tail)}' could not be found in the namespace '{NS}'.")

    # ----------------------------------------------------------------- accounts
    def _view(self, account: dict[str, Any]) -> dict[str, Any]:
        view = public(account)
        view["properties"] = dict(view["properties"], accountEndpoint=self.endpoint_host)
        return view

    def _account(self, ctx: "Ctx", rg: str, rid: str, name: str) -> Response:
        existing = self.arm.resources.get(rid)
        if ctx.method == "GET":
            self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/read", rid)
            if existing is None:
                raise not_found(ACCOUNT_TYPE, name, rg)
            return json_response(200, self._view(existing))
        if ctx.method == "DELETE":
            self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/delete", rid)
            if existing is None:
                return Response.empty(204)
            existing["properties"]["provisioningState"] = "Deleting"
            self.arm.resources.put(existing)

            def work() -> None:
                for child in sorted(self.arm.resources.find(within=rid), key=lambda r: -len(r["id"])):
                    self.arm.delete_resource(child)

            return self.arm.lro(ctx, NS, existing["location"], work, status=202, async_header=False)
        if ctx.method not in ("PUT", "PATCH"):
            raise ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed.")
        self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/write", rid)
        body = ctx.body()
        props = body.get("properties") or {}
        if ctx.method == "PATCH" or existing is not None:
            if existing is None:
                raise not_found(ACCOUNT_TYPE, name, rg)
            if "tags" in body:
                existing["tags"] = body["tags"] or {}
            if "autoStorage" in props:
                existing["properties"]["autoStorage"] = self._auto_storage(ctx, rid, props["autoStorage"])
            for key in ("allowedAuthenticationModes", "publicNetworkAccess"):
                if key in props:
                    existing["properties"][key] = props[key]
            return json_response(200, self._view(self.arm.resources.put(existing)))
        from .service import normalize_location

        if not ACCOUNT_NAME.match(name):
            raise ArmError(400, "AccountNameInvalid", _invalid_name_message(name), target="accountName")
        location = normalize_location(body.get("location"))
        problem = self.name_problem(name, location, rid)
        if problem is not None:
            raise ArmError(409, "AccountNameAlreadyTaken", problem[1], target="accountName")
        mode = props.get("poolAllocationMode", "BatchService")
        if mode not in ("BatchService", "UserSubscription"):
            raise bad_request(f"The value '{mode}' is not valid for poolAllocationMode: BatchService or UserSubscription.",
                              "properties.poolAllocationMode")
        auto_storage = self._auto_storage(ctx, rid, props["autoStorage"]) if props.get("autoStorage") else None
        quota = self.arm.emulator.config.core_quotas
        properties: dict[str, Any] = {
            "provisioningState": "Creating", "poolAllocationMode": mode,
            "publicNetworkAccess": props.get("publicNetworkAccess", "Enabled"),
            "allowedAuthenticationModes": props.get("allowedAuthenticationModes") or ["SharedKey", "AAD", "TaskAuthenticationToken"],
            "poolQuota": 100, "activeJobAndJobScheduleQuota": 300, "networkProfile": props.get("networkProfile") or {},
        }
        if mode == "BatchService":
            # The data plane enforces the total and every series' quota (quotas.py), so the flag is true.
            properties.update({"dedicatedCoreQuota": quota.dedicated, "lowPriorityCoreQuota": quota.low_priority,
                               "dedicatedCoreQuotaPerVMFamily": [{"name": family, "coreQuota": quota.family(family)}
                                                                 for family in self.arm.state.vm_families()],
                               "dedicatedCoreQuotaPerVMFamilyEnforced": True})
        if props.get("keyVaultReference"):
            properties["keyVaultReference"] = props["keyVaultReference"]
        if auto_storage:
            properties["autoStorage"] = auto_storage
        account = {"id": rid, "name": name, "type": ACCOUNT_TYPE, "location": location, "tags": body.get("tags") or {},
                   "identity": body.get("identity") or {"type": "None"}, "properties": properties}
        self.arm.resources.put(account)

        def work() -> dict[str, Any]:
            account["properties"]["provisioningState"] = "Succeeded"
            self.arm.resources.put(account)
            self._register_keys(name)
            return self._view(account)

        def failed(error: dict[str, Any]) -> None:
            self.arm.resources.delete(rid)

        return self.arm.lro(ctx, NS, location, work, status=202, async_header=False, on_failure=failed)

    def _auto_storage(self, ctx: "Ctx", rid: str, auto: dict[str, Any]) -> dict[str, Any]:
        storage_id = str(auto.get("storageAccountId") or "")
        if not storage_id:
            raise bad_request("The storageAccountId property is required for autoStorage.", "properties.autoStorage.storageAccountId")
        if not self.arm.allowed(ctx.oid, "Microsoft.Storage/storageAccounts/listKeys/action", storage_id):
            raise linked_authorization_failed(ctx.oid, f"{ACCOUNT_TYPE}/write", rid,
                                              "Microsoft.Storage/storageAccounts/listKeys/action", storage_id)
        storage = self.arm.resources.get(storage_id)
        if storage is None or storage.get("type", "").lower() != "microsoft.storage/storageaccounts":
            raise ArmError(400, "InvalidParameter" if storage is not None else "ResourceNotFound",
                           f"The storage account '{storage_id}' specified for autoStorage was not found.",
                           target="properties.autoStorage.storageAccountId")
        return {"storageAccountId": storage["id"], "lastKeySync": self.arm.iso_now(),
                "authenticationMode": auto.get("authenticationMode", "StorageKeys"),
                **({"nodeIdentityReference": auto["nodeIdentityReference"]} if auto.get("nodeIdentityReference") else {})}

    # ----------------------------------------------------------------- pools
    def _state_pool(self, name: str):
        return self.arm.state.pools.get(name)

    def _pool_view(self, record: dict[str, Any]) -> dict[str, Any] | None:
        pool = self._state_pool(record["name"])
        if pool is None:
            return None
        view = public(record)
        view["etag"] = f'W/"{pool.rest.get("eTag")}"'  # ARM quotes the data plane's bare tag
        identities = imds.identities_of(pool.rest)
        view["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {
            i.resource_id: {"principalId": i.principal_id, "clientId": i.client_id} for i in identities}} \
            if identities else {"type": "None"}
        view["properties"] = to_arm_pool(pool.rest)
        return view

    def _pool(self, ctx: "Ctx", account: dict[str, Any], name: str) -> Response:
        rid = f"{account['id']}/pools/{name}"
        record = self.arm.resources.get(rid)
        pool = self._state_pool(name) if record is not None else None
        if ctx.method == "GET":
            self.arm.authorize(ctx, f"{POOL_TYPE}/read", rid)
            view = self._pool_view(record) if record is not None else None
            if view is None:
                raise ArmError(404, "PoolNotFound", "The specified pool does not exist.")
            return json_response(200, view)
        if ctx.method == "DELETE":
            self.arm.authorize(ctx, f"{POOL_TYPE}/delete", rid)
            if record is None or pool is None:
                if record is not None:
                    self.arm.resources.delete(rid)
                return Response.empty(204)
            self._call(lambda: self.arm.state.delete_pool(name))

            def work() -> None:
                import time

                deadline = time.monotonic() + 600
                while self._state_pool(name) is not None and time.monotonic() < deadline:
                    time.sleep(0.1)
                self.arm.resources.delete(rid)

            return self.arm.lro(ctx, NS, account["location"], work, status=202, async_header=False)
        if ctx.method not in ("PUT", "PATCH"):
            raise ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed.")
        self.arm.authorize(ctx, f"{POOL_TYPE}/write", rid)
        if not POOL_NAME.match(name):
            raise ArmError(400, "InvalidResourceName", f"Pool name '{name}' is invalid: up to 64 letters, digits, "
                           "hyphens and underscores.", target="poolName")
        props = ctx.body().get("properties") or {}
        identities = _identities(ctx.body().get("identity"))
        if record is not None and pool is not None:
            if ctx.request.headers.get("if-none-match") == "*":
                raise ArmError(409, "PoolAlreadyExists", "The specified pool already exists.")
            self._update_pool(name, props)
        else:
            if ctx.method == "PATCH":
                raise ArmError(404, "PoolNotFound", "The specified pool does not exist.")
            self._call(lambda: self.arm.state.add_pool(to_batch_pool(name, props), identities=identities))
            record = {"id": rid, "name": name, "type": POOL_TYPE}
            self.arm.resources.put(record)
        return json_response(200, self._pool_view(record))

    def _update_pool(self, name: str, props: dict[str, Any]) -> None:
        state = self.arm.state
        scale = props.get("scaleSettings") or {}
        if scale.get("autoScale"):
            auto = scale["autoScale"]
            body = {"autoScaleFormula": auto.get("formula")}
            if auto.get("evaluationInterval"):
                body["autoScaleEvaluationInterval"] = auto["evaluationInterval"]
            self._call(lambda: state.set_autoscale(name, body))
        elif scale.get("fixedScale"):
            fixed = scale["fixedScale"]
            if state.pools[name].rest.get("enableAutoScale"):
                self._call(lambda: state.disable_autoscale(name))
            body = {k: fixed[k] for k in ("targetDedicatedNodes", "targetLowPriorityNodes", "resizeTimeout") if k in fixed}
            if fixed.get("nodeDeallocationOption"):
                body["nodeDeallocationOption"] = _lower_first(fixed["nodeDeallocationOption"])
            self._call(lambda: state.resize_pool(name, body))
        patch = {}
        if "startTask" in props:
            patch["startTask"] = _lower_enums(props["startTask"])
        if "metadata" in props:
            patch["metadata"] = props["metadata"]
        if patch:
            self._call(lambda: state.patch_pool(name, patch))

    def _pool_action(self, ctx: "Ctx", account: dict[str, Any], name: str, action: str) -> Response:
        rid = f"{account['id']}/pools/{name}"
        self.arm.authorize(ctx, f"{POOL_TYPE}/{'stopResize' if action == 'stopresize' else 'disableAutoscale'}/action", rid)
        record = self.arm.resources.get(rid)
        if record is None or self._state_pool(name) is None:
            raise ArmError(404, "PoolNotFound", "The specified pool does not exist.")
        if action == "stopresize":
            self._call(lambda: self.arm.state.stop_resize(name))
        else:
            self._call(lambda: self.arm.state.disable_autoscale(name))
        return json_response(200, self._pool_view(record))

    def _drop_pool(self, record: dict[str, Any]) -> None:
        if self._state_pool(record["name"]) is not None:
            try:
                self.arm.state.delete_pool(record["name"])
            except BatchError:
                pass

    @staticmethod
    def _call(action):
        try:
            return action()
        except BatchError as exc:
            detail = "; ".join(f"{k}: {v}" for k, v in exc.values)
            raise ArmError(exc.status, exc.code, exc.message + (f" ({detail})" if detail else "")) from None


def _identities(identity: dict[str, Any] | None) -> list[str]:
    """The user-assigned identities of an ARM pool body (BatchPoolIdentity: type UserAssigned or None,
    userAssignedIdentities keyed by the identities' ARM ids); ArmError for a malformed one (the codes
    are assumed: ARM's InvalidParameter)."""
    if not identity:
        return []
    kind = str(identity.get("type") or "")
    ids = list((identity.get("userAssignedIdentities") or {}).keys())
    if kind.lower() == "none":
        if ids:
            raise ArmError(400, "InvalidParameter", "userAssignedIdentities must be empty when the identity type is None.",
                           target="identity")
        return []
    if kind.lower() != "userassigned" or not ids:
        raise ArmError(400, "InvalidParameter", "A pool's identity is of type UserAssigned, with its userAssignedIdentities,"
                       " or None.", target="identity")
    for rid in ids:
        if not is_user_assigned_identity(rid):
            raise ArmError(400, "InvalidParameter", f"'{rid}' is not the resource id of a user-assigned identity"
                           " (/subscriptions/.../providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME).",
                           target="identity.userAssignedIdentities")
    return ids


# --------------------------------------------------------------------------- ARM pool <-> data-plane pool
def _lower_first(value: Any) -> Any:
    return value[:1].lower() + value[1:] if isinstance(value, str) and value else value


_ENUM_KEYS = {"scope", "elevationLevel", "nodeFillType", "nodeDeallocationOption", "storageAccountType", "caching"}


def _lower_enums(value: Any) -> Any:
    """ARM spells enums 'Pool', 'Admin', 'Spread'; the data plane 'pool', 'admin', 'spread'."""
    if isinstance(value, dict):
        return {k: (_lower_first(v) if k in _ENUM_KEYS else _lower_enums(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_enums(v) for v in value]
    return value


def _upper_enums(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (v[:1].upper() + v[1:] if k in _ENUM_KEYS and isinstance(v, str) and v else _upper_enums(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_upper_enums(v) for v in value]
    return value


def to_batch_pool(name: str, props: dict[str, Any]) -> dict[str, Any]:
    """ARM pool properties -> the data plane's pool add body."""
    body: dict[str, Any] = {"id": name}
    if props.get("vmSize"):
        body["vmSize"] = props["vmSize"]
    if props.get("displayName"):
        body["displayName"] = props["displayName"]
    deployment = props.get("deploymentConfiguration") or {}
    vmc = deployment.get("virtualMachineConfiguration")
    if vmc:
        image = dict(vmc.get("imageReference") or {})
        if image.get("id"):
            image = {"virtualMachineImageId": image.pop("id")}
        config = {k: v for k, v in vmc.items() if k not in ("imageReference", "nodeAgentSkuId")}
        config["imageReference"] = image
        config["nodeAgentSKUId"] = vmc.get("nodeAgentSkuId")
        if config.get("containerConfiguration"):  # ARM's DockerCompatible is the data plane's dockerCompatible
            container = dict(config["containerConfiguration"])
            container["type"] = _lower_first(container.get("type"))
            config["containerConfiguration"] = container
        body["virtualMachineConfiguration"] = _lower_enums(config)
    scale = props.get("scaleSettings") or {}
    if scale.get("autoScale"):
        body["enableAutoScale"] = True
        body["autoScaleFormula"] = scale["autoScale"].get("formula")
        if scale["autoScale"].get("evaluationInterval"):
            body["autoScaleEvaluationInterval"] = scale["autoScale"]["evaluationInterval"]
    else:
        fixed = scale.get("fixedScale") or {}
        body["targetDedicatedNodes"] = int(fixed.get("targetDedicatedNodes") or 0)
        body["targetLowPriorityNodes"] = int(fixed.get("targetLowPriorityNodes") or 0)
        if fixed.get("resizeTimeout"):
            body["resizeTimeout"] = fixed["resizeTimeout"]
    if props.get("interNodeCommunication") is not None:
        body["enableInterNodeCommunication"] = str(props["interNodeCommunication"]).lower() == "enabled"
    for key in ("taskSlotsPerNode", "metadata", "networkConfiguration", "userAccounts", "mountConfiguration",
                "applicationPackageReferences", "targetNodeCommunicationMode"):
        if props.get(key) is not None:
            body[key] = props[key]
    if props.get("taskSchedulingPolicy"):
        body["taskSchedulingPolicy"] = _lower_enums(props["taskSchedulingPolicy"])
    if props.get("startTask"):
        body["startTask"] = _lower_enums(props["startTask"])
    return body


def to_arm_pool(rest: dict[str, Any]) -> dict[str, Any]:
    """The data plane's pool -> ARM pool properties."""
    state = {"active": "Succeeded", "deleting": "Deleting"}.get(rest.get("state", ""), "Succeeded")
    props: dict[str, Any] = {
        "displayName": rest.get("displayName") or rest["id"], "vmSize": rest.get("vmSize"),
        "provisioningState": state, "provisioningStateTransitionTime": rest.get("stateTransitionTime"),
        "allocationState": _upper(rest.get("allocationState")),
        "allocationStateTransitionTime": rest.get("allocationStateTransitionTime"),
        "creationTime": rest.get("creationTime"), "lastModified": rest.get("lastModified"),
        "currentDedicatedNodes": rest.get("currentDedicatedNodes", 0),
        "currentLowPriorityNodes": rest.get("currentLowPriorityNodes", 0),
        "interNodeCommunication": "Enabled" if rest.get("enableInterNodeCommunication") else "Disabled",
        "taskSlotsPerNode": rest.get("taskSlotsPerNode", 1),
        "taskSchedulingPolicy": _upper_enums(rest.get("taskSchedulingPolicy") or {"nodeFillType": "spread"}),
    }
    vmc = rest.get("virtualMachineConfiguration")
    if vmc:
        image = dict(vmc.get("imageReference") or {})
        if image.get("virtualMachineImageId"):
            image = {"id": image["virtualMachineImageId"]}
        config = {k: v for k, v in vmc.items() if k not in ("imageReference", "nodeAgentSKUId")}
        if config.get("containerConfiguration"):
            config["containerConfiguration"] = {**config["containerConfiguration"],
                                                "type": _upper(config["containerConfiguration"].get("type"))}
        props["deploymentConfiguration"] = {"virtualMachineConfiguration": {
            "imageReference": image, "nodeAgentSkuId": vmc.get("nodeAgentSKUId"), **_upper_enums(config)}}
    if rest.get("enableAutoScale"):
        props["scaleSettings"] = {"autoScale": {"formula": rest.get("autoScaleFormula"),
                                                "evaluationInterval": rest.get("autoScaleEvaluationInterval")}}
        if rest.get("autoScaleRun"):
            props["autoScaleRun"] = rest["autoScaleRun"]
    else:
        props["scaleSettings"] = {"fixedScale": {"targetDedicatedNodes": rest.get("targetDedicatedNodes", 0),
                                                 "targetLowPriorityNodes": rest.get("targetLowPriorityNodes", 0),
                                                 "resizeTimeout": rest.get("resizeTimeout", "PT15M")}}
    if rest.get("resizeErrors"):
        props["resizeOperationStatus"] = {"errors": rest["resizeErrors"]}
    for key in ("metadata", "networkConfiguration", "userAccounts", "mountConfiguration", "applicationPackageReferences"):
        if rest.get(key) is not None:
            props[key] = rest[key]
    if rest.get("startTask"):
        props["startTask"] = _upper_enums(rest["startTask"])
    return props


def _upper(value: Any) -> Any:
    return value[:1].upper() + value[1:] if isinstance(value, str) and value else value
