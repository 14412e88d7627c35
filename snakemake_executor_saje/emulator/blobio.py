"""A node agent's file traffic: a task's resourceFiles in before it runs, outputFiles out after.

Semantics follow the Batch REST reference (ResourceFile, OutputFile, OutputFileBlobContainerDestination,
OutputFileUploadConfig in specification/batch/data-plane):

* ResourceFile: exactly one of ``httpUrl`` (one file, ``filePath`` required and names the file),
  ``storageContainerUrl`` (a container URL readable and listable, usually through a SAS) or
  ``autoStorageContainerName`` (a container in the account's linked storage). For containers,
  ``blobPrefix`` filters by name prefix and ``filePath`` is the directory under which each blob
  lands *with its full name*, so any virtual directories in the blob name are kept. ``filePath``
  may not leave the working directory. ``fileMode`` is octal; unset means 0770 on Linux.
* OutputFile: ``filePattern`` is relative to the working directory (or absolute); ``*``, ``?``,
  ``**``, ``[abc]``/``[a-c]``/``[!abc]`` are wildcards; names starting with '.' match only when the
  pattern spells the dot; ``$VAR`` is expanded from the task environment first. ``../std*.txt``
  reaches the task directory, where stdout.txt and stderr.txt live. ``destination.container.path``
  is the blob name when the pattern has no wildcard, else a virtual directory for the matched
  paths (relative to the pattern's fixed leading directories); unset means the container root.
  ``uploadHeaders`` go on the Put Blob request. ``uploadCondition`` is taskSuccess (exit 0),
  taskFailure (nonzero exit) or taskCompletion (always; the default).

Failures carry the codes of the real TaskFailureInformation ("Batch status and error codes",
job/task scheduling table; upload codes from TaskFailureInformationCodes of the Batch SDKs), so
the agent can copy ``failure_info()`` into the task's ``executionInfo.failureInfo`` unchanged.
Every upload is logged, SAS-free, in the task directory's fileuploadout.txt / fileuploaderr.txt,
as the real agent does. No SAS or key ever appears in a message.
"""
from __future__ import annotations

import errno
import http.client
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    ResourceNotFoundError,
    ServiceRequestTimeoutError,
    ServiceResponseTimeoutError,
)
from azure.storage.blob import BlobClient, ContainerClient, ExponentialRetry

try:  # the storage API version the blob SDK sends, so both upload paths send the same request
    from azure.storage.blob._shared.constants import X_MS_VERSION as STORAGE_API_VERSION
except ImportError:  # pragma: no cover - a later SDK that moved it
    STORAGE_API_VERSION = "2025-01-05"

from .datadir import make_private_dir

USER_ERROR = "usererror"
SERVER_ERROR = "servererror"

# code -> (category, message). Download side: "Batch status and error codes", task table.
# Upload side: TaskFailureInformationCodes (Batch .NET/Java SDKs); categories follow the
# download side (access/not-found are the user's doing, the rest the node's).
FAILURES: dict[str, tuple[str, str]] = {
    "BlobNotFound": (USER_ERROR, "One of the specified Azure Blob(s) is not found."),
    "BlobAccessDenied": (USER_ERROR, "Access for one of the specified Azure Blob(s) is denied."),
    "BlobDownloadTimedOut": (SERVER_ERROR, "Timeout encountered while downloading one of the specified Azure Blob(s)."),
    "BlobDownloadMiscError": (SERVER_ERROR, "Miscellaneous error encountered while downloading one of the specified Azure Blob(s)."),
    "ResourceDirectoryCreateFailed": (SERVER_ERROR, "Failure encountered creating resource directory for the task."),
    "ResourceFileCreateFailed": (SERVER_ERROR, "Failure encountered creating resource file."),
    "ResourceFileWriteFailed": (SERVER_ERROR, "Failure encountered writing resource file."),
    "DiskFull": (SERVER_ERROR, "There is not enough disk space on the node that was selected to run the task."),
    "FileUploadAccessDenied": (USER_ERROR, "Access to the Azure Storage Container for uploading Output Files was denied."),
    "FileUploadContainerNotFound": (USER_ERROR, "The Azure Storage Container for uploading Output Files was not found."),
    "FileUploadConflict": (USER_ERROR, "There was a conflict encountered when uploading Output Files."),
    "FileUploadTimedOut": (SERVER_ERROR, "The compute node timed out while uploading Output Files."),
    "FileUploadMiscError": (SERVER_ERROR, "The compute node hit an unexpected error when uploading Output Files."),
}

DEFAULT_FILE_MODE = 0o770  # ResourceFile.fileMode: "If not specified ... 0770 is applied"
UPLOAD_OUT_LOG = "fileuploadout.txt"
UPLOAD_ERR_LOG = "fileuploaderr.txt"
_WILDCARD = re.compile(r"[*?\[]")
_ENV_REF = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_SINGLE_PUT_LIMIT = 256 * 1024 * 1024  # keep uploadHeaders on one Put Blob for all but huge files


_CLIENTS: dict[tuple[str, int, str | None], ContainerClient] = {}
_CLIENTS_LOCK = threading.Lock()
_CLIENTS_KEPT = 64


def _container_client(container_url: str, credential: Any = None,
                      auto_storage: "AutoStorage | None" = None) -> ContainerClient:
    """One client per container URL (with its SAS), credential and trusted certificates, kept: its
    connections to the storage service are reused by every task of the node agent instead of
    opened per file. (A kept client holds its credential, so that credential's id stays its own.)"""
    options = _client_options(auto_storage)
    key = (container_url, id(credential), options.get("connection_verify"))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            if len(_CLIENTS) >= _CLIENTS_KEPT:
                _CLIENTS.clear()
            client = _CLIENTS[key] = ContainerClient.from_container_url(container_url, credential=credential, **options)
        return client


def _blob_client(url: str, credential: Any = None, auto_storage: "AutoStorage | None" = None) -> BlobClient:
    """The blob a URL names, through its container's kept client (`_container_client`)."""
    parts = urlsplit(url)
    segments = parts.path.lstrip("/").split("/")
    # Azure's hosts name the account; Azurite and other path-style endpoints put it first in the path.
    depth = 1 if ".blob." in (parts.hostname or "") else 2
    if len(segments) <= depth:
        return BlobClient.from_blob_url(url, credential=credential, **_client_options(auto_storage))
    container = urlunsplit((parts.scheme, parts.netloc, "/" + "/".join(segments[:depth]), parts.query, ""))
    return _container_client(container, credential, auto_storage).get_blob_client(unquote("/".join(segments[depth:])))


def _client_options(auto_storage: "AutoStorage | None" = None) -> dict[str, Any]:
    """The SDK's own retry policy, with backoffs sized for a node rather than a 15 s default; the
    certificates a node trusts (an HTTPS emulator's Azurite)."""
    options: dict[str, Any] = {
        "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=3, random_jitter_range=1),
        "connection_timeout": 20,
        "read_timeout": 120,
        "max_single_put_size": _SINGLE_PUT_LIMIT,
    }
    if auto_storage is not None and auto_storage.ca_bundle:
        options["connection_verify"] = auto_storage.ca_bundle
    return options


# -- failures ----------------------------------------------------------------------------


class TransferError(Exception):
    """A failure shaped like the task's failureInfo: category, code, message, details."""

    def __init__(self, code: str, message: str | None = None, *, details: Mapping[str, str] | None = None) -> None:
        category, standard = FAILURES.get(code, (SERVER_ERROR, code))
        self.code = code
        self.category = category
        self.message = message or standard
        self.details = dict(details or {})
        super().__init__(f"{code}: {self.message}")

    def failure_info(self) -> dict[str, Any]:
        """The REST ``TaskFailureInfo`` object for this failure."""
        info: dict[str, Any] = {"category": self.category, "code": self.code, "message": self.message}
        if self.details:
            info["details"] = [{"name": k, "value": v} for k, v in self.details.items()]
        return info


class ResourceFileError(TransferError):
    """A resource file could not be put in place: the task fails without running."""


class OutputFileError(TransferError):
    """An output file could not be uploaded (a fileUploadError exit condition)."""


def redact(url: str) -> str:
    """The URL without its query, so a SAS never reaches a message, log or failureInfo."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _storage_code(exc: BaseException) -> str:
    """The storage service's own error code, for the human-readable message only."""
    code = getattr(exc, "error_code", None)
    return f" (storage error {getattr(code, 'value', code)})" if code else ""


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)


def _classify(exc: BaseException, *, not_found: str, denied: str, timed_out: str, misc: str,
              conflict: str | None = None) -> str:
    """Map an SDK or urllib exception to a Batch failure code."""
    if isinstance(exc, (ServiceRequestTimeoutError, ServiceResponseTimeoutError, socket.timeout, TimeoutError)):
        return timed_out
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, (socket.timeout, TimeoutError)):
        return timed_out
    status = exc.code if isinstance(exc, urllib.error.HTTPError) else _status(exc)
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return not_found
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return denied
    if conflict and status in (409, 412):
        return conflict
    return misc


