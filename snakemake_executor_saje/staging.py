"""Workflow sources and local files to and from blob storage, for runs without default storage.

Each run gets its own container (`<--saje-storage-container>-<run id>`, `saje-...` by default), so
that a run's SAS tokens reach nothing of another run's. The source archive (both data routes) and,
without default storage, the input files go up once; tasks get them as Batch resource files through
a read-only SAS, and write their outputs back as Batch output files through a create/write-only SAS
on that container. Outputs go up on task success only, logs and benchmarks also after a failure.
The executor downloads a job's outputs only after its task succeeded, to a temporary name first, so
a half-written output is never taken as done. SAS tokens are short-lived and never logged.

Credentials: AZURE_STORAGE_CONNECTION_STRING (Azurite, or an account key) signs service SAS;
otherwise `storage_account_url` with an Entra credential signs user delegation SAS.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote

from azure.batch import models
from snakemake_interface_common.exceptions import WorkflowError
from azure.storage.blob import (
    BlobServiceClient,
    ContainerSasPermissions,
    generate_container_sas,
)

log = logging.getLogger(__name__)

SOURCES_BLOB = "sources/snakemake-workflow-sources.tar.xz"
# The task's stdout.txt and stderr.txt, which sit one level above its working directory.
LOG_FILE_PATTERN = "../std*.txt"
# ResourceFile.fileMode of staged programs. Batch applies 0770 on Linux when it is unset (so
# they would run anyway); SAJE says it rather than rely on that default.
EXECUTABLE_MODE = "0755"
SAS_LIFETIME = dt.timedelta(hours=12)
_CONTAINER_CHARS = re.compile(r"[^a-z0-9-]")


def container_name_for(run_id: str, prefix: str = "saje") -> str:
    """A valid container name (3-63 chars, lowercase, digits, single hyphens) for a run."""
    name = _CONTAINER_CHARS.sub("-", f"{prefix}-{run_id}".lower())
    name = re.sub("-+", "-", name).strip("-")
    if len(name) > 63:
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name


def output_blob(task_key: str, path: str) -> str:
    return f"outputs/{task_key}/{path}"


def log_blob(task_key: str, name: str) -> str:
    return f"logs/{task_key}/{name}"


def input_blob(path: str) -> str:
    return f"inputs/{path}"


@dataclass
class Staging:
    service: BlobServiceClient
    container: str
    account_key: str | None = field(default=None, repr=False)
    _uploaded: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _sas: dict[str, tuple[dt.datetime, str]] = field(default_factory=dict, repr=False)
    _moved: list[int] = field(default_factory=lambda: [0, 0], repr=False)  # bytes up, bytes down

    @classmethod
    def connect(cls, run_id: str, *, account_url: str | None, credential: Any = None,
                prefix: str = "saje", metadata: dict[str, str] | None = None) -> "Staging":
        """The run's container, created with `metadata` (the run's tag, runs.py)."""
        found = blob_service(account_url, credential)
        if found is None:
            raise StagingError(
                "No storage for staging: the run has no default storage provider, so SAJE stages files itself and "
                "needs a blob account. Set --saje-storage-account-url (with az login or a managed identity), or "
                "AZURE_STORAGE_CONNECTION_STRING, or use --default-storage-provider azure."
            )
        staging = cls(found[0], container_name_for(run_id, prefix), found[1])
        staging._create_container(metadata)
        return staging

    @classmethod
    def attach(cls, container_url: str, credential: Callable[[], Any] | None = None) -> "Staging":
        """An existing run's container, to read from another process (`saje job logs`): through
        AZURE_STORAGE_CONNECTION_STRING when it names that account (Azurite, an account key),
        else with `credential()` (Entra; default DefaultAzureCredential). A SAS in the URL is
        dropped: the copies a task wrote with it are read with the caller's own rights."""
        account_url, _, container = container_url.split("?", 1)[0].rstrip("/").rpartition("/")
        connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection_string:
            service = BlobServiceClient.from_connection_string(connection_string)
            if service.url.rstrip("/") == account_url:
                return cls(service, container, _key_from_connection_string(connection_string))
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential
        return cls(BlobServiceClient(account_url, credential=credential()), container)

    def _create_container(self, metadata: dict[str, str] | None = None) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self.service.create_container(self.container, metadata=metadata)
        except ResourceExistsError:
            pass

    def set_metadata(self, metadata: dict[str, str]) -> None:
        """Replace the container's metadata (the run's heartbeat)."""
        self.service.get_container_client(self.container).set_container_metadata(metadata)

    @property
    def container_url(self) -> str:
        return f"{self.service.url.rstrip('/')}/{self.container}"

    # ----------------------------------------------------------------- SAS
    def _container_sas(self, permission: str) -> str:
        """A cached container SAS; renewed when less than half its lifetime is left."""
        now = dt.datetime.now(dt.timezone.utc)
        with self._lock:
            cached = self._sas.get(permission)
            if cached and cached[0] - now > SAS_LIFETIME / 2:
                return cached[1]
        expiry = now + SAS_LIFETIME
        start = now - dt.timedelta(minutes=5)
        permissions = ContainerSasPermissions.from_string(permission)
        if self.account_key:
            token = generate_container_sas(self.service.account_name, self.container, account_key=self.account_key,
                                           permission=permissions, expiry=expiry, start=start)
        else:
            delegation = self.service.get_user_delegation_key(start, expiry)
            token = generate_container_sas(self.service.account_name, self.container, user_delegation_key=delegation,
                                           permission=permissions, expiry=expiry, start=start)
        with self._lock:
            self._sas[permission] = (expiry, token)
        return token

    def read_url(self) -> str:
        """Container URL with a read-only SAS: what resource files download from."""
        return f"{self.container_url}?{self._container_sas('r')}"

    def write_url(self) -> str:
        """Container URL with a create/write-only SAS: outputs can be written, not read or listed."""
        return f"{self.container_url}?{self._container_sas('cw')}"

    # ----------------------------------------------------------------- up
    def upload_file(self, local: Path, blob: str) -> None:
        with open(local, "rb") as data:
            self.upload_data(blob, data)

    def upload_data(self, blob: str, data) -> None:
        self.service.get_blob_client(self.container, blob).upload_blob(data, overwrite=True)
        size = len(data) if isinstance(data, (bytes, bytearray, str)) else os.fstat(data.fileno()).st_size
        self._count(size, 0)

    def traffic(self) -> tuple[int, int]:
        """Bytes this run's SAJE moved (up to blob storage, down from it), for the run summary."""
        with self._lock:
            return self._moved[0], self._moved[1]

    def _count(self, up: int, down: int) -> None:
        with self._lock:
            self._moved[0] += up
            self._moved[1] += down

    def upload_sources(self, archive: Path) -> models.ResourceFile:
        self.upload_file(archive, SOURCES_BLOB)
        return self.resource_file(SOURCES_BLOB, Path(SOURCES_BLOB).name)

    def resource_file(self, blob: str, file_path: str, file_mode: str | None = None) -> models.ResourceFile:
        url = f"{self.container_url}/{quote(blob)}?{self._container_sas('r')}"
        return models.ResourceFile(http_url=url, file_path=file_path, file_mode=file_mode)

    def stage_inputs(self, paths: Iterable[str]) -> list[models.ResourceFile]:
        """Upload local input files (once per content change) and return their resource files."""
        return self.stage_files((path, path) for path in paths)

    def stage_files(self, pairs: Iterable[tuple[str, str]]) -> list[models.ResourceFile]:
        """Upload local files or directories (once per content change) and return resource files
        that put each at its path on the node (local path, node path), one per file."""
        files: dict[str, models.ResourceFile] = {}
        for path, at in pairs:
            for local in _expand(Path(path)):
                rel = local.as_posix()
                on_node = (Path(at) / local.relative_to(path)).as_posix() if local != Path(path) else at
                stat = local.stat()
                signature = (stat.st_size, stat.st_mtime_ns)
                with self._lock:
                    fresh = self._uploaded.get(rel) == signature
                if not fresh:
                    self.upload_file(local, input_blob(rel))
                    with self._lock:
                        self._uploaded[rel] = signature
                files[on_node] = self.resource_file(input_blob(rel), on_node,
                                                    EXECUTABLE_MODE if _executable(local) else None)
        return list(files.values())

    def output_files(self, task_key: str, paths: Iterable[str], *,
                     condition: str = "tasksuccess") -> list[models.OutputFile]:
        """Upload rules for files a task writes (files, or directories, ending in '/', with
        everything under them, names starting with '.' too), each under its path on the node.

        Outputs go up on task success only, so a failed job's outputs are never taken as done;
        its logs and benchmarks go up on task completion (or failure) with `condition`."""
        destination_url = self.write_url()
        rules = []
        for path in paths:
            if path.endswith("/"):
                target = output_blob(task_key, path.rstrip("/"))
                # Batch's '*' skips names starting with '.' unless the pattern spells the dot.
                patterns = [(f"{path.rstrip('/')}/**/*", target), (f"{path.rstrip('/')}/**/.*", target)]
            else:
                patterns = [(path, output_blob(task_key, path))]
            rules.extend(models.OutputFile(
                file_pattern=pattern,
                destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
                    container_url=destination_url, path=target)),
                upload_options=models.OutputFileUploadConfiguration(upload_condition=condition),
            ) for pattern, target in patterns)
        return rules

    def log_files(self, task_key: str) -> list[models.OutputFile]:
        """stdout.txt/stderr.txt to blob whatever the outcome: autoscale may take the node (and its
        task files) away before a failed task's logs are fetched, the blob copy outlives it."""
        return [models.OutputFile(
            file_pattern=LOG_FILE_PATTERN,
            destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
                container_url=self.write_url(), path=log_blob(task_key, ""))),
            upload_options=models.OutputFileUploadConfiguration(upload_condition="taskcompletion"),
        )]

    # ----------------------------------------------------------------- down
    def download_log(self, task_key: str, name: str, target: Path) -> bool:
        """The blob copy of a task's stdout.txt/stderr.txt (see `log_files`)."""
        return self.download_blob(log_blob(task_key, name), target)

    def download_blob(self, name: str, target: Path) -> bool:
        """One blob of the container to `target`; False when there is no such blob."""
        return self._download(self.service.get_container_client(self.container), name, target)

    def download_outputs(self, task_key: str, paths: Iterable[str],
                         local: dict[str, str] | None = None) -> list[str]:
        """Fetch files a task uploaded (`output_files`) to their local paths (the node path, or
        `local[node path]`); returns the ones missing in blob."""
        container = self.service.get_container_client(self.container)
        missing = []
        for path in paths:
            prefix = output_blob(task_key, path.rstrip("/"))
            target = (local or {}).get(path, path)
            if path.endswith("/"):
                names = [b.name for b in container.list_blobs(name_starts_with=prefix + "/")]
                if not names:
                    missing.append(path)
                for name in names:
                    self._download(container, name, Path(target.rstrip("/")) / name[len(prefix) + 1:])
                continue
            if not self._download(container, prefix, Path(target)):
                missing.append(path)
        return missing

    def _download(self, container, name: str, target: Path) -> bool:
        """One blob to `target` (through a temporary name); False if there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            stream = container.download_blob(name)
        except ResourceNotFoundError:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.saje-partial")
        with open(partial, "wb") as out:
            size = stream.readinto(out)
        os.replace(partial, target)
        self._count(0, size)
        return True

    def delete(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.service.delete_container(self.container)
        except ResourceNotFoundError:
            pass


def blob_service(account_url: str | None, credential: Any = None) -> tuple[BlobServiceClient, str | None] | None:
    """(service, account key or None) from AZURE_STORAGE_CONNECTION_STRING, else from
    `account_url` with `credential` (DefaultAzureCredential when None); None when neither is set."""
    connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string), _key_from_connection_string(connection_string)
    if account_url:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return BlobServiceClient(account_url, credential=credential), None
    return None


class StagingError(WorkflowError):
    """Staging cannot work as configured; the message says what to set."""


@dataclass(frozen=True)
class LogCopy:
    """Where a task's `log_files` rule puts the copies of its stdout.txt and stderr.txt."""

    container_url: str  # without its SAS
    prefix: str  # blob name prefix, e.g. logs/<task>/

    @property
    def container(self) -> str:
        return self.container_url.rstrip("/").rpartition("/")[2]

    def blob(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def holds(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, LOG_FILE_PATTERN.rpartition("/")[2])


def log_copy_of(task: models.BatchTask) -> LogCopy | None:
    """The blob copy of a task's logs that `Staging.log_files` asked Batch for, read from the task
    itself (its outputFiles), so any process that can read the task finds it; None without one."""
    for output in task.output_files or []:
        container = output.destination.container if output.destination else None
        if output.file_pattern == LOG_FILE_PATTERN and container is not None and container.container_url:
            return LogCopy(container.container_url.split("?", 1)[0], container.path or "")
    return None


def node_path(local: str, *, local_prefix: Path, node_prefix: Path) -> str:
    """Where a default-storage file's local copy is on the node, relative to the task's working
    directory: Snakemake keeps it under --local-storage-prefix here and under
    --remote-job-local-storage-prefix (what the job's command passes) there."""
    return (node_prefix / Path(local).relative_to(local_prefix)).as_posix()


def under(directory: str, files: Iterable[models.ResourceFile]) -> list[models.ResourceFile]:
    """The same resource files with their paths under `directory`: an MPI task's
    commonResourceFiles, which Batch downloads on every node into the task's root directory
    (AZ_BATCH_TASK_SHARED_DIR), beside stdout.txt and the working directory."""
    return [models.ResourceFile(http_url=f.http_url, file_path=f"{directory}/{f.file_path}", file_mode=f.file_mode)
            for f in files]


def _executable(path: Path) -> bool:
    """A program: executable here, or an ELF binary or a script with #!. Outputs that come back
    from a node (an MPI program compiled by an earlier job) lose their mode on the way down, so
    the content counts too."""
    if os.access(path, os.X_OK):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head == b"\x7fELF" or head.startswith(b"#!")


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _key_from_connection_string(connection_string: str) -> str | None:
    for part in connection_string.split(";"):
        if part.startswith("AccountKey="):
            return part[len("AccountKey="):]
    return None
