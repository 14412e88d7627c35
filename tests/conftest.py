"""Shared fixtures: one emulator per test session (2-core CI), each test with its own ids.

Tests reach the emulator only through the real SDKs over HTTP; `emulator` itself is used only
for what a cloud test would do out of band (preempting a Spot node, turning faults on).
"""
from __future__ import annotations

import http.server
import itertools
import os
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from snakemake_executor_saje.emulator import Emulator

SESSION_VARIABLE = "SAJE_TEST_SESSION"


def pytest_configure(config: pytest.Config) -> None:
    """Mark what the suite starts, two ways: an environment variable every process it starts
    inherits (subprocesses get copies of os.environ), and, on Linux, this pytest as the reaper of
    orphans, so that a process whose parent died (an MPI daemon, what a killed emulator or
    Snakemake left) becomes this process's child instead of init's. The emulator's node processes
    get a fresh environment (as on Azure) but descend from the suite."""
    os.environ[SESSION_VARIABLE] = f"{os.getpid()}-{uuid.uuid4().hex}"
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No process the suite started may outlive it: name any that is left, end it, fail the run."""
    from snakemake_executor_saje.emulator import processes

    left = sorted(set(processes.descendants(os.getpid()))
                  | set(processes.with_variable(SESSION_VARIABLE, os.environ.get(SESSION_VARIABLE, "-"))))
    if not left:
        return
    names = [f"pid {pid}: {processes.command_line(pid)[:200]}" for pid in left]
    processes.end(left)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = ("processes started by the test suite were still running at its end (now ended):\n  "
               + "\n  ".join(names))
    if reporter is not None:
        reporter.write_sep("=", "processes left behind", red=True)
        reporter.write_line(message)
    else:
        print(message, file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Tests keep every Azure value (a 5-minute autoscale interval, a 2-minute node boot, 15-minute resize
# timeouts) and run the emulator's clock 600 times faster: 5 minutes pass in 0.5 s, a node boots in 0.2 s.
TIME_SCALE = 600.0
FAST = {"time_scale": TIME_SCALE}

_serial = itertools.count(1)
_run = uuid.uuid4().hex[:6]


def unique_id(prefix: str) -> str:
    """An id no other test in this session uses (Batch ids: letters, digits, '-', '_', <= 64)."""
    return f"{prefix}-{_run}-{next(_serial)}"[:64]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; return that, or fail the test at `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or getattr(predicate, '__name__', 'condition')}"
                        f" (last value {last!r})")
        time.sleep(interval)


@contextmanager
def http_server(handler: Callable[..., Any]) -> Iterator[str]:
    """A plain HTTP server on a free loopback port, answering with `handler`; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def emulator_data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="saje-emu-tests-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def emulator(emulator_data_dir: Path) -> Iterator[Emulator]:
    """One started emulator for the whole session; stopped at the end, failures or not."""
    emu = Emulator(emulator_data_dir / "batch", **FAST)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(autouse=True)
def _reset_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """Injected faults never leak from one test into the next."""
    yield
    for name in ("emulator", "emulator_with_storage"):
        if name in request.fixturenames:
            emu = request.getfixturevalue(name)
            if emu.state is not None:
                emu.faults.reset()


@pytest.fixture
def batch_client(emulator: Emulator):
    """azure-batch 15.x sync client bound to the shared emulator with its SharedKey."""
    client = emulator.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def azurite(emulator_data_dir: Path):
    """A private Azurite (blob only) for the session."""
    from snakemake_executor_saje.emulator.azurite import Azurite

    with Azurite(location=emulator_data_dir / "azurite") as blob:
        yield blob


@pytest.fixture(scope="session")
def emulator_with_storage(emulator_data_dir: Path) -> Iterator[Emulator]:
    """An emulator that started its own Azurite and linked it as the account's auto-storage."""
    emu = Emulator(emulator_data_dir / "batch-storage", with_azurite=True, **FAST)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()



# ----------------------------------------------------------------------------- SDK helpers
VM_SIZE = "STANDARD_D2S_V3"
IMAGE = {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404", "version": "latest"}
NODE_AGENT = "batch.node.ubuntu 24.04"


def pool_options(pool_id: str, *, dedicated: int = 1, low_priority: int = 0, **extra: Any):
    """A BatchPoolCreateOptions for a small Ubuntu HPC pool on a catalogue size."""
    from azure.batch import models

    return models.BatchPoolCreateOptions(
        id=pool_id, vm_size=VM_SIZE,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(**IMAGE), node_agent_sku_id=NODE_AGENT),
        target_dedicated_nodes=None if extra.get("enable_auto_scale") else dedicated,
        target_low_priority_nodes=None if extra.get("enable_auto_scale") else low_priority,
        **extra,
    )


def idle_nodes(client, pool_id: str, count: int, timeout: float = 30.0) -> list:
    """Wait until the pool has `count` idle nodes; return them."""
    def ready():
        nodes = list(client.list_nodes(pool_id))
        idle = [n for n in nodes if n.state == "idle"]
        return idle if len(idle) >= count else None

    return wait_for(ready, timeout, what=f"{count} idle node(s) in {pool_id}")


def make_pool(client, pool_id: str | None = None, *, dedicated: int = 1, wait: bool = True, **extra: Any) -> str:
    pool_id = pool_id or unique_id("pool")
    client.create_pool(pool_options(pool_id, dedicated=dedicated, **extra))
    if wait and dedicated:
        idle_nodes(client, pool_id, dedicated)
    return pool_id


def make_job(client, pool_id: str, job_id: str | None = None, **extra: Any) -> str:
    from azure.batch import models

    job_id = job_id or unique_id("job")
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), **extra))
    return job_id


def completed(client, job_id: str, task_id: str, timeout: float = 30.0):
    """Wait for a task to complete; return the task."""
    def done():
        task = client.get_task(job_id, task_id)
        return task if task.state == "completed" else None

    return wait_for(done, timeout, what=f"task {job_id}/{task_id} to complete")


def read_file(client, job_id: str, task_id: str, path: str = "stdout.txt") -> str:
    return b"".join(client.download_task_file(job_id, task_id, path)).decode()


@pytest.fixture
def pool(batch_client) -> Iterator[str]:
    """A fresh one-node pool (1 slot), deleted afterwards."""
    pool_id = make_pool(batch_client)
    yield pool_id
    batch_client.begin_delete_pool(pool_id)


@pytest.fixture(scope="session")
def shared_pool(emulator: Emulator) -> str:
    """A two-node pool with four slots per node, shared by tests that just need somewhere to run."""
    client = emulator.client()
    pool_id = make_pool(client, unique_id("shared"), dedicated=2, task_slots_per_node=4)
    client.close()
    return pool_id


@pytest.fixture
def job(batch_client, shared_pool) -> str:
    return make_job(batch_client, shared_pool)
