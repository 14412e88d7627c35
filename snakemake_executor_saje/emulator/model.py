"""In-memory records of the emulated service: each holds its REST body plus what the REST body hides.

The REST body (`rest`) is exactly what GET returns; the other fields are the service's private
bookkeeping (which node a slot is on, when a node finishes booting). `to_row`/`from_row` are the
SQLite persistence format.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .layout import NodeLayout


@dataclass
class Node:
    rest: dict[str, Any]
    pool_id: str
    address: str
    root: str
    dedicated: bool = True
    used_slots: int = 0
    running: set[str] = field(default_factory=set)  # "job/task" keys
    ready_at: float = 0.0  # when the current boot phase ends (state.clock.monotonic(), service seconds)
    prepared_jobs: dict[str, str] = field(default_factory=dict)  # job id -> "succeeded" | "failed"
    removing: str | None = None  # deallocation option while leaving the pool
    reserved_for: str | None = None  # multi-instance task key holding the whole node

    @property
    def id(self) -> str:
        return self.rest["id"]

    @property
    def state(self) -> str:
        return self.rest["state"]

    @property
    def layout(self) -> NodeLayout:
        return NodeLayout(Path(self.root))

    def to_row(self) -> dict[str, Any]:
        return {
            "rest": self.rest, "pool_id": self.pool_id, "address": self.address, "root": self.root,
            "dedicated": self.dedicated, "prepared_jobs": self.prepared_jobs,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Node":
        return cls(row["rest"], row["pool_id"], row["address"], row["root"], row["dedicated"],
                   prepared_jobs=row.get("prepared_jobs", {}))


@dataclass
class Pool:
    rest: dict[str, Any]
    nodes: dict[str, Node] = field(default_factory=dict)
    node_serial: int = 0
    next_autoscale: float = 0.0  # service seconds (state.clock.monotonic()), as the other times here
    resize_started: float = 0.0
    samples: dict[str, list] = field(default_factory=dict)  # metric -> [autoscale.Sample]
    last_sample: float = 0.0
    deleting_since: float = 0.0  # when the delete was accepted (0 after a restart)

    @property
    def id(self) -> str:
        return self.rest["id"]

    @property
    def slots_per_node(self) -> int:
        return int(self.rest.get("taskSlotsPerNode") or 1)

    def to_row(self) -> dict[str, Any]:
        return {"rest": self.rest, "node_serial": self.node_serial}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Pool":
        return cls(row["rest"], node_serial=row.get("node_serial", 0))


@dataclass
class Task:
    rest: dict[str, Any]
    job_id: str
    subtasks: list[dict[str, Any]] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)  # nodes holding it while it runs; primary first
    attempt: int = 0  # bumps on every dispatch, so a stale agent report is ignored

    @property
    def id(self) -> str:
        return self.rest["id"]

    @property
    def key(self) -> str:
        return f"{self.job_id}/{self.id}"

    @property
    def state(self) -> str:
        return self.rest["state"]

    @property
    def multi_instance(self) -> bool:
        """A task with multiInstanceSettings, whatever its numberOfInstances: one instance is still a
        multi-instance task on Azure (coordination command, common resource files, AZ_BATCH_HOST_LIST
        of one host, a whole node of an inter-node pool), not an ordinary task."""
        return bool(self.rest.get("multiInstanceSettings"))

    @property
    def instances(self) -> int:
        settings = self.rest.get("multiInstanceSettings")
        return int(settings.get("numberOfInstances") or 1) if settings else 1

    def to_row(self) -> dict[str, Any]:
        return {"rest": self.rest, "job_id": self.job_id, "subtasks": self.subtasks, "node_ids": self.node_ids}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Task":
        return cls(row["rest"], row["job_id"], row.get("subtasks", []), row.get("node_ids", []))


@dataclass
class Job:
    rest: dict[str, Any]
    tasks: dict[str, Task] = field(default_factory=dict)  # insertion order = list order
    pending: deque = field(default_factory=deque)  # ids of active tasks, FIFO
    prep_release: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> status record

    @property
    def id(self) -> str:
        return self.rest["id"]

    @property
    def state(self) -> str:
        return self.rest["state"]

    @property
    def pool_id(self) -> str | None:
        return (self.rest.get("poolInfo") or {}).get("poolId")

    def to_row(self) -> dict[str, Any]:
        return {"rest": self.rest, "prep_release": self.prep_release}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Job":
        return cls(row["rest"], prep_release=row.get("prep_release", {}))