def _local_error(exc: OSError, fallback: str) -> str:
    return "DiskFull" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else fallback


# -- linked storage --------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoStorage:
    """The Batch account's linked ("auto") storage account, for ``autoStorageContainerName``.

    Give a connection string, or an account URL with a credential (key, SAS or token
    credential). The credential also stands in for a node's managed identity when a
    resource or output file names an ``identityReference``. Secrets stay out of repr.
    """

    connection_string: str | None = field(default=None, repr=False)
    account_url: str | None = None
    credential: Any = field(default=None, repr=False)
    # The node's pool identities: resource id -> TokenCredential (imds.NodeCredential).
    identity: Callable[[str], Any] | None = field(default=None, repr=False)
    ca_bundle: str | None = None

    def container(self, name: str) -> ContainerClient:
        if self.connection_string:
            return ContainerClient.from_connection_string(self.connection_string, name, **_client_options(self))
        if self.account_url:
            return ContainerClient(self.account_url, name, credential=self.credential, **_client_options(self))
        raise ValueError("AutoStorage needs a connection_string or an account_url")


def _identity(spec: Mapping[str, Any], auto_storage: AutoStorage | None) -> Any:
    """Credential for an ``identityReference``: the node's pool identity it names (a token from its
    identity endpoint), else the linked storage credential, if any."""
    reference = spec.get("identityReference")
    if not reference or auto_storage is None:
        return None
    if auto_storage.identity is not None:
        return auto_storage.identity(str(reference.get("resourceId") or ""))
    return auto_storage.credential


# -- resource files ----------------------------------------------------------------------


def download_resource_files(
    resource_files: list[dict], working_dir: Path, *, auto_storage: AutoStorage | None = None
) -> None:
    """Put every resource file in place under ``working_dir``, in order.

    Raises ResourceFileError at the first failure; the agent reports its ``failure_info()``
    as the task's failureInfo and completes the task with result "failure" without running it.
    """
    working_dir = Path(working_dir)
    for spec in resource_files:
        _download_one(spec, working_dir, auto_storage)


def _download_one(spec: Mapping[str, Any], working_dir: Path, auto_storage: AutoStorage | None) -> None:
    mode = _file_mode(spec.get("fileMode"))
    file_path = spec.get("filePath") or ""
    if spec.get("httpUrl"):
        if not file_path:
            raise ResourceFileError("ResourceFileCreateFailed", "filePath is required with httpUrl.")
        target = _inside(working_dir, file_path)
        _fetch_url(spec["httpUrl"], target, _identity(spec, auto_storage), auto_storage)
        _chmod(target, mode)
        return
    container, source = _source_container(spec, auto_storage)
    dest_dir = _inside(working_dir, file_path)
    for name in _list_blob_names(container, spec.get("blobPrefix"), source):
        target = _inside(dest_dir, name)
        _save_blob(container.get_blob_client(name), target, f"{source}/{name}")
        _chmod(target, mode)


def _source_container(spec: Mapping[str, Any], auto_storage: AutoStorage | None) -> tuple[ContainerClient, str]:
    """The container a storageContainerUrl / autoStorageContainerName names, and a SAS-free label."""
    if spec.get("storageContainerUrl"):
        url = spec["storageContainerUrl"]
        client = _container_client(url, _identity(spec, auto_storage), auto_storage)
        return client, redact(url)
    name = spec.get("autoStorageContainerName")
    if not name:
        raise ResourceFileError(
            "ResourceFileCreateFailed", "One of httpUrl, storageContainerUrl or autoStorageContainerName is required."
        )
    if auto_storage is None:
        raise ResourceFileError(
            "BlobAccessDenied", f"autoStorageContainerName {name!r} needs a storage account linked to the Batch account."
        )
    client = auto_storage.container(name)
    return client, redact(client.url)


def _list_blob_names(container: ContainerClient, prefix: str | None, source: str) -> list[str]:
    """Blob names under the prefix; directory marker blobs (names ending in '/') are skipped."""
    try:
        return [b.name for b in container.list_blobs(name_starts_with=prefix or None) if not b.name.endswith("/")]
    except AzureError as exc:
        code = _classify(exc, not_found="BlobNotFound", denied="BlobAccessDenied",
                         timed_out="BlobDownloadTimedOut", misc="BlobDownloadMiscError")
        raise ResourceFileError(code, details={"BlobSource": source}) from exc


