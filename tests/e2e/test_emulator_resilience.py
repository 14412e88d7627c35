"""Authentication, injected faults against the SDK's retry policy, persistence across restarts,
the aio client, and the azure-batch 14.x wire shape (api-version 2024-02-01.19.0)."""
from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from email.utils import formatdate
from urllib.parse import urlsplit

import pytest
from azure.batch import BatchClient, models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from snakemake_executor_saje.emulator import Emulator, auth
from snakemake_executor_saje.emulator.wire import Request
from tests.conftest import FAST, completed, make_job, make_pool, unique_id, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_emulator(tmp_path):
    """Faults apply to every request of an emulator: fault tests get one that nothing else polls."""
    with Emulator(tmp_path, **FAST) as emu:
        yield emu


def test_wrong_key_is_authentication_failed(emulator):
    client = BatchClient(emulator.endpoint, AzureNamedKeyCredential(emulator.account_name, "d3Jvbmcga2V5" * 8))
    with pytest.raises(HttpResponseError) as info:  # azure-batch maps a 403 to the generic error
        list(client.list_pools())
    assert info.value.status_code == 403 and info.value.error.code == "AuthenticationFailed"
    client.close()


def test_missing_authorization_is_refused(emulator):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{emulator.endpoint}/pools?api-version=2025-06-01", timeout=10)
    assert info.value.code == 403
    assert json.loads(info.value.read())["code"] == "AuthenticationFailed"


def test_throttling_is_retried_by_the_sdk(own_emulator):
    emulator = own_emulator
    batch_client = emulator.client(retry_backoff_factor=0.05)
    emulator.faults.update(throttle_count=2, throttle_status=429, retry_after_seconds=0)
    before = emulator.request_counts.get("GET /pools/{}", 0)
    pool_id = make_pool(batch_client, dedicated=0, wait=False)
    emulator.faults.update(throttle_count=2)
    assert batch_client.get_pool(pool_id).id == pool_id
    assert emulator.request_counts["GET /pools/{}"] - before == 3  # two 429s, then the answer
    assert emulator.faults.throttle_count == 0

    emulator.faults.update(throttle_count=1, throttle_status=503)
    assert batch_client.get_pool(pool_id).id == pool_id
    assert emulator.faults.throttle_count == 0
    batch_client.close()


def test_throttle_answer_carries_retry_after(own_emulator):
    emulator = own_emulator
    emulator.faults.update(throttle_count=1, retry_after_seconds=7)
    request = _signed(emulator, "GET", "/pools", "2025-06-01")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 429 and info.value.headers["Retry-After"] == "7"
    assert json.loads(info.value.read())["code"] == "TooManyRequests"


def test_dropped_connections_are_retried(own_emulator):
    emulator = own_emulator
    client = emulator.client(retry_backoff_factor=0.05)
    emulator.faults.update(drop_count=2)
    assert isinstance(list(client.list_jobs(max_results=1)), list)
    assert emulator.faults.drop_count == 0
    emulator.faults.update(drop_count=50)
    with pytest.raises((ServiceRequestError, ServiceResponseError)):
        list(client.list_jobs(max_results=1))
    emulator.faults.reset()
    client.close()


def test_fault_endpoint_answers_what_it_applied(own_emulator):
    """POST /_saje/faults answers 200 with the plan (it once applied the change, then failed to
    copy the plan's lock into its reply: 400 "cannot pickle '_thread.lock'")."""
    body = json.dumps({"throttle_count": 2, "lose_reply_count": 1, "lose_reply_to": "POST /pools"}).encode()
    request = _signed(own_emulator, "POST", "/_saje/faults", "2025-06-01", body)
    with urllib.request.urlopen(request, timeout=10) as reply:
        plan = json.loads(reply.read())
    assert reply.status == 200
    assert (plan["throttle_count"], plan["lose_reply_count"], plan["lose_reply_to"]) == (2, 1, "POST /pools")
    assert own_emulator.faults.throttle_count == 2


def test_a_lost_reply_is_lost_after_the_create_was_applied(own_emulator):
    emulator = own_emulator
    client = emulator.client(retry_total=0)  # see the lost reply itself, not the SDK's retry of it
    emulator.faults.update(lose_reply_count=1, lose_reply_to="POST /pools")
    pool_id = unique_id("lost")
    with pytest.raises((ServiceRequestError, ServiceResponseError)):
        make_pool(client, pool_id, dedicated=0, wait=False)
    assert client.get_pool(pool_id).id == pool_id  # Batch made it; only the answer went missing
    assert emulator.faults.lose_reply_count == 0
    client.close()


def test_a_task_add_whose_reply_was_lost_is_retried_and_found_existing_not_duplicated(own_emulator, tmp_path):
    """SAJE's client (its retry policy retries POST) against a lost addtaskcollection reply: the
    retry gets TaskExists, which create_tasks counts as done; the emulator saw one creation."""
    from snakemake_executor_saje.batch import connect

    emulator = own_emulator
    client = connect(emulator.endpoint, emulator.credential())
    pool_id = make_pool(client, dedicated=0, wait=False)
    job_id = make_job(client, pool_id)
    emulator.faults.update(lose_reply_count=1, lose_reply_to="POST /jobs/{}/addtaskcollection")
    client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true") for i in range(3)])
    request = _signed(emulator, "GET", "/_saje/task-adds", "2025-06-01")
    with urllib.request.urlopen(request, timeout=10) as reply:
        adds = json.loads(reply.read())
    assert emulator.faults.lose_reply_count == 0
    assert adds["created"] == {f"{job_id}/t{i}": 1 for i in range(3)}
    assert adds["already_existed"] == {f"{job_id}/t{i}": 1 for i in range(3)}
    client.close()


