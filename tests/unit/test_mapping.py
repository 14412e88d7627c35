"""The pure job -> Batch task mapping, including every MPI combination."""

from __future__ import annotations

import re
import shlex
from types import SimpleNamespace

import pytest
from azure.batch import models

from snakemake_executor_saje.mapping import (
    JobMappingError,
    JobSpec,
    MpiPlan,
    PoolShape,
    TaskOptions,
    check_fits,
    command_line,
    is_mpi,
    job_spec_from_job,
    plan_mpi,
    required_slots,
    slurm_only_resources,
    task_id,
    task_request,
)

HTC = PoolShape(pool_id="saje-run-htc-1", vm_size="Standard_D4s_v5", vcpus=4,
                slots_per_node=4, max_nodes=10, memory_gib=16.0)
MPI = PoolShape(pool_id="saje-run-mpi-1", vm_size="Standard_HB120rs_v3", vcpus=120,
                slots_per_node=1, max_nodes=8, memory_gib=448.0, mpi=True)
SMALL_MPI = PoolShape(pool_id="p-mpi", vm_size="Standard_D2s_v5", vcpus=2,
                      slots_per_node=1, max_nodes=4, mpi=True)
VALID_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def job(rule="map", jobid=7, command="snakemake --target-jobs 'map:x=1'", **kw):
    return JobSpec(rule=rule, jobid=jobid, command=command, **kw)


def mpi_job(threads=1, **resources):
    return job(rule="simulate", threads=threads, resources={"mpi": "mpirun", **resources})


# --- task ids -------------------------------------------------------------------------

def test_task_id_plain():
    assert task_id("map", 7, 1) == "map-7-a1"
    assert task_id("map", 7, 2) == "map-7-a2"


def test_task_id_deterministic_and_valid_when_long_or_odd():
    long_rule = "r" * 100
    a = task_id(long_rule, 12345, 1)
    assert a == task_id(long_rule, 12345, 1)
    assert VALID_ID.match(a) and a.endswith("-12345-a1")
    group = task_id("grp.1_map_reduce", "0b6f1e0c-5d7e-5b6a-9a4d-3f1e2d3c4b5a", 3)
    assert VALID_ID.match(group) and group.endswith("-0b6f1e0c-5d7e-5b6a-9a4d-3f1e2d3c4b5a-a3")


def test_task_ids_of_truncated_rules_differ():
    a = task_id("x" * 70 + "a", 1, 1)
    b = task_id("x" * 70 + "b", 1, 1)
    assert a != b and len(a) == len(b) == 64


def test_sanitised_names_do_not_collide():
    assert task_id("a.b", 1) != task_id("a_b", 1)
    assert VALID_ID.match(task_id("a b/c", 1))


# --- command line ---------------------------------------------------------------------

def test_command_line_is_bash_with_one_quoted_argument():
    cmd = "cd 'my dir' && echo \"$HOME\" 'it'\"'\"'s' | tee x"
    line = command_line(cmd)
    argv = shlex.split(line)
    assert argv == ["/bin/bash", "-c", cmd]


def test_environment_goes_to_environment_settings_not_command():
    task = task_request(job(), HTC, TaskOptions(environment={"AZURE_KEY": "sekrit-value-1", "A": "1"}))
    assert "sekrit" not in task.command_line and "export" not in task.command_line
    assert [(e.name, e.value) for e in task.environment_settings] == [
        ("A", "1"), ("AZURE_KEY", "sekrit-value-1")
    ]


def test_secret_value_on_the_command_line_is_refused():
    leaky = job(command="export AZURE_KEY=sekrit-value-1 && snakemake")
    with pytest.raises(JobMappingError) as info:
        task_request(leaky, HTC, TaskOptions(environment={"AZURE_KEY": "sekrit-value-1"}))
    assert "AZURE_KEY" in str(info.value) and "sekrit" not in str(info.value)


# --- slots, limits, identity, files ----------------------------------------------------

