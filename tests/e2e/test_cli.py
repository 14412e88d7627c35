"""`saje pool|job|status` end to end: the real command (in-process through main(argv), and as a
subprocess), the real azure-batch SDK over HTTP, the emulator.

This module runs its own small emulator (no Azurite, a 16-core dedicated quota) so that
account-wide answers (`pool list`, `status`) can be checked exactly and a quota resize error
can be provoked without taking cores from the shared emulator's tests.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from azure.batch import models

from snakemake_executor_saje import catalogue
from snakemake_executor_saje.cli import client_environment, main
from snakemake_executor_saje.emulator import Emulator
from tests.conftest import FAST, TIME_SCALE, unique_id, wait_for
from tests.e2e.conftest import default_sigint

pytestmark = pytest.mark.e2e

SIZE = "Standard_D2s_v3"  # 2 vCPUs: the 16-core quota allows 8 dedicated nodes
FASTPOLL = ["--poll-interval", "0.1", "--timeout", "1"]


@pytest.fixture(scope="module")
def cli_emulator(tmp_path_factory) -> Iterator[Emulator]:
    with Emulator(tmp_path_factory.mktemp("cli-emulator"), dedicated_core_quota=16, **FAST) as emu:
        yield emu


@pytest.fixture
def env(cli_emulator: Emulator, monkeypatch) -> dict[str, str]:
    """The environment `saje emulator run` gives its command, applied to this process too."""
    for key in list(os.environ):
        if key.startswith(("SNAKEMAKE_SAJE_", "AZURE_")):
            monkeypatch.delenv(key)
    values = client_environment(cli_emulator)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values}


@pytest.fixture
def saje(env, capsys):
    """Run `saje --json ARGS...` in-process; (exit code, the JSON document on stdout)."""
    def run(*argv: str) -> tuple[int, Any]:
        capsys.readouterr()
        rc = main(["--json", *argv])
        out = capsys.readouterr().out
        return rc, (json.loads(out) if out.strip() else None)

    return run


@pytest.fixture
def client(cli_emulator: Emulator):
    c = cli_emulator.client()
    yield c
    c.close()


def pool_ids(saje) -> list[str]:
    rc, doc = saje("pool", "list")
    assert rc == 0
    return [p["id"] for p in doc["pools"]]


def delete_pool(saje, pool_id: str) -> None:
    rc, doc = saje("pool", "delete", pool_id, "--yes", "--wait", *FASTPOLL)
    assert rc == 0, doc


# ----------------------------------------------------------------------------- pools
def test_pool_create_wait_resize_delete_leaves_no_pool(saje):
    pool_id = unique_id("cli")
    rc, doc = saje("pool", "create", pool_id, "--vm-size", SIZE, "--nodes", "1", "--slots", "2", "--wait", *FASTPOLL)
    assert rc == 0, doc
    assert doc["pool"]["id"] == pool_id and doc["pool"]["allocationState"] == "steady"
    assert doc["pool"]["currentDedicatedNodes"] == 1 and doc["nodes"] == {"idle": 1} and doc["problems"] == []

    rc, doc = saje("pool", "list")
    listed = {p["id"]: p for p in doc["pools"]}
    assert listed[pool_id]["vmSize"].lower() == SIZE.lower() and listed[pool_id]["taskSlotsPerNode"] == 2
    assert listed[pool_id]["enableAutoScale"] is False

    rc, doc = saje("pool", "resize", pool_id, "--nodes", "2", "--spot-nodes", "1", "--wait", *FASTPOLL)
    assert rc == 0, doc
    assert (doc["pool"]["currentDedicatedNodes"], doc["pool"]["currentSpotNodes"]) == (2, 1)
    assert doc["nodes"] == {"idle": 3}

    rc, doc = saje("pool", "delete", pool_id, "--yes", "--wait", *FASTPOLL)
    assert rc == 0 and doc == {"deleted": pool_id, "waited": True}
    assert pool_id not in pool_ids(saje)
    assert pool_ids(saje) == []  # nothing of this module's is left on the account
    rc, doc = saje("pool", "delete", pool_id, "--yes")
    assert rc == 3 and doc["error"]["code"] == "PoolNotFound"


def test_mpi_pool_and_autoscale_pool(saje, client):
    mpi, auto = unique_id("cli-mpi"), unique_id("cli-auto")
    rc, doc = saje("pool", "create", mpi, "--mpi", "--nodes", "2", "--vm-size", SIZE, "--wait", *FASTPOLL)
    assert rc == 0, doc
    created = client.get_pool(mpi)
    assert created.enable_inter_node_communication and created.task_slots_per_node == 1
    assert created.current_dedicated_nodes == 2 and not created.enable_auto_scale
    rc, doc = saje("pool", "create", auto, "--autoscale", "--max", "2", "--autoscale-interval", "5",
                   "--vm-size", SIZE, "--wait", *FASTPOLL)
    assert rc == 0, doc
    assert doc["pool"]["enableAutoScale"] is True and doc["pool"]["targetDedicatedNodes"] == 0
    # An autoscale pool cannot be resized by hand: Batch's own error, exit 1.
    rc, doc = saje("pool", "resize", auto, "--nodes", "1")
    assert rc == 1 and doc["error"]["code"]
    for pool_id in (mpi, auto):
        delete_pool(saje, pool_id)


def test_start_task_failure_is_reported_with_its_code(saje):
    pool_id = unique_id("cli-st")
    rc, doc = saje("pool", "create", pool_id, "--vm-size", SIZE, "--nodes", "1",
                   "--start-task", "/bin/sh -c 'echo setting up; exit 3'", "--wait", *FASTPOLL)
    try:
        assert rc == 1
        assert doc["nodes"] == {"starttaskfailed": 1}
        [problem] = doc["problems"]
        assert problem["kind"] == "startTaskFailed" and problem["code"] == "FailureExitCode"
        assert problem["exitCode"] == 3 and problem["node"]
    finally:
        delete_pool(saje, pool_id)


def test_quota_resize_error_is_reported(saje):
    pool_id = unique_id("cli-quota")
    rc, doc = saje("pool", "create", pool_id, "--vm-size", SIZE, "--nodes", "9", "--wait", *FASTPOLL)
    try:
        assert rc == 1
        assert doc["pool"]["currentDedicatedNodes"] == 8
        assert [p["code"] for p in doc["problems"]] == ["AccountCoreQuotaReached"]
    finally:
        delete_pool(saje, pool_id)


def test_usage_errors_exit_2(saje):
    rc, doc = saje("pool", "create", "x", "--min", "1")
    assert rc == 2 and doc["error"]["code"] == "UsageError"
    rc, doc = saje("pool", "create", "x", "--image", "not-an-image")
    assert rc == 2
    rc, doc = saje("pool", "resize", "x")
    assert rc == 2
    with pytest.raises(SystemExit) as exc:
        main(["pool", "create"])
    assert exc.value.code == 2


def test_delete_without_yes_and_without_terminal_refuses(saje, monkeypatch):
    pool_id = unique_id("cli-keep")
    assert saje("pool", "create", pool_id, "--vm-size", SIZE, "--nodes", "0")[0] == 0
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    rc, doc = saje("pool", "delete", pool_id)
    assert rc == 2 and doc["error"]["code"] == "NotConfirmed"
    assert pool_id in pool_ids(saje)
    delete_pool(saje, pool_id)


# ----------------------------------------------------------------------------- errors and credentials
def test_not_found_exit_3(saje):
    for argv, code in [(("job", "status", "no-such-job"), "JobNotFound"),
                       (("job", "logs", "no-such-job"), "JobNotFound"),
                       (("pool", "resize", "no-such-pool", "--nodes", "1"), "PoolNotFound"),
                       (("job", "delete", "no-such-job", "--yes"), "JobNotFound")]:
        rc, doc = saje(*argv)
        assert (rc, doc["error"]["code"]) == (3, code), argv


def test_credentials_problems_exit_4(saje, env, tmp_path, monkeypatch, cli_emulator):
    creds = tmp_path / "saje.json"
    profile = {"name": "emu", "batch_account_url": cli_emulator.endpoint,
               "batch_account_name": cli_emulator.account_name, "batch_account_key": cli_emulator.account_key}
    creds.write_text(json.dumps({"credentials": [profile]}))
    creds.chmod(0o644)  # readable by others: refused before it is parsed
    rc, doc = saje("--profile", "emu", "--credentials-file", str(creds), "pool", "list")
    assert rc == 4 and "chmod 600" in doc["error"]["message"]
    assert cli_emulator.account_key not in json.dumps(doc)

    creds.chmod(0o600)
    for key in ("SNAKEMAKE_SAJE_ACCOUNT_URL", "SNAKEMAKE_SAJE_ACCOUNT_NAME", "SNAKEMAKE_SAJE_ACCOUNT_KEY"):
        monkeypatch.delenv(key)
    rc, doc = saje("pool", "list", "--profile", "emu", "--credentials-file", str(creds))
    assert rc == 0 and "pools" in doc  # the profile alone is enough
    rc, doc = saje("pool", "list", "--profile", "other", "--credentials-file", str(creds))
    assert rc == 4 and "available: emu" in doc["error"]["message"]

    creds.write_text("{not json")
    rc, doc = saje("pool", "list", "--profile", "emu", "--credentials-file", str(creds))
    assert rc == 4 and "not valid JSON" in doc["error"]["message"]

    monkeypatch.setenv("SNAKEMAKE_SAJE_ACCOUNT_URL", cli_emulator.endpoint)
    monkeypatch.setenv("SNAKEMAKE_SAJE_ACCOUNT_NAME", cli_emulator.account_name)
    monkeypatch.setenv("SNAKEMAKE_SAJE_ACCOUNT_KEY", "d3Jvbmcga2V5IHdyb25nIGtleQ==")
    rc, doc = saje("pool", "list")
    assert rc == 4 and doc["error"]["code"] == "AuthenticationFailed"


# ----------------------------------------------------------------------------- jobs
def _job_with_failures(client, pool_id: str) -> str:
    job_id = unique_id("cli-job")
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
    client.create_tasks(job_id, [
        models.BatchTaskCreateOptions(id="ok", command_line="/bin/sh -c 'echo fine'"),
        models.BatchTaskCreateOptions(id="bad-1", command_line="/bin/sh -c 'echo out-1; echo err-1 >&2; exit 2'"),
        models.BatchTaskCreateOptions(id="bad-2", command_line="/bin/sh -c 'echo out-2; echo err-2 >&2; exit 5'"),
    ])
    wait_for(lambda: all(t.state == "completed" for t in client.list_tasks(job_id)), 30, what="tasks done")
    return job_id


def test_job_list_status_logs_delete(saje, client, tmp_path):
    pool_id = unique_id("cli-jobs")
    assert saje("pool", "create", pool_id, "--vm-size", SIZE, "--nodes", "1", "--wait", *FASTPOLL)[0] == 0
    job_id = _job_with_failures(client, pool_id)
    try:
        rc, doc = saje("job", "list")
        assert rc == 0
        [listed] = [j for j in doc["jobs"] if j["id"] == job_id]
        assert listed["pool"] == pool_id
        assert listed["taskCounts"] == {"active": 0, "running": 0, "completed": 3, "succeeded": 1, "failed": 2}

        rc, doc = saje("job", "status", job_id)
        assert rc == 0
        failed = {f["id"]: f for f in doc["failedTasks"]}
        assert sorted(failed) == ["bad-1", "bad-2"]
        assert (failed["bad-1"]["exitCode"], failed["bad-1"]["failureCode"]) == (2, "FailureExitCode")
        assert failed["bad-2"]["exitCode"] == 5 and failed["bad-2"]["node"]

        rc, doc = saje("job", "logs", job_id, "--dir", str(tmp_path / "logs"))
        assert rc == 0 and sorted(t["task"] for t in doc["tasks"]) == ["bad-1", "bad-2"]
        for n in (1, 2):
            where = tmp_path / "logs" / job_id / f"bad-{n}"
            assert (where / "stdout.txt").read_text().strip() == f"out-{n}"
            assert (where / "stderr.txt").read_text().strip() == f"err-{n}"
        assert not (tmp_path / "logs" / job_id / "ok").exists()

        rc, doc = saje("job", "logs", job_id, "ok", "--dir", str(tmp_path / "named"))
        assert rc == 0 and (tmp_path / "named" / job_id / "ok" / "stdout.txt").read_text().strip() == "fine"
        rc, doc = saje("job", "logs", job_id, "no-such-task", "--dir", str(tmp_path / "named"))
        assert rc == 3 and doc["error"]["code"] == "TaskNotFound"

        rc, doc = saje("status")
        assert rc == 0
        [pool] = [p for p in doc["pools"] if p["id"] == pool_id]
        assert pool["nodes"]["dedicated"] == {"idle": 1}
        assert pool["cost"]["dedicatedPerHour"] == pytest.approx(catalogue.hourly_price(SIZE))
        assert any(j["id"] == job_id and j["taskCounts"]["failed"] == 2 for j in doc["jobs"])
        assert doc["cost"]["priceTable"]["date"] == catalogue.price_info()["date"]
        assert doc["cost"]["currency"] == "USD"

        rc, doc = saje("job", "delete", job_id, "--yes", "--wait", *FASTPOLL)
        assert rc == 0 and doc["deleted"] == job_id
        assert saje("job", "status", job_id)[0] == 3
    finally:
        delete_pool(saje, pool_id)


def test_job_logs_of_a_task_whose_node_is_gone_come_from_the_staging_container(executor_emulator, monkeypatch,
                                                                              capsys, tmp_path):
    """A run's failed task, then autoscale takes its node away (here: remove_nodes, what autoscale
    does): Batch has no files for it any more, the copies its output files rule (the executor's
    own `Staging.log_files`) uploaded on completion are in the run's container."""
    from snakemake_executor_saje.staging import Staging
    from tests.conftest import completed, make_job, make_pool
    from tests.e2e.conftest import assert_nothing_left

    for key in list(os.environ):
        if key.startswith(("SNAKEMAKE_SAJE_", "AZURE_")):
            monkeypatch.delenv(key)
    for key, value in client_environment(executor_emulator).items():
        monkeypatch.setenv(key, value)
    client = executor_emulator.client()
    staging = Staging.connect(unique_id("logs-run"), account_url=None)
    pool_id = make_pool(client, dedicated=1)
    job_id = make_job(client, pool_id)
    try:
        client.create_task(job_id, models.BatchTaskCreateOptions(
            id="align-1-a1", command_line="/bin/sh -c 'echo aligned half; echo bwa: index missing >&2; exit 3'",
            output_files=staging.log_files("align-1-a1", staging.expiry(dt.timedelta(hours=1))[0])))
        node_id = completed(client, job_id, "align-1-a1").node_info.node_id
        client.begin_remove_nodes(pool_id, models.BatchNodeRemoveOptions(node_ids=[node_id]),
                                  polling_interval=1).result()
        wait_for(lambda: not list(client.list_nodes(pool_id)), 30, what="the node to leave the pool")

        capsys.readouterr()
        rc = main(["--json", "job", "logs", job_id, "--dir", str(tmp_path)])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        [task] = json.loads(captured.out)["tasks"]
        where = tmp_path / job_id / "align-1-a1"
        assert (where / "stdout.txt").read_text() == "aligned half\n"
        assert (where / "stderr.txt").read_text() == "bwa: index missing\n"
        assert task["missing"] == [] and task["sources"] == {
            name: f"staging:{staging.container}/logs/align-1-a1/{name}" for name in ("stdout.txt", "stderr.txt")}
        # It says which copy it used, and never the SAS the task's output files carry.
        assert f"stderr.txt from the run's staging container ({staging.container}/logs/align-1-a1/stderr.txt)" \
            in " ".join(captured.err.split())
        assert "sig=" not in captured.out + captured.err

        # Without a copy (the run had no staging container), nothing can be fetched: exit 1.
        client.create_task(job_id, models.BatchTaskCreateOptions(id="bare", command_line="/bin/false"))
        wait_for(lambda: client.get_task(job_id, "bare").state == "active", what="bare queued")
        rc = main(["--json", "job", "logs", job_id, "bare", "--dir", str(tmp_path)])
        captured = capsys.readouterr()
        assert rc == 1 and json.loads(captured.out)["tasks"][0]["missing"] == ["stdout.txt", "stderr.txt"]
        assert "No log file of job" in captured.err
    finally:
        client.begin_delete_job(job_id)
        client.begin_delete_pool(pool_id)
        staging.delete()
        client.close()
    assert_nothing_left(executor_emulator)


