"""The Batch service's state machine: pools, nodes, jobs and tasks, and every REST operation on them.

Operations validate like the real service (same error codes), mutate in-memory records under one
lock and write each change through to SQLite. Time-driven work (booting nodes, autoscale, putting
tasks on nodes) lives in `scheduler`; running processes lives in `agent`.
"""
from __future__ import annotations

import copy
import logging
import re
import threading
import uuid
from datetime import timedelta
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import catalogue
from . import errors, imds, mounts, schema
from .clock import ServiceClock
from .config import EmulatorConfig
from .errors import BatchError
from .faults import FaultPlan
from .model import Job, Node, Pool, Task
from .schema import request as request_schema
from .store import Store
from .timeutil import UNLIMITED_TEXT, parse_duration, parse_iso

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TASKS_PER_COLLECTION = 100
# The service refuses an addtaskcollection body over 1 MB with RequestBodyTooLarge.
MAX_COLLECTION_BYTES = 1024 * 1024
MAX_INTER_NODE_POOL_NODES = 100
MAX_TASK_SLOTS_PER_NODE = 256
# "The minimum and maximum value are 5 minutes and 168 hours respectively" (autoScaleEvaluationInterval),
# "The minimum value is 5 minutes" (resizeTimeout): REST reference, BatchPoolCreateOptions.
AUTOSCALE_INTERVAL_RANGE = (timedelta(minutes=5), timedelta(hours=168))
MIN_RESIZE_TIMEOUT = timedelta(minutes=5)

# The failure a task gets when a user (or a job, node or pool action) ends it.
USER_ENDED = ("usererror", "TaskEnded", "Task Was Ended by User Request")
log = logging.getLogger(__name__)
TASK_DEFAULT_CONSTRAINTS = {"maxWallClockTime": UNLIMITED_TEXT, "retentionTime": "P7D", "maxTaskRetryCount": 0}


def _etag() -> str:
    """A fresh entity tag, bare as the service sends it (spec examples: "eTag": "0x8D4EDFEBFADF4AB")."""
    return f"0x8D{uuid.uuid4().hex[:13].upper()}"


def _check_dependencies(job: Job, body: dict[str, Any]) -> None:
    """dependsOn needs a job created with usesTaskDependencies (REST reference, BatchTaskCreateOptions:
    "the request fails with error code TaskDependenciesNotSpecifiedOnJob"; 400 in Batch status and
    error codes)."""
    if body.get("dependsOn") is not None and not job.rest.get("usesTaskDependencies"):
        raise BatchError(400, "TaskDependenciesNotSpecifiedOnJob",
                         "The task depends on other tasks, but its job does not use task dependencies: create the "
                         "job with usesTaskDependencies set to true.")


def check_id(value: Any, prop: str = "id") -> str:
    if value is None or value == "":
        raise errors.missing_property(prop)
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise errors.invalid_property(
            prop, value,
            "The ID can contain any combination of alphanumeric characters including hyphens and underscores, "
            "and cannot contain more than 64 characters.",
        )
    return value


def _require(body: dict[str, Any], *names: str) -> None:
    for name in names:
        if body.get(name) in (None, ""):
            raise errors.missing_property(name)


def _duration_property(name: str, value: Any, *, minimum: timedelta | None = None,
                       maximum: timedelta | None = None) -> None:
    try:
        parsed = parse_duration(value)
    except (TypeError, ValueError):
        raise errors.invalid_property(name, value, "The value is not a valid ISO 8601 duration.") from None
    if minimum is not None and parsed < minimum or maximum is not None and parsed > maximum:
        bounds = (f"between {_words(minimum)} and {_words(maximum)}" if minimum is not None and maximum is not None
                  else f"at least {_words(minimum)}" if minimum is not None else f"at most {_words(maximum)}")
        raise errors.invalid_property(name, value, f"The value must be {bounds}.")


