"""Workflow sources and local files to and from blob storage, for runs without default storage.

Each run gets its own container (`<--saje-storage-container>-<run id>`, `saje-...` by default), so
that a run's SAS tokens reach nothing of another run's. The source archive (both data routes) and,
without default storage, the input files go up once; tasks get them as Batch resource files and
write their outputs back as Batch output files. Least privilege: each SAS a task carries names
one blob (read for each input and the sources, create/write for each output file and log), so a
task can neither read nor overwrite another task's files, the inputs or the sources archive; a
directory output, whose blob names are not known in advance, gets a create/write SAS on the
container. A task's SAS tokens live as long as the task may need them (`sas_lifetime`). The
executor downloads a job's outputs only after its task succeeded, to a temporary name first, so a
half-written output is never taken as done; logs and benchmarks also go up after a failure.
SAS tokens are never logged.

Credentials: AZURE_STORAGE_CONNECTION_STRING (Azurite, or an account key) signs service SAS;
otherwise `storage_account_url` with an Entra credential signs user delegation SAS. With a node
identity (--saje-node-identity) no SAS is made at all: resource and output files name the pools'
managed identity (identityReference), which Batch's node agent gets tokens for.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote

from azure.batch import models
from snakemake_interface_common.exceptions import WorkflowError
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

# azure.storage.blob is imported where it is used, not here: this module is imported whenever
# Snakemake loads its executor plugins, on every `snakemake` start on a machine where SAJE is
# installed (the emulator's nodes too), and the blob SDK alone takes half a second of CPU.

log = logging.getLogger(__name__)

SOURCES_BLOB = "sources/snakemake-workflow-sources.tar.xz"
SOURCES_NAME = Path(SOURCES_BLOB).name
# A task's stdout.txt and stderr.txt, which sit one level above its working directory: each
# goes up on its own (one blob SAS each), as ../<name>.
LOG_FILES = ("stdout.txt", "stderr.txt")
FETCH_SCRIPT_BLOB = "tools/saje-fetch-inputs.py"
FETCH_SCRIPT = Path(FETCH_SCRIPT_BLOB).name
MANIFEST_NAME = "saje-inputs.tsv"
# Above this many bytes of input URLs and paths a task's inputs travel in a manifest: Batch refuses
# a task beyond its size limit (RequestBodyTooLarge), and per-blob SAS URLs are long (~300 bytes).
MANIFEST_ABOVE_BYTES = 32 * 1024
UPLOAD_CONCURRENCY = 8
# ResourceFile.fileMode of staged programs. Batch applies 0770 on Linux when it is unset (so
# they would run anyway); SAJE says it rather than rely on that default.
EXECUTABLE_MODE = "0755"
# A user delegation key (hence its SAS) lives at most 7 days ("Create a user delegation SAS").
MAX_USER_DELEGATION = dt.timedelta(days=7) - dt.timedelta(minutes=10)
# The SAS lifetime of a task with no wall-clock limit (it may run for any time).
NO_LIMIT_LIFETIME = dt.timedelta(days=7)
_CONTAINER_CHARS = re.compile(r"[^a-z0-9-]")
_GLOB_CHARS = re.compile(r"[*?\[$]")


def client_options() -> dict[str, Any]:
    """The blob client's own retry policy with backoffs of about a second, not its 15 s default.

    azure-storage-blob's default ExponentialRetry waits 15 s before its first retry. A blob
    server closes idle keep-alive connections (Azurite after 5 s), so a request sent on one just
    as it closes meets a reset: one short backoff and a new connection fix that. Throttling still
    gets its retries (1, 3, 5, 9, 17 s, each +/- 0.5 s)."""
    from azure.storage.blob import ExponentialRetry

    return {
        "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=5, random_jitter_range=0.5),
        "connection_timeout": 20,
        "read_timeout": 60,
    }


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


def output_rule(task_key: str, path: str) -> tuple[str, str]:
    """(filePattern, destination path) that upload output `path` (a directory when it ends with
    '/') to the blob `output_blob(task_key, path)`, whatever characters its name holds.

    Batch output-file patterns are globs ("Batch: OutputFile.filePattern"): `*`, `?` and `[` in a
    name would match other files or none, so they are escaped the documented way, in brackets
    (`abc[*]` matches a file named `abc*`); `$` too, as `$var` is expanded first. A pattern with
    a wildcard (an escape is a bracket expression, so counts as one) makes the destination path a
    virtual directory, under which each match keeps its path below the pattern's leading
    directories that hold no wildcard; so the destination is those directories' blob prefix.
    """
    directory = path.endswith("/")
    clean = path.rstrip("/")
    pattern = escape_glob(clean) + ("/**/*" if directory else "")
    if pattern == clean:  # one plain file: the destination path is its blob name
        return pattern, output_blob(task_key, clean)
    segments = clean.split("/")
    fixed = []
    for segment in segments:
        if escape_glob(segment) != segment:
            break
        fixed.append(segment)
    return pattern, output_blob(task_key, "/".join(fixed)).rstrip("/")


def escape_glob(name: str) -> str:
    """`name` as an output-file pattern that matches exactly it: `*`, `?`, `[`, `$` in brackets."""
    return _GLOB_CHARS.sub(lambda m: f"[{m.group(0)}]", name)


def log_blob(task_key: str, name: str) -> str:
    return f"logs/{task_key}/{name}"


def input_blob(path: str) -> str:
    return f"inputs/{path}"


def manifest_blob(task_key: str) -> str:
    return f"manifests/{task_key}.tsv"


@dataclass(frozen=True)
class Staged:
    """A local file uploaded for the nodes: its blob, what identifies and verifies that version,
    and where it goes in the task's working directory."""

    blob: str
    path: str
    size: int
    etag: str
    md5: str  # base64, as Content-MD5
    executable: bool


