"""A pool's mountConfiguration on emulated nodes: file shares as directories of the host.

What Azure Batch does ("Mount a virtual file system on a Batch pool", learn.microsoft.com; REST
reference MountConfiguration and its four kinds): when a node joins the pool, restarts or is
reimaged, each file system is mounted under AZ_BATCH_NODE_MOUNTS_DIR/<relativeMountPath>, with a
log ``<type>-<relativeMountPath>.log`` beside it; at most 10 per pool; a mount that fails makes the
node ``unusable`` with a node error ("Mount Configuration Error | An error was encountered while
configuring specified mount(s)", details Message and MountConfigurationPath).

How the emulator does it: every share is a directory of the host, ``<data-dir>/fileshares/<kind>-<hash
of its source>``, and a node's mount is a symbolic link to it, so all nodes (of every pool) that
mount the same source see the same files at once, as NFS, SMB and Azure Files clients do:

* NFS (``source``), CIFS (``source``) and Azure Files (``azureFileUrl``) shares start empty and
  live as long as the data directory;
* an Azure Blob container (blobfuse) is the account's blob storage (the emulator's Azurite, its
  auto-storage, whatever ``accountName`` says): its blobs are downloaded into the share when a node
  mounts it, and after each task on a node that has it mounted, the files that changed are uploaded
  (blobfuse uploads a file when it is closed: the emulator does it when the task ends). A container
  that does not exist fails the mount.

Credentials (account keys, SAS, CIFS passwords) are not checked, and never written to a log.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import errors

MAX_MOUNTS = 10  # "The maximum number of mounted file systems on a pool is 10" (Batch quotas and limits)
KINDS = {"azureBlobFileSystemConfiguration": "blobfuse", "nfsMountConfiguration": "nfs",
         "cifsMountConfiguration": "cifs", "azureFileShareConfiguration": "fshare"}
ERROR = ("MountConfigurationError", "An error was encountered while configuring specified mount(s)")


class MountError(Exception):
    """A mount that failed on a node: the node error Batch reports."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}")

    def node_error(self) -> dict[str, Any]:
        code, message = ERROR
        return {"code": code, "message": message,
                "errorDetails": [{"name": "Message", "value": self.message},
                                 {"name": "MountConfigurationPath", "value": self.path}]}


@dataclass(frozen=True)
class Mount:
    kind: str  # blobfuse, nfs, cifs, fshare (the log file's prefix)
    relative_path: str
    source: str  # what identifies the share (never a secret)
    container: str | None = None  # blobfuse: the blob container

    @property
    def share_name(self) -> str:
        return f"{self.kind}-{hashlib.sha256(self.source.encode()).hexdigest()[:16]}"


def parse(entry: Mapping[str, Any]) -> Mount:
    """One mountConfiguration entry; ValueError names what is wrong."""
    kinds = [k for k in KINDS if entry.get(k)]
    if len(kinds) != 1:
        raise ValueError("exactly one of azureBlobFileSystemConfiguration, nfsMountConfiguration, "
                         "cifsMountConfiguration or azureFileShareConfiguration must be specified")
    key = kinds[0]
    config = entry[key]
    relative = str(config.get("relativeMountPath") or "")
    if not relative or relative.startswith("/") or ".." in Path(relative).parts:
        raise ValueError(f"{key}.relativeMountPath {relative!r} must be a relative path inside AZ_BATCH_NODE_MOUNTS_DIR")
    if key == "azureBlobFileSystemConfiguration":
        secrets = [k for k in ("accountKey", "sasKey", "identityReference") if config.get(k)]
        if len(secrets) != 1:
            raise ValueError(f"{key}: exactly one of accountKey, sasKey and identityReference must be specified")
        container = str(config.get("containerName") or "")
        return Mount("blobfuse", relative, f"{config.get('accountName')}/{container}", container)
    if key == "azureFileShareConfiguration":
        return Mount("fshare", relative, str(config.get("azureFileUrl") or "").rstrip("/").lower())
    return Mount(KINDS[key], relative, str(config.get("source") or ""))


