"""What the setup workflows' Snakefiles share: one ARM connection per run, and a step runner that
turns a step's result into a marker and a SetupError into the rule's error (its message only)."""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from .clients import Arm
from .markers import SetupError, write_marker

__all__ = ["Runner", "RUN_ID_VARIABLE"]

RUN_ID_VARIABLE = "SAJE_SETUP_RUN_ID"


class Runner:
    def __init__(self, config: Mapping[str, Any], prefix: str):
        self.config = config
        self.prefix = prefix
        # Snakemake runs each job in a child process that parses the Snakefile again: the run id comes
        # from the environment the main process set, so every job of one run shares it.
        self.run_id = str(config.get("run_id") or os.environ.setdefault(RUN_ID_VARIABLE, uuid.uuid4().hex[:12]))
        self._arm: Arm | None = None
        self._lock = threading.Lock()

    def after_error(self, action: Callable[[], Any]) -> None:
        """An onerror clean-up: it runs in Snakemake's main process (the jobs ran in children), and
        whatever goes wrong in it is reported, not raised over the original error."""
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - the original failure is what the user must see
            self.say(f"clean-up after the failure incomplete: {exc}")

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
