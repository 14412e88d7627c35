"""Shared inputs reach each node once: bytes read from blob storage by N tasks sharing one input.

    .venv/bin/python benchmarks/shared_input.py                    # 200 tasks, a 500 MB input, 4 nodes
    .venv/bin/python benchmarks/shared_input.py --mb 5 --tasks 200

The workflow: N jobs, each reading `ref.bin` (the shared input) and its own small `own/I.txt`,
writing its output from both (`stat` of the reference, the content of its own file), through
SAJE's own data route on the emulator (4 nodes of 8 slots, autoscale from 0). Every blob request
of the run goes through a TCP proxy in front of Azurite that counts the bytes it answers, by blob:
that is what the nodes (and SAJE) read from storage. Target: at most nodes x size + the per-task
inputs. Exits non-zero when the target is missed or a job's output is wrong.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from compare import EmulatorProcess, run_snakemake  # noqa: E402
from tests.e2e.blob_proxy import BlobProxy  # noqa: E402

SNAKEFILE = """\
rule all:
    input: expand("out/{{i}}.txt", i=range({n}))

rule use:
    input: ref="ref.bin", own="own/{{i}}.txt"
    output: "out/{{i}}.txt"
    shell: "mkdir -p out && stat -c %s {{input.ref}} > {{output}} && cat {{input.own}} >> {{output}}"
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--mb", type=float, default=500, help="size of the shared input in MB (10^6 bytes)")
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: Snakemake and the emulator are stopped
    size = int(args.mb * 1_000_000)
    with tempfile.TemporaryDirectory(prefix="saje-shared-") as tmp:
        work = Path(tmp) / "wf"
        (work / "own").mkdir(parents=True)
        (work / "Snakefile").write_text(SNAKEFILE.format(n=args.tasks))
        with open(work / "ref.bin", "wb") as out:  # incompressible, as a genome index is for storage
            for _ in range(0, size, 1 << 20):
                out.write(os.urandom(min(1 << 20, size - out.tell())))
        for i in range(args.tasks):
            (work / "own" / f"{i}.txt").write_text(f"sample {i}\n")
        own_bytes = sum(len(f"sample {i}\n") for i in range(args.tasks))
        emulator = EmulatorProcess(Path(tmp) / "emulator")
        try:
            host, port = emulator.env["AZURE_STORAGE_CONNECTION_STRING"].split("BlobEndpoint=http://")[1].split("/")[0].split(":")
            proxy = BlobProxy((host, int(port)))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE"))}
            env.update(proxy.environment(emulator.env, int(port)))
            started = time.monotonic()
            ok, wall, cpu, _ = run_snakemake(sys.executable, "saje-shared", work, env, [
                "--executor", "saje", "--jobs", str(args.tasks), "--latency-wait", "5", "--quiet", "all",
                "--saje-vm-size", "Standard_D2s_v5", "--saje-task-slots-per-node", "8",
                "--saje-max-nodes", str(args.nodes), "--saje-autoscale-interval", "5",
                "--saje-snakemake-install", "none", "--saje-poll-interval", "2"])
            wall = time.monotonic() - started
            proxy.close()
        finally:
            emulator.stop()
        outputs_ok = ok and all((work / "out" / f"{i}.txt").read_text() == f"{size}\nsample {i}\n"
                                for i in range(args.tasks))
        shared, own = proxy.read("/inputs/ref.bin"), proxy.read("/inputs/own/")
        bound = args.nodes * size + own_bytes
        print(f"{args.tasks} tasks sharing a {args.mb:g} MB input on at most {args.nodes} nodes: wall {wall:.0f} s, "
              f"outputs {'right' if outputs_ok else 'WRONG (see ' + str(work / 'snakemake.out') + ')'}")
        print(f"  read from storage: shared input {shared:,} bytes ({shared / size:.2f} x its size), "
              f"per-task inputs {own:,} bytes, sources {proxy.read('/sources/'):,} bytes, "
              f"SAJE's node files {proxy.read('/saje/'):,} bytes")
        print(f"  target: shared + per-task <= {args.nodes} x size + per-task = {bound:,} bytes; "
              f"per-task staging would read {args.tasks} x size = {args.tasks * size:,} bytes")
        met = outputs_ok and shared + own <= bound
        if not outputs_ok:
            print((work / "snakemake.out").read_text()[-3000:], file=sys.stderr)
        print("target met" if met else "TARGET MISSED", file=sys.stderr)
        return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
