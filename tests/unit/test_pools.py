"""Pure pool specs: pool classes, ids, HTC and RDMA/MPI pools, autoscale vs fixed."""

from __future__ import annotations

import re
import shlex
from datetime import datetime, timedelta, timezone

import pytest

from snakemake_executor_saje.mapping import JobSpec
from snakemake_executor_saje.pools import (
    PoolClass,
    PoolSpecError,
    htc_autoscale_formula,
    mpi_autoscale_formula,
    parse_image,
    pool_class_for,
    pool_id_for,
    pool_shape,
    pool_spec,
    rdma_warning,
)
from snakemake_executor_saje.settings import ExecutorSettings

RUN = "3f2a9c1e-8b7d-4e6f-a5b4-c3d2e1f0a9b8"
VALID_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def job(resources=None, preemptible=False, rule="map"):
    return JobSpec(rule=rule, jobid=1, command="true", resources=resources or {},
                   preemptible=preemptible)


def spec_dict(pool_class, settings=None, **kw):
    settings = settings or ExecutorSettings()
    kw.setdefault("snakemake_version", "9.27.1")
    return pool_spec(pool_class, settings, RUN, **kw).as_dict()


# --- classes and ids -------------------------------------------------------------------

def test_default_htc_class():
    pc = pool_class_for(job(), ExecutorSettings())
    assert pc == PoolClass(vm_size="Standard_D2s_v5", image="canonical:ubuntu-24_04-lts:server")


def test_per_rule_resources_choose_the_class():
    s = ExecutorSettings()
    pc = pool_class_for(job({"saje_vm_size": "standard_e4s_v5", "saje_container": "img:1"}), s)
    assert pc.vm_size == "Standard_E4s_v5" and pc.container_image == "img:1"
    assert pool_class_for(job({"saje_pool": "mine"}), s).existing_pool_id == "mine"


def test_existing_pool_setting_applies_to_plain_htc_jobs_only():
    s = ExecutorSettings(pool_id="shared")
    assert pool_class_for(job(), s).existing_pool_id == "shared"
    assert pool_class_for(job({"saje_vm_size": "Standard_D8s_v5"}), s).existing_pool_id is None
    assert pool_class_for(job({"mpi": "mpirun", "nodes": 2}), s).existing_pool_id is None
    assert pool_id_for(pool_class_for(job(), s), RUN) == "shared"


def test_mpi_class():
    pc = pool_class_for(job({"mpi": "mpirun", "nodes": 2}), ExecutorSettings())
    assert pc.mpi and pc.vm_size == "Standard_HB120rs_v3"
    assert pc.image == "microsoft-dsvm:ubuntu-hpc:2404" and not pc.spot
    pc2 = pool_class_for(job({"mpi": "srun", "nodes": 2, "saje_vm_size": "Standard_HB176rs_v4"}), ExecutorSettings())
    assert pc2.vm_size == "Standard_HB176rs_v4" and pc2.key != pc.key


def test_spot_from_setting_or_preemptible_rule():
    assert pool_class_for(job(), ExecutorSettings(spot=True)).spot
    assert pool_class_for(job(preemptible=True), ExecutorSettings()).spot
    assert not pool_class_for(job(), ExecutorSettings()).spot


def test_preemptible_mpi_refused_unless_allowed():
    mpi = job({"mpi": "mpirun", "nodes": 2}, preemptible=True, rule="simulate")
    with pytest.raises(PoolSpecError, match="simulate.*--saje-mpi-allow-spot"):
        pool_class_for(mpi, ExecutorSettings())
    assert pool_class_for(mpi, ExecutorSettings(mpi_allow_spot=True)).spot
    # --saje-spot is for ordinary jobs; it does not put MPI jobs on spot
    assert not pool_class_for(job({"mpi": "mpirun", "nodes": 2}), ExecutorSettings(spot=True)).spot


