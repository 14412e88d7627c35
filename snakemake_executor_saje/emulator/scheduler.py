"""The service's heartbeat: boots and removes nodes, runs autoscale, and puts active tasks on free slots.

One background thread ticks every `scheduler_tick_seconds` of real time (and wakes early when state
changes); the durations it enforces (node boot, autoscale interval and sampling, resize timeout,
pool deletion) are measured on the service's clock, `state.clock`, which a time scale speeds up.
Each tick takes the state lock briefly; processes are started by the agent outside the lock.
"""
from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING

from . import metrics, quotas
from .layout import NodeLayout, node_root
from .model import Node, Pool, Task
from .state import BatchState
from .timeutil import parse_duration

if TYPE_CHECKING:
    from .agent import NodeAgent


class Scheduler:
    def __init__(self, state: BatchState, agent: "NodeAgent"):
        self.state = state
        self.agent = agent
        self.config = state.config
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-scheduler", daemon=True)
        self._address_serial = 0
        self._subnet = self.config.address_subnet or (2 + int(hashlib.sha256(str(self.config.data_dir).encode()).hexdigest(), 16) % 250)
        self._used_addresses = {n.address for p in state.pools.values() for n in p.nodes.values()}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.state.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # pragma: no cover - a tick must never kill the service
                import logging

                logging.getLogger(__name__).exception("scheduler tick failed")
            with self.state.changed:
                self.state.changed.wait(self.config.scheduler_tick_seconds)

    # ----------------------------------------------------------------- one tick
    def tick(self) -> None:
        launches: list[tuple[Task, list[Node]]] = []
        start_tasks: list[Node] = []
        with self.state.lock:
            for pool in list(self.state.pools.values()):
                if pool.rest["state"] == "deleting":
                    self._reclaim(pool)
                    continue
                self._autoscale(pool)
                self._allocate(pool)
                start_tasks.extend(self._boot_nodes(pool))
            self._purge_deleted_jobs()
            self.state.expire_jobs()
            launches = self._schedule()
        for node in start_tasks:
            self.agent.prepare_node(node)
        for task, nodes in launches:
            self.agent.run_task(task, nodes, task.attempt)

    # ----------------------------------------------------------------- pools and nodes
    def _reclaim(self, pool: Pool) -> None:
        for node in list(pool.nodes.values()):
            if not node.running:
                self._remove_node(pool, node)
        if pool.deleting_since and self.state.clock.monotonic() - pool.deleting_since < self.config.pool_delete_seconds:
            return  # still 'deleting': a new pool with this id is refused with PoolBeingDeleted meanwhile
        if not pool.nodes:
            self.state.pools.pop(pool.id, None)
            self.state.store.delete("pool", pool.id)
            self.state.store.delete_prefix("node", f"{pool.id}/")

    def _autoscale(self, pool: Pool) -> None:
        now = self.state.clock.monotonic()
        if now - pool.last_sample >= self.config.autoscale_sample_interval.total_seconds():
            metrics.record_sample(self.state, pool)
        if pool.rest.get("enableAutoScale") and now >= pool.next_autoscale:
            self.state._evaluate_autoscale_now(pool)
            self.state.begin_resize(pool)
            self.state.save_pool(pool)

    def _allocate(self, pool: Pool) -> None:
        if pool.rest["allocationState"] == "steady":
            return
        target = {True: int(pool.rest.get("targetDedicatedNodes") or 0), False: int(pool.rest.get("targetLowPriorityNodes") or 0)}
        size = self.state.vm_size(pool.rest["vmSize"])
        for dedicated in (True, False):
            live = [n for n in pool.nodes.values() if n.dedicated == dedicated and n.removing is None]
            missing = target[dedicated] - len(live)
            if missing > 0:
                new = quotas.InUse(size.family if size else "custom", _vcpus(size), dedicated)
                for _ in range(missing):
                    refused = quotas.refusal(self.config.core_quotas, self._cores_in_use(), new)
                    if refused:
                        self._resize_error(pool, *refused)
                        break
                    self._add_node(pool, dedicated)
            elif missing < 0:
                option = pool.rest.get("nodeDeallocationOption") or "requeue"
                # Idle nodes go first, then the ones that have run longest, as the service picks.
                victims = sorted(live, key=lambda n: (bool(n.running), n.rest.get("allocationTime", "")))[: -missing]
                for node in victims:
                    self.state.evict_node(node, option)
        for node in list(pool.nodes.values()):
            if node.state in ("leavingpool", "preempted") and not node.running:
                self._remove_node(pool, node)
        dedicated, low = self.state._node_counts(pool)
        if (dedicated, low) == (target[True], target[False]) or pool.rest.get("resizeErrors"):
            if not any(n.removing for n in pool.nodes.values()):
                self.state.set_state(pool.rest, "steady", key="allocationState", model="BatchPool")
        elif self.state.clock.monotonic() - pool.resize_started > parse_duration(pool.rest.get("resizeTimeout", "PT15M")).total_seconds():
            self._resize_error(pool, "AllocationTimedout", "Desired number of dedicated nodes could not be allocated within the resize timeout.")
            self.state.set_state(pool.rest, "steady", key="allocationState", model="BatchPool")
        pool.rest["currentDedicatedNodes"], pool.rest["currentLowPriorityNodes"] = dedicated, low
        self.state.save_pool(pool)

    def _cores_in_use(self) -> list[quotas.InUse]:
        """Every node the account holds (leaving ones no longer count), for the core quotas."""
        out = []
        for pool in self.state.pools.values():
            size = self.state.vm_size(pool.rest["vmSize"])
            out.extend(quotas.InUse(size.family if size else "custom", _vcpus(size), n.dedicated)
                       for n in pool.nodes.values() if n.removing is None)
        return out

    def _resize_error(self, pool: Pool, code: str, message: str) -> None:
        errors = pool.rest.setdefault("resizeErrors", [])
        if not any(e["code"] == code for e in errors):
            errors.append({"code": code, "message": message})
            self.state.touch(pool.rest)

    def _next_address(self) -> str:
        while True:
            self._address_serial += 1
            n = self._address_serial
            address = f"127.{self._subnet}.{(n // 250) % 256}.{n % 250 + 1}"
            if address not in self._used_addresses:
                self._used_addresses.add(address)
                return address

    # The SSH endpoint every Linux node has besides the pool's own NAT pools (name and port range assumed).
    SSH_NAT_POOL = {"name": "SSHRule", "protocol": "tcp", "backendPort": 22,
                    "frontendPortRangeStart": 50000, "frontendPortRangeEnd": 54999}

    def _inbound_endpoints(self, pool: Pool, address: str) -> list[dict]:
        """One endpoint per inbound NAT pool of the pool, then the node's SSH endpoint: the node's
        own frontend port out of each range (nth node, nth port), its address as the public one.
        The SDK's test_batch_network_configuration sees two endpoints for one NAT pool, the first
        named '<pool name>.0'."""
        nat_pools = ((pool.rest.get("networkConfiguration") or {}).get("endpointConfiguration") or {}).get("inboundNATPools") or []
        index = pool.node_serial - 1
        return [
            {"name": f"{nat['name']}.{index}", "protocol": nat["protocol"], "publicIPAddress": address,
             "publicFQDN": f"{pool.id.lower()}.{self.config.region}.cloudapp.azure.com",
             "frontendPort": nat["frontendPortRangeStart"] + index % max(1, nat["frontendPortRangeEnd"] - nat["frontendPortRangeStart"] + 1),
             "backendPort": nat["backendPort"]}
            for nat in [*nat_pools, self.SSH_NAT_POOL]
        ]

    def _add_node(self, pool: Pool, dedicated: bool) -> Node:
        pool.node_serial += 1
        digest = hashlib.sha256(f"{pool.id}/{pool.node_serial}/{time.time_ns()}".encode()).hexdigest()
        node_id = f"tvmps_{digest}_{'d' if dedicated else 'p'}"
        now = self.state.clock.iso_now()
        address = self._next_address()
        root = node_root(self.config.data_dir, pool.id, node_id)
        rest = {
            "id": node_id, "url": f"{pool.rest['url']}/nodes/{node_id}", "state": "creating", "schedulingState": "enabled",
            "stateTransitionTime": now, "allocationTime": now, "ipAddress": address, "affinityId": f"TVM:{node_id}",
            "vmSize": pool.rest["vmSize"], "totalTasksRun": 0, "totalTasksSucceeded": 0, "runningTasksCount": 0,
            "runningTaskSlotsCount": 0, "isDedicated": dedicated,
            "endpointConfiguration": {"inboundEndpoints": self._inbound_endpoints(pool, address)},
            "nodeAgentInfo": {"version": "1.12.10", "lastUpdateTime": now},
            "virtualMachineInfo": {"imageReference": pool.rest["virtualMachineConfiguration"]["imageReference"]},
        }
        if pool.rest.get("startTask"):
            rest["startTask"] = pool.rest["startTask"]
        node = Node(rest, pool.id, address, str(root), dedicated)
        node.ready_at = self.state.clock.monotonic() + self.config.node_boot_seconds
        pool.nodes[node_id] = node
        self.state.save_node(node)
        return node

    def _remove_node(self, pool: Pool, node: Node) -> None:
        if pool.nodes.pop(node.id, None) is not None:
            self.state.node_departed(node)
        self.state.store.delete("node", f"{pool.id}/{node.id}")
        self._used_addresses.discard(node.address)
        self.agent.forget_node(node)

    def _boot_nodes(self, pool: Pool) -> list[Node]:
        """creating -> starting -> (file systems, container images, start task) -> idle, each boot phase
        lasting the configured boot time. Returns the booted nodes the agent prepares next: a node
        whose pool mounts file systems or pulls container images does that first (still 'starting');
        the others are ready for their start task."""
        now = self.state.clock.monotonic()
        booted = []
        for node in pool.nodes.values():
            if node.ready_at > now or node.removing:
                continue
            if node.state == "creating":
                self.state.set_state(node.rest, "starting", model="BatchNode")
                node.ready_at = now + self.config.node_boot_seconds
            elif node.state in ("starting", "rebooting", "reimaging"):
                NodeLayout(node.layout.root).create()
                self.agent.register_node(node)
                node.rest["lastBootTime"] = self.state.clock.iso_now()
                node.ready_at = float("inf")
                if pool.rest.get("mountConfiguration") or \
                        (pool.rest.get("virtualMachineConfiguration") or {}).get("containerConfiguration"):
                    self.state.set_state(node.rest, "starting", model="BatchNode")
                    booted.append(node)
                elif self.state.node_booted(node, pool):
                    booted.append(node)
            else:
                continue
            self.state.save_node(node)
        return booted

    # ----------------------------------------------------------------- tasks
    def _purge_deleted_jobs(self) -> None:
        for job in list(self.state.jobs.values()):
            if job.state == "deleting" and not any(t.state in ("running", "preparing") for t in job.tasks.values()):
                self.state.purge_job(job)

    def _schedule(self) -> list[tuple[Task, list[Node]]]:
        launches = []
        jobs = sorted((j for j in self.state.jobs.values() if j.state == "active" and j.pending),
                      key=lambda j: -int(j.rest.get("priority") or 0))
        for job in jobs:
            pool = self.state.pools.get(job.pool_id or "")
            if pool is None or pool.rest["state"] != "active":
                continue
            usable = [n for n in pool.nodes.values()
                      if n.state in ("idle", "running") and n.rest.get("schedulingState") == "enabled"
                      and n.removing is None and n.reserved_for is None
                      and n.prepared_jobs.get(job.id) != "failed"]
            if not usable:
                continue
            limit = int(job.rest.get("maxParallelTasks", -1))
            running = sum(1 for t in job.tasks.values() if t.state in ("running", "preparing")) if limit >= 0 else 0
            skipped = []
            while job.pending and (limit < 0 or running < limit):
                if not any(n.used_slots < pool.slots_per_node for n in usable):
                    break
                task_id = job.pending.popleft()
                task = job.tasks.get(task_id)
                if task is None or task.state != "active":
                    continue
                nodes = self._place(pool, usable, task)
                if nodes is None:
                    skipped.append(task_id)
                    continue
                self.state.dispatch(task, nodes)
                launches.append((task, nodes))
                running += 1
            job.pending.extendleft(reversed(skipped))
        return launches

    def _place(self, pool: Pool, usable: list[Node], task: Task) -> list[Node] | None:
        """Nodes for the task, or None. Multi-instance tasks need whole, free nodes on an inter-node pool;
        where the service would never schedule them (no inter-node communication, more than one slot
        per node), they wait forever, as there."""
        if task.multi_instance:
            if not pool.rest.get("enableInterNodeCommunication") or pool.slots_per_node != 1:
                return None
            free = [n for n in usable if not n.running]
            return free[: task.instances] if len(free) >= task.instances else None
        required = int(task.rest.get("requiredSlots") or 1)
        fits = [n for n in usable if pool.slots_per_node - n.used_slots >= required]
        if not fits:
            return None
        pack = (pool.rest.get("taskSchedulingPolicy") or {}).get("nodeFillType") == "pack"
        chosen = max(fits, key=lambda n: n.used_slots) if pack else min(fits, key=lambda n: n.used_slots)
        return [chosen]


def _vcpus(size) -> int:
    return size.vcpus if size else 1
