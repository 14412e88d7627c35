"""Pure pool specs: which pool class a job needs, and the pool to create for it.

A *pool class* is what makes two jobs unable to share nodes: VM size, image,
container image, spot or dedicated, and MPI (MPI pools have inter-node
communication and one task slot per node, so they are never mixed with
slot-packed pools). SAJE creates at most one pool per class per run, with a
deterministic id, and ``pool_spec`` builds its ``BatchPoolCreateOptions``.

Scaling is either fixed (``--saje-nodes``) or autoscale, never both: the spec
carries either target node counts or enableAutoScale + formula + interval.

Default autoscale formula (HTC pools), evaluated by Batch every interval::

    $samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 1);
    $tasks = $samples < 70 ? max(0, $PendingTasks.GetSample(1))
           : max($PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute * 1)));
    $perNode = <tasks per node>;
    $wanted = $tasks > 0 ? ($tasks + $perNode - 1) / $perNode : 0;
    $nodes = max(<min>, min(<max>, $wanted));
    $TargetDedicatedNodes = $nodes;      (or $TargetLowPriorityNodes for spot)
    $TargetLowPriorityNodes = 0;
    $NodeDeallocationOption = taskcompletion;

$PendingTasks is active plus running tasks, so the pool grows from zero as
soon as tasks are queued, keeps nodes that run tasks, and returns to the
minimum (0 by default) once the job is idle; ``taskcompletion`` lets running
tasks finish before a node goes. ``($t + $n - 1) / $n`` is ceil(t / n) for a
whole number of tasks when Batch truncates the target, which the formula
language needs because it has no ceil(). Tasks per node is the pool's slots
divided by the slots a typical task takes (1 unless the caller says more).

MPI pools use the same shape on $ActiveTasks and $RunningTasks separately.
The Batch docs say a queued multi-instance task counts as its number of
instances in $ActiveTasks; they do not say the same of $RunningTasks, so SAJE
takes a running task as one and multiplies by the instances per MPI task the
caller passes (if the service counted instances there too, the pool would
overshoot by the running tasks' nodes, still capped at the maximum)::

    $nodes = max(<min>, min(<max>, $active + $running * <instances>));
"""

from __future__ import annotations

import datetime
import hashlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from azure.batch import models
from snakemake_interface_common.exceptions import WorkflowError

from . import catalogue, containers, mounts
from .mapping import JobSpec, PoolShape, is_mpi

__all__ = [
    "PoolSpecError",
    "PoolClass",
    "ImageChoice",
    "NODE_VENV",
    "MAX_POOL_ID",
    "MAX_SLOTS_PER_NODE",
    "pool_class_for",
    "pool_id_for",
    "parse_image",
    "slots_per_node",
    "pool_shape",
    "htc_autoscale_formula",
    "mpi_autoscale_formula",
    "start_task",
    "pool_spec",
    "pool_metadata",
]

MAX_POOL_ID = 64
# Batch: taskSlotsPerNode may be at most 256 (and 4x the VM's cores).
MAX_SLOTS_PER_NODE = 256
# Where the start task puts the Snakemake venv; tasks run "$NODE_VENV/bin/python".
NODE_VENV = "$AZ_BATCH_NODE_SHARED_DIR/saje-venv"
_INVALID_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_SAMPLES = (
    "$samples = {var}.GetSamplePercent(TimeInterval_Minute * 1);\n"
    "${name} = $samples < 70 ? max(0, {var}.GetSample(1)) : "
    "max({var}.GetSample(1), avg({var}.GetSample(TimeInterval_Minute * 1)));\n"
)


class PoolSpecError(WorkflowError):
    """A pool SAJE cannot or must not create; the message says what to change."""


