"""An `ssh` for emulated nodes: MPI launchers reach "the other node" through it, unchanged.

On a real multi-instance task the nodes of the task can ssh to each other without a
password, and MPI launchers (OpenMPI 5's PRRTE `plm ssh`, MPICH's and Intel MPI's Hydra
`-launcher ssh`) start their per-node daemons (`prted`, `hydra_pmi_proxy`) that way. In the
emulator each node is a directory on this machine with its own loopback address
(127.0.X.Y: all of 127/8 reaches `lo` on Linux). The emulator puts an `ssh` wrapper, written
by `install_ssh_shim`, first on every task's PATH; the wrapper runs this file, which

1. parses ssh's command line the way OpenSSH does (`-x -q -T -n -o Key=Val -p port -l user
   [user@]host command words...`; options it does not model are accepted and ignored);
2. looks the host up in `<data-dir>/hosts.json` by address, node hostname or node id
   (`register_host`/`unregister_host` keep that file, atomically and under a file lock);
   an unknown host fails like ssh does: exit 255, "ssh: Could not resolve hostname X: Name
   or service not known";
3. runs the remote command as sshd does, `/bin/sh -c "<words joined by spaces>"` (no
   command: the shell reads its commands from stdin), in the target node's home directory,
   with a login-like environment (`remote_environment`): nothing from the caller's
   environment but PATH (the nodes of a pool share one image) and LANG/LC_* (OpenSSH's
   default SendEnv), plus the target node's own AZ_BATCH_NODE_* variables, HOSTNAME,
   HOME/USER/LOGNAME/SHELL, SSH_CLIENT/SSH_CONNECTION, and `emulated_node_mpi_environment()`
   (the node-level MPI configuration an emulated node needs, see there). Anything else the
   remote side needs, the launcher must put on the command line, as on Azure;
   The command runs in a new UTS namespace whose hostname is the node's (`enter_node_hostname`,
   needs root/CAP_SYS_ADMIN; without it a warning goes to stderr and the machine's hostname
   shows): Open MPI 5's PRRTE tells nodes apart by their daemons' gethostname() and hangs in
   MPI_Init when two "nodes" report the same name; MPI_Get_processor_name shows it too;
4. passes stdin/stdout/stderr through, and exits with the remote command's status (or
   128+N when it died of signal N, as sshd reports it). The remote command runs in its own
   session (process group); when the shim gets SIGTERM, SIGHUP or SIGINT, or its parent
   (the launcher) dies, it sends SIGTERM to that whole group, then SIGKILL after a grace
   period, and exits 255. A shim killed with SIGKILL cannot do that: signal it first.

Each node its own files (best effort): on Azure the nodes of a task share no file system;
the working directory AZ_BATCH_TASK_WORKING_DIR has the same path on every node but only the
primary's holds the task's resource files. Emulated nodes are directories of one file system,
and launchers hand their daemons the primary's absolute cwd in-band (PRRTE's and Hydra's wdir
travel over their own sockets, not on the ssh command line), so a remote rank would find the
primary's files. The remote command therefore runs in a new mount namespace where every other
registered node's root is a bind mount of the target node's root (`enter_node_files`; a view
an earlier hop left is undone first): a path under node A's root, on node B, is the same
relative path under B's root, and a program only the primary has is missing there, as on
Azure. That needs CAP_SYS_ADMIN like the hostname; without it (a warning on stderr) only
what the shim sees is mapped: the caller node's root in the remote command's words and in
PATH becomes the target's (`map_node_paths`), and anything passed in-band still leaks.

The home directory: on Azure the task user's ssh session starts in that user's home, a
per-node directory that outlives tasks. The emulated equivalent is the node's shared dir
(`AZ_BATCH_NODE_SHARED_DIR`, `node_home`), which is per node, writable by every task and
kept across tasks, so no directory outside the real node layout is invented.

This file imports only the standard library and is run by path, not through the package,
so an ssh hop never imports the executor side (snakemake) and costs one bare interpreter
start.

Node addresses: any of 127/8 except 127.0.0.0/24 and 127.0.1.1, which MPICH's Hydra always
takes for "this host" (it then forks its proxy locally instead of going through ssh).

hosts.json: {"127.0.1.2": {"node_id": ..., "pool_id": ..., "root": "/abs/node/root",
"hostname": "...", "env": {optional extra node-level variables}}, ...}
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

HOSTS_FILE_NAME = "hosts.json"  # same as layout.hosts_file(); a unit test keeps them equal
DATA_DIR_FLAG = "--saje-data-dir"
# Shorter than the agent's grace (agent.KILL_GRACE_SECONDS): a shim that the agent ends with its
# task must have ended its remote command before the agent's SIGKILL takes the shim itself.
KILL_GRACE_SECONDS = 2.0
SSH_PORT = 22

# OpenSSH's options that take an argument (ssh(1) synopsis); every other letter is a flag.
_OPTS_WITH_ARG = set("BbcDEeFIiJLlmOoPpQRSWw")
_OPTS_FLAGS = set("46AaCfGgKkMNnqsTtVvXxYy")


# ---------------------------------------------------------------------------- hosts.json


def hosts_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / HOSTS_FILE_NAME


def read_hosts(data_dir: Path | str) -> dict[str, dict]:
    """The registered nodes, address -> record; {} when there is no file yet."""
    try:
        text = hosts_path(data_dir).read_text()
    except FileNotFoundError:
        return {}
    return json.loads(text) if text.strip() else {}


@contextlib.contextmanager
def _locked(data_dir: Path | str) -> Iterator[None]:
    lock = Path(data_dir) / (HOSTS_FILE_NAME + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a", opener=lambda path, flags: os.open(path, flags, 0o600)) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_hosts(data_dir: Path | str, hosts: Mapping[str, dict]) -> None:
    target = hosts_path(data_dir)
    fd, tmp = tempfile.mkstemp(prefix=".hosts.", suffix=".json", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(hosts), fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)  # readers see the old or the new file, never half of one
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def register_host(data_dir: Path | str, address: str, record: Mapping[str, object]) -> None:
    """Add or replace one node; `record` needs node_id, pool_id, root (absolute), hostname."""
    missing = {"node_id", "pool_id", "root", "hostname"} - set(record)
    if missing:
        raise ValueError(f"host record for {address} lacks {sorted(missing)}")
    rec = dict(record)
    rec["root"] = str(Path(str(rec["root"])).resolve())
    with _locked(data_dir):
        hosts = read_hosts(data_dir)
        hosts[address] = rec
        _write_hosts(data_dir, hosts)


def unregister_host(data_dir: Path | str, address: str) -> None:
    """Remove one node; removing an absent node is not an error."""
    with _locked(data_dir):
        hosts = read_hosts(data_dir)
        if hosts.pop(address, None) is not None:
            _write_hosts(data_dir, hosts)


def resolve_host(hosts: Mapping[str, dict], name: str) -> tuple[str, dict] | None:
    """Find a node by address, hostname (also its short form) or node id."""
    name = name.strip("[]")  # ssh accepts [addr]
    if name in hosts:
        return name, hosts[name]
    low = name.lower()
    for address, rec in hosts.items():
        hn = str(rec.get("hostname", "")).lower()
        if low in (hn, hn.split(".")[0], str(rec.get("node_id", "")).lower()):
            return address, rec
    return None


def node_home(record: Mapping[str, object]) -> Path:
    """The emulated home of the task user on a node: its shared dir (see module doc)."""
    return Path(str(record["root"])) / "shared"


# ---------------------------------------------------------------------------- arguments


class SshUsageError(Exception):
    pass


@dataclass
class SshInvocation:
    host: str
    command: list[str] = field(default_factory=list)
    user: str | None = None
    port: int = SSH_PORT
    options: dict[str, str] = field(default_factory=dict)  # -o Key=Val, keys lower-cased
    flags: set[str] = field(default_factory=set)  # single-letter flags seen (x, q, T, n...)

    @property
    def remote_command(self) -> str:
        """What sshd hands to the shell: the words joined by single spaces, as ssh does."""
        return " ".join(self.command)


def parse_ssh_args(argv: list[str]) -> SshInvocation:
    """Parse an ssh command line the way OpenSSH's getopt does (options stop at the host)."""
    flags: set[str] = set()
    options: dict[str, str] = {}
    user: str | None = None
    port = SSH_PORT
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        j = 1
        while j < len(arg):
            letter = arg[j]
            if letter in _OPTS_WITH_ARG:
                value = arg[j + 1 :]
                if not value:
                    i += 1
                    if i >= len(argv):
                        raise SshUsageError(f"option requires an argument -- {letter}")
                    value = argv[i]
                if letter == "o":
                    key, _, val = value.partition("=")
                    if not val and " " in key:
                        key, _, val = key.partition(" ")
                    options[key.strip().lower()] = val.strip()
                elif letter == "l":
                    user = value
                elif letter == "p":
                    try:
                        port = int(value)
                    except ValueError:
                        raise SshUsageError(f"Bad port '{value}'") from None
                break
            if letter in _OPTS_FLAGS:
                flags.add(letter)
                j += 1
                continue
            raise SshUsageError(f"unknown option -- {letter}")
        i += 1
    if i >= len(argv):
        raise SshUsageError("no host given")
    host = argv[i]
    if "@" in host:
        user, _, host = host.rpartition("@")
    if "port" in options:
        with contextlib.suppress(ValueError):
            port = int(options["port"])
    if "user" in options and user is None:
        user = options["user"]
    return SshInvocation(host=host, command=list(argv[i + 1 :]), user=user, port=port,
                         options=options, flags=flags)