def test_pool_ids_are_deterministic_valid_and_distinct():
    s = ExecutorSettings()
    htc = pool_class_for(job(), s)
    mpi = pool_class_for(job({"mpi": "mpirun", "nodes": 2}), s)
    a, b = pool_id_for(htc, RUN), pool_id_for(mpi, RUN)
    assert a == pool_id_for(htc, RUN) and a != b
    assert VALID_ID.match(a) and VALID_ID.match(b)
    assert "-htc-" in a and "-mpi-" in b
    assert pool_id_for(htc, "other-run") != a
    long_id = pool_id_for(htc, "r" * 200 + "/weird run")
    assert VALID_ID.match(long_id) and long_id != pool_id_for(htc, "r" * 200 + "/weird rum")


# --- images ------------------------------------------------------------------------------

def test_parse_marketplace_image_with_and_without_version():
    choice = parse_image("microsoft-dsvm:ubuntu-hpc:2404")
    assert choice.node_agent_sku_id == "batch.node.ubuntu 24.04"
    assert choice.reference.as_dict() == {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc",
                                          "sku": "2404", "version": "latest"}
    assert parse_image("almalinux:almalinux-hpc:8-hpc-gen2:8.7.2024042601").reference.version == "8.7.2024042601"


def test_parse_gallery_image_needs_node_agent():
    gid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/hpc/versions/1.0.0"
    with pytest.raises(PoolSpecError, match="node agent"):
        parse_image(gid)
    choice = parse_image(gid, "batch.node.ubuntu 24.04")
    assert choice.reference.as_dict() == {"virtualMachineImageId": gid}
    assert parse_image("/SharedGalleries/x/images/y", "batch.node.el 8").reference.shared_gallery_image_id


@pytest.mark.parametrize("image", ["ubuntu", "a:b", "a::c", "/nope/x", "a:b:c:d:e"])
def test_bad_images(image):
    with pytest.raises(PoolSpecError):
        parse_image(image, "batch.node.ubuntu 24.04")


def test_unknown_marketplace_image_needs_node_agent():
    with pytest.raises(PoolSpecError, match="--saje-node-agent-sku"):
        parse_image("pub:offer:sku")
    assert parse_image("pub:offer:sku", "batch.node.debian 12").node_agent_sku_id == "batch.node.debian 12"


# --- HTC pool spec -----------------------------------------------------------------------

def test_htc_autoscale_pool_as_rest_json():
    s = ExecutorSettings(subnet_id="/subscriptions/s/.../subnets/batch")
    d = spec_dict(pool_class_for(job(), s), s, pip_packages=["snakemake-storage-plugin-azure==0.4.4"])
    assert VALID_ID.match(d["id"])
    assert d["vmSize"] == "Standard_D2s_v5"
    assert d["virtualMachineConfiguration"] == {
        "imageReference": {"publisher": "canonical", "offer": "ubuntu-24_04-lts",
                           "sku": "server", "version": "latest"},
        "nodeAgentSKUId": "batch.node.ubuntu 24.04",
    }
    assert d["taskSlotsPerNode"] == 2  # the VM's vCPUs
    assert d["taskSchedulingPolicy"] == {"nodeFillType": "pack"}
    assert "enableInterNodeCommunication" not in d
    assert d["networkConfiguration"] == {"subnetId": "/subscriptions/s/.../subnets/batch"}
    # autoscale, and only autoscale
    assert d["enableAutoScale"] is True
    assert "$PendingTasks" in d["autoScaleFormula"]
    assert "$NodeDeallocationOption = taskcompletion" in d["autoScaleFormula"]
    assert d["autoScaleEvaluationInterval"]
    assert "targetDedicatedNodes" not in d and "targetLowPriorityNodes" not in d
    assert "resizeTimeout" not in d
    # start task installs the caller's snakemake version
    start = d["startTask"]
    assert start["waitForSuccess"] is True
    assert start["userIdentity"] == {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}
    argv = shlex.split(start["commandLine"])
    assert argv[:2] == ["/bin/bash", "-c"] and len(argv) == 3
    assert "snakemake==9.27.1" in argv[2] and "snakemake-storage-plugin-azure==0.4.4" in argv[2]
    assert "$AZ_BATCH_NODE_SHARED_DIR/saje-venv" in argv[2]
    assert {m["name"]: m["value"] for m in d["metadata"]}["saje-run"] == RUN


