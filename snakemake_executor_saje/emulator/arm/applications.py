"""Microsoft.Batch applications and their versions (application packages), in the account's auto-storage.

    .../batchAccounts/{a}/applications[/{app}]                   PUT GET PATCH DELETE, list
    .../batchAccounts/{a}/applications/{app}/versions[/{v}]      PUT GET DELETE, list
    .../batchAccounts/{a}/applications/{app}/versions/{v}/activate   POST {"format": "zip"}

As on Azure (ApplicationPackageCreate/Activate examples of the Microsoft.Batch spec): creating a
version returns a `storageUrl`, a SAS URL of a blob in the account's auto-storage account (here
Azurite) where the client uploads the zip; `activate` checks the upload and makes the version
`Active`. The Batch data plane asks `resolve` for a package a pool or task references; the node
agent downloads the zip from the returned URL and unpacks it (agent.py).
"""
from __future__ import annotations

import datetime
import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..timeutil import iso, utcnow
from ..wire import Response
from .core import ArmError, bad_request, json_response, not_found, parent_not_found, public

if TYPE_CHECKING:
    from .service import ArmService, Ctx

APP_TYPE = "Microsoft.Batch/batchAccounts/applications"
VERSION_TYPE = "Microsoft.Batch/batchAccounts/applications/versions"
# Application ids and versions: letters, digits, hyphens, underscores, periods; at most 64
# (Microsoft.Batch spec, applicationName / versionName patterns).
NAME = re.compile(r"^[a-zA-Z0-9_-][a-zA-Z0-9_.-]{0,63}$")
SAS_HOURS = 4  # storageUrlExpiry: assumed; Azure does not document the lifetime


@dataclass(frozen=True)
class Package:
    """An active application package, as the data plane and the node agent need it."""

    application: str  # the application's name, as created (case preserved)
    version: str
    activated: str  # lastActivationTime, which names the package's directory on a node
    url: str  # read SAS URL of the zip


class PackageError(Exception):
    """A reference that cannot be satisfied; the message says why."""


