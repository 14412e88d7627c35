"""A pool that can never give a usable node (here: the core quota is reached) fails the run after
--saje-pool-ready-timeout with the pool's Batch error, and leaves no job or pool behind."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from snakemake_executor_saje.cli import client_environment
from snakemake_executor_saje.emulator import Emulator
from tests.conftest import FAST
from tests.e2e.conftest import VENV_BIN, assert_nothing_left, run_snakemake, write_workflow

pytestmark = pytest.mark.e2e

ONE_RULE = """
rule all:
    output: "out.txt"
    shell: "echo hi > {output}"
"""


def test_a_pool_that_cannot_grow_fails_the_run_with_its_batch_error(tmp_path: Path):
    # 1 dedicated core: a Standard_D2s_v5 (2 vCPUs) node can never be allocated.
    with Emulator(tmp_path / "emu", with_azurite=True, dedicated_core_quota=1, **FAST) as emu:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE"))}
        env.update(client_environment(emu))
        env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
        workdir = write_workflow(tmp_path / "wf", ONE_RULE)

        run = run_snakemake(workdir, env, "--saje-pool-ready-timeout", "0.05", timeout=120)

        assert run.returncode != 0
        assert "AccountCoreQuotaReached" in run.stdout, run.stdout[-3000:]
        assert "--saje-pool-ready-timeout" in run.stdout
        assert not (workdir / "out.txt").exists()
        assert_nothing_left(emu)
