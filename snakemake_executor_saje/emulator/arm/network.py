"""Microsoft.Network: virtual networks and their subnets, no more than Batch pools need.

A pool's `networkConfiguration.subnetId` must name a subnet that exists, or the Batch data plane
refuses the pool (400 InvalidPropertyValue on subnetId, as Azure answers a subnet it cannot use:
see docs/emulator.md, "Limits"); `subnet_exists` is the hook it asks. Address ranges are stored as
given and not checked, and no NIC, NSG or route table exists: nothing in the emulator routes.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

from ..wire import Response
from .core import ArmError, json_response, not_found, parent_not_found, public

if TYPE_CHECKING:
    from .service import ArmService, Ctx

NS = "Microsoft.Network"
VNET_TYPE = "Microsoft.Network/virtualNetworks"
SUBNET_TYPE = "Microsoft.Network/virtualNetworks/subnets"
# Names: 2-64 (virtual network) / 1-80 (subnet) letters, digits, '_', '.', '-', starting with a letter
# or digit and ending with a letter, digit or '_' (Azure naming rules for Microsoft.Network).
VNET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}[A-Za-z0-9_]$")
SUBNET_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,78}[A-Za-z0-9_])?$")


class NetworkProvider:
    def __init__(self, arm: "ArmService", *, subnet_in_use: Callable[[str], str | None] = lambda _id: None):
        self.arm = arm
        # Who uses a subnet (a Batch pool id), so that it cannot be deleted under them, or None.
        self.subnet_in_use = subnet_in_use

    def subnet_exists(self, subnet_id: str) -> bool:
        record = self.arm.resources.get(subnet_id)
        return (record is not None and record["type"].lower() == SUBNET_TYPE.lower()
                and record["properties"].get("provisioningState") == "Succeeded")

    # ----------------------------------------------------------------- routes
    def handle_sub(self, ctx: "Ctx", tail: list[str]) -> Response:
        if [t.lower() for t in tail] == ["virtualnetworks"] and ctx.method == "GET":
            scope = f"/subscriptions/{ctx.sub}"
            self.arm.authorize(ctx, f"{VNET_TYPE}/read", scope)
            return json_response(200, {"value": [self._view(r) for r in self.arm.resources.find(type_=VNET_TYPE, within=scope)]})
        raise self._unknown(tail)

    def handle_rg(self, ctx: "Ctx", rg: str, tail: list[str]) -> Response:
        low = [t.lower() for t in tail]
        group = self.arm.require_group(ctx, rg)
        if low[0] != "virtualnetworks":
            raise self._unknown(tail)
        if len(tail) == 1:
            self.arm.authorize(ctx, f"{VNET_TYPE}/read", group["id"])
            return json_response(200, {"value": [self._view(r) for r in self.arm.resources.find(type_=VNET_TYPE, within=group["id"])]})
        vnet_id = f"{group['id']}/providers/{NS}/virtualNetworks/{tail[1]}"
        if len(tail) == 2:
            return self._vnet(ctx, rg, vnet_id, tail[1])
        if low[2] == "subnets":
            if len(tail) == 3:
                vnet = self._require_vnet(ctx, vnet_id, tail[1], rg, "read")
                return json_response(200, {"value": [self._subnet_view(s) for s in self._subnets(vnet["id"])]})
            if len(tail) == 4:
                return self._subnet(ctx, rg, vnet_id, tail[1], tail[3])
        raise self._unknown(tail)

    # ----------------------------------------------------------------- virtual networks
    def _vnet(self, ctx: "Ctx", rg: str, rid: str, name: str) -> Response:
        existing = self.arm.resources.get(rid)
        if ctx.method == "GET":
            return json_response(200, self._view(self._require_vnet(ctx, rid, name, rg, "read")))
        if ctx.method == "DELETE":
            self.arm.authorize(ctx, f"{VNET_TYPE}/delete", rid)
            if existing is None:
                return Response.empty(204)
            for subnet in self._subnets(existing["id"]):
                self._refuse_in_use(subnet)
            return self.arm.lro(ctx, NS, existing["location"], lambda: self._drop(existing), status=202)
        if ctx.method != "PUT":
            raise ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed.")
        self.arm.authorize(ctx, f"{VNET_TYPE}/write", rid)
        if not VNET_NAME.match(name):
            raise ArmError(400, "InvalidResourceName", f"Resource name {name} is invalid. The name can be up to 64 "
                           "characters long: letters, digits, '_', '.' and '-', ending with a letter, digit or '_'.")
        from .service import normalize_location

        body = ctx.body()
        props = body.get("properties") or {}
        location = normalize_location(body.get("location"))
        if existing is not None and existing["location"] != location:
            raise ArmError(400, "InvalidResourceLocation", f"The resource '{name}' already exists in location "
                           f"'{existing['location']}' in resource group '{rg}'.")
        record = existing or {"id": rid, "name": name, "type": VNET_TYPE, "location": location, "properties": {}}
        record["tags"] = body.get("tags") or {}
        record["properties"].update({"addressSpace": props.get("addressSpace") or {"addressPrefixes": []},
                                     "provisioningState": "Succeeded"})
        self.arm.resources.put(record)
        # A PUT of the network states its whole subnet list: the ones it names are created or kept.
        for item in props.get("subnets") or []:
            self._put_subnet(record, str(item.get("name") or ""), item.get("properties") or {})
        return json_response(200 if existing else 201, self._view(record))

    def _require_vnet(self, ctx: "Ctx", rid: str, name: str, rg: str, verb: str) -> dict[str, Any]:
        self.arm.authorize(ctx, f"{VNET_TYPE}/{verb}", rid)
        record = self.arm.resources.get(rid)
        if record is None:
            raise not_found(VNET_TYPE, name, rg)
        return record

    # ----------------------------------------------------------------- subnets
    def _subnet(self, ctx: "Ctx", rg: str, vnet_id: str, vnet_name: str, name: str) -> Response:
        rid = f"{vnet_id}/subnets/{name}"
        existing = self.arm.resources.get(rid)
        if ctx.method == "GET":
            self._require_vnet(ctx, vnet_id, vnet_name, rg, "read")
            if existing is None:
                # The Network provider's own answer for a missing child resource.
                raise ArmError(404, "NotFound", f"Resource {rid} not found.")
            return json_response(200, self._subnet_view(existing))
        if ctx.method == "DELETE":
            self.arm.authorize(ctx, f"{SUBNET_TYPE}/delete", rid)
            if existing is None:
                return Response.empty(204)
            self._refuse_in_use(existing)
            return self.arm.lro(ctx, NS, "global", lambda: self.arm.resources.delete(existing["id"]), status=202)
        if ctx.method != "PUT":
            raise ArmError(405, "MethodNotAllowed", f"The requested method '{ctx.method}' is not allowed.")
        self.arm.authorize(ctx, f"{SUBNET_TYPE}/write", rid)
        vnet = self.arm.resources.get(vnet_id)
        if vnet is None:
            raise parent_not_found(vnet_name)
        record = self._put_subnet(vnet, name, ctx.body().get("properties") or {})
        return json_response(200 if existing else 201, self._subnet_view(record))

    def _put_subnet(self, vnet: dict[str, Any], name: str, props: dict[str, Any]) -> dict[str, Any]:
        if not SUBNET_NAME.match(name):
            raise ArmError(400, "InvalidResourceName", f"Resource name {name!r} is invalid for a subnet: up to 80 "
                           "letters, digits, '_', '.' and '-', ending with a letter, digit or '_'.")
        if not props.get("addressPrefix") and not props.get("addressPrefixes"):
            raise ArmError(400, "InvalidRequestFormat", f"Cannot parse the request: subnet '{name}' has no "
                           "addressPrefix.", target="properties.addressPrefix")
        rid = f"{vnet['id']}/subnets/{name}"
        record = self.arm.resources.get(rid) or {"id": rid, "name": name, "type": SUBNET_TYPE, "properties": {}}
        record["properties"].update({k: props[k] for k in ("addressPrefix", "addressPrefixes") if k in props})
        record["properties"]["provisioningState"] = "Succeeded"
        return self.arm.resources.put(record)

    def _refuse_in_use(self, subnet: dict[str, Any]) -> None:
        user = self.subnet_in_use(subnet["id"])
        if user:
            raise ArmError(400, "InUseSubnetCannotBeDeleted", f"Subnet {subnet['name']} is in use by {user} and "
                           "cannot be deleted. Delete the resources using it first.")

    def _subnets(self, vnet_id: str) -> list[dict[str, Any]]:
        return self.arm.resources.find(type_=SUBNET_TYPE, within=vnet_id)

    def _drop(self, vnet: dict[str, Any]) -> None:
        for subnet in self._subnets(vnet["id"]):
            self.arm.resources.delete(subnet["id"])
        self.arm.delete_resource(vnet)

    # ----------------------------------------------------------------- views
    def _view(self, vnet: dict[str, Any]) -> dict[str, Any]:
        view = public(vnet)
        view["properties"] = {**vnet["properties"], "subnets": [self._subnet_view(s) for s in self._subnets(vnet["id"])]}
        return view

    @staticmethod
    def _subnet_view(subnet: dict[str, Any]) -> dict[str, Any]:
        return public(subnet)

    @staticmethod
    def _unknown(tail: list[str]) -> ArmError:
        return ArmError(404, "InvalidResourceType",
                        f"The resource type '{'/'.join(tail)}' could not be found in the namespace '{NS}'.")