def _is_blob_url(url: str) -> bool:
    """A URL the blob SDK should fetch: an Azure blob host, a SAS, or an Azurite path-style URL."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    segments = [s for s in parts.path.split("/") if s]
    return ".blob." in host or "sig" in parse_qs(parts.query) or (len(segments) >= 3 and segments[0] == "devstoreaccount1")


def _fetch_url(url: str, target: Path, credential: Any, auto_storage: AutoStorage | None = None) -> None:
    if _is_blob_url(url):
        blob = _blob_client(url, credential, auto_storage)
        _save_blob(blob, target, redact(url))
        return
    try:
        response = urllib.request.urlopen(url, timeout=60)
    except (urllib.error.URLError, OSError) as exc:
        code = _classify(exc, not_found="BlobNotFound", denied="BlobAccessDenied",
                         timed_out="BlobDownloadTimedOut", misc="BlobDownloadMiscError")
        raise ResourceFileError(code, details={"BlobSource": redact(url), "FilePath": str(target)}) from exc
    with response:
        _write_stream(target, redact(url), lambda f: _copy(response, f))


def _save_blob(blob: BlobClient, target: Path, source: str) -> None:
    """Download one blob to ``target``; storage errors map to Blob* codes, disk errors to Resource*."""
    try:
        downloader = blob.download_blob()
    except AzureError as exc:
        raise _download_failure(exc, source, target) from exc
    _write_stream(target, source, downloader.readinto)


def _download_failure(exc: BaseException, source: str, target: Path) -> ResourceFileError:
    code = _classify(exc, not_found="BlobNotFound", denied="BlobAccessDenied",
                     timed_out="BlobDownloadTimedOut", misc="BlobDownloadMiscError")
    standard = FAILURES[code][1]
    return ResourceFileError(code, standard + _storage_code(exc), details={"BlobSource": source, "FilePath": str(target)})


def _write_stream(target: Path, source: str, fill: Any) -> None:
    """Write through a temporary name, then rename: a failed download leaves no half file."""
    details = {"BlobSource": source, "FilePath": str(target)}
    try:
        make_private_dir(target.parent)
    except OSError as exc:
        raise ResourceFileError(_local_error(exc, "ResourceDirectoryCreateFailed"), details=details) from exc
    partial = target.with_name(f".{target.name}.download")
    try:
        handle = open(partial, "wb")
    except OSError as exc:
        raise ResourceFileError(_local_error(exc, "ResourceFileCreateFailed"), details=details) from exc
    try:
        with handle:
            fill(handle)
        os.replace(partial, target)
    except AzureError as exc:
        raise _download_failure(exc, source, target) from exc
    except (urllib.error.URLError, socket.timeout, TimeoutError) as exc:
        raise _download_failure(exc, source, target) from exc
    except OSError as exc:
        raise ResourceFileError(_local_error(exc, "ResourceFileWriteFailed"), details=details) from exc
    finally:
        partial.unlink(missing_ok=True)


def _copy(response: Any, handle: Any) -> None:
    while chunk := response.read(1 << 20):
        handle.write(chunk)


def _file_mode(value: str | None) -> int:
    if value in (None, ""):
        return DEFAULT_FILE_MODE
    try:
        return int(str(value), 8)
    except ValueError:
        raise ResourceFileError("ResourceFileCreateFailed", f"fileMode {value!r} is not an octal mode.") from None


def _chmod(target: Path, mode: int) -> None:
    try:
        target.chmod(mode)
    except OSError as exc:
        raise ResourceFileError("ResourceFileWriteFailed", details={"FilePath": str(target)}) from exc


def _inside(base: Path, relative: str) -> Path:
    """``base / relative``, refusing paths that climb out of ``base`` (the service forbids '..')."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts or relative.startswith("/"):
        raise ResourceFileError(
            "ResourceFileCreateFailed", f"The path {relative!r} must stay inside the task's working directory."
        )
    return base.joinpath(*parts)


# -- output files -----------------------------------------------------------------------------


