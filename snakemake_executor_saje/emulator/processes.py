"""Finding and ending the processes of emulated nodes, and of an emulator that died.

A node's processes are every process whose environment names the node's root directory in
AZ_BATCH_NODE_ROOT_DIR: the agent gives that variable to every task, start task, preparation and
release task, and the ssh shim gives it to every command it runs "on" a node (MPI daemons and
their ranks), and children inherit it. Sessions and process groups are not enough: a launcher's
daemon that calls setsid(), or anything left by a killed emulator, has left them, but it still
carries its node's environment. So the emulator ends a node (removal, reboot, shutdown, the next
start after a crash) by ending every process whose AZ_BATCH_NODE_ROOT_DIR lies under that node's
root (or under the data dir's `nodes/` for all nodes), read from /proc/<pid>/environ.

A process is named in pid files by (pid, start time): the start time (field 22 of
/proc/<pid>/stat) tells a live process from a later one that reused its pid.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

NODE_ROOT_VARIABLE = "AZ_BATCH_NODE_ROOT_DIR"
GRACE_SECONDS = 3.0
_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessId:
    """A process as a pid file names it: its pid and its start time (clock ticks since boot)."""

    pid: int
    start_time: int | None

    def as_dict(self) -> dict[str, int | None]:
        return {"pid": self.pid, "startTime": self.start_time}

    @classmethod
    def from_dict(cls, data: object) -> "ProcessId | None":
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            return None
        start = data.get("startTime")
        return cls(data["pid"], start if isinstance(start, int) else None)

    @classmethod
    def of(cls, pid: int) -> "ProcessId":
        return cls(pid, start_time(pid))

    def alive(self) -> bool:
        """Still this process (same pid, same start time) and not a zombie."""
        stat = _stat(self.pid)
        if stat is None:
            return _exists(self.pid) if not _PROC.is_dir() else False
        return stat.state != "Z" and (self.start_time is None or stat.start_time == self.start_time)


def start_time(pid: int) -> int | None:
    stat = _stat(pid)
    return stat.start_time if stat else None


@dataclass(frozen=True)
class _Stat:
    state: str
    ppid: int
    start_time: int


def _stat(pid: int) -> _Stat | None:
    """State letter, parent and start time from /proc/<pid>/stat; None when there is no such process."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parens
    return _Stat(fields[0], int(fields[1]), int(fields[19]))


def _pids() -> list[int]:
    try:
        return [int(entry.name) for entry in _PROC.iterdir() if entry.name.isdigit()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Live processes below `pid` in the process tree (zombies are walked through, not listed)."""
    children: dict[int, list[int]] = {}
    zombies = set()
    for other in _pids():
        stat = _stat(other)
        if stat is not None:
            children.setdefault(stat.ppid, []).append(other)
            if stat.state == "Z":
                zombies.add(other)
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child not in zombies:
            found.append(child)
        todo.extend(children.get(child, []))
    return sorted(found)


def with_variable(name: str, value: str) -> list[int]:
    """Live processes (this one left out) whose environment has name=value."""
    me = os.getpid()
    return [pid for pid in _pids() if pid != me and environ_value(pid, name) == value
            and (stat := _stat(pid)) is not None and stat.state != "Z"]


def command_line(pid: int) -> str:
    """The process's command line, for messages ('' when it is gone)."""
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def environ_value(pid: int, name: str) -> str | None:
    """A variable of a process's environment, or None (not set, gone, or not ours to read)."""
    try:
        environ = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


def node_root_of(pid: int) -> str | None:
    """AZ_BATCH_NODE_ROOT_DIR of a process, or None (none set, gone, or not ours to read)."""
    return environ_value(pid, NODE_ROOT_VARIABLE)


def processes_under(root: Path | str) -> list[int]:
    """Live processes (zombies left out) of the node(s) whose root is `root` or lies under it."""
    prefix = str(Path(root)).rstrip("/") + "/"
    me = os.getpid()
    found = []
    for pid in _pids():
        if pid == me:
            continue
        node_root = node_root_of(pid)
        if node_root is None or not (node_root.rstrip("/") + "/").startswith(prefix):
            continue
        stat = _stat(pid)
        if stat is not None and stat.state != "Z":
            found.append(pid)
    return found


def end(pids: Iterable[int], grace: float = GRACE_SECONDS) -> list[int]:
    """SIGTERM each process, SIGKILL what is still alive after `grace` seconds; the pids that
    were signalled. Zombies are not waited for (their parent reaps them)."""
    targets = [ProcessId.of(pid) for pid in pids]
    targets = [p for p in targets if p.alive()]
    for proc in targets:
        _signal(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.alive() for p in targets):
        time.sleep(0.05)
    for proc in targets:
        if proc.alive():
            _signal(proc.pid, signal.SIGKILL)
    return [p.pid for p in targets]


def end_under(root: Path | str, grace: float = GRACE_SECONDS) -> list[int]:
    """End every process of the node(s) under `root`, also those started while ending the first
    ones (a dying launcher may still fork); the pids ended."""
    ended: list[int] = []
    for _ in range(3):
        pids = processes_under(root)
        if not pids:
            break
        ended.extend(end(pids, grace))
    return ended


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
