"""Where an emulated node keeps its files: the real node's /mnt/batch/tasks tree, under --data-dir.

    <data-dir>/nodes/<pool-id>/<node-id>/            AZ_BATCH_NODE_ROOT_DIR
        applications/  startup/wd  shared/  fsmounts/
        workitems/<job-id>/job-1/<task-id>/wd          AZ_BATCH_TASK_WORKING_DIR
        workitems/<job-id>/job-1/<task-id>/{stdout,stderr}.txt
    <data-dir>/hosts.json                            node address -> node root (the ssh shim reads it)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .datadir import make_private_dir


@dataclass(frozen=True)
class NodeLayout:
    root: Path  # AZ_BATCH_NODE_ROOT_DIR

    @property
    def applications(self) -> Path:
        return self.root / "applications"

    @property
    def startup(self) -> Path:
        return self.root / "startup"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def mounts(self) -> Path:
        """AZ_BATCH_NODE_MOUNTS_DIR: the pool's mountConfiguration file systems."""
        return self.root / "fsmounts"

    def task_dir(self, job_id: str, task_id: str) -> Path:
        return self.root / "workitems" / job_id / "job-1" / task_id

    def working_dir(self, job_id: str, task_id: str) -> Path:
        return self.task_dir(job_id, task_id) / "wd"

    def create(self) -> None:
        """The node's directories, private (0700) like everything in the data dir."""
        for sub in ("applications", "startup/wd", "shared", "fsmounts", "workitems"):
            make_private_dir(self.root / sub)


def node_root(data_dir: Path, pool_id: str, node_id: str) -> Path:
    return Path(data_dir) / "nodes" / pool_id / node_id


def hosts_file(data_dir: Path) -> Path:
    return Path(data_dir) / "hosts.json"