def test_fixed_pool_has_targets_and_no_autoscale():
    s = ExecutorSettings(nodes=3)
    d = spec_dict(pool_class_for(job(), s), s)
    assert d["targetDedicatedNodes"] == 3 and d["targetLowPriorityNodes"] == 0
    assert "resizeTimeout" in d
    for key in ("enableAutoScale", "autoScaleFormula", "autoScaleEvaluationInterval"):
        assert key not in d


def test_spot_pools_target_low_priority_nodes():
    s = ExecutorSettings(nodes=2, spot=True)
    d = spec_dict(pool_class_for(job(), s), s)
    assert (d["targetDedicatedNodes"], d["targetLowPriorityNodes"]) == (0, 2)
    s2 = ExecutorSettings(spot=True)
    formula = spec_dict(pool_class_for(job(), s2), s2)["autoScaleFormula"]
    assert "$TargetLowPriorityNodes = $nodes;" in formula
    assert "$TargetDedicatedNodes = 0;" in formula


def test_task_slots_setting_and_limit():
    s = ExecutorSettings(task_slots_per_node=8)
    assert spec_dict(pool_class_for(job(), s), s)["taskSlotsPerNode"] == 8
    s = ExecutorSettings(task_slots_per_node=300)
    with pytest.raises(PoolSpecError, match="256"):
        spec_dict(pool_class_for(job(), s), s)


def test_unknown_vm_size_gets_one_slot():
    s = ExecutorSettings(vm_size="Standard_Future_v9")
    assert spec_dict(pool_class_for(job(), s), s)["taskSlotsPerNode"] == 1


def test_custom_formula_is_substituted():
    s = ExecutorSettings(autoscale_formula="$TargetDedicatedNodes = min({max_nodes}, {slots_per_node} + {min_nodes});",
                         max_nodes=7, min_nodes=1)
    d = spec_dict(pool_class_for(job(), s), s)
    assert d["autoScaleFormula"] == "$TargetDedicatedNodes = min(7, 2 + 1);"


def test_autoscale_interval_is_sent_as_set():
    s = ExecutorSettings(autoscale_interval=7.5)
    spec = pool_spec(pool_class_for(job(), s), s, RUN, snakemake_version="9.27.1")
    assert spec.auto_scale_evaluation_interval == timedelta(minutes=7, seconds=30)


def test_container_pool_and_install_modes():
    s = ExecutorSettings(image="microsoft-dsvm:ubuntu-hpc:2404", container_type="criCompatible",
                         container_registry="ghcr.io", container_registry_username="u",
                         container_registry_password="pw-secret")
    d = spec_dict(pool_class_for(job(), s, "ghcr.io/x/sm:9"), s)
    cc = d["virtualMachineConfiguration"]["containerConfiguration"]
    assert cc["type"] == "criCompatible" and cc["containerImageNames"] == ["ghcr.io/x/sm:9"]
    assert cc["containerRegistries"][0]["registryServer"] == "ghcr.io"
    assert "startTask" not in d  # --saje-snakemake-install pip, yet the image holds Snakemake: nothing to install
    s = ExecutorSettings(snakemake_install="none")
    assert "startTask" not in spec_dict(pool_class_for(job(), s), s)


def test_a_container_pool_needs_a_node_image_with_a_container_runtime():
    s = ExecutorSettings()  # canonical Ubuntu: not DockerCompatible in the supported images
    with pytest.raises(PoolSpecError, match="DockerCompatible.*--saje-image"):
        spec_dict(pool_class_for(job(), s, "img:1"), s)
    gallery = ExecutorSettings(image="/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/x/images/y",
                               node_agent_sku="batch.node.ubuntu 24.04")
    assert spec_dict(pool_class_for(job(), gallery, "img:1"), gallery)["virtualMachineConfiguration"]["containerConfiguration"]