def test_an_outage_refuses_connections_then_the_same_endpoint_answers(own_emulator):
    emulator = own_emulator
    client = emulator.client(retry_total=0)
    assert list(client.list_pools()) == []  # a pooled keep-alive connection exists now
    address = urlsplit(emulator.endpoint)
    emulator.outage(1.5)
    with pytest.raises((ServiceRequestError, ServiceResponseError)):  # the open connection is reset
        wait_for(lambda: not list(client.list_pools()) and None, 5, interval=0.05, what="the outage")
    with pytest.raises(ConnectionRefusedError):  # and nothing listens on the port
        socket.create_connection((address.hostname, address.port), timeout=5).close()
    assert wait_for(lambda: _answers(client), 15, interval=0.2, what="the endpoint to answer again")
    client.close()


def _answers(client) -> bool:
    try:
        return isinstance(list(client.list_pools()), list)
    except (ServiceRequestError, ServiceResponseError):
        return False


def test_state_survives_a_restart_and_running_tasks_are_requeued(tmp_path):
    with Emulator(tmp_path, **FAST) as emu:
        client = emu.client()
        pool_id = make_pool(client, "persisted", dedicated=1)
        job_id = make_job(client, pool_id, "persisted-job")
        client.create_task(job_id, models.BatchTaskCreateOptions(id="done", command_line="/bin/true"))
        completed(client, job_id, "done")
        client.create_task(job_id, models.BatchTaskCreateOptions(id="running", command_line="/bin/sleep 2"))
        wait_for(lambda: client.get_task(job_id, "running").state == "running", what="running before stop")
        key = emu.account_key
        client.close()
    with Emulator(tmp_path, account_key=key, **FAST) as emu:
        client = emu.client()
        assert client.get_pool(pool_id).vm_size == "standard_d2s_v3"
        assert client.get_task(job_id, "done").execution_info.result == "success"
        task = client.get_task(job_id, "running")
        assert task.execution_info.requeue_count == 1  # as a node loss would leave it
        assert completed(client, job_id, "running").execution_info.result == "success"
        client.close()


def test_aio_client(emulator, shared_pool):
    async def scenario():
        async with AsyncBatchClient(emulator.endpoint, emulator.credential()) as client:
            job_id = unique_id("aio")
            await client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=shared_pool)))
            await client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=f"a{i}", command_line="/bin/true")
                                               for i in range(120)])
            for _ in range(300):
                counts = await client.get_job_task_counts(job_id)
                if counts.task_counts.completed == 120:
                    break
                await asyncio.sleep(0.1)
            ids = [t.id async for t in client.list_tasks(job_id, select=["id"], max_results=50)]
            pool = await client.get_pool(shared_pool)
            return counts, ids, pool

    counts, ids, pool = asyncio.run(scenario())
    assert counts.task_counts.succeeded == 120
    assert sorted(ids) == sorted(f"a{i}" for i in range(120))
    assert pool.id == shared_pool


# ----------------------------------------------------------------------------- 14.x wire shape
def _signed(emulator: Emulator, method: str, path: str, api_version: str, body: bytes = b"") -> urllib.request.Request:
    """A request signed the way msrest-based azure-batch 14.x signs: Content-Length as sent (absent on GET)."""
    url = f"{emulator.endpoint}{path}?api-version={api_version}"
    headers = {"ocp-date": formatdate(usegmt=True), "client-request-id": "c0ffee00-0000-0000-0000-000000000000",
               "Accept": "application/json"}
    if body:
        headers["Content-Type"] = "application/json; odata=minimalmetadata; charset=utf-8"
        headers["Content-Length"] = str(len(body))
    as_seen = Request.from_target(method, url[len(emulator.endpoint):], headers, body)
    text = auth.string_to_sign(as_seen, emulator.account_name, default_content_length=False)
    headers["Authorization"] = f"SharedKey {emulator.account_name}:{auth.sign(emulator.account_key, text)}"
    return urllib.request.Request(url, data=body or None, method=method, headers=headers)


def test_14x_api_version_gets_the_same_json(emulator, shared_pool):
    job_id = unique_id("v14")
    body = json.dumps({"id": job_id, "poolInfo": {"poolId": shared_pool}}).encode()
    with urllib.request.urlopen(_signed(emulator, "POST", "/jobs", "2024-02-01.19.0", body), timeout=10) as reply:
        assert reply.status == 201 and reply.headers["ETag"] and reply.headers["request-id"]
        assert reply.headers["client-request-id"] == "c0ffee00-0000-0000-0000-000000000000"

    def get(version: str) -> dict:
        with urllib.request.urlopen(_signed(emulator, "GET", f"/jobs/{job_id}", version), timeout=10) as reply:
            return json.loads(reply.read())

    old, new = get("2024-02-01.19.0"), get("2025-06-01")
    assert old == new and old["id"] == job_id and old["poolInfo"] == {"poolId": shared_pool}

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(_signed(emulator, "GET", "/jobs", "2099-01-01.99.0"), timeout=10)
    assert info.value.code == 400 and json.loads(info.value.read())["code"] == "InvalidQueryParameterValue"