@dataclass
class Staging:
    service: BlobServiceClient
    container: str
    account_key: str | None = field(default=None, repr=False)
    _uploaded: dict[str, tuple[tuple[int, int], Staged]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _moved: list[int] = field(default_factory=lambda: [0, 0], repr=False)  # bytes up, bytes down
    _key: tuple[dt.datetime, Any] | None = field(default=None, repr=False)  # user delegation key, until
    _reader: tuple[dt.datetime, str] | None = field(default=None, repr=False)  # container read SAS, until
    _session: Any = field(default=None, repr=False)  # requests.Session of the plain output reads
    _container_client: Any = field(default=None, repr=False)  # see _container
    _script_uploaded: bool = field(default=False, repr=False)
    identity: str | None = None  # the pools' managed identity (ARM id): files travel with it, no SAS

    @classmethod
    def connect(cls, run_id: str, *, account_url: str | None, credential: Any = None,
                prefix: str = "saje", metadata: dict[str, str] | None = None,
                identity: str | None = None) -> "Staging":
        """The run's container, created with `metadata` (the run's tag, runs.py). With `identity`
        (--saje-node-identity) tasks reach it with the pools' managed identity instead of a SAS."""
        found = blob_service(account_url, credential)
        if found is None:
            raise StagingError(
                "No storage for staging: the run has no default storage provider, so SAJE stages files itself and "
                "needs a blob account. Set --saje-storage-account-url (with az login or a managed identity), or "
                "AZURE_STORAGE_CONNECTION_STRING, or use --default-storage-provider azure."
            )
        staging = cls(found[0], container_name_for(run_id, prefix), found[1], identity=identity)
        staging._create_container(metadata)
        return staging

    @classmethod
    def attach(cls, container_url: str, credential: Callable[[], Any] | None = None) -> "Staging":
        """An existing run's container, to read from another process (`saje job logs`): through
        AZURE_STORAGE_CONNECTION_STRING when it names that account (Azurite, an account key),
        else with `credential()` (Entra; default DefaultAzureCredential). A SAS in the URL is
        dropped: the copies a task wrote with it are read with the caller's own rights."""
        from azure.storage.blob import BlobServiceClient

        account_url, _, container = container_url.split("?", 1)[0].rstrip("/").rpartition("/")
        connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection_string:
            service = BlobServiceClient.from_connection_string(connection_string, **client_options())
            if service.url.rstrip("/") == account_url:
                return cls(service, container, _key_from_connection_string(connection_string))
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential
        return cls(BlobServiceClient(account_url, credential=credential(), **client_options()), container)

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
    def expiry(self, lifetime: dt.timedelta) -> tuple[dt.datetime, bool]:
        """When SAS tokens minted now for `lifetime` expire, and whether that had to be cut short:
        a user delegation SAS cannot outlive its key, which Azure gives for 7 days at most."""
        now = dt.datetime.now(dt.timezone.utc)
        if self.account_key or self.identity or lifetime <= MAX_USER_DELEGATION:
            return now + lifetime, False
        return now + MAX_USER_DELEGATION, True

    def _sas(self, permission: str, expiry: dt.datetime, blob: str | None = None) -> str:
        """A SAS until `expiry` for one blob (or, blob None, the container), signed with the
        account key, else with a user delegation key."""
        from azure.storage.blob import BlobSasPermissions, ContainerSasPermissions, generate_blob_sas, generate_container_sas

        start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
        signer: dict[str, Any] = ({"account_key": self.account_key} if self.account_key
                                  else {"user_delegation_key": self._delegation_key(expiry)})
        if blob is None:
            return generate_container_sas(self.service.account_name, self.container, expiry=expiry, start=start,
                                          permission=ContainerSasPermissions.from_string(permission), **signer)
        return generate_blob_sas(self.service.account_name, self.container, blob, expiry=expiry, start=start,
                                 permission=BlobSasPermissions.from_string(permission), **signer)

    def _delegation_key(self, expiry: dt.datetime) -> Any:
        """One user delegation key for every SAS it outlives (one request, not one per task)."""
        with self._lock:
            if self._key is not None and self._key[0] >= expiry:
                return self._key[1]
        now = dt.datetime.now(dt.timezone.utc)
        until = max(expiry, now + MAX_USER_DELEGATION)
        key = self.service.get_user_delegation_key(now - dt.timedelta(minutes=5), until)
        with self._lock:
            self._key = (until, key)
        return key

    def blob_url(self, blob: str, permission: str, expiry: dt.datetime) -> str:
        """The blob's URL with a SAS for that blob alone."""
        return f"{self.container_url}/{quote(blob)}?{self._sas(permission, expiry, blob)}"

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

    def upload_sources(self, archive: Path) -> None:
        self.upload_file(archive, SOURCES_BLOB)

    def sources_file(self, expiry: dt.datetime) -> models.ResourceFile:
        """The source archive as a task's resource file, readable until `expiry`."""
        return self.resource_file(SOURCES_BLOB, SOURCES_NAME, expiry)

    def _reference(self) -> models.BatchNodeIdentityReference | None:
        return models.BatchNodeIdentityReference(resource_id=self.identity) if self.identity else None

    def _write_url(self, expiry: dt.datetime, blob: str | None = None) -> str:
        """The container URL output files go to: with a create/write SAS for `blob` (None: the
        container), or bare when the node identity carries the right."""
        return self.container_url if self.identity else f"{self.container_url}?{self._sas('cw', expiry, blob)}"

    def resource_file(self, blob: str, file_path: str, expiry: dt.datetime,
                      file_mode: str | None = None) -> models.ResourceFile:
        """A resource file whose URL can read that one blob, until `expiry`; with the node identity
        instead when the pools have one (no SAS)."""
        if self.identity:
            return models.ResourceFile(http_url=f"{self.container_url}/{quote(blob)}", file_path=file_path,
                                       file_mode=file_mode, identity_reference=self._reference())
        return models.ResourceFile(http_url=self.blob_url(blob, "r", expiry), file_path=file_path, file_mode=file_mode)

    def stage_inputs(self, paths: Iterable[str], expiry: dt.datetime) -> list[models.ResourceFile]:
        """Upload local input files (once per content change) and return their resource files."""
        return self.stage_files(((path, path) for path in paths), expiry)

    def stage_files(self, pairs: Iterable[tuple[str, str]], expiry: dt.datetime) -> list[models.ResourceFile]:
        """Upload local files or directories (once per content change, several at a time) and
        return resource files, readable until `expiry`, that put each at its path on the node
        (local path, node path), one per file."""
        return [self.resource_file(s.blob, s.path, expiry, EXECUTABLE_MODE if s.executable else None)
                for s in self.stage(pairs)]

    def cache_items(self, pairs: Iterable[tuple[str, str]], expiry: dt.datetime) -> list[dict[str, Any]]:
        """Upload like `stage_files`, and describe each file for the node's input cache
        (node_cache.py): its URL (a read SAS for that blob alone, until `expiry`), the blob and
        ETag that name this version, the size and MD5 to verify it by, its path on the node."""
        return [{"url": self.blob_url(s.blob, "r", expiry), "blob": s.blob, "etag": s.etag, "size": s.size,
                 "md5": s.md5, "path": s.path, **({"executable": True} if s.executable else {})}
                for s in self.stage(pairs)]

    def stage(self, pairs: Iterable[tuple[str, str]]) -> list[Staged]:
        """Upload local files or directories (local path, node path) once per content change,
        several at a time, with their MD5 as Content-MD5; one `Staged` per file, unique by node path."""
        placed: dict[str, Path] = {}
        for path, at in pairs:
            for local in _expand(Path(path)):
                placed[(Path(at) / local.relative_to(path)).as_posix() if local != Path(path) else at] = local
        known: dict[Path, Staged] = {}
        stale = []
        for local in set(placed.values()):
            stat = local.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            with self._lock:
                entry = self._uploaded.get(local.as_posix())
            if entry is not None and entry[0] == signature:
                known[local] = entry[1]
            else:
                stale.append((local, signature))
        if stale:
            with ThreadPoolExecutor(max_workers=UPLOAD_CONCURRENCY) as pool:
                for (local, _), staged in zip(stale, pool.map(lambda item: self._upload_input(*item), stale)):
                    known[local] = staged
        return [dataclasses.replace(known[local], path=on_node) for on_node, local in placed.items()]

    def _upload_input(self, local: Path, signature: tuple[int, int]) -> Staged:
        """One input up, with its MD5 (Content-MD5), which the node's input cache checks it by."""
        from azure.storage.blob import ContentSettings

        blob = input_blob(local.as_posix())
        digest = hashlib.md5()
        with open(local, "rb") as data:
            while chunk := data.read(1 << 20):
                digest.update(chunk)
        with open(local, "rb") as data:
            size = os.fstat(data.fileno()).st_size
            reply = self.service.get_blob_client(self.container, blob).upload_blob(
                data, overwrite=True, content_settings=ContentSettings(content_md5=bytearray(digest.digest())))
        self._count(size, 0)
        staged = Staged(blob=blob, path=local.as_posix(), size=size, etag=str(reply.get("etag") or ""),
                        md5=base64.b64encode(digest.digest()).decode("ascii"), executable=_executable(local))
        with self._lock:
            self._uploaded[local.as_posix()] = (signature, staged)
        return staged
    def with_manifest(self, task_key: str, files: list[models.ResourceFile],
                      expiry: dt.datetime) -> tuple[list[models.ResourceFile], str]:
        """`files` as they fit a task: themselves, or, when their URLs would make the task too
        large for Batch (RequestBodyTooLarge), the fetch script and a manifest listing them; with
        the shell that fetches them on the node first ('' when none is needed)."""
        if sum(len(f.http_url) + len(f.file_path) + 64 for f in files) <= MANIFEST_ABOVE_BYTES:
            return files, ""
        with self._lock:
            script_uploaded, self._script_uploaded = self._script_uploaded, True
        if not script_uploaded:
            self.upload_file(Path(__file__).with_name("fetch_inputs.py"), FETCH_SCRIPT_BLOB)
        listing = "".join(_manifest_line(f) for f in files)
        blob = manifest_blob(task_key)
        self.upload_data(blob, listing.encode())
        return ([self.resource_file(FETCH_SCRIPT_BLOB, FETCH_SCRIPT, expiry), self.resource_file(blob, MANIFEST_NAME, expiry)],
                f"python3 {FETCH_SCRIPT} {MANIFEST_NAME} && ")

    def output_files(self, task_key: str, paths: Iterable[str], expiry: dt.datetime, *,
                     condition: str = "tasksuccess") -> list[models.OutputFile]:
        """Upload rules for files a task writes (files, or directories, ending in '/', with
        everything under them, names starting with '.' too), each under its path on the node.

        Outputs go up on task success only, so a failed job's outputs are never taken as done;
        its logs and benchmarks go up on task completion (or failure) with `condition`.

        Least privilege: a file gets a SAS, until `expiry`, that can create or write its own
        blob and nothing else (Batch adds the destination path to the container URL and keeps
        its query, so a blob SAS there works). A directory's blob names are known only once it
        is written, and a SAS for a blob prefix needs a hierarchical-namespace account
        (directory SAS), so a directory gets a create/write SAS on the run's container. With a
        node identity there is no SAS: the rule names the identity (identityReference).
        """
        rules = []
        for path in paths:
            pattern, target = output_rule(task_key, path)
            if path.endswith("/"):
                url = self._write_url(expiry)
                # Batch's '*' skips names starting with '.' unless the pattern spells the dot.
                patterns = [pattern, pattern[: -len("*")] + ".*"]
            else:
                url = self._write_url(expiry, output_blob(task_key, path))
                patterns = [pattern]
            rules.extend(_upload(one, url, target, condition, self._reference()) for one in patterns)
        return rules

    def log_files(self, task_key: str, expiry: dt.datetime) -> list[models.OutputFile]:
        """stdout.txt/stderr.txt of a failed task to blob: autoscale may take the node (and its task
        files) away before those logs are fetched, the blob copy outlives it. A succeeded task's
        logs are not needed to report it, so its two uploads are saved (issue 11: fewer round trips)."""
        return [_upload(f"../{name}", self._write_url(expiry, log_blob(task_key, name)), log_blob(task_key, name),
                        "taskfailure", self._reference()) for name in LOG_FILES]

    # ----------------------------------------------------------------- down
    def download_log(self, task_key: str, name: str, target: Path) -> bool:
        """The blob copy of a task's stdout.txt/stderr.txt (see `log_files`)."""
        return self.download_blob(log_blob(task_key, name), target)

    def download_blob(self, name: str, target: Path) -> bool:
        """One blob of the container to `target`; False when there is no such blob."""
        return self._download(name, target)

    def download_outputs(self, task_key: str, paths: Iterable[str],
                         local: dict[str, str] | None = None) -> list[str]:
        """Fetch files a task uploaded (`output_files`) to their local paths (the node path, or
        `local[node path]`); returns the ones missing in blob."""
        missing = []
        for path in paths:
            prefix = output_blob(task_key, path.rstrip("/"))
            target = (local or {}).get(path, path)
            if path.endswith("/"):
                names = [b.name for b in self._container().list_blobs(name_starts_with=prefix + "/")]
                if not names:
                    missing.append(path)
                for name in names:
                    self._download(name, Path(target.rstrip("/")) / name[len(prefix) + 1:])
                continue
            if not self._download(prefix, Path(target)):
                missing.append(path)
        return missing

    def _container(self) -> Any:
        """The run's container client, made once and shared by the download threads (Azure SDK
        clients are thread-safe): each ContainerClient builds its own pipeline and serializers,
        32 KiB and half a millisecond, and one per finished task was the largest churn of a
        10,000-job run's Snakemake process."""
        with self._lock:
            if self._container_client is None:
                self._container_client = self.service.get_container_client(self.container)
            return self._container_client

    def _download(self, name: str, target: Path) -> bool:
        """One blob to `target` (through a temporary name); False if there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        if self._plain_get(name, target):
            return True
        try:
            stream = self._container().download_blob(name)
        except ResourceNotFoundError:
            return False
        with _replacing(target) as out:
            size = stream.readinto(out)
        self._count(0, size)
        return True

    def _plain_get(self, name: str, target: Path) -> bool:
        """A task's output as one GET with a container read SAS, as a node fetches a resource
        file: the blob SDK's pipeline cost about 5 ms of CPU per file, a quarter of the Snakemake
        process's CPU in a 1,000-job run. Whatever does not give the whole blob (no such blob, a
        reset, a refusal) returns False and `_download` asks again through the SDK, whose retry
        policy and errors apply. requests honours the proxy and CA variables as the SDK does."""
        import requests

        with self._lock:  # one session (one connection pool) for every download thread
            if self._session is None:
                self._session = requests.Session()
        try:
            answer = self._session.get(f"{self.container_url}/{quote(name)}?{self._read_sas()}", stream=True,
                                       timeout=(20, 60))
        except Exception:  # noqa: BLE001 - the SDK's path decides what a failure is; its URL holds a SAS
            return False
        with answer:
            expected = answer.headers.get("Content-Length")
            if answer.status_code != 200 or expected is None:
                return False
            size = 0
            try:
                with _replacing(target) as out:
                    for chunk in answer.iter_content(1 << 20):
                        out.write(chunk)
                        size += len(chunk)
                    if size != int(expected):
                        raise _ShortRead
            except (OSError, requests.RequestException, _ShortRead):
                return False
        self._count(0, size)
        return True

    def _read_sas(self) -> str:
        """A read SAS for the run's container, minted for an hour and renewed 10 minutes before
        it ends: one signature for every output download, not one per file."""
        now = dt.datetime.now(dt.timezone.utc)
        with self._lock:
            reader = self._reader
        if reader is None or reader[0] - now < dt.timedelta(minutes=10):
            expiry = now + dt.timedelta(hours=1)
            reader = (expiry, self._sas("r", expiry))
            with self._lock:
                self._reader = reader
        return reader[1]

    def delete(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.service.delete_container(self.container)
        except ResourceNotFoundError:
            pass


class _ShortRead(Exception):
    """A plain read ended before its Content-Length."""


@contextmanager
def _replacing(target: Path) -> Iterator[Any]:
    """A file to write `target` through a temporary name: put in place when the block ends,
    removed when it raises, so a half-written file is never taken for the output."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.saje-partial")
    try:
        with open(partial, "wb") as out:
            yield out
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)


