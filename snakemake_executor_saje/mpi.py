"""MPI on multi-instance tasks: what each launcher reads so that a bare `mpirun -n N prog` spreads
its ranks over every node of the task. Pure functions: they build strings and dicts, nothing
here touches the file system, the network or the environment of this process.

How a multi-instance task runs an MPI program
---------------------------------------------
Azure Batch runs the coordination command on every node of the task, then the application
command on the primary node only, with AZ_BATCH_HOST_LIST ("ip1,ip2,...", primary first),
AZ_BATCH_MASTER_NODE ("ip:port"), AZ_BATCH_TASK_SHARED_DIR and passwordless ssh between the
nodes. The application command is therefore::

    /bin/sh -c '<hostfile_script(...)><the rule's shell command>'

with `application_environment(...)` in the task's environment settings. `hostfile_script`
writes a hostfile from AZ_BATCH_HOST_LIST at run time (one line per node, `slots_per_node`
slots each) and exports the variable(s) that point the launcher at it; the launcher then
starts its per-node daemon on every host over ssh. Nothing is needed on the command line.

The exact environment, per flavour (H = the hostfile path, K = slots per node)
------------------------------------------------------------------------------
openmpi (Open MPI 5.x through PRRTE; the 4.x names are set too, each version ignores the
other's, neither warns). Hostfile lines: `<ip> slots=K`.
    PRTE_MCA_prte_default_hostfile=H      Open MPI 5 (PRRTE) default hostfile; 5.x reads
                                          neither OMPI_MCA_orte_default_hostfile nor
                                          OMPI_MCA_prte_default_hostfile (checked on 5.0.11)
    OMPI_MCA_orte_default_hostfile=H      Open MPI 4.x (ORTE)
    PRTE_MCA_plm_ssh_agent=ssh            PRRTE's launcher agent (default "ssh : rsh")
    OMPI_MCA_plm_rsh_agent=ssh            Open MPI 4.x
    OMPI_ALLOW_RUN_AS_ROOT=1              Batch tasks may run as root (admin elevation)
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fabric=infiniband adds OMPI_MCA_pml=ucx (UCX over the RDMA NIC), OMPI_MCA_btl=^openib;
  fabric=tcp adds nothing (Open MPI's default picks the TCP BTL over eth0 and skips lo).
hpcx (NVIDIA HPC-X, an Open MPI 4.x/5.x build with UCX and HCOLL): as openmpi;
  fabric=infiniband also adds OMPI_MCA_coll_hcoll_enable=1.
mpich (MPICH's Hydra: mpirun = mpiexec = mpiexec.hydra). Hostfile lines: `<ip>:K`.
    HYDRA_HOST_FILE=H                     Hydra's default host file
    HYDRA_LAUNCHER=ssh                    start hydra_pmi_proxy on each host over ssh
  fabric adds nothing (the build's netmod, UCX or libfabric, picks the NIC).
intelmpi (Intel MPI's Hydra). Hostfile lines: `<ip>:K`.
    I_MPI_HYDRA_HOST_FILE=H
    I_MPI_HYDRA_BOOTSTRAP=ssh
    I_MPI_FABRICS=shm:ofi
    FI_PROVIDER=mlx                       fabric=infiniband (Intel MPI 2019 U5+ on Mellanox)
    FI_PROVIDER=tcp                       fabric=tcp
  (FI_PROVIDER=verbs is the older choice for InfiniBand; pass `provider=` to override.)

Everything an emulated node needs besides (loopback interfaces, no CPU binding) is node
configuration and lives in `snakemake_executor_saje.emulator.ssh_shim.
emulated_node_mpi_environment`, never here.

Launchers
---------
`detect_flavor(mpi_command)` reads the launcher named in a rule's `resources: mpi=...`
(the Slurm plugin's convention): `prterun`, `prun`, `orterun`, `oshrun`, paths with
"openmpi" -> openmpi; paths with "hpcx" -> hpcx; `mpiexec.hydra`, paths with "mpich" ->
mpich (Intel MPI's Hydra reads the deprecated HYDRA_* names too); paths with "intel",
"oneapi" or "impi" -> intelmpi; bare `mpirun`/`mpiexec` -> None (ambiguous: the caller
needs an explicit flavour). `check_mpi_command` rejects launchers of other resource
managers (`aprun`, `jsrun`, `ibrun`, `flux`, `qrsh`) with an actionable message. Slurm's
`srun` is what Slurm users write (`mpi="srun"`), so it is translated rather than refused:
`srun`, `srun -n N`, `srun --ntasks N`, `srun --ntasks=N` run as `mpirun -n N` (N defaults to
the rule's tasks) through a small `srun` that `srun_shim_script` puts first on the task's
PATH; every other srun option is refused, before anything is submitted, with the fix
(`--set-resources RULE:mpi=mpirun`) in the message.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "COMMON_FILES_DIR",
    "DEFAULT_HOSTFILE",
    "Fabric",
    "MpiCommandError",
    "MpiFlavor",
    "SrunTranslation",
    "application_environment",
    "check_mpi_command",
    "coordination_command",
    "detect_flavor",
    "hostfile_environment",
    "hostfile_line",
    "hostfile_script",
    "resolve_flavor",
    "srun_shim_script",
]

# A shell word, expanded inside double quotes on the primary node.
DEFAULT_HOSTFILE = "$AZ_BATCH_TASK_SHARED_DIR/saje_mpi_hostfile"
# Where an MPI task's commonResourceFiles go, under AZ_BATCH_TASK_SHARED_DIR on every node.
COMMON_FILES_DIR = "saje_common"
# Where the application command writes the `srun` stand-in, under AZ_BATCH_TASK_SHARED_DIR.
SRUN_SHIM_DIR = "saje_bin"
# Every flavour's launcher answers to `mpirun` (Open MPI, HPC-X, MPICH's Hydra, Intel MPI).
LAUNCHER = "mpirun"


class MpiFlavor(str, Enum):
    OPENMPI = "openmpi"
    MPICH = "mpich"
    INTELMPI = "intelmpi"
    HPCX = "hpcx"  # Open MPI-based

    @property
    def openmpi_based(self) -> bool:
        return self in (MpiFlavor.OPENMPI, MpiFlavor.HPCX)

    @property
    def hydra_based(self) -> bool:
        return self in (MpiFlavor.MPICH, MpiFlavor.INTELMPI)


class Fabric(str, Enum):
    TCP = "tcp"
    INFINIBAND = "infiniband"


class MpiCommandError(ValueError):
    """The rule's MPI launcher cannot work on Azure Batch."""