def test_htc_task_shape_as_rest_json():
    rf = models.ResourceFile(http_url="https://x/blob?sas", file_path="in/a.txt")
    of = models.OutputFile(
        file_pattern="out/**",
        destination=models.OutputFileDestination(
            container=models.OutputFileBlobContainerDestination(container_url="https://x/c?sas")
        ),
        upload_options=models.OutputFileUploadConfiguration(upload_condition="taskSuccess"),
    )
    spec = job(threads=3, resources={"runtime": 90, "mem_mb": 1000}, wildcards={"x": "1"})
    task = task_request(spec, HTC, TaskOptions(max_task_retries=2, resource_files=[rf], output_files=[of]))
    d = task.as_dict()
    assert d["id"] == "map-7-a1"
    assert d["displayName"] == "map[x=1]"
    assert d["requiredSlots"] == 3
    assert d["constraints"] == {"maxWallClockTime": task.as_dict()["constraints"]["maxWallClockTime"],
                                "maxTaskRetryCount": 2}
    assert task.constraints.max_wall_clock_time.total_seconds() == 90 * 60
    assert d["userIdentity"] == {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}
    assert d["resourceFiles"][0]["filePath"] == "in/a.txt"
    assert d["outputFiles"][0]["filePattern"] == "out/**"
    assert "multiInstanceSettings" not in d and "containerSettings" not in d


def test_threads_default_to_one_slot():
    assert required_slots(job(threads=0), HTC) == 1


def test_too_many_threads_names_rule_request_and_pool():
    with pytest.raises(JobMappingError) as info:
        task_request(job(threads=8), HTC)
    msg = str(info.value)
    assert "map" in msg and "8 threads" in msg and "saje-run-htc-1" in msg
    assert "Standard_D4s_v5" in msg and "4 task slots" in msg


def test_memory_beyond_the_node_is_refused():
    with pytest.raises(JobMappingError, match=r"mem_mb=20000.*16 GiB"):
        task_request(job(resources={"mem_mb": 20000}), HTC)
    with pytest.raises(JobMappingError, match=r"mem_mb=10000000, .* 16 GiB \(16384 MB\)"):  # not 1e+07
        task_request(job(resources={"mem_mb": 1e7}), HTC)


def test_gpus_beyond_the_node_are_refused():
    with pytest.raises(JobMappingError, match="1 GPUs.*0 GPUs"):
        task_request(job(resources={"gpu": 1}), HTC)
    assert task_request(job(resources={"gpu": 0}), HTC).required_slots == 1


@pytest.mark.parametrize("spec, pool, fragment", [
    (job(threads=8), HTC, "8 threads"),
    (job(resources={"mem_mb": 20000}), HTC, "mem_mb=20000"),
    (job(resources={"gpus": 2}), HTC, "2 GPUs"),
    (mpi_job(nodes=9), MPI, "grows to at most 8"),
    (mpi_job(tasks=4), HTC, "no inter-node communication"),
])
def test_check_fits_refuses_what_task_request_refuses(spec, pool, fragment):
    """check_fits runs before a pool or task is created; it must refuse all task_request would."""
    for check in (check_fits, task_request):
        with pytest.raises(JobMappingError, match=fragment):
            check(spec, pool)


def test_check_fits_accepts_a_job_that_fits():
    check_fits(job(threads=4, resources={"mem_mb": 16 * 1024}), HTC)
    check_fits(mpi_job(nodes=8), MPI)


def test_wall_clock_falls_back_to_setting_and_runtime_wins():
    assert task_request(job(), HTC, TaskOptions(max_wall_clock_minutes=30)).constraints.max_wall_clock_time.total_seconds() == 1800
    assert task_request(job(resources={"runtime": 5}), HTC, TaskOptions(max_wall_clock_minutes=30)).constraints.max_wall_clock_time.total_seconds() == 300
    assert task_request(job(), HTC).constraints.max_wall_clock_time is None
    with pytest.raises(JobMappingError, match="runtime"):
        task_request(job(resources={"runtime": "1 day"}), HTC)


def test_container_and_elevation():
    task = task_request(job(), HTC, TaskOptions(container_image="ghcr.io/x/y:1", container_run_options="--rm", elevated=True))
    d = task.as_dict()
    assert d["containerSettings"] == {"imageName": "ghcr.io/x/y:1", "containerRunOptions": "--rm",
                                      "workingDirectory": "taskWorkingDirectory"}
    assert d["userIdentity"]["autoUser"]["elevationLevel"] == "admin"


# --- MPI: valid combinations ------------------------------------------------------------

