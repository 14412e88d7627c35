"""Managed identities on emulated nodes: a pool's user-assigned identities and each node's identity
endpoint, as Azure's Instance Metadata Service (IMDS) serves them on a VM.

On Azure a node of a pool created with ``identity.userAssignedIdentities`` (through ARM only:
"Creating pools with managed identities is not currently supported with the Batch ... client
library", learn.microsoft.com, "Configure managed identities in Batch pools") gets tokens for those
identities from IMDS at http://169.254.169.254/metadata/identity/oauth2/token ("How to use managed
identities ... on an Azure VM to acquire an access token"): ``GET ...?api-version=2018-02-01&
resource=<App ID URI>`` with the header ``Metadata: true`` and, when the VM has more than one
identity, ``client_id``, ``object_id`` or ``mi_res_id`` (``msi_res_id`` as MSAL sends it). The reply
is ``{access_token, expires_in, expires_on, not_before, resource, token_type, client_id}``; errors are
``{error, error_description}`` (400 ``bad_request_102`` "Required metadata header not specified",
400 ``invalid_request`` "Identity not found").

169.254.169.254 cannot be bound here, so each emulated node serves the same protocol on its own
loopback address (127.x.y.z, the node's ipAddress) and a port of its own, and its tasks get
``AZURE_POD_IDENTITY_AUTHORITY_HOST=http://<address>:<port>``: the variable the Azure SDKs read to
send IMDS requests elsewhere (azure-identity's ImdsCredential and MSAL's managed identity client
for Python; the other Azure SDKs read it too). That variable is the one difference a task sees.
Tokens are the emulator's own (auth.TokenIssuer: issuer https://sts.windows.net/<tenant>/, the
asked-for resource as audience, the identity's principal id as subject), which Azurite accepts with
``--oauth basic`` over HTTPS, and the Batch endpoint accepts too.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError

from .auth import TokenIssuer

log = logging.getLogger(__name__)

TOKEN_PATH = "/metadata/identity/oauth2/token"
LIFETIME_SECONDS = 24 * 3600 - 1  # IMDS tokens last about a day ("expires_in": "86399" is typical)
_NAMESPACE = uuid.UUID("5a1e0d3c-7b7c-4f3e-9c55-000000000aaa")


@dataclass(frozen=True)
class Identity:
    """A user-assigned identity: its ARM id, and the client and principal (object) ids Entra gave it
    (derived from the id here, so they are stable across restarts)."""

    resource_id: str

    @property
    def client_id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, "client:" + self.resource_id.lower()))

    @property
    def principal_id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, "principal:" + self.resource_id.lower()))

    def rest(self) -> dict[str, str]:
        """BatchUserAssignedIdentity as the data plane returns it."""
        return {"resourceId": self.resource_id, "clientId": self.client_id, "principalId": self.principal_id}


def pool_identity(resource_ids: Iterable[str]) -> dict[str, Any]:
    """The pool's ``identity`` as the data plane returns it (BatchPoolIdentity)."""
    ids = list(resource_ids)
    if not ids:
        return {"type": "None"}
    return {"type": "UserAssigned", "userAssignedIdentities": [Identity(i).rest() for i in ids]}


def identities_of(pool_rest: Mapping[str, Any] | None) -> list[Identity]:
    identity = (pool_rest or {}).get("identity") or {}
    return [Identity(entry["resourceId"]) for entry in identity.get("userAssignedIdentities") or []]


def choose(identities: list[Identity], *, client_id: str | None = None, object_id: str | None = None,
           resource_id: str | None = None) -> Identity:
    """The identity a token request names (or the only one); LookupError with IMDS's description."""
    if not identities:
        raise LookupError("Identity not found")
    for value, key in ((client_id, "client_id"), (object_id, "principal_id"), (resource_id, "resource_id")):
        if value:
            for identity in identities:
                if getattr(identity, key).lower() == value.lower():
                    return identity
            raise LookupError("Identity not found")
    if len(identities) > 1:
        raise LookupError("Multiple user assigned identities exist, please specify the clientId / resourceId of the "
                          "identity in the token request")
    return identities[0]


def issue(issuer: TokenIssuer, identity: Identity, resource: str, now: float | None = None) -> tuple[str, int]:
    """A token for ``identity`` with ``resource`` as audience, and its expiry (epoch seconds)."""
    issued = int(now if now is not None else time.time())
    token = issuer.issue(resource, identity.principal_id, LIFETIME_SECONDS, now=issued,
                         extra={"appid": identity.client_id, "xms_mirid": identity.resource_id, "idtyp": "app"})
    return token, issued + LIFETIME_SECONDS


def token_response(issuer: TokenIssuer, identities: list[Identity], path: str, query: Mapping[str, str],
                   headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """IMDS's answer to a token request: (status, JSON body)."""
    if path.rstrip("/") != TOKEN_PATH:
        return 404, {"error": "not_found", "error_description": f"{path} is not an identity endpoint"}
    if headers.get("metadata", "") != "true":
        return 400, {"error": "bad_request_102", "error_description": "Required metadata header not specified"}
    resource = query.get("resource", "")
    if not resource:
        return 400, {"error": "invalid_request", "error_description": "The request is missing a required parameter: resource"}
    try:
        identity = choose(identities, client_id=query.get("client_id"), object_id=query.get("object_id"),
                          resource_id=query.get("mi_res_id") or query.get("msi_res_id"))
    except LookupError as exc:
        return 400, {"error": "invalid_request", "error_description": str(exc)}
    issued = int(time.time())
    token, expires = issue(issuer, identity, resource, issued)
    return 200, {"access_token": token, "refresh_token": "", "expires_in": str(expires - issued),
                 "expires_on": str(expires), "ext_expires_in": str(expires - issued), "not_before": str(issued),
                 "resource": resource, "token_type": "Bearer", "client_id": identity.client_id}


class NodeCredential:
    """The node agent's own use of a pool identity (resource and output files, blob mounts with an
    identityReference): a TokenCredential, as the agent would get from IMDS."""

    def __init__(self, issuer: TokenIssuer, identities: list[Identity], resource_id: str):
        self.issuer, self.identities, self.resource_id = issuer, identities, resource_id

    def _token(self, scopes: tuple[str, ...]) -> tuple[str, int]:
        try:
            identity = choose(self.identities, resource_id=self.resource_id)
        except LookupError:
            raise ClientAuthenticationError(
                f"identity {self.resource_id} is not an identity of the node's pool") from None
        resource = scopes[0].removesuffix("/.default") if scopes else ""
        return issue(self.issuer, identity, resource)

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(*self._token(scopes))

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo(*self._token(scopes))


class NodeEndpoint:
    """One node's identity endpoint, on the node's own loopback address."""

    def __init__(self, address: str, issuer: TokenIssuer, identities: Callable[[], list[Identity]]):
        handler = _handler(issuer, identities)
        try:
            self._server = ThreadingHTTPServer((address, 0), handler)
        except OSError:  # an address this machine cannot bind: the loopback of the emulator itself
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.authority = f"http://{self._server.server_address[0]}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"imds-{address}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(issuer: TokenIssuer, identities: Callable[[], list[Identity]]):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body = token_response(issuer, identities(), parts.path, query, headers)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no access log, no token in one
            return

    return Handler
