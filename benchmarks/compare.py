"""SAJE (both data routes), the official azure-batch executor plugin and local Snakemake, side by side.

    .venv/bin/python benchmarks/compare.py                      # N=1,000: local, saje, saje-storage, peer
    .venv/bin/python benchmarks/compare.py --n 10000            # local, saje
    .venv/bin/python benchmarks/compare.py --n 10000 --rows saje --jobs 200  # 200 jobs in flight, as profiles/ run
    .venv/bin/python benchmarks/compare.py --runs 3 --peer-runs 1 --n 1000 --n 10000  # the table of docs/performance.md

The workflow: N independent jobs, each `mkdir -p out && echo I > out/I.txt`, and a local `all`.
Locally Snakemake runs that line itself (`--cores 2`); the remote rows run it as the job's command
on the emulator's nodes (snakemake_child.py says how and why), so no side is favoured. Every row
uses `--scheduler greedy`: Snakemake's default ILP scheduler costs 3-4 times the CPU of the whole
local run at N=1,000 and would measure the scheduler, not the executors. The remote rows:
- saje: SAJE's own data route (no default storage: SAJE stages sources, brings outputs back);
- saje-storage: SAJE with `--default-storage-provider azure` on the emulator's Azurite;
- peer: snakemake-executor-plugin-azure-batch from PyPI in its own virtualenv (peer.py).

Each remote row gets a fresh `saje emulator start --with-azurite` (child process). Measured:
wall time (Snakemake start to end), total CPU (Snakemake + emulator + Azurite + task processes
and containers, only what the run itself cost: the emulator's and Azurite's start-up is taken off),
the Snakemake process's own CPU and peak RSS, Batch REST calls per job (the emulator counts the
requests it serves) and status polls. This process is a child subreaper, so processes that leave
their parent (a container's conmon) are reaped, and counted, here. Ratios are against the local row
of the same N. Exits non-zero when a run fails or a target of issue 11 is missed.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = Path(sys.executable).parent
CLK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36

SNAKEFILE = """\
N = {n}

rule all:
    input: expand("out/{{i}}.txt", i=range(N))

rule work:
    output: "out/{{i}}.txt"
    shell: "mkdir -p out && echo {{wildcards.i}} > out/{{wildcards.i}}.txt"
"""
SAJE_FLAGS = ["--executor", "saje", "--scheduler", "greedy", "--latency-wait", "5",
              "--saje-vm-size", "Standard_D2s_v5", "--saje-task-slots-per-node", "8", "--saje-max-nodes", "10",
              "--saje-autoscale-interval", "5", "--saje-snakemake-install", "none", "--saje-poll-interval", "2"]
STORAGE_CONTAINER, STORAGE_PREFIX = "bench", "run"
ALL_ROWS, LARGE_ROWS = ["local", "saje", "saje-storage", "peer"], ["local", "saje"]
MAX_PEER_N = 1000  # the peer's 6 Batch calls per job make 10,000 jobs an hour's run; issue 11 asks for SAJE and local there
# The emulator's service clock runs this much faster than real time: Azure's shortest autoscale
# interval (5 minutes, --saje-autoscale-interval 5) becomes 1 s, as in benchmarks/fanout.py.
TIME_SCALE = 300


@dataclass
class Result:
    row: str
    n: int
    ok: bool
    wall: float
    total_cpu: float
    snakemake_cpu: float
    peak_rss_mib: float
    calls: int | None = None
    polls: int | None = None
    by_kind: dict[str, int] = field(default_factory=dict)
    load: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
    jobs: int | None = None  # Snakemake's --jobs of a SAJE row, when not N


# --------------------------------------------------------------------- processes and their CPU
def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int, *, own: bool = True, waited: bool = True) -> float:
    """CPU of a live process (own) and of the children it has waited for (waited), /proc/PID/stat."""
    fields = [int(v) for v in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15]]
    return ((fields[0] + fields[1]) * own + (fields[2] + fields[3]) * waited) / CLK


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def reap_orphans(grace: float = 10.0) -> None:
    """Wait for every process reparented to this subreaper (their CPU then counts as ours)."""
    deadline = time.monotonic() + grace
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)


class EmulatorProcess:
    """`saje emulator start --with-azurite` in a child process; its client environment."""

    def __init__(self, data_dir: Path, *, tls: bool = False):
        # A fresh service each time: a data directory kept from an earlier run restores its Batch
        # state and its Azurite blobs, and Snakemake would find that run's outputs in storage.
        shutil.rmtree(data_dir, ignore_errors=True)
        argv = [str(VENV_BIN / "saje"), "emulator", "start", "--with-azurite", "--data-dir", str(data_dir),
                "--node-boot-seconds", "0.2", "--time-scale", str(TIME_SCALE), *(["--tls"] if tls else [])]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.env: dict[str, str] = {}
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = re.match(r"\s*export (\w+)='(.*)'$", line.rstrip("\n"))
            if match:
                self.env[match.group(1)] = match.group(2)
            if line.startswith("Ctrl-C"):
                break
        else:
            raise SystemExit(f"the emulator did not start (exit code {self.proc.wait()})")
        self.proc.stdout.close()

    def cpu(self) -> float:
        """The emulator's CPU so far, with Azurite's and its waited task processes'."""
        return process_cpu(self.proc.pid) + sum(_cpu_or_zero(p) for p in descendants(self.proc.pid))

    def parts(self) -> dict[str, float]:
        """The emulator's own CPU, its finished task processes', and Azurite's, so far."""
        azurite = sum(_cpu_or_zero(p) for p in descendants(self.proc.pid) if _comm(p) == "node")
        return {"emulator": process_cpu(self.proc.pid, waited=False),
                "tasks": process_cpu(self.proc.pid, own=False), "azurite": azurite}

    def requests(self) -> dict[str, int]:
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential
        from azure.core.rest import HttpRequest

        url = self.env["SNAKEMAKE_SAJE_ACCOUNT_URL"]
        verify = self.env.get("REQUESTS_CA_BUNDLE") or True
        client = BatchClient(url, AzureNamedKeyCredential(self.env["SNAKEMAKE_SAJE_ACCOUNT_NAME"],
                                                          self.env["SNAKEMAKE_SAJE_ACCOUNT_KEY"]), connection_verify=verify)
        try:
            response = client.send_request(HttpRequest("GET", "/_saje/requests"))
            response.raise_for_status()
            return response.json()
        finally:
            client.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cpu_or_zero(pid: int) -> float:
    try:
        return process_cpu(pid)
    except OSError:
        return 0.0


# --------------------------------------------------------------------- one row
PROFILE: Path | None = None  # --profile: py-spy samples the emulator and Snakemake (their CPU then counts py-spy's)
JOBS: int | None = None  # --jobs: Snakemake's --jobs for SAJE's rows (None: N, every job in flight at once)


def py_spy(output: Path, *target: str) -> list[str]:
    """py-spy's collapsed stacks of a process (--pid PID) or a command (-- ARGV), 100 samples/s.

    Only the thread holding the GIL is sampled (--gil): py-spy's idle detection takes threads
    blocked on a lock or a queue for busy on this VM, so without it the stacks are wall time."""
    return [str(VENV_BIN / "py-spy"), "record", "--gil", "--format", "raw", "--rate", "100", "--output", str(output), *target]


def run_snakemake(python: str, mode: str, workdir: Path, env: dict[str, str], args: list[str]) -> tuple[bool, float, float, dict]:
    """(ok, wall s, the Snakemake process's own CPU s, its report)."""
    report = workdir / "report.json"
    argv = [python, str(HERE / "snakemake_child.py"), mode, str(report), *args]
    if PROFILE is not None:
        argv = py_spy(PROFILE / f"{mode}-snakemake.txt", "--", *argv)
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate()
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): the run ends with us
        proc.kill()
        proc.wait()
        raise
    wall = time.monotonic() - started
    (workdir / "snakemake.out").write_text(out)
    data = json.loads(report.read_text()) if report.exists() else {}
    return proc.returncode == 0, wall, data.get("cpu_seconds", 0.0), data


