"""Files that reach a node once, whatever the number of its tasks (SAJE's own data route).

The sources archive and SAJE's node files come with the Batch job's preparation task, once per
node; an input several jobs read comes through the node's input cache (node_cache.py), once per
node, verified, and linked into each task's working directory. Inputs only one job reads are that
task's resource files, as before. The blob requests are counted by a proxy in front of Azurite.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.blob_proxy import BlobProxy
from tests.e2e.conftest import run_snakemake, write_workflow

pytestmark = pytest.mark.e2e

JOBS = 6
SNAKEFILE = f"""
rule all:
    input: expand("out/{{i}}.txt", i=range({JOBS}))

rule use:
    input: ref="ref.txt", own="own/{{i}}.txt"
    output: "out/{{i}}.txt"
    shell: "wc -c < {{input.ref}} > {{output}} && cat {{input.own}} >> {{output}}"
"""


def test_shared_input_and_sources_reach_the_node_once(tmp_path: Path, saje_env, clean_account):
    azurite = clean_account.azurite
    files = {"ref.txt": "ACGT" * 65536, **{f"own/{i}.txt": f"sample {i}\n" for i in range(JOBS)}}
    workdir = write_workflow(tmp_path / "wf", SNAKEFILE, files)
    proxy = BlobProxy((azurite.host, azurite.port))
    try:
        run = run_snakemake(workdir, proxy.environment(saje_env, azurite.port), "--saje-max-nodes", "1")
    finally:
        proxy.close()
    assert run.returncode == 0, run.stdout[-4000:]
    for i in range(JOBS):
        assert (workdir / "out" / f"{i}.txt").read_text() == f"{4 * 65536}\nsample {i}\n"
    assert proxy.gets("/inputs/ref.txt") == 1  # one node: once, not once per task
    assert proxy.gets("/sources/snakemake-workflow-sources.tar.xz") == 1
    assert proxy.gets("/saje/node_check.py") == 1 and proxy.gets("/saje/node_cache.py") == 1
    assert all(proxy.gets(f"/inputs/own/{i}.txt") == 1 for i in range(JOBS))  # each job's own, as before
