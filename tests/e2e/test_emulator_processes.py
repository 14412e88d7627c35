"""How the node agent starts a node's processes: each node's own hostname (MPI tells nodes apart
by it), a missing program as CommandProgramNotFound, and one job preparation task per node even
when the job's first tasks start there together."""
from __future__ import annotations

import pytest
from azure.batch import models

from tests.conftest import completed, make_job, make_pool, read_file

pytestmark = pytest.mark.e2e


def test_each_nodes_processes_see_its_hostname(batch_client):
    pool_id = make_pool(batch_client, dedicated=2, task_slots_per_node=1)
    job_id = make_job(batch_client, pool_id)
    try:
        batch_client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=f"h{i}", command_line="/bin/sh -c hostname")
                                           for i in range(2)])
        tasks = [completed(batch_client, job_id, f"h{i}") for i in range(2)]
        names = {t.node_info.node_id: read_file(batch_client, job_id, t.id).strip() for t in tasks}
        # A UTS namespace per node needs CAP_SYS_ADMIN: the suite runs as root, as for Open MPI's hostnames.
        assert len(names) == 2 and len(set(names.values())) == 2
        for node_id, hostname in names.items():
            assert hostname == batch_client.get_node(pool_id, node_id).ip_address  # NodeAgent.hostname: the address
    finally:
        batch_client.begin_delete_pool(pool_id)


def test_a_missing_absolute_program_is_command_program_not_found(batch_client, job):
    batch_client.create_task(job, models.BatchTaskCreateOptions(id="nope", command_line="/no/such/program --flag"))
    info = completed(batch_client, job, "nope").execution_info
    assert info.result == "failure" and info.failure_info.code == "CommandProgramNotFound"


def test_tasks_starting_together_wait_for_one_preparation_task(batch_client):
    pool_id = make_pool(batch_client, dedicated=1, task_slots_per_node=4)
    prep = "/bin/sh -c 'echo prepared >> $AZ_BATCH_NODE_SHARED_DIR/prepared-$AZ_BATCH_JOB_ID && sleep 1'"
    job_id = make_job(batch_client, pool_id, job_preparation_task=models.BatchJobPreparationTask(command_line=prep))
    try:
        batch_client.create_tasks(job_id, [models.BatchTaskCreateOptions(
            id=f"t{i}", command_line="/bin/sh -c 'cat $AZ_BATCH_NODE_SHARED_DIR/prepared-$AZ_BATCH_JOB_ID'")
            for i in range(4)])
        for i in range(4):
            assert completed(batch_client, job_id, f"t{i}").execution_info.exit_code == 0
            assert read_file(batch_client, job_id, f"t{i}") == "prepared\n"  # one line: it ran once
    finally:
        batch_client.begin_delete_pool(pool_id)