# ---------------------------------------------------------------------------- environment


def emulated_node_mpi_environment() -> dict[str, str]:
    """What an emulated node adds to every task's (and ssh session's) environment for MPI.

    On Azure this is node configuration (the image's MPI setup, the ib0/eth0 fabric); in
    the emulator every node is this one machine, so:

    - traffic between "nodes" must go over loopback: the launchers' and libraries'
      interface selection is pinned to `lo` (OpenMPI's TCP BTL and PRRTE's OOB exclude
      127/8 by default; Hydra would pick eth0; libfabric and UCX pick the first NIC);
    - nodes share the CPUs, so no binding (two "nodes" would bind their rank 0 to the
      same core); and no InfiniBand/RoCE transports are tried.

    The executor side (`snakemake_executor_saje.mpi`) never sets any of these.
    """
    return {
        # OpenMPI 5: the MPI layer (OMPI_MCA_*), PRRTE's daemons (PRTE_MCA_*), PMIx.
        "OMPI_MCA_btl": "self,sm,tcp",
        "OMPI_MCA_btl_tcp_if_include": "lo",
        "OMPI_MCA_pml": "ob1",
        "OMPI_MCA_mtl": "^ofi",
        "PRTE_MCA_hwloc_default_binding_policy": "none",
        "PMIX_MCA_ptl_tcp_if_include": "lo",
        # MPICH / Intel MPI Hydra: proxies connect back to mpiexec over lo.
        "HYDRA_IFACE": "lo",
        "I_MPI_HYDRA_IFACE": "lo",
        # MPICH ch4 over UCX or libfabric: TCP on lo, shared memory inside a node.
        "UCX_NET_DEVICES": "lo",
        "UCX_TLS": "tcp,self,sm",
        "FI_PROVIDER": "tcp",
        "FI_TCP_IFACE": "lo",
        "FI_SOCKETS_IFACE": "lo",
        "MPIR_CVAR_CH4_OFI_ENABLE_HMEM": "0",
    }