def test_the_job_image_comes_from_the_rule_then_its_container_directive_then_the_run():
    s = ExecutorSettings()
    assert pool_class_for(job(), s, "run:1").container_image == "run:1"
    assert pool_class_for(job({"saje_container": "rule:1"}), s, "run:1").container_image == "rule:1"
    directive = JobSpec(rule="r", jobid=1, command="x", containers=("docker://quay.io/x/y:2",))
    assert pool_class_for(directive, s, "run:1").container_image == "quay.io/x/y:2"
    assert pool_class_for(job(), s).container_image is None


def test_mpi_jobs_run_on_the_node_image_never_in_a_container():
    s = ExecutorSettings()
    assert pool_class_for(job({"mpi": "mpirun", "nodes": 2}), s, "run:1").container_image is None
    with pytest.raises(PoolSpecError, match="MPI job with container image 'x:1'.*--saje-mpi-image"):
        pool_class_for(job({"mpi": "mpirun", "nodes": 2, "saje_container": "x:1"}), s)


def test_pip_install_needs_a_version():
    s = ExecutorSettings()
    with pytest.raises(PoolSpecError, match="version"):
        pool_spec(pool_class_for(job(), s), s, RUN)


def test_existing_pool_is_never_created():
    s = ExecutorSettings(pool_id="theirs")
    with pytest.raises(PoolSpecError, match="theirs"):
        spec_dict(pool_class_for(job(), s), s)


# --- RDMA / MPI pool spec -----------------------------------------------------------------

def test_rdma_mpi_pool_as_rest_json():
    s = ExecutorSettings(nodes=5, subnet_id="/subscriptions/s/subnets/hpc")  # fixed nodes apply to HTC only
    pc = pool_class_for(job({"mpi": "mpirun", "tasks": 240, "tasks_per_node": 120}), s)
    d = spec_dict(pc, s, instances_per_task=2)
    assert d["vmSize"] == "Standard_HB120rs_v3"
    assert d["enableInterNodeCommunication"] is True
    assert d["taskSlotsPerNode"] == 1
    assert d["virtualMachineConfiguration"]["imageReference"]["offer"] == "ubuntu-hpc"
    assert d["virtualMachineConfiguration"]["nodeAgentSKUId"] == "batch.node.ubuntu 24.04"
    assert "nodePlacementConfiguration" not in d["virtualMachineConfiguration"]  # no zonal policy
    assert d["networkConfiguration"]["subnetId"] == "/subscriptions/s/subnets/hpc"
    assert d["enableAutoScale"] is True and "targetDedicatedNodes" not in d
    assert "$ActiveTasks" in d["autoScaleFormula"] and "$running * 2" in d["autoScaleFormula"]
    assert "min(4, $wanted)" in d["autoScaleFormula"]  # mpi_max_nodes
    assert "-mpi-" in d["id"]


def test_mpi_spot_pool_refused_unless_allowed():
    pc = PoolClass(vm_size="Standard_HB120rs_v3", image="microsoft-dsvm:ubuntu-hpc:2404",
                   spot=True, mpi=True)
    with pytest.raises(PoolSpecError, match="--saje-mpi-allow-spot"):
        spec_dict(pc, ExecutorSettings())
    d = spec_dict(pc, ExecutorSettings(mpi_allow_spot=True))
    assert "$TargetLowPriorityNodes = $nodes;" in d["autoScaleFormula"]


def test_mpi_gallery_image():
    gid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/hpc"
    s = ExecutorSettings(mpi_image=gid, mpi_node_agent_sku="batch.node.ubuntu 24.04")
    d = spec_dict(pool_class_for(job({"mpi": "mpirun", "nodes": 2}), s), s)
    assert d["virtualMachineConfiguration"]["imageReference"] == {"virtualMachineImageId": gid}


