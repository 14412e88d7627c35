"""The node agent: runs start tasks and tasks as local processes inside each node's directory.

A task's life on a node, as on Azure: resource files are downloaded into its working dir
('preparing'), the command line runs without a shell ('running') with the AZ_BATCH_* environment,
stdout.txt/stderr.txt land in the task dir, output files are uploaded, then the agent reports the
exit code. A multi-instance task downloads commonResourceFiles and runs the coordination command on
every node, then the application command on the primary only.

Every process of a node carries the node's AZ_BATCH_NODE_ROOT_DIR, and that is how the agent ends
them all (`processes.end_under`): when a node leaves its pool (as its VM would be deallocated) and
when the emulator stops, also the ones that left the task's process group (MPI daemons started
over the ssh shim, anything that called setsid). Processes run with umask 077, their stdout.txt
and stderr.txt are 0600, and a node's root is 0700: node files are private to the emulator's user.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from . import blobio, containers, imds, mounts, processes, ssh_shim
from .auth import TokenIssuer
from .datadir import PRIVATE_UMASK, make_private_dir
from .layout import NodeLayout
from .model import Job, Node, Task
from .state import BatchState
from .timeutil import parse_duration

log = logging.getLogger(__name__)

# Variables a node inherits from the machine the emulator runs on: the "image" of every node.
HOST_VARIABLES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "TERM", "SYSTEMROOT")
KILL_GRACE_SECONDS = 3.0


class PackageInstallError(Exception):
    """An application package a task or its pool references could not be installed."""


def package_variable(application: str, version: str | None = None) -> str:
    """AZ_BATCH_APP_PACKAGE_<id>[_<version>] as Linux nodes spell it: periods, hyphens and number
    signs flattened to underscores, the application id's case preserved ("Execute the installed
    applications", learn.microsoft.com, batch-application-packages)."""
    flat = lambda text: re.sub(r"[.\-#]", "_", text)  # noqa: E731
    return "AZ_BATCH_APP_PACKAGE_" + flat(application) + (f"_{flat(version)}" if version else "")


def unpack_zip(archive: Path, target: Path) -> None:
    """Extract a zip, keeping the Unix modes it records (executables stay executable)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, target))
            mode = (info.external_attr >> 16) & 0o7777
            if mode and not info.is_dir():
                path.chmod(mode)


class AgentStopped(Exception):
    """The emulator is stopping: no new process may start."""


@dataclass
class Failure:
    category: str
    code: str
    message: str
    details: list[dict[str, str]] | None = None

    def as_tuple(self) -> tuple:
        return (self.category, self.code, self.message, *([self.details] if self.details else []))

    def as_info(self) -> dict[str, Any]:
        """The REST failureInfo object."""
        info: dict[str, Any] = {"category": self.category, "code": self.code, "message": self.message}
        if self.details:
            info["details"] = self.details
        return info

    @classmethod
    def of_container(cls, exc: containers.ContainerError) -> "Failure":
        return cls("usererror", exc.code, exc.message, exc.detail_list())


def user_identity(identity: dict[str, Any] | None, *, start_task: bool = False) -> tuple[str, str]:
    """(AZ_BATCH_TASK_USER, AZ_BATCH_TASK_USER_IDENTITY) for a task's userIdentity."""
    identity = identity or {}
    if identity.get("username"):
        return identity["username"], identity["username"]
    auto = identity.get("autoUser") or {}
    scope = (auto.get("scope") or ("task" if start_task else "pool")).lower()
    admin = (auto.get("elevationLevel") or "nonadmin").lower() == "admin"
    role = f"{'Pool' if scope == 'pool' else 'Task'}{'Admin' if admin else 'NonAdmin'}"
    user = "_azbatch" if scope == "pool" else ("_azbatchtask_start" if start_task else "_azbatchtask_1")
    return user, role


class NodeAgent:
    def __init__(self, state: BatchState, issuer: TokenIssuer | None = None):
        self.state = state
        self.issuer = issuer or TokenIssuer()  # signs the tokens of the nodes' identity endpoints
        self._endpoints: dict[str, imds.NodeEndpoint] = {}  # node address -> its identity endpoint
        self.config = state.config
        self.data_dir = Path(self.config.data_dir)
        self.bin_dir = self.data_dir / "sys" / "bin"
        make_private_dir(self.bin_dir)
        ssh_shim.install_ssh_shim(self.bin_dir, self.data_dir, python=sys.executable)
        self._procs: dict[str, list[subprocess.Popen]] = {}
        self._containers: dict[str, list[str]] = {}  # process key -> names of its containers
        self.engine = containers.Engine(containers.Engine.instance_for(self.data_dir))
        self.engine.remove_all()  # what an earlier emulator on this data dir left (a crash)
        storage, trust = self.config.auto_storage_connection_string, self.config.ca_bundle
        self.shares = mounts.FileShares(self.data_dir, blob_service=(lambda: BlobServiceClient.from_connection_string(
            storage, **({"connection_verify": str(trust)} if trust else {}))) if storage else None)
        self._install_lock = threading.Lock()
        self._killed: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopped = False
        self._prep_gates: dict[tuple[str, str], threading.Lock] = {}
        self.hostnames = NodeHostnames()
        state.on_kill = self.kill
        state.on_job_release = self.run_job_release

    # ----------------------------------------------------------------- nodes
    def register_node(self, node: Node) -> None:
        NodeLayout(Path(node.root)).create()
        if self._identities(node) and node.address not in self._endpoints:
            self._endpoints[node.address] = imds.NodeEndpoint(node.address, self.issuer, lambda: self._identities(node))
        record = {"node_id": node.id, "pool_id": node.pool_id, "root": node.root, "hostname": self.hostname(node)}
        image_env = self.image_environment(node)
        if image_env:  # ssh sessions into the node see the image too (PATH comes from the caller)
            record["env"] = {k: v for k, v in image_env.items() if k != "PATH"}
        ssh_shim.register_host(self.data_dir, node.address, record)

    @staticmethod
    def hostname(node: Node) -> str:
        """The node's hostname is its address. MPI launchers tell which host of AZ_BATCH_HOST_LIST
        is their own by its name or by their interfaces' addresses: on Azure the node's address is
        an address of its own NIC; emulated nodes share this machine's interfaces, so only the name
        can say it. With another name, Open MPI's prterun took its own node for a remote one,
        started a second daemon there over ssh, and after an MPI_Abort could wait for ever."""
        return node.address

    def forget_node(self, node: Node) -> None:
        """The node left its pool: its processes end (as its VM goes) and its files go.
        In the background: the caller holds the state lock, and ending takes a grace period."""
        endpoint = self._endpoints.pop(node.address, None)
        if endpoint is not None:
            endpoint.close()
        ssh_shim.unregister_host(self.data_dir, node.address)

        def release() -> None:
            processes.end_under(node.root, KILL_GRACE_SECONDS)
            self.hostnames.forget(self.hostname(node))
            shutil.rmtree(node.root, ignore_errors=True)

        threading.Thread(target=release, name=f"forget-{node.id[:16]}", daemon=True).start()

    def stop_all(self) -> None:
        """End every process of every node (emulator shutdown): the task process groups the agent
        tracks first (their launchers stop their ssh daemons on SIGTERM), then whatever else
        still carries a node's environment."""
        with self._lock:
            self._stopped = True
            keys = list(self._procs)
        for key in keys:
            self._kill_key(key, "shutdown")
        self.engine.remove_all()
        processes.end_under(self.data_dir / "nodes", KILL_GRACE_SECONDS)
        for endpoint in list(self._endpoints.values()):
            endpoint.close()
        self._endpoints.clear()
        self.hostnames.close()

    def _thread(self, target, *args, name: str) -> threading.Thread:
        """A daemon thread for node work that ends quietly when the emulator stops under it."""
        def run() -> None:
            try:
                target(*args)
            except AgentStopped:
                pass

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    # ----------------------------------------------------------------- environment
    def image_root(self, node: Node) -> Path | None:
        """The directory of the node's gallery image (ARM side), or None for marketplace images."""
        resolve = self.state.gallery_image_root
        pool = self.state.pools.get(node.pool_id)
        if resolve is None or pool is None:
            return None
        image = ((pool.rest.get("virtualMachineConfiguration") or {}).get("imageReference") or {})
        image_id = image.get("virtualMachineImageId")
        return resolve(image_id) if image_id else None

    def image_environment(self, node: Node) -> dict[str, str]:
        """What a node made from a gallery image sees of it: what its provisioning scripts installed
        under ${SAJE_VM_ROOT}/usr/local comes first on PATH and LD_LIBRARY_PATH."""
        root = self.image_root(node)
        if root is None:
            return {}
        library = [str(root / "usr/local/lib"), os.environ.get("LD_LIBRARY_PATH", "")]
        return {"PATH": os.pathsep.join([str(root / "usr/local/bin"), str(root / "usr/bin")]),
                "LD_LIBRARY_PATH": os.pathsep.join(p for p in library if p),
                "SAJE_IMAGE_ROOT": str(root), "SAJE_VM_ROOT": str(root)}

    def base_environment(self, node: Node) -> dict[str, str]:
        env = {k: os.environ[k] for k in HOST_VARIABLES if k in os.environ}
        # The node "image" carries the emulator's own Python (snakemake, MPI wheels) and ssh;
        # a gallery image's own files come first.
        image = self.image_environment(node)
        path = [str(self.bin_dir), *([image.pop("PATH")] if image else []), str(Path(sys.executable).parent),
                env.get("PATH", os.defpath)]
        env["PATH"] = os.pathsep.join(path)
        env.update(image)
        env.update(ssh_shim.emulated_node_mpi_environment())
        env.update(ssh_shim.node_environment(node.address, {
            "node_id": node.id, "pool_id": node.pool_id, "root": node.root, "hostname": self.hostname(node),
        }))
        layout = node.layout
        env.update({
            "AZ_BATCH_ACCOUNT_NAME": self.config.account_name,
            "AZ_BATCH_ACCOUNT_URL": self.state.account_url + "/",
            "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.dedicated else "false",
            "AZ_BATCH_NODE_MOUNTS_DIR": str(layout.mounts),
            "AZ_BATCH_CERTIFICATES_DIR": str(layout.startup / "certs"),
        })
        env.update(self.node_services(node))
        return env

    def node_services(self, node: Node) -> dict[str, str]:
        """What a node's processes (its containers too) need of the emulated Azure around them: the
        node's identity endpoint (IMDS, on the node's own address: see imds.py) and, with HTTPS, the
        certificates that make the emulated endpoints trusted as Azure's are on a real node."""
        env = {}
        endpoint = self._endpoints.get(node.address)
        if endpoint is not None:
            env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = endpoint.authority
        if self.config.ca_bundle:
            env.update(dict.fromkeys(("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"), str(self.config.ca_bundle)))
        return env

    def task_environment(self, node: Node, job: Job | None, task_rest: dict[str, Any], task_dir: Path,
                         *, start_task: bool = False) -> dict[str, str]:
        env = self.base_environment(node)
        user, role = user_identity(task_rest.get("userIdentity"), start_task=start_task)
        wd = task_dir / "wd"
        env.update({
            "AZ_BATCH_TASK_DIR": str(task_dir), "AZ_BATCH_TASK_WORKING_DIR": str(wd),
            "AZ_BATCH_TASK_USER": user, "AZ_BATCH_TASK_USER_IDENTITY": role,
            "HOME": str(wd), "PWD": str(wd), "USER": user,
        })
        env["PATH"] = os.pathsep.join([env["PATH"], env["AZ_BATCH_NODE_SHARED_DIR"], str(wd)])
        if job is not None:
            env["AZ_BATCH_JOB_ID"] = job.id
            if not start_task:
                env["AZ_BATCH_TASK_ID"] = task_rest["id"]
            if job.rest.get("jobPreparationTask"):
                prep_dir = node.layout.task_dir(job.id, job.rest["jobPreparationTask"]["id"])
                env["AZ_BATCH_JOB_PREP_DIR"] = str(prep_dir)
                env["AZ_BATCH_JOB_PREP_WORKING_DIR"] = str(prep_dir / "wd")
            for setting in job.rest.get("commonEnvironmentSettings") or []:
                env[setting["name"]] = setting.get("value") or ""
        for setting in task_rest.get("environmentSettings") or []:
            env[setting["name"]] = setting.get("value") or ""
        return env

    # ----------------------------------------------------------------- application packages
    def package_environment(self, node: Node, task_references: list[dict[str, Any]] | None = None) -> dict[str, str]:
        """Install the pool's and the task's application packages on the node (once each) and
        return their variables: AZ_BATCH_APP_PACKAGE_<id>_<version>, and AZ_BATCH_APP_PACKAGE_<id>
        for a reference without a version (the default version). Raises PackageInstallError."""
        with self.state.lock:
            pool = self.state.pools.get(node.pool_id)
            references = list((pool.rest.get("applicationPackageReferences") or []) if pool else [])
        references += list(task_references or [])
        env: dict[str, str] = {}
        for ref in references:
            if self.state.application_package is None:
                raise PackageInstallError(f"application {ref.get('applicationId')!r}: this account has no application packages")
            try:
                package = self.state.application_package(str(ref.get("applicationId") or ""), ref.get("version"))
            except Exception as exc:  # noqa: BLE001 - arm.applications.PackageError and the like
                raise PackageInstallError(str(exc)) from None
            directory = self._install_package(node, package)
            name = package_variable(package.application, package.version)
            env[name] = str(directory)
            if not ref.get("version"):
                env[package_variable(package.application)] = str(directory)
        return env

    def _install_package(self, node: Node, package: Any) -> Path:
        """Download and unpack a package into the node's applications directory, named as Azure
        names it there: <id><version><activation time, to the minute> (e.g. testapp1.02019-08-26-01-57)."""
        stamp = package.activated[:16].replace("T", "-").replace(":", "-")
        directory = node.layout.applications / f"{package.application}{package.version}{stamp}"
        with self._install_lock:
            if directory.is_dir():
                return directory
            staging = directory.with_name(f".{directory.name}.partial")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                blobio.download_resource_files([{"httpUrl": package.url, "filePath": "package.zip"}], staging,
                                               auto_storage=self.auto_storage(node))
                unpack_zip(staging / "package.zip", staging)
                (staging / "package.zip").unlink()
            except (blobio.ResourceFileError, OSError, zipfile.BadZipFile) as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise PackageInstallError(f"application {package.application} version {package.version} could not be"
                                          f" installed: {getattr(exc, 'message', None) or exc}") from None
            staging.rename(directory)
        return directory

    # ----------------------------------------------------------------- processes
    def _spawn(self, key: str, command_line: str, env: dict[str, str], cwd: Path, out_dir: Path,
               stem: str = "", container: containers.ContainerSpec | None = None) -> subprocess.Popen:
        """Start one command line without a shell, as Batch does on Linux, on the node or in
        `container` (created here, then started attached: its output and exit code are the
        process's). Raises FileNotFoundError or containers.ContainerError."""
        if container is not None:
            return self._spawn_container(key, container, env, out_dir, stem)
        argv = shlex.split(command_line)
        if not argv:
            raise FileNotFoundError("empty command line")
        program = argv[0]
        if os.sep not in program:
            found = shutil.which(program, path=env.get("PATH"))
            if found is None:
                raise FileNotFoundError(program)
            argv[0] = found
        elif not os.path.isabs(program):
            argv[0] = str(cwd / program)
        make_private_dir(out_dir)
        make_private_dir(cwd)
        if self._stopped:
            raise AgentStopped(key)
        argv = self.hostnames.enter(env.get("HOSTNAME"), argv)
        with open(out_dir / f"{stem}stdout.txt", "ab", opener=_private) as out, \
                open(out_dir / f"{stem}stderr.txt", "ab", opener=_private) as err:
            # Every process of an emulated node sees the node's hostname (MPI tells nodes apart by it).
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True, umask=PRIVATE_UMASK)
        return self._track(key, proc)

    def _track(self, key: str, proc: subprocess.Popen) -> subprocess.Popen:
        """Count a started process as the key's; one that started while the emulator began
        stopping is ended at once (it must not outlive the emulator)."""
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._procs.setdefault(key, []).append(proc)
        if stopped:
            _terminate_groups([proc])
            raise AgentStopped(key)
        return proc

    def _spawn_container(self, key: str, spec: containers.ContainerSpec, env: dict[str, str], out_dir: Path,
                         stem: str) -> subprocess.Popen:
        engine_env = containers.passthrough_environment(env)
        make_private_dir(out_dir)
        if self._stopped:
            raise AgentStopped(key)
        with self._lock:
            self._containers.setdefault(key, []).append(spec.name)
        self.engine.create(spec, engine_env)
        with open(out_dir / f"{stem}stdout.txt", "ab", opener=_private) as out, \
                open(out_dir / f"{stem}stderr.txt", "ab", opener=_private) as err:
            proc = subprocess.Popen(self.engine.start_argv(spec.name), cwd=out_dir, env=engine_env, stdout=out,
                                    stderr=err, stdin=subprocess.DEVNULL, start_new_session=True, umask=PRIVATE_UMASK)
        return self._track(key, proc)

    def _container(self, node: Node, job: Job | None, rest: dict[str, Any], env: dict[str, str], task_dir: Path, *,
                   key: str, command_line: str | None = None,
                   needs_settings: bool = True) -> containers.ContainerSpec | None:
        """The container a task's command line runs in, or None when it runs on the node itself.

        A task's containerSettings and its pool's containerConfiguration go together ("If the Pool
        that will run this Task has containerConfiguration set, this must be set as well. If the
        Pool ... doesn't have containerConfiguration set, this must not be set"); a task that breaks
        the rule fails with ContainerInvalidSettings (the code is assumed). Start, preparation and
        release tasks may run either way (``needs_settings=False``)."""
        settings = rest.get("containerSettings")
        with self.state.lock:
            pool = self.state.pools.get(node.pool_id)
            configured = bool(pool and (pool.rest.get("virtualMachineConfiguration") or {}).get("containerConfiguration"))
        if not settings:
            if configured and needs_settings:
                raise containers.ContainerError(containers.INVALID_SETTINGS, {
                    "Message": f"pool {node.pool_id} has a containerConfiguration: its tasks need containerSettings"})
            return None
        if not configured:
            raise containers.ContainerError(containers.INVALID_SETTINGS, {
                "Message": f"pool {node.pool_id} has no containerConfiguration: its tasks cannot have containerSettings"})
        layout = node.layout
        prep = env.get("AZ_BATCH_JOB_PREP_DIR")
        directories = {"Shared": layout.shared, "Startup": layout.startup, "VfsMounts": layout.mounts,
                       "Task": task_dir, "JobPrep": Path(prep) if prep else None, "Applications": layout.applications}
        binds = settings.get("containerHostBatchBindMounts")
        volumes = containers.bind_mounts(binds, directories, layout.root)
        if binds is None or any(str(b.get("source")) == "VfsMounts" for b in binds):
            # The node's mounts are links to the emulator's shares: the shares too, at their own paths.
            with self.state.lock:
                entries = mounts.entries_of(getattr(self.state.pools.get(node.pool_id), "rest", None))
            volumes += [containers.Mount(str(share), str(share)) for share in self.shares.shares_of(entries)]
        declared = [*((job.rest.get("commonEnvironmentSettings") or []) if job is not None else []),
                    *(rest.get("environmentSettings") or [])]
        services = self.node_services(node)
        variables = sorted({k for k in env if k.startswith("AZ_BATCH_")} | {d["name"] for d in declared} | set(services))
        if self.config.ca_bundle:
            volumes.append(containers.Mount(str(self.config.ca_bundle), str(self.config.ca_bundle), True))
        workdir = env["AZ_BATCH_TASK_WORKING_DIR"] if (settings.get("workingDirectory") or "taskWorkingDirectory").lower() \
            == "taskworkingdirectory" else None
        return containers.ContainerSpec(
            name=self.engine.container_name(f"{key}/{time.monotonic_ns()}"),
            image=str(settings["imageName"]),
            command=containers.command_argv(command_line if command_line is not None else rest.get("commandLine") or ""),
            variables=tuple(variables), mounts=tuple(volumes), workdir=workdir,
            run_options=tuple(shlex.split(settings.get("containerRunOptions") or "")), user="0:0",
        )

    def _wait(self, key: str, proc: subprocess.Popen, deadline: float | None) -> int | None:
        """Exit code, or None when the wall clock ran out (the process group is then killed).

        A blocking wait: Popen.wait(timeout) polls every 50 ms, which across a node's tasks costs
        CPU for nothing; a timer kills the process group at the deadline instead."""
        if deadline is None:
            return proc.wait()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            self._kill_key(key, "wallclock")

        timer = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
        timer.daemon = True
        timer.start()
        code = proc.wait()
        timer.cancel()
        if not expired.is_set():
            return code
        with self._lock:  # our own kill: the caller still reports the outcome
            self._killed.pop(key, None)
        return None

    def _forget(self, key: str) -> str | None:
        with self._lock:
            self._procs.pop(key, None)
            names = self._containers.pop(key, [])
            killed = self._killed.pop(key, None)
        self.engine.remove(*names)
        return killed

    def kill(self, task: Task, reason: str) -> None:
        self._kill_key(task.key, reason)

    def _kill_key(self, key: str, reason: str) -> None:
        with self._lock:
            procs = list(self._procs.get(key, []))
            names = list(self._containers.get(key, []))
            if procs:
                self._killed[key] = reason
        _terminate_groups(procs)
        self.engine.remove(*names)  # the attached client is gone; its container may run on

    # ----------------------------------------------------------------- node preparation, start task
    def prepare_node(self, node: Node) -> None:
        """A booted node: pull its pool's container images (if any), then run its start task."""
        self._thread(self._prepare_thread, node, name=f"start-{node.id[:16]}")

    def _prepare_thread(self, node: Node) -> None:
        with self.state.lock:
            pool = self.state.pools.get(node.pool_id)
            config = dict((pool.rest.get("virtualMachineConfiguration") or {}).get("containerConfiguration") or {}) \
                if pool else {}
            file_systems = mounts.entries_of(pool.rest if pool else None)
        if config or file_systems:
            errors = []
            try:
                self.shares.mount_all(node.layout.mounts, file_systems)
            except mounts.MountError as exc:
                errors.append(exc.node_error())
            if config and not errors:
                errors = self._pull_images(list(config.get("containerImageNames") or []))
            with self.state.lock:
                if node.state != "starting" or node.removing:
                    return
                if errors:
                    self.state.node_unusable(node, errors)
                    return
                run_start = self.state.node_booted(node, pool)
                self.state.save_node(node)
                self.state.notify()
            if not run_start:
                return
        self._start_task_thread(node)

    def _pull_images(self, images: list[str]) -> list[dict[str, Any]]:
        """The pool's images from the machine's local storage (the emulator's registry): a BatchNodeError
        per missing image, as a failed pre-fetch leaves the node unusable on Azure (the code and
        message are the task failure's for an invalid image: the node error's are assumed)."""
        try:
            missing = self.engine.missing_images(images)
            reason = "not in the emulator's local image storage (podman pull or podman import it first)"
        except containers.ContainerError as exc:
            missing, reason = images or ["(none)"], exc.details.get("Message", exc.message)
        code, message = containers.INVALID_IMAGE
        return [{"code": code, "message": message,
                 "errorDetails": [{"name": "ContainerImage", "value": image}, {"name": "Message", "value": reason}]}
                for image in missing]

    def _start_task_thread(self, node: Node) -> None:
        with self.state.lock:
            pool = self.state.pools.get(node.pool_id)
            start = dict(pool.rest.get("startTask") or {}) if pool else {}
        if not start:
            return
        layout = node.layout
        key = f"start/{node.id}"
        retries = int((start.get("maxTaskRetryCount") or 0))
        attempt = 0
        while True:
            env = self.task_environment(node, None, start, layout.startup, start_task=True)
            failure, exit_code = None, None
            try:
                blobio.download_resource_files(start.get("resourceFiles") or [], layout.startup / "wd",
                                               auto_storage=self.auto_storage(node))
                env.update(self.package_environment(node))
                if self.state.faults.take_start_task_failure():
                    exit_code = 1
                    (layout.startup / "stderr.txt").write_text("start task failed (injected fault)\n")
                else:
                    container = self._container(node, None, start, env, layout.startup, key=key, needs_settings=False)
                    proc = self._spawn(key, start["commandLine"], env, layout.startup / "wd", layout.startup,
                                       container=container)
                    exit_code = self._wait(key, proc, None)
            except blobio.ResourceFileError as exc:
                failure = Failure(exc.category, exc.code, exc.message)
            except PackageInstallError as exc:
                failure = Failure("usererror", "ApplicationPackageError", str(exc))
            except containers.ContainerError as exc:
                failure = Failure.of_container(exc)
            except FileNotFoundError:
                failure = Failure("usererror", "CommandProgramNotFound", "The specified command program is not found")
            if self._forget(key):
                return
            if failure is None and exit_code == 0:
                break
            if attempt >= retries and retries != -1:
                break
            attempt += 1
        with self.state.lock:
            info = node.rest.setdefault("startTaskInfo", {})
            info.update(state="completed", endTime=self.state.clock.iso_now(), retryCount=attempt)
            if exit_code is not None:
                info["exitCode"] = exit_code
            ok = failure is None and exit_code == 0
            info["result"] = "success" if ok else "failure"
            if not ok:
                f = failure or Failure("usererror", "FailureExitCode", "The task exited with an exit code representing a failure")
                info["failureInfo"] = f.as_info()
            if node.state == "waitingforstarttask":
                self.state.set_state(node.rest, "idle" if ok else "starttaskfailed", model="BatchNode")
            self.state.save_node(node)
            self.state.notify()

    def auto_storage(self, node: Node) -> "blobio.AutoStorage":
        """The node's storage access: the account's linked storage, the node's pool identities (for
        identityReference), the certificates the node trusts."""
        return blobio.AutoStorage(connection_string=self.config.auto_storage_connection_string,
                                  identity=lambda resource_id: imds.NodeCredential(
                                      self.issuer, self._identities(node), resource_id),
                                  ca_bundle=str(self.config.ca_bundle) if self.config.ca_bundle else None)

    def _identities(self, node: Node) -> list[imds.Identity]:
        with self.state.lock:
            return imds.identities_of(getattr(self.state.pools.get(node.pool_id), "rest", None))

    # ----------------------------------------------------------------- tasks
    def run_task(self, task: Task, nodes: list[Node], attempt: int) -> None:
        target = self._multi_instance_thread if task.multi_instance else self._task_thread
        self._thread(target, task, nodes, attempt, name=f"task-{task.id[:24]}")

    def _snapshot(self, task: Task) -> tuple[Job | None, dict[str, Any]]:
        with self.state.lock:
            return self.state.jobs.get(task.job_id), dict(task.rest)

    def _deadline(self, rest: dict[str, Any]) -> float | None:
        """When maxWallClockTime ends, in real time: the limit bounds the task's process, which runs
        in real time whatever the service's time scale (clock.py)."""
        limit = parse_duration(rest["constraints"].get("maxWallClockTime") or "P10675199D")
        return None if limit.days > 365 * 100 else time.monotonic() + limit.total_seconds()

    def _prepare_job(self, job: Job, node: Node) -> bool:
        """Run the job preparation task once per node before the job's first task there."""
        prep = job.rest.get("jobPreparationTask")
        if not prep:
            return True
        with self._lock:
            gate = self._prep_gates.setdefault((node.id, job.id), threading.Lock())
        with gate:  # tasks that start together on a node wait for one preparation task
            return self._prepare_job_once(job, node, prep)

    def _prepare_job_once(self, job: Job, node: Node, prep: dict[str, Any]) -> bool:
        with self.state.lock:
            status = node.prepared_jobs.get(job.id)
        if status == "succeeded":
            return True
        task_dir = node.layout.task_dir(job.id, prep["id"])
        key = f"prep/{job.id}/{node.id}"
        env = self.task_environment(node, job, prep, task_dir)
        started = self.state.clock.iso_now()
        exit_code, failure = None, None
        try:
            blobio.download_resource_files(prep.get("resourceFiles") or [], task_dir / "wd", auto_storage=self.auto_storage(node))
            proc = self._spawn(key, prep["commandLine"], env, task_dir / "wd", task_dir,
                               container=self._container(node, job, prep, env, task_dir, key=key, needs_settings=False))
            exit_code = self._wait(key, proc, None)
        except blobio.ResourceFileError as exc:
            failure = Failure(exc.category, exc.code, exc.message)
        except containers.ContainerError as exc:
            failure = Failure.of_container(exc)
        except FileNotFoundError:
            failure = Failure("usererror", "CommandProgramNotFound", "The specified command program is not found")
        self._forget(key)
        ok = failure is None and exit_code == 0
        with self.state.lock:
            node.prepared_jobs[job.id] = "succeeded" if ok or not prep.get("waitForSuccess", True) else "failed"
            record = {"state": "completed", "startTime": started, "endTime": self.state.clock.iso_now(), "taskRootDirectory": str(task_dir),
                      "result": "success" if ok else "failure", "retryCount": 0}
            if exit_code is not None:
                record["exitCode"] = exit_code
            if failure:
                record["failureInfo"] = failure.as_info()
            job.prep_release[node.id] = {"poolId": node.pool_id, "nodeId": node.id, "nodeUrl": node.rest["url"],
                                         "jobPreparationTaskExecutionInfo": record}
            self.state.save_node(node)
            self.state.save_job(job)
        return node.prepared_jobs[job.id] == "succeeded"

    def run_job_release(self, job: Job, nodes: list[Node]) -> None:
        self._thread(self._job_release_thread, job, nodes, name=f"release-{job.id[:20]}")

    def _job_release_thread(self, job: Job, nodes: list[Node]) -> None:
        """The job release task on each node that ran the preparation task; then the job completes."""
        release = job.rest["jobReleaseTask"]

        def run(node: Node) -> None:
            task_dir = node.layout.task_dir(job.id, release["id"])
            key = f"release/{job.id}/{node.id}"
            started, exit_code, failure = self.state.clock.iso_now(), None, None
            try:
                blobio.download_resource_files(release.get("resourceFiles") or [], task_dir / "wd",
                                               auto_storage=self.auto_storage(node))
                env = self.task_environment(node, job, release, task_dir)
                proc = self._spawn(key, release["commandLine"], env, task_dir / "wd", task_dir, container=self._container(
                    node, job, release, env, task_dir, key=key, needs_settings=False))
                limit = parse_duration(release.get("maxWallClockTime") or "PT15M").total_seconds()
                exit_code = self._wait(key, proc, time.monotonic() + limit)
                if exit_code is None:
                    failure = Failure("usererror", "TaskEnded", "The job release task exceeded its maxWallClockTime")
            except blobio.ResourceFileError as exc:
                failure = Failure(exc.category, exc.code, exc.message)
            except containers.ContainerError as exc:
                failure = Failure.of_container(exc)
            except FileNotFoundError:
                failure = Failure("usererror", "CommandProgramNotFound", "The specified command program is not found")
            self._forget(key)
            record = {"state": "completed", "startTime": started, "endTime": self.state.clock.iso_now(),
                      "taskRootDirectory": str(task_dir), "taskRootDirectoryUrl": f"{node.rest['url']}/files/workitems/{job.id}/job-1/{release['id']}",
                      "result": "success" if failure is None and exit_code == 0 else "failure"}
            if exit_code is not None:
                record["exitCode"] = exit_code
            if failure is not None:
                record["failureInfo"] = failure.as_info()
            with self.state.lock:
                entry = job.prep_release.setdefault(node.id, {"poolId": node.pool_id, "nodeId": node.id,
                                                              "nodeUrl": node.rest["url"]})
                entry["jobReleaseTaskExecutionInfo"] = record

        threads = [self._thread(run, n, name=f"release-{n.id[:16]}") for n in nodes]
        for t in threads:
            t.join()
        with self.state.lock:
            self.state.complete_job(job)

    def _task_thread(self, task: Task, nodes: list[Node], attempt: int) -> None:
        node = nodes[0]
        job, rest = self._snapshot(task)
        if job is None:
            return
        if not self._prepare_job(job, node):
            with self.state.lock:
                if task.attempt == attempt and task.state == "preparing":
                    self.state._release_nodes(task)
                    self.state.set_state(task.rest, "active", model="BatchTask")
                    job.pending.appendleft(task.id)
                    self.state.notify()
            return
        task_dir = node.layout.task_dir(job.id, task.id)
        wd = task_dir / "wd"
        make_private_dir(wd)
        env = self.task_environment(node, job, rest, task_dir)
        exit_code, failure = None, None
        try:
            blobio.download_resource_files(rest.get("resourceFiles") or [], wd, auto_storage=self.auto_storage(node))
            env.update(self.package_environment(node, rest.get("applicationPackageReferences")))
            container = self._container(node, job, rest, env, task_dir, key=task.key)
            if not self.state.mark_running(task, attempt):
                return
            proc = self._spawn(task.key, rest["commandLine"], env, wd, task_dir, container=container)
            exit_code = self._wait(task.key, proc, self._deadline(rest))
            if exit_code is None:
                failure = Failure("usererror", "TaskEnded",
                                  "The task exceeded its maxWallClockTime constraint and was terminated")
        except blobio.ResourceFileError as exc:
            failure = Failure(exc.category, exc.code, exc.message)
        except PackageInstallError as exc:
            failure = Failure("usererror", "ApplicationPackageError", str(exc))
        except containers.ContainerError as exc:
            failure = Failure.of_container(exc)
        except FileNotFoundError:
            failure = Failure("usererror", "CommandProgramNotFound", "The specified command program is not found")
        if self._forget(task.key):
            return  # killed on purpose: whoever killed it already recorded the outcome
        self._sync_mounts(node)
        failure = self._upload_outputs(node, rest, wd, task_dir, exit_code, failure)
        self._report(task, attempt, exit_code, failure, node)

    def _sync_mounts(self, node: Node) -> None:
        """What a task wrote to its node's blob container mounts goes up to the containers."""
        with self.state.lock:
            entries = mounts.entries_of(getattr(self.state.pools.get(node.pool_id), "rest", None))
        try:
            self.shares.after_task(entries)
        except Exception as exc:  # noqa: BLE001 - blobfuse's failed uploads are not the task's failure either
            log.warning("blob mount upload on node %s failed: %s", node.id, exc)

    def _upload_outputs(self, node: Node, rest: dict[str, Any], wd: Path, task_dir: Path, exit_code: int | None,
                        failure: Failure | None) -> Failure | None:
        outputs = rest.get("outputFiles") or []
        if not outputs:
            return failure
        failed = failure is not None or exit_code not in (0, None)
        if self.state.faults.upload_delay_seconds:
            time.sleep(self.state.faults.upload_delay_seconds)
        problems = blobio.upload_output_files(outputs, wd, task_dir, exit_code=exit_code, failed=failed,
                                              auto_storage=self.auto_storage(node))
        if problems and failure is None:
            first = problems[0]
            return Failure("usererror", first.get("code", "FileUploadError"), first.get("message", "An output file upload failed"))
        return failure

    def _report(self, task: Task, attempt: int, exit_code: int | None, failure: Failure | None, node: Node,
                subtask_results: list[dict] | None = None) -> None:
        with self.state.lock:
            succeeded = failure is None and exit_code == 0
            if self.state.complete_task(task, exit_code=exit_code, failure=failure.as_tuple() if failure else None,
                                        attempt=attempt, subtask_results=subtask_results):
                node.rest["totalTasksRun"] = int(node.rest.get("totalTasksRun", 0)) + 1
                node.rest["totalTasksSucceeded"] = int(node.rest.get("totalTasksSucceeded", 0)) + int(succeeded)
                self.state.save_node(node)

    # ----------------------------------------------------------------- multi-instance
    def _multi_instance_thread(self, task: Task, nodes: list[Node], attempt: int) -> None:
        job, rest = self._snapshot(task)
        if job is None:
            return
        settings = rest["multiInstanceSettings"]
        primary = nodes[0]
        hosts = [n.address for n in nodes]
        # CCP_NODES: "<count> <ip> <cores> <ip> <cores> ..." (the runtime environment variables reference).
        pool = self.state.pools.get(primary.pool_id)
        size = self.state.vm_size(pool.rest.get("vmSize", "")) if pool else None
        ccp_nodes = " ".join([str(len(hosts)), *(f"{h} {size.vcpus if size else 1}" for h in hosts)])
        results: list[dict | None] = [None] * len(nodes)
        failure: Failure | None = None
        packages: dict[int, dict[str, str]] = {}

        def instance_env(index: int, node: Node) -> dict[str, str]:
            task_dir = node.layout.task_dir(job.id, task.id)
            env = self.task_environment(node, job, rest, task_dir)
            env.update({
                "AZ_BATCH_HOST_LIST": ",".join(hosts), "AZ_BATCH_NODE_LIST": ";".join(hosts),
                "AZ_BATCH_MASTER_NODE": f"{primary.address}:6000",
                "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true" if index == 0 else "false",
                "AZ_BATCH_TASK_SHARED_DIR": str(task_dir),
                "CCP_NODES": ccp_nodes,
            })
            env.update(packages.get(index, {}))
            return env

        def prepare(index: int, node: Node) -> None:
            nonlocal failure
            task_dir = node.layout.task_dir(job.id, task.id)
            make_private_dir(task_dir / "wd")
            try:
                if not self._prepare_job(job, node):
                    raise blobio.ResourceFileError("JobPreparationTaskFailed", "The job preparation task failed on a node of the task")
                blobio.download_resource_files(settings.get("commonResourceFiles") or [], task_dir, auto_storage=self.auto_storage(node))
                if index == 0:
                    blobio.download_resource_files(rest.get("resourceFiles") or [], task_dir / "wd", auto_storage=self.auto_storage(node))
                packages[index] = self.package_environment(node, rest.get("applicationPackageReferences"))
            except blobio.ResourceFileError as exc:
                failure = Failure(exc.category, exc.code, exc.message)
            except PackageInstallError as exc:
                failure = Failure("usererror", "ApplicationPackageError", str(exc))

        threads = [threading.Thread(target=prepare, args=(i, n)) for i, n in enumerate(nodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failure is None and not self.state.mark_running(task, attempt):
            return
        deadline = self._deadline(rest)
        coordination = settings.get("coordinationCommandLine")
        exit_code = None
        if failure is None and coordination:
            procs = []
            try:
                for index, node in enumerate(nodes):
                    task_dir = node.layout.task_dir(job.id, task.id)
                    env = instance_env(index, node)
                    container = self._container(node, job, rest, env, task_dir, key=task.key, command_line=coordination)
                    procs.append(self._spawn(task.key, coordination, env, task_dir / "wd", task_dir,
                                             stem="" if index else "coordination-", container=container))
            except containers.ContainerError as exc:
                failure = Failure.of_container(exc)
            except FileNotFoundError:
                failure = Failure("usererror", "CommandProgramNotFound", "The specified command program is not found")
            for index, proc in enumerate(procs):
                code = self._wait(task.key, proc, deadline)
                results[index] = {"exitCode": code, "endTime": self.state.clock.iso_now()}
                if code != 0 and failure is None:
                    node = nodes[index]
                    failure = Failure("usererror", "FailureExitCode",
                                      f"The coordination command failed on subtask {index} (node {node.id}) with exit code {code}")
        if failure is None:
            task_dir = primary.layout.task_dir(job.id, task.id)
            try:
                env = instance_env(0, primary)
                proc = self._spawn(task.key, rest["commandLine"], env, task_dir / "wd", task_dir,
                                   container=self._container(primary, job, rest, env, task_dir, key=task.key))
                exit_code = self._wait(task.key, proc, deadline)
                if exit_code is None:
                    failure = Failure("usererror", "TaskEnded",
                                      "The task exceeded its maxWallClockTime constraint and was terminated")
            except containers.ContainerError as exc:
                failure = Failure.of_container(exc)
            except FileNotFoundError:
                failure = Failure("usererror", "CommandProgramNotFound", "The specified command program is not found")
        # The primary's end ends the task: stop whatever the coordination commands left running.
        with self._lock:  # (not _forget: it would drop the groups this has to end)
            leftovers = self._procs.pop(task.key, [])
            killed = self._killed.pop(task.key, None)
        if killed:
            return  # killed on purpose: whoever killed it ended the groups and recorded the outcome
        _terminate_groups(leftovers)
        task_dir = primary.layout.task_dir(job.id, task.id)
        for node in nodes:
            self._sync_mounts(node)
        failure = self._upload_outputs(primary, rest, task_dir / "wd", task_dir, exit_code, failure)
        subtask_results = []
        for index in range(1, len(nodes)):
            result = results[index] or {}
            record = {"state": "completed", "endTime": result.get("endTime", self.state.clock.iso_now())}
            code = result.get("exitCode")
            if code is not None:
                record["exitCode"] = code
                record["result"] = "success" if code == 0 else "failure"
                if code != 0:
                    record["failureInfo"] = {"category": "usererror", "code": "FailureExitCode",
                                             "message": "The task exited with an exit code representing a failure"}
            subtask_results.append(record)
        self._report(task, attempt, exit_code, failure, primary, subtask_results)


def _private(path: str, flags: int) -> int:
    """`open` opener: files the agent creates on a node are 0600."""
    return os.open(path, flags, 0o600)


class NodeHostnames:
    """Each node's hostname, given to its processes without a `preexec_fn`.

    A `preexec_fn` makes subprocess fork the whole emulator (hundreds of MB, dozens of threads)
    instead of using vfork, about ten times the CPU of a task's start. Instead each node gets one
    idle holder process in a UTS namespace of its own, named as the node (`cat` reading a pipe
    only the emulator writes to, so it ends with the emulator, however that ends), and each of
    the node's processes joins that namespace with nsenter. Where namespaces are not allowed (no
    CAP_SYS_ADMIN) or nsenter is missing, processes keep the machine's hostname, as before.
    """

    def __init__(self) -> None:
        self._nsenter = shutil.which("nsenter")
        self._holders: dict[str, subprocess.Popen | None] = {}
        self._lock = threading.Lock()

    def enter(self, hostname: str | None, argv: list[str]) -> list[str]:
        """`argv` run in the namespace of the node called `hostname` (unchanged when impossible)."""
        holder = self._holder(hostname) if hostname and self._nsenter else None
        if holder is None:
            return argv
        if not os.path.isfile(argv[0]):  # what Popen itself would say: CommandProgramNotFound
            raise FileNotFoundError(argv[0])
        return [self._nsenter, f"--uts=/proc/{holder.pid}/ns/uts", "--", *argv]

    def _holder(self, hostname: str) -> subprocess.Popen | None:
        with self._lock:
            if hostname not in self._holders:
                self._holders[hostname] = _start_holder(hostname)
            return self._holders[hostname]

    def forget(self, hostname: str) -> None:
        with self._lock:
            holder = self._holders.pop(hostname, None)
        _stop_holder(holder)

    def close(self) -> None:
        with self._lock:
            holders, self._holders = list(self._holders.values()), {}
        for holder in holders:
            _stop_holder(holder)


def _start_holder(hostname: str) -> subprocess.Popen | None:
    preexec = ssh_shim.node_hostname_preexec(hostname)
    cat = shutil.which("cat")
    if preexec is None or cat is None:
        return None
    try:
        holder = subprocess.Popen([cat], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True, preexec_fn=preexec)
    except OSError:
        return None
    try:
        separate = os.stat(f"/proc/{holder.pid}/ns/uts").st_ino != os.stat("/proc/self/ns/uts").st_ino
    except OSError:
        separate = False
    if not separate:  # the namespace was refused: nothing to join
        _stop_holder(holder)
        return None
    return holder


def _stop_holder(holder: subprocess.Popen | None) -> None:
    if holder is None:
        return
    try:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        holder.kill()
        holder.wait()


def _terminate_groups(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group, give the whole group (not just its leader) a grace period,
    then SIGKILL what is left. The ssh shims in an mpirun's group stop their remote daemons on
    SIGTERM; a SIGKILL straight away would leave those daemons orphaned on the other nodes."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    for proc in procs:
        while time.monotonic() < deadline and _group_alive(proc):
            try:
                proc.wait(timeout=0.05)  # reap the leader so its group can empty
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc, signal.SIGKILL)
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass


def _group_alive(proc: subprocess.Popen) -> bool:
    try:
        os.killpg(proc.pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