def upload_output_files(
    output_files: list[dict],
    working_dir: Path,
    task_dir: Path,
    *,
    exit_code: int | None,
    failed: bool,
    env: Mapping[str, str] | None = None,
    auto_storage: AutoStorage | None = None,
) -> list[dict]:
    """Upload each output file whose uploadCondition holds; return the failures.

    ``failed`` marks a task that ended badly without an exit code of its own (killed at its
    wall-clock limit, say); such a task counts as a failure for taskFailure/taskSuccess.
    ``env`` is the task's environment, for ``$VAR`` in patterns. The result is a list of
    TaskFailureInfo dicts (empty when every upload succeeded), one per failing output file.
    """
    working_dir, task_dir = Path(working_dir), Path(task_dir)
    failures: list[dict] = []
    for spec in output_files:
        condition = str((spec.get("uploadOptions") or {}).get("uploadCondition") or "taskcompletion")
        if not condition_holds(condition, exit_code=exit_code, failed=failed):
            continue
        try:
            _upload_one(spec, working_dir, task_dir, env or {}, auto_storage)
        except OutputFileError as exc:
            _log(task_dir, UPLOAD_ERR_LOG, f"{exc.code}: {exc.message} {exc.details}")
            failures.append(exc.failure_info())
    return failures


def condition_holds(condition: str, *, exit_code: int | None, failed: bool) -> bool:
    """taskSuccess: exit code 0; taskFailure: nonzero exit (or a failure without one); taskCompletion: always."""
    succeeded = not failed and exit_code == 0
    kind = condition.lower()
    if kind == "tasksuccess":
        return succeeded
    if kind == "taskfailure":
        return not succeeded
    if kind == "taskcompletion":
        return True
    raise ValueError(f"unknown uploadCondition {condition!r}")


def _upload_one(
    spec: Mapping[str, Any], working_dir: Path, task_dir: Path, env: Mapping[str, str], auto_storage: AutoStorage | None
) -> None:
    pattern = expand_env(spec["filePattern"], env)
    target = (spec.get("destination") or {}).get("container") or {}
    container_url = target.get("containerUrl", "")
    prefix = (target.get("path") or "").strip("/")
    headers = {h["name"]: h.get("value") or "" for h in target.get("uploadHeaders") or []}
    has_wildcard = bool(_WILDCARD.search(pattern))
    matches = match_files(pattern, working_dir, task_dir)
    if not matches:
        _log(task_dir, UPLOAD_OUT_LOG, f"no file matched {pattern!r}")
        return
    credential = _identity(target, auto_storage)
    for path, relative in matches:
        if has_wildcard:
            name = f"{prefix}/{relative}" if prefix else relative
        else:
            name = prefix or path.name
        if credential is not None or not _plain_put(container_url, name, path, headers):
            container = _container_client(container_url, credential, auto_storage)
            _put(container, name, path, headers, spec["filePattern"], redact(container_url))
        _log(task_dir, UPLOAD_OUT_LOG, f"uploaded {path} to {redact(container_url)}/{name}")


# Small outputs over plain HTTP with a SAS (every SAJE task's, on the emulator) go up as one Put
# Blob on a kept connection: the blob SDK's pipeline cost the emulator half its CPU per task, the
# node agent's share that Azure's own agent spends outside the service. Anything else (HTTPS, an
# identity, a large file, any failure) takes the SDK's path, which also names the failure.
_PLAIN_PUT_LIMIT = 4 * 1024 * 1024
_PLAIN_CONNECTIONS: dict[str, list[http.client.HTTPConnection]] = {}
_PLAIN_LOCK = threading.Lock()


def _plain_put(container_url: str, name: str, path: Path, headers: Mapping[str, str]) -> bool:
    """Put Blob as the SDK sends it (BlockBlob, its x-ms-version); True when stored (201)."""
    parts = urlsplit(container_url)
    if parts.scheme != "http" or not parts.query or not parts.netloc:
        return False
    try:
        if path.stat().st_size > _PLAIN_PUT_LIMIT:
            return False
        data = path.read_bytes()
    except OSError:
        return False
    target = f"{parts.path.rstrip('/')}/{quote(name, safe='/~')}?{parts.query}"
    request_headers = {**headers, "x-ms-blob-type": "BlockBlob", "x-ms-version": STORAGE_API_VERSION,
                       "Content-Length": str(len(data))}
    for _ in range(2):  # a kept connection the server has closed in the meantime: once more on a new one
        connection = _plain_connection(parts.netloc)
        try:
            connection.request("PUT", target, body=data, headers=request_headers)
            answer = connection.getresponse()
            answer.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            continue
        if answer.status == 201 and not answer.will_close:
            with _PLAIN_LOCK:
                _PLAIN_CONNECTIONS.setdefault(parts.netloc, []).append(connection)
        else:
            connection.close()
        return answer.status == 201
    return False


