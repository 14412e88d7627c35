"""Jobs, tasks, task collections, listing and paging, task files, the task environment,
constraints and exit conditions, through azure-batch 15.x over HTTP."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from tests.conftest import completed, make_job, make_pool, read_file, unique_id, wait_for

pytestmark = pytest.mark.e2e
POLL = {"polling_interval": 0.1}
# azure-batch 15.1 cannot send a terminate without a body (content-type None), so send the default reason.
TERMINATE = {"terminateReason": "UserTerminate"}


def _code(exc: HttpResponseError) -> str:
    return exc.error.code if exc.error else ""


def task(task_id: str, command: str = "/bin/true", **extra) -> models.BatchTaskCreateOptions:
    return models.BatchTaskCreateOptions(id=task_id, command_line=command, **extra)


def test_job_create_get_list_terminate_delete(batch_client, shared_pool):
    job_id = make_job(batch_client, shared_pool, metadata=[models.BatchMetadataItem(name="k", value="v")])
    job = batch_client.get_job(job_id)
    assert job.state == "active" and job.pool_info.pool_id == shared_pool
    assert [j.id for j in batch_client.list_jobs(filter=f"id eq '{job_id}'")] == [job_id]
    with pytest.raises(ResourceExistsError) as info:
        make_job(batch_client, shared_pool, job_id)
    assert _code(info.value) == "JobExists"

    batch_client.create_task(job_id, task("sleeper", "/bin/sleep 30"))
    wait_for(lambda: batch_client.get_task(job_id, "sleeper").state == "running", what="sleeper running")
    batch_client.begin_terminate_job(job_id, TERMINATE, **POLL).result()
    job = batch_client.get_job(job_id)
    assert job.state == "completed" and job.execution_info.termination_reason == "UserTerminate"
    sleeper = batch_client.get_task(job_id, "sleeper")
    assert sleeper.state == "completed" and sleeper.execution_info.failure_info.code == "TaskEnded"
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_task(job_id, task("late"))
    assert info.value.status_code == 409 and _code(info.value) == "JobCompleted"

    batch_client.begin_delete_job(job_id, **POLL).result()
    with pytest.raises(ResourceNotFoundError) as info:
        batch_client.get_job(job_id)
    assert _code(info.value) == "JobNotFound"


def test_terminate_ends_running_tasks_and_leaves_active_ones(batch_client):
    """The REST reference, Terminate Job: running tasks are terminated, "If there are any Tasks in
    the Job in the active state, they will remain in the active state" and are never scheduled."""
    import time

    pool_id = make_pool(batch_client, dedicated=1, task_slots_per_node=1)
    job_id = make_job(batch_client, pool_id)
    batch_client.create_task(job_id, task("running", "/bin/sleep 30"))
    wait_for(lambda: batch_client.get_task(job_id, "running").state == "running", what="running")
    batch_client.create_task(job_id, task("queued", "/bin/true"))  # the node's only slot is taken
    batch_client.begin_terminate_job(job_id, {"terminateReason": "cancelled by the test"}, **POLL).result()
    job = batch_client.get_job(job_id)
    assert job.state == "completed" and job.execution_info.termination_reason == "cancelled by the test"
    ended = batch_client.get_task(job_id, "running").execution_info
    assert ended.result == "failure" and ended.failure_info.code == "TaskEnded"
    assert ended.failure_info.category == "usererror" and ended.end_time is not None
    time.sleep(0.5)  # the node is free again, and still the queued task is not scheduled
    queued = batch_client.get_task(job_id, "queued")
    assert queued.state == "active" and queued.node_info is None
    batch_client.begin_delete_pool(pool_id)


def test_missing_and_invalid_properties(batch_client, job):
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_task(job, {"id": "nocommand"})
    assert _code(info.value) == "MissingRequiredProperty"
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_task(job, task("x" * 65))
    assert _code(info.value) == "InvalidPropertyValue"
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_job({"id": unique_id("job")})
    assert _code(info.value) == "MissingRequiredProperty"
    with pytest.raises(ResourceNotFoundError) as info:
        batch_client.create_task(unique_id("nojob"), task("t"))
    assert _code(info.value) == "JobNotFound"
    with pytest.raises(ResourceNotFoundError) as info:
        batch_client.get_task(job, "nosuchtask")
    assert _code(info.value) == "TaskNotFound"
    batch_client.create_task(job, task("dup"))
    with pytest.raises(ResourceExistsError) as info:
        batch_client.create_task(job, task("dup"))
    assert _code(info.value) == "TaskExists"