@dataclass(frozen=True)
class PoolClass:
    """What a job needs from its pool. Equal classes share one pool.

    ``existing_pool_id`` names a pool the user manages (``--saje-pool-id`` or
    ``resources: saje_pool``); SAJE then creates nothing for the class.
    """

    vm_size: str
    image: str
    node_agent_sku: str | None = None
    container_image: str | None = None
    spot: bool = False
    mpi: bool = False
    existing_pool_id: str | None = None

    @property
    def key(self) -> str:
        """Short stable hash of the class, part of the pool id."""
        raw = "|".join(
            str(v)
            for v in (
                self.vm_size.lower(),
                self.image,
                self.node_agent_sku,
                self.container_image,
                self.spot,
                self.mpi,
                self.existing_pool_id,
            )
        )
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class ImageChoice:
    """An image reference and the node agent SKU that goes with it."""

    reference: models.BatchVmImageReference
    node_agent_sku_id: str


def _canonical_size(name: str) -> str:
    known = catalogue.vm_size(name)
    return known.name if known else name


def pool_class_for(job: JobSpec, settings: Any, run_image: str | None = None) -> PoolClass:
    """The pool class for ``job`` from its resources and the settings.

    Per rule: ``saje_vm_size``, ``saje_pool`` (an existing pool),
    ``saje_container`` or the rule's ``container:`` (``job.containers``);
    ``mpi`` selects the MPI class. ``run_image`` is the run's container image
    (``containers.run_image``), for the jobs that name none. Spot comes from
    ``--saje-spot`` or ``--preemptible-rules`` (``job.preemptible``); an MPI
    job on spot is refused unless ``--saje-mpi-allow-spot``. MPI jobs run on
    the MPI node image, never in a container (SAJE's MPI launch, its hostfile
    and srun stand-in, run on the node): one that names an image is refused.
    """
    res = job.resources
    existing = res.get("saje_pool")
    if is_mpi(job):
        named = containers.job_image(job.rule, res, job.containers, None)
        if named:
            raise PoolSpecError(
                f"Rule {job.rule} is an MPI job with container image {named!r}, but SAJE runs MPI jobs on the"
                " MPI node image, not in containers (its launch of the ranks across nodes runs on the node)."
                " Build the rule's software into --saje-mpi-image (saje image create) and drop the image from"
                " the rule."
            )
        spot = bool(job.preemptible)
        if spot and not settings.mpi_allow_spot:
            raise PoolSpecError(
                f"Rule {job.rule} is an MPI job marked preemptible, but spot nodes are"
                " refused for MPI pools: one preempted node kills the whole MPI job."
                " Leave the rule out of --preemptible-rules or pass --saje-mpi-allow-spot."
            )
        return PoolClass(
            vm_size=_canonical_size(str(res.get("saje_vm_size") or settings.mpi_vm_size)),
            image=settings.mpi_image,
            node_agent_sku=settings.mpi_node_agent_sku,
            spot=spot,
            mpi=True,
            existing_pool_id=str(existing) if existing else None,
        )
    container = containers.job_image(job.rule, res, job.containers, run_image)
    if not existing and not res.get("saje_vm_size") and settings.pool_id:
        existing = settings.pool_id
    return PoolClass(
        vm_size=_canonical_size(str(res.get("saje_vm_size") or settings.vm_size)),
        image=settings.image,
        node_agent_sku=settings.node_agent_sku,
        container_image=container or None,
        spot=bool(settings.spot or job.preemptible),
        mpi=False,
        existing_pool_id=str(existing) if existing else None,
    )


def rdma_warning(pool_class: PoolClass) -> str | None:
    """A warning for an MPI pool on a VM size without InfiniBand, naming the sizes with it; None
    when the size has RDMA or is unknown (a catalogue the user gave may not say)."""
    size = catalogue.vm_size(pool_class.vm_size)
    if not pool_class.mpi or size is None or size.rdma:
        return None
    # Constrained-core variants (Standard_HB120-16rs_v3) would only repeat their full size.
    rdma = sorted(s.name for s in catalogue.vm_sizes(rdma=True) if not re.search(r"\d-\d", s.name))
    return (f"SAJE: MPI jobs run on {size.name}, which has no InfiniBand (RDMA): their ranks talk over the "
            f"ordinary network, many times slower. Sizes with InfiniBand: {', '.join(rdma)} "
            "(--saje-mpi-vm-size, or resources saje_vm_size).")