@pytest.mark.parametrize(
    "resources, threads, expected",
    [
        ({"tasks": 64, "tasks_per_node": 16}, 1, (4, 64, 16, 1)),
        ({"tasks": 64, "tasks_per_node": 16, "nodes": 4}, 1, (4, 64, 16, 1)),
        ({"nodes": 4}, 1, (4, 480, 120, 1)),
        ({"nodes": 2, "tasks_per_node": 8}, 1, (2, 16, 8, 1)),
        ({"tasks": 10, "nodes": 3}, 1, (3, 10, 4, 1)),
        ({"tasks": 240}, 1, (2, 240, 120, 1)),
        ({"tasks": 8}, 1, (1, 8, 8, 1)),
        ({"tasks": 16, "tasks_per_node": 4}, 30, (4, 16, 4, 30)),  # hybrid MPI+OpenMP
        ({"tasks": 8, "cpus_per_task": 60}, 1, (4, 8, 2, 60)),
        ({"tasks_per_node": 16}, 1, (1, 16, 16, 1)),
        ({"tasks": "4", "nodes": "2"}, 1, (2, 4, 2, 1)),
    ],
)
def test_mpi_plans(resources, threads, expected):
    plan = plan_mpi(mpi_job(threads=threads, **resources), MPI)
    assert (plan.nodes, plan.tasks, plan.tasks_per_node, plan.cpus_per_task) == expected
    assert plan.launcher == "mpirun"


def test_mpi_flavor_from_resource_or_default():
    assert plan_mpi(mpi_job(nodes=2), MPI, "openmpi").flavor == "openmpi"
    assert plan_mpi(mpi_job(nodes=2, saje_mpi_flavor="mpich"), MPI, "openmpi").flavor == "mpich"


def test_mpi_task_is_multi_instance_with_one_slot():
    task = task_request(
        mpi_job(tasks=8, tasks_per_node=4),
        MPI,
        TaskOptions(
            coordination_command="/bin/bash -c 'setup-hosts'",
            common_resource_files=[models.ResourceFile(http_url="https://x/h?sas", file_path="hosts")],
            environment={"SAJE_MPI_FLAVOR": "openmpi"},
        ),
    )
    d = task.as_dict()
    assert d["multiInstanceSettings"] == {
        "numberOfInstances": 2,
        "coordinationCommandLine": "/bin/bash -c 'setup-hosts'",
        "commonResourceFiles": [{"httpUrl": "https://x/h?sas", "filePath": "hosts"}],
    }
    assert d["requiredSlots"] == 1
    assert d["id"] == "simulate-7-a1"


def test_mpi_task_uses_given_plan_and_default_coordination():
    plan = MpiPlan(nodes=3, tasks=3, tasks_per_node=1, cpus_per_task=1)
    task = task_request(mpi_job(nodes=3), MPI, mpi=plan)
    assert task.multi_instance_settings.number_of_instances == 3
    assert task.multi_instance_settings.coordination_command_line
    assert task.multi_instance_settings.common_resource_files is None


def test_mpi_job_without_mpi_pool_is_refused():
    with pytest.raises(JobMappingError, match="MPI pool"):
        task_request(mpi_job(nodes=2), HTC)


def test_non_mpi_job_is_not_planned():
    assert not is_mpi(job())
    assert not is_mpi(job(resources={"mpi": ""}))
    with pytest.raises(JobMappingError, match="not an MPI job"):
        plan_mpi(job(), MPI)


# --- MPI: every invalid combination -----------------------------------------------------