def validate(entries: Sequence[Mapping[str, Any]], identities: Sequence[str] = ()) -> None:
    """What the service refuses in a pool's mountConfiguration (400 InvalidPropertyValue: the code is
    assumed; the limit of 10 is documented). Two file systems at one relativeMountPath are accepted:
    the REST spec's example Pools_CreatePool_MountConfiguration (201) has an NFS and a CIFS share at
    "mountpath"; the node's mount fails instead (see FileShares.mount_all).
    Also refused: a blob container mounted with an identity the pool does not have ("ensure
    that the identity has been assigned to the pool", the code assumed)."""
    if len(entries) > MAX_MOUNTS:
        raise errors.invalid_property("mountConfiguration", len(entries), f"A pool can mount at most {MAX_MOUNTS} file systems.")
    for index, entry in enumerate(entries):
        try:
            parse(entry)
        except ValueError as exc:
            raise errors.invalid_property(f"mountConfiguration[{index}]", "set", str(exc)) from None
        reference = ((entry.get("azureBlobFileSystemConfiguration") or {}).get("identityReference") or {}).get("resourceId")
        if reference and reference.lower() not in {i.lower() for i in identities}:
            raise errors.invalid_property(f"mountConfiguration[{index}].azureBlobFileSystemConfiguration.identityReference",
                                          reference, "The identity is not one of the pool's user-assigned identities.")


class FileShares:
    """The emulator's shares (one directory each) and the nodes' mounts of them."""

    def __init__(self, data_dir: Path, blob_service: Any = None):
        self.root = Path(data_dir) / "fileshares"
        self.blob_service = blob_service  # a callable returning a BlobServiceClient, or None
        self._lock = threading.Lock()
        self._synced: dict[str, float] = {}  # blob share -> time of its last download/upload

    def share(self, mount: Mount) -> Path:
        return self.root / mount.share_name

    def mount_all(self, mounts_dir: Path, entries: Sequence[Mapping[str, Any]]) -> None:
        """Mount every entry under a node's mounts directory; raises MountError at the first failure
        (its log says why, as the node agent's does)."""
        mounts_dir.mkdir(parents=True, exist_ok=True)
        mounted: set[str] = set()
        for entry in entries:
            mount = parse(entry)
            log = mounts_dir / f"{mount.kind}-{mount.relative_path.replace('/', '_')}.log"
            try:
                if mount.relative_path in mounted:  # the wording is the emulator's
                    raise MountError(mount.relative_path, "another file system of the pool is already mounted there")
                mounted.add(mount.relative_path)
                share = self.share(mount)
                share.mkdir(parents=True, exist_ok=True)
                if mount.kind == "blobfuse":
                    self._download(mount, share)
                link = mounts_dir / mount.relative_path
                link.parent.mkdir(parents=True, exist_ok=True)
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(share, target_is_directory=True)
            except MountError as exc:
                log.write_text(f"mount of {mount.source} failed: {exc.message}\n")
                raise
            except OSError as exc:
                log.write_text(f"mount of {mount.source} failed: {exc}\n")
                raise MountError(mount.relative_path, str(exc)) from None
            log.write_text(f"mounted {mount.source} at {link}\n")

    def shares_of(self, entries: Sequence[Mapping[str, Any]]) -> list[Path]:
        return [self.share(parse(entry)) for entry in entries]

    def after_task(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Blob shares: upload what changed since they were last synced (blobfuse's upload on close)."""
        for entry in entries:
            mount = parse(entry)
            if mount.kind == "blobfuse":
                self._upload(mount, self.share(mount))

    # ----------------------------------------------------------------- blob containers
    def _container(self, mount: Mount):
        if self.blob_service is None:
            raise MountError(mount.relative_path, "no blob storage is linked to the emulator (start it with Azurite)")
        client = self.blob_service().get_container_client(mount.container or "")
        if not client.exists():
            raise MountError(mount.relative_path, f"the blob container {mount.container!r} does not exist")
        return client

    def _download(self, mount: Mount, share: Path) -> None:
        client = self._container(mount)
        with self._lock:
            started = time.time()
            for blob in client.list_blobs():
                if blob.name.endswith("/"):
                    continue
                target = share / blob.name
                if target.is_file() and target.stat().st_size == blob.size:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    client.download_blob(blob.name).readinto(out)
            self._synced.setdefault(mount.share_name, started)

    def _upload(self, mount: Mount, share: Path) -> None:
        with self._lock:
            since = self._synced.get(mount.share_name, 0.0)
            started = time.time()
            changed = [p for p in share.rglob("*") if p.is_file() and p.stat().st_mtime >= since]
            if not changed:
                return
            client = self._container(mount)
            for path in changed:
                with open(path, "rb") as data:
                    client.upload_blob(path.relative_to(share).as_posix(), data, overwrite=True)
            self._synced[mount.share_name] = started


def entries_of(pool_rest: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    return list((pool_rest or {}).get("mountConfiguration") or [])