def test_create_tasks_chunks_and_list_pages(batch_client, emulator, job):
    before = emulator.request_counts.get("POST /jobs/{}/addtaskcollection", 0)
    result = batch_client.create_tasks(job, [task(f"t{i:03d}", "/bin/true") for i in range(150)])
    assert len(result.result_values) == 150 and all(r.status == "success" for r in result.result_values)
    assert emulator.request_counts["POST /jobs/{}/addtaskcollection"] - before == 2  # the SDK sends chunks of 100

    wait_for(lambda: batch_client.get_job_task_counts(job).task_counts.completed == 150, 60, what="150 tasks")
    counts = batch_client.get_job_task_counts(job)
    assert counts.task_counts.succeeded == 150 and counts.task_counts.active == 0
    assert counts.task_slot_counts.completed == 150

    pages = batch_client.list_tasks(job, max_results=40, select=["id", "state"],
                                    filter="state eq 'completed'").by_page()
    sizes, ids = [], []
    for page in pages:
        items = list(page)
        sizes.append(len(items))
        ids += [t.id for t in items]
    assert sizes == [40, 40, 40, 30]  # followed odata.nextLink three times
    assert sorted(ids) == [f"t{i:03d}" for i in range(150)]  # every task once
    assert list(batch_client.list_tasks(job, filter="state eq 'active'")) == []
    one = next(iter(batch_client.list_tasks(job, select=["id"], max_results=1)))
    assert one.command_line is None and one.id.startswith("t")


def test_collection_with_a_bad_task_fails_alone(batch_client, job):
    group = models.BatchTaskGroup(task_values=[task("good1"), {"id": "bad one", "commandLine": "/bin/true"},
                                               task("good2")])
    result = batch_client.create_task_collection(job, group)
    by_id = {r.task_id: r for r in result.result_values}
    assert by_id["good1"].status == "success" and by_id["good2"].status == "success"
    assert by_id["bad one"].status == "clienterror"
    assert by_id["bad one"].error.code == "InvalidPropertyValue"


def test_collection_limits(batch_client, job):
    group = models.BatchTaskGroup(task_values=[task(f"over{i}") for i in range(101)])
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_task_collection(job, group)
    assert info.value.status_code == 400
    assert not list(batch_client.list_tasks(job, filter="startswith(id, 'over')"))

    big = "x" * 60_000
    group = models.BatchTaskGroup(task_values=[
        task(f"big{i}", environment_settings=[models.EnvironmentSetting(name="PAYLOAD", value=big)]) for i in range(20)])
    with pytest.raises(HttpResponseError) as info:
        batch_client.create_task_collection(job, group)
    assert info.value.status_code == 413 and _code(info.value) == "RequestBodyTooLarge"


def test_task_environment_and_working_directory(batch_client, emulator, shared_pool):
    job_id = make_job(batch_client, shared_pool, common_environment_settings=[
        models.EnvironmentSetting(name="FROM_JOB", value="job-level")])
    script = "import json, os; print(json.dumps({**dict(os.environ), 'CWD': os.getcwd()}))"
    batch_client.create_task(job_id, task("envtask", f"python3 -c \"{script}\"", environment_settings=[
        models.EnvironmentSetting(name="FROM_TASK", value="task-level")]))
    done = completed(batch_client, job_id, "envtask")
    assert done.execution_info.exit_code == 0, read_file(batch_client, job_id, "envtask", "stderr.txt")
    env = json.loads(read_file(batch_client, job_id, "envtask"))
    node = done.node_info
    assert env["AZ_BATCH_ACCOUNT_NAME"] == emulator.account_name
    assert env["AZ_BATCH_ACCOUNT_URL"].rstrip("/") == emulator.endpoint
    assert (env["AZ_BATCH_JOB_ID"], env["AZ_BATCH_TASK_ID"]) == (job_id, "envtask")
    assert (env["AZ_BATCH_POOL_ID"], env["AZ_BATCH_NODE_ID"]) == (shared_pool, node.node_id)
    root = Path(env["AZ_BATCH_NODE_ROOT_DIR"])
    assert env["AZ_BATCH_NODE_SHARED_DIR"] == str(root / "shared")
    assert env["AZ_BATCH_NODE_STARTUP_DIR"] == str(root / "startup")
    assert env["AZ_BATCH_TASK_DIR"] == str(root / "workitems" / job_id / "job-1" / "envtask")
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == env["CWD"] == env["AZ_BATCH_TASK_DIR"] + "/wd"
    assert env["AZ_BATCH_TASK_USER_IDENTITY"] == "PoolNonAdmin"
    assert (env["FROM_JOB"], env["FROM_TASK"]) == ("job-level", "task-level")
    assert node.task_root_directory == f"workitems/{job_id}/job-1/envtask"


