"""Container tasks on emulated nodes: podman standing in for the Moby engine of Azure's node agent.

What Azure Batch does with a container pool and its tasks (REST reference: BatchContainerConfiguration,
BatchTaskContainerSettings, ContainerHostBatchBindMountEntry; "Run container applications on Azure
Batch", learn.microsoft.com) and how the emulator does it:

* The pool's ``containerConfiguration.containerImageNames`` are pulled when a node starts, before its
  start task. The emulator "pulls" from the machine's local image storage only (no registry is
  assumed reachable): an image that is not there makes the node ``unusable``, as a failed pre-fetch
  does on Azure. Put images there with ``podman pull`` or ``podman import``.
* A task with ``containerSettings`` runs in a container created from ``imageName`` (``:latest``
  when no tag is given) with ``docker create`` semantics, then started: every directory below
  AZ_BATCH_NODE_ROOT_DIR is mapped into the container at the same path (or only the
  ``containerHostBatchBindMounts`` sources, read-only where asked), every task variable is set in
  it, and it runs in AZ_BATCH_TASK_WORKING_DIR (``taskWorkingDirectory``, the default) or in the
  image's own WORKDIR (``containerImageDefault``). A non-empty command line replaces the image's
  ENTRYPOINT; an empty one runs the image's ENTRYPOINT/CMD. ``containerRunOptions`` go to the
  create command. Failures have the task failure codes of Batch: ContainerInvalidImage (image
  absent), ContainerInvalidSettings (the create refused the settings), ContainerMiscError.

This machine's kind needs, and so the engine always gets: the ``runc`` runtime (``crun`` fails on
hybrid cgroup v1/v2 hosts), explicit ``--ulimit nofile``/``nproc`` within the emulator's own hard
limits (the engine's defaults exceed them and the container fails to start), and the host's network (the
node's services, Azurite and the Batch endpoint all listen on loopback). Variable values reach the
engine through its environment (``--env NAME``), never its command line, so no secret shows in
``ps``. Every container carries a label naming its emulator, so stopping the emulator, or starting
it again on the same data directory, removes whatever containers it left.
"""
from __future__ import annotations

import hashlib
import os
import resource
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

ENGINE = "podman"
RUNTIME = "runc"
LABEL = "io.saje.emulator"
TIMEOUT_SECONDS = 120.0
# The task failure codes of Batch for container tasks (TaskFailureInformationCodes in the Batch
# SDKs; the image message as a real node reported it, Azure/Batch#49).
INVALID_IMAGE = ("ContainerInvalidImage", "One or more container images specified are invalid")
INVALID_SETTINGS = ("ContainerInvalidSettings", "At least one value of specified task container settings is invalid")
MISC_ERROR = ("ContainerMiscError", "There was an unknown error encountered while attempting to run a Task in a container")
INSTALL_HINT = "install podman and runc (Debian: apt-get install podman runc; scripts/setup.sh does it as root)"

# containerHostBatchBindMounts sources -> the node directory each one is (ContainerHostDataPath).
BIND_SOURCES = ("Shared", "Startup", "VfsMounts", "Task", "JobPrep", "Applications")


class ContainerError(Exception):
    """A container task that could not run; code and message as Batch reports them."""

    def __init__(self, failure: tuple[str, str], details: Mapping[str, str] | None = None):
        self.code, self.message = failure
        self.details = dict(details or {})
        super().__init__(f"{self.code}: {self.message} {self.details}")

    def detail_list(self) -> list[dict[str, str]]:
        return [{"name": k, "value": v} for k, v in self.details.items()]


def qualified(image: str) -> str:
    """The image reference with ':latest' when it names no tag or digest ("If no tag is provided as
    part of the Image name, the tag ':latest' is used as a default")."""
    last = image.rsplit("/", 1)[-1]
    return image if ("@" in image or ":" in last) else f"{image}:latest"


@dataclass(frozen=True)
class Mount:
    host: str
    container: str
    read_only: bool = False

    def option(self) -> str:
        return f"{self.host}:{self.container}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class ContainerSpec:
    """One container to create: everything but the variables' values (they travel in the engine's
    environment, named in ``variables``)."""

    name: str
    image: str
    command: tuple[str, ...]  # empty: the image's ENTRYPOINT and CMD
    variables: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    workdir: str | None = None
    run_options: tuple[str, ...] = ()
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


# Ceilings under which runc can set the limits in the container: podman's conmon, the container's
# parent, runs with at most 32768 processes (measured on Debian 12's podman 4.3: nproc 32769 and
# more fail with "error setting rlimit type 6: operation not permitted").
CEILINGS = {"nofile": 1 << 20, "nproc": 32768}


def limits() -> dict[str, int]:
    """What a container gets for open files and processes: the emulator's own hard limits, within
    the engine's ceilings."""
    out = {}
    for name, which in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        hard = resource.getrlimit(which)[1]
        out[name] = CEILINGS[name] if hard == resource.RLIM_INFINITY else min(int(hard), CEILINGS[name])
    return out