_FOREIGN_LAUNCHERS = {
    "srun": "Slurm",  # translated when only -n/--ntasks is given, see srun_translation
    "aprun": "Cray ALPS",
    "jsrun": "IBM LSF/JSM",
    "ibrun": "TACC",
    "flux": "Flux",
    "qrsh": "Grid Engine",
}


def _launcher_words(mpi_command: str) -> list[str]:
    try:
        words = shlex.split(mpi_command)
    except ValueError:
        words = mpi_command.split()
    # skip leading VAR=value assignments and `env`
    while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] == "env"):
        words = words[1:]
    return words


@dataclass(frozen=True)
class SrunTranslation:
    """How a rule's `srun` runs on Azure Batch: as `mpirun -n <ranks>`.

    `ntasks` is the -n/--ntasks of `resources.mpi` (None: srun takes the rule's `tasks`, as
    inside a Slurm allocation); `tasks` is the rule's rank count, the most srun may ask for.
    """

    tasks: int
    ntasks: int | None = None

    @property
    def ranks(self) -> int:
        return self.ntasks or self.tasks

    @property
    def command(self) -> str:
        return f"{LAUNCHER} -n {self.ranks}"


def _srun_fix(rule: str) -> str:
    return (f"Azure Batch has no Slurm: SAJE runs only `srun`, `srun -n N` and `srun --ntasks[=]N` "
            f"(as `{LAUNCHER} -n N` over the task's nodes). Drop the option, or run the rule with "
            f"`--set-resources {rule}:mpi={LAUNCHER}`")