def run_row(row: str, n: int, scratch: Path) -> Result:
    workdir = scratch / f"{row}-{n}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    (workdir / "Snakefile").write_text(SNAKEFILE.format(n=n))
    load = os.getloadavg()[0]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE"))}
    if row == "local":
        before = children_cpu()
        ok, wall, own, data = run_snakemake(sys.executable, "local", workdir, base_env,
                                            ["--cores", "2", "--scheduler", "greedy", "--quiet", "all"])
        total = children_cpu() - before
        return Result(row, n, ok and _outputs(workdir, n), wall, total, own, data.get("peak_rss_mib", 0.0), load=load)
    before = children_cpu()
    emulator = EmulatorProcess(scratch / f"emulator-{row}-{n}", tls=row == "peer")
    spy = None
    try:
        env = {**base_env, **emulator.env}
        startup = emulator.cpu()
        parts_before = emulator.parts()
        if PROFILE is not None:
            spy = subprocess.Popen(py_spy(PROFILE / f"{row}-emulator.txt", "--pid", str(emulator.proc.pid)),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        calls_before = emulator.requests()
        if row == "peer":
            from peer import peer_run  # benchmarks/peer.py

            python, args, extra = peer_run(emulator, workdir, n)
            env.update(extra)
            env.pop("PYTHONPATH", None)  # Snakemake would find SAJE's plugin there, which needs azure-batch 15
        else:
            python, args = sys.executable, [*SAJE_FLAGS, "--jobs", str(JOBS or n), "--quiet", "all"]
            if row == "saje-storage":
                args += storage_args(emulator, env)
        ok, wall, own, data = run_snakemake(python, row, workdir, env, args)
        calls_after = emulator.requests()
        parts = {k: round(v - parts_before[k], 2) for k, v in emulator.parts().items()}
        ok = ok and (_outputs(workdir, n) if row == "saje" else True)
    finally:
        emulator.stop()
        if PROFILE is not None and spy is not None:
            spy.wait(60)
        reap_orphans()
    total = children_cpu() - before - startup
    by_kind = {k: calls_after.get(k, 0) - calls_before.get(k, 0) for k in calls_after
               if calls_after.get(k, 0) - calls_before.get(k, 0)}
    return Result(row, n, ok, wall, total, own, data.get("peak_rss_mib", 0.0), calls=sum(by_kind.values()),
                  polls=data.get("polls"), by_kind=by_kind, load=load, parts={"snakemake": round(own, 2), **parts},
                  jobs=JOBS if row != "peer" else None)


def storage_args(emulator: EmulatorProcess, env: dict[str, str]) -> list[str]:
    """Default storage on the emulator's Azurite; the task's upload gets the container and a SAS."""
    import datetime as dt

    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    service = BlobServiceClient.from_connection_string(  # HTTPS with the emulator's certificate under --tls
        env["AZURITE_CONNECTION_STRING"], connection_verify=env.get("REQUESTS_CA_BUNDLE") or True)
    container = service.get_container_client(STORAGE_CONTAINER)
    if not container.exists():
        container.create_container()
    key = re.search(r"AccountKey=([^;]+)", env["AZURITE_CONNECTION_STRING"]).group(1)
    env["BENCH_BLOB_URL"] = container.url
    env["BENCH_SAS"] = generate_container_sas(service.account_name, STORAGE_CONTAINER, account_key=key,
                                              permission=ContainerSasPermissions(write=True, create=True),
                                              expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=6))
    env["BENCH_PREFIX"] = STORAGE_PREFIX
    return ["--default-storage-provider", "azure", "--default-storage-prefix",
            f"az://{STORAGE_CONTAINER}/{STORAGE_PREFIX}", "--storage-azure-account-name", service.account_name,
            "--envvars", "AZURITE_CONNECTION_STRING", "BENCH_BLOB_URL", "BENCH_SAS", "BENCH_PREFIX"]


def _outputs(workdir: Path, n: int) -> bool:
    out = workdir / "out"
    return out.is_dir() and sum(1 for _ in out.glob("*.txt")) == n


# --------------------------------------------------------------------- the table
def median_result(results: list[Result]) -> Result:
    first = results[0]
    med = lambda attr: statistics.median(getattr(r, attr) for r in results)  # noqa: E731
    return Result(first.row, first.n, all(r.ok for r in results), med("wall"), med("total_cpu"),
                  med("snakemake_cpu"), med("peak_rss_mib"),
                  calls=None if first.calls is None else int(med("calls")),
                  polls=None if first.polls is None else int(med("polls")), by_kind=first.by_kind,
                  load=max(r.load for r in results), jobs=first.jobs)