def test_status_spot_cost_is_unknown_not_zero(saje):
    pool_id = unique_id("cli-spot")
    rc, doc = saje("pool", "create", pool_id, "--vm-size", SIZE, "--nodes", "1", "--spot", "--wait", *FASTPOLL)
    assert rc == 0, doc
    try:
        rc, doc = saje("status")
        [pool] = [p for p in doc["pools"] if p["id"] == pool_id]
        assert pool["cost"]["spotNodes"] == 1 and pool["cost"]["spotPerHour"] is None
        assert doc["cost"]["spotPerHour"] is None and doc["cost"]["totalPerHour"] is None
        assert doc["cost"]["nodesWithUnknownPrice"] >= 1
    finally:
        delete_pool(saje, pool_id)


# ----------------------------------------------------------------------------- as a user runs it
def test_saje_as_a_subprocess(env, tmp_path):
    saje = str(Path(sys.executable).parent / "saje")
    listed = subprocess.run([saje, "pool", "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout)["pools"], list)
    missing = subprocess.run([saje, "job", "status", "no-such-job"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 3 and "JobNotFound" in missing.stderr and missing.stdout == ""
    table = subprocess.run([saje, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "Hourly cost" in table.stdout and "as of" in table.stdout


def test_saje_inside_saje_emulator_run(tmp_path):
    """The hand-off scripts rely on: `saje emulator run -- CMD` gives CMD the account, and CMD's exit code."""
    saje = str(Path(sys.executable).parent / "saje")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE_SAJE_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    base = [saje, "emulator", "run", "--no-azurite", "--data-dir", str(tmp_path / "emu"),
            "--time-scale", str(TIME_SCALE), "--"]
    listed = subprocess.run([*base, saje, "--json", "pool", "list"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"pools": []}
    missing = subprocess.run([*base, saje, "pool", "delete", "nope", "--yes"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 3 and "PoolNotFound" in missing.stderr


def test_tables_and_progress_for_people(env, capsys):
    """Without --json: the progress display and tables render, messages go to stderr."""
    pool_id = unique_id("cli-people")
    assert main(["pool", "create", pool_id, "--vm-size", SIZE, "--nodes", "1", "--wait", *FASTPOLL]) == 0
    out, err = capsys.readouterr()
    assert f"Created pool {pool_id}" in err and "allocation steady" in err
    assert pool_id in out and "nodes: 1 idle" in out
    assert main(["status"]) == 0
    out, _ = capsys.readouterr()
    assert pool_id in out and "1 idle" in out and f"as of {catalogue.price_info()['date']}" in out
    assert main(["pool", "delete", pool_id, "--yes", "--wait", *FASTPOLL]) == 0
    assert main(["job", "status", "no-such-job"]) == 3
    out, err = capsys.readouterr()
    assert "JobNotFound" in err and out == ""


def test_emulator_start_status_stop(tmp_path):
    saje = str(Path(sys.executable).parent / "saje")
    data = tmp_path / "emu"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE_SAJE_")}
    proc = subprocess.Popen([saje, "emulator", "start", "--data-dir", str(data), "--time-scale", str(TIME_SCALE)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (data / "emulator.json").exists(), 60, what="emulator.json")
        status = subprocess.run([saje, "emulator", "status", "--data-dir", str(data), "--json"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        assert state["running"] and state["pid"] == proc.pid and state["endpoint"].startswith("http://127.0.0.1:")
        assert "key" not in json.dumps(state).lower()
        stop = subprocess.run([saje, "emulator", "stop", "--data-dir", str(data)], env=env, capture_output=True,
                              text=True, timeout=90)
        assert stop.returncode == 0, stop.stderr
        assert proc.wait(timeout=30) == 0 and "emulator stopped" in proc.stdout.read()
        assert not (data / "emulator.json").exists()
        again = subprocess.run([saje, "emulator", "status", "--data-dir", str(data)], env=env,
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 3 and "No emulator is running" in again.stderr
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


# ----------------------------------------------------------------------------- views (issue 12)
def test_job_tasks_state_node_exit_code_duration(saje, client, capsys):
    pool_id = unique_id("cli-tasks")
    assert saje("pool", "create", pool_id, "--vm-size", SIZE, "--nodes", "1", "--slots", "2", "--wait", *FASTPOLL)[0] == 0
    job_id = unique_id("cli-tasks-job")
    try:
        client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
        client.create_tasks(job_id, [
            models.BatchTaskCreateOptions(id="ok", command_line="/bin/sh -c 'sleep 0.3'"),
            models.BatchTaskCreateOptions(id="bad", command_line="/bin/sh -c 'exit 3'"),
            models.BatchTaskCreateOptions(id="slow", command_line="/bin/sh -c 'sleep 120'"),
        ])
        wait_for(lambda: {t.id: t.state for t in client.list_tasks(job_id)} == {
            "ok": "completed", "bad": "completed", "slow": "running"}, 60, what="two tasks done, one running")

        rc, doc = saje("job", "tasks", job_id)
        assert rc == 0
        tasks = {t["id"]: t for t in doc["tasks"]}
        assert [tasks[t]["state"] for t in ("ok", "bad", "slow")] == ["succeeded", "failed", "running"]
        assert (tasks["ok"]["exitCode"], tasks["bad"]["exitCode"], tasks["slow"]["exitCode"]) == (0, 3, None)
        assert tasks["bad"]["failureCode"] == "FailureExitCode" and tasks["ok"]["failureCode"] is None
        assert all(t["node"] and t["pool"] == pool_id for t in tasks.values())
        assert tasks["ok"]["durationSeconds"] >= 0.3 and tasks["slow"]["durationSeconds"] > 0
        assert tasks["slow"]["endTime"] is None and tasks["ok"]["endTime"] is not None

        rc, doc = saje("job", "tasks", job_id, "--state", "failed")
        assert rc == 0 and [t["id"] for t in doc["tasks"]] == ["bad"]
        rc, doc = saje("job", "tasks", job_id, "--state", "running")
        assert rc == 0 and [t["id"] for t in doc["tasks"]] == ["slow"]
        rc, doc = saje("job", "tasks", job_id, "--state", "completed")
        assert rc == 0 and sorted(t["id"] for t in doc["tasks"]) == ["bad", "ok"]

        capsys.readouterr()
        assert main(["job", "tasks", job_id]) == 0
        out = capsys.readouterr().out
        assert "Tasks of job" in out and "3 task(s): 1 failed, 1 running, 1 succeeded" in out
        assert f"saje job logs {job_id}" in out
        assert saje("job", "tasks", "no-such-job")[0] == 3
    finally:
        client.begin_delete_job(job_id)
        delete_pool(saje, pool_id)


def _read_some(fd: int, seen: bytearray, wait: float) -> bool:
    """Add what a pty has to read within `wait` seconds to `seen`; False once the child closed it."""
    import select

    ready, _, _ = select.select([fd], [], [], wait)
    if ready:
        try:
            seen.extend(os.read(fd, 65536))
        except OSError:
            return False
    return True


def _read_until(fd: int, text: str, seen: bytearray, timeout: float = 60.0) -> None:
    """Read a pty's output into `seen` until `text` is in it (fail the test at `timeout`)."""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"{text!r} never appeared; the terminal showed:\n{seen.decode(errors='replace')[-3000:]}")
        if not _read_some(fd, seen, min(left, 1.0)):
            pytest.fail(f"the terminal closed before {text!r} appeared:\n{seen.decode(errors='replace')[-3000:]}")


def _drain_until_exit(fd: int, proc: subprocess.Popen, seen: bytearray, timeout: float = 60.0) -> int:
    """Read a pty's output, as a terminal would, until its process exits: one whose output nobody
    reads blocks in its last write (rich's Live prints its final view on leaving) and never exits."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and _read_some(fd, seen, 0.2):
        pass
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 1)
    except subprocess.TimeoutExpired:
        # Run with PYTHONFAULTHANDLER=1: SIGABRT makes it print every thread's stack on the terminal.
        proc.send_signal(signal.SIGABRT)
        end = time.monotonic() + 5
        while time.monotonic() < end and _read_some(fd, seen, 0.2):
            pass
        pytest.fail(f"still running {timeout:g} s later; its stacks and the terminal's end:\n"
                    f"{seen.decode(errors='replace')[-6000:]}")


def test_status_watch_redraws_in_a_terminal_until_ctrl_c(env, client):
    """In a real pseudo-terminal, as a user would run it: the view is redrawn (a pool created
    meanwhile appears), the prices' source is said once, and Ctrl-C leaves with exit 0."""
    import fcntl
    import pty
    import struct
    import termios

    first, second = unique_id("watch-a"), unique_id("watch-b")
    client.create_pool(models.BatchPoolCreateOptions(
        id=first, vm_size=SIZE, target_dedicated_nodes=0, virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(publisher="canonical", offer="ubuntu-24_04-lts", sku="server"),
            node_agent_sku_id="batch.node.ubuntu 24.04")))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 220, 0, 0))
    saje = str(Path(sys.executable).parent / "saje")

    def in_a_terminal() -> None:  # in the child: Ctrl-C's SIGINT as a shell gives it, the pty as its terminal
        default_sigint()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([saje, "status", "--watch", "--interval", "0.5"], stdin=slave, stdout=slave, stderr=slave,
                            env={**env, "TERM": "xterm", "PYTHONFAULTHANDLER": "1"}, start_new_session=True, close_fds=True,
                            preexec_fn=in_a_terminal)
    os.close(slave)
    seen = bytearray()
    try:
        _read_until(master, first, seen)
        _read_until(master, "Ctrl-C to leave", seen)
        client.create_pool(models.BatchPoolCreateOptions(
            id=second, vm_size=SIZE, target_dedicated_nodes=0,
            virtual_machine_configuration=client.get_pool(first).virtual_machine_configuration))
        _read_until(master, second, seen)  # redrawn with what changed
        os.write(master, b"\x03")  # Ctrl-C, through the terminal's line discipline: SIGINT
        assert _drain_until_exit(master, proc, seen) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        os.close(master)
        for pool_id in (first, second):
            client.begin_delete_pool(pool_id)
    text = seen.decode(errors="replace")
    assert text.count("Prices: bundled price table") == 1 and "Traceback" not in text


def test_status_watch_needs_a_terminal(saje):
    rc, doc = saje("status", "--watch")
    assert rc == 2 and doc["error"]["code"] == "NotATerminal"


def test_without_an_endpoint_emulator_users_are_told_what_to_do(saje, monkeypatch):
    for key in ("SNAKEMAKE_SAJE_ACCOUNT_URL", "SNAKEMAKE_SAJE_ACCOUNT_NAME", "SNAKEMAKE_SAJE_ACCOUNT_KEY",
                "SNAKEMAKE_SAJE_CREDENTIAL_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    rc, doc = saje("status")
    assert rc == 4 and "saje emulator start" in doc["error"]["message"]
    assert "saje emulator run -- saje status" in doc["error"]["message"]
    from snakemake_executor_saje.commands import emulator

    monkeypatch.setattr(emulator, "running_emulator", lambda data_dir: {
        "pid": 4242, "endpoint": "http://127.0.0.1:40241", "accountName": "sajelocal"})
    rc, doc = saje("status")
    assert rc == 4 and "SNAKEMAKE_SAJE_ACCOUNT_URL=http://127.0.0.1:40241" in doc["error"]["message"]


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == (f"saje {version('snakemake-executor-plugin-saje')} (snakemake "
                                               f"{version('snakemake')}, azure-batch {version('azure-batch')})")
