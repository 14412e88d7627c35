"""Microsoft.Authorization: role assignments at any scope, and the built-in role definitions."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..wire import Response
from .core import BUILTIN_ROLES, ArmError, bad_request, is_within, json_response, public, role_definition

if TYPE_CHECKING:
    from .service import ArmService, Ctx

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
TYPE = "Microsoft.Authorization/roleAssignments"


class AuthorizationProvider:
    def __init__(self, arm: "ArmService"):
        self.arm = arm

    # ----------------------------------------------------------------- queries
    def assignments_for(self, principal_id: str) -> list[dict[str, Any]]:
        pid = principal_id.lower()
        return self.arm.resources.find(type_=TYPE, where=lambda r: r["properties"]["principalId"].lower() == pid)

    def assign(self, scope: str, name: str, role_id: str, principal_id: str, principal_type: str) -> dict[str, Any]:
        scope = "/" + scope.strip("/") if scope.strip("/") else "/"
        prefix = "" if scope == "/" else scope
        sub = scope.split("/")[2] if scope.startswith("/subscriptions/") else None
        role_scope = f"/subscriptions/{sub}" if sub else ""
        now = self.arm.iso_now()
        record = {"id": f"{prefix}/providers/Microsoft.Authorization/roleAssignments/{name}", "name": name, "type": TYPE,
                  "properties": {"roleDefinitionId": f"{role_scope}/providers/Microsoft.Authorization/roleDefinitions/{role_id}",
                                 "principalId": principal_id, "principalType": principal_type, "scope": scope,
                                 "condition": None, "conditionVersion": None, "createdOn": now, "updatedOn": now,
                                 "createdBy": None, "updatedBy": None, "delegatedManagedIdentityResourceId": None,
                                 "description": None}}
        return self.arm.resources.put(record)

    # ----------------------------------------------------------------- routes
    def handle(self, ctx: "Ctx", scope: str, tail: list[str]) -> Response:
        if not tail:
            raise ArmError(404, "InvalidResourceType", "The resource type could not be found in namespace 'Microsoft.Authorization'.")
        kind = tail[0].lower()
        self._check_scope(ctx, scope)
        if kind == "roledefinitions":
            return self._role_definitions(ctx, scope, tail[1:])
        if kind == "roleassignments":
            if len(tail) == 1 and ctx.method == "GET":
                return self._list(ctx, scope)
            if len(tail) == 2:
                return self._assignment(ctx, scope, tail[1])
        raise ArmError(404, "InvalidResourceType",
                       f"The resource type '{tail[0]}' could not be found in the namespace 'Microsoft.Authorization'.")

    def _check_scope(self, ctx: "Ctx", scope: str) -> None:
        parts = [p for p in scope.split("/") if p]
        if len(parts) >= 4 and parts[2].lower() == "resourcegroups":
            self.arm.require_group(ctx, parts[3])
        if len(parts) > 4 and self.arm.resources.get(scope) is None:
            raise ArmError(404, "ResourceNotFound", f"The scope '{scope}' does not exist.")

    def _role_definitions(self, ctx: "Ctx", scope: str, rest: list[str]) -> Response:
        role_scope = f"/subscriptions/{ctx.sub}" if ctx.sub else ""
        if ctx.method != "GET":
            raise ArmError(403, "AuthorizationFailed", "Built-in role definitions cannot be changed.")
        if not rest:
            wanted = re.search(r"roleName\s+eq\s+'([^']*)'", ctx.request.query.get("$filter", ""), re.I)
            roles = [r for r in BUILTIN_ROLES if not wanted or BUILTIN_ROLES[r]["roleName"].lower() == wanted.group(1).lower()]
            return json_response(200, {"value": [role_definition(r, role_scope) for r in roles]})
        role_id = rest[0].lower()
        if role_id not in BUILTIN_ROLES:
            raise ArmError(404, "RoleDefinitionDoesNotExist", f"The specified role definition with ID '{rest[0]}' does not exist.")
        return json_response(200, role_definition(role_id, role_scope))

    def _list(self, ctx: "Ctx", scope: str) -> Response:
        self.arm.authorize(ctx, "Microsoft.Authorization/roleAssignments/read", scope)
        flt = ctx.request.query.get("$filter", "")
        at_scope = "atscope()" in flt.lower()
        principal = re.search(r"principalId\s+eq\s+'([^']*)'", flt, re.I)
        rows = []
        for row in self.arm.resources.find(type_=TYPE):
            own = row["properties"]["scope"]
            if not (is_within(own, scope) or (not at_scope and is_within(scope, own))):
                continue
            if principal and row["properties"]["principalId"].lower() != principal.group(1).lower():
                continue
            rows.append(public(row))
        return json_response(200, {"value": rows})

    def _assignment(self, ctx: "Ctx", scope: str, name: str) -> Response:
        prefix = "" if scope == "/" else scope
        rid = f"{prefix}/providers/Microsoft.Authorization/roleAssignments/{name}"
        existing = self.arm.resources.get(rid)
        if ctx.method == "GET":
            self.arm.authorize(ctx, "Microsoft.Authorization/roleAssignments/read", scope)
            if existing is None:
                raise ArmError(404, "RoleAssignmentNotFound", "The role assignment does not exist.")
            return json_response(200, public(existing))
        if ctx.method == "DELETE":
            self.arm.authorize(ctx, "Microsoft.Authorization/roleAssignments/delete", scope)
            if existing is None:
                return Response.empty(204)
            self.arm.resources.delete(rid)
            return json_response(200, public(existing))
        if ctx.method != "PUT":
            raise ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed.")
        self.arm.authorize(ctx, "Microsoft.Authorization/roleAssignments/write", scope)
        if not GUID.match(name):
            raise ArmError(400, "InvalidRoleAssignmentId",
                           f"The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID.")
        props = ctx.body().get("properties") or {}
        role_ref, principal = props.get("roleDefinitionId"), props.get("principalId")
        if not role_ref:
            raise bad_request("The roleDefinitionId property is required.", "properties.roleDefinitionId")
        if not principal or not GUID.match(str(principal)):
            raise ArmError(400, "InvalidPrincipalId", "A valid principal ID must be provided for role assignment.",
                           target="properties.principalId")
        role_id = str(role_ref).rstrip("/").rsplit("/", 1)[-1].lower()
        if role_id not in BUILTIN_ROLES:
            raise ArmError(404, "RoleDefinitionDoesNotExist", f"The specified role definition with ID '{role_id}' does not exist.")
        if existing is not None:
            same = (existing["properties"]["principalId"].lower() == principal.lower()
                    and existing["properties"]["roleDefinitionId"].rsplit("/", 1)[-1].lower() == role_id)
            if not same:
                raise ArmError(400, "RoleAssignmentUpdateNotPermitted",
                               "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.")
            return json_response(201, public(existing))
        for row in self.assignments_for(principal):
            p = row["properties"]
            if p["scope"].lower() == scope.lower() and p["roleDefinitionId"].rsplit("/", 1)[-1].lower() == role_id:
                raise ArmError(409, "RoleAssignmentExists", "The role assignment already exists.",
                               details=[{"code": "RoleAssignmentExists", "message": f"The ID of the existing role assignment is {row['name']}."}])
        record = self.assign(scope, name, role_id, principal, props.get("principalType") or "ServicePrincipal")
        return json_response(201, public(record))