def pool_id_for(pool_class: PoolClass, run_id: str) -> str:
    """Deterministic, valid (<= 64 chars of [A-Za-z0-9_-]) pool id for a run and class."""
    if pool_class.existing_pool_id:
        return pool_class.existing_pool_id
    tail = f"-{'mpi' if pool_class.mpi else 'htc'}-{pool_class.key}"
    run = _INVALID_ID_CHARS.sub("_", run_id)
    room = MAX_POOL_ID - len("saje-") - len(tail)
    if len(run) > room:
        digest = hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:8]
        run = run[: room - 9] + "-" + digest
    return f"saje-{run}{tail}"


def parse_image(image: str, node_agent_sku: str | None = None) -> ImageChoice:
    """Image reference and node agent from ``publisher:offer:sku[:version]`` or an id.

    Resource ids: ``/subscriptions/...`` (Compute Gallery image or version, or
    a managed image), ``/SharedGalleries/...``, ``/CommunityGalleries/...``.
    Marketplace images get their node agent SKU from the catalogue; ids need
    it given (Batch cannot tell from the id).
    """
    text = (image or "").strip()
    if text.startswith("/"):
        lower = text.lower()
        if lower.startswith("/subscriptions/"):
            ref = models.BatchVmImageReference(virtual_machine_image_id=text)
        elif lower.startswith("/sharedgalleries/"):
            ref = models.BatchVmImageReference(shared_gallery_image_id=text)
        elif lower.startswith("/communitygalleries/"):
            ref = models.BatchVmImageReference(community_gallery_image_id=text)
        else:
            raise PoolSpecError(
                f"Image {text!r} is not a Compute Gallery resource id (expected"
                " /subscriptions/..., /SharedGalleries/... or /CommunityGalleries/...)."
            )
        if not node_agent_sku:
            raise PoolSpecError(
                f"Image {text!r} is a gallery image: set its node agent SKU"
                " (--saje-node-agent-sku or --saje-mpi-node-agent-sku), e.g."
                " 'batch.node.ubuntu 24.04'."
            )
        return ImageChoice(ref, node_agent_sku)
    parts = text.split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise PoolSpecError(
            f"Image {text!r} is neither publisher:offer:sku[:version] nor a gallery"
            " image resource id."
        )
    publisher, offer, sku = parts[:3]
    version = parts[3] if len(parts) == 4 else "latest"
    agent = node_agent_sku or catalogue.node_agent_for(publisher, offer, sku)
    if not agent:
        raise PoolSpecError(
            f"No node agent SKU known for image {text!r}; set --saje-node-agent-sku"
            " (see 'az batch pool supported-images list')."
        )
    ref = models.BatchVmImageReference(
        publisher=publisher, offer=offer, sku=sku, version=version
    )
    return ImageChoice(ref, agent)


def slots_per_node(pool_class: PoolClass, settings: Any) -> int:
    """Task slots per node: 1 for MPI, else the setting or the VM's vCPUs."""
    if pool_class.mpi:
        return 1
    if settings.task_slots_per_node:
        slots = int(settings.task_slots_per_node)
    else:
        size = catalogue.vm_size(pool_class.vm_size)
        slots = size.vcpus if size else 1
    if slots > MAX_SLOTS_PER_NODE:
        raise PoolSpecError(
            f"{slots} task slots per node is more than Batch allows ({MAX_SLOTS_PER_NODE})."
        )
    return slots


def _max_nodes(pool_class: PoolClass, settings: Any) -> int:
    if pool_class.mpi:
        return int(settings.mpi_max_nodes)
    if settings.nodes is not None:
        return int(settings.nodes)
    return int(settings.max_nodes)


def pool_shape(pool_class: PoolClass, settings: Any, pool_id: str) -> PoolShape:
    """What ``mapping`` checks jobs against, for a pool SAJE creates."""
    size = catalogue.vm_size(pool_class.vm_size)
    slots = slots_per_node(pool_class, settings)
    return PoolShape(
        pool_id=pool_id,
        vm_size=pool_class.vm_size,
        vcpus=size.vcpus if size else slots,
        slots_per_node=slots,
        max_nodes=_max_nodes(pool_class, settings),
        memory_gib=size.memory_gib if size else None,
        gpus=size.gpus if size else 0,
        mpi=pool_class.mpi,
    )


