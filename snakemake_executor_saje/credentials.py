"""Credentials: ``~/.azure/saje.json`` profiles, DefaultAzureCredential, shared key.

The file holds named profiles (the seed's format)::

    {"credentials": [
        {"name": "batch", "tenant_id": "...", "client_id": "...", "secret": "...",
         "subscription_id": "...", "level": "batch",
         "batch_account_url": "https://acct.region.batch.azure.com"},
        {"name": "emulator", "batch_account_url": "http://127.0.0.1:10100/acct",
         "batch_account_name": "acct", "batch_account_key": "..."}
    ]}

``level`` is "admin" (setup: resource groups, Batch accounts, images) or
"batch" (pools and jobs); a batch-level profile is refused for admin work.

Like ssh with a private key, a file that others can read is refused, before
anything in it is parsed. No secret ever reaches a repr, a log line or an
error message: messages name files, profiles and fields, never values, and
the JSON parser's own exception (which carries the whole document) is not
chained.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import urlsplit

if TYPE_CHECKING:  # imported lazily at run time: azure.identity is slow to import
    from azure.core.credentials import AzureNamedKeyCredential, TokenCredential

__all__ = [
    "CredentialsError",
    "CredentialProfile",
    "LEVELS",
    "DEFAULT_CREDENTIALS_FILE",
    "load_profiles",
    "get_profile",
    "resolve_credential",
    "resolve_batch_credential",
    "resolve_batch_account_url",
    "resolve_storage_credential",
]

DEFAULT_CREDENTIALS_FILE = Path("~/.azure/saje.json")
LEVELS = ("admin", "batch")
_EXPECTED = (
    'expected {"credentials": [{"name": ..., "tenant_id": ..., "client_id": ...,'
    ' "secret": ...}, ...]}'
)
_STRING_FIELDS = (
    "subscription_id",
    "tenant_id",
    "client_id",
    "secret",
    "level",
    "batch_account_url",
    "batch_account_name",
    "batch_account_key",
)

BatchCredential = Union["TokenCredential", "AzureNamedKeyCredential"]


class CredentialsError(Exception):
    """A credentials problem the user can fix; the message says how."""


@dataclass(frozen=True)
class CredentialProfile:
    """One named entry of the credentials file. Secrets stay out of repr."""

    name: str
    subscription_id: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    secret: str | None = field(default=None, repr=False)
    level: str | None = None
    batch_account_url: str | None = None
    batch_account_name: str | None = None
    batch_account_key: str | None = field(default=None, repr=False)

    @property
    def has_service_principal(self) -> bool:
        return bool(self.tenant_id and self.client_id and self.secret)

    @property
    def has_shared_key(self) -> bool:
        return bool(self.batch_account_name and self.batch_account_key)


def _check_private(path: Path) -> None:
    if os.name == "nt":  # POSIX modes mean nothing there; ACLs are the user's job
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CredentialsError(
            f"Credentials file {path} is readable or writable by group or others"
            f" (mode {mode:04o}); it holds secrets, so SAJE refuses to use it."
            f" Fix it with: chmod 600 {path}"
        )


def _parse_entry(path: Path, index: int, entry: Any) -> CredentialProfile:
    where = f"{path}: credentials[{index}]"
    if not isinstance(entry, dict):
        raise CredentialsError(f"{where} must be an object; {_EXPECTED}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CredentialsError(f"{where} needs a non-empty string \"name\"; {_EXPECTED}")
    where = f"{path}: profile {name!r}"
    values: dict[str, str | None] = {}
    for key in _STRING_FIELDS:
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise CredentialsError(f"{where}: field {key!r} must be a string")
        values[key] = value or None
    if values["level"] is not None and values["level"] not in LEVELS:
        raise CredentialsError(
            f"{where}: level must be one of {', '.join(LEVELS)}, got {values['level']!r}"
        )
    sp_fields = [k for k in ("tenant_id", "client_id", "secret") if values[k]]
    if sp_fields and len(sp_fields) != 3:
        missing = sorted({"tenant_id", "client_id", "secret"} - set(sp_fields))
        raise CredentialsError(
            f"{where}: a service principal needs tenant_id, client_id and secret;"
            f" missing {', '.join(missing)}"
        )
    if bool(values["batch_account_name"]) != bool(values["batch_account_key"]):
        raise CredentialsError(
            f"{where}: shared key needs both batch_account_name and batch_account_key"
        )
    return CredentialProfile(name=name, **values)


def load_profiles(path: str | os.PathLike[str] | None = None) -> dict[str, CredentialProfile]:
    """Read and check the credentials file; profiles by name.

    Raises CredentialsError when the file is missing, readable by others,
    not JSON, or not in the expected shape.
    """
    path = Path(os.path.expandvars(os.fspath(path or DEFAULT_CREDENTIALS_FILE))).expanduser()
    if not path.is_file():
        raise CredentialsError(
            f"Credentials file {path} not found. Create it ({_EXPECTED}) with mode 600,"
            " or leave the credential profile unset to use DefaultAzureCredential"
            " (az login, managed identity, AZURE_* environment variables)."
        )
    _check_private(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        # `from None`: the decoder's exception carries the whole file, secrets included.
        raise CredentialsError(
            f"Credentials file {path} is not valid JSON: {exc.msg} at line"
            f" {exc.lineno}, column {exc.colno}; {_EXPECTED}"
        ) from None
    except UnicodeDecodeError:
        raise CredentialsError(f"Credentials file {path} is not UTF-8 text") from None
    if not isinstance(document, dict) or not isinstance(document.get("credentials"), list):
        raise CredentialsError(
            f"Credentials file {path} has no \"credentials\" list; {_EXPECTED}"
        )
    profiles: dict[str, CredentialProfile] = {}
    for index, entry in enumerate(document["credentials"]):
        profile = _parse_entry(path, index, entry)
        if profile.name in profiles:
            raise CredentialsError(f"{path}: profile {profile.name!r} is defined twice")
        profiles[profile.name] = profile
    return profiles


def get_profile(
    name: str, path: str | os.PathLike[str] | None = None
) -> CredentialProfile:
    """The profile called ``name``; the error lists the names that exist."""
    profiles = load_profiles(path)
    try:
        return profiles[name]
    except KeyError:
        available = ", ".join(sorted(profiles)) or "none"
        raise CredentialsError(
            f"No credential profile {name!r} in {path or DEFAULT_CREDENTIALS_FILE};"
            f" available: {available}"
        ) from None


def resolve_credential(
    profile: CredentialProfile | None, *, purpose: str = "batch"
) -> "TokenCredential":
    """An Entra ID token credential for ``purpose`` ("batch" or "admin").

    A profile with a service principal gives ClientSecretCredential; no
    profile gives DefaultAzureCredential. A batch-level profile is refused for
    admin work so that the everyday credential cannot create accounts.
    """
    if purpose not in LEVELS:
        raise ValueError(f"purpose must be one of {LEVELS}, got {purpose!r}")
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    if profile is None:
        return DefaultAzureCredential()
    if purpose == "admin" and profile.level == "batch":
        raise CredentialsError(
            f"Credential profile {profile.name!r} has level 'batch' and cannot be used"
            " for setup (creating accounts, images); use an admin-level profile or"
            " az login."
        )
    if not profile.has_service_principal:
        raise CredentialsError(
            f"Credential profile {profile.name!r} has no tenant_id/client_id/secret"
            " for an Entra ID token."
        )
    return ClientSecretCredential(profile.tenant_id, profile.client_id, profile.secret)


def _setting(settings: Any, name: str, default: Any = None) -> Any:
    value = getattr(settings, name, default)
    return default if value is None else value


def resolve_batch_credential(settings: Any) -> BatchCredential:
    """The credential for the Batch data plane, from settings-like attributes.

    Reads ``account_name``/``account_key``, ``credential_profile`` and
    ``credentials_file`` (missing attributes count as unset). In order:
    shared key from the settings (environment), the named profile (its shared
    key, else its service principal), DefaultAzureCredential.
    """
    from azure.core.credentials import AzureNamedKeyCredential

    name = _setting(settings, "account_name")
    key = _setting(settings, "account_key")
    if key and not name:
        raise CredentialsError(
            "A Batch account key is set but no account name"
            " (SNAKEMAKE_SAJE_ACCOUNT_NAME)."
        )
    if name and key:
        _check_account_key(key, "SNAKEMAKE_SAJE_ACCOUNT_KEY (--saje-account-key)")
        return AzureNamedKeyCredential(name, key)
    profile_name = _setting(settings, "credential_profile")
    if not profile_name:
        return resolve_credential(None)
    profile = get_profile(profile_name, _setting(settings, "credentials_file"))
    if profile.has_shared_key:
        _check_account_key(profile.batch_account_key,
                           f"batch_account_key of profile {profile.name!r}")
        return AzureNamedKeyCredential(profile.batch_account_name, profile.batch_account_key)
    if profile.has_service_principal:
        return resolve_credential(profile, purpose="batch")
    raise CredentialsError(
        f"Credential profile {profile_name!r} has neither a service principal"
        " (tenant_id, client_id, secret) nor a shared key (batch_account_name,"
        " batch_account_key)."
    )


def _check_account_key(key: str, where: str) -> None:
    """A shared key is base64 (Azure shows 88 characters ending in '=='); signing with anything
    else fails deep in the SDK with a binascii traceback, so say it here, naming where it came
    from and never its value."""
    try:
        decoded = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        raise CredentialsError(
            f"The Batch account key in {where} is not valid base64 ({len(key.strip())} characters; a"
            " key is 88 characters ending in '=='): it was probably cut or padded when copied."
            " Copy it again (Azure portal: the Batch account's Keys, or `az batch account keys"
            " list`)."
        )


def resolve_storage_credential(settings: Any) -> "TokenCredential":
    """The Entra credential SAJE stages blobs with: the profile's service principal (the
    identity the run already uses for Batch), else DefaultAzureCredential."""
    profile_name = _setting(settings, "credential_profile")
    if profile_name:
        profile = get_profile(profile_name, _setting(settings, "credentials_file"))
        if profile.has_service_principal:
            return resolve_credential(profile, purpose="batch")
    return resolve_credential(None)


def resolve_batch_account_url(settings: Any) -> str:
    """The Batch endpoint: the setting, else the profile's batch_account_url."""
    url = _setting(settings, "account_url")
    if url:
        return _checked_url(str(url), "--saje-account-url (SNAKEMAKE_SAJE_ACCOUNT_URL)")
    profile_name = _setting(settings, "credential_profile")
    if profile_name:
        profile = get_profile(profile_name, _setting(settings, "credentials_file"))
        if profile.batch_account_url:
            return _checked_url(profile.batch_account_url, f"batch_account_url of profile {profile.name!r}")
    raise CredentialsError(
        "No Batch account endpoint: set --saje-account-url (SNAKEMAKE_SAJE_ACCOUNT_URL)"
        " or batch_account_url in the credential profile."
    )


def _checked_url(url: str, where: str) -> str:
    """The endpoint without a trailing '/'; refused, with the likely fix, unless http(s)://host."""
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme in ("http", "https") and parts.hostname:
        return text
    if "://" not in text:
        raise CredentialsError(
            f"The Batch account URL in {where} ({text!r}) has no scheme: write"
            f" https://{text} (the emulator's is http://127.0.0.1:PORT)."
        )
    raise CredentialsError(
        f"The Batch account URL in {where} ({text!r}) is not an http(s)://host URL, e.g."
        " https://myaccount.eastus.batch.azure.com."
    )
