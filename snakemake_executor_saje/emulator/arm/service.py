"""`ArmService`: the Azure Resource Manager subset the setup workflows call, in the emulator's process.

Routes (paths case-insensitive, as ARM's are; `api-version` required on every request):
  /subscriptions[/{sub}]                                   list / get
  /subscriptions/{sub}/providers[/{ns}[/register|/unregister]]
  /subscriptions/{sub}/resourcegroups[/{rg}]               PUT GET HEAD PATCH DELETE(LRO) list
  /subscriptions/{sub}/resourcegroups/{rg}/resources       list
  .../providers/Microsoft.Storage|Batch|Compute|Network/...  see storage.py, batch.py, compute.py, network.py
  {scope}/providers/Microsoft.Authorization/roleAssignments|roleDefinitions[/{id}]
  /subscriptions/{sub}/providers/{ns}/locations/{loc}/operationStatuses|operationResults/{id}
"""
from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..datadir import make_private_dir
from ..schema import arm as arm_schema
from ..wire import Request, Response
from . import authorization, batch, compute, network, storage
from .core import (
    OWNER, ArmError, Operation, Operations, Registry, authorization_failed, bad_request, is_within,
    json_response, public, role_allows, role_by_name,
)

if TYPE_CHECKING:
    from ..service import Emulator

API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-(preview|beta|alpha|privatepreview))?$", re.I)
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
RG_NAME = re.compile(r"^[-\w._()]{1,90}$")
# Namespaces a new subscription has registered; the rest must be registered first (Microsoft.Batch).
REGISTERED_BY_DEFAULT = ("Microsoft.Resources", "Microsoft.Authorization", "Microsoft.Storage",
                         "Microsoft.Compute", "Microsoft.Network")
PROVIDER_TYPES = {
    "Microsoft.Batch": ["batchAccounts", "batchAccounts/pools", "batchAccounts/applications",
                        "batchAccounts/applications/versions", "locations", "locations/checkNameAvailability",
                        "operations"],
    "Microsoft.Storage": ["storageAccounts", "storageAccounts/blobServices", "storageAccounts/blobServices/containers",
                          "checkNameAvailability", "locations"],
    "Microsoft.Compute": ["virtualMachines", "disks", "galleries", "galleries/images", "galleries/images/versions",
                          "locations"],
    "Microsoft.Network": ["virtualNetworks", "virtualNetworks/subnets"],
    "Microsoft.Resources": ["resourceGroups", "subscriptions", "tenants"],
    "Microsoft.Authorization": ["roleAssignments", "roleDefinitions"],
}
DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000005a1e"


@dataclass
class Ctx:
    """One ARM request, parsed: who, which subscription, which api-version."""

    request: Request
    oid: str
    api_version: str
    sub: str = ""
    check: Callable[["Ctx", Any], None] | None = None  # the body against the SDK's model (schema/arm.py)

    @property
    def method(self) -> str:
        return self.request.method

    def body(self) -> dict[str, Any]:
        try:
            payload = self.request.json()
        except ValueError as exc:
            raise bad_request(f"The request content was invalid and could not be deserialized: '{exc}'.") from None
        if payload is None:
            return {}
        if self.check is not None:
            self.check(self, payload)
        if not isinstance(payload, dict):
            raise bad_request("The request content must be a JSON object.")
        return payload


