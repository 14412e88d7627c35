"""Pure mapping from a Snakemake job to an Azure Batch task request.

Nothing here talks to Azure or reads Snakemake internals beyond the one small
adapter ``job_spec_from_job``: inputs are plain dataclasses, the output is the
SDK's ``BatchTaskCreateOptions``, so every rule of the mapping is unit-tested.

MPI rules follow snakemake-executor-plugin-slurm's resources so that a rule
moves between Slurm and SAJE unchanged::

    resources: mpi="mpirun", tasks=64, tasks_per_node=16   # or nodes=4

``plan_mpi`` turns those into an ``MpiPlan`` (nodes become the multi-instance
task's numberOfInstances; the flavour is resolved; Slurm's ``srun`` becomes a
translation to ``mpirun -n N``); the launcher environment (hostfile, per-flavour
variables, coordination command) is the caller's job, via ``mpi.py``, and
reaches ``task_request`` through ``TaskOptions``. Every invalid combination
(nodes and ranks, launcher, flavour) is a ``JobMappingError`` naming the rule,
what it asked for and what the pool has, raised before anything is submitted.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from azure.batch import models
from snakemake_interface_common.exceptions import WorkflowError

from .mpi import MpiCommandError, SrunTranslation, check_mpi_command, resolve_flavor, srun_translation
from .readable import number

__all__ = [
    "JobMappingError",
    "JobSpec",
    "PoolShape",
    "MpiPlan",
    "TaskOptions",
    "MAX_INTER_NODE_NODES",
    "job_spec_from_job",
    "is_mpi",
    "slurm_only_resources",
    "task_id",
    "command_line",
    "required_slots",
    "plan_mpi",
    "check_fits",
    "task_request",
    "parse_app_packages",
    "app_packages",
    "wall_clock",
]

MAX_TASK_ID = 64
# Batch caps pools with inter-node communication (hence multi-instance tasks) at 100 nodes.
MAX_INTER_NODE_NODES = 100
DEFAULT_COORDINATION_COMMAND = "/bin/bash -c true"
_INVALID_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
# Shorter environment values ("1", "yes") appear in commands by coincidence.
_MIN_SECRET_LEN = 8


class JobMappingError(WorkflowError):
    """A job that cannot become a task on its pool; the message says why."""


@dataclass(frozen=True)
class JobSpec:
    """What the mapping needs from a Snakemake job.

    ``rule`` is the rule name (the group name for group jobs); ``jobid`` is
    unique within the run (an int for single jobs, a uuid for groups);
    ``command`` is the executor's ``format_job_exec(job)``.
    """

    rule: str
    jobid: int | str
    command: str
    threads: int = 1
    resources: Mapping[str, Any] = field(default_factory=dict)
    wildcards: Mapping[str, Any] = field(default_factory=dict)
    is_group: bool = False
    attempt: int = 1
    preemptible: bool = False
    # The rules' container: images that apply (Snakemake's --sdm apptainer), one per job of a group.
    containers: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class PoolShape:
    """What the mapping needs from the pool a job goes to."""

    pool_id: str
    vm_size: str
    vcpus: int
    slots_per_node: int
    max_nodes: int
    memory_gib: float | None = None
    gpus: int = 0
    mpi: bool = False


@dataclass(frozen=True)
class MpiPlan:
    """How an MPI job spreads: ``nodes`` instances, ``tasks`` ranks in all.

    ``tasks_per_node`` is the most ranks any node runs (the hostfile's slots);
    ``cpus_per_task`` > 1 means hybrid MPI+OpenMP; ``flavor`` is resolved (never
    "auto"); ``srun`` says how a Slurm ``srun`` launcher runs, None for others.
    """

    nodes: int
    tasks: int
    tasks_per_node: int
    cpus_per_task: int
    flavor: str = "openmpi"
    launcher: str = "mpirun"
    srun: SrunTranslation | None = None


@dataclass(frozen=True)
class TaskOptions:
    """Everything the caller decides for a task beyond the job itself.

    ``environment`` goes to environmentSettings, never to the command line.
    For MPI tasks, ``coordination_command`` runs on every node before the
    application command runs on the primary, and ``common_resource_files``
    are downloaded to every node's shared task directory.
    """

    max_task_retries: int = 0
    max_wall_clock_minutes: float | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    resource_files: Sequence[models.ResourceFile] = ()
    output_files: Sequence[models.OutputFile] = ()
    container_image: str | None = None
    container_run_options: str | None = None
    elevated: bool = False
    coordination_command: str | None = None
    common_resource_files: Sequence[models.ResourceFile] = ()
    default_mpi_flavor: str = "auto"
    application_packages: Sequence[tuple[str, str | None]] = ()


_PACKAGE = re.compile(r"^([A-Za-z0-9_-][A-Za-z0-9_.-]{0,63})(?::([A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}))?$")


def parse_app_packages(text: Any, where: str) -> list[tuple[str, str | None]]:
    """'name:version name2' (spaces or commas between) -> [(name, version or None)]; a name
    alone means the application's default version. ``where`` names the setting or rule."""
    packages = []
    for item in re.split(r"[\s,]+", str(text or "").strip()):
        if not item:
            continue
        match = _PACKAGE.match(item)
        if not match:
            raise JobMappingError(
                f"{where}: {item!r} is not an application package reference: NAME or NAME:VERSION, each"
                " up to 64 letters, digits, '_', '-' or '.' (e.g. samtools:1.19)."
            )
        packages.append((match.group(1), match.group(2)))
    return packages


def app_packages(job: JobSpec, setting: Any = None) -> list[tuple[str, str | None]]:
    """The packages a job's task references: --saje-app-packages, then the rule's
    ``resources: saje_app_packages`` (a rule's version of an application wins)."""
    chosen: dict[str, str | None] = {}
    for name, version in [*parse_app_packages(setting, "--saje-app-packages"),
                          *parse_app_packages(job.resources.get("saje_app_packages"),
                                              f"rule {job.rule}: resources saje_app_packages")]:
        chosen[name.lower()] = (name, version)  # type: ignore[assignment]
    return list(chosen.values())  # type: ignore[arg-type]


def job_spec_from_job(job: Any, command: str, *, preemptible: bool = False, apptainer: bool = False) -> JobSpec:
    """Adapter from a snakemake ``JobExecutorInterface`` (the only impure bit). ``apptainer``: the
    run's software deployment method includes apptainer, so the rules' ``container:`` apply."""
    resources = {
        str(k): v
        for k, v in dict(job.resources.items()).items()
        if not str(k).startswith("_")
    }
    wildcards: dict[str, Any] = {}
    if not job.is_group():
        raw = getattr(job, "wildcards_dict", None)
        if raw is None and getattr(job, "wildcards", None) is not None:
            raw = dict(job.wildcards.items())
        wildcards = dict(raw or {})
    return JobSpec(
        rule=str(job.name),
        jobid=job.jobid,
        command=command,
        threads=int(job.threads or 1),
        resources=resources,
        wildcards=wildcards,
        is_group=bool(job.is_group()),
        attempt=int(job.attempt or 1),
        preemptible=preemptible,
        containers=tuple(getattr(j, "container_img_url", None) for j in (job.jobs if job.is_group() else [job]))
        if apptainer else (),
    )


# Resources only a Slurm cluster acts on (snakemake-executor-plugin-slurm's docs): a rule or a
# profile written for Slurm keeps them, SAJE carries them to the node's Snakemake unchanged and
# ignores them. The VM size (saje_vm_size) plays the partition's part; there is no account or QOS.
SLURM_ONLY_RESOURCES = frozenset({
    "account", "partition", "qos", "constraint", "cluster", "clusters", "reservation", "gres", "gpu_model",
    "mem_mb_per_cpu",
})


def slurm_only_resources(job: JobSpec) -> list[str]:
    """The job's resources that mean something to Slurm only (``slurm_*`` and the names above)."""
    return sorted(k for k in job.resources if k.startswith("slurm_") or k in SLURM_ONLY_RESOURCES)


def is_mpi(job: JobSpec) -> bool:
    """True when the rule sets a truthy ``resources.mpi`` (Slurm's convention)."""
    return bool(job.resources.get("mpi"))


def task_id(rule: str, jobid: int | str, attempt: int = 1) -> str:
    """A valid, deterministic Batch task id: ``{rule}-{jobid}-a{attempt}``.

    Batch allows 64 characters of [A-Za-z0-9_-]. When the plain id does not
    fit, the rule part is shortened and an 8-hex hash of the full id keeps
    different rules apart; the jobid (unique within the run) is always kept.
    """
    raw = f"{rule}-{jobid}-a{attempt}"
    clean = _INVALID_ID_CHARS.sub("_", raw)
    if clean == raw and len(raw) <= MAX_TASK_ID:
        return raw
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8]
    tail = _INVALID_ID_CHARS.sub("_", f"-{digest}-{jobid}-a{attempt}")
    room = MAX_TASK_ID - len(tail)
    if room < 1:  # absurdly long jobid: keep what fits, the hash keeps it unique
        return (_INVALID_ID_CHARS.sub("_", str(rule))[:1] + tail)[-MAX_TASK_ID:]
    return _INVALID_ID_CHARS.sub("_", str(rule))[:room] + tail