def create_argv(spec: ContainerSpec, *, engine: str = ENGINE, ulimits: Mapping[str, int] | None = None) -> list[str]:
    """The engine command that creates the container (started afterwards with ``start --attach``)."""
    argv = [engine, "create", "--name", spec.name, "--runtime", RUNTIME, "--network", "host"]
    for name, value in sorted((ulimits if ulimits is not None else limits()).items()):
        argv += ["--ulimit", f"{name}={value}:{value}"]
    for key, value in sorted(spec.labels.items()):
        argv += ["--label", f"{key}={value}"]
    for mount in spec.mounts:
        argv += ["--volume", mount.option()]
    for variable in spec.variables:
        argv += ["--env", variable]
    if spec.workdir:
        argv += ["--workdir", spec.workdir]
    if spec.user:
        argv += ["--user", spec.user]
    argv += list(spec.run_options)
    if spec.command:
        argv += ["--entrypoint", spec.command[0], qualified(spec.image), *spec.command[1:]]
    else:
        argv.append(qualified(spec.image))
    return argv


def bind_mounts(entries: Sequence[Mapping[str, object]] | None, directories: Mapping[str, Path | None],
                root: Path) -> list[Mount]:
    """The node directories a task's container sees: AZ_BATCH_NODE_ROOT_DIR whole when
    containerHostBatchBindMounts is absent, else each listed source at its own path ("It won't mount
    any data paths into container if this array is set as empty")."""
    if entries is None:
        return [Mount(str(root), str(root))]
    mounts = []
    for entry in entries:
        path = directories.get(str(entry.get("source") or ""))
        if path is not None:
            mounts.append(Mount(str(path), str(path), bool(entry.get("isReadOnly"))))
    return mounts


def command_argv(command_line: str) -> tuple[str, ...]:
    return tuple(shlex.split(command_line)) if command_line.strip() else ()


class Engine:
    """The container engine on the emulator's machine, labelled per emulator instance."""

    def __init__(self, instance: str, executable: str | None = None):
        self.instance = instance
        self.executable = executable or shutil.which(ENGINE)
        self.labels = {LABEL: instance}

    @staticmethod
    def instance_for(data_dir: Path) -> str:
        return hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]

    @property
    def available(self) -> bool:
        return self.executable is not None

    def container_name(self, key: str) -> str:
        return f"saje-{self.instance}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def _run(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = TIMEOUT_SECONDS) -> subprocess.CompletedProcess:
        if not self.executable:
            raise ContainerError(MISC_ERROR, {"Message": f"no container engine on this machine: {INSTALL_HINT}"})
        return subprocess.run([self.executable, *args], env=dict(env) if env is not None else None, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout)

    def missing_images(self, images: Sequence[str]) -> list[str]:
        """The images not in local storage (the emulator's pull); raises ContainerError without an engine."""
        return [image for image in images if self._run("image", "exists", qualified(image)).returncode != 0]

    def create(self, spec: ContainerSpec, env: Mapping[str, str]) -> None:
        """Create the container; ContainerError with Batch's code when the image or settings are refused."""
        if self.missing_images([spec.image]):
            raise ContainerError(INVALID_IMAGE, {"ContainerImage": spec.image,
                                                 "Message": f"no such image in the emulator's local storage: {qualified(spec.image)}"})
        spec = ContainerSpec(**{**spec.__dict__, "labels": {**spec.labels, **self.labels}})
        argv = create_argv(spec, engine=self.executable or ENGINE)
        try:
            done = subprocess.run(argv, env=dict(env), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, timeout=TIMEOUT_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ContainerError(MISC_ERROR, {"Message": str(exc)}) from None
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["the container engine refused the settings"]
            raise ContainerError(INVALID_SETTINGS, {"ContainerSettings": " ".join(spec.run_options), "Message": message[0]})

    def start_argv(self, name: str) -> list[str]:
        """Runs the created container, attached: its output is the process's, its exit code too."""
        return [self.executable or ENGINE, "start", "--attach", name]

    def remove(self, *names: str) -> None:
        """Remove containers, running or not (a killed task's, a finished one's)."""
        if names and self.available:
            try:
                self._run("rm", "--force", "--ignore", *names)
            except (OSError, subprocess.TimeoutExpired):
                pass

    def remove_all(self) -> None:
        """Every container this emulator instance created (shutdown; a restart after a crash)."""
        if not self.available:
            return
        try:
            listed = self._run("ps", "--all", "--quiet", "--filter", f"label={LABEL}={self.instance}")
        except (OSError, subprocess.TimeoutExpired):
            return
        self.remove(*listed.stdout.split())


def passthrough_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The engine's own environment for a create: the host's (the engine needs PATH, XDG dirs) plus
    the task's variables, which ``--env NAME`` then copies into the container."""
    return {**os.environ, **env}
