"""`saje emulator start` in a child process, as a user runs it: started, killed, started again.

The chaos and restart tests need an emulator they can `kill -9` without killing the test, and
a second one on the same data dir afterwards; an in-process `Emulator` cannot be killed that way.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import TIME_SCALE

VENV_BIN = Path(sys.executable).parent
_EXPORT = re.compile(r"^\s*export (\w+)='(.*)'$")
READY_LINE = "Ctrl-C (or saje emulator stop)"


class EmulatorProcess:
    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.args = ["--data-dir", str(data_dir), "--time-scale", str(TIME_SCALE), *args]
        self.env = env if env is not None else {k: v for k, v in os.environ.items()
                                                 if not k.startswith(("SNAKEMAKE_SAJE_", "AZURE", "AZURITE"))}
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []
        self.client_env: dict[str, str] = {}

    def start(self, timeout: float = 120.0) -> dict[str, str]:
        """Start it and wait until it serves; the environment a client needs (its `export` lines)."""
        self.output, self.client_env = [], {}
        ready = threading.Event()
        self.proc = subprocess.Popen([str(VENV_BIN / "saje"), "emulator", "start", *self.args], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def drain(proc: subprocess.Popen) -> None:
            for line in proc.stdout:
                self.output.append(line.rstrip("\n"))
                match = _EXPORT.match(line)
                if match:
                    self.client_env[match[1]] = match[2]
                if READY_LINE in line:
                    ready.set()
            ready.set()

        threading.Thread(target=drain, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if time.monotonic() > deadline:
                raise AssertionError(f"the emulator did not start within {timeout}s:\n" + "\n".join(self.output))
        if self.proc.poll() is not None and READY_LINE not in "\n".join(self.output):
            raise AssertionError("the emulator exited at start:\n" + "\n".join(self.output))
        return dict(self.client_env)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """What a crash does: the emulator process dies at once; what it started keeps running."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM (as Ctrl-C) and wait; SIGKILL if it does not stop. Safe to call twice."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode
