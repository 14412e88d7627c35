"""2,000 jobs through `snakemake --executor saje` while Batch throttles 30% of the requests.

    .venv/bin/python benchmarks/throttle_storm.py [--n 2000] [--rate 0.3]

The fan-out of benchmarks/fanout.py (same emulator in a child process, same stand-in task
command, no default storage), with the emulator answering a random 30% of the Batch requests
429 TooManyRequests with Retry-After 1 s (`POST /_saje/faults`, throttle_rate): task creation,
status polls, pool checks, clean-up, all of them.

Reported and checked:
- every job done, and the run said once that Batch throttles (not once per request);
- no duplicate task: per task id, the emulator's creations (GET /_saje/task-adds: 1 each) and
  the task's runs (each task appends its id to a ledger: 1 line each), and one task id per
  Snakemake job (no second attempt);
- flat memory: the RSS of this process (Snakemake and the executor) sampled every second; the
  growth over the second half of the run stays under 10% of the peak.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout import TASK_CREATE, control, fanout_on_the_emulator, instrument, request_counts, snakemake_args  # noqa: E402


class RssSampler(threading.Thread):
    """This process's resident set size (MiB), every `interval` seconds."""

    def __init__(self, interval: float = 1.0):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            with open("/proc/self/status") as status:
                kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            self.samples.append((time.monotonic() - started, kib / 1024))
            self.stop.wait(self.interval)


def run(n: int, rate: float, max_nodes: int, slots: int, poll: float) -> dict:
    with fanout_on_the_emulator(n, "saje-storm-") as (env, workdir, tmp_path):
        ledger = tmp_path / "ledger.txt"
        instrument(ledger)
        from snakemake.cli import main as snakemake_main

        before = request_counts(env)
        control(env, "POST", "/_saje/faults", {"throttle_rate": rate, "throttle_status": 429,
                                                "retry_after_seconds": 1, "seed": 20261201})
        sampler = RssSampler()
        sampler.start()
        os.chdir(workdir)
        started = time.monotonic()
        log = io.StringIO()
        try:
            with contextlib.redirect_stderr(log):  # quiet, but not so quiet as to drop SAJE's warnings
                snakemake_main(snakemake_args(n, max_nodes, slots, poll, quiet=("progress", "rules", "host", "reason")))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        wall = time.monotonic() - started
        sampler.stop.set()
        sampler.join(5)
        control(env, "POST", "/_saje/faults", {"throttle_rate": 0.0})
        after = request_counts(env)
        adds = control(env, "GET", "/_saje/task-adds")
        produced = len(list((workdir / "out").glob("*.txt"))) if (workdir / "out").exists() else 0
        runs = collections.Counter(ledger.read_text().split()) if ledger.exists() else collections.Counter()
    text = log.getvalue()
    created = collections.Counter(adds["created"].values())
    task_ids = [key.rsplit("/", 1)[1] for key in adds["created"]]
    attempts = collections.Counter(task_id.rsplit("-a", 1)[1] for task_id in task_ids)
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after) if after.get(k, 0) - before.get(k, 0)}
    rss = [mib for _, mib in sampler.samples]
    half = rss[len(rss) // 2:] or rss
    return {
        "n": n, "throttle_rate": rate, "exit_code": code, "outputs": produced, "wall_seconds": round(wall, 1),
        "requests_served": sum(calls.values()), "task_create_calls": calls.get(TASK_CREATE, 0),
        "throttled_notices": text.count("is throttling requests"), "back_notices": text.count("answers again"),
        "tasks_created": len(task_ids), "creations_per_task": dict(created),
        "adds_refused_task_exists": sum(adds["already_existed"].values()),
        "task_ids_by_attempt": dict(attempts),
        "runs_per_task": dict(collections.Counter(runs.values())), "tasks_run": len(runs),
        "rss_mib": {"first": round(rss[0], 1), "peak": round(max(rss), 1), "last": round(rss[-1], 1),
                    "second_half_growth": round(half[-1] - min(half), 1), "samples": len(rss)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="jobs in the fan-out (default 2000)")
    parser.add_argument("--rate", type=float, default=0.3, help="share of Batch requests throttled (default 0.3)")
    parser.add_argument("--max-nodes", type=int, default=10, help="autoscale upper bound (default 10)")
    parser.add_argument("--slots", type=int, default=8, help="task slots per node (default 8)")
    parser.add_argument("--poll", type=float, default=2.0, help="--saje-poll-interval in seconds (default 2)")
    args = parser.parse_args()
    result = run(args.n, args.rate, args.max_nodes, args.slots, args.poll)
    print(json.dumps(result, indent=2))
    rss = result["rss_mib"]
    ok = (result["exit_code"] == 0 and result["outputs"] == args.n and result["tasks_created"] == args.n
          and result["creations_per_task"] == {1: args.n} and result["runs_per_task"] == {1: args.n}
          and result["task_ids_by_attempt"] == {"1": args.n} and result["throttled_notices"] >= 1
          and rss["second_half_growth"] <= 0.10 * rss["peak"])
    print("targets met" if ok else "TARGETS MISSED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
