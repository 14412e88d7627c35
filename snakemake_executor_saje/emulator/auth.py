"""Authentication as the Azure Batch service does it: SharedKey and Entra bearer tokens.

SharedKey is checked against the string-to-sign the Python SDK builds (azure-batch 15.x
`BatchSharedKeyAuthPolicy`, and the msrest-based 14.x `SharedKeyAuth`), because a
signature is only as good as the exact bytes both sides hash.  Bearer tokens are minted
by the emulator itself (`TokenIssuer`) and handed out through an App Service style
managed-identity endpoint, so `DefaultAzureCredential` works against the emulator with
environment variables only.  Nothing here logs or echoes a key, a signature or a token.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .wire import Request, Response

BATCH_AUDIENCE = "https://batch.core.windows.net/"
ARM_AUDIENCES = ("https://management.azure.com/", "https://management.core.windows.net/")
TOKEN_PATH = "/msi/token"
IDENTITY_API_VERSION = "2019-08-01"
CLOCK_SKEW = dt.timedelta(minutes=15)

# Messages as the real service words them (observed responses quoted in public issues).
SHARED_KEY_MESSAGE = (
    "Server failed to authenticate the request. "
    "Make sure the value of Authorization header is formed correctly including the signature."
)
BEARER_MESSAGE = (
    "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly."
)

# The standard headers in SharedKey's string-to-sign, in order (REST docs and both SDKs).
_SIGNED_HEADERS = (
    "content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
    "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range",
)


class AuthError(Exception):
    """A refused request.  `status` and `odata_error()` are what the service answers.

    `reason` is a stable machine word (missing, malformed, unknown_account, signature,
    date, insecure, expired, not_yet_valid, audience, issuer, identity_header,
    bad_request) so the ARM layer can map it to its own codes.
    """

    def __init__(self, code: str = "AuthenticationFailed", message: str = SHARED_KEY_MESSAGE, *,
                 detail: str = "", reason: str = "", status: int = 403):
        super().__init__(f"{code}: {detail or message}")
        self.code, self.message, self.detail, self.reason, self.status = code, message, detail, reason, status

    @property
    def values(self) -> list[tuple[str, str]]:
        """The OData `values` pairs, ready for a generic Batch error type."""
        return [("AuthenticationErrorDetail", self.detail)] if self.detail else []

    def odata_error(self, request_id: str | None = None) -> dict[str, Any]:
        """The Batch OData error body: code, message{lang,value}, values[AuthenticationErrorDetail]."""
        request_id = request_id or str(uuid.uuid4())
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
        body: dict[str, Any] = {
            "code": self.code,
            "message": {"lang": "en-US", "value": f"{self.message}\nRequestId:{request_id}\nTime:{stamp}"},
        }
        if self.values:
            body["values"] = [{"key": key, "value": value} for key, value in self.values]
        return body

    def to_response(self, request_id: str | None = None) -> Response:
        """A ready Batch response (status, OData body, request-id header)."""
        request_id = request_id or str(uuid.uuid4())
        return Response.json(self.status, self.odata_error(request_id), {"request-id": request_id})


# --------------------------------------------------------------------------- SharedKey

def _fail(detail: str, reason: str, message: str = SHARED_KEY_MESSAGE, status: int = 403) -> AuthError:
    return AuthError("AuthenticationFailed", message, detail=detail, reason=reason, status=status)


def parse_shared_key(authorization: str | None) -> tuple[str, str]:
    """Split `SharedKey <account>:<signature>`; anything else is refused like the service does."""
    scheme, _, credential = (authorization or "").strip().partition(" ")
    account, sep, signature = credential.strip().partition(":")
    if not authorization:
        raise _fail("The Authorization header is missing.", "missing")
    if scheme != "SharedKey" or not sep or not account or not signature:
        raise _fail("The Authorization header is not in the format 'SharedKey <account>:<signature>'.", "malformed")
    return account, signature


def string_to_sign(request: Request, account: str, *, default_content_length: bool = True) -> str:
    """The canonical string the Python SDK signs.

    `default_content_length` is the 15.x rule (a non-GET/HEAD request without a
    Content-Length signs "0"); 14.x signed whatever header the prepared request carried.
    The path is the raw one with escapes intact; query values are decoded, first value
    only, blank values dropped, names sorted; ocp-* headers (any name containing
    "ocp-", as the SDK tests it) are lower-cased and sorted.
    """
    headers = {k.lower(): v for k, v in request.headers.items() if v}
    if default_content_length and request.method not in ("GET", "HEAD"):
        headers.setdefault("content-length", "0")
    lines = [request.method] + [str(headers.get(name, "")) for name in _SIGNED_HEADERS]
    text = "\n".join(lines) + "\n"
    text += "".join(f"{name}:{value}\n" for name, value in sorted((k, v) for k, v in headers.items() if "ocp-" in k))
    text += f"/{account}{request.raw_path}"
    text += "".join(f"\n{name}:{request.query[name]}" for name in sorted(request.query) if request.query[name])
    return text


def sign(key_b64: str, text: str) -> str:
    """HMAC-SHA256 of `text` under the base64 account key, base64-encoded."""
    digest = hmac.new(base64.b64decode(key_b64), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def request_date(request: Request) -> dt.datetime:
    """The request's creation time: ocp-date wins over Date, as the service documents."""
    raw = request.headers.get("ocp-date") or request.headers.get("date")
    if not raw:
        raise _fail("Request date header not specified.", "date")
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        raise _fail(f"The date header value '{raw}' is not a valid HTTP date.", "date") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def check_request_date(request: Request, now: dt.datetime | None = None) -> None:
    """Refuse requests created more than 15 minutes away from now (replay guard)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    when = request_date(request)
    if now - when > CLOCK_SKEW:
        raise _fail(f"Request date header too old: '{format_datetime(when, usegmt=True)}'", "date")
    if when - now > CLOCK_SKEW:
        raise _fail(f"Request date header too far in the future: '{format_datetime(when, usegmt=True)}'", "date")


def verify_shared_key(request: Request, accounts: Mapping[str, str | Sequence[str]], *,
                      now: dt.datetime | None = None) -> str:
    """Authenticate a SharedKey request; return the account name or raise AuthError (403).

    `accounts` maps account name to its base64 key, or to (primary, secondary) since
    Batch accepts either key.  Both SDK string-to-sign variants are accepted; the
    comparison is constant-time.
    """
    account, signature = parse_shared_key(request.headers.get("authorization"))
    keys = accounts.get(account)
    if not keys:
        raise _fail(f"The account '{account}' was not found.", "unknown_account")
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    candidates = [string_to_sign(request, account, default_content_length=flag) for flag in (True, False)]
    if not any(hmac.compare_digest(sign(key, text), signature) for key in keys for text in candidates):
        raise _fail(
            "The MAC signature found in the HTTP request is not the same as any computed signature. "
            f"Server used following string to sign: '{candidates[0]}'.", "signature")
    check_request_date(request, now)
    return account


# --------------------------------------------------------------------------- JWT

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _audiences(audience: str | Iterable[str]) -> tuple[str, ...]:
    return (audience,) if isinstance(audience, str) else tuple(audience)


def audience_matches(token_aud: str, audience: str | Iterable[str], *, exact: bool = False) -> bool:
    """Compare audiences, by default ignoring one trailing slash.

    The real Batch data plane is exact ("It should exactly match (including forward
    slash)"); pass exact=True to reproduce that.  ARM accepts both spellings.
    """
    allowed = _audiences(audience)
    if exact:
        return token_aud in allowed
    return token_aud.rstrip("/") in {a.rstrip("/") for a in allowed}


@dataclass
class TokenIssuer:
    """The emulator's own Entra: an RSA key made once per data dir, RS256 v1-style access tokens.

    Tokens are only valid for this issuer (its key is kept private in the data dir, so a
    restarted emulator still accepts the tokens its clients hold), which is the point:
    nothing outside the emulator can mint or accept them.
    """

    tenant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    principal_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048), repr=False)

    def to_saved(self) -> dict[str, str]:
        """What the data dir keeps (account.json, 0600) so that a restart is the same issuer."""
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        return {"tenantId": self.tenant_id, "principalId": self.principal_id, "privateKey": pem.decode()}

    @classmethod
    def from_saved(cls, saved: Mapping[str, str] | None) -> "TokenIssuer":
        """The saved issuer, or a new one when nothing (usable) was saved."""
        try:
            key = serialization.load_pem_private_key(saved["privateKey"].encode(), password=None)  # type: ignore[index]
            if isinstance(key, rsa.RSAPrivateKey):
                return cls(str(saved["tenantId"]), str(saved["principalId"]), key)  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            pass
        return cls()

    @property
    def issuer(self) -> str:
        return f"https://sts.windows.net/{self.tenant_id}/"

    @property
    def key_id(self) -> str:
        der = self._key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return _b64url(hashlib.sha1(der).digest())

    def issue(self, audience: str, subject: str, expires_in: int = 3600, *, now: float | None = None,
              extra: dict[str, Any] | None = None) -> str:
        """Mint an access token for `audience` (the resource, as Entra echoes it) and `subject`, with
        `extra` claims (a managed identity's appid and xms_mirid)."""
        issued = int(now if now is not None else time.time())
        oid = subject if _is_uuid(subject) else str(uuid.uuid5(uuid.NAMESPACE_URL, subject))
        claims = {"aud": audience, "iss": self.issuer, "sub": subject, "oid": oid, "tid": self.tenant_id,
                  "iat": issued, "nbf": issued, "exp": issued + int(expires_in), "ver": "1.0", **(extra or {})}
        header = {"alg": "RS256", "typ": "JWT", "kid": self.key_id, "x5t": self.key_id}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def verify(self, token: str, audience: str | Iterable[str], *, exact: bool = False,
               now: float | None = None) -> dict[str, Any]:
        """Check signature, issuer, lifetime and audience; return the claims or raise AuthError."""
        claims = self._verified_claims(token)
        if claims.get("iss") != self.issuer:
            raise _bearer_fail("Issuer validation failed. Issuer did not match.", "issuer")
        _check_lifetime(claims, time.time() if now is None else now)
        aud = str(claims.get("aud", ""))
        if not audience_matches(aud, audience, exact=exact):
            allowed = ", ".join(f"'{a}'" for a in _audiences(audience))
            raise _bearer_fail(
                f"The access token has been obtained from wrong audience or resource '{aud}'. It should exactly "
                f"match (including forward slash) with one of the allowed audiences {allowed}", "audience")
        return claims

    def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            head_b64, body_b64, sig_b64 = token.split(".")
            header = json.loads(_unb64url(head_b64))
            claims = json.loads(_unb64url(body_b64))
            signature = _unb64url(sig_b64)
        except ValueError:
            raise _bearer_fail("The access token is not a well-formed JWT.", "malformed") from None
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
            raise _bearer_fail("Signature validation failed. The token's algorithm is not accepted.", "signature")
        try:
            self._key.public_key().verify(signature, f"{head_b64}.{body_b64}".encode("ascii"),
                                          padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise _bearer_fail("Signature validation failed. Signature is invalid.", "signature") from None
        return claims


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _bearer_fail(detail: str, reason: str) -> AuthError:
    return _fail(detail, reason, BEARER_MESSAGE)


def _check_lifetime(claims: Mapping[str, Any], now: float) -> None:
    try:
        exp, nbf = float(claims["exp"]), float(claims.get("nbf", 0))
    except (KeyError, TypeError, ValueError):
        raise _bearer_fail("Lifetime validation failed. The token has no valid expiry.", "expired") from None
    if now >= exp:
        raise _bearer_fail("Lifetime validation failed. The token is expired.", "expired")
    if now < nbf:
        raise _bearer_fail("Lifetime validation failed. The token is not yet valid.", "not_yet_valid")


def verify_bearer(request: Request, issuer: TokenIssuer, audience: str | Iterable[str] = BATCH_AUDIENCE, *,
                  exact: bool = False, now: float | None = None) -> dict[str, Any]:
    """Authenticate `Authorization: Bearer <jwt>`; bearer tokens are refused over plain HTTP.

    Azure clients refuse to send a token over HTTP at all; the emulator refuses to take
    one, so a misconfigured http:// endpoint fails here as it would in Azure.
    """
    scheme, _, token = (request.headers.get("authorization") or "").strip().partition(" ")
    if not scheme:
        raise _bearer_fail("The Authorization header is missing.", "missing")
    if scheme.lower() != "bearer" or not token.strip():
        raise _bearer_fail("The Authorization header is not in the format 'Bearer <token>'.", "malformed")
    if not request.tls:
        raise _bearer_fail("Bearer token authentication is only accepted over HTTPS.", "insecure")
    return issuer.verify(token.strip(), audience, exact=exact, now=now)


@dataclass(frozen=True)
class Principal:
    """Who made a request: a SharedKey account, or a bearer token's claims."""

    scheme: str  # "SharedKey" or "Bearer"
    account: str | None = None
    claims: Mapping[str, Any] | None = None


def authenticate(request: Request, *, accounts: Mapping[str, str | Sequence[str]], issuer: TokenIssuer | None,
                 audience: str | Iterable[str] = BATCH_AUDIENCE, exact: bool = False) -> Principal:
    """Dispatch on the Authorization scheme, as the Batch front end does; raise AuthError."""
    authorization = (request.headers.get("authorization") or "").strip()
    if authorization.startswith("SharedKey "):
        return Principal("SharedKey", account=verify_shared_key(request, accounts))
    if authorization.lower().startswith("bearer ") and issuer is not None:
        return Principal("Bearer", claims=verify_bearer(request, issuer, audience, exact=exact))
    if not authorization:
        raise _fail("The Authorization header is missing.", "missing")
    raise _fail("The Authorization header uses an unsupported scheme.", "malformed")


# --------------------------------------------------------------------------- token endpoint

def _identity_error(status: int, message: str) -> Response:
    """The App Service identity endpoint's error shape (msal reads statusCode and message)."""
    body = json.dumps({"statusCode": status, "message": message}).encode()
    return Response(status, body, {"Content-Type": "application/json; charset=utf-8"})


def handle_token_request(request: Request, issuer: TokenIssuer, identity_header: str,
                         expires_in: int = 3600) -> Response:
    """Answer azure-identity's App Service managed-identity request.

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<resource> with header
    X-IDENTITY-HEADER; the reply is {access_token, expires_on (epoch seconds, a string),
    resource, token_type, client_id}.  The token's audience is the resource as asked for,
    as Entra does it.
    """
    if request.method != "GET":
        return _identity_error(405, "Only GET is supported.")
    if not hmac.compare_digest(request.headers.get("x-identity-header", "").encode(), identity_header.encode()):
        return _identity_error(401, "The X-IDENTITY-HEADER header is missing or wrong.")
    if request.query.get("api-version") != IDENTITY_API_VERSION:
        return _identity_error(400, f"The api-version must be {IDENTITY_API_VERSION}.")
    resource = request.query.get("resource", "")
    if not resource:
        return _identity_error(400, "The resource query parameter is required.")
    subject = request.query.get("client_id") or request.query.get("object_id") or request.query.get("mi_res_id")
    subject = subject or issuer.principal_id
    issued = int(time.time())
    token = issuer.issue(resource, subject, expires_in, now=issued)
    payload = {"access_token": token, "expires_on": str(issued + expires_in), "resource": resource,
               "token_type": "Bearer", "client_id": subject}
    return Response(200, json.dumps(payload).encode(), {"Content-Type": "application/json; charset=utf-8"})


def new_identity_header() -> str:
    """A fresh secret for X-IDENTITY-HEADER."""
    return secrets.token_urlsafe(32)


def token_endpoint_env(base_url: str, identity_header: str) -> dict[str, str]:
    """Environment that points azure-identity's ManagedIdentityCredential at the emulator.

    The client must not also have IDENTITY_SERVER_THUMBPRINT, IMDS_ENDPOINT or
    MSI_ENDPOINT set, or azure-identity picks another managed-identity flavour.
    """
    return {"IDENTITY_ENDPOINT": base_url.rstrip("/") + TOKEN_PATH, "IDENTITY_HEADER": identity_header}


# --------------------------------------------------------------------------- TLS

def ca_bundle(cert: Path, target: Path) -> Path:
    """A CA bundle with the machine's trusted certificates and `cert` (what the emulator serves), so
    that one file trusts both the emulated endpoints and the real ones (PyPI, Debian mirrors)."""
    import ssl

    paths = ssl.get_default_verify_paths()
    system = next((Path(p) for p in (paths.cafile, os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt")
                   if p and Path(p).is_file()), None)
    if system is None:
        try:
            import certifi

            system = Path(certifi.where())
        except ImportError:
            system = None
    parts = [system.read_text()] if system is not None else []
    target.touch(mode=0o600)  # not secret, but the data dir keeps everything private
    target.chmod(0o600)
    target.write_text("".join([*parts, "\n", cert.read_text()]))
    return target


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def self_signed_cert(directory: Path, hosts: Iterable[str] = ("127.0.0.1", "localhost")) -> tuple[Path, Path]:
    """cert.pem and key.pem in `directory`: the ones already there while they are valid for at
    least a day more (clients of a restarted emulator keep trusting it), else new ones."""
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if key_path.is_file() and cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=1):
            return cert_path, key_path
    except (OSError, ValueError):
        pass
    return generate_self_signed_cert(directory, hosts)


def generate_self_signed_cert(directory: Path, hosts: Iterable[str] = ("127.0.0.1", "localhost"),
                              days: int = 365) -> tuple[Path, Path]:
    """Write cert.pem and key.pem (self-signed, SAN with every host) so the emulator can serve HTTPS.

    The certificate is its own trust anchor: clients trust it with REQUESTS_CA_BUNDLE,
    SSL_CERT_FILE or `connection_verify=<cert path>`.  It carries the extensions strict
    X.509 verification wants (critical basicConstraints, key identifiers, key usage).
    """
    hosts = tuple(hosts)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"SAJE emulator {hosts[0]}")])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.touch(mode=0o600)  # not secret, but the data dir keeps everything private
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.chmod(0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
