"""Fixtures of the executor's end-to-end tests: real snakemake, real SDKs, real HTTP, the emulator.

The executor tests get an emulator of their own (with Azurite), so that "no Batch job and no pool
remain" can be checked on the whole account, not just on ids the test happens to know.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from snakemake_executor_saje.cli import client_environment
from snakemake_executor_saje.emulator import Emulator
from tests.conftest import FAST, wait_for

VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = str(VENV_BIN / "snakemake")

# What every executor test runs with: a 2-slot size, short polls, a pool that autoscales from 0 on
# Azure's 5-minute interval (0.5 s on the tests' time-scaled emulator), Snakemake already on the "node".
FAST_FLAGS = [
    "--executor", "saje",
    "--jobs", "20",
    "--latency-wait", "2",
    "--saje-vm-size", "Standard_D2s_v5",
    "--saje-task-slots-per-node", "2",
    "--saje-max-nodes", "2",
    "--saje-autoscale-interval", "5",
    "--saje-snakemake-install", "none",
    "--saje-poll-interval", "0.5",
]


@pytest.fixture(scope="session")
def executor_emulator(emulator_data_dir: Path) -> Iterator[Emulator]:
    """An emulator with Azurite used only by the executor tests."""
    emu = Emulator(emulator_data_dir / "executor", with_azurite=True, **FAST)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="session")
def arm_emulator(emulator_data_dir: Path) -> Iterator[Emulator]:
    """The emulator over HTTPS (bearer tokens: ARM, the nodes' managed identities) with an HTTPS
    Azurite that takes Entra tokens as the accounts' auto-storage: one for the session, shared by
    the ARM, application-package and identity tests. None of their ARM or Batch bodies may be refused
    as Azure's schema would."""
    emu = Emulator(emulator_data_dir / "arm", tls=True, with_azurite=True, **FAST)
    emu.start()
    try:
        yield emu
        assert emu.schema_refusals == []
    finally:
        emu.stop()


@pytest.fixture
def saje_env(executor_emulator: Emulator) -> dict[str, str]:
    """The environment `saje emulator run` gives the command it runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE"))}
    env.update(client_environment(executor_emulator))
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
    return env


@pytest.fixture
def clean_account(executor_emulator: Emulator) -> Iterator[Emulator]:
    """The executor emulator, checked to have no job and no pool left once the test is done, and
    to have refused none of SAJE's request bodies as Azure's schema would."""
    refused = len(executor_emulator.schema_refusals)
    yield executor_emulator
    assert executor_emulator.schema_refusals[refused:] == []
    assert_nothing_left(executor_emulator)


def assert_nothing_left(emulator: Emulator, timeout: float = 15.0) -> None:
    """No Batch job and no pool on the account (deletions finish asynchronously)."""
    client = emulator.client()
    try:
        wait_for(lambda: not list(client.list_jobs()) and not list(client.list_pools()), timeout,
                 what="every job and pool of the run to be deleted")
    finally:
        client.close()


def write_workflow(directory: Path, snakefile: str, files: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Snakefile").write_text(textwrap.dedent(snakefile))
    for name, text in (files or {}).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def run_snakemake(workdir: Path, env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`snakemake --executor saje ...` in `workdir` as a user would type it; output captured."""
    return subprocess.run([SNAKEMAKE, *FAST_FLAGS, *args], cwd=workdir, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


def default_sigint() -> None:
    """In the child: SIGINT as a terminal gives it. A suite started in the background by a
    non-interactive shell (`cmd &`) inherits SIGINT *ignored*, and Python then installs no
    KeyboardInterrupt handler: Ctrl-C tests would test the caller's shell, not SAJE."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_snakemake(workdir: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([SNAKEMAKE, *FAST_FLAGS, *args], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=default_sigint)
