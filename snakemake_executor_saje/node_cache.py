"""The node's input cache: an input several jobs share reaches each node once, not once per task.

SAJE runs this file on the node (it arrives with the job preparation task; SAJE itself is not
installed there) before a task's job, with the task's shared inputs in its environment:
``SAJE_NODE_INPUTS``, JSON: of each, its URL with a SAS that reads that blob alone (a secret,
hence in the environment, never on the command line), blob name, ETag, size, base64 MD5 and path
in the working directory. Each blob is downloaded once per node into a cache
under the job preparation task's directory, keyed by blob name and ETag (a changed input is a new
entry), verified against its size and MD5 before anyone uses it, then hard-linked read-only into
the task's working directory. Concurrent tasks on a node take turns per entry (``flock``), so
one downloads while the others wait and then link. Only the standard library is used.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

INPUTS_ENV = "SAJE_NODE_INPUTS"
# sysexits' EX_IOERR: an input could not be put in place. Snakemake itself exits 0 or 1.
EXIT_CODE = 74
HEADER = "SAJE node cache:"
ATTEMPTS = 4
CHUNK = 1 << 20


class CacheError(Exception):
    """An input could not be downloaded or failed its check; the message names it (never the SAS)."""


def entry_name(blob: str, etag: str) -> str:
    """The cache entry of one version of a blob: a new ETag (new content) is a new entry."""
    return hashlib.sha256(f"{blob}\n{etag}".encode()).hexdigest()[:40]


def cache_dir(env: Mapping[str, str]) -> Path:
    """Under the job preparation task's directory: one cache per node and Batch job, gone with
    the job. Without a preparation task (a task run by hand), the node's shared directory."""
    base = env.get("AZ_BATCH_JOB_PREP_DIR") or env.get("AZ_BATCH_NODE_SHARED_DIR") or "."
    return Path(base) / "saje-cache"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(url: str, target: Path, size: int, md5: str, label: str) -> None:
    """The blob to `target`, checked against its size and MD5; retried after short pauses when
    the connection breaks (a server closing an idle connection, a brief outage)."""
    for attempt in range(1, ATTEMPTS + 1):
        digest, got = hashlib.md5(), 0
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"x-ms-version": "2021-08-06"}),
                                        timeout=120) as response, open(target, "wb") as out:
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    got += len(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                raise CacheError(f"{label}: the storage service answered {exc.code} {exc.reason}"
                                 + _expired(url)) from None
            problem = f"{exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError) as exc:
            problem = str(getattr(exc, "reason", exc))
        else:
            found = base64.b64encode(digest.digest()).decode()
            if got == size and (not md5 or found == md5):
                return
            problem = f"got {got} bytes with MD5 {found}, expected {size} bytes with MD5 {md5 or '(any)'}"
        if attempt == ATTEMPTS:
            raise CacheError(f"{label}: {problem} (after {ATTEMPTS} attempts)")
        time.sleep(0.5 * 2 ** (attempt - 1))


def _expired(url: str) -> str:
    """Why a read may be refused: the SAS expired (its `se`, which is not secret, unlike `sig`)."""
    expiry = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("se", [""])[0]
    try:
        moment = datetime.datetime.fromisoformat(expiry.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if moment > datetime.datetime.now(datetime.timezone.utc):
        return ""
    return f" (its SAS token expired at {expiry}, before the task started)"


def cached(item: Mapping[str, Any], root: Path) -> Path:
    """The verified cache entry of one input, downloaded first if this node does not have it."""
    entry = root / entry_name(item["blob"], item["etag"])
    with _locked(entry.with_suffix(".lock")):
        if entry.exists() and entry.stat().st_size == int(item["size"]):
            return entry
        partial = entry.with_suffix(".partial")
        _download(item["url"], partial, int(item["size"]), item.get("md5") or "",
                  item["blob"])
        partial.chmod(0o555 if item.get("executable") else 0o444)
        os.replace(partial, entry)
    return entry


def place(entry: Path, target: Path) -> None:
    """The cache entry at `target`: a hard link (read-only, shared), a copy where links fail."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(entry, target)
    except OSError:
        shutil.copy2(entry, target)


def fetch(items: list[Mapping[str, Any]], env: Mapping[str, str], workdir: Path) -> None:
    root = cache_dir(env)
    root.mkdir(parents=True, exist_ok=True)
    for item in items:
        place(cached(item, root), workdir / item["path"])


def main() -> int:
    """``python node_cache.py``: put the task's shared inputs (``SAJE_NODE_INPUTS``) in place."""
    try:
        items = json.loads(os.environ.get(INPUTS_ENV) or "[]")
        if items:
            fetch(items, os.environ, Path.cwd())
    except (CacheError, OSError, KeyError, ValueError) as exc:
        print(f"{HEADER} an input of this task could not be put in place: {exc}", file=sys.stderr)
        return EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