def _targets(nodes_expr: str, spot: bool) -> str:
    dedicated, low = ("0", nodes_expr) if spot else (nodes_expr, "0")
    return (
        f"$TargetDedicatedNodes = {dedicated};\n"
        f"$TargetLowPriorityNodes = {low};\n"
        "$NodeDeallocationOption = taskcompletion;"
    )


def htc_autoscale_formula(
    min_nodes: int, max_nodes: int, tasks_per_node: int, spot: bool = False
) -> str:
    """SAJE's default formula for slot-packed pools (see the module docstring)."""
    per_node = max(1, int(tasks_per_node))
    return (
        _SAMPLES.format(var="$PendingTasks", name="tasks")
        + f"$perNode = {per_node};\n"
        "$wanted = $tasks > 0 ? ($tasks + $perNode - 1) / $perNode : 0;\n"
        f"$nodes = max({int(min_nodes)}, min({int(max_nodes)}, $wanted));\n"
        + _targets("$nodes", spot)
    )


def mpi_autoscale_formula(
    min_nodes: int, max_nodes: int, instances_per_task: int, spot: bool = False
) -> str:
    """SAJE's default formula for MPI pools (see the module docstring)."""
    return (
        _SAMPLES.format(var="$ActiveTasks", name="active")
        + _SAMPLES.format(var="$RunningTasks", name="running")
        + f"$wanted = $active + $running * {max(1, int(instances_per_task))};\n"
        f"$nodes = max({int(min_nodes)}, min({int(max_nodes)}, $wanted));\n"
        + _targets("$nodes", spot)
    )


def _snakemake_install_script(snakemake_version: str, pip_packages: Sequence[str]) -> str:
    """The shell script that installs Snakemake (pinned) in a venv shared by all tasks; one line,
    as Batch command lines are not meant to carry newlines."""
    pins = " ".join(shlex.quote(p) for p in [f"snakemake=={snakemake_version}", *pip_packages])
    return (
        f'set -eu; venv="{NODE_VENV}"; '
        'if [ ! -x "$venv/bin/snakemake" ]; then '
        'if ! python3 -m venv "$venv"; then '
        'if command -v apt-get >/dev/null; then '
        "DEBIAN_FRONTEND=noninteractive apt-get update -q && "
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-pip; "
        "elif command -v dnf >/dev/null; then dnf install -y -q python3.11 python3.11-pip; fi; "
        'rm -rf "$venv"; python3 -m venv "$venv"; fi; '
        '"$venv/bin/python" -m pip install --quiet --upgrade pip; '
        f'"$venv/bin/python" -m pip install --quiet {pins}; '
        'chmod -R a+rX "$venv"; fi; '
        '"$venv/bin/snakemake" --version'
    )


def start_task(
    snakemake_version: str | None = None,
    pip_packages: Sequence[str] = (),
    *,
    user_command: str | None = None,
    user_script: str | None = None,
    resource_files: Sequence[models.ResourceFile] = (),
) -> models.BatchStartTask | None:
    """The pools' start task: SAJE's own step, then the user's (--saje-start-task, a shell command,
    and --saje-start-task-script, a file among ``resource_files`` in the start task's working
    directory), each in its own bash so that one's shell options do not leak into the next. None
    when there is nothing to run.

    SAJE's step installs Snakemake (pinned) in a venv shared by all tasks. The task runs elevated
    (installing tools and the OS's python3-venv needs root), once per node, and the pool waits for
    it: a node whose start task failed takes no tasks and reports the failure with its Batch
    error code and its stderr.txt, whichever step failed.
    """
    steps = []
    if snakemake_version:
        steps.append(_snakemake_install_script(snakemake_version, pip_packages))
    if user_command:
        steps.append(user_command)
    if user_script:
        steps.append(f"/bin/bash ./{shlex.quote(user_script)}")
    if not steps:
        return None
    script = steps[0] if len(steps) == 1 else " && ".join(f"/bin/bash -c {shlex.quote(s)}" for s in steps)
    return models.BatchStartTask(
        command_line=f"/bin/bash -c {shlex.quote(script)}",
        resource_files=list(resource_files) or None,
        user_identity=models.UserIdentity(
            auto_user=models.AutoUserSpecification(scope="pool", elevation_level="admin")
        ),
        max_task_retry_count=2,
        wait_for_success=True,
    )