def test_task_files_list_range_head_delete(batch_client, job):
    batch_client.create_task(job, task("files", "/bin/sh -c 'mkdir -p out/deep; printf 0123456789 > out/deep/digits.txt; echo hi'"))
    completed(batch_client, job, "files")
    top = {f.name: f for f in batch_client.list_task_files(job, "files")}
    assert {"stdout.txt", "stderr.txt", "wd"} <= set(top) and top["wd"].is_directory
    deep = {f.name: f for f in batch_client.list_task_files(job, "files", recursive=True)}
    assert deep["wd/out/deep/digits.txt"].properties.content_length == 10
    path = "wd/out/deep/digits.txt"
    assert b"".join(batch_client.download_task_file(job, "files", path)) == b"0123456789"
    assert b"".join(batch_client.download_task_file(job, "files", path, ocp_range="bytes=2-5")) == b"2345"
    props = batch_client.get_task_file_properties(job, "files", path)
    assert props.content_length == 10 and props.is_directory is False
    batch_client.delete_task_file(job, "files", path)
    with pytest.raises(ResourceNotFoundError) as info:
        batch_client.get_task_file_properties(job, "files", path)
    assert info.value.status_code == 404
    with pytest.raises(ResourceNotFoundError) as info:
        b"".join(batch_client.download_task_file(job, "files", "wd/never.txt"))
    assert info.value.status_code == 404


def test_files_of_a_task_that_has_not_run(batch_client, emulator):
    pool_id = make_pool(batch_client, dedicated=0, wait=False)
    job_id = make_job(batch_client, pool_id)
    batch_client.create_task(job_id, task("waiting"))
    with pytest.raises(HttpResponseError) as info:
        list(batch_client.list_task_files(job_id, "waiting"))
    assert info.value.status_code == 409 and _code(info.value) == "OperationInvalidForCurrentState"
    batch_client.begin_delete_pool(pool_id)


def test_delete_terminate_reactivate(batch_client, job, tmp_path):
    batch_client.create_task(job, task("gone", "/bin/sleep 30"))
    wait_for(lambda: batch_client.get_task(job, "gone").state == "running", what="running")
    batch_client.delete_task(job, "gone")
    with pytest.raises(ResourceNotFoundError):
        batch_client.get_task(job, "gone")

    batch_client.create_task(job, task("ended", "/bin/sleep 30"))
    wait_for(lambda: batch_client.get_task(job, "ended").state == "running", what="running")
    batch_client.terminate_task(job, "ended")
    ended = batch_client.get_task(job, "ended")
    assert ended.state == "completed" and ended.execution_info.result == "failure"
    assert ended.execution_info.failure_info.code == "TaskEnded"

    marker = tmp_path / "ok"  # nodes share the host's file system, so the test can fix the failure
    batch_client.create_task(job, task("flaky", f"test -e {marker}"))
    assert completed(batch_client, job, "flaky").execution_info.exit_code == 1
    with pytest.raises(HttpResponseError) as info:
        batch_client.reactivate_task(job, "nonexistent")
    assert info.value.status_code == 404
    marker.touch()
    batch_client.reactivate_task(job, "flaky")
    again = completed(batch_client, job, "flaky")
    assert again.execution_info.exit_code == 0 and again.execution_info.retry_count == 0


def test_constraints_wallclock_and_retries(batch_client, job):
    batch_client.create_task(job, task("slow", "/bin/sleep 30",
                                       constraints=models.BatchTaskConstraints(max_wall_clock_time="PT1S")))
    batch_client.create_task(job, task("retry", "/bin/sh -c 'echo attempt >> $AZ_BATCH_NODE_SHARED_DIR/retry-$AZ_BATCH_JOB_ID; exit 2'",
                                       constraints=models.BatchTaskConstraints(max_task_retry_count=2)))
    slow = completed(batch_client, job, "slow", timeout=20)
    assert slow.execution_info.result == "failure"
    assert slow.execution_info.failure_info.code == "TaskEnded"
    retry = completed(batch_client, job, "retry")
    assert retry.execution_info.retry_count == 2 and retry.execution_info.exit_code == 2
    assert retry.execution_info.failure_info.code == "FailureExitCode"


