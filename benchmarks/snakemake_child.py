"""The Snakemake process of one benchmark row (run by compare.py, under SAJE's venv or the peer's).

    python snakemake_child.py MODE REPORT.json SNAKEMAKE-ARGS...

MODE is local, saje, saje-storage, peer or saje-shared (shared_input.py). For the remote modes the job's command on the node is
replaced by the same trivial one the local run's rule has (`mkdir -p out && echo I > out/I.txt`),
plus, where outputs live in default storage, an upload of that file with curl (what the node's
Snakemake would store): a real job command runs Snakemake on the node, seconds of CPU that measure
the machine, not the executor. Everything else each executor does stays as it is: SAJE's own task
wrapper (sources linked from the job preparation task, the node cache), the peer's `/bin/bash -c`
in its container. The peer's management client is pointed at the emulator (the one redirection
its code needs, see docs/performance.md). At exit the process writes its own CPU time, peak RSS
and status polls to REPORT.json.
"""
from __future__ import annotations

import atexit
import json
import os
import resource
import sys

# -k: the stand-in upload to the emulator's Azurite on loopback, which serves HTTPS with the
# emulator's own certificate under --tls (the peer's row); the peer's container does not carry it.
UPLOAD = ('curl -sfSk -X PUT -H "x-ms-blob-type: BlockBlob" --data-binary @out/{i}.txt '
          '"$BENCH_BLOB_URL/{prefix}/out/{i}.txt?$BENCH_SAS" > /dev/null')


def trivial(i: str, upload: bool) -> str:
    """The job's command: the local rule's own shell line, and the upload default storage needs."""
    command = f"mkdir -p out && echo {i} > out/{i}.txt"
    if upload:
        command += " && " + UPLOAD.format(i=i, prefix=os.environ["BENCH_PREFIX"])
    return command


def shared(i: str) -> str:
    """shared_input.py's job: what a job that reads a shared reference and its own input does."""
    return f"mkdir -p out && stat -c %s ref.bin > out/{i}.txt && cat own/{i}.txt >> out/{i}.txt"


def main() -> None:
    mode, report, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    polls = {"polls": 0}

    def count(check):
        async def counted(self, active_jobs):
            polls["polls"] += 1
            async for info in check(self, active_jobs):
                yield info
        return counted

    if mode in ("saje", "saje-storage", "saje-shared"):
        from snakemake_executor_saje import executor

        executor.Executor._job_command = lambda self, job: (
            shared(job.wildcards["i"]) if mode == "saje-shared" else trivial(job.wildcards["i"], mode == "saje-storage"))
        executor.Executor.check_active_jobs = count(executor.Executor.check_active_jobs)
    elif mode == "peer":
        import azure.mgmt.batch
        import snakemake_executor_plugin_azure_batch as peer

        management = azure.mgmt.batch.BatchManagementClient.__init__

        def redirected(self, credential, subscription_id, base_url=None, **kwargs):
            # The peer creates its pool through ARM at the public endpoint, which it hard-wires.
            management(self, credential, subscription_id, base_url=os.environ["BENCH_ARM_ENDPOINT"], **kwargs)

        azure.mgmt.batch.BatchManagementClient.__init__ = redirected
        peer.Executor.format_job_exec = lambda self, job: trivial(job.wildcards["i"], True)
        peer.Executor.check_active_jobs = count(peer.Executor.check_active_jobs)

    def write_report() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(report, "w") as out:
            json.dump({"cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
                       **polls}, out)

    atexit.register(write_report)
    from snakemake.cli import main as snakemake_main

    snakemake_main(args)


if __name__ == "__main__":
    main()