def blob_service(account_url: str | None, credential: Any = None) -> tuple[BlobServiceClient, str | None] | None:
    """(service, account key or None) from AZURE_STORAGE_CONNECTION_STRING, else from
    `account_url` with `credential` (DefaultAzureCredential when None); None when neither is set."""
    from azure.storage.blob import BlobServiceClient

    connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string, **client_options()), _key_from_connection_string(connection_string)
    if account_url:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return BlobServiceClient(account_url, credential=credential, **client_options()), None
    return None


def sas_lifetime(wall_clock: dt.timedelta | None, retries: int, allowance: dt.timedelta) -> dt.timedelta:
    """How long a task's SAS tokens live from its submission (docs/usage.md, "SAS lifetime").

    They must outlast the wait for a node, every run Batch may make of the task (its wall-clock
    limit each time: 1 + --saje-task-retries), and the upload of its outputs and logs at the
    end; the queue wait and upload are the allowance (--saje-sas-allowance). A task with no
    wall-clock limit, or unlimited retries, may run for any time: 7 days.
    """
    if wall_clock is None or retries < 0:
        return NO_LIMIT_LIFETIME
    return allowance + wall_clock * (1 + retries)


def _manifest_line(file: models.ResourceFile) -> str:
    """`url<TAB>path<TAB>mode[<TAB>identity]` for fetch_inputs.py: the identity (an ARM id) when
    the URL has no SAS and the node's managed identity reads it."""
    fields = [file.http_url, file.file_path, file.file_mode or ""]
    if file.identity_reference is not None:
        fields.append(file.identity_reference.resource_id)
    return "\t".join(fields) + "\n"


