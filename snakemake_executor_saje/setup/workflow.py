"""What the setup workflows' Snakefiles share: one ARM connection per run, and a step runner that
turns a step's result into a marker and a SetupError into the rule's error (its message only)."""
from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from .clients import Arm
from .markers import SetupError, write_marker

__all__ = ["Runner"]


class Runner:
    def __init__(self, config: Mapping[str, Any], prefix: str):
        self.config = config
        self.prefix = prefix
        self.run_id = str(config.get("run_id") or uuid.uuid4().hex[:12])
        self._arm: Arm | None = None
        self._lock = threading.Lock()
        self.tearing_down = False

    @property
    def connected(self) -> bool:
        return self._arm is not None

    def arm(self) -> Arm:
        """The run's ARM connection, made on first use (so --dry-run, --dag and --summary make none)."""
        with self._lock:
            if self._arm is None:
                self._arm = Arm.from_config(self.config)
            return self._arm

    def say(self, line: str) -> None:
        print(f"{self.prefix}: {line}", flush=True)

    def step(self, output: str | Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        from snakemake.exceptions import WorkflowError

        try:
            record = make()
        except SetupError as exc:
            raise WorkflowError(str(exc)) from None
        written = write_marker(output, {**record, "run_id": record.get("run_id") if record.get("created") else None})
        state = "skipped" if record.get("skipped") else "created" if record.get("created") else "already there"
        self.say(f"{record.get('kind', Path(output).stem)} {record.get('name') or ''}: {state}")
        return written

    def guarded(self, action: Callable[[], Any]) -> Any:
        """Run a teardown-like action; SetupError becomes the rule's error."""
        from snakemake.exceptions import WorkflowError

        try:
            return action()
        except SetupError as exc:
            raise WorkflowError(str(exc)) from None