def _ntasks(value: str, option: str, rule: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise MpiCommandError(f"srun {option} needs a positive number of tasks, not {value!r}. {_srun_fix(rule)}")
    return int(value)


def srun_translation(mpi_command: str, tasks: int, rule: str = "RULE") -> SrunTranslation | None:
    """None when `mpi_command` is not `srun`; how it runs when it is. Raises MpiCommandError
    for every option but -n/--ntasks, and for more ranks than the rule's `tasks` (Slurm would
    refuse a step larger than its allocation)."""
    words = _launcher_words(mpi_command)
    if not words or words[0].rsplit("/", 1)[-1] != "srun":
        return None
    ntasks, rest = None, words[1:]
    while rest:
        word = rest.pop(0)
        if word in ("-n", "--ntasks"):
            if not rest:
                raise MpiCommandError(f"srun {word} needs a number of tasks. {_srun_fix(rule)}")
            ntasks = _ntasks(rest.pop(0), word, rule)
        elif word.startswith("--ntasks="):
            ntasks = _ntasks(word.split("=", 1)[1], "--ntasks", rule)
        elif word.startswith("-n") and not word.startswith("--"):
            ntasks = _ntasks(word[2:], "-n", rule)
        else:
            raise MpiCommandError(f"resources mpi={mpi_command!r}: srun {word!r} has no counterpart on Azure "
                                  f"Batch. {_srun_fix(rule)}")
    if ntasks is not None and ntasks > tasks:
        raise MpiCommandError(f"resources mpi={mpi_command!r} asks for {ntasks} ranks, but the rule has "
                              f"tasks={tasks}; raise tasks or lower -n")
    return SrunTranslation(tasks=tasks, ntasks=ntasks)


def check_mpi_command(mpi_command: str) -> None:
    """Raise MpiCommandError for launchers that need another resource manager (srun aside:
    see `srun_translation`)."""
    words = _launcher_words(mpi_command)
    if not words:
        raise MpiCommandError("empty MPI launcher: set resources: mpi='mpirun' (or mpiexec)")
    name = words[0].rsplit("/", 1)[-1]
    if name in _FOREIGN_LAUNCHERS and name != "srun":
        raise MpiCommandError(
            f"MPI launcher {name!r} belongs to {_FOREIGN_LAUNCHERS[name]}, which Azure Batch "
            "does not run; use resources: mpi='mpirun' (or 'mpiexec') - SAJE points it at "
            "every node of the multi-instance task"
        )


def resolve_flavor(setting: str | None, mpi_command: str) -> MpiFlavor:
    """The flavour a rule runs with: `setting` (resources saje_mpi_flavor or --saje-mpi-flavor)
    unless it is empty or "auto", else the one the launcher names, else Open MPI (the default
    `mpirun` of the HPC images). Raises MpiCommandError for an unknown flavour name."""
    if setting and str(setting).lower() != "auto":
        try:
            return MpiFlavor(str(setting).lower())
        except ValueError:
            known = ", ".join(f.value for f in MpiFlavor)
            raise MpiCommandError(f"MPI flavour {setting!r} (resources saje_mpi_flavor or --saje-mpi-flavor) "
                                  f"is none of auto, {known}") from None
    return detect_flavor(mpi_command) or MpiFlavor.OPENMPI


def detect_flavor(mpi_command: str) -> MpiFlavor | None:
    """The MPI flavour a launcher command names, or None when it cannot be told."""
    words = _launcher_words(mpi_command)
    if not words:
        return None
    path = words[0].lower()
    name = path.rsplit("/", 1)[-1]
    if name in _FOREIGN_LAUNCHERS:
        return None
    if "hpcx" in path or "hpc-x" in path:
        return MpiFlavor.HPCX
    if "openmpi" in path or "open-mpi" in path or name in ("prterun", "prun", "orterun", "oshrun"):
        return MpiFlavor.OPENMPI
    if "intel" in path or "oneapi" in path or "/impi" in path:
        return MpiFlavor.INTELMPI
    if "mpich" in path or name in ("mpiexec.hydra", "hydra"):
        return MpiFlavor.MPICH
    return None


def _check_slots(slots_per_node: int) -> None:
    if not isinstance(slots_per_node, int) or isinstance(slots_per_node, bool) or slots_per_node < 1:
        raise ValueError(f"slots_per_node must be a positive int, not {slots_per_node!r}")


def hostfile_line(flavor: MpiFlavor, host: str, slots_per_node: int) -> str:
    """One hostfile line in the flavour's syntax (no newline)."""
    _check_slots(slots_per_node)
    if flavor.openmpi_based:
        return f"{host} slots={slots_per_node}"
    return f"{host}:{slots_per_node}"


def hostfile_environment(flavor: MpiFlavor, path: str) -> dict[str, str]:
    """The variables that point the flavour's launcher at a hostfile."""
    if flavor.openmpi_based:
        return {"PRTE_MCA_prte_default_hostfile": path, "OMPI_MCA_orte_default_hostfile": path}
    if flavor is MpiFlavor.MPICH:
        return {"HYDRA_HOST_FILE": path}
    return {"I_MPI_HYDRA_HOST_FILE": path}


def application_environment(
    flavor: MpiFlavor,
    hosts: Sequence[str] | int,
    slots_per_node: int,
    *,
    fabric: Fabric = Fabric.TCP,
    provider: str | None = None,
    hostfile: str | None = None,
) -> dict[str, str]:
    """The environment of the application command for `flavor`.

    `hosts` is the node list when it is known, or only the node count (at mapping time
    Batch has not chosen the nodes yet); it gives SAJE_MPI_NODES and SAJE_MPI_NP (= nodes *
    slots_per_node, handy as `mpirun -n $SAJE_MPI_NP`). The hostfile itself is written at
    run time by `hostfile_script`, which exports its path; pass `hostfile` (an absolute
    path, no shell expansion) only to put the path variables here as well.
    """
    flavor = MpiFlavor(flavor)
    fabric = Fabric(fabric)
    _check_slots(slots_per_node)
    nodes = hosts if isinstance(hosts, int) else len(hosts)
    if isinstance(hosts, int):
        if nodes < 1:
            raise ValueError(f"an MPI task needs at least one node, not {nodes}")
    else:
        if not hosts:
            raise ValueError("an MPI task needs at least one node")
        bad = [h for h in hosts if not h or "," in h or h.strip() != h]
        if bad or len(set(hosts)) != len(hosts):
            raise ValueError(f"bad host list {list(hosts)!r}")
    env: dict[str, str] = {
        "SAJE_MPI_FLAVOR": flavor.value,
        "SAJE_MPI_NODES": str(nodes),
        "SAJE_MPI_SLOTS_PER_NODE": str(slots_per_node),
        "SAJE_MPI_NP": str(nodes * slots_per_node),
    }
    if flavor.openmpi_based:
        env.update({
            "PRTE_MCA_plm_ssh_agent": "ssh",
            "OMPI_MCA_plm_rsh_agent": "ssh",
            "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        })
        if fabric is Fabric.INFINIBAND:
            env["OMPI_MCA_pml"] = "ucx"
            env["OMPI_MCA_btl"] = "^openib"
            if flavor is MpiFlavor.HPCX:
                env["OMPI_MCA_coll_hcoll_enable"] = "1"
    elif flavor is MpiFlavor.MPICH:
        env["HYDRA_LAUNCHER"] = "ssh"
    else:  # Intel MPI
        env.update({
            "I_MPI_HYDRA_BOOTSTRAP": "ssh",
            "I_MPI_FABRICS": "shm:ofi",
            "FI_PROVIDER": provider or ("mlx" if fabric is Fabric.INFINIBAND else "tcp"),
        })
    if provider and flavor is not MpiFlavor.INTELMPI:
        env["FI_PROVIDER"] = provider
    if hostfile is not None:
        if not hostfile.startswith("/") or "$" in hostfile:
            raise ValueError(f"hostfile must be an absolute literal path, not {hostfile!r}")
        env.update(hostfile_environment(flavor, hostfile))
    return env


_UNSAFE_IN_DQUOTES = re.compile(r'["`\\\n]')
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]*$")


def hostfile_script(flavor: MpiFlavor, slots_per_node: int, path: str = DEFAULT_HOSTFILE) -> str:
    """A POSIX sh snippet to put before the application command.

    It writes `path` from AZ_BATCH_HOST_LIST (one line per node, the flavour's syntax,
    `slots_per_node` slots each) and exports `hostfile_environment(flavor, path)`. `path`
    is placed inside double quotes, so it may use variables ($AZ_BATCH_TASK_SHARED_DIR).
    It stops the command (exit 1) when AZ_BATCH_HOST_LIST is empty: not a multi-instance
    task. The snippet ends with a newline; its variables are prefixed saje_.
    """
    flavor = MpiFlavor(flavor)
    _check_slots(slots_per_node)
    if not path or _UNSAFE_IN_DQUOTES.search(path):
        raise ValueError(f"hostfile path {path!r} must be non-empty, without quotes, "
                         "backquotes, backslashes or newlines")
    line_fmt = "%s slots=" if flavor.openmpi_based else "%s:"
    line_fmt += f"{slots_per_node}\\n"
    exports = "".join(
        f'export {name}="$saje_hostfile"\n' for name in hostfile_environment(flavor, "")
    )
    return (
        'if [ -z "${AZ_BATCH_HOST_LIST:-}" ]; then '
        'echo "saje: AZ_BATCH_HOST_LIST is empty: MPI needs a multi-instance task" >&2; '
        "exit 1; fi\n"
        f'saje_hostfile="{path}"\n'
        'mkdir -p "$(dirname "$saje_hostfile")" || exit 1\n'
        ': > "$saje_hostfile" || exit 1\n'
        'saje_ifs=$IFS; IFS=,\n'
        'for saje_host in $AZ_BATCH_HOST_LIST; do '
        f'[ -n "$saje_host" ] && printf \'{line_fmt}\' "$saje_host" >> "$saje_hostfile"; '
        "done\n"
        'IFS=$saje_ifs; unset saje_ifs saje_host\n'
        f"{exports}"
    )


def srun_shim_script(srun: SrunTranslation, rule: str = "RULE") -> str:
    """A POSIX sh snippet for the application command, after `hostfile_script`: it writes an
    `srun` into $AZ_BATCH_TASK_SHARED_DIR/saje_bin and puts that first on PATH, so the rule's
    `{resources.mpi} ...` (and an `srun` written in its shell command) runs `mpirun -n N ...`
    over the hostfile's nodes. It takes -n N, -nN, --ntasks N, --ntasks=N (N defaults to the
    rule's tasks, at most that many) and refuses any other option with the fix, as
    `srun_translation` does before submission. The snippet ends with a newline."""
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", rule):
        raise ValueError(f"rule name {rule!r} is not an identifier")
    fix = _srun_fix(rule).replace("`", "")
    shim = f"""#!/bin/sh
# srun of rule {rule} on Azure Batch, written by SAJE: runs {LAUNCHER} -n N over the task's nodes.
n={srun.tasks}
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; break ;;
    -n|--ntasks) [ $# -ge 2 ] || {{ echo "saje: srun $1 needs a number of tasks" >&2; exit 2; }}; n=$2; shift 2 ;;
    --ntasks=*) n=${{1#--ntasks=}}; shift ;;
    --*) echo "saje: srun $1 has no counterpart on Azure Batch. {fix}" >&2; exit 2 ;;
    -n*) n=${{1#-n}}; shift ;;
    -*) echo "saje: srun $1 has no counterpart on Azure Batch. {fix}" >&2; exit 2 ;;
    *) break ;;
  esac
done
case $n in ''|*[!0-9]*|0*) echo "saje: srun -n needs a positive number of tasks, not '$n'" >&2; exit 2 ;; esac
if [ "$n" -gt {srun.tasks} ]; then echo "saje: srun -n $n asks for more ranks than the rule's tasks={srun.tasks}" >&2; exit 2; fi
exec {LAUNCHER} -n "$n" "$@"
"""
    return (
        f'saje_bin="$AZ_BATCH_TASK_SHARED_DIR/{SRUN_SHIM_DIR}"\n'
        'mkdir -p "$saje_bin" || exit 1\n'
        "cat > \"$saje_bin/srun\" <<'SAJE_SRUN'\n"
        f"{shim}"
        "SAJE_SRUN\n"
        'chmod 755 "$saje_bin/srun" || exit 1\n'
        'export PATH="$saje_bin:$PATH"; unset saje_bin\n'
    )


def coordination_command(
    flavor: MpiFlavor | None = None,
    *,
    shell: str = "/bin/sh",
    common_dir: str | None = None,
    archive: str | None = None,
) -> str:
    """The coordination command run on every node before the application command.

    With `common_dir` (a directory name under AZ_BATCH_TASK_SHARED_DIR, where Batch downloads
    the task's commonResourceFiles on every node), it first copies that directory's content,
    modes kept, into the node's AZ_BATCH_TASK_WORKING_DIR (the same path on every node of the
    task) and unpacks `archive` (a .tar.xz among those files) there, so that ranks started on
    any node find the files the primary got; a failed copy fails the command (and the task).
    Then it reports the node and, when the flavour is known, warns (without failing) when
    the flavour's per-node daemon is not on PATH: the launcher starts it on this node over
    ssh, so a missing daemon shows here first, per node, instead of as a launch timeout.
    """
    daemons = {
        MpiFlavor.OPENMPI: "prted orted",
        MpiFlavor.HPCX: "prted orted",
        MpiFlavor.MPICH: "hydra_pmi_proxy",
        MpiFlavor.INTELMPI: "hydra_pmi_proxy",
    }
    script = ""
    if common_dir:
        for name in (common_dir, archive or "x"):
            if not _SAFE_NAME.match(name) or ".." in name.split("/"):
                raise ValueError(f"{name!r} must be a relative path of letters, digits, '._-/'")
        unpack = f' && tar -xJf "{archive}"' if archive else ""
        script = (
            f'saje_from="$AZ_BATCH_TASK_SHARED_DIR/{common_dir}"; '
            'if [ -d "$saje_from" ]; then '
            f'{{ mkdir -p "$AZ_BATCH_TASK_WORKING_DIR" && cp -R -p "$saje_from/." "$AZ_BATCH_TASK_WORKING_DIR/" '
            f'&& cd "$AZ_BATCH_TASK_WORKING_DIR"{unpack}; }} || '
            '{ echo "saje: cannot put the common files into the working directory on node ${AZ_BATCH_NODE_ID:-?}" >&2; '
            "exit 1; }; fi; "
        )
    script += 'echo "saje: node ${AZ_BATCH_NODE_ID:-?} ready for MPI (hosts ${AZ_BATCH_HOST_LIST:-?})"'
    if flavor is not None:
        names = daemons[MpiFlavor(flavor)]
        script += (
            f"; saje_found=; for saje_d in {names}; do "
            'command -v "$saje_d" >/dev/null 2>&1 && saje_found=$saje_d; done; '
            '[ -n "$saje_found" ] || '
            f'echo "saje: warning: none of {names} on PATH on node ${{AZ_BATCH_NODE_ID:-?}}; '
            f'the {MpiFlavor(flavor).value} launcher starts it here over ssh" >&2; true'
        )
    return f"{shell} -c {shlex.quote(script)}"