def _upload(pattern: str, container_url: str, path: str, condition: str,
            identity: models.BatchNodeIdentityReference | None = None) -> models.OutputFile:
    return models.OutputFile(
        file_pattern=pattern,
        destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
            container_url=container_url, path=path, identity_reference=identity)),
        upload_options=models.OutputFileUploadConfiguration(upload_condition=condition),
    )


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
        return name in LOG_FILES


def log_copy_of(task: models.BatchTask) -> LogCopy | None:
    """The blob copy of a task's logs that `Staging.log_files` asked Batch for, read from the task
    itself (its outputFiles), so any process that can read the task finds it; None without one."""
    for output in task.output_files or []:
        container = output.destination.container if output.destination else None
        folder, _, name = (output.file_pattern or "").rpartition("/")
        path = (container.path or "") if container is not None else ""
        if folder == ".." and name in LOG_FILES and container.container_url and path.endswith(name):
            return LogCopy(container.container_url.split("?", 1)[0], path[: -len(name)])
    return None


def node_path(local: str, *, local_prefix: Path, node_prefix: Path) -> str:
    """Where a default-storage file's local copy is on the node, relative to the task's working
    directory: Snakemake keeps it under --local-storage-prefix here and under
    --remote-job-local-storage-prefix (what the job's command passes) there."""
    return (node_prefix / Path(local).relative_to(local_prefix)).as_posix()


def under(directory: str, files: Iterable[models.ResourceFile]) -> list[models.ResourceFile]:
    """The same resource files with their paths under `directory`: e.g. an MPI task's
    commonResourceFiles, which Batch downloads on every node into the task's root directory
    (AZ_BATCH_TASK_SHARED_DIR), beside stdout.txt and the working directory."""
    return [models.ResourceFile(http_url=f.http_url, file_path=f"{directory}/{f.file_path}", file_mode=f.file_mode,
                                identity_reference=f.identity_reference)
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
