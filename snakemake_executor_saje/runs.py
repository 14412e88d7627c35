"""A run's name tag on Azure, and telling runs whose Snakemake is gone from live ones.

Everything a run creates carries its tag: pools and Batch jobs as Batch metadata, the staging
container as blob metadata (names with '_' instead of '-', as blob metadata names must be C#
identifiers; values percent-encoded, as they travel in HTTP headers):

    saje-run              the run id (also in the pool, job and container names)
    saje-host, saje-user  where and as whom Snakemake runs
    saje-pid              Snakemake's process id there
    saje-workdir          the workflow directory
    saje-started          when the run started (ISO 8601, UTC)
    saje-heartbeat        when the running Snakemake last said it is alive; refreshed every
    saje-heartbeat-every  this many seconds (--saje-heartbeat-interval)

A run is *gone* when its Snakemake is known to be dead (started on this machine and that process
is no more) or, when it cannot be checked (another machine), when its heartbeat is older than
three beats and older than the caller's limit (`saje cleanup --older-than`, default 15 minutes).
`saje cleanup`, `saje status` and a rerun of the same workflow directory all judge with `judge`.
"""
from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping
from urllib.parse import quote, unquote

RUN = "saje-run"
HOST = "saje-host"
USER = "saje-user"
PID = "saje-pid"
WORKDIR = "saje-workdir"
STARTED = "saje-started"
HEARTBEAT = "saje-heartbeat"
HEARTBEAT_EVERY = "saje-heartbeat-every"
NAMES = (RUN, HOST, USER, PID, WORKDIR, STARTED, HEARTBEAT, HEARTBEAT_EVERY)
BEATS_BEFORE_STALE = 3
DEFAULT_OLDER_THAN = dt.timedelta(minutes=15)
# A process that started this much after the run's start time is a later one that reused the pid.
_PID_REUSE_SLACK = dt.timedelta(seconds=5)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class RunTag:
    run_id: str
    host: str
    user: str
    pid: int | None
    workdir: str
    started: dt.datetime
    heartbeat: dt.datetime
    heartbeat_every: dt.timedelta

    @classmethod
    def current(cls, run_id: str, heartbeat_every: dt.timedelta, *, workdir: Path | str | None = None) -> "RunTag":
        """The tag of the run this process is making, started now."""
        now = utcnow()
        return cls(run_id, socket.gethostname(), _user(), os.getpid(), str(Path(workdir or os.getcwd()).resolve()),
                   now, now, heartbeat_every)

    def beat(self, moment: dt.datetime | None = None) -> "RunTag":
        return RunTag(**{**self.__dict__, "heartbeat": moment or utcnow()})

    # ----------------------------------------------------------------- to and from metadata
    def metadata(self) -> dict[str, str]:
        """name -> value, as pools and jobs carry it."""
        return {RUN: self.run_id, HOST: self.host, USER: self.user, PID: str(self.pid or ""),
                WORKDIR: self.workdir, STARTED: _iso(self.started), HEARTBEAT: _iso(self.heartbeat),
                HEARTBEAT_EVERY: str(int(self.heartbeat_every.total_seconds()))}

    def container_metadata(self) -> dict[str, str]:
        return {name.replace("-", "_"): quote(value, safe="") for name, value in self.metadata().items()}

    @classmethod
    def from_metadata(cls, items: Mapping[str, str] | None) -> "RunTag | None":
        """The tag in pool/job metadata or container metadata; None when it is not a tagged run's."""
        if not items:
            return None
        found = {name: items[name] for name in NAMES if name in items}
        if not found:  # container metadata: underscores, percent-encoded values
            found = {name: unquote(items[key]) for name in NAMES if (key := name.replace("-", "_")) in items}
        started = _parse_time(found.get(STARTED))
        if not found.get(RUN) or started is None:
            return None
        try:
            every = dt.timedelta(seconds=int(found.get(HEARTBEAT_EVERY) or 0))
            pid = int(found[PID]) if found.get(PID) else None
        except ValueError:
            return None
        return cls(found[RUN], found.get(HOST, ""), found.get(USER, ""), pid, found.get(WORKDIR, ""), started,
                   _parse_time(found.get(HEARTBEAT)) or started, every)


def metadata_dict(items: Iterable | None) -> dict[str, str]:
    """Batch metadata (SDK items with .name/.value) as a dict."""
    return {item.name: item.value for item in items or [] if getattr(item, "name", None)}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


# --------------------------------------------------------------------- alive or gone
@dataclass(frozen=True)
class Verdict:
    gone: bool
    reason: str


def judge(tag: RunTag, *, now: dt.datetime | None = None, older_than: dt.timedelta = DEFAULT_OLDER_THAN,
          this_host: str | None = None,
          process_started: Callable[[int], dt.datetime | None] | None = None) -> Verdict:
    """Whether the run's Snakemake is gone, and why (see the module doc)."""
    now = now or utcnow()
    this_host = socket.gethostname() if this_host is None else this_host
    process_started = process_started or process_start_time
    if tag.host == this_host and tag.pid:
        started = process_started(tag.pid)
        if started is None:
            return Verdict(True, f"its Snakemake (pid {tag.pid} on this machine) is gone")
        if started > tag.started + _PID_REUSE_SLACK:
            return Verdict(True, f"its Snakemake is gone (pid {tag.pid} is now another process)")
        return Verdict(False, f"its Snakemake (pid {tag.pid}) still runs on this machine")
    age = now - tag.heartbeat
    limit = max(older_than, BEATS_BEFORE_STALE * tag.heartbeat_every)
    if age > limit:
        return Verdict(True, f"no heartbeat from {tag.host or 'its machine'} for {_age(age)} (limit {_age(limit)})")
    return Verdict(False, f"heartbeat from {tag.host or 'its machine'} {_age(age)} ago")


def _age(delta: dt.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def process_start_time(pid: int) -> dt.datetime | None:
    """When process `pid` started on this machine, or None when there is no such process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # someone else's process: it exists
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)  # alive; its start time is unknown
    since_start = uptime - ticks / os.sysconf("SC_CLK_TCK")
    return utcnow() - dt.timedelta(seconds=since_start)


def parse_duration(text: str) -> dt.timedelta:
    """'90s', '15m', '2h', '1d' (a bare number is minutes) -> timedelta; ValueError otherwise."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    unit = text[-1] if text and text[-1] in units else "m"
    number = text[:-1] if text and text[-1] in units else text
    value = float(number)
    if value < 0:
        raise ValueError(text)
    return dt.timedelta(seconds=value * units[unit])


class Heartbeat:
    """Calls `beat` every `every` seconds on a daemon thread, from `start` until `stop`.

    `beat` must not raise (the caller logs its own failures): a missed heartbeat only makes the
    run look older to `saje cleanup`, which waits three beats before it calls a run gone."""

    def __init__(self, every: float, beat: Callable[[], None]):
        self.every = every
        self._beat = beat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failing = False  # the last beat failed (the caller's note, to say a failure once)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="saje-heartbeat", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