class ArmService:
    """ARM for one emulator: state in the emulator's SQLite (kinds 'arm:*'), files under data_dir/arm."""

    def __init__(self, emulator: "Emulator"):
        self.emulator = emulator
        self.state = emulator.state
        self.root = Path(emulator.config.data_dir) / "arm"
        make_private_dir(self.root)
        self.retry_after = 1  # seconds, sent as Retry-After on every LRO response
        self.lro_seconds = 0.2  # shortest time an LRO reports InProgress
        self.register_seconds = 1.0  # time a provider spends 'Registering'
        self.run_command_timeout = 5400.0  # RunShellScript's 90 minutes
        self.default_subscription = DEFAULT_SUBSCRIPTION
        # Principals that are Owner of every subscription (the emulator's own managed identity).
        self.owners: set[str] = {emulator.issuer.principal_id}
        store = self.state.store
        self.store = store
        self.resources = Registry(store)
        self.operations = Operations(store, min_seconds=lambda: self.lro_seconds, now=self.iso_now)
        self.providers: dict[str, dict[str, Any]] = {k: v for k, v in store.load("arm:provider")}
        self.cleanup: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.storage = storage.StorageProvider(self)
        self.batch = batch.BatchProvider(self)
        self.compute = compute.ComputeProvider(self)
        self.authorization = authorization.AuthorizationProvider(self)
        self.network = network.NetworkProvider(self, subnet_in_use=self._pool_on_subnet)
        self._namespaces = {"microsoft.storage": self.storage, "microsoft.batch": self.batch,
                            "microsoft.compute": self.compute, "microsoft.network": self.network}
        # Pools of the Batch data plane may use gallery image versions made here.
        self.state.gallery_image_exists = self.compute.image_usable_by_batch
        self.state.gallery_image_root = self.compute.image_root
        # Pools and tasks may reference application packages uploaded here.
        self.state.application_package = self.batch.applications.resolve
        # ... and must name a subnet that exists here.
        self.state.subnet_exists = self.network.subnet_exists

    # ----------------------------------------------------------------- public helpers
    def _pool_on_subnet(self, subnet_id: str) -> str | None:
        with self.state.lock:
            for pool in self.state.pools.values():
                if ((pool.rest.get("networkConfiguration") or {}).get("subnetId") or "").lower() == subnet_id.lower():
                    return f"Batch pool {pool.id}"
        return None

    def iso_now(self) -> str:
        """ARM's timestamps come from the same service clock as the Batch data plane's."""
        return self.state.clock.iso_now()

    @property
    def base_url(self) -> str:
        return self.emulator.endpoint.rstrip("/")

    def image_root(self, image_version_id: str) -> Path | None:
        """The root directory of a gallery image version (or an image definition's latest version)."""
        return self.compute.image_root(image_version_id)

    def grant(self, principal_id: str, role: str, scope: str) -> dict[str, Any]:
        """Out-of-band role assignment (test set-up, `saje emulator`): role name or id at scope."""
        role_id = role_by_name(role)
        if role_id is None:
            raise ValueError(f"unknown built-in role {role!r}")
        return self.authorization.assign(scope, str(uuid.uuid4()), role_id, principal_id, "ServicePrincipal")

    # ----------------------------------------------------------------- entry point
    def handle(self, request: Request) -> Response:
        try:
            return self._handle(request)
        except ArmError as exc:
            return exc.response()

    def _handle(self, request: Request) -> Response:
        api_version = request.query.get("api-version", "")
        if not api_version:
            raise ArmError(400, "MissingApiVersionParameter",
                           "The api-version query parameter (?api-version=) is required for all requests.")
        if not API_VERSION.match(api_version):
            raise ArmError(400, "InvalidApiVersionParameter",
                           f"The api-version '{api_version}' is invalid. The supported versions are "
                           "dates in the form 'yyyy-MM-dd' with an optional '-preview' suffix.")
        ctx = Ctx(request, self._caller(request), api_version, check=self._check_body)
        segs = request.segments
        low = [s.lower() for s in segs]
        # Role assignments and definitions may sit at any scope: route them first.
        for i in range(len(low) - 1):
            if low[i] == "providers" and low[i + 1] == "microsoft.authorization":
                scope = "/" + "/".join(segs[:i]) if i else "/"
                if low and low[0] == "subscriptions" and len(segs) > 1:
                    ctx.sub = self._subscription(segs[1])
                return self.authorization.handle(ctx, scope, segs[i + 2:])
        if low == ["subscriptions"]:
            return self._list_subscriptions(ctx)
        if low[:1] == ["tenants"] and len(low) == 1:
            tenant = self.emulator.issuer.tenant_id
            return json_response(200, {"value": [{"id": f"/tenants/{tenant}", "tenantId": tenant}]})
        if low[:1] != ["subscriptions"]:
            raise ArmError(404, "InvalidResourceType", f"The resource type could not be found for path '{request.path}'.")
        ctx.sub = self._subscription(segs[1])
        rest, lrest = segs[2:], low[2:]
        if not rest:
            if ctx.method != "GET":
                raise self._method_not_allowed(ctx)
            return json_response(200, self._subscription_body(ctx.sub))
        if lrest[0] == "operationresults" and len(rest) == 2:
            return self.operation_result(ctx, rest[1])
        if lrest[0] == "providers":
            return self._subscription_providers(ctx, rest[1:], lrest[1:])
        if lrest[0] == "resourcegroups":
            if len(rest) == 1:
                self.authorize(ctx, "Microsoft.Resources/subscriptions/resourceGroups/read", f"/subscriptions/{ctx.sub}")
                groups = self.resources.find(type_="Microsoft.Resources/resourceGroups", within=f"/subscriptions/{ctx.sub}")
                return json_response(200, {"value": [public(g) for g in groups]})
            rg = rest[1]
            if len(rest) == 2:
                return self._resource_group(ctx, rg)
            if lrest[2] == "resources" and len(rest) == 3:
                group = self.require_group(ctx, rg)
                self.authorize(ctx, "Microsoft.Resources/subscriptions/resourceGroups/resources/read", group["id"])
                found = self.resources.find(within=group["id"], where=lambda r: r["id"].lower() != group["id"].lower())
                return json_response(200, {"value": [public(r) for r in found]})
            if lrest[2] == "providers" and len(rest) >= 5:
                return self._provider(ctx, rest[3]).handle_rg(ctx, rg, rest[4:])
        raise ArmError(404, "InvalidResourceType", f"The resource type could not be found for path '{request.path}'.")

    def _check_body(self, ctx: Ctx, payload: Any) -> None:
        """Refuse a body its operation's azure-mgmt model would not read, as Azure does, and keep the refusal."""
        op = arm_schema.operation_for(ctx.method, ctx.request.path, ctx.api_version)
        if op is None:
            return  # a resource type or api-version no installed SDK describes (virtual networks)
        try:
            arm_schema.check(op, payload)
        except ArmError as exc:
            self.state.refused(op.operation.name, ctx.request.raw_path, exc.code,
                               {"target": exc.target, "message": exc.message, "details": exc.details})
            raise

    # ----------------------------------------------------------------- callers and permissions
    def _caller(self, request: Request) -> str:
        """The token's object id (the front end has already verified the token)."""
        _, _, token = (request.headers.get("authorization") or "").partition(" ")
        try:
            claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        except (IndexError, ValueError):
            return ""
        return str(claims.get("oid") or claims.get("sub") or "")

    def allowed(self, oid: str, action: str, scope: str) -> bool:
        if oid in self.owners:
            return True
        for assignment in self.authorization.assignments_for(oid):
            props = assignment["properties"]
            if is_within(props["scope"], scope) and role_allows(props["roleDefinitionId"].rsplit("/", 1)[-1].lower(), action):
                return True
        return False

    def authorize(self, ctx: Ctx, action: str, scope: str) -> None:
        if not self.allowed(ctx.oid, action, scope):
            raise authorization_failed(ctx.oid, action, scope)

    # ----------------------------------------------------------------- subscriptions and providers
    def _subscription(self, sub: str) -> str:
        if not GUID.match(sub):
            raise ArmError(400, "InvalidSubscriptionId",
                           f"The provided subscription identifier '{sub}' is malformed or invalid.")
        return sub.lower()

    def _subscription_body(self, sub: str) -> dict[str, Any]:
        return {"id": f"/subscriptions/{sub}", "subscriptionId": sub, "tenantId": self.emulator.issuer.tenant_id,
                "displayName": "SAJE emulator", "state": "Enabled",
                "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "PayAsYouGo_2014-09-01",
                                         "spendingLimit": "Off"}, "authorizationSource": "RoleBased"}

    def _list_subscriptions(self, ctx: Ctx) -> Response:
        subs = {self.default_subscription}
        subs.update(r["id"].split("/")[2].lower() for r in self.resources.find(type_="Microsoft.Resources/resourceGroups"))
        return json_response(200, {"value": [self._subscription_body(s) for s in sorted(subs)]})

    def provider_state(self, sub: str, namespace: str) -> str:
        row = self.providers.get(f"{sub}/{namespace.lower()}")
        if row is None:
            canonical = {n.lower() for n in REGISTERED_BY_DEFAULT}
            return "Registered" if namespace.lower() in canonical else "NotRegistered"
        if row["state"] == "Registering" and _now() - row["since"] >= self.register_seconds:
            row["state"] = "Registered"
            self.store.put("arm:provider", f"{sub}/{namespace.lower()}", row)
        return row["state"]

    def require_registered(self, ctx: Ctx, namespace: str) -> None:
        if self.provider_state(ctx.sub, namespace) != "Registered":
            message = (f"The subscription is not registered to use namespace '{namespace}'. "
                       "See https://aka.ms/rps-not-found for how to register subscriptions.")
            raise ArmError(409, "MissingSubscriptionRegistration", message,
                           details=[{"code": "MissingSubscriptionRegistration", "target": namespace, "message": message}])

    def _canonical_namespace(self, namespace: str) -> str:
        for known in PROVIDER_TYPES:
            if known.lower() == namespace.lower():
                return known
        return namespace

    def _provider_body(self, sub: str, namespace: str) -> dict[str, Any]:
        namespace = self._canonical_namespace(namespace)
        types = PROVIDER_TYPES.get(namespace, [])
        return {"id": f"/subscriptions/{sub}/providers/{namespace}", "namespace": namespace,
                "registrationState": self.provider_state(sub, namespace), "registrationPolicy": "RegistrationRequired",
                "resourceTypes": [{"resourceType": t, "locations": [], "apiVersions": []} for t in types]}

    def _subscription_providers(self, ctx: Ctx, rest: list[str], lrest: list[str]) -> Response:
        scope = f"/subscriptions/{ctx.sub}"
        if not rest:
            return json_response(200, {"value": [self._provider_body(ctx.sub, ns) for ns in PROVIDER_TYPES]})
        namespace = self._canonical_namespace(rest[0])
        if len(rest) == 1 and ctx.method == "GET":
            if namespace not in PROVIDER_TYPES:
                raise ArmError(404, "InvalidResourceNamespace", f"The resource namespace '{rest[0]}' is invalid.")
            return json_response(200, self._provider_body(ctx.sub, namespace))
        if len(rest) == 2 and lrest[1] in ("register", "unregister") and ctx.method == "POST":
            if namespace not in PROVIDER_TYPES:
                raise ArmError(404, "InvalidResourceNamespace", f"The resource namespace '{rest[0]}' is invalid.")
            self.authorize(ctx, f"{namespace}/{lrest[1]}/action", scope)
            key = f"{ctx.sub}/{namespace.lower()}"
            if lrest[1] == "register":
                if self.provider_state(ctx.sub, namespace) != "Registered":
                    self.providers[key] = {"state": "Registering", "since": _now()}
                    self.store.put("arm:provider", key, self.providers[key])
            else:
                self.providers[key] = {"state": "Unregistered", "since": _now()}
                self.store.put("arm:provider", key, self.providers[key])
            return json_response(200, self._provider_body(ctx.sub, namespace))
        if len(rest) == 5 and lrest[1] == "locations" and lrest[3] in ("operationstatuses", "operationresults"):
            op = self.operations.get(rest[4])
            if lrest[3] == "operationstatuses":
                if op is None or op.subscription != ctx.sub:
                    raise ArmError(404, "OperationNotFound", f"The operation '{rest[4]}' was not found.")
                headers = {"Retry-After": str(self.retry_after)} if op.status == "InProgress" else {}
                return json_response(200, op.status_body(self.base_url), headers)
            return self.operation_result(ctx, rest[4])
        return self._provider(ctx, namespace).handle_sub(ctx, rest[1:])

    def _provider(self, ctx: Ctx, namespace: str):
        provider = self._namespaces.get(namespace.lower())
        if provider is None:
            raise ArmError(404, "NoRegisteredProviderFound",
                           f"No registered resource provider found for location and API version '{ctx.api_version}' "
                           f"in namespace '{namespace}'. The emulator serves Microsoft.Storage, Microsoft.Batch, "
                           "Microsoft.Compute, Microsoft.Network, Microsoft.Authorization and Microsoft.Resources.")
        self.require_registered(ctx, self._canonical_namespace(namespace))
        return provider

    @staticmethod
    def _method_not_allowed(ctx: Ctx) -> ArmError:
        return ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed for this resource.")

    # ----------------------------------------------------------------- resource groups
    def group_id(self, sub: str, rg: str) -> str:
        return f"/subscriptions/{sub}/resourceGroups/{rg}"

    def require_group(self, ctx: Ctx, rg: str) -> dict[str, Any]:
        group = self.resources.get(self.group_id(ctx.sub, rg))
        if group is None or group["properties"].get("provisioningState") == "Deleting" and ctx.method == "PUT":
            if group is None:
                raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
            raise ArmError(409, "ResourceGroupBeingDeleted",
                           f"The resource group '{rg}' is in deprovisioning state and cannot perform this operation.")
        return group

    def _resource_group(self, ctx: Ctx, rg: str) -> Response:
        rid = self.group_id(ctx.sub, rg)
        existing = self.resources.get(rid)
        method = ctx.method
        if method in ("GET", "HEAD"):
            self.authorize(ctx, "Microsoft.Resources/subscriptions/resourceGroups/read", rid)
            if existing is None:
                if method == "HEAD":
                    return Response.empty(404)
                raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
            return Response.empty(204) if method == "HEAD" else json_response(200, public(existing))
        if method in ("PUT", "PATCH"):
            self.authorize(ctx, "Microsoft.Resources/subscriptions/resourceGroups/write", rid)
            if not RG_NAME.match(rg) or rg.endswith("."):
                raise ArmError(400, "InvalidResourceGroupName",
                               f"The resource group name '{rg}' is invalid: it can include alphanumeric, underscore, "
                               "parentheses, hyphen and period (except at end) characters, up to 90 characters.",
                               target="resourceGroupName")
            body = ctx.body()
            if existing is not None and existing["properties"]["provisioningState"] == "Deleting":
                raise ArmError(409, "ResourceGroupBeingDeleted",
                               f"The resource group '{rg}' is in deprovisioning state and cannot perform this operation.")
            if method == "PATCH":
                if existing is None:
                    raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
                if "tags" in body:
                    existing["tags"] = body["tags"] or {}
                self.resources.put(existing)
                return json_response(200, public(existing))
            location = normalize_location(body.get("location"))
            if existing is not None:
                if location != existing["location"]:
                    raise ArmError(409, "InvalidResourceGroupLocation",
                                   f"Invalid resource group location '{location}'. The Resource group already exists "
                                   f"in location '{existing['location']}'.")
                existing["tags"] = body.get("tags", existing.get("tags") or {})
                self.resources.put(existing)
                return json_response(200, public(existing))
            group = {"id": rid, "name": rg, "type": "Microsoft.Resources/resourceGroups", "location": location,
                     "tags": body.get("tags") or {}, "properties": {"provisioningState": "Succeeded"},
                     "_created": self.iso_now()}
            self.resources.put(group)
            return json_response(201, public(group))
        if method == "DELETE":
            self.authorize(ctx, "Microsoft.Resources/subscriptions/resourceGroups/delete", rid)
            if existing is None:
                raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
            existing["properties"]["provisioningState"] = "Deleting"
            self.resources.put(existing)

            def work() -> None:
                inside = self.resources.find(within=rid)
                for resource in sorted(inside, key=lambda r: -len(r["id"])):
                    self.delete_resource(resource)

            def failed(error: dict[str, Any]) -> None:
                existing["properties"]["provisioningState"] = "Succeeded"
                self.resources.put(existing)

            op = self.operations.start(subscription=ctx.sub, namespace="Microsoft.Resources", location="global",
                                       work=work, on_failure=failed)
            location_url = f"{self.base_url}/subscriptions/{ctx.sub}/operationresults/{op.id}?api-version={ctx.api_version}"
            return Response.empty(202, {"Location": location_url, "Retry-After": str(self.retry_after)})
        raise self._method_not_allowed(ctx)

    def delete_resource(self, resource: dict[str, Any]) -> None:
        """Remove one resource and whatever the emulator keeps for it (files, data-plane pools)."""
        hook = self.cleanup.get(resource.get("type", "").lower())
        if hook is not None:
            hook(resource)
        self.resources.delete(resource["id"])

    # ----------------------------------------------------------------- long-running operations
    def lro(self, ctx: Ctx, namespace: str, location: str, work: Callable[[], Any], *, status: int,
            body: dict[str, Any] | None = None, async_header: bool = True, location_header: bool = True,
            on_failure: Callable[[dict[str, Any]], None] | None = None) -> Response:
        """Start `work` as an LRO and answer like ARM: status code, body, Azure-AsyncOperation/Location."""
        op = self.operations.start(subscription=ctx.sub, namespace=namespace, location=location,
                                   work=work, on_failure=on_failure)
        headers = {"Retry-After": str(self.retry_after)}
        if async_header:
            headers["Azure-AsyncOperation"] = f"{self.base_url}{op.status_path()}?api-version={ctx.api_version}"
        if location_header:
            headers["Location"] = f"{self.base_url}{op.result_path()}?monitor=true&api-version={ctx.api_version}"
        if body is None:
            return Response.empty(status, headers)
        return json_response(status, body, headers)

    def operation_result(self, ctx: Ctx, op_id: str) -> Response:
        op: Operation | None = self.operations.get(op_id)
        if op is None or op.subscription != ctx.sub:
            raise ArmError(404, "OperationNotFound", f"The operation '{op_id}' was not found.")
        if op.status == "InProgress":
            url = f"{self.base_url}{ctx.request.raw_path}?api-version={ctx.api_version}"
            return Response.empty(202, {"Location": url, "Retry-After": str(self.retry_after)})
        if op.status == "Failed":
            return json_response(op.failure_status, {"error": op.error})
        if op.result is None:
            return Response.empty(200 if op.namespace != "Microsoft.Resources" else 200)
        return json_response(200, op.result)


def normalize_location(value: Any) -> str:
    """'West Europe' -> 'westeurope', as ARM stores locations."""
    if not isinstance(value, str) or not value.strip():
        raise ArmError(400, "LocationRequired", "The location property is required for this definition.",
                       target="location")
    location = re.sub(r"\s+", "", value).lower()
    if not re.match(r"^[a-z0-9]+$", location):
        raise ArmError(400, "LocationNotAvailableForResourceType", f"The provided location '{value}' is not available.",
                       target="location")
    return location


def _now() -> float:
    import time

    return time.time()


__all__ = ["ArmService", "OWNER"]