def table(results: list[Result]) -> str:
    local = {r.n: r for r in results if r.row == "local"}
    head = ("| row | N | wall s | total CPU s | CPU ms/job | Snakemake CPU s | peak RSS MiB | Batch calls/job "
            "| wall / local | CPU / local | Snakemake CPU / local | RSS - local MiB | load |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in results:
        base = local.get(r.n)
        ratio = (lambda a, b: f"{a / b:.2f}" if base and b else "-")  # noqa: E731
        lines.append(
            f"| {r.row}{f' --jobs {r.jobs}' if r.jobs else ''} | {r.n:,} | {r.wall:.1f} | {r.total_cpu:.1f} | {1000 * r.total_cpu / r.n:.1f} "
            f"| {r.snakemake_cpu:.1f} | {r.peak_rss_mib:.0f} | {'-' if r.calls is None else f'{r.calls / r.n:.3f}'} "
            f"| {ratio(r.wall, base.wall if base else 0)} | {ratio(r.total_cpu, base.total_cpu if base else 0)} "
            f"| {ratio(r.snakemake_cpu, base.snakemake_cpu if base else 0)} "
            f"| {f'{r.peak_rss_mib - base.peak_rss_mib:+.0f}' if base else '-'} | {r.load:.1f} |"
            + ("" if r.ok else " FAILED"))
    return "\n".join(lines)


def targets_missed(results: list[Result]) -> list[str]:
    """Issue 11's targets for SAJE's own route against local, at each N."""
    local = {r.n: r for r in results if r.row == "local"}
    missed = [f"{r.row} N={r.n} failed" for r in results if not r.ok]
    for r in results:
        base = local.get(r.n)
        if r.row != "saje" or base is None:
            continue
        if r.n == 1000 and r.total_cpu > 3 * base.total_cpu:
            missed.append(f"total CPU {r.total_cpu:.1f} s > 3 x local {base.total_cpu:.1f} s")
        if r.n == 1000 and r.wall > 2 * base.wall:
            missed.append(f"wall {r.wall:.1f} s > 2 x local {base.wall:.1f} s")
        if r.snakemake_cpu > 1.1 * base.snakemake_cpu:
            missed.append(f"N={r.n}: Snakemake CPU {r.snakemake_cpu:.1f} s > local {base.snakemake_cpu:.1f} s + 10%")
        if r.peak_rss_mib > base.peak_rss_mib + 30:
            missed.append(f"N={r.n}: peak RSS {r.peak_rss_mib:.0f} MiB > local {base.peak_rss_mib:.0f} + 30 MiB")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, action="append", help="jobs (repeatable; default 1000)")
    parser.add_argument("--rows", help="comma-separated rows (default: local,saje,saje-storage,peer up to "
                        f"N={MAX_PEER_N:,}, local,saje above)")
    parser.add_argument("--runs", type=int, default=1, help="runs per row; the table shows medians")
    parser.add_argument("--peer-runs", type=int, help="runs of the peer row (default --runs; one takes minutes)")
    parser.add_argument("--jobs", type=int, help="Snakemake's --jobs for SAJE's rows (default: N, every job in flight "
                        "at once; the profiles under profiles/ use 200)")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--profile", type=Path, help="write py-spy's collapsed stacks of the emulator and Snakemake "
                        "here (pip install .[bench]); CPU figures then include py-spy's")
    args = parser.parse_args()
    global PROFILE, JOBS
    PROFILE, JOBS = args.profile, args.jobs
    if PROFILE is not None:
        PROFILE.mkdir(parents=True, exist_ok=True)
    become_subreaper()
    # SIGTERM unwinds like Ctrl-C, so the running Snakemake and emulator are stopped (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(HERE))
    results, every = [], []
    with tempfile.TemporaryDirectory(prefix="saje-compare-") as tmp:
        for n in args.n or [1000]:
            rows = args.rows.split(",") if args.rows else ALL_ROWS if n <= MAX_PEER_N else LARGE_ROWS
            for row in rows:
                runs = []
                for run in range(args.peer_runs or args.runs if row == "peer" else args.runs):
                    result = run_row(row, n, Path(tmp))
                    print(f"{row} N={n} run {run + 1}: wall {result.wall:.1f} s, total CPU {result.total_cpu:.1f} s, "
                          f"Snakemake CPU {result.snakemake_cpu:.1f} s, calls {result.calls}, load {result.load:.1f}, "
                          f"CPU by process {result.parts}"
                          + ("" if result.ok else f" FAILED (see {tmp}/{row}-{n}/snakemake.out)"), file=sys.stderr)
                    if not result.ok:
                        print((Path(tmp) / f"{row}-{n}" / "snakemake.out").read_text()[-3000:], file=sys.stderr)
                    runs.append(result)
                every.extend(runs)
                results.append(median_result(runs))
    print(f"\n{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"medians of {args.runs} run(s); load = highest 1-minute load average at a run's start\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in every], indent=2))
    missed = targets_missed(results)
    for line in missed:
        print(f"TARGET MISSED: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