def _container_configuration(
    pool_class: PoolClass, settings: Any, image: ImageChoice
) -> models.BatchContainerConfiguration | None:
    """The pool's containerConfiguration: its one image pre-fetched on every node, the registry's
    credentials. Refused on a marketplace image Batch does not list as DockerCompatible (no
    container runtime: "Batch supports ... images that have container support designations",
    batch-docker-container-workloads)."""
    if not pool_class.container_image:
        return None
    ref = image.reference
    known = catalogue.find_image(ref.publisher, ref.offer, ref.sku) if ref.publisher else None
    if known is not None and "DockerCompatible" not in (known.get("capabilities") or []):
        raise PoolSpecError(
            f"Jobs that run in container image {pool_class.container_image!r} need a node image with a container"
            f" runtime, but {ref.publisher}:{ref.offer}:{ref.sku} is not DockerCompatible in Batch's list of"
            " supported images. Set --saje-image to one that is, e.g. microsoft-dsvm:ubuntu-hpc:2404, or a"
            " gallery image with Docker or containerd installed."
        )
    registries = None
    if settings.container_registry:
        registries = [
            models.ContainerRegistryReference(
                registry_server=settings.container_registry,
                username=settings.container_registry_username,
                password=settings.container_registry_password,
            )
        ]
    return models.BatchContainerConfiguration(
        type=getattr(settings, "container_type", None) or "dockerCompatible",
        container_image_names=[pool_class.container_image],
        container_registries=registries,
    )