def node_environment(address: str, record: Mapping[str, object]) -> dict[str, str]:
    """The node-level variables a process on that node sees (not task-level ones)."""
    root = Path(str(record["root"]))
    env = {
        "AZ_BATCH_NODE_ID": str(record["node_id"]),
        "AZ_BATCH_POOL_ID": str(record["pool_id"]),
        "AZ_BATCH_NODE_ROOT_DIR": str(root),
        "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
        "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
        "AZ_BATCH_NODE_STARTUP_WORKING_DIR": str(root / "startup" / "wd"),
        "HOSTNAME": str(record["hostname"]),
    }
    extra = record.get("env") or {}
    if isinstance(extra, Mapping):
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


def _caller_address(hosts: Mapping[str, dict], caller_env: Mapping[str, str]) -> str:
    node_id = caller_env.get("AZ_BATCH_NODE_ID")
    if node_id:
        for address, rec in hosts.items():
            if str(rec.get("node_id")) == node_id:
                return address
    return "127.0.0.1"


def remote_environment(
    address: str,
    record: Mapping[str, object],
    caller_env: Mapping[str, str],
    *,
    hosts: Mapping[str, dict] | None = None,
    user: str | None = None,
) -> dict[str, str]:
    """The environment of the remote command: a fresh login on `record`'s node."""
    import getpass

    login = user or getpass.getuser()
    env = {
        "PATH": caller_env.get("PATH", os.defpath),
        "HOME": str(node_home(record)),
        "USER": login,
        "LOGNAME": login,
        "SHELL": "/bin/sh",
    }
    for key, val in caller_env.items():
        if key == "LANG" or key.startswith("LC_"):
            env[key] = val
    src = _caller_address(hosts or {}, caller_env)
    env["SSH_CLIENT"] = f"{src} 50022 {SSH_PORT}"
    env["SSH_CONNECTION"] = f"{src} 50022 {address} {SSH_PORT}"
    env.update(emulated_node_mpi_environment())
    env.update(node_environment(address, record))
    return env