class ApplicationProvider:
    def __init__(self, arm: "ArmService"):
        self.arm = arm
        arm.cleanup[VERSION_TYPE.lower()] = self._drop_version

    # ----------------------------------------------------------------- routes
    def handle(self, ctx: "Ctx", account: dict[str, Any], tail: list[str]) -> Response:
        """`tail` starts after the account: ["applications", ...]."""
        low = [t.lower() for t in tail]
        base = f"{account['id']}/applications"
        if len(tail) == 1:
            self.arm.authorize(ctx, f"{APP_TYPE}/read", account["id"])
            if ctx.method != "GET":
                raise ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed.")
            return json_response(200, {"value": [public(a) for a in self.arm.resources.find(type_=APP_TYPE, within=base)]})
        app_id = f"{base}/{tail[1]}"
        if len(tail) == 2:
            return self._application(ctx, account, app_id, tail[1])
        app = self.arm.resources.get(app_id)
        if low[2] != "versions" or len(tail) > 5 or (len(tail) == 5 and low[4] != "activate"):
            raise ArmError(404, "InvalidResourceType", f"The resource type '{'/'.join(tail)}' could not be found.")
        if app is None:
            raise parent_not_found(tail[1])
        if len(tail) == 3:
            self.arm.authorize(ctx, f"{VERSION_TYPE}/read", app_id)
            versions = self.arm.resources.find(type_=VERSION_TYPE, within=f"{app_id}/versions")
            return json_response(200, {"value": [self._view(v) for v in versions]})
        version_id = f"{app_id}/versions/{tail[3]}"
        if len(tail) == 5:
            return self._activate(ctx, account, app, version_id)
        return self._version(ctx, account, app, version_id, tail[3])

    # ----------------------------------------------------------------- applications
    def _application(self, ctx: "Ctx", account: dict[str, Any], app_id: str, name: str) -> Response:
        existing = self.arm.resources.get(app_id)
        if ctx.method == "GET":
            self.arm.authorize(ctx, f"{APP_TYPE}/read", app_id)
            if existing is None:
                raise not_found(APP_TYPE, name)
            return json_response(200, public(existing))
        if ctx.method == "DELETE":
            self.arm.authorize(ctx, f"{APP_TYPE}/delete", app_id)
            if existing is None:
                return Response.empty(204)
            for version in self.arm.resources.find(type_=VERSION_TYPE, within=f"{app_id}/versions"):
                self.arm.delete_resource(version)
            self.arm.resources.delete(app_id)
            return Response.empty(200)
        if ctx.method not in ("PUT", "PATCH"):
            raise ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed.")
        self.arm.authorize(ctx, f"{APP_TYPE}/write", app_id)
        if not NAME.match(name):
            raise bad_request(f"The application name '{name}' is invalid: up to 64 letters, digits, '_', '-' and '.'.",
                              "applicationName", code="InvalidParameter")
        props = ctx.body().get("properties") or {}
        if ctx.method == "PATCH":
            if existing is None:
                raise not_found(APP_TYPE, name)
            record = existing
        else:
            record = existing or {"id": app_id, "name": name, "type": APP_TYPE,
                                  "properties": {"allowUpdates": True}}
        for key in ("allowUpdates", "displayName", "defaultVersion"):
            if key in props:
                record["properties"][key] = props[key]
        default = record["properties"].get("defaultVersion")
        if default and not self.arm.resources.get(f"{app_id}/versions/{default}"):
            raise bad_request(f"The default version '{default}' is not a version of application '{name}'.",
                              "properties.defaultVersion", code="InvalidParameter")
        record["etag"] = f'W/"0x{uuid.uuid4().hex[:15].upper()}"'
        self.arm.resources.put(record)
        return json_response(200, public(record), {"ETag": record["etag"]})

    # ----------------------------------------------------------------- versions
    def _version(self, ctx: "Ctx", account: dict[str, Any], app: dict[str, Any], version_id: str,
                 name: str) -> Response:
        existing = self.arm.resources.get(version_id)
        if ctx.method == "GET":
            self.arm.authorize(ctx, f"{VERSION_TYPE}/read", version_id)
            if existing is None:
                raise not_found(VERSION_TYPE, name)
            return json_response(200, self._view(existing))
        if ctx.method == "DELETE":
            self.arm.authorize(ctx, f"{VERSION_TYPE}/delete", version_id)
            if existing is not None:
                self.arm.delete_resource(existing)
                if app["properties"].get("defaultVersion") == existing["name"]:
                    app["properties"].pop("defaultVersion")
                    self.arm.resources.put(app)
            return Response.empty(200 if existing else 204)
        if ctx.method != "PUT":
            raise ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed.")
        self.arm.authorize(ctx, f"{VERSION_TYPE}/write", version_id)
        if not NAME.match(name):
            raise bad_request(f"The version name '{name}' is invalid: up to 64 letters, digits, '_', '-' and '.'.",
                              "versionName", code="InvalidParameter")
        if existing is not None and not app["properties"].get("allowUpdates", True):
            raise ArmError(409, "ApplicationPackageUpdatesNotAllowed",
                           f"Application '{app['name']}' does not allow updates of its packages (allowUpdates is false).")
        self._auto_storage(account)
        container = "app-" + hashlib.sha256(app["id"].lower().encode()).hexdigest()[:24]
        record = existing or {"id": version_id, "name": name, "type": VERSION_TYPE}
        record.update({"_container": container, "_blob": f"{app['name']}-{name}-{uuid.uuid4().hex}.zip",
                       "properties": {"state": "Pending"}})
        record["etag"] = f'W/"0x{uuid.uuid4().hex[:15].upper()}"'
        self.arm.resources.put(record)
        return json_response(200, self._view(record), {"ETag": record["etag"]})

    def _activate(self, ctx: "Ctx", account: dict[str, Any], app: dict[str, Any], version_id: str) -> Response:
        self.arm.authorize(ctx, f"{VERSION_TYPE}/activate/action", version_id)
        record = self.arm.resources.get(version_id)
        if record is None:
            raise not_found(VERSION_TYPE, version_id.rsplit("/", 1)[-1])
        fmt = str(ctx.body().get("format") or "")
        if fmt.lower() != "zip":
            raise bad_request(f"The package format '{fmt}' is not supported: only 'zip'.", "format", code="InvalidParameter")
        blob = self._blob_client(record)
        if blob is None or not blob.exists():
            raise ArmError(409, "ApplicationPackageNotUploaded",
                           f"Nothing was uploaded to the storage URL of version '{record['name']}' before activation.")
        record["properties"] = {"state": "Active", "format": "zip", "lastActivationTime": self.arm.iso_now()}
        record["etag"] = f'W/"0x{uuid.uuid4().hex[:15].upper()}"'
        self.arm.resources.put(record)
        return json_response(200, self._view(record), {"ETag": record["etag"]})

    # ----------------------------------------------------------------- storage
    def _auto_storage(self, account: dict[str, Any]) -> None:
        if not (account["properties"].get("autoStorage") or {}).get("storageAccountId"):
            raise ArmError(409, "AutoStorageNotConfigured",
                           f"Batch account '{account['name']}' has no auto-storage account; application packages"
                           " are kept in it (link one with autoStorage.storageAccountId).")
        if getattr(self.arm.emulator, "azurite", None) is None:
            raise ArmError(409, "AutoStorageNotConfigured",
                           "This emulator has no blob storage: start it with Azurite (with_azurite=True).")

    def _blob_client(self, record: dict[str, Any]):
        azurite = getattr(self.arm.emulator, "azurite", None)
        if azurite is None:
            return None
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(azurite.connection_string, **azurite.client_options)
        container = service.get_container_client(record["_container"])
        if not container.exists():
            container.create_container()
        return container.get_blob_client(record["_blob"])

    def _sas_url(self, record: dict[str, Any], permission: str) -> tuple[str, str]:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        blob = self._blob_client(record)
        expiry = utcnow() + datetime.timedelta(hours=SAS_HOURS)
        sas = generate_blob_sas(blob.account_name, record["_container"], record["_blob"],
                                account_key=self.arm.emulator.azurite.account_key,
                                permission=BlobSasPermissions.from_string(permission), expiry=expiry)
        return f"{blob.url}?{sas}", iso(expiry)

    def _view(self, record: dict[str, Any]) -> dict[str, Any]:
        view = public(record)
        if record["properties"].get("state") == "Pending" and self._blob_client(record) is not None:
            url, expiry = self._sas_url(record, "rcw")
            view["properties"] = {**record["properties"], "storageUrl": url, "storageUrlExpiry": expiry}
        return view

    def _drop_version(self, record: dict[str, Any]) -> None:
        blob = self._blob_client(record) if record.get("_container") else None
        if blob is not None and blob.exists():
            blob.delete_blob()

    # ----------------------------------------------------------------- the data plane's view
    def resolve(self, application: str, version: str | None) -> Package:
        """The active package a pool (full ARM id of the application) or a task (its name)
        references; with no version, the application's default version."""
        if application.startswith("/"):
            app = self.arm.resources.get(application)
            if app is None or app.get("type", "").lower() != APP_TYPE.lower():
                raise PackageError(f"application {application} does not exist")
        else:
            found = self.arm.resources.find(type_=APP_TYPE, where=lambda r: r["name"].lower() == application.lower())
            if not found:
                raise PackageError(f"application {application!r} does not exist in the Batch account")
            app = found[0]
        chosen = version or app["properties"].get("defaultVersion")
        if not chosen:
            raise PackageError(f"application {app['name']!r} has no default version and the reference names none")
        record = self.arm.resources.get(f"{app['id']}/versions/{chosen}")
        if record is None or record["properties"].get("state") != "Active":
            raise PackageError(f"version {chosen!r} of application {app['name']!r} does not exist or is not active")
        url, _ = self._sas_url(record, "r")
        return Package(app["name"], record["name"], record["properties"]["lastActivationTime"], url)
