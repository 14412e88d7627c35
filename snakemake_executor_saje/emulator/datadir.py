"""The emulator's data dir: what survives a restart, who runs on it, and keeping it private.

    <data-dir>/                 0700
        account.json            0600  lasting: account keys, the endpoints' ports, the token issuer
        emulator.json           0600  while an emulator runs: its pid, endpoint, Azurite's pid
        emulator.lock                 flock held by the running emulator
        batch.sqlite            0600  pools, jobs, tasks (their SAS URLs too)
        nodes/ azurite/ sys/ tls/ arm/   0700

One emulator at a time: `acquire` takes the lock or says which emulator holds it. A lock that
can be taken while emulator.json is still there means the last emulator died without stopping
(kill -9, a lost machine): `reap_stale` then stops what it left running, its Azurite (named in
emulator.json by pid and start time) and every process of its nodes (`processes.end_under`),
before the new emulator starts on the same state.

Restart rule (`account.json`): the account key, the token issuer's key and the identity header
are made once per data dir and reused, so clients keep authenticating; the Batch endpoint's port
is the one given (`--port N`), else the port the data dir last served on, else a free one; Azurite
gets the port it had before, so blob URLs held by tasks and clients stay valid.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import processes

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# What processes the emulator starts (tasks, Azurite) create is theirs alone, as on a node VM.
PRIVATE_UMASK = 0o077


class DataDirInUse(RuntimeError):
    """Another emulator is running on this data dir."""


def make_private_dir(path: Path | str, *, fix_existing: bool = False) -> Path:
    """Create `path` and every missing parent 0700 (mkdir -p gives parents the umask's mode);
    with `fix_existing`, an existing `path` of ours is made 0700 too."""
    path = Path(path)
    missing = []
    for level in (path, *path.parents):
        if level.exists():
            break
        missing.append(level)
    for level in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another thread made it meanwhile
            level.mkdir(mode=PRIVATE_DIR_MODE)
    if fix_existing and not missing:
        with contextlib.suppress(PermissionError):
            info = path.stat()
            if info.st_uid == os.getuid() and info.st_mode & 0o777 != PRIVATE_DIR_MODE:
                path.chmod(PRIVATE_DIR_MODE)
    return path


def touch_private(path: Path) -> Path:
    """Create `path` 0600 if missing (SQLite's -wal and -shm files then get the same mode)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE_MODE)
    os.close(fd)
    with contextlib.suppress(PermissionError):
        path.chmod(PRIVATE_FILE_MODE)
    return path


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0600 (readers see the old or the new file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class SavedAccount:
    """account.json: what makes a restarted emulator the same account to its clients."""

    keys: dict[str, str] = field(default_factory=dict)  # account name -> key
    batch_port: int | None = None
    azurite_port: int | None = None
    token_issuer: dict[str, str] | None = None
    identity_header: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"accountKeys": self.keys, "batchPort": self.batch_port, "azuritePort": self.azurite_port,
                "tokenIssuer": self.token_issuer, "identityHeader": self.identity_header}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SavedAccount":
        def port(value: Any) -> int | None:
            return value if isinstance(value, int) and 0 < value < 65536 else None

        keys = data.get("accountKeys")
        return cls(keys={str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {},
                   batch_port=port(data.get("batchPort")), azurite_port=port(data.get("azuritePort")),
                   token_issuer=data.get("tokenIssuer") if isinstance(data.get("tokenIssuer"), dict) else None,
                   identity_header=data.get("identityHeader") if isinstance(data.get("identityHeader"), str) else None)

    def key(self, account_name: str, given: str | None, make: Callable[[], str]) -> str:
        """The key to serve: the one given (and kept from now on), else the saved one, else a new one."""
        key = given or self.keys.get(account_name) or make()
        self.keys[account_name] = key
        return key


class DataDir:
    ACCOUNT = "account.json"
    RUNNING = "emulator.json"
    LOCK = "emulator.lock"

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock_fd: int | None = None

    @property
    def nodes(self) -> Path:
        return self.path / "nodes"

    # ----------------------------------------------------------------- one emulator at a time
    def acquire(self) -> None:
        """Make the dir private and take its lock; DataDirInUse names the emulator holding it."""
        make_private_dir(self.path, fix_existing=True)
        fd = os.open(self.path / self.LOCK, os.O_CREAT | os.O_RDWR, PRIVATE_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.running_record().get("pid", "unknown")
            raise DataDirInUse(
                f"An emulator (pid {holder}) is already running on {self.path}: stop it first"
                f" (saje emulator stop --data-dir {self.path}) or use another --data-dir.") from None
        self._lock_fd = fd

    @property
    def held(self) -> bool:
        return self._lock_fd is not None

    def release(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ----------------------------------------------------------------- what a dead emulator left
    def reap_stale(self) -> list[str]:
        """Stop what an emulator that died on this dir left running; what was stopped, for a log line.

        Call with the lock held: then no emulator runs here, and anything found is a leftover."""
        stopped = []
        record = self.running_record()
        azurite = processes.ProcessId.from_dict(record.get("azurite"))
        if azurite is not None and azurite.alive():
            # SIGTERM first: Azurite writes its metadata database out when it is told to stop.
            processes.end([azurite.pid], grace=15.0)
            stopped.append(f"Azurite (pid {azurite.pid})")
        ended = processes.end_under(self.nodes)
        if ended:
            stopped.append(f"{len(ended)} node process(es) (pids {', '.join(map(str, ended[:10]))})")
        self.clear_running()
        return stopped

    # ----------------------------------------------------------------- records
    def load_account(self) -> SavedAccount:
        return SavedAccount.from_dict(_read_json(self.path / self.ACCOUNT))

    def save_account(self, account: SavedAccount) -> None:
        write_private(self.path / self.ACCOUNT, json.dumps(account.as_dict(), indent=2) + "\n")

    def running_record(self) -> dict[str, Any]:
        return _read_json(self.path / self.RUNNING)

    def record_running(self, record: dict[str, Any]) -> None:
        write_private(self.path / self.RUNNING, json.dumps(record, indent=2) + "\n")

    def clear_running(self) -> None:
        (self.path / self.RUNNING).unlink(missing_ok=True)