@pytest.mark.parametrize(
    "pool, threads, resources, fragments",
    [
        (MPI, 1, {}, ["needs tasks or nodes", "mpirun"]),
        (MPI, 1, {"tasks": 10, "tasks_per_node": 4}, ["tasks=10", "not divisible", "tasks_per_node=4"]),
        (MPI, 1, {"tasks_per_node": 121, "nodes": 1}, ["tasks_per_node=121", "120"]),
        (MPI, 2, {"tasks": 8, "tasks_per_node": 64}, ["128 cores per node", "has 120"]),
        (MPI, 1, {"tasks": 3, "nodes": 1, "tasks_per_node": 4}, ["not divisible"]),
        (MPI, 1, {"tasks": 16, "tasks_per_node": 4, "nodes": 2}, ["4 nodes", "nodes=2"]),
        (MPI, 1, {"tasks": 2, "nodes": 3}, ["fewer than nodes=3"]),
        (SMALL_MPI, 1, {"tasks": 10, "nodes": 2}, ["5 ranks", "has 2"]),
        (MPI, 121, {"nodes": 1}, ["121 cores", "120 cores"]),
        (MPI, 1, {"nodes": 101}, ["101 nodes", "at most 100"]),
        (MPI, 1, {"tasks": 1010, "tasks_per_node": 10}, ["101 nodes", "at most 100"]),
        (MPI, 1, {"nodes": 9}, ["9 nodes", "at most 8", "--saje-mpi-max-nodes"]),
        (SMALL_MPI, 1, {"tasks": 10}, ["5 nodes", "at most 4"]),
        (MPI, 1, {"tasks": 0}, ["tasks", "positive integer"]),
        (MPI, 1, {"nodes": -2}, ["nodes", "positive integer"]),
        (MPI, 1, {"tasks": 2.5}, ["tasks", "positive integer"]),
        (MPI, 1, {"nodes": True}, ["nodes", "positive integer"]),
    ],
)
def test_invalid_mpi_combinations(pool, threads, resources, fragments):
    spec = mpi_job(threads=threads, **resources)
    with pytest.raises(JobMappingError) as info:
        task_request(spec, pool)
    msg = str(info.value)
    assert "simulate" in msg, msg  # names the rule
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_mpi_pool_limit_message_names_pool():
    with pytest.raises(JobMappingError) as info:
        plan_mpi(mpi_job(nodes=9), MPI)
    assert "saje-run-mpi-1" in str(info.value) and "Standard_HB120rs_v3" in str(info.value)


# --- adapter ---------------------------------------------------------------------------

class _Resources(dict):
    def items(self):  # Snakemake's Resources is a Namedlist with items()
        return super().items()


def test_job_spec_from_single_job():
    fake = SimpleNamespace(
        name="map", jobid=3, threads=2, attempt=2,
        resources=_Resources({"_cores": 2, "_nodes": 1, "mem_mb": 1000, "tmpdir": "/tmp"}),
        wildcards_dict={"sample": "a"},
        is_group=lambda: False,
    )
    spec = job_spec_from_job(fake, "cmd", preemptible=True)
    assert spec == JobSpec(rule="map", jobid=3, command="cmd", threads=2,
                           resources={"mem_mb": 1000, "tmpdir": "/tmp"},
                           wildcards={"sample": "a"}, is_group=False, attempt=2, preemptible=True)


def test_job_spec_from_group_job():
    fake = SimpleNamespace(
        name="grp_a_b", jobid="0b6f1e0c-5d7e-5b6a-9a4d-3f1e2d3c4b5a", threads=1, attempt=1,
        resources=_Resources({"runtime": 10}), is_group=lambda: True,
    )
    spec = job_spec_from_job(fake, "cmd")
    assert spec.is_group and spec.wildcards == {} and spec.resources == {"runtime": 10}
    assert VALID_ID.match(task_id(spec.rule, spec.jobid, spec.attempt))


def test_slurm_only_resources_are_named():
    spec = job(resources={"slurm_partition": "gpu", "slurm_account": "p1", "slurm_extra": "'--qos=long'", "qos": "x",
                          "constraint": "skylake", "clusters": "c1", "mem_mb": 1000, "runtime": 5, "tasks": 4,
                          "saje_vm_size": "Standard_D4s_v5", "gpu": 1})
    assert slurm_only_resources(spec) == ["clusters", "constraint", "qos", "slurm_account", "slurm_extra",
                                          "slurm_partition"]
    assert slurm_only_resources(job(resources={"mem_mb": 1000})) == []


def test_cpus_per_task_takes_the_slots_as_on_slurm():
    """The Slurm plugin's `resources: cpus_per_task=8` instead of `threads: 8` reserves 8 cores there."""
    assert task_request(job(threads=1, resources={"cpus_per_task": 4}), HTC).required_slots == 4
    assert task_request(job(threads=2), HTC).required_slots == 2
    with pytest.raises(JobMappingError, match=r"asks for cpus_per_task=8, but pool .* Lower the rule's cpus_per_task"):
        check_fits(job(threads=1, resources={"cpus_per_task": 8}), HTC)
