"""Microsoft.Storage: storage accounts (create LRO, keys, name check) and blob containers.

Every emulated account is backed by the emulator's one Azurite account, 'devstoreaccount1',
when the emulator runs with Azurite: its blob endpoint is Azurite's, listKeys' key1 is
Azurite's key, and containers are created there too (so container names are shared between
emulated accounts). Without Azurite the endpoints are the real-looking but unreachable
https://{name}.blob.core.windows.net/.
"""
from __future__ import annotations

import base64
import os
import re
from typing import TYPE_CHECKING, Any

from ..wire import Response
from .core import ArmError, bad_request, json_response, not_found, parent_not_found, public

if TYPE_CHECKING:
    from .service import ArmService, Ctx

NS = "Microsoft.Storage"
ACCOUNT_TYPE = "Microsoft.Storage/storageAccounts"
CONTAINER_TYPE = "Microsoft.Storage/storageAccounts/blobServices/containers"
ACCOUNT_NAME = re.compile(r"^[a-z0-9]{3,24}$")
CONTAINER_NAME = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
SKUS = {"Standard_LRS", "Standard_GRS", "Standard_RAGRS", "Standard_ZRS", "Premium_LRS", "Premium_ZRS",
        "Standard_GZRS", "Standard_RAGZRS"}
KINDS = {"Storage", "StorageV2", "BlobStorage", "FileStorage", "BlockBlobStorage"}


def _invalid_name_message(name: str) -> str:
    return (f"{name} is not a valid storage account name. Storage account name must be between 3 and 24 "
            "characters in length and use numbers and lower-case letters only.")