def command_line(command: str) -> str:
    """Wrap a shell command for Batch, which runs command lines without a shell."""
    return f"/bin/bash -c {shlex.quote(command)}"


def _fail(job: JobSpec, message: str) -> JobMappingError:
    kind = "group" if job.is_group else "rule"
    return JobMappingError(f"SAJE cannot run {kind} {job.rule} (job {job.jobid}): {message}")


def _positive_int(job: JobSpec, key: str, minimum: int = 1) -> int | None:
    value = job.resources.get(key)
    if value is None:
        return None
    what = "a positive integer" if minimum else "a whole number"
    if isinstance(value, bool):
        raise _fail(job, f"resources.{key} must be {what}, got {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < minimum:
        raise _fail(job, f"resources.{key} must be {what}, got {value!r}")
    return value


def _pool_desc(pool: PoolShape) -> str:
    return f"pool {pool.pool_id} ({pool.vm_size}"


def required_slots(job: JobSpec, pool: PoolShape) -> int:
    """Task slots the job takes, which must fit one node's slots: its ``cpus_per_task`` when the
    rule sets it (snakemake-executor-plugin-slurm's alternative to ``threads``, which takes
    precedence there too), else its threads."""
    cpus = _positive_int(job, "cpus_per_task")
    cores = cpus or max(1, int(job.threads or 1))
    if cores > pool.slots_per_node:
        asked = f"cpus_per_task={cpus}" if cpus else f"{cores} threads"
        raise _fail(
            job,
            f"it asks for {asked}, but {_pool_desc(pool)}) has"
            f" {pool.slots_per_node} task slots per node. Lower the rule's {'cpus_per_task' if cpus else 'threads'} or"
            " choose a larger VM size (resources saje_vm_size, --saje-vm-size,"
            " --saje-task-slots-per-node).",
        )
    return cores


def _check_fits_node(job: JobSpec, pool: PoolShape) -> None:
    mem_mb = job.resources.get("mem_mb")
    if (
        pool.memory_gib is not None
        and isinstance(mem_mb, (int, float))
        and not isinstance(mem_mb, bool)
        and mem_mb > pool.memory_gib * 1024
    ):
        raise _fail(
            job,
            f"it asks for mem_mb={number(mem_mb)}, but {_pool_desc(pool)}) has"
            f" {number(pool.memory_gib)} GiB ({number(pool.memory_gib * 1024)} MB) per node."
            " Choose a larger VM size with resources saje_vm_size.",
        )
    gpus = max(_positive_int(job, "gpu", 0) or 0, _positive_int(job, "gpus", 0) or 0)
    if gpus > pool.gpus:
        raise _fail(
            job,
            f"it asks for {gpus} GPUs, but {_pool_desc(pool)}) has {pool.gpus} GPUs"
            " per node. Choose a GPU size with resources saje_vm_size.",
        )


def plan_mpi(job: JobSpec, pool: PoolShape, default_flavor: str = "auto") -> MpiPlan:
    """Nodes, ranks and ranks per node of an MPI job on ``pool``, or an error.

    Accepted (Slurm's resources; ``threads`` or ``cpus_per_task`` gives cores
    per rank):
      tasks + tasks_per_node   nodes = tasks / tasks_per_node (must divide)
      tasks + nodes            ranks spread over the nodes, at most ceil per node
      tasks                    as few nodes as the VM's cores allow
      nodes [+ tasks_per_node] tasks_per_node defaults to the VM's cores
      tasks_per_node           one node
    Errors: none of tasks/nodes/tasks_per_node; tasks not divisible by
    tasks_per_node; more ranks x cpus per node than the VM has cores; more
    than 100 nodes; more nodes than the pool can grow to; fewer tasks than
    nodes; nodes inconsistent with tasks / tasks_per_node.
    """
    launcher = job.resources.get("mpi")
    if not launcher:
        raise _fail(job, "it is not an MPI job (resources.mpi is not set)")
    tasks = _positive_int(job, "tasks")
    tpn = _positive_int(job, "tasks_per_node")
    nodes = _positive_int(job, "nodes")
    cpt = _positive_int(job, "cpus_per_task") or max(1, int(job.threads or 1))
    cores = pool.vcpus
    asked = ", ".join(
        f"{k}={v}" for k, v in (("tasks", tasks), ("tasks_per_node", tpn), ("nodes", nodes)) if v
    )

    if tasks is None and nodes is None and tpn is None:
        raise _fail(
            job,
            f"resources mpi={launcher!r} needs tasks or nodes (e.g. tasks=64,"
            " tasks_per_node=16, or nodes=4); the rule sets neither.",
        )
    if cpt > cores:
        raise _fail(
            job,
            f"each MPI rank asks for {cpt} cores (threads/cpus_per_task), but"
            f" {_pool_desc(pool)}) has {cores} cores per node.",
        )
    if tpn is not None and tpn * cpt > cores:
        raise _fail(
            job,
            f"tasks_per_node={tpn} x {cpt} cores per rank = {tpn * cpt} cores per node,"
            f" but {_pool_desc(pool)}) has {cores}. Lower tasks_per_node or use a"
            " larger size (--saje-mpi-vm-size).",
        )

    if tasks is not None and tpn is not None:
        if tasks % tpn:
            raise _fail(
                job,
                f"tasks={tasks} is not divisible by tasks_per_node={tpn}; every node"
                " runs the same number of ranks.",
            )
        if nodes is not None and nodes != tasks // tpn:
            raise _fail(
                job,
                f"tasks={tasks} / tasks_per_node={tpn} = {tasks // tpn} nodes, but the"
                f" rule also sets nodes={nodes}.",
            )
        nodes = tasks // tpn
    elif tasks is not None and nodes is not None:
        if tasks < nodes:
            raise _fail(
                job,
                f"tasks={tasks} is fewer than nodes={nodes}; some nodes would run no rank.",
            )
        tpn = math.ceil(tasks / nodes)
        if tpn * cpt > cores:
            raise _fail(
                job,
                f"tasks={tasks} over nodes={nodes} puts {tpn} ranks x {cpt} cores ="
                f" {tpn * cpt} cores on a node, but {_pool_desc(pool)}) has {cores}.",
            )
    elif tasks is not None:
        per_node = cores // cpt
        nodes = math.ceil(tasks / per_node)
        tpn = math.ceil(tasks / nodes)
    elif nodes is not None:
        tpn = tpn or cores // cpt
        tasks = nodes * tpn
    else:  # tasks_per_node alone: one node, as on Slurm
        nodes, tasks = 1, tpn

    assert nodes is not None and tasks is not None and tpn is not None
    if nodes > MAX_INTER_NODE_NODES:
        raise _fail(
            job,
            f"{asked} needs {nodes} nodes, but Batch runs a multi-instance task on at"
            f" most {MAX_INTER_NODE_NODES} nodes.",
        )
    if nodes > pool.max_nodes:
        raise _fail(
            job,
            f"{asked} needs {nodes} nodes, but {_pool_desc(pool)}) grows to at most"
            f" {pool.max_nodes}. Raise --saje-mpi-max-nodes or ask for fewer nodes.",
        )
    try:
        check_mpi_command(str(launcher))
        srun = srun_translation(str(launcher), tasks, job.rule)
        flavor = resolve_flavor(job.resources.get("saje_mpi_flavor") or default_flavor, str(launcher))
    except MpiCommandError as exc:
        raise _fail(job, str(exc)) from None
    return MpiPlan(
        nodes=nodes,
        tasks=tasks,
        tasks_per_node=tpn,
        cpus_per_task=cpt,
        flavor=flavor.value,
        launcher=str(launcher),
        srun=srun,
    )


def check_fits(job: JobSpec, pool: PoolShape, default_mpi_flavor: str = "auto") -> None:
    """Raise JobMappingError unless ``job`` fits ``pool``: memory and GPUs per node, then
    slots (threads) or, for MPI, the nodes and ranks it asks for, its launcher and flavour.
    What ``task_request`` checks, callable before anything (a pool, a task) is created."""
    _check_fits_node(job, pool)
    if is_mpi(job):
        _check_mpi_pool(job, pool)
        plan_mpi(job, pool, default_mpi_flavor)
    else:
        required_slots(job, pool)


def _check_mpi_pool(job: JobSpec, pool: PoolShape) -> None:
    if not pool.mpi:
        raise _fail(
            job,
            f"it is an MPI job, but {_pool_desc(pool)}) has no inter-node"
            " communication; MPI jobs need an MPI pool.",
        )


def _runtime_minutes(job: JobSpec) -> int | None:
    value = job.resources.get("runtime")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not value.strip().replace(".", "", 1).isdigit():
            raise _fail(
                job,
                f"resources.runtime={value!r} is not a number of minutes",
            )
        value = float(value)
    if value <= 0:
        return None
    return math.ceil(value)


def wall_clock(job: JobSpec, default_minutes: float | None = None) -> datetime.timedelta | None:
    """The task's maxWallClockTime: the rule's runtime (minutes), else `default_minutes`
    (--saje-max-wall-clock), else none."""
    minutes = _runtime_minutes(job) or default_minutes
    return datetime.timedelta(minutes=minutes) if minutes else None


def _check_no_secret_in_command(job: JobSpec, command: str, env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if value and len(str(value)) >= _MIN_SECRET_LEN and str(value) in command:
            raise _fail(
                job,
                f"the value of environment variable {name} appears in the command line;"
                " secrets must travel only in the task's environment settings.",
            )


def task_request(
    job: JobSpec,
    pool: PoolShape,
    options: TaskOptions = TaskOptions(),
    mpi: MpiPlan | None = None,
) -> models.BatchTaskCreateOptions:
    """The Batch task for ``job`` on ``pool``; raises JobMappingError if it cannot fit.

    MPI jobs (``resources.mpi``) become multi-instance tasks with one slot per
    node and must go to an MPI pool; ``mpi`` defaults to ``plan_mpi(job, pool)``.
    """
    _check_fits_node(job, pool)
    if is_mpi(job):
        _check_mpi_pool(job, pool)
        plan = mpi or plan_mpi(job, pool, options.default_mpi_flavor)
        slots = 1  # Batch requires requiredSlots=1 for multi-instance tasks
        multi = models.MultiInstanceSettings(
            number_of_instances=plan.nodes,
            coordination_command_line=options.coordination_command
            or DEFAULT_COORDINATION_COMMAND,
            common_resource_files=list(options.common_resource_files) or None,
        )
    else:
        slots = required_slots(job, pool)
        multi = None

    cmd = command_line(job.command)
    env = dict(options.environment)
    _check_no_secret_in_command(job, cmd, env)

    constraints = models.BatchTaskConstraints(
        max_wall_clock_time=wall_clock(job, options.max_wall_clock_minutes),
        max_task_retry_count=options.max_task_retries,
    )
    container = None
    if options.container_image:
        container = models.BatchTaskContainerSettings(
            image_name=options.container_image,
            container_run_options=options.container_run_options,
            working_directory="taskWorkingDirectory",
        )
    return models.BatchTaskCreateOptions(
        id=task_id(job.rule, job.jobid, job.attempt),
        display_name=_display_name(job),
        command_line=cmd,
        container_settings=container,
        resource_files=list(options.resource_files) or None,
        output_files=list(options.output_files) or None,
        environment_settings=[
            models.EnvironmentSetting(name=k, value=str(v)) for k, v in sorted(env.items())
        ]
        or None,
        constraints=constraints,
        required_slots=slots,
        user_identity=models.UserIdentity(
            auto_user=models.AutoUserSpecification(
                scope="pool", elevation_level="admin" if options.elevated else "nonadmin"
            )
        ),
        multi_instance_settings=multi,
        application_package_references=[
            models.BatchApplicationPackageReference(application_id=name, version=version)
            for name, version in options.application_packages
        ] or None,
    )


def _display_name(job: JobSpec) -> str:
    """Human-readable name shown in the portal: rule and wildcards, capped at 1024."""
    wildcards = ",".join(f"{k}={v}" for k, v in job.wildcards.items())
    name = f"{job.rule}[{wildcards}]" if wildcards else job.rule
    return name[:1024]
