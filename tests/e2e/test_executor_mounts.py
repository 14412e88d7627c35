"""--saje-mounts on the emulator: two jobs running at once on two nodes of the run's pool exchange
files through the share every node mounts, as on an NFS file system."""
from __future__ import annotations

import pytest

from tests.conftest import unique_id
from tests.e2e.conftest import run_snakemake, write_workflow

pytestmark = pytest.mark.e2e


def test_two_jobs_on_different_nodes_see_each_others_file_through_the_shared_mount(tmp_path, saje_env, clean_account):
    workdir = write_workflow(tmp_path / "wf", """
        SHARE = "$AZ_BATCH_NODE_MOUNTS_DIR/shared"
        rule all:
            input: "a.txt", "b.txt"
        rule side:
            output: "{me}.txt"
            params: other=lambda wc: "b" if wc.me == "a" else "a"
            shell:
                "echo $AZ_BATCH_NODE_ID > " + SHARE + "/{wildcards.me}; "
                "for i in $(seq 900); do test -e " + SHARE + "/{params.other} && break; sleep 0.2; done; "
                "(echo $AZ_BATCH_NODE_ID; cat " + SHARE + "/{params.other}) > {output}"
    """)
    # Two nodes with one slot each: the two jobs run at once, one per node, each waiting for the other's file.
    run = run_snakemake(workdir, saje_env, "--saje-nodes", "2", "--saje-task-slots-per-node", "1",
                        "--saje-mounts", f"shared=nfs://10.0.0.4/exports/{unique_id('share')}")

    assert run.returncode == 0, run.stdout[-4000:]
    a_node, a_saw = (workdir / "a.txt").read_text().split()
    b_node, b_saw = (workdir / "b.txt").read_text().split()
    assert a_node != b_node
    assert (a_saw, b_saw) == (b_node, a_node)  # each read, through the share, what the other wrote on its node