def pool_spec(
    pool_class: PoolClass,
    settings: Any,
    run_id: str,
    *,
    snakemake_version: str | None = None,
    pip_packages: Sequence[str] = (),
    tasks_per_node: int | None = None,
    instances_per_task: int = 1,
    pool_id: str | None = None,
    fixed_nodes: int | None = None,
    start_task_files: Sequence[models.ResourceFile] = (),
    tags: Mapping[str, str] | None = None,
) -> models.BatchPoolCreateOptions:
    """The pool to create for ``pool_class`` in run ``run_id``.

    ``snakemake_version`` is pinned in the start task when
    ``--saje-snakemake-install pip`` (with ``pip_packages``, e.g. storage
    plugins). ``tasks_per_node`` (HTC; default: all slots, i.e. one slot per
    task) and ``instances_per_task`` (MPI: nodes of the largest queued MPI job)
    feed the default autoscale formula (its interval is checked against Azure's
    range by the caller's settings). ``pool_id`` names the pool
    instead of deriving the id from the run and class, and ``fixed_nodes``
    asks for that many nodes (spot when the class is) with no autoscale, MPI
    classes included: both for pools a user creates by hand (``saje pool
    create``). ``start_task_files`` are the start task's resource files (the uploaded
    --saje-start-task-script). ``tags`` is the run's tag
    (runs.RunTag.metadata) for its metadata.
    """
    if pool_class.existing_pool_id:
        raise PoolSpecError(
            f"Pool {pool_class.existing_pool_id} is managed outside SAJE; SAJE does not"
            " create it."
        )
    if pool_class.mpi and pool_class.spot and not settings.mpi_allow_spot:
        raise PoolSpecError(
            "Spot nodes are refused for MPI pools (a preempted node kills the whole"
            " MPI job) unless --saje-mpi-allow-spot is set."
        )
    image = parse_image(
        pool_class.image,
        pool_class.node_agent_sku,
    )
    slots = slots_per_node(pool_class, settings)
    max_nodes = _max_nodes(pool_class, settings)
    if pool_class.mpi and max_nodes > 100:
        raise PoolSpecError(
            f"MPI pools have at most 100 nodes (inter-node communication); got {max_nodes}."
        )
    if fixed_nodes is not None and pool_class.mpi and fixed_nodes > 100:
        raise PoolSpecError(
            f"MPI pools have at most 100 nodes (inter-node communication); got {fixed_nodes}."
        )
    pool_id = pool_id or pool_id_for(pool_class, run_id)

    scaling: dict[str, Any]
    if fixed_nodes is None and not pool_class.mpi and settings.nodes is not None:
        fixed_nodes = int(settings.nodes)
    if fixed_nodes is not None:
        nodes = int(fixed_nodes)
        scaling = {
            "target_dedicated_nodes": 0 if pool_class.spot else nodes,
            "target_low_priority_nodes": nodes if pool_class.spot else 0,
            "resize_timeout": datetime.timedelta(minutes=15),
        }
    else:
        interval = float(settings.autoscale_interval)
        min_nodes = 0 if pool_class.mpi else int(settings.min_nodes)
        if settings.autoscale_formula:
            formula = (
                settings.autoscale_formula.replace("{min_nodes}", str(min_nodes))
                .replace("{max_nodes}", str(max_nodes))
                .replace("{slots_per_node}", str(slots))
            )
        elif pool_class.mpi:
            formula = mpi_autoscale_formula(
                min_nodes, max_nodes, instances_per_task, pool_class.spot
            )
        else:
            formula = htc_autoscale_formula(
                min_nodes, max_nodes, tasks_per_node or slots, pool_class.spot
            )
        scaling = {
            "enable_auto_scale": True,
            "auto_scale_formula": formula,
            "auto_scale_evaluation_interval": datetime.timedelta(minutes=interval),
        }

    # A container pool's jobs find Snakemake in their image: nothing to install on the node.
    install = "container" if pool_class.container_image else settings.snakemake_install
    if install == "pip" and not snakemake_version:
        raise PoolSpecError(
            "--saje-snakemake-install pip needs the Snakemake version to pin."
        )
    script = getattr(settings, "start_task_script", None)
    start = start_task(
        snakemake_version if install == "pip" else None,
        pip_packages,
        user_command=getattr(settings, "start_task", None),
        user_script=Path(script).name if script else None,
        resource_files=start_task_files,
    )

    return models.BatchPoolCreateOptions(
        id=pool_id,
        display_name=f"SAJE {run_id} {'MPI' if pool_class.mpi else 'HTC'} {pool_class.vm_size}"[:1024],
        vm_size=pool_class.vm_size,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=image.reference,
            node_agent_sku_id=image.node_agent_sku_id,
            container_configuration=_container_configuration(pool_class, settings, image),
        ),
        task_slots_per_node=slots,
        task_scheduling_policy=models.BatchTaskSchedulingPolicy(
            node_fill_type="pack"  # fill busy nodes first so idle ones can go
        ),
        enable_inter_node_communication=True if pool_class.mpi else None,
        network_configuration=(
            models.NetworkConfiguration(subnet_id=settings.subnet_id)
            if settings.subnet_id
            else None
        ),
        start_task=start,
        mount_configuration=mounts.parse_mounts(getattr(settings, "mounts", None),
                                                node_identity=getattr(settings, "node_identity", None)) or None,
        metadata=pool_metadata(pool_class, run_id, tags),
        **scaling,
    )


def pool_metadata(pool_class: PoolClass, run_id: str,
                  tags: Mapping[str, str] | None = None) -> list[models.BatchMetadataItem]:
    """The pool's metadata: its class, and the run's tag (runs.py; a heartbeat rewrites the
    whole list, so it is built here for both), or just the run id when there is no tag."""
    items = dict(tags) if tags else {"saje-run": run_id}
    items["saje-class"] = pool_class.key
    return [models.BatchMetadataItem(name=name, value=value) for name, value in items.items()]