def test_missing_program_is_command_program_not_found(batch_client, job):
    batch_client.create_task(job, task("noprog", "no-such-program-anywhere --flag"))
    info = completed(batch_client, job, "noprog").execution_info
    assert info.result == "failure" and info.failure_info.code == "CommandProgramNotFound"
    assert info.failure_info.category == "usererror"


def test_exit_condition_terminates_the_job(batch_client, shared_pool):
    job_id = make_job(batch_client, shared_pool, task_failure_mode="performexitoptionsjobaction")
    batch_client.create_task(job_id, task("bystander", "/bin/sleep 30"))
    batch_client.create_task(job_id, task("fatal", "/bin/sh -c 'exit 7'", exit_conditions=models.ExitConditions(
        exit_codes=[models.ExitCodeMapping(code=7, exit_options=models.ExitOptions(job_action="terminate"))])))
    wait_for(lambda: batch_client.get_job(job_id).state == "completed", what="job terminated by exit condition")
    assert batch_client.get_job(job_id).execution_info.termination_reason == "TaskFailed"
    assert batch_client.get_task(job_id, "bystander").state == "completed"


def test_required_slots_are_respected(batch_client):
    pool_id = make_pool(batch_client, dedicated=1, task_slots_per_node=2)
    job_id = make_job(batch_client, pool_id)
    batch_client.create_tasks(job_id, [task(f"wide{i}", "/bin/sleep 1", required_slots=2) for i in range(2)] +
                              [task(f"narrow{i}", "/bin/sleep 1", required_slots=1) for i in range(2)])
    done = [completed(batch_client, job_id, t) for t in ("wide0", "wide1", "narrow0", "narrow1")]
    spans = {t.id: (t.execution_info.start_time, t.execution_info.end_time) for t in done}
    # Two-slot tasks fill the node alone: neither overlaps anything else.
    for wide in ("wide0", "wide1"):
        for other, (start, end) in spans.items():
            if other != wide:
                assert end <= spans[wide][0] or start >= spans[wide][1], (wide, other)
    # The one-slot tasks share the node.
    (s0, e0), (s1, e1) = spans["narrow0"], spans["narrow1"]
    assert s0 < e1 and s1 < e0
    batch_client.begin_delete_pool(pool_id)


def test_job_preparation_and_release_tasks(batch_client):
    pool_id = make_pool(batch_client, dedicated=1)
    job_id = make_job(batch_client, pool_id,
                      job_preparation_task=models.BatchJobPreparationTask(
                          command_line="/bin/sh -c 'echo prepared > $AZ_BATCH_NODE_SHARED_DIR/prep'"),
                      job_release_task=models.BatchJobReleaseTask(command_line="/bin/sh -c 'echo released'"))
    batch_client.create_task(job_id, task("user", "/bin/sh -c 'cat $AZ_BATCH_NODE_SHARED_DIR/prep; echo $AZ_BATCH_JOB_PREP_WORKING_DIR'"))
    done = completed(batch_client, job_id, "user")
    out = read_file(batch_client, job_id, "user").splitlines()
    assert out[0] == "prepared" and out[1].endswith(f"workitems/{job_id}/job-1/jobpreparation/wd")
    batch_client.begin_terminate_job(job_id, TERMINATE, **POLL).result()
    wait_for(lambda: batch_client.get_job(job_id).state == "completed", what="job completed after release")
    status = list(batch_client.list_job_preparation_and_release_task_status(job_id))
    assert len(status) == 1 and status[0].node_id == done.node_info.node_id
    assert status[0].job_preparation_task_execution_info.result == "success"
    assert status[0].job_release_task_execution_info.exit_code == 0

    plain = make_job(batch_client, pool_id)
    with pytest.raises(HttpResponseError) as info:
        list(batch_client.list_job_preparation_and_release_task_status(plain))
    assert info.value.status_code == 409 and _code(info.value) == "JobPreparationTaskNotSpecified"
    batch_client.begin_delete_pool(pool_id)