def _words(delta: timedelta | None) -> str:
    """timedelta(minutes=5) -> '5 minutes', timedelta(hours=168) -> '168 hours' (as the REST reference words them)."""
    seconds = int(delta.total_seconds()) if delta is not None else 0
    for unit, size in (("hours", 3600), ("minutes", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} seconds"


class BatchState:
    """All pools, nodes, jobs and tasks of one emulated Batch account."""

    def __init__(self, config: EmulatorConfig, account_url: str):
        self.config = config
        self.account_url = account_url.rstrip("/")
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.store = Store(config.db_path)
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Job] = {}
        self.faults = FaultPlan()
        # Request bodies the schema refused (operation, path, code, values): tests assert SAJE's never are.
        self.schema_refusals: list[dict[str, Any]] = []
        self.clock = ServiceClock(config.time_scale, origin=config.clock_start)
        # "job/task" -> creations that added the task, and adds refused with TaskExists (a client's
        # retry of a create Batch had applied): what tests and benchmarks count duplicates with.
        self.task_adds: dict[str, Counter] = {"created": Counter(), "already_existed": Counter()}
        # `saje emulator start --vm-size FILE`: sizes the account offers instead of the bundled catalogue.
        self._vm_sizes = catalogue.load_vm_sizes(config.vm_size_catalogue) if config.vm_size_catalogue else None
        # Hooks the agent installs: kill a task's processes; forget a node's files.
        self.on_kill: Callable[[Task, str], None] = lambda task, reason: None
        # Run a job's release task on the nodes that ran its preparation task, then call
        # `complete_job(job)`; None (no agent) completes the job at once.
        self.on_job_release: Callable[[Job, list[Node]], None] | None = None
        # Validation of images the ARM side knows (Compute Gallery versions); None accepts none.
        self.gallery_image_exists: Callable[[str], bool] | None = None
        # The root directory of a gallery image (what its build VM's provisioning installed), or
        # None: nodes of pools made from it see <root>/usr/local/bin on PATH (agent.image_environment).
        self.gallery_image_root: Callable[[str], Path | None] | None = None
        # (application id or name, version or None) -> arm.applications.Package; raises
        # arm.applications.PackageError. None: no ARM side, so no application packages.
        self.application_package: Callable[[str, str | None], Any] | None = None
        # Nodes that have left their pool, with when they were allocated and removed: the
        # lifetimes Azure bills (kept in memory; tests check a run's node-hours against them).
        self.departed_nodes: list[dict[str, Any]] = []
        # Whether a virtual network subnet exists (the ARM side's Microsoft.Network); None: none does.
        self.subnet_exists: Callable[[str], bool] | None = None
        self._load()

    # ----------------------------------------------------------------- records and time
    def touch(self, rest: dict[str, Any]) -> None:
        rest["eTag"] = _etag()
        rest["lastModified"] = self.clock.iso_now()

    def set_state(self, rest: dict[str, Any], state: str, *, key: str = "state", model: str) -> None:
        """A state change, recorded with what the entity's REST model has: the previous state
        (jobs, tasks, subtasks) and a new eTag/lastModified (pools, jobs, tasks), not on nodes."""
        if rest.get(key) == state:
            return
        now = self.clock.iso_now()
        props = schema.load().models[model]["properties"]
        if key == "state" and key in rest and "previousState" in props:
            rest["previousState"] = rest["state"]
            rest["previousStateTransitionTime"] = rest.get("stateTransitionTime")
        rest[key] = state
        # state -> stateTransitionTime, allocationState -> allocationStateTransitionTime
        rest[f"{key}TransitionTime"] = now
        if "eTag" in props:
            self.touch(rest)

    def _resume_clock(self) -> None:
        """After a restart the service's clock goes on from the latest time it recorded, so no
        timestamp it hands out is earlier than one it gave before (a time-scaled clock runs ahead)."""
        records = [p.rest for p in self.pools.values()] + [n.rest for p in self.pools.values() for n in p.nodes.values()]
        records += [j.rest for j in self.jobs.values()] + [t.rest for j in self.jobs.values() for t in j.tasks.values()]
        stamps = [rest.get(key) for rest in records for key in ("lastModified", "stateTransitionTime")]
        stamps += [(p.rest.get("autoScaleRun") or {}).get("timestamp") for p in self.pools.values()]
        latest = [parse_iso(s) for s in stamps if isinstance(s, str)]
        if latest:
            self.clock.not_before(max(latest))

    # ----------------------------------------------------------------- persistence
    def _load(self) -> None:
        for _, row in self.store.load("pool"):
            pool = Pool.from_row(row)
            self.pools[pool.id] = pool
        for _, row in self.store.load("node"):
            node = Node.from_row(row)
            if node.pool_id in self.pools:
                self.pools[node.pool_id].nodes[node.id] = node
        for _, row in self.store.load("job"):
            job = Job.from_row(row)
            self.jobs[job.id] = job
        for _, row in self.store.load("task"):
            task = Task.from_row(row)
            job = self.jobs.get(task.job_id)
            if job is not None:
                job.tasks[task.id] = task
        self._resume_clock()
        self._recover_after_restart()

    def _recover_after_restart(self) -> None:
        """Processes died with the old emulator: treat it as every node rebooting, as a node loss would."""
        for pool in self.pools.values():
            for node in pool.nodes.values():
                node.used_slots, node.running, node.reserved_for = 0, set(), None
                if node.state not in ("leavingpool", "preempted"):
                    self.set_state(node.rest, "starting", model="BatchNode")
                    node.rest["runningTasksCount"] = node.rest["runningTaskSlotsCount"] = 0
                    node.ready_at = 0.0
                    node.prepared_jobs.clear()
                self.save_node(node)
        for job in self.jobs.values():
            for task in job.tasks.values():
                if task.state in ("running", "preparing"):
                    self.requeue(task, reason="restart")
                if task.state == "active":
                    job.pending.append(task.id)
            self.complete_job(job)  # a job left 'terminating' waited for release tasks that died too

    def save_pool(self, pool: Pool) -> None:
        self.store.put("pool", pool.id, pool.to_row())

    def node_lifetimes(self) -> list[dict[str, Any]]:
        """Every node's allocationTime and removalTime (None while it is in its pool)."""
        with self.lock:
            live = [_lifetime(node, None) for pool in self.pools.values() for node in pool.nodes.values()]
            return [*self.departed_nodes, *live]

    def node_departed(self, node: Node) -> None:
        """Note that `node` has left its pool (the scheduler calls this as it removes it)."""
        self.departed_nodes.append(_lifetime(node, self.clock.iso_now()))

    def save_node(self, node: Node) -> None:
        self.store.put("node", f"{node.pool_id}/{node.id}", node.to_row())

    def save_job(self, job: Job) -> None:
        self.store.put("job", job.id, job.to_row())

    def save_task(self, task: Task) -> None:
        self.store.put("task", task.key, task.to_row())

    def save_tasks(self, tasks: Iterable[Task]) -> None:
        self.store.put_many("task", [(t.key, t.to_row()) for t in tasks])

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def refused(self, operation: str | None, path: str, code: str, values: dict[str, Any]) -> None:
        """Keep (and log) a body refused by the Batch or the ARM schema: tests assert SAJE's never are."""
        self.schema_refusals.append({"operation": operation, "path": path, "code": code, "values": values})
        log.warning("refused the body of %s (%s): %s %s", operation, path, code, values)

    # ----------------------------------------------------------------- lookups
    def vm_size(self, name: str) -> "catalogue.VmSize | None":
        if self._vm_sizes is not None:
            return self._vm_sizes.get((name or "").strip().lower())
        return catalogue.vm_size(name)

    def vm_families(self) -> list[str]:
        """The VM series of the sizes the account offers (each has a dedicated core quota)."""
        sizes = self._vm_sizes.values() if self._vm_sizes is not None else catalogue.vm_sizes()
        return sorted({size.family for size in sizes})

    def pool(self, pool_id: str) -> Pool:
        pool = self.pools.get(pool_id)
        if pool is None:
            raise errors.not_found("Pool")
        return pool

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise errors.not_found("Job")
        return job

    def task(self, job_id: str, task_id: str) -> Task:
        task = self.job(job_id).tasks.get(task_id)
        if task is None:
            raise errors.not_found("Task")
        return task

    def node(self, pool_id: str, node_id: str) -> Node:
        node = self.pool(pool_id).nodes.get(node_id)
        if node is None:
            raise errors.not_found("Node")
        return node

    def url(self, *parts: str) -> str:
        return "/".join([self.account_url, *parts])

    # ----------------------------------------------------------------- pools
    def add_pool(self, body: dict[str, Any], *, identities: list[str] | None = None) -> Pool:
        """A new pool. ``identities``: its user-assigned managed identities (ARM ids), which only a
        pool created through ARM can have (the data plane's BatchPool.identity is read-only)."""
        pool_id = check_id(body.get("id"))
        _require(body, "vmSize")
        size = self.vm_size(body["vmSize"])
        if size is None:
            raise errors.invalid_property("vmSize", body["vmSize"], "The specified VM size is not supported in this region.")
        self._check_vm_configuration(body)
        self._check_subnet(body)
        self._check_scale_properties(body)
        slots = int(body.get("taskSlotsPerNode") or 1)
        if not 1 <= slots <= min(MAX_TASK_SLOTS_PER_NODE, 4 * size.vcpus):
            raise errors.invalid_property(
                "taskSlotsPerNode", slots,
                f"The value must be between 1 and {min(MAX_TASK_SLOTS_PER_NODE, 4 * size.vcpus)} (4 times the vCPUs of {size.name}).",
            )
        if body.get("startTask"):
            _require(body["startTask"], "commandLine")
        mounts.validate(body.get("mountConfiguration") or [], identities or [])
        self.check_application_packages(body.get("applicationPackageReferences") or [])
        with self.lock:
            existing = self.pools.get(pool_id)
            if existing is not None:
                if existing.rest["state"] == "deleting":
                    raise errors.conflict("PoolBeingDeleted", "The specified pool has been marked for deletion and is being reclaimed.")
                raise errors.exists("Pool")
            now = self.clock.iso_now()
            rest = copy.deepcopy(body)
            rest.update({
                "url": self.url("pools", pool_id), "creationTime": now, "state": "active", "stateTransitionTime": now,
                "allocationState": "steady", "allocationStateTransitionTime": now,
                "vmSize": size.name.lower(), "taskSlotsPerNode": slots,  # the service lower-cases it (PoolGet_Basic example)
                "currentDedicatedNodes": 0, "currentLowPriorityNodes": 0,
                "enableInterNodeCommunication": bool(body.get("enableInterNodeCommunication", False)),
                "enableAutoScale": bool(body.get("enableAutoScale", False)),
                "taskSchedulingPolicy": body.get("taskSchedulingPolicy") or {"nodeFillType": "spread"},
                "resizeTimeout": body.get("resizeTimeout", "PT15M"),
            })
            if identities:
                rest["identity"] = imds.pool_identity(identities)
            if rest["enableAutoScale"]:
                rest.setdefault("autoScaleEvaluationInterval", "PT15M")
                rest.pop("targetDedicatedNodes", None)
                rest.pop("targetLowPriorityNodes", None)
            else:
                rest["targetDedicatedNodes"] = int(body.get("targetDedicatedNodes") or 0)
                rest["targetLowPriorityNodes"] = int(body.get("targetLowPriorityNodes") or 0)
            self.touch(rest)
            pool = Pool(rest)
            self.pools[pool_id] = pool
            if rest["enableAutoScale"]:
                self._evaluate_autoscale_now(pool)
            self.begin_resize(pool)
            self.save_pool(pool)
            self.notify()
            return pool

    def node_booted(self, node: Node, pool: Pool) -> bool:
        """A booted node (its container images, if any, in place) goes to waitingforstarttask, or to
        idle when its pool has no start task or does not wait for it. True: run the start task."""
        start = pool.rest.get("startTask")
        if start:
            self.set_state(node.rest, "waitingforstarttask" if start.get("waitForSuccess", True) else "idle", model="BatchNode")
            node.rest["startTaskInfo"] = {"state": "running", "startTime": self.clock.iso_now(), "retryCount": 0}
        else:
            self.set_state(node.rest, "idle", model="BatchNode")
        return bool(start)

    def node_unusable(self, node: Node, errors: list[dict[str, Any]]) -> None:
        """A node that cannot take tasks (its container images could not be pulled): 'unusable', with
        its BatchNodeError records."""
        self.set_state(node.rest, "unusable", model="BatchNode")
        node.rest["errors"] = errors
        self.save_node(node)
        self.notify()

    def check_application_packages(self, references: list[dict[str, Any]]) -> None:
        """A pool's packages must exist and be active, named by the application's full ARM id:
        "When creating a pool, the package's application ID must be fully qualified"; an unmet
        reference fails "with the error code InvalidApplicationPackageReferences and HTTP status
        code 409" (REST reference, BatchApplicationPackageReference)."""
        for ref in references:
            application = str(ref.get("applicationId") or "")
            try:
                if not application.startswith("/"):
                    raise ValueError(f"applicationId {application!r} is not a fully qualified application id")
                if self.application_package is None:
                    raise ValueError("no application packages exist in this account")
                self.application_package(application, ref.get("version"))
            except Exception as exc:  # noqa: BLE001 - any unmet reference is the same Batch error
                raise errors.conflict("InvalidApplicationPackageReferences",
                                      f"One or more of the specified application package references are invalid: {exc}") from None

    def _check_vm_configuration(self, body: dict[str, Any]) -> None:
        if body.get("cloudServiceConfiguration"):
            raise errors.invalid_property(
                "cloudServiceConfiguration", "set",
                "Cloud Services Configuration pools are retired; use virtualMachineConfiguration.",
            )
        vm = body.get("virtualMachineConfiguration")
        if not vm:
            raise errors.missing_property("virtualMachineConfiguration")
        _require(vm, "imageReference", "nodeAgentSKUId")
        self._check_support_life(vm["nodeAgentSKUId"])
        image = vm["imageReference"]
        if image.get("virtualMachineImageId"):
            known = self.gallery_image_exists
            if known is None or not known(image["virtualMachineImageId"]):
                raise errors.invalid_property(
                    "virtualMachineImageId", image["virtualMachineImageId"],
                    "The specified image does not exist, or the Batch account cannot access it.",
                )
            return
        match = catalogue.find_image(image.get("publisher"), image.get("offer"), image.get("sku"))
        if match is None:
            raise errors.invalid_property(
                "imageReference", f"{image.get('publisher')}:{image.get('offer')}:{image.get('sku')}",
                "The specified image reference is not a supported image; list the supported images of the account.",
            )
        if match["nodeAgentSKUId"].lower() != str(vm["nodeAgentSKUId"]).lower():
            raise errors.invalid_property(
                "nodeAgentSKUId", vm["nodeAgentSKUId"],
                f"The node agent SKU does not match the image; this image needs {match['nodeAgentSKUId']}.",
            )

    def _check_support_life(self, node_agent: str) -> None:
        """A node agent past its batchSupportEndOfLife (Ubuntu 20.04 after 2025-04-30) takes no new
        pool, whatever the image, a gallery image built on that OS included (Azure/Batch#174)."""
        end = catalogue.node_agent_end_of_life(node_agent)
        if end is not None and self.clock.now() >= end:
            raise errors.invalid_property(
                "nodeAgentSKUId", node_agent,
                f"Batch support for this node agent SKU ended on {end.date().isoformat()} (batchSupportEndOfLife "
                "in the supported images list): new pools cannot use it. Choose a supported image and node agent, "
                "e.g. canonical:ubuntu-24_04-lts:server with batch.node.ubuntu 24.04.",
            )

    def _check_subnet(self, body: dict[str, Any]) -> None:
        """networkConfiguration.subnetId must name a subnet that exists (the ARM side knows which)."""
        subnet = (body.get("networkConfiguration") or {}).get("subnetId")
        if subnet is None:
            return
        exists = self.subnet_exists
        if exists is None or not exists(subnet):
            raise errors.invalid_property(
                "subnetId", subnet,
                "The specified subnet does not exist, or the Batch account cannot use it: create the virtual "
                "network and subnet first (Microsoft.Network), in the Batch account's subscription and region.",
            )

    def _check_scale_properties(self, body: dict[str, Any]) -> None:
        from . import autoscale

        if body.get("enableAutoScale"):
            if body.get("targetDedicatedNodes") is not None or body.get("targetLowPriorityNodes") is not None:
                raise errors.invalid_property(
                    "targetDedicatedNodes", body.get("targetDedicatedNodes"),
                    "targetDedicatedNodes and targetLowPriorityNodes must not be specified when enableAutoScale is true.",
                )
            _require(body, "autoScaleFormula")
            try:
                autoscale.validate(body["autoScaleFormula"])
            except autoscale.AutoscaleError as exc:
                raise BatchError(400, exc.code, exc.message,
                                 [(v["name"], v["value"]) for v in exc.values or []]) from None
            if body.get("autoScaleEvaluationInterval") is not None:
                low, high = AUTOSCALE_INTERVAL_RANGE
                _duration_property("autoScaleEvaluationInterval", body["autoScaleEvaluationInterval"],
                                   minimum=low, maximum=high)
        else:
            if body.get("autoScaleFormula"):
                raise errors.invalid_property("autoScaleFormula", "set", "autoScaleFormula requires enableAutoScale to be true.")
            for prop in ("targetDedicatedNodes", "targetLowPriorityNodes"):
                value = body.get(prop)
                if value is not None and (not isinstance(value, int) or value < 0):
                    raise errors.invalid_property(prop, value, "The value must be a non-negative integer.")
            if body.get("enableInterNodeCommunication") and int(body.get("targetDedicatedNodes") or 0) + int(
                body.get("targetLowPriorityNodes") or 0
            ) > MAX_INTER_NODE_POOL_NODES:
                raise errors.invalid_property(
                    "targetDedicatedNodes", body.get("targetDedicatedNodes"),
                    f"Pools with inter-node communication enabled are limited to {MAX_INTER_NODE_POOL_NODES} nodes.",
                )
        if body.get("resizeTimeout") is not None:
            _duration_property("resizeTimeout", body["resizeTimeout"], minimum=MIN_RESIZE_TIMEOUT)

    UPDATABLE_POOL_PROPERTIES = ("startTask", "metadata", "applicationPackageReferences", "targetNodeCommunicationMode")

    def patch_pool(self, pool_id: str, body: dict[str, Any]) -> Pool:
        """PATCH: the properties given are set, the others kept."""
        return self._update_pool(pool_id, body, replace=False)

    def replace_pool_properties(self, pool_id: str, body: dict[str, Any]) -> Pool:
        """POST updateproperties: the properties given are set, the others cleared."""
        return self._update_pool(pool_id, body, replace=True)

    def _update_pool(self, pool_id: str, body: dict[str, Any], *, replace: bool) -> Pool:
        with self.lock:
            pool = self.pool(pool_id)
            self._refuse_if_deleting(pool)
            for prop in self.UPDATABLE_POOL_PROPERTIES:
                if prop in body:
                    pool.rest[prop] = body[prop]
                elif replace:
                    pool.rest.pop(prop, None)
            self.touch(pool.rest)
            self.save_pool(pool)
            return pool

    def _refuse_if_deleting(self, pool: Pool) -> None:
        if pool.rest["state"] == "deleting":
            raise errors.conflict("PoolBeingDeleted", "The specified pool has been marked for deletion and is being reclaimed.")

    def delete_pool(self, pool_id: str) -> None:
        with self.lock:
            pool = self.pool(pool_id)
            if pool.rest["state"] == "deleting":
                return
            self.set_state(pool.rest, "deleting", model="BatchPool")
            pool.deleting_since = self.clock.monotonic()
            self.save_pool(pool)
            for node in pool.nodes.values():
                self.evict_node(node, "requeue")
            self.notify()

    def resize_pool(self, pool_id: str, body: dict[str, Any]) -> None:
        with self.lock:
            pool = self.pool(pool_id)
            self._refuse_if_deleting(pool)
            if pool.rest.get("enableAutoScale"):
                raise errors.conflict("AutoScalingEnabled", "The specified pool has autoscale enabled; resize it through its formula.")
            if pool.rest["allocationState"] != "steady":
                raise errors.conflict("PoolNotSteady", "The specified pool is not in a steady state; stop the resize first.")
            for prop in ("targetDedicatedNodes", "targetLowPriorityNodes"):
                value = body.get(prop)
                if value is not None and (not isinstance(value, int) or value < 0):
                    raise errors.invalid_property(prop, value, "The value must be a non-negative integer.")
            dedicated = int(body.get("targetDedicatedNodes", pool.rest.get("targetDedicatedNodes", 0)) or 0)
            low = int(body.get("targetLowPriorityNodes", pool.rest.get("targetLowPriorityNodes", 0)) or 0)
            if pool.rest.get("enableInterNodeCommunication") and dedicated + low > MAX_INTER_NODE_POOL_NODES:
                raise errors.invalid_property(
                    "targetDedicatedNodes", dedicated,
                    f"Pools with inter-node communication enabled are limited to {MAX_INTER_NODE_POOL_NODES} nodes.",
                )
            if body.get("resizeTimeout") is not None:
                _duration_property("resizeTimeout", body["resizeTimeout"], minimum=MIN_RESIZE_TIMEOUT)
                pool.rest["resizeTimeout"] = body["resizeTimeout"]
            pool.rest["targetDedicatedNodes"], pool.rest["targetLowPriorityNodes"] = dedicated, low
            pool.rest["nodeDeallocationOption"] = body.get("nodeDeallocationOption", "requeue")
            self.begin_resize(pool)
            self.save_pool(pool)
            self.notify()

    def begin_resize(self, pool: Pool) -> None:
        """Start moving towards the targets; the scheduler adds and removes nodes."""
        if self._node_counts(pool) != (pool.rest.get("targetDedicatedNodes", 0), pool.rest.get("targetLowPriorityNodes", 0)):
            self.set_state(pool.rest, "resizing", key="allocationState", model="BatchPool")
            pool.rest.pop("resizeErrors", None)
            pool.resize_started = self.clock.monotonic()

    def _node_counts(self, pool: Pool) -> tuple[int, int]:
        live = [n for n in pool.nodes.values() if n.removing is None and n.state not in ("leavingpool",)]
        return (sum(1 for n in live if n.dedicated), sum(1 for n in live if not n.dedicated))

    def stop_resize(self, pool_id: str) -> None:
        with self.lock:
            pool = self.pool(pool_id)
            self._refuse_if_deleting(pool)
            if pool.rest["allocationState"] == "resizing":
                # Nodes still draining (taskcompletion/retaineddata) stay: no further changes are made.
                for node in pool.nodes.values():
                    if node.removing in ("taskcompletion", "retaineddata") and node.state not in ("leavingpool", "preempted"):
                        node.removing = None
                        self.save_node(node)
                dedicated, low = self._node_counts(pool)
                pool.rest["targetDedicatedNodes"], pool.rest["targetLowPriorityNodes"] = dedicated, low
                pool.rest["currentDedicatedNodes"], pool.rest["currentLowPriorityNodes"] = dedicated, low
                # PoolResizeErrorCodes.ResizeStopped: "The user stopped the resize operation."
                pool.rest["resizeErrors"] = [{"code": "ResizeStopped", "message": "The user stopped the resize operation."}]
                self.set_state(pool.rest, "steady", key="allocationState", model="BatchPool")
                self.save_pool(pool)

    def remove_nodes(self, pool_id: str, body: dict[str, Any]) -> None:
        with self.lock:
            pool = self.pool(pool_id)
            self._refuse_if_deleting(pool)
            _require(body, "nodeList")
            if body.get("resizeTimeout") is not None:
                _duration_property("resizeTimeout", body["resizeTimeout"], minimum=MIN_RESIZE_TIMEOUT)
            if len(body["nodeList"]) > 100:
                raise errors.invalid_property("nodeList", len(body["nodeList"]), "At most 100 nodes can be removed at once.")
            nodes = []
            for node_id in body["nodeList"]:
                node = pool.nodes.get(node_id)
                if node is None:
                    raise errors.not_found("Node")
                nodes.append(node)
            option = body.get("nodeDeallocationOption", "requeue")
            for node in nodes:
                self.evict_node(node, option)
                key = "targetDedicatedNodes" if node.dedicated else "targetLowPriorityNodes"
                pool.rest[key] = max(0, int(pool.rest.get(key) or 0) - 1)
            self.set_state(pool.rest, "resizing", key="allocationState", model="BatchPool")
            self.save_pool(pool)
            self.notify()

    def evict_node(self, node: Node, option: str) -> None:
        """Take a node out of its pool, handling its tasks as nodeDeallocationOption says."""
        node.removing = option
        if option in ("requeue", "terminate"):
            for key in list(node.running):
                job_id, task_id = key.split("/", 1)
                task = self.jobs.get(job_id) and self.jobs[job_id].tasks.get(task_id)
                if task is None:
                    continue
                if option == "requeue":
                    self.requeue(task, reason="node removed")
                else:
                    self.on_kill(task, "terminate")
                    self.complete_task(task, exit_code=None, failure=USER_ENDED)
        if not node.running:
            self.set_state(node.rest, "leavingpool", model="BatchNode")
        self.save_node(node)

    def preempt_node(self, pool_id: str, node_id: str) -> None:
        """Reclaim a Spot node as Azure would: its tasks are requeued and a replacement is allocated."""
        with self.lock:
            node = self.node(pool_id, node_id)
            if node.dedicated:
                raise errors.conflict("NodeNotLowPriority", "Only Spot/low-priority nodes can be preempted.")
            for key in list(node.running):
                job_id, task_id = key.split("/", 1)
                task = self.jobs[job_id].tasks.get(task_id) if job_id in self.jobs else None
                if task is not None:
                    self.requeue(task, reason="preempted")
            node.removing = "preempted"
            self.set_state(node.rest, "preempted", model="BatchNode")
            self.save_node(node)
            pool = self.pools[pool_id]
            self.begin_resize(pool)
            self.save_pool(pool)
            self.notify()

    def set_autoscale(self, pool_id: str, body: dict[str, Any]) -> Pool:
        with self.lock:
            pool = self.pool(pool_id)
            self._refuse_if_deleting(pool)
            formula = body.get("autoScaleFormula") or pool.rest.get("autoScaleFormula")
            interval = body.get("autoScaleEvaluationInterval") or pool.rest.get("autoScaleEvaluationInterval") or "PT15M"
            if pool.rest["allocationState"] != "steady" and not pool.rest.get("enableAutoScale"):
                raise errors.conflict("PoolNotSteady", "The specified pool is not in a steady state; stop the resize first.")
            self._check_scale_properties({"enableAutoScale": True, "autoScaleFormula": formula,
                                          "autoScaleEvaluationInterval": interval})
            pool.rest.update(enableAutoScale=True, autoScaleFormula=formula, autoScaleEvaluationInterval=interval)
            self._evaluate_autoscale_now(pool)
            self.begin_resize(pool)
            self.save_pool(pool)
            self.notify()
            return pool

    def disable_autoscale(self, pool_id: str) -> Pool:
        with self.lock:
            pool = self.pool(pool_id)
            pool.rest["enableAutoScale"] = False
            for prop in ("autoScaleFormula", "autoScaleEvaluationInterval", "autoScaleRun"):
                pool.rest.pop(prop, None)
            dedicated, low = self._node_counts(pool)
            pool.rest.setdefault("targetDedicatedNodes", dedicated)
            pool.rest.setdefault("targetLowPriorityNodes", low)
            self.touch(pool.rest)
            self.save_pool(pool)
            return pool

    def evaluate_autoscale(self, pool_id: str, formula: str) -> dict[str, Any]:
        """Dry-run a formula against the pool's current samples (POST evaluateautoscale)."""
        from . import autoscale

        with self.lock:
            pool = self.pool(pool_id)
            if not pool.rest.get("enableAutoScale"):
                raise errors.conflict("AutoScalingNotEnabled", "The specified pool does not have autoscale enabled.")
            return self._autoscale_run(pool, formula, autoscale)

    def _evaluate_autoscale_now(self, pool: Pool) -> None:
        from . import autoscale
        run = self._autoscale_run(pool, pool.rest["autoScaleFormula"], autoscale, apply=True)
        pool.rest["autoScaleRun"] = run
        interval = parse_duration(pool.rest.get("autoScaleEvaluationInterval", "PT15M"))
        pool.next_autoscale = self.clock.monotonic() + interval.total_seconds()

    def _autoscale_run(self, pool: Pool, formula: str, autoscale, apply: bool = False) -> dict[str, Any]:
        from .metrics import pool_metrics

        now_text = self.clock.iso_now()
        metrics, current = pool_metrics(self, pool)
        try:
            result = autoscale.evaluate(formula, metrics, current, self.clock.now(),
                                        sample_period=self.config.autoscale_sample_interval)
        except autoscale.AutoscaleError as exc:
            return {"timestamp": now_text, "error": {"code": exc.code, "message": exc.message,
                                                     "values": list(exc.values or [])}}
        if apply:
            dedicated = result.target_dedicated
            if pool.rest.get("enableInterNodeCommunication"):
                dedicated = min(dedicated, MAX_INTER_NODE_POOL_NODES)
            pool.rest["targetDedicatedNodes"] = max(0, dedicated)
            pool.rest["targetLowPriorityNodes"] = max(0, result.target_low_priority)
            pool.rest["nodeDeallocationOption"] = result.node_deallocation_option or "requeue"
        return {"timestamp": now_text, "results": result.results}

    # ----------------------------------------------------------------- nodes
    def node_action(self, pool_id: str, node_id: str, action: str, body: dict[str, Any] | None) -> None:
        with self.lock:
            node = self.node(pool_id, node_id)
            if action == "disablescheduling":
                node.rest["schedulingState"] = "disabled"
                option = (body or {}).get("nodeDisableSchedulingOption", "requeue")
                if option in ("requeue", "terminate"):
                    self._release_node_tasks(node, option)
            elif action == "enablescheduling":
                node.rest["schedulingState"] = "enabled"
            elif action == "reimage":
                # "This API can be invoked only on Pools created with the cloud service configuration
                # property" (REST reference, Reimage Node); those pools are retired, so every pool here
                # is a virtual machine one. The answer as the service gave it on a VM pool (recorded in
                # azure-sdk-for-python, tests/recordings/test_batch.test_batch_compute_nodes.yaml).
                raise BatchError(409, "OperationNotValidOnNode", "The specified operation is not valid on the node.",
                                 [("Reason", "Operation reimage can be invoked only on pools created with "
                                             "cloudServiceConfiguration")])
            elif action == "reboot":
                self._release_node_tasks(node, (body or {}).get("nodeRebootOption") or "requeue")
                self.set_state(node.rest, "rebooting", model="BatchNode")
                node.ready_at = 0.0
            self.save_node(node)
            self.notify()

    def _release_node_tasks(self, node: Node, option: str) -> None:
        for key in list(node.running):
            job_id, task_id = key.split("/", 1)
            task = self.jobs[job_id].tasks.get(task_id) if job_id in self.jobs else None
            if task is None:
                continue
            if option == "terminate":
                self.on_kill(task, "terminate")
                self.complete_task(task, exit_code=None, failure=USER_ENDED)
            elif option == "requeue":
                self.requeue(task, reason="node action")

    # ----------------------------------------------------------------- jobs
    def add_job(self, body: dict[str, Any]) -> Job:
        job_id = check_id(body.get("id"))
        _require(body, "poolInfo")
        pool_info = body["poolInfo"]
        if not pool_info.get("poolId") and not pool_info.get("autoPoolSpecification"):
            raise errors.missing_property("poolInfo.poolId")
        if pool_info.get("autoPoolSpecification"):
            raise errors.invalid_property("poolInfo.autoPoolSpecification", "set", "Auto pools are not supported by this emulator; create the pool first.")
        if body.get("jobReleaseTask") and not body.get("jobPreparationTask"):
            # "A Job Release Task cannot be specified without also specifying a Job Preparation Task" (REST reference).
            raise errors.invalid_property("jobReleaseTask", "set", "A job release task requires a job preparation task.")
        if (body.get("constraints") or {}).get("maxWallClockTime") is not None:
            _duration_property("constraints.maxWallClockTime", body["constraints"]["maxWallClockTime"])
        for task_prop in ("jobPreparationTask", "jobReleaseTask", "jobManagerTask"):
            if body.get(task_prop):
                _require(body[task_prop], "commandLine")
        with self.lock:
            existing = self.jobs.get(job_id)
            if existing is not None:
                if existing.state == "deleting":
                    raise errors.conflict("JobBeingDeleted", "The specified job has been marked for deletion and is being garbage collected.")
                raise errors.exists("Job")
            now = self.clock.iso_now()
            rest = copy.deepcopy(body)
            rest.update({
                "url": self.url("jobs", job_id), "creationTime": now, "state": "active", "stateTransitionTime": now,
                "priority": int(body.get("priority") or 0),
                "maxParallelTasks": int(body.get("maxParallelTasks", -1)),
                "allowTaskPreemption": bool(body.get("allowTaskPreemption", False)),
                "usesTaskDependencies": bool(body.get("usesTaskDependencies", False)),
                "onAllTasksComplete": body.get("onAllTasksComplete", "noaction"),
                "onTaskFailure": body.get("onTaskFailure", "noaction"),
                "constraints": body.get("constraints") or {"maxWallClockTime": UNLIMITED_TEXT, "maxTaskRetryCount": 0},
                "executionInfo": {"startTime": now, "poolId": pool_info.get("poolId")},
            })
            if rest.get("jobPreparationTask"):
                rest["jobPreparationTask"].setdefault("id", "jobpreparation")
                rest["jobPreparationTask"].setdefault("waitForSuccess", True)
            if rest.get("jobReleaseTask"):
                rest["jobReleaseTask"].setdefault("id", "jobrelease")
            self.touch(rest)
            job = Job(rest)
            self.jobs[job_id] = job
            self.save_job(job)
            return job

    def patch_job(self, job_id: str, body: dict[str, Any], replace: bool = False) -> Job:
        with self.lock:
            job = self.job(job_id)
            if job.state in ("completed", "deleting", "terminating"):
                raise errors.conflict("JobCompleted" if job.state == "completed" else "JobBeingDeleted" if job.state == "deleting" else "JobBeingTerminated",
                                      f"The specified job is {job.state}.")
            for prop in ("priority", "maxParallelTasks", "allowTaskPreemption", "constraints", "poolInfo", "metadata", "onAllTasksComplete"):
                if prop in body:
                    job.rest[prop] = body[prop]
                elif replace and prop in ("metadata",):
                    job.rest.pop(prop, None)
            self.touch(job.rest)
            self.save_job(job)
            self.check_job_completion(job)
            self.notify()
            return job

    def terminate_job(self, job_id: str, reason: str = "UserTerminate") -> None:
        with self.lock:
            job = self.job(job_id)
            if job.state in ("completed", "terminating"):
                return
            if job.state == "deleting":
                raise errors.conflict("JobBeingDeleted", "The specified job has been marked for deletion and is being garbage collected.")
            self.set_state(job.rest, "terminating", model="BatchJob")
            job.rest.setdefault("executionInfo", {})["terminateReason"] = reason
            self._end_all_tasks(job)
            self._finish_terminate(job)

    def expire_jobs(self) -> None:
        """Terminate every job whose constraints.maxWallClockTime has passed since its creation:
        "the Batch service terminates it and any Tasks that are still running. In this case, the
        termination reason will be MaxWallClockTimeExpiry" (REST reference, JobConstraints)."""
        now = self.clock.now()
        for job in list(self.jobs.values()):
            if job.state not in ("active", "disabled", "enabling", "disabling"):
                continue
            limit = (job.rest.get("constraints") or {}).get("maxWallClockTime")
            if not limit or limit == UNLIMITED_TEXT:
                continue
            # A wall clock bounds real work, so it runs in real time whatever the time scale
            # (clock.py): the service time elapsed since creation, divided by the scale.
            elapsed = (now - parse_iso(job.rest["creationTime"])).total_seconds()
            if self.clock.real_seconds(elapsed) >= parse_duration(limit).total_seconds():
                self.terminate_job(job.id, reason="MaxWallClockTimeExpiry")

    def _finish_terminate(self, job: Job) -> None:
        """A terminating job completes once its release task has run on every node that prepared it."""
        pool = self.pools.get(job.pool_id or "")
        nodes = [pool.nodes[n] for n in job.prep_release if pool and n in pool.nodes] if job.rest.get("jobReleaseTask") else []
        if nodes and self.on_job_release is not None and job.state == "terminating":
            self.save_job(job)
            self.on_job_release(job, nodes)
            return
        self.complete_job(job)

    def complete_job(self, job: Job) -> None:
        if job.state != "terminating":
            return
        self.set_state(job.rest, "completed", model="BatchJob")
        job.rest["executionInfo"]["endTime"] = self.clock.iso_now()
        self.save_job(job)
        self.notify()

    def _end_all_tasks(self, job: Job) -> None:
        """A job terminated or deleted: its running tasks end as ended by the user (completed,
        failureInfo TaskEnded). Active tasks stay active and are never scheduled (the REST
        reference, Terminate Job: "If there are any Tasks in the Job in the active state, they
        will remain in the active state")."""
        ended = []
        for task in job.tasks.values():
            if task.state in ("running", "preparing"):
                self.on_kill(task, "terminate")
                self.complete_task(task, exit_code=None, failure=USER_ENDED, save=False)
                ended.append(task)
        job.pending.clear()
        self.save_tasks(ended)

    def delete_job(self, job_id: str) -> None:
        with self.lock:
            job = self.job(job_id)
            if job.state == "deleting":
                return
            self.set_state(job.rest, "deleting", model="BatchJob")
            self._end_all_tasks(job)
            self.save_job(job)
            self.notify()

    def purge_job(self, job: Job) -> None:
        """Forget a deleted job (the scheduler calls this once its task processes are gone)."""
        self.jobs.pop(job.id, None)
        self.store.delete("job", job.id)
        self.store.delete_prefix("task", f"{job.id}/")

    def task_counts(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            job = self.job(job_id)
            counts = {"active": 0, "running": 0, "completed": 0, "succeeded": 0, "failed": 0}
            slots = dict(counts)
            for task in job.tasks.values():
                state = "running" if task.state == "preparing" else task.state
                required = int(task.rest.get("requiredSlots") or 1)
                counts[state] += 1
                slots[state] += required
                if state == "completed":
                    outcome = "failed" if (task.rest.get("executionInfo") or {}).get("result") == "failure" else "succeeded"
                    counts[outcome] += 1
                    slots[outcome] += required
            return {"taskCounts": counts, "taskSlotCounts": slots}

    # ----------------------------------------------------------------- tasks
    def validate_task(self, body: dict[str, Any], read: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
        """The task as the service reads it (schema first, with `read`, the request's api-version
        reader; then the service's own rules), or BatchError."""
        body = read(body) if read else request_schema.validated("BatchTaskCreateOptions", body)
        check_id(body.get("id"))
        slots = body.get("requiredSlots")
        if slots is not None and slots < 1:
            raise errors.invalid_property("requiredSlots", slots, "The value must be at least 1.")
        constraints = body.get("constraints") or {}
        for prop in ("maxWallClockTime", "retentionTime"):
            if constraints.get(prop) is not None:
                _duration_property(f"constraints.{prop}", constraints[prop])
        retries = constraints.get("maxTaskRetryCount")
        if retries is not None and retries < -1:
            raise errors.invalid_property("constraints.maxTaskRetryCount", retries, "The value must be -1 (unlimited) or more.")
        multi = body.get("multiInstanceSettings")
        if multi is not None:
            count = multi.get("numberOfInstances", 1)
            if count < 1:
                raise errors.invalid_property("multiInstanceSettings.numberOfInstances", count, "The value must be at least 1.")
            if count > MAX_INTER_NODE_POOL_NODES:
                raise errors.invalid_property("multiInstanceSettings.numberOfInstances", count,
                                              f"A multi-instance task can use at most {MAX_INTER_NODE_POOL_NODES} nodes.")
            # requiredSlots is not refused here: the spec's Tasks_CreateTaskCollection_Complex example
            # adds a multi-instance task with requiredSlots 2 successfully (each instance holds a whole node).
        for index, resource in enumerate(body.get("resourceFiles") or []):
            sources = [k for k in ("autoStorageContainerName", "storageContainerUrl", "httpUrl") if resource.get(k)]
            if len(sources) != 1:
                raise errors.invalid_property(f"resourceFiles[{index}]", sources or "none",
                                              "Exactly one of autoStorageContainerName, storageContainerUrl or httpUrl must be specified.")
            if resource.get("httpUrl") and not resource.get("filePath"):
                raise errors.missing_property(f"resourceFiles[{index}].filePath")
        for index, output in enumerate(body.get("outputFiles") or []):
            if not output["destination"].get("container"):
                raise errors.missing_property(f"outputFiles[{index}].destination.container")
        return body

    def _task_rest(self, job: Job, body: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.iso_now()
        rest = copy.deepcopy(body)
        constraints = dict(TASK_DEFAULT_CONSTRAINTS)
        job_constraints = job.rest.get("constraints") or {}
        if job_constraints.get("maxTaskRetryCount") is not None:
            constraints["maxTaskRetryCount"] = job_constraints["maxTaskRetryCount"]
        constraints.update({k: v for k, v in (body.get("constraints") or {}).items() if v is not None})
        rest.update({
            "url": self.url("jobs", job.id, "tasks", body["id"]), "creationTime": now,
            "state": "active", "stateTransitionTime": now,
            "constraints": constraints, "requiredSlots": int(body.get("requiredSlots") or 1),
            "executionInfo": {"retryCount": 0, "requeueCount": 0},
        })
        if rest.get("multiInstanceSettings"):
            rest["multiInstanceSettings"].setdefault("numberOfInstances", 1)
        rest.setdefault("userIdentity", {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}})
        self.touch(rest)
        return rest

    def _job_accepting_tasks(self, job_id: str) -> Job:
        job = self.job(job_id)
        if job.state == "completed":
            raise errors.conflict("JobCompleted", "The specified job is already in a completed state.")
        if job.state == "deleting":
            raise errors.conflict("JobBeingDeleted", "The specified job has been marked for deletion and is being garbage collected.")
        if job.state == "terminating":
            raise errors.conflict("JobBeingTerminated", "The specified job is being terminated.")
        return job

    def add_task(self, job_id: str, body: dict[str, Any], read: Callable[[Any], dict[str, Any]] | None = None) -> Task:
        body = self.validate_task(body, read)
        with self.lock:
            job = self._job_accepting_tasks(job_id)
            _check_dependencies(job, body)
            if body["id"] in job.tasks:
                self.task_adds["already_existed"][f"{job.id}/{body['id']}"] += 1
                raise errors.exists("Task")
            task = Task(self._task_rest(job, body), job.id)
            self.task_adds["created"][f"{job.id}/{task.id}"] += 1
            job.tasks[task.id] = task
            job.pending.append(task.id)
            self.save_task(task)
            self.notify()
            return task

    def add_task_collection(self, job_id: str, bodies: list[dict[str, Any]],
                            read: Callable[[Any], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Per-task results in the order given; a bad task fails alone (status clienterror)."""
        with self.lock:
            job = self._job_accepting_tasks(job_id)
            results, added = [], []
            for body in bodies:
                try:
                    body = self.validate_task(body, read)
                    _check_dependencies(job, body)
                    if body["id"] in job.tasks:
                        self.task_adds["already_existed"][f"{job.id}/{body['id']}"] += 1
                        raise errors.exists("Task")
                except BatchError as exc:
                    if exc.schema:
                        self.refused("create_task_collection", f"/jobs/{job_id}/addtaskcollection", exc.code, dict(exc.values))
                    results.append({"status": "clienterror", "taskId": body.get("id"),
                                    "error": exc.body(self.account_url, str(uuid.uuid4()), self.clock.iso_now())})
                    continue
                task = Task(self._task_rest(job, body), job.id)
                self.task_adds["created"][f"{job.id}/{task.id}"] += 1
                job.tasks[task.id] = task
                job.pending.append(task.id)
                added.append(task)
                results.append({"status": "success", "taskId": task.id, "eTag": task.rest["eTag"],
                                "lastModified": task.rest["lastModified"], "location": task.rest["url"]})
            self.save_tasks(added)
            self.notify()
            return results

    def patch_task(self, job_id: str, task_id: str, body: dict[str, Any]) -> Task:
        with self.lock:
            task = self.task(job_id, task_id)
            if task.state == "completed":
                raise errors.conflict("TaskCompleted", "The specified task is already in a completed state.")
            constraints = dict(task.rest.get("constraints") or {})
            constraints.update({k: v for k, v in (body.get("constraints") or {}).items() if v is not None})
            task.rest["constraints"] = constraints
            self.touch(task.rest)
            self.save_task(task)
            return task

    def delete_task(self, job_id: str, task_id: str) -> None:
        with self.lock:
            job = self.job(job_id)
            task = self.task(job_id, task_id)
            if task.state in ("running", "preparing"):
                self.on_kill(task, "delete")
                self._release_nodes(task)
            job.tasks.pop(task_id, None)
            try:
                job.pending.remove(task_id)
            except ValueError:
                pass
            self.store.delete("task", task.key)
            self.check_job_completion(job)
            self.notify()

    def terminate_task(self, job_id: str, task_id: str) -> None:
        with self.lock:
            job = self.job(job_id)
            task = self.task(job_id, task_id)
            if task.state == "completed":
                return
            if task.state in ("running", "preparing"):
                self.on_kill(task, "terminate")
                self.complete_task(task, exit_code=None, failure=USER_ENDED)
            else:
                try:
                    job.pending.remove(task_id)
                except ValueError:
                    pass
                self.set_state(task.rest, "completed", model="BatchTask")
                task.rest["executionInfo"].update(
                    result="failure", endTime=self.clock.iso_now(),
                    failureInfo=dict(zip(("category", "code", "message"), USER_ENDED)),
                )
                self.save_task(task)
                self.check_job_completion(job)
            self.notify()

    def reactivate_task(self, job_id: str, task_id: str) -> None:
        with self.lock:
            job = self._job_accepting_tasks(job_id)
            task = self.task(job_id, task_id)
            info = task.rest.get("executionInfo") or {}
            if task.state != "completed" or info.get("result") != "failure":
                raise errors.conflict("TaskNotFailed" if task.state == "completed" else "TaskNotCompleted",
                                      "Only a completed task that failed can be reactivated.")
            self.set_state(task.rest, "active", model="BatchTask")
            task.rest["executionInfo"] = {"retryCount": 0, "requeueCount": info.get("requeueCount", 0)}
            task.rest.pop("nodeInfo", None)
            job.pending.append(task.id)
            self.save_task(task)
            self.notify()

    # ----------------------------------------------------------------- task lifecycle (scheduler/agent side)
    def dispatch(self, task: Task, nodes: list[Node]) -> None:
        """Put an active task on nodes: the agent takes it from 'preparing'."""
        required = int(task.rest.get("requiredSlots") or 1)
        task.attempt += 1
        task.node_ids = [n.id for n in nodes]
        primary = nodes[0]
        self.set_state(task.rest, "preparing", model="BatchTask")
        task.rest["executionInfo"].pop("endTime", None)
        task.rest["executionInfo"].pop("exitCode", None)
        task.rest["executionInfo"].pop("failureInfo", None)
        task.rest["executionInfo"].pop("result", None)
        task.rest["nodeInfo"] = {
            "affinityId": primary.rest.get("affinityId"), "nodeUrl": primary.rest["url"], "poolId": primary.pool_id,
            "nodeId": primary.id, "taskRootDirectory": f"workitems/{task.job_id}/job-1/{task.id}",
            "taskRootDirectoryUrl": f"{primary.rest['url']}/files/workitems/{task.job_id}/job-1/{task.id}",
        }
        for node in nodes:
            slots = int(self.pools[node.pool_id].slots_per_node) if task.multi_instance else required
            node.used_slots += slots
            node.running.add(task.key)
            if task.multi_instance:
                node.reserved_for = task.key
            self._refresh_node_running(node)
        if task.multi_instance:
            task.subtasks = [
                {"id": index, "nodeInfo": {"nodeId": node.id, "poolId": node.pool_id, "nodeUrl": node.rest["url"],
                                           "affinityId": node.rest.get("affinityId"),
                                           "taskRootDirectory": task.rest["nodeInfo"]["taskRootDirectory"]},
                 "state": "preparing", "stateTransitionTime": self.clock.iso_now()}
                for index, node in enumerate(nodes[1:], start=1)
            ]

    def _refresh_node_running(self, node: Node) -> None:
        node.rest["runningTasksCount"] = len(node.running)
        node.rest["runningTaskSlotsCount"] = node.used_slots
        if node.state in ("idle", "running"):
            self.set_state(node.rest, "running" if node.running else "idle", model="BatchNode")

    def mark_running(self, task: Task, attempt: int) -> bool:
        with self.lock:
            if task.attempt != attempt or task.state != "preparing":
                return False
            self.set_state(task.rest, "running", model="BatchTask")
            task.rest["executionInfo"]["startTime"] = self.clock.iso_now()
            for sub in task.subtasks:
                self.set_state(sub, "running", model="BatchSubtask")
                sub["startTime"] = self.clock.iso_now()
            self.save_task(task)
            return True

    def _release_nodes(self, task: Task) -> None:
        for node_id in task.node_ids:
            pool = self.pools.get((task.rest.get("nodeInfo") or {}).get("poolId", ""))
            node = pool.nodes.get(node_id) if pool else None
            if node is None or task.key not in node.running:
                continue
            node.running.discard(task.key)
            slots = pool.slots_per_node if task.multi_instance else int(task.rest.get("requiredSlots") or 1)
            node.used_slots = max(0, node.used_slots - slots)
            if node.reserved_for == task.key:
                node.reserved_for = None
            self._refresh_node_running(node)
            if node.removing and not node.running:
                self.set_state(node.rest, "leavingpool", model="BatchNode")
            self.save_node(node)
        task.node_ids = []

    def requeue(self, task: Task, *, reason: str) -> None:
        """A node loss (preemption, removal, restart): the task goes back to active, requeueCount rises."""
        self.on_kill(task, "requeue")
        self._release_nodes(task)
        task.attempt += 1
        self.set_state(task.rest, "active", model="BatchTask")
        info = task.rest.setdefault("executionInfo", {})
        info["requeueCount"] = int(info.get("requeueCount", 0)) + 1
        info["lastRequeueTime"] = self.clock.iso_now()
        task.subtasks = []
        job = self.jobs.get(task.job_id)
        if job is not None:
            job.pending.appendleft(task.id)
        self.save_task(task)

    def complete_task(self, task: Task, *, exit_code: int | None, failure: tuple | None = None,
                      attempt: int | None = None, subtask_results: list[dict] | None = None, save: bool = True) -> bool:
        """The task's process ended (or never started): retry it, or mark it completed."""
        if attempt is not None and attempt != task.attempt:
            return False
        if task.state not in ("running", "preparing"):
            return False
        job = self.jobs.get(task.job_id)
        info = task.rest["executionInfo"]
        now = self.clock.iso_now()
        self._release_nodes(task)
        failed = failure is not None or exit_code not in (0, None)
        user_ended = failure is not None and failure[1] == "TaskEnded"
        retries = int(task.rest["constraints"].get("maxTaskRetryCount", 0))
        if failed and not user_ended and (retries == -1 or int(info.get("retryCount", 0)) < retries):
            info["retryCount"] = int(info.get("retryCount", 0)) + 1
            info["lastRetryTime"] = now
            info["exitCode"] = exit_code
            self.set_state(task.rest, "active", model="BatchTask")
            if job is not None:
                job.pending.appendleft(task.id)
            if save:
                self.save_task(task)
            return True
        info["endTime"] = now
        if exit_code is not None:
            info["exitCode"] = exit_code
        info["result"] = "failure" if failed else "success"
        if failure is not None:  # (category, code, message[, details])
            info["failureInfo"] = {"category": failure[0], "code": failure[1], "message": failure[2]}
            if len(failure) > 3 and failure[3]:
                info["failureInfo"]["details"] = list(failure[3])
        elif failed:
            info["failureInfo"] = {"category": "usererror", "code": "FailureExitCode",
                                   "message": "The task exited with an exit code representing a failure",
                                   "details": [{"name": "Message", "value": "The task exited with an exit code representing a failure"}]}
        for sub, result in zip(task.subtasks, subtask_results or []):
            sub.update(result)
        for sub in task.subtasks:
            if sub.get("state") != "completed":
                self.set_state(sub, "completed", model="BatchSubtask")
                sub.setdefault("endTime", now)
        self.set_state(task.rest, "completed", model="BatchTask")
        if save:
            self.save_task(task)
        if job is not None:
            self._apply_exit_conditions(job, task)
            self.check_job_completion(job)
        self.notify()
        return True

    def _apply_exit_conditions(self, job: Job, task: Task) -> None:
        """exitConditions -> jobAction (terminate/disable) when the job allows it."""
        conditions = task.rest.get("exitConditions") or {}
        info = task.rest["executionInfo"]
        action = None
        code = info.get("exitCode")
        failure_code = (info.get("failureInfo") or {}).get("code")
        if failure_code == "FileUploadError" and conditions.get("fileUploadError"):
            action = conditions["fileUploadError"].get("jobAction")
        elif failure_code not in (None, "FailureExitCode") and conditions.get("preProcessingError"):
            action = conditions["preProcessingError"].get("jobAction")
        elif code is not None:
            for entry in conditions.get("exitCodes") or []:
                if entry.get("code") == code:
                    action = (entry.get("exitOptions") or {}).get("jobAction")
                    break
            else:
                for entry in conditions.get("exitCodeRanges") or []:
                    if entry.get("start", 0) <= code <= entry.get("end", 0):
                        action = (entry.get("exitOptions") or {}).get("jobAction")
                        break
        if action is None and info.get("result") == "failure" and conditions.get("default"):
            action = conditions["default"].get("jobAction")
        if action is None and info.get("result") == "failure" and job.rest.get("onTaskFailure") == "performexitoptionsjobaction":
            action = "terminate" if not conditions else None
        if action == "terminate" and job.state == "active":
            self.set_state(job.rest, "terminating", model="BatchJob")
            job.rest["executionInfo"]["terminateReason"] = "TaskFailed"
            self._end_all_tasks(job)
            self._finish_terminate(job)
        elif action == "disable" and job.state == "active":
            self.set_state(job.rest, "disabled", model="BatchJob")
            self.save_job(job)

    def check_job_completion(self, job: Job) -> None:
        if job.state != "active" or job.rest.get("onAllTasksComplete") != "terminatejob" or not job.tasks:
            return
        if all(t.state == "completed" for t in job.tasks.values()):
            self.set_state(job.rest, "terminating", model="BatchJob")
            job.rest["executionInfo"]["terminateReason"] = "AllTasksComplete"
            self._finish_terminate(job)

    # ----------------------------------------------------------------- account
    def supported_images(self) -> list[dict[str, Any]]:
        return catalogue.supported_images()

    def pool_node_counts(self) -> list[dict[str, Any]]:
        states = ["creating", "idle", "offline", "preempted", "rebooting", "reimaging", "running", "starting",
                  "startTaskFailed", "leavingPool", "unknown", "unusable", "waitingForStartTask", "deallocated",
                  "deallocating", "upgradingOS"]
        out = []
        with self.lock:
            for pool in self.pools.values():
                counts = {True: dict.fromkeys(states, 0), False: dict.fromkeys(states, 0)}
                for node in pool.nodes.values():
                    name = next((s for s in states if s.lower() == node.state.lower()), "unknown")
                    counts[node.dedicated][name] += 1
                for dedicated in (True, False):
                    counts[dedicated]["total"] = sum(counts[dedicated].values())
                out.append({"poolId": pool.id, "dedicated": counts[True], "lowPriority": counts[False]})
        return out


def _lifetime(node: Node, removed: str | None) -> dict[str, Any]:
    return {"poolId": node.pool_id, "nodeId": node.id, "vmSize": node.rest.get("vmSize"), "isDedicated": node.dedicated,
            "allocationTime": node.rest.get("allocationTime"), "removalTime": removed}
