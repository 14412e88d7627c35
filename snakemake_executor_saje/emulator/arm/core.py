"""ARM building blocks: error bodies, the resource registry (SQLite via `Store`), long-running
operations, and role-based access control with the built-in roles the setup workflows use.

Everything here is provider-neutral; the providers (storage, batch, compute, authorization)
use it to answer like Azure Resource Manager does.
"""
from __future__ import annotations

import fnmatch
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ..store import Store
from ..timeutil import iso_now
from ..wire import Response

log = logging.getLogger(__name__)

JSON = {"Content-Type": "application/json; charset=utf-8"}


# --------------------------------------------------------------------------- errors
class ArmError(Exception):
    """An ARM error response: {"error": {"code", "message", "target"?, "details"?}}."""

    def __init__(self, status: int, code: str, message: str, *, target: str | None = None,
                 details: list[dict[str, Any]] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.target, self.details = status, code, message, target, details

    def error(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            body["target"] = self.target
        if self.details:
            body["details"] = self.details
        return body

    def response(self) -> Response:
        return json_response(self.status, {"error": self.error()})


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    import json

    return Response(status, json.dumps(payload).encode(), {**JSON, **(headers or {})})


def not_found(type_: str, name: str, rg: str | None = None) -> ArmError:
    where = f" under resource group '{rg}'" if rg else ""
    return ArmError(404, "ResourceNotFound", f"The Resource '{type_}/{name}'{where} was not found. "
                    "For more details please go to https://aka.ms/ARMResourceNotFoundFix")


def parent_not_found(parent: str) -> ArmError:
    return ArmError(404, "ParentResourceNotFound",
                    f"Can not perform requested operation on nested resource. Parent resource '{parent}' not found.")


def invalid_name(name: str, type_: str, rule: str) -> ArmError:
    return ArmError(400, "InvalidResourceName",
                    f"Resource name '{name}' is invalid for type '{type_}'. {rule}", target="name")


def bad_request(message: str, target: str | None = None, code: str = "InvalidRequestContent") -> ArmError:
    return ArmError(400, code, message, target=target)


# --------------------------------------------------------------------------- resource ids
def split_id(resource_id: str) -> list[str]:
    return [s for s in resource_id.strip("/").split("/") if s]


def id_type(resource_id: str) -> str:
    """'/subscriptions/s/resourceGroups/r/providers/NS/t1/n1/t2/n2' -> 'NS/t1/t2'."""
    parts = split_id(resource_id)
    low = [p.lower() for p in parts]
    if "providers" not in low:
        if len(parts) >= 4 and low[2] == "resourcegroups":
            return "Microsoft.Resources/subscriptions/resourceGroups"
        return "Microsoft.Resources/subscriptions"
    index = len(low) - 1 - low[::-1].index("providers")
    tail = parts[index + 1:]
    return "/".join([tail[0], *tail[1::2]])


def is_within(scope: str, resource_id: str) -> bool:
    """True when `resource_id` is `scope` or lies below it (segment-wise, case-insensitive)."""
    outer, inner = [s.lower() for s in split_id(scope)], [s.lower() for s in split_id(resource_id)]
    return inner[:len(outer)] == outer


# --------------------------------------------------------------------------- registry
class Registry:
    """ARM resources by case-insensitive id, written through to SQLite (kind 'arm:resource')."""

    KIND = "arm:resource"

    def __init__(self, store: Store):
        self.store = store
        self.lock = threading.RLock()
        self.items: dict[str, dict[str, Any]] = {key: body for key, body in store.load(self.KIND)}

    def get(self, resource_id: str) -> dict[str, Any] | None:
        with self.lock:
            return self.items.get(resource_id.lower().rstrip("/"))

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            key = resource["id"].lower()
            self.items[key] = resource
            self.store.put(self.KIND, key, resource)
            return resource

    def delete(self, resource_id: str) -> None:
        with self.lock:
            key = resource_id.lower().rstrip("/")
            self.items.pop(key, None)
            self.store.delete(self.KIND, key)

    def find(self, *, type_: str | None = None, within: str | None = None,
             where: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        with self.lock:
            rows = list(self.items.values())
        out = []
        for row in rows:
            if type_ is not None and row.get("type", "").lower() != type_.lower():
                continue
            if within is not None and not is_within(within, row["id"]):
                continue
            if where is not None and not where(row):
                continue
            out.append(row)
        return out


def public(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as ARM shows it: internal bookkeeping (keys starting '_') removed."""
    return {k: v for k, v in resource.items() if not k.startswith("_")}


# --------------------------------------------------------------------------- long-running operations
@dataclass
class Operation:
    id: str
    namespace: str
    location: str
    subscription: str
    status: str = "InProgress"
    start_time: str = ""
    end_time: str | None = None
    error: dict[str, Any] | None = None
    result: Any = None  # the body the Location URL answers with once done (POST actions)
    failure_status: int = 500  # the HTTP status the Location URL answers with when it failed

    def status_body(self, base_url: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.status_path(), "name": self.id, "status": self.status, "startTime": self.start_time,
        }
        if self.end_time:
            body["endTime"] = self.end_time
        if self.error:
            body["error"] = self.error
        return body

    def status_path(self) -> str:
        return (f"/subscriptions/{self.subscription}/providers/{self.namespace}/locations/{self.location}"
                f"/operationStatuses/{self.id}")

    def result_path(self) -> str:
        return (f"/subscriptions/{self.subscription}/providers/{self.namespace}/locations/{self.location}"
                f"/operationResults/{self.id}")

    def to_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Operations:
    """Runs each LRO's work on a thread; status is InProgress until it ends, then Succeeded or Failed."""

    KIND = "arm:operation"

    def __init__(self, store: Store, *, min_seconds: Callable[[], float], now: Callable[[], str] = iso_now):
        self.store = store
        self.now = now
        self.min_seconds = min_seconds
        self.lock = threading.Lock()
        self.ops: dict[str, Operation] = {}
        for key, row in store.load(self.KIND):
            op = Operation(**row)
            if op.status == "InProgress":  # the process that ran it is gone
                op.status, op.end_time = "Failed", self.now()
                op.error = {"code": "InternalServerError", "message": "The emulator restarted during the operation."}
                store.put(self.KIND, key, op.to_row())
            self.ops[key] = op
        self.threads: list[threading.Thread] = []

    def start(self, *, subscription: str, namespace: str, location: str,
              work: Callable[[], Any], on_failure: Callable[[dict[str, Any]], None] | None = None) -> Operation:
        op = Operation(str(uuid.uuid4()), namespace, location or "global", subscription, start_time=self.now())
        with self.lock:
            self.ops[op.id] = op
        self._save(op)

        def run() -> None:
            began = time.monotonic()
            try:
                result = work()
                status, error = "Succeeded", None
            except ArmError as exc:
                result, status, error = None, "Failed", exc.error()
                op.failure_status = exc.status
            except Exception as exc:  # a bug: report it as the service would, not hang the poller
                log.exception("ARM operation %s failed", op.id)
                result, status, error = None, "Failed", {"code": "InternalServerError", "message": str(exc)}
            if error is not None and on_failure is not None:
                try:
                    on_failure(error)
                except Exception:
                    log.exception("ARM operation %s: failure handler", op.id)
            rest = self.min_seconds() - (time.monotonic() - began)
            if rest > 0:
                time.sleep(rest)
            op.result, op.error, op.end_time, op.status = result, error, self.now(), status
            self._save(op)

        thread = threading.Thread(target=run, name=f"arm-op-{op.id[:8]}", daemon=True)
        self.threads.append(thread)
        thread.start()
        return op

    def get(self, op_id: str) -> Operation | None:
        with self.lock:
            return self.ops.get(op_id)

    def _save(self, op: Operation) -> None:
        self.store.put(self.KIND, op.id, op.to_row())


# --------------------------------------------------------------------------- RBAC
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
READER = "acdd72a7-3b48-48a4-8e41-6c1a7e4c8b92"
USER_ACCESS_ADMINISTRATOR = "18d7d88d-d35e-4fb5-a5c3-7773c6b9710f"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
VIRTUAL_MACHINE_CONTRIBUTOR = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"

_AUTHZ_WRITES = ["Microsoft.Authorization/*/Delete", "Microsoft.Authorization/*/Write",
                 "Microsoft.Authorization/elevateAccess/Action"]

BUILTIN_ROLES: dict[str, dict[str, Any]] = {
    OWNER: {"roleName": "Owner", "description": "Grants full access to manage all resources, including the "
            "ability to assign roles in Azure RBAC.", "actions": ["*"], "notActions": []},
    CONTRIBUTOR: {"roleName": "Contributor", "description": "Grants full access to manage all resources, but does "
                  "not allow you to assign roles in Azure RBAC.", "actions": ["*"], "notActions": _AUTHZ_WRITES},
    READER: {"roleName": "Reader", "description": "View all resources, but does not allow you to make any changes.",
             "actions": ["*/read"], "notActions": []},
    USER_ACCESS_ADMINISTRATOR: {"roleName": "User Access Administrator", "description": "Lets you manage user "
                                "access to Azure resources.", "actions": ["*/read", "Microsoft.Authorization/*",
                                                                          "Microsoft.Support/*"], "notActions": []},
    STORAGE_BLOB_DATA_CONTRIBUTOR: {"roleName": "Storage Blob Data Contributor", "description": "Allows for read, "
                                    "write and delete access to Azure Storage blob containers and data",
                                    "actions": ["Microsoft.Storage/storageAccounts/blobServices/containers/delete",
                                                "Microsoft.Storage/storageAccounts/blobServices/containers/read",
                                                "Microsoft.Storage/storageAccounts/blobServices/containers/write",
                                                "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action"],
                                    "notActions": []},
    VIRTUAL_MACHINE_CONTRIBUTOR: {"roleName": "Virtual Machine Contributor", "description": "Create and manage "
                                  "virtual machines, manage disks, install and run software.",
                                  "actions": ["Microsoft.Compute/*", "Microsoft.Network/*", "Microsoft.Resources/*/read",
                                              "Microsoft.Authorization/*/read"], "notActions": []},
}


def role_by_name(name: str) -> str | None:
    for role_id, role in BUILTIN_ROLES.items():
        if role["roleName"].lower() == name.lower() or role_id == name.lower():
            return role_id
    return None


def role_definition(role_id: str, scope: str) -> dict[str, Any]:
    role = BUILTIN_ROLES[role_id]
    prefix = scope.rstrip("/")
    return {
        "id": f"{prefix}/providers/Microsoft.Authorization/roleDefinitions/{role_id}",
        "name": role_id, "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {"roleName": role["roleName"], "type": "BuiltInRole", "description": role["description"],
                       "assignableScopes": ["/"],
                       "permissions": [{"actions": role["actions"], "notActions": role["notActions"],
                                        "dataActions": [], "notDataActions": []}],
                       "createdOn": "2015-02-02T21:55:09.8806423Z", "updatedOn": "2021-11-11T20:13:47.8628684Z"},
    }


def _matches(patterns: list[str], action: str) -> bool:
    action = action.lower()
    return any(fnmatch.fnmatchcase(action, p.lower()) for p in patterns)


def role_allows(role_id: str, action: str) -> bool:
    role = BUILTIN_ROLES.get(role_id)
    return bool(role) and _matches(role["actions"], action) and not _matches(role["notActions"], action)


def authorization_failed(oid: str, action: str, scope: str) -> ArmError:
    return ArmError(403, "AuthorizationFailed",
                    f"The client '{oid}' with object id '{oid}' does not have authorization to perform action "
                    f"'{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, "
                    "please refresh your credentials.")


def linked_authorization_failed(oid: str, action: str, scope: str, linked_action: str, linked_scope: str) -> ArmError:
    return ArmError(403, "LinkedAuthorizationFailed",
                    f"The client '{oid}' with object id '{oid}' has permission to perform action '{action}' on "
                    f"scope '{scope}'; however, it does not have permission to perform action(s) '{linked_action}' "
                    f"on the linked scope(s) '{linked_scope}' (respectively) or the linked scope(s) are invalid.")