class StorageProvider:
    def __init__(self, arm: "ArmService"):
        self.arm = arm
        arm.cleanup[CONTAINER_TYPE.lower()] = self._drop_container

    # ----------------------------------------------------------------- helpers
    def _account_by_name(self, name: str) -> dict[str, Any] | None:
        found = self.arm.resources.find(type_=ACCOUNT_TYPE, where=lambda r: r["name"].lower() == name.lower())
        return found[0] if found else None

    def _azurite(self):
        return getattr(self.arm.emulator, "azurite", None)

    def _endpoints(self, name: str) -> dict[str, str]:
        azurite = self._azurite()
        if azurite is not None:
            return {"blob": azurite.blob_endpoint.rstrip("/") + "/"}
        return {service: f"https://{name}.{service}.core.windows.net/" for service in ("blob", "queue", "table", "file", "dfs")}

    def name_problem(self, name: str, sub: str, rg: str | None = None) -> tuple[str, str] | None:
        """(reason, message) when `name` cannot be used by a new account in (sub, rg), else None."""
        if not ACCOUNT_NAME.match(name or ""):
            return "AccountNameInvalid", _invalid_name_message(name)
        other = self._account_by_name(name)
        if other is not None:
            parts = other["id"].split("/")
            if rg is not None and parts[2].lower() == sub.lower() and parts[4].lower() == rg.lower():
                return None
            return "AlreadyExists", f"The storage account named {name} is already taken."
        return None

    # ----------------------------------------------------------------- routes
    def handle_sub(self, ctx: "Ctx", tail: list[str]) -> Response:
        low = [t.lower() for t in tail]
        if low == ["checknameavailability"] and ctx.method == "POST":
            self.arm.authorize(ctx, "Microsoft.Storage/checkNameAvailability/read", f"/subscriptions/{ctx.sub}")
            body = ctx.body()
            name = str(body.get("name", ""))
            if str(body.get("type", ACCOUNT_TYPE)).lower() != ACCOUNT_TYPE.lower():
                raise bad_request(f"The type '{body.get('type')}' is not supported.", "type")
            problem = self.name_problem(name, ctx.sub)
            if problem is None:
                return json_response(200, {"nameAvailable": True})
            return json_response(200, {"nameAvailable": False, "reason": problem[0], "message": problem[1]})
        if low == ["storageaccounts"] and ctx.method == "GET":
            scope = f"/subscriptions/{ctx.sub}"
            self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/read", scope)
            return json_response(200, {"value": [public(r) for r in self.arm.resources.find(type_=ACCOUNT_TYPE, within=scope)]})
        raise ArmError(404, "InvalidResourceType", f"The resource type '{'/'.join(tail)}' could not be found in the namespace '{NS}'.")

    def handle_rg(self, ctx: "Ctx", rg: str, tail: list[str]) -> Response:
        low = [t.lower() for t in tail]
        group = self.arm.require_group(ctx, rg)
        if low[0] != "storageaccounts":
            raise ArmError(404, "InvalidResourceType", f"The resource type '{tail[0]}' could not be found in the namespace '{NS}'.")
        if len(tail) == 1:
            self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/read", group["id"])
            return json_response(200, {"value": [public(r) for r in self.arm.resources.find(type_=ACCOUNT_TYPE, within=group["id"])]})
        name = tail[1]
        rid = f"{group['id']}/providers/{NS}/storageAccounts/{name}"
        if len(tail) == 2:
            return self._account(ctx, rg, rid, name)
        account = self.arm.resources.get(rid)
        if len(tail) == 3 and low[2] == "listkeys" and ctx.method == "POST":
            self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/listKeys/action", rid)
            if account is None:
                raise not_found(ACCOUNT_TYPE, name, rg)
            return json_response(200, {"keys": account["_keys"]})
        if low[2:4] == ["blobservices", "default"]:
            if account is None:
                raise parent_not_found(name)
            if len(tail) == 4:
                self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/blobServices/read", rid)
                return json_response(200, {"id": f"{rid}/blobServices/default", "name": "default",
                                           "type": "Microsoft.Storage/storageAccounts/blobServices",
                                           "properties": {"deleteRetentionPolicy": {"enabled": False}}})
            if low[4] == "containers":
                if len(tail) == 5 and ctx.method == "GET":
                    self.arm.authorize(ctx, f"{CONTAINER_TYPE}/read", rid)
                    rows = self.arm.resources.find(type_=CONTAINER_TYPE, within=rid)
                    return json_response(200, {"value": [public(r) for r in rows]})
                if len(tail) == 6:
                    return self._container(ctx, rid, tail[5])
        raise ArmError(404, "InvalidResourceType", f"The resource type '{'/'.join(tail)}' could not be found in the namespace '{NS}'.")

    # ----------------------------------------------------------------- accounts
    def _account(self, ctx: "Ctx", rg: str, rid: str, name: str) -> Response:
        existing = self.arm.resources.get(rid)
        if ctx.method == "GET":
            self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/read", rid)
            if existing is None:
                raise not_found(ACCOUNT_TYPE, name, rg)
            return json_response(200, public(existing))
        if ctx.method == "DELETE":
            self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/delete", rid)
            if existing is None:
                return Response.empty(204)
            for child in sorted(self.arm.resources.find(within=rid), key=lambda r: -len(r["id"])):
                self.arm.delete_resource(child)
            return Response.empty(200)
        if ctx.method not in ("PUT", "PATCH"):
            raise ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed.")
        self.arm.authorize(ctx, f"{ACCOUNT_TYPE}/write", rid)
        body = ctx.body()
        if ctx.method == "PATCH":
            if existing is None:
                raise not_found(ACCOUNT_TYPE, name, rg)
            self._apply(existing, body)
            return json_response(200, public(self.arm.resources.put(existing)))
        if not ACCOUNT_NAME.match(name):
            raise ArmError(400, "AccountNameInvalid", _invalid_name_message(name), target="accountName")
        other = self._account_by_name(name)
        if other is not None and other["id"].lower() != rid.lower():
            if other["id"].split("/")[2].lower() == ctx.sub:
                raise ArmError(409, "StorageAccountInAnotherResourceGroup",
                               f"The account {name} is already in another resource group in this subscription.")
            raise ArmError(409, "StorageAccountAlreadyTaken", f"The storage account named {name} is already taken.")
        from .service import normalize_location

        location = normalize_location(body.get("location"))
        sku = (body.get("sku") or {}).get("name")
        if not sku:
            raise bad_request("The sku property is required.", "sku")
        if sku not in SKUS:
            raise ArmError(400, "SkuNotSupported", f"The SKU '{sku}' is not supported.", target="sku.name")
        kind = body.get("kind")
        if kind not in KINDS:
            raise ArmError(400, "InvalidRequestContent" if kind is None else "KindNotSupported",
                           f"The kind '{kind}' is not a valid storage account kind.", target="kind")
        if existing is not None:
            if location != existing["location"]:
                raise ArmError(409, "InvalidResourceLocation",
                               f"The resource '{name}' already exists in location '{existing['location']}' in resource "
                               f"group '{rg}'. A resource with the same name cannot be created in location '{location}'.")
            self._apply(existing, body)
            return json_response(200, public(self.arm.resources.put(existing)))
        azurite = self._azurite()
        key1 = azurite.account_key if azurite is not None else base64.b64encode(os.urandom(64)).decode()
        now = self.arm.iso_now()
        account = {
            "id": rid, "name": name, "type": ACCOUNT_TYPE, "location": location, "tags": body.get("tags") or {},
            "sku": {"name": sku, "tier": "Premium" if sku.startswith("Premium") else "Standard"}, "kind": kind,
            "properties": {
                "provisioningState": "ResolvingDNS", "creationTime": now, "primaryLocation": location,
                "statusOfPrimary": "available", "primaryEndpoints": self._endpoints(name),
                "supportsHttpsTrafficOnly": True, "minimumTlsVersion": "TLS1_2", "allowBlobPublicAccess": False,
                "allowSharedKeyAccess": True, "accessTier": "Hot",
                "encryption": {"keySource": "Microsoft.Storage", "services": {"blob": {"enabled": True, "keyType": "Account"}}},
            },
            "_keys": [{"keyName": "key1", "value": key1, "permissions": "FULL", "creationTime": now},
                      {"keyName": "key2", "value": base64.b64encode(os.urandom(64)).decode(), "permissions": "FULL",
                       "creationTime": now}],
        }
        self._apply(account, body)
        self.arm.resources.put(account)

        def work() -> dict[str, Any]:
            account["properties"]["provisioningState"] = "Succeeded"
            self.arm.resources.put(account)
            return public(account)

        def failed(error: dict[str, Any]) -> None:
            self.arm.resources.delete(rid)

        return self.arm.lro(ctx, NS, location, work, status=202, async_header=False, on_failure=failed)

    @staticmethod
    def _apply(account: dict[str, Any], body: dict[str, Any]) -> None:
        if "tags" in body:
            account["tags"] = body["tags"] or {}
        props = body.get("properties") or {}
        for key in ("allowBlobPublicAccess", "minimumTlsVersion", "allowSharedKeyAccess", "accessTier",
                    "supportsHttpsTrafficOnly", "isHnsEnabled", "networkAcls", "publicNetworkAccess"):
            if key in props:
                account["properties"][key] = props[key]

    # ----------------------------------------------------------------- containers
    def _container(self, ctx: "Ctx", account_id: str, name: str) -> Response:
        rid = f"{account_id}/blobServices/default/containers/{name}"
        existing = self.arm.resources.get(rid)
        if ctx.method == "GET":
            self.arm.authorize(ctx, f"{CONTAINER_TYPE}/read", rid)
            if existing is None:
                raise ArmError(404, "ContainerNotFound", "The specified container does not exist.")
            return json_response(200, public(existing))
        if ctx.method == "DELETE":
            self.arm.authorize(ctx, f"{CONTAINER_TYPE}/delete", rid)
            if existing is None:
                return Response.empty(204)
            self.arm.delete_resource(existing)
            return Response.empty(200)
        if ctx.method not in ("PUT", "PATCH"):
            raise ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed.")
        self.arm.authorize(ctx, f"{CONTAINER_TYPE}/write", rid)
        if not CONTAINER_NAME.match(name):
            raise ArmError(400, "ContainerOperationFailure",
                           f"The specified resource name '{name}' is not valid: container names are 3-63 lower-case "
                           "letters, digits and single hyphens, starting and ending with a letter or digit.",
                           target="containerName")
        props = (ctx.body().get("properties") or {})
        if existing is not None:
            if "metadata" in props:
                existing["properties"]["metadata"] = props["metadata"]
            return json_response(200, public(self.arm.resources.put(existing)))
        container = {"id": rid, "name": name, "type": CONTAINER_TYPE, "etag": f'"0x8D{os.urandom(6).hex().upper()}"',
                     "properties": {"publicAccess": props.get("publicAccess") or "None", "metadata": props.get("metadata") or {},
                                    "leaseStatus": "Unlocked", "leaseState": "Available", "hasImmutabilityPolicy": False,
                                    "hasLegalHold": False, "deleted": False, "remainingRetentionDays": 0,
                                    "lastModifiedTime": self.arm.iso_now(), "defaultEncryptionScope": "$account-encryption-key",
                                    "denyEncryptionScopeOverride": False}}
        self._create_in_azurite(name)
        return json_response(201, public(self.arm.resources.put(container)))

    def _blob_service(self):
        azurite = self._azurite()
        if azurite is None:
            return None
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(azurite.connection_string, **azurite.client_options)

    def _create_in_azurite(self, name: str) -> None:
        client = self._blob_service()
        if client is None:
            return
        from azure.core.exceptions import ResourceExistsError

        try:
            client.create_container(name)
        except ResourceExistsError:
            pass

    def _drop_container(self, container: dict[str, Any]) -> None:
        client = self._blob_service()
        name, rid = container["name"].lower(), container["id"].lower()
        shared = self.arm.resources.find(type_=CONTAINER_TYPE, where=lambda r: r["name"].lower() == name
                                         and r["id"].lower() != rid)
        if client is None or shared:  # another emulated account still uses the Azurite container
            return
        from azure.core.exceptions import ResourceNotFoundError

        try:
            client.delete_container(container["name"])
        except ResourceNotFoundError:
            pass
