"""What the Batch account can give: the profile checked against the account before a run.

Azure's rules, checked against Microsoft's documentation (docs/usage.md cites each):

- **Spot nodes need a user-subscription account.** Batch-managed (pool allocation mode
  `BatchService`) accounts offered only low-priority nodes, which were retired on 30 September
  2025; "Are Spot VMs available in Batch managed pool allocation accounts? No. Spot VMs are
  available only in user subscription pool allocation Batch accounts" (learn.microsoft.com,
  Batch, "Migrate Batch low-priority VMs to Spot VMs", FAQ, 2025-11). A run that asks for Spot
  nodes (--saje-spot, --preemptible-rules) on a BatchService account is refused before anything
  is created: its Spot pools could never grow.
- **A virtual network needs Microsoft Entra ID.** "To use an Azure Virtual Network, the Batch
  client API must use Microsoft Entra authentication" (learn.microsoft.com, Batch, "Create an
  Azure Batch pool in a virtual network", prerequisites). --saje-subnet-id with a shared key
  gets a warning before the run.

`check` is pure; `account_facts` is the one I/O edge (an ARM read of the Batch account, found by
its endpoint among the subscription's accounts), used only when the run asks for one of these.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SPOT_SOURCE = ("https://learn.microsoft.com/azure/batch/low-priority-vms-retirement-migration-guide"
               " (FAQ: Spot VMs only in user subscription pool allocation accounts)")
VNET_SOURCE = "https://learn.microsoft.com/azure/batch/batch-virtual-network (prerequisites: authentication)"

__all__ = ["AccountFacts", "AccountLookupError", "Finding", "check", "account_facts", "arm_account"]


@dataclass(frozen=True)
class AccountFacts:
    """What ARM says of the Batch account: its name and pool allocation mode."""

    name: str
    pool_allocation_mode: str  # "BatchService" or "UserSubscription"


@dataclass(frozen=True)
class Finding:
    level: str  # "error": refuse the run; "warning": say it and go on
    message: str


def check(facts: AccountFacts | None, *, wants_spot: bool, subnet: bool, shared_key: bool) -> list[Finding]:
    """The findings for a run on this account (None: the account could not be read)."""
    findings = []
    if wants_spot and facts is not None and facts.pool_allocation_mode.lower() == "batchservice":
        findings.append(Finding("error", (
            f"the profile asks for Spot nodes (--saje-spot or --preemptible-rules), but Batch account {facts.name} is"
            " in Batch service pool allocation mode, which has no Spot nodes (its low-priority nodes were retired on"
            " 30 September 2025). Use an account in user subscription mode (saje deploy --pool-allocation-mode"
            f" UserSubscription), or run on dedicated nodes (drop --saje-spot / --preemptible-rules). Source: {SPOT_SOURCE}")))
    if wants_spot and facts is None:
        findings.append(Finding("warning", (
            "could not read the Batch account's pool allocation mode (no ARM access: a subscription id in the"
            " credential profile or AZURE_SUBSCRIPTION_ID, and an Entra ID credential, are needed). Spot nodes need an"
            f" account in user subscription mode; in Batch service mode the Spot pools will not grow. Source: {SPOT_SOURCE}")))
    if subnet and shared_key:
        findings.append(Finding("warning", (
            "--saje-subnet-id with shared-key authentication: Azure Batch requires Microsoft Entra ID authentication"
            " to create pools in a virtual network, so the pool creation may be refused. Use a credential profile"
            f" with a service principal, or DefaultAzureCredential. Source: {VNET_SOURCE}")))
    return findings


def _account_name(endpoint: str) -> str:
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    path = [p for p in parts.path.split("/") if p]
    if path:  # the emulator's http://127.0.0.1:PORT/ACCOUNT
        return path[0]
    return (parts.hostname or "").split(".")[0]


def _netloc(endpoint: str) -> str:
    return urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}").netloc.lower()


class AccountLookupError(Exception):
    """The Batch account behind an endpoint could not be read through ARM; the message says why."""


def arm_account(endpoint: str, settings: Any, account_name: str | None = None):
    """(Arm, the account's azure-mgmt-batch model) for the account behind `endpoint` (its
    subscription's Batch accounts, matched by endpoint and name). The caller closes the Arm.
    Raises AccountLookupError naming what is missing."""
    from .credentials import CredentialsError, get_profile, resolve_storage_credential
    from .setup.clients import Arm, connection_settings

    subscription = os.environ.get("AZURE_SUBSCRIPTION_ID")
    try:
        if getattr(settings, "credential_profile", None):
            profile = get_profile(settings.credential_profile, getattr(settings, "credentials_file", None))
            subscription = profile.subscription_id or subscription
        if not subscription:
            raise AccountLookupError("no subscription id is known (the credential profile's subscription_id, or"
                                     " AZURE_SUBSCRIPTION_ID)")
        connection = connection_settings({})
        arm = Arm(subscription, resolve_storage_credential(settings), connection["arm_endpoint"], connection["ca_bundle"])
    except CredentialsError as exc:
        raise AccountLookupError(f"no ARM credential: {exc}") from None
    name = (account_name or _account_name(endpoint)).lower()
    try:
        accounts = [a for a in arm.batch.batch_account.list() if _netloc(a.account_endpoint or "") == _netloc(endpoint)]
        if len(accounts) > 1:
            accounts = [a for a in accounts if (a.name or "").lower() == name]
        if len(accounts) != 1:
            raise AccountLookupError(f"no single Batch account with endpoint {endpoint} in subscription {subscription}")
        return arm, accounts[0]
    except AccountLookupError:
        arm.close()
        raise
    except Exception as exc:  # noqa: BLE001 - any ARM problem is the lookup's failure
        arm.close()
        raise AccountLookupError(f"could not read the Batch account through ARM: {exc}") from None


def account_facts(endpoint: str, settings: Any, account_name: str | None = None) -> AccountFacts | None:
    """The account behind `endpoint`, read through ARM; None, with the reason logged, when ARM cannot be read."""
    try:
        arm, account = arm_account(endpoint, settings, account_name)
    except AccountLookupError as exc:
        log.info("SAJE: the Batch account's allocation mode is not checked: %s", exc)
        return None
    try:
        mode = str(getattr(account.pool_allocation_mode, "value", account.pool_allocation_mode) or "BatchService")
        return AccountFacts(account.name, "UserSubscription" if mode.lower() == "usersubscription" else "BatchService")
    finally:
        arm.close()
