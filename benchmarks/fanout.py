"""The executor at scale: an N-job fan-out through `snakemake --executor saje` on the emulator.

    .venv/bin/python benchmarks/fanout.py [--n 1000] [--max-nodes 10] [--slots 8]

What runs: Snakemake (in this process, as `snakemake --executor saje` would) with SAJE's executor,
a workflow of N independent jobs plus a local `all`, against `saje emulator start --with-azurite`
in a child process, with no default storage (SAJE stages sources and outputs through Azurite).
So everything the executor does is real: pool creation, autoscale from 0, bulk create_tasks,
one filtered list per poll, output files uploaded by the node agent and downloaded by SAJE.

What does not: the task's command. A real task runs `python -m snakemake` on the node (seconds of
CPU each, N times over on a 2-core machine), which measures the machine, not the executor; here
the command only writes the job's outputs. The executor cannot tell the difference.

Reported: executor wall time (Snakemake start to end), Batch REST calls by kind per job (the
emulator counts requests, GET /_saje/requests), status polls and task-list requests per poll,
and peak RSS of this process (Snakemake + executor; the emulator lives in its child process).
Targets: <= 0.05 task-create calls per job; <= 1 list call per poll for the whole run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SNAKEFILE = """\
N = {n}

rule all:
    input: expand("out/{{i}}.txt", i=range(N))

rule work:
    output: "out/{{i}}.txt"
    shell: "echo {{wildcards.i}} > {{output}}"
"""
TASK_CREATE = "POST /jobs/{}/addtaskcollection"
TASK_LIST = "GET /jobs/{}/tasks"


def start_emulator(data_dir: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """`saje emulator start --with-azurite` as a child process; the client environment it prints."""
    saje = Path(sys.executable).with_name("saje")
    proc = subprocess.Popen(
        [str(saje), "emulator", "start", "--with-azurite", "--data-dir", str(data_dir),
         "--time-scale", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.match(r"\s*export (\w+)='(.*)'$", line.rstrip("\n"))
        if match:
            env[match.group(1)] = match.group(2)
        if line.startswith("Ctrl-C"):
            return proc, env
    raise SystemExit(f"the emulator did not start (exit code {proc.wait()})")


def control(env: dict[str, str], method: str, path: str, body: dict | None = None) -> dict:
    """A call to the emulator's control endpoints (GET /_saje/requests, POST /_saje/faults, ...)."""
    from azure.batch import BatchClient
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.rest import HttpRequest

    client = BatchClient(env["SNAKEMAKE_SAJE_ACCOUNT_URL"], AzureNamedKeyCredential(
        env["SNAKEMAKE_SAJE_ACCOUNT_NAME"], env["SNAKEMAKE_SAJE_ACCOUNT_KEY"]))
    try:
        response = client.send_request(HttpRequest(method, path, json=body))
        response.raise_for_status()
        return response.json()
    finally:
        client.close()


def request_counts(env: dict[str, str]) -> dict[str, int]:
    return control(env, "GET", "/_saje/requests")


@contextmanager
def fanout_on_the_emulator(n: int, prefix: str) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """(client environment, workflow directory, temporary directory): the emulator started in a
    child process and an N-job fan-out written; the emulator is stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        tmp_path = Path(tmp)
        emulator, env = start_emulator(tmp_path / "emulator")
        try:
            os.environ.update(env)
            workdir = tmp_path / "wf"
            workdir.mkdir()
            (workdir / "Snakefile").write_text(SNAKEFILE.format(n=n))
            yield env, workdir, tmp_path
        finally:
            os.chdir(tmp)
            emulator.terminate()
            emulator.wait(30)


def instrument(ledger: Path | None = None) -> dict[str, int]:
    """Replace the node-side command (see the module docstring) and count the executor's polls.
    With `ledger`, each task also appends its Batch task id to that file: one line per run of it."""
    from snakemake_executor_saje import executor

    polls = {"polls": 0}

    def write_outputs(self, job) -> str:
        outputs = [str(f) for f in job.output]
        dirs = sorted({os.path.dirname(o) for o in outputs if os.path.dirname(o)})
        steps = [f"mkdir -p {' '.join(map(shlex.quote, dirs))}"] if dirs else []
        steps += [f"echo {job.jobid} > {shlex.quote(o)}" for o in outputs]
        if ledger is not None:
            steps.append(f"echo $AZ_BATCH_TASK_ID >> {shlex.quote(str(ledger))}")
        return " && ".join(steps)

    check = executor.Executor.check_active_jobs

    async def counted(self, active_jobs):
        polls["polls"] += 1
        async for info in check(self, active_jobs):
            yield info

    executor.Executor._job_command = write_outputs  # Snakemake's command (and the node check) are never built
    executor.Executor.check_active_jobs = counted
    return polls


def snakemake_args(n: int, max_nodes: int, slots: int, poll: float, quiet: tuple[str, ...] = ("all",)) -> list[str]:
    """The `snakemake` command line of a benchmark run (without the program name)."""
    return [
        "--executor", "saje", "--jobs", str(n), "--scheduler", "greedy", "--quiet", *quiet,
        "--latency-wait", "5", "--saje-vm-size", "Standard_D2s_v5",
        "--saje-task-slots-per-node", str(slots), "--saje-max-nodes", str(max_nodes),
        "--saje-autoscale-interval", "5", "--saje-snakemake-install", "none",
        "--saje-poll-interval", str(poll),
    ]


def run(n: int, max_nodes: int, slots: int, poll: float) -> dict:
    with fanout_on_the_emulator(n, "saje-bench-") as (env, workdir, _):
        polls = instrument()
        from snakemake.cli import main as snakemake_main

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        before = request_counts(env)
        os.chdir(workdir)
        started = time.monotonic()
        try:
            snakemake_main(snakemake_args(n, max_nodes, slots, poll))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        wall = time.monotonic() - started
        after = request_counts(env)
        produced = len(list((workdir / "out").glob("*.txt"))) if (workdir / "out").exists() else 0
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after) if after.get(k, 0) - before.get(k, 0)}
    return {
        "n": n, "exit_code": code, "outputs": produced, "wall_seconds": round(wall, 1),
        "jobs_per_second": round(n / wall, 1),
        "calls": calls, "calls_per_job": {k: round(v / n, 4) for k, v in calls.items()},
        "task_create_per_job": round(calls.get(TASK_CREATE, 0) / n, 4),
        "polls": polls["polls"], "task_list_requests": calls.get(TASK_LIST, 0),
        "list_requests_per_poll": round(calls.get(TASK_LIST, 0) / max(1, polls["polls"]), 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_run_mib": round(rss_before / 1024, 1),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="jobs in the fan-out (default 1000; 10000 on request)")
    parser.add_argument("--max-nodes", type=int, default=10, help="autoscale upper bound (default 10)")
    parser.add_argument("--slots", type=int, default=8, help="task slots per node (default 8, 4x a D2s_v5's vCPUs)")
    parser.add_argument("--poll", type=float, default=2.0, help="--saje-poll-interval in seconds (default 2)")
    args = parser.parse_args()
    result = run(args.n, args.max_nodes, args.slots, args.poll)
    print(json.dumps(result, indent=2))
    ok = (result["exit_code"] == 0 and result["outputs"] == args.n and result["task_create_per_job"] <= 0.05
          and result["list_requests_per_poll"] <= 1.0)
    print("targets met" if ok else "TARGETS MISSED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
