"""Pure: ``--saje-mounts`` into the pools' ``mountConfiguration`` (Batch's virtual file system mounts).

Every node of the pools SAJE creates mounts each file system under
``$AZ_BATCH_NODE_MOUNTS_DIR/<PATH>`` before it takes tasks ("Mount a virtual file system on a Batch
pool", learn.microsoft.com). One entry per file system, ``PATH=URL``, separated by spaces::

    data=nfs://10.0.0.4/exports/data                                  NFS (source 10.0.0.4:/exports/data)
    lab=smb://alice@fileserver/projects?secret_env=LAB_PASSWORD       CIFS/SMB
    refs=https://myacct.file.core.windows.net/refs?secret_env=REFS_KEY   Azure Files (SMB)
    refs=nfs://myacct.file.core.windows.net/myacct/refs               Azure Files over NFS
    scratch=https://myacct.blob.core.windows.net/scratch              Azure Blob container (blobfuse)

Query parameters: ``options`` (the mount or blobfuse options, e.g. ``options=-o+vers=3.0``; ``+`` is a
space) and ``secret_env``: the name of the environment variable that holds the secret Batch needs
(the Azure Files account key, the CIFS password, a blob container's account key or SAS), so that no
secret is ever in a profile or on a command line. A blob container without ``secret_env`` is mounted
with the pools' managed identity (``--saje-node-identity``).
"""
from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Mapping
from urllib.parse import parse_qs, urlsplit

from azure.batch import models
from snakemake_interface_common.exceptions import WorkflowError

__all__ = ["MountSettingError", "MAX_MOUNTS", "parse_mounts"]

MAX_MOUNTS = 10  # Batch: "The maximum number of mounted file systems on a pool is 10"
_FILES_HOST = re.compile(r"^([a-z0-9]{3,24})\.file\.core\.windows\.net$")
_BLOB_HOST = re.compile(r"^([a-z0-9]{3,24})\.blob\.core\.windows\.net$")
_EXAMPLES = ("data=nfs://10.0.0.4/exports/data, lab=smb://user@server/share?secret_env=VAR, "
             "refs=https://ACCOUNT.file.core.windows.net/SHARE?secret_env=VAR, "
             "scratch=https://ACCOUNT.blob.core.windows.net/CONTAINER")


class MountSettingError(WorkflowError):
    """A --saje-mounts entry SAJE cannot turn into a mount; the message says what to write."""


def parse_mounts(text: str | None, *, node_identity: str | None = None,
                 environ: Mapping[str, str] = os.environ) -> list[models.MountConfiguration]:
    """The pools' mountConfiguration for ``--saje-mounts``; MountSettingError on a bad entry."""
    entries = (text or "").split()
    if len(entries) > MAX_MOUNTS:
        raise MountSettingError(f"--saje-mounts: {len(entries)} file systems, but a Batch pool mounts at most {MAX_MOUNTS}.")
    out, paths = [], set()
    for entry in entries:
        path, sep, url = entry.partition("=")
        if not sep or not path or not url:
            raise MountSettingError(f"--saje-mounts: {entry!r} is not PATH=URL (e.g. {_EXAMPLES}).")
        parts = PurePosixPath(path).parts
        if path.startswith("/") or ".." in parts:
            raise MountSettingError(f"--saje-mounts: {path!r} must be a path inside $AZ_BATCH_NODE_MOUNTS_DIR, "
                                    "relative and without '..'.")
        if path in paths:
            raise MountSettingError(f"--saje-mounts: two file systems are mounted at {path!r}.")
        paths.add(path)
        out.append(_mount(path, url, node_identity, environ))
    return out


def _mount(path: str, url: str, node_identity: str | None, environ: Mapping[str, str]) -> models.MountConfiguration:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"options", "secret_env"}
    if unknown:
        raise MountSettingError(f"--saje-mounts: {path}: unknown query parameter(s) {', '.join(sorted(unknown))}; "
                                "only options and secret_env are read.")
    options = query.get("options")
    host = (parts.hostname or "").lower()
    share = parts.path.strip("/")
    if parts.scheme == "nfs" and host and share:
        return models.MountConfiguration(nfs_mount_configuration=models.NfsMountConfiguration(
            source=f"{host}:/{share}", relative_mount_path=path, mount_options=options))
    if parts.scheme == "smb" and host and share:
        if not parts.username:
            raise MountSettingError(f"--saje-mounts: {path}: an SMB share needs its user, smb://USER@{host}/{share}.")
        return models.MountConfiguration(cifs_mount_configuration=models.CifsMountConfiguration(
            username=parts.username, source=f"//{host}/{share}", relative_mount_path=path, mount_options=options,
            password=_secret(path, query, environ, "the share's password")))
    files, blob = _FILES_HOST.match(host), _BLOB_HOST.match(host)
    if parts.scheme == "https" and files and share and "/" not in share:
        return models.MountConfiguration(azure_file_share_configuration=models.AzureFileShareConfiguration(
            account_name=files.group(1), azure_file_url=f"https://{host}/{share}", relative_mount_path=path,
            mount_options=options, account_key=_secret(path, query, environ, "the storage account key")))
    if parts.scheme == "https" and blob and share and "/" not in share:
        secret = _secret(path, query, environ, "the account key or a SAS") if "secret_env" in query else None
        if secret is None and not node_identity:
            raise MountSettingError(
                f"--saje-mounts: {path}: a blob container is mounted with a key, a SAS or a managed identity: add "
                "?secret_env=VAR (VAR holding the key or SAS) or set --saje-node-identity.")
        is_sas = secret is not None and (secret.startswith("?") or "sig=" in secret)
        return models.MountConfiguration(azure_blob_file_system_configuration=models.AzureBlobFileSystemConfiguration(
            account_name=blob.group(1), container_name=share, relative_mount_path=path, blobfuse_options=options,
            sas_key=secret.lstrip("?") if is_sas else None, account_key=None if is_sas else secret,
            identity_reference=None if secret else models.BatchNodeIdentityReference(resource_id=node_identity)))
    raise MountSettingError(f"--saje-mounts: {path}: {_redacted(url)!r} is not a file system SAJE can mount "
                            f"(e.g. {_EXAMPLES}).")


def _secret(path: str, query: Mapping[str, str], environ: Mapping[str, str], what: str) -> str:
    name = query.get("secret_env")
    if not name:
        raise MountSettingError(f"--saje-mounts: {path}: Batch needs {what}; add ?secret_env=VAR, VAR being the "
                                "environment variable that holds it (never the secret itself).")
    value = environ.get(name)
    if not value:
        raise MountSettingError(f"--saje-mounts: {path}: environment variable {name} (secret_env, {what}) is not set.")
    return value


def _redacted(url: str) -> str:
    """A URL as it may be shown: without its query (a SAS pasted into a URL stays out of messages)."""
    return url.split("?", 1)[0]
