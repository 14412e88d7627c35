"""A stuck output download delays the report of its own job only.

SAJE's own data route brings each succeeded job's outputs back from blob storage. Here the blob
traffic of a real run goes through a TCP proxy in front of Azurite that resets the first download
of one output (`slow.txt`) and then holds its retry unanswered. While it is held, another job
finishes and is reported (its dependent job runs and comes back); once released, the held job is
reported too and the run succeeds.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.e2e.blob_proxy import BlobProxy
from tests.e2e.conftest import start_snakemake, write_workflow

pytestmark = pytest.mark.e2e

SNAKEFILE = """
rule all:
    input: "slow.txt", "after_fast.txt"

rule slow:
    output: "slow.txt"
    shell: "echo slow > {output}"

rule fast:
    output: "fast.txt"
    shell: "sleep 3 && echo fast > {output}"

rule after_fast:
    input: "fast.txt"
    output: "after_fast.txt"
    shell: "cat {input} > {output}"
"""


def test_a_held_download_does_not_delay_another_jobs_report(tmp_path: Path, saje_env, clean_account):
    azurite = clean_account.azurite
    proxy = BlobProxy((azurite.host, azurite.port), hold=b"/slow.txt")
    env = proxy.environment(saje_env, azurite.port)
    workdir = write_workflow(tmp_path / "wf", SNAKEFILE)
    proc = start_snakemake(workdir, env)
    try:
        wait_for(proxy.held.is_set, 180, what="the download of slow.txt to be reset and then held")
        wait_for((workdir / "after_fast.txt").exists, 180,
                 what="the fast job to be reported (and its dependent job to run) while slow.txt's download is held")
        assert proxy.resets == 1
        assert not (workdir / "slow.txt").exists()
        proxy.release()
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out
        assert (workdir / "slow.txt").read_text() == "slow\n"
        assert (workdir / "after_fast.txt").read_text() == "fast\n"
    finally:
        proxy.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