def test_pool_shapes_for_mapping():
    s = ExecutorSettings(max_nodes=6)
    htc = pool_class_for(job(), s)
    shape = pool_shape(htc, s, "p1")
    assert (shape.vcpus, shape.slots_per_node, shape.max_nodes, shape.memory_gib, shape.mpi) == (2, 2, 6, 8.0, False)
    mpi = pool_class_for(job({"mpi": "mpirun", "nodes": 2}), s)
    shape = pool_shape(mpi, s, "p2")
    assert (shape.vcpus, shape.slots_per_node, shape.max_nodes, shape.mpi) == (120, 1, 4, True)
    assert pool_shape(htc, ExecutorSettings(nodes=3), "p").max_nodes == 3


# --- formulas, checked with the emulator's evaluator of the Batch formula language ----------

autoscale = pytest.importorskip("snakemake_executor_saje.emulator.autoscale")
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


def series(values):
    n = len(values)
    return [autoscale.Sample(NOW - timedelta(seconds=30 * (n - 1 - i)), float(v)) for i, v in enumerate(values)]


def evaluate(formula, **metrics):
    return autoscale.evaluate(
        formula, {f"${k}": series(v) for k, v in metrics.items()},
        {"$CurrentDedicatedNodes": 0, "$CurrentLowPriorityNodes": 0}, NOW,
    )


@pytest.mark.parametrize(
    "pending, nodes",
    [([], 0), ([0, 0, 0], 0), ([1, 1, 1], 1), ([4, 4, 4], 1), ([5, 5, 5], 2), ([0, 0, 9], 3), ([500] * 3, 10)],
)
def test_htc_formula_grows_from_zero_and_shrinks_to_zero(pending, nodes):
    formula = htc_autoscale_formula(0, 10, 4)
    autoscale.validate(formula)
    result = evaluate(formula, PendingTasks=pending)
    assert (result.target_dedicated, result.target_low_priority) == (nodes, 0)
    assert result.node_deallocation_option == "taskcompletion"


def test_htc_formula_respects_min_nodes():
    assert evaluate(htc_autoscale_formula(2, 10, 4), PendingTasks=[0, 0]).target_dedicated == 2


@pytest.mark.parametrize(
    "active, running, nodes",
    [([], [], 0), ([2, 2, 2], [0, 0, 0], 2), ([0, 0, 0], [1, 1, 1], 3), ([3, 3, 3], [1, 1, 1], 6), ([8] * 3, [2] * 3, 8)],
)
def test_mpi_formula_counts_instances(active, running, nodes):
    formula = mpi_autoscale_formula(0, 8, 3)
    autoscale.validate(formula)
    assert evaluate(formula, ActiveTasks=active, RunningTasks=running).target_dedicated == nodes


def test_default_formulas_pass_the_emulator_validator_in_full_specs():
    s = ExecutorSettings()
    for resources in ({}, {"mpi": "mpirun", "nodes": 2}):
        d = spec_dict(pool_class_for(job(resources), s), s)
        autoscale.validate(d["autoScaleFormula"])


def test_mpi_on_a_size_without_infiniband_is_warned_naming_the_rdma_sizes():
    warning = rdma_warning(PoolClass("Standard_D2s_v5", "canonical:ubuntu-24_04-lts:server", mpi=True))
    assert "Standard_D2s_v5" in warning and "no InfiniBand" in warning
    assert "Standard_HB120rs_v3" in warning and "Standard_HB120-16rs_v3" not in warning
    assert rdma_warning(PoolClass("Standard_HB120rs_v3", "microsoft-dsvm:ubuntu-hpc:2404", mpi=True)) is None
    assert rdma_warning(PoolClass("Standard_D2s_v5", "canonical:ubuntu-24_04-lts:server")) is None  # not MPI
    assert rdma_warning(PoolClass("Custom_Size_x", "canonical:ubuntu-24_04-lts:server", mpi=True)) is None
