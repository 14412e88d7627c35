"""Pools with a managed identity, created through Azure Resource Manager.

Azure gives a pool user-assigned identities only when the pool is created through ARM
(Microsoft.Batch/batchAccounts/pools, azure-mgmt-batch): in the Batch data plane (azure-batch,
api-version 2025-06-01) ``BatchPool.identity`` is read-only and BatchPoolCreateOptions has no
identity ("Creating pools with managed identities is not currently supported with the Batch ...
client library", learn.microsoft.com, "Configure managed identities in Batch pools"). So with
``--saje-node-identity`` SAJE builds the same pool as always (``pools.pool_spec``), turns it into
ARM's shape here (``arm_pool_body``, pure), and creates it with the account's resource group and
name, read from ARM (``allocation.arm_account``). Everything else (jobs, tasks, deletion) stays on
the data plane, where an ARM-made pool is an ordinary pool.
"""
from __future__ import annotations

from typing import Any, Sequence

from azure.batch import models
from snakemake_interface_common.exceptions import WorkflowError

__all__ = ["NodeIdentityError", "is_user_assigned_identity", "arm_pool_body", "ArmPools"]


class NodeIdentityError(WorkflowError):
    """--saje-node-identity cannot be used as configured; the message says what to set."""


def is_user_assigned_identity(text: str) -> bool:
    """An ARM id /subscriptions/S/resourceGroups/G/providers/Microsoft.ManagedIdentity/userAssignedIdentities/N."""
    parts = str(text).strip("/").split("/")
    return (len(parts) == 8 and [p.lower() for p in (parts[0], parts[2], parts[4], parts[5], parts[6])]
            == ["subscriptions", "resourcegroups", "providers", "microsoft.managedidentity", "userassignedidentities"]
            and all(parts))


def _pascal(value: str | None) -> str | None:
    return value[:1].upper() + value[1:] if value else value


def _image(ref: dict[str, Any]) -> dict[str, Any]:
    """The data plane's image reference in ARM's spelling (a gallery image version is ``id``)."""
    if ref.get("virtualMachineImageId"):
        return {"id": ref["virtualMachineImageId"]}
    return {k: v for k, v in ref.items() if k in ("publisher", "offer", "sku", "version", "sharedGalleryImageId",
                                                  "communityGalleryImageId")}


def _user_identity(identity: dict[str, Any] | None) -> dict[str, Any] | None:
    if not identity or not identity.get("autoUser"):
        return identity
    auto = identity["autoUser"]
    return {"autoUser": {"scope": _pascal(auto.get("scope")), "elevationLevel": _pascal(auto.get("elevationLevel"))}}


def arm_pool_body(spec: models.BatchPoolCreateOptions, identities: Sequence[str]) -> dict[str, Any]:
    """The ARM Pool resource (azure-mgmt-batch's JSON) for a data-plane pool spec SAJE built, with
    ``identities`` as its user-assigned identities. Covers what pools.pool_spec sets."""
    rest = spec.as_dict()
    vm = rest["virtualMachineConfiguration"]
    vmc: dict[str, Any] = {"imageReference": _image(vm["imageReference"]), "nodeAgentSkuId": vm["nodeAgentSKUId"]}
    container = vm.get("containerConfiguration")
    if container:
        vmc["containerConfiguration"] = {**container, "type": _pascal(container.get("type"))}
    props: dict[str, Any] = {
        "vmSize": rest["vmSize"],
        "displayName": rest.get("displayName"),
        "deploymentConfiguration": {"virtualMachineConfiguration": vmc},
        "taskSlotsPerNode": rest.get("taskSlotsPerNode"),
        "interNodeCommunication": "Enabled" if rest.get("enableInterNodeCommunication") else "Disabled",
    }
    if rest.get("enableAutoScale"):
        props["scaleSettings"] = {"autoScale": {"formula": rest["autoScaleFormula"],
                                                "evaluationInterval": rest.get("autoScaleEvaluationInterval")}}
    else:
        props["scaleSettings"] = {"fixedScale": {k: rest[k] for k in ("targetDedicatedNodes", "targetLowPriorityNodes",
                                                                      "resizeTimeout") if rest.get(k) is not None}}
    policy = rest.get("taskSchedulingPolicy")
    if policy:
        props["taskSchedulingPolicy"] = {"nodeFillType": _pascal(policy.get("nodeFillType"))}
    start = rest.get("startTask")
    if start:
        props["startTask"] = {**start, "userIdentity": _user_identity(start.get("userIdentity"))}
    for key in ("networkConfiguration", "mountConfiguration", "metadata"):
        if rest.get(key):
            props[key] = rest[key]
    body = {"properties": {k: v for k, v in props.items() if v is not None}}
    if identities:
        body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {i: {} for i in identities}}
    return body


class ArmPools:
    """The Batch account's pools through ARM, for the runs whose pools have an identity."""

    def __init__(self, arm: Any, resource_group: str, account: str):
        self.arm, self.resource_group, self.account = arm, resource_group, account

    @classmethod
    def connect(cls, endpoint: str, settings: Any, account_name: str | None) -> "ArmPools":
        from .allocation import AccountLookupError, arm_account

        try:
            arm, account = arm_account(endpoint, settings, account_name)
        except AccountLookupError as exc:
            raise NodeIdentityError(
                f"--saje-node-identity: Azure gives a pool a managed identity only when the pool is created through"
                f" Azure Resource Manager, and SAJE cannot reach the Batch account there: {exc}. Give the credential"
                " profile a subscription_id (or set AZURE_SUBSCRIPTION_ID) and an Entra ID credential that may write"
                " the account's pools (Contributor on the Batch account).") from None
        resource_group = account.id.split("/")[4]
        return cls(arm, resource_group, account.name)

    def create(self, spec: models.BatchPoolCreateOptions, identities: Sequence[str], run_id: str) -> bool:
        """Create the pool (If-None-Match: * keeps an existing one as it is); True when this run
        owns it: created now, or found existing with the run's id in its own (a retried create
        whose first reply was lost), as batch.BatchGateway.create_pool decides."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError

        from .batch import owned_by

        try:
            self.arm.batch.pool.create(self.resource_group, self.account, spec.id, arm_pool_body(spec, identities),
                                       match_condition=MatchConditions.IfMissing)
            return True
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                return owned_by(spec.id, run_id)
            raise

    def close(self) -> None:
        self.arm.close()