# ---------------------------------------------------------------------------- running


def _set_parent_death_signal(sig: int) -> None:
    """Ask Linux to signal us when our parent (the launcher) dies; best effort."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_CLONE_NEWUTS = 0x04000000
_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
_MNT_DETACH = 2


_LIBC: list = []  # [ctypes.CDLL] once loaded, [None] when not available


def _libc():
    """libc through ctypes, loaded once (in the parent: never dlopen between fork and exec)."""
    if not _LIBC:
        lib = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                lib = ctypes.CDLL(None, use_errno=True)
                lib.unshare, lib.sethostname, lib.mount, lib.umount2  # noqa: B018 - resolve them now
            except (OSError, AttributeError):
                lib = None
        _LIBC.append(lib)
    return _LIBC[0]


def enter_node_hostname(hostname: str) -> bool:
    """Move the calling process into a new UTS namespace whose hostname is `hostname`.

    Gives each emulated node its own gethostname(), which MPI runtimes use to tell nodes
    apart (PRRTE names its daemons' nodes by it, MPI_Get_processor_name returns it). Use
    it as a subprocess `preexec_fn`, or build one with `node_hostname_preexec` (what the
    emulator's agent does for every process of a node). Needs CAP_SYS_ADMIN (root);
    returns False, changing nothing, when not allowed.
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        if libc.unshare(_CLONE_NEWUTS) != 0:
            return False
        name = hostname.encode()[:64]
        return libc.sethostname(name, len(name)) == 0
    except (OSError, AttributeError):
        return False


def enter_node_files(target_root: str, other_roots: list[str]) -> bool:
    """Move the calling process into a new mount namespace in which each of `other_roots`
    shows `target_root` (see the module doc); False, changing nothing, when not allowed.

    Views left by an earlier hop (a daemon on node B that sshes on to C) are undone first, so
    every root is the real one before the binds. Meant for a `preexec_fn`: only system calls.
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        if libc.unshare(_CLONE_NEWNS) != 0:
            return False
        if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            return False
        target = target_root.encode()
        others = [r.encode() for r in other_roots]
        for root in [target, *others]:
            libc.umount2(root, _MNT_DETACH)  # EINVAL when no view was there: fine
        return all(libc.mount(target, root, None, _MS_BIND, None) == 0 for root in others)
    except (OSError, AttributeError):
        return False


def map_node_paths(text: str, from_root: str | None, to_root: str) -> str:
    """`text` with every path under `from_root` (the caller node's) moved under `to_root`."""
    if not from_root or from_root == to_root:
        return text
    return text.replace(from_root.rstrip("/") + "/", to_root.rstrip("/") + "/")


def _caller_root(hosts: Mapping[str, dict], caller_env: Mapping[str, str]) -> str | None:
    address = _caller_address(hosts, caller_env)
    record = hosts.get(address)
    return str(record["root"]) if record else None


def node_hostname_preexec(hostname: str | None):
    """A `preexec_fn` that gives the child `hostname` (see `enter_node_hostname`), or None.

    Safe to use from a multi-threaded parent: libc is loaded here, in the parent, so the
    child only calls unshare(2) and sethostname(2) between fork and exec. None (no preexec)
    when there is no hostname or the platform cannot do it. A child that is not allowed a
    namespace (no CAP_SYS_ADMIN) keeps the machine's hostname and runs all the same.
    """
    if not hostname or _libc() is None:
        return None

    def preexec() -> None:
        enter_node_hostname(hostname)

    return preexec


def _kill_group(pgid: int, proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run(argv: list[str], data_dir: Path | str, caller_env: Mapping[str, str] | None = None) -> int:
    """Behave like `ssh argv...`; returns the exit status."""
    caller_env = os.environ if caller_env is None else caller_env
    try:
        inv = parse_ssh_args(argv)
    except SshUsageError as exc:
        print(f"ssh: {exc}", file=sys.stderr)
        return 255
    hosts = read_hosts(data_dir)
    found = resolve_host(hosts, inv.host)
    if found is None:
        print(f"ssh: Could not resolve hostname {inv.host}: Name or service not known",
              file=sys.stderr)
        return 255
    address, record = found
    home = node_home(record)
    if not home.is_dir():
        print(f"ssh: connect to host {inv.host} port {inv.port}: Connection refused",
              file=sys.stderr)
        return 255
    env = remote_environment(address, record, caller_env, hosts=hosts, user=inv.user)
    target_root = str(record["root"])
    from_root = _caller_root(hosts, caller_env)
    env["PATH"] = map_node_paths(env["PATH"], from_root, target_root)
    cmd = ["/bin/sh", "-c", map_node_paths(inv.remote_command, from_root, target_root)] if inv.command else ["/bin/sh"]
    other_roots = sorted({str(r["root"]) for r in hosts.values() if str(r["root"]) != target_root
                          and os.path.isdir(str(r["root"]))})
    stdin = subprocess.DEVNULL if ("n" in inv.flags or "N" in inv.flags) else None
    if "N" in inv.flags:
        cmd = ["/bin/sh", "-c", "exec sleep 2147483647"]

    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() == 1:
        return 255  # the launcher died before we armed the parent-death signal

    hostname = str(record["hostname"])
    _libc()  # load it before fork

    def in_node():  # runs in the child, between fork and exec
        if not enter_node_hostname(hostname):
            os.write(2, (f"ssh (SAJE emulator): cannot give {hostname} its own hostname "
                         "(a UTS namespace needs CAP_SYS_ADMIN); MPI ranks on it will see "
                         f"{os.uname().nodename}\n").encode())
        if not enter_node_files(target_root, other_roots):
            os.write(2, (f"ssh (SAJE emulator): cannot give {hostname} its own view of the node "
                         "directories (a mount namespace needs CAP_SYS_ADMIN); paths another node "
                         "passes in-band reach that node's files\n").encode())

    proc = subprocess.Popen(cmd, cwd=home, env=env, stdin=stdin, start_new_session=True,
                            preexec_fn=in_node)
    pgid = proc.pid
    while True:
        if received:
            _kill_group(pgid, proc)
            proc.wait()
            return 255
        try:
            status = proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        return 128 - status if status < 0 else status


def install_ssh_shim(bin_dir: Path, data_dir: Path, python: str = sys.executable) -> Path:
    """Write `<bin_dir>/ssh`, a sh wrapper that runs this shim for nodes under `data_dir`."""
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / "ssh"
    script = (
        "#!/bin/sh\n"
        "# SAJE emulator: ssh between emulated nodes (snakemake_executor_saje.emulator.ssh_shim)\n"
        f"exec {shlex.quote(str(python))} {shlex.quote(str(Path(__file__).resolve()))} "
        f"{DATA_DIR_FLAG} {shlex.quote(str(Path(data_dir).resolve()))} \"$@\"\n"
    )
    tmp = target.with_name(".ssh.tmp")
    tmp.write_text(script)
    tmp.chmod(0o700)  # the emulator's user runs it; its data dir is private
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    data_dir = os.environ.get("SAJE_SSH_DATA_DIR")
    if len(args) >= 2 and args[0] == DATA_DIR_FLAG:
        data_dir, args = args[1], args[2:]
    if not data_dir:
        print(f"ssh: SAJE shim: no {DATA_DIR_FLAG} given and SAJE_SSH_DATA_DIR unset",
              file=sys.stderr)
        return 255
    return run(args, data_dir)


if __name__ == "__main__":
    sys.exit(main())