def _plain_connection(netloc: str) -> http.client.HTTPConnection:
    with _PLAIN_LOCK:
        idle = _PLAIN_CONNECTIONS.get(netloc)
        if idle:
            return idle.pop()
    return http.client.HTTPConnection(netloc, timeout=120)


def _put(container: ContainerClient, name: str, path: Path, headers: Mapping[str, str], pattern: str,
         where: str) -> None:
    details = {"FilePattern": pattern, "FilePath": str(path), "BlobDestination": f"{where}/{name}"}
    try:
        with open(path, "rb") as data:
            container.upload_blob(name, data, overwrite=True, headers=dict(headers))
    except AzureError as exc:
        code = _classify(exc, not_found="FileUploadContainerNotFound", denied="FileUploadAccessDenied",
                         timed_out="FileUploadTimedOut", misc="FileUploadMiscError", conflict="FileUploadConflict")
        raise OutputFileError(code, FAILURES[code][1] + _storage_code(exc), details=details) from exc
    except OSError as exc:
        raise OutputFileError("FileUploadMiscError", f"Cannot read {path}: {exc.strerror}", details=details) from exc


def _log(task_dir: Path, name: str, line: str) -> None:
    """Append to the task directory's upload logs; logging never fails an upload."""
    try:
        with open(task_dir / name, "a", encoding="utf-8") as log:
            log.write(line + "\n")
    except OSError:
        pass


# -- file patterns ----------------------------------------------------------------------------


def expand_env(pattern: str, env: Mapping[str, str]) -> str:
    """Expand ``$VAR`` and ``${VAR}`` from the task environment; unknown names stay as written."""
    return _ENV_REF.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), pattern)


def match_files(pattern: str, working_dir: Path, task_dir: Path) -> list[tuple[Path, str]]:
    """Files a filePattern selects, each with its path relative to the pattern's fixed part.

    The fixed leading directories (those without wildcards) locate the search root:
    relative to ``working_dir``, where a leading ``..`` is the task directory, or absolute.
    """
    segments = [s for s in pattern.split("/") if s not in ("", ".")]
    root = Path("/") if pattern.startswith("/") else working_dir
    fixed = 0
    for segment in segments:
        if _WILDCARD.search(segment):
            break
        root = (task_dir if root == working_dir else root.parent) if segment == ".." else root / segment
        fixed += 1
    rest = segments[fixed:]
    if not rest:
        return [(root, root.name)] if root.is_file() else []
    if not root.is_dir():
        return []
    regex = re.compile(_pattern_regex(rest))
    return sorted((path, rel) for path, rel in _walk(root, recursive="**" in rest, depth=len(rest))
                  if regex.fullmatch(rel))


def _walk(root: Path, *, recursive: bool, depth: int) -> Iterator[tuple[Path, str]]:
    """Files under ``root`` with '/'-joined relative paths; no deeper than ``depth`` unless recursive."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        level = 0 if rel_dir == "." else rel_dir.count("/") + 1
        if not recursive and level >= depth - 1:
            dirnames[:] = []
        dirnames.sort()
        for name in sorted(filenames):
            yield here / name, name if level == 0 else f"{rel_dir}/{name}"


def _pattern_regex(segments: list[str]) -> str:
    """A regex over '/'-joined relative paths for the wildcard segments of a filePattern."""
    out: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "**":
            out.append(r"(?:(?!\.)[^/]+/)*" + (r"(?!\.)[^/]+" if index == last else ""))
        else:
            out.append(_segment_regex(segment) + ("" if index == last else "/"))
    return "".join(out)


def _segment_regex(segment: str) -> str:
    """One path segment: ``*``, ``?``, ``[...]`` (``!`` negates); a leading '.' must be explicit."""
    out = [] if segment.startswith(".") else [r"(?!\.)"]
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            while i + 1 < len(segment) and segment[i + 1] == "*":
                i += 1
            out.append(r"[^/]*")
        elif char == "?":
            out.append(r"[^/]")
        elif char == "[" and (end := _class_end(segment, i)) > 0:
            body = segment[i + 1:end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append("(?!/)[" + ("^" if negate else "") + body.replace("\\", "\\\\").replace("[", "\\[") + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _class_end(segment: str, start: int) -> int:
    """Index of the ']' closing the class opened at ``start``, or -1 (then '[' is literal)."""
    i = start + 1
    if i < len(segment) and segment[i] == "!":
        i += 1
    if i < len(segment) and segment[i] == "]":
        i += 1
    end = segment.find("]", i)
    return end
