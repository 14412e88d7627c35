"""The service's clock against the client's: a time-scaled emulator runs ahead of it, a skewed one
behind; SAJE's status polls must see every completion either way (they take the service's time
from the service)."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
from azure.batch import models

from snakemake_executor_saje.batch import BatchGateway
from snakemake_executor_saje.cli import client_environment
from snakemake_executor_saje.emulator import Emulator
from tests.conftest import FAST, TIME_SCALE, completed
from tests.e2e.conftest import VENV_BIN, run_snakemake, write_workflow

pytestmark = pytest.mark.e2e


def test_timestamps_and_date_header_come_from_the_scaled_clock(batch_client, job, emulator):
    """At 600x the service is ahead of the host; its records and its Date header agree with each other."""
    gateway = BatchGateway(batch_client)
    batch_client.create_task(job, models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    task = completed(batch_client, job, "t")
    answer = gateway.completed_since(job, None)
    assert [t.id for t in answer.tasks] == ["t"]
    now = datetime.now(timezone.utc)
    assert answer.service_time is not None and answer.service_time > now  # ahead of the host's clock
    assert task.state_transition_time <= answer.service_time + timedelta(seconds=1)  # Date has 1 s resolution
    # the same clock as the service's records, not the host's: a minute of real time is 10 service hours
    assert abs(answer.service_time - emulator.state.clock.now()) < timedelta(seconds=TIME_SCALE * 2)
    assert gateway.completed_since(job, answer.service_time + timedelta(hours=1)).tasks == []


def test_the_date_header_is_the_time_the_request_arrived(batch_client, job, emulator):
    """A listing's Date is read before its snapshot, not after: a task that completes while a slow
    answer is made then has a later timestamp than that Date, and the next poll (tasks completed
    since the last Date) finds it. A Date read when the answer is sent would pass it by."""
    gateway = BatchGateway(batch_client)
    before = emulator.state.clock.now()
    emulator.state.faults.update(slow_seconds=1.0)  # one real second is ten minutes at 600x
    try:
        answer = gateway.completed_since(job, None)
    finally:
        emulator.state.faults.reset()
    after = emulator.state.clock.now()
    assert answer.service_time is not None
    assert answer.service_time - before < timedelta(seconds=TIME_SCALE * 0.5)  # arrival, not a second later
    assert after - answer.service_time > timedelta(seconds=TIME_SCALE * 0.5)


FEW = """
rule all:
    input: expand("out_{i}.txt", i=range(3))

rule work:
    output: "out_{i}.txt"
    shell: "echo {wildcards.i} > {output}"
"""


def test_a_service_clock_behind_the_client_loses_no_completion(tmp_path, azurite):
    """Had the poll filter used this machine's clock, no task completed 'since the last poll' would
    ever show up (the service's timestamps are weeks earlier) and the run would never end."""
    behind = datetime.now(timezone.utc) - timedelta(days=30)  # 600x gains 30 days in 72 real minutes
    with Emulator(tmp_path / "emu", clock_start=behind, **FAST) as emu:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE"))}
        env.update(client_environment(emu))
        env["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
        env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
        workdir = write_workflow(tmp_path / "wf", FEW)

        run = run_snakemake(workdir, env, timeout=180)

        assert run.returncode == 0, run.stdout[-3000:]
        assert [(workdir / f"out_{i}.txt").read_text() for i in range(3)] == ["0\n", "1\n", "2\n"]
        assert emu.state.clock.now() < datetime.now(timezone.utc) - timedelta(days=20)  # still behind
