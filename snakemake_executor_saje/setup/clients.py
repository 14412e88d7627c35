"""Azure management clients for the setup workflows, from a profile, a managed identity or the emulator.

One `Arm` holds the credential and makes each azure-mgmt client on first use. Connection settings
(all optional, the workflows' config keys of the same names):

    subscription_id            the subscription (else the admin profile's, else $AZURE_SUBSCRIPTION_ID)
    profile                    admin-level credential profile in saje.json (else DefaultAzureCredential)
    credentials_file           the saje.json to read (default ~/.azure/saje.json)
    managed_identity_client_id act as this user-assigned managed identity (ManagedIdentityCredential)
    arm_endpoint               ARM's URL (default https://management.azure.com, or $SAJE_ARM_ENDPOINT:
                               the emulator's endpoint)
    ca_bundle                  a CA file to trust (the emulator's certificate; or $SAJE_ARM_CA_BUNDLE)

The clients get `credential_scopes=["https://management.azure.com/.default"]` whatever the endpoint, so
the same code talks to Azure and to the emulator (docs/emulator-arm.md).
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..credentials import CredentialProfile, CredentialsError, get_profile, resolve_credential

ARM_ENDPOINT = "https://management.azure.com"
SCOPE = "https://management.azure.com/.default"

__all__ = ["Arm", "ARM_ENDPOINT", "SCOPE", "principal_of", "connection_settings", "subscription_for"]


def connection_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The connection keys of a workflow config, with the environment's defaults filled in."""
    return {
        "subscription_id": config.get("subscription_id") or None,
        "profile": config.get("profile") or None,
        "credentials_file": config.get("credentials_file") or None,
        "managed_identity_client_id": config.get("managed_identity_client_id") or None,
        "arm_endpoint": (config.get("arm_endpoint") or os.environ.get("SAJE_ARM_ENDPOINT") or ARM_ENDPOINT).rstrip("/"),
        "ca_bundle": config.get("ca_bundle") or os.environ.get("SAJE_ARM_CA_BUNDLE") or None,
    }


def _token_claims(token: str) -> dict[str, Any]:
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def principal_of(credential: Any) -> str | None:
    """The object id (``oid``) of whoever ``credential`` signs in as: a management token's claim."""
    return _token_claims(credential.get_token(SCOPE).token).get("oid")


def subscription_for(config: Mapping[str, Any]) -> str | None:
    """The subscription a config means, without signing in (names derived from it stay stable)."""
    settings = connection_settings(config)
    if settings["subscription_id"]:
        return settings["subscription_id"]
    if settings["profile"]:
        try:
            profile = get_profile(settings["profile"], settings["credentials_file"])
        except CredentialsError:
            return None
        if profile.subscription_id:
            return profile.subscription_id
    return os.environ.get("AZURE_SUBSCRIPTION_ID") or None


@dataclass
class Arm:
    """The management plane for one subscription: a credential and lazily made clients."""

    subscription_id: str
    credential: Any
    endpoint: str = ARM_ENDPOINT
    ca_bundle: str | None = None
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Arm":
        settings = connection_settings(config)
        profile: CredentialProfile | None = None
        if settings["profile"]:
            profile = get_profile(settings["profile"], settings["credentials_file"])
        if settings["managed_identity_client_id"]:
            from azure.identity import ManagedIdentityCredential

            credential = ManagedIdentityCredential(client_id=settings["managed_identity_client_id"])
        else:
            credential = resolve_credential(profile, purpose="admin")
        subscription = subscription_for(config)
        if not subscription:
            raise CredentialsError(
                "No subscription: set subscription_id in the config (--subscription), subscription_id in the"
                " admin profile, or AZURE_SUBSCRIPTION_ID.")
        return cls(subscription, credential, settings["arm_endpoint"], settings["ca_bundle"])

    def _make(self, name: str, cls: type) -> Any:
        if name not in self._clients:
            kwargs: dict[str, Any] = {"base_url": self.endpoint, "credential_scopes": [SCOPE]}
            if self.ca_bundle:
                kwargs["connection_verify"] = self.ca_bundle
            self._clients[name] = cls(self.credential, self.subscription_id, **kwargs)
        return self._clients[name]

    @property
    def resource(self):
        from azure.mgmt.resource.resources import ResourceManagementClient

        return self._make("resource", ResourceManagementClient)

    @property
    def storage(self):
        from azure.mgmt.storage import StorageManagementClient

        return self._make("storage", StorageManagementClient)

    @property
    def batch(self):
        from azure.mgmt.batch import BatchManagementClient

        return self._make("batch", BatchManagementClient)

    @property
    def auth(self):
        from azure.mgmt.authorization import AuthorizationManagementClient

        return self._make("auth", AuthorizationManagementClient)

    @property
    def compute(self):
        from azure.mgmt.compute import ComputeManagementClient

        return self._make("compute", ComputeManagementClient)

    def group_scope(self, resource_group: str) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{resource_group}"

    def batch_data_client(self, account_endpoint: str, account_name: str, key: str):
        """A Batch data-plane client for an account, signed with its shared key from listKeys."""
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential

        url = account_endpoint if "://" in account_endpoint else f"https://{account_endpoint}"
        kwargs: dict[str, Any] = {"connection_verify": self.ca_bundle} if self.ca_bundle else {}
        return BatchClient(url, AzureNamedKeyCredential(account_name, key), **kwargs)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
