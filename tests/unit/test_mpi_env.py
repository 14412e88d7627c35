"""Pure tests: MPI launcher environments, hostfile snippets, ssh argument parsing, hosts.json."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

import pytest

from snakemake_executor_saje import mpi
from snakemake_executor_saje.emulator import layout, ssh_shim
from snakemake_executor_saje.mpi import Fabric, MpiFlavor


# ------------------------------------------------------------------ detect / check


@pytest.mark.parametrize("cmd,flavor", [
    ("mpirun", None),
    ("mpiexec", None),
    ("/usr/bin/mpirun", None),
    ("prterun", MpiFlavor.OPENMPI),
    ("/opt/openmpi-5.0/bin/mpirun", MpiFlavor.OPENMPI),
    ("/opt/hpcx-v2.20/ompi/bin/mpirun", MpiFlavor.HPCX),
    ("mpiexec.hydra", MpiFlavor.MPICH),
    ("/opt/mpich/bin/mpiexec", MpiFlavor.MPICH),
    ("/opt/intel/oneapi/mpi/latest/bin/mpirun", MpiFlavor.INTELMPI),
    ("FOO=1 env /opt/intel/impi/bin/mpiexec.hydra", MpiFlavor.INTELMPI),
    ("srun", None),
    ("", None),
])
def test_detect_flavor(cmd, flavor):
    assert mpi.detect_flavor(cmd) is flavor


@pytest.mark.parametrize("cmd", ["aprun", "jsrun", "ibrun", "/usr/bin/flux run", "qrsh", ""])
def test_foreign_launchers_are_refused(cmd):
    with pytest.raises(mpi.MpiCommandError):
        mpi.check_mpi_command(cmd)


@pytest.mark.parametrize("cmd", ["mpirun", "mpiexec -bind-to core", "/opt/x/mpiexec.hydra", "srun"])
def test_mpi_launchers_pass(cmd):
    """srun passes here: `srun_translation` decides how (and whether) it runs."""
    mpi.check_mpi_command(cmd)


# ------------------------------------------------------------------ environments


def test_openmpi_environment():
    env = mpi.application_environment(MpiFlavor.OPENMPI, ["10.0.0.4", "10.0.0.5"], 4)
    assert env["PRTE_MCA_plm_ssh_agent"] == "ssh"
    assert env["OMPI_MCA_plm_rsh_agent"] == "ssh"
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    assert env["SAJE_MPI_NP"] == "8" and env["SAJE_MPI_NODES"] == "2"
    assert "OMPI_MCA_pml" not in env  # TCP: Open MPI's defaults
    assert not any("if_include" in k or v == "lo" for k, v in env.items())  # no emulator hacks


def test_openmpi_infiniband_and_hpcx():
    env = mpi.application_environment(MpiFlavor.OPENMPI, 2, 96, fabric=Fabric.INFINIBAND)
    assert env["OMPI_MCA_pml"] == "ucx"
    hpcx = mpi.application_environment(MpiFlavor.HPCX, 2, 96, fabric=Fabric.INFINIBAND)
    assert hpcx["OMPI_MCA_pml"] == "ucx" and hpcx["OMPI_MCA_coll_hcoll_enable"] == "1"
    assert hpcx["PRTE_MCA_plm_ssh_agent"] == "ssh"


def test_mpich_environment():
    env = mpi.application_environment(MpiFlavor.MPICH, 3, 2, hostfile="/mnt/h")
    assert env["HYDRA_LAUNCHER"] == "ssh"
    assert env["HYDRA_HOST_FILE"] == "/mnt/h"
    assert env["SAJE_MPI_NP"] == "6"


@pytest.mark.parametrize("fabric,provider", [(Fabric.INFINIBAND, "mlx"), (Fabric.TCP, "tcp")])
def test_intelmpi_environment(fabric, provider):
    env = mpi.application_environment(MpiFlavor.INTELMPI, 2, 2, fabric=fabric)
    assert env["I_MPI_HYDRA_BOOTSTRAP"] == "ssh"
    assert env["I_MPI_FABRICS"] == "shm:ofi"
    assert env["FI_PROVIDER"] == provider
    assert mpi.application_environment(MpiFlavor.INTELMPI, 2, 2, provider="verbs")["FI_PROVIDER"] == "verbs"


def test_hostfile_environment_names():
    assert mpi.hostfile_environment(MpiFlavor.OPENMPI, "/h") == {
        "PRTE_MCA_prte_default_hostfile": "/h", "OMPI_MCA_orte_default_hostfile": "/h"}
    assert mpi.hostfile_environment(MpiFlavor.MPICH, "/h") == {"HYDRA_HOST_FILE": "/h"}
    assert mpi.hostfile_environment(MpiFlavor.INTELMPI, "/h") == {"I_MPI_HYDRA_HOST_FILE": "/h"}


@pytest.mark.parametrize("bad", [dict(hosts=[]), dict(hosts=0), dict(hosts=["a", "a"]),
                                 dict(hosts=["a,b"]), dict(slots=0), dict(hostfile="rel/h"),
                                 dict(hostfile="$X/h")])
def test_environment_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        mpi.application_environment(MpiFlavor.MPICH, bad.get("hosts", ["a"]), bad.get("slots", 1),
                                    hostfile=bad.get("hostfile"))


# ------------------------------------------------------------------ hostfile snippet


def _run_snippet(flavor, slots, tmp_path, host_list, path=None):
    script = mpi.hostfile_script(flavor, slots, path or str(tmp_path / "sub" / "hostfile"))
    env_dump = "env | grep -E '^[A-Za-z_]*(HOST_FILE|hostfile)=' | sort"
    return subprocess.run(["/bin/sh", "-c", script + env_dump], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "AZ_BATCH_HOST_LIST": host_list,
                               "AZ_BATCH_TASK_SHARED_DIR": str(tmp_path / "shared")})


@pytest.mark.parametrize("flavor,lines", [
    (MpiFlavor.OPENMPI, ["10.0.0.4 slots=2", "10.0.0.5 slots=2"]),
    (MpiFlavor.HPCX, ["10.0.0.4 slots=2", "10.0.0.5 slots=2"]),
    (MpiFlavor.MPICH, ["10.0.0.4:2", "10.0.0.5:2"]),
    (MpiFlavor.INTELMPI, ["10.0.0.4:2", "10.0.0.5:2"]),
])
def test_hostfile_script_writes_and_exports(tmp_path, flavor, lines):
    out = _run_snippet(flavor, 2, tmp_path, "10.0.0.4,10.0.0.5")
    assert out.returncode == 0, out.stderr
    path = tmp_path / "sub" / "hostfile"
    assert path.read_text().splitlines() == lines
    assert [mpi.hostfile_line(flavor, h, 2) for h in ("10.0.0.4", "10.0.0.5")] == lines
    exported = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert exported == mpi.hostfile_environment(flavor, str(path))


def test_hostfile_script_default_path_expands_shared_dir(tmp_path):
    script = mpi.hostfile_script(MpiFlavor.MPICH, 1)
    out = subprocess.run(["/bin/sh", "-c", script + 'cat "$HYDRA_HOST_FILE"'], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "AZ_BATCH_HOST_LIST": "h1",
                                         "AZ_BATCH_TASK_SHARED_DIR": str(tmp_path)})
    assert out.returncode == 0 and out.stdout == "h1:1\n"
    assert (tmp_path / "saje_mpi_hostfile").exists()


def test_hostfile_script_fails_outside_multi_instance(tmp_path):
    out = _run_snippet(MpiFlavor.OPENMPI, 1, tmp_path, "")
    assert out.returncode == 1 and "AZ_BATCH_HOST_LIST" in out.stderr


@pytest.mark.parametrize("path", ['/a"b', "/a`b`", "/a\\b", ""])
def test_hostfile_script_rejects_unsafe_paths(path):
    with pytest.raises(ValueError):
        mpi.hostfile_script(MpiFlavor.OPENMPI, 1, path)


@pytest.mark.skipif(shutil.which("dash") is None, reason="dash not installed")
def test_hostfile_script_is_posix(tmp_path):
    script = mpi.hostfile_script(MpiFlavor.OPENMPI, 3, str(tmp_path / "h"))
    out = subprocess.run(["dash", "-c", script + 'cat "$PRTE_MCA_prte_default_hostfile"'],
                         capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "AZ_BATCH_HOST_LIST": "a,b,c"})
    assert out.stdout.splitlines() == ["a slots=3", "b slots=3", "c slots=3"]


def test_coordination_command_runs_and_warns(tmp_path):
    cmd = mpi.coordination_command(MpiFlavor.MPICH)
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "AZ_BATCH_NODE_ID": "tvm-1",
                              "AZ_BATCH_HOST_LIST": "a,b"})
    assert out.returncode == 0
    assert "tvm-1" in out.stdout and "hydra_pmi_proxy" in out.stderr
    assert subprocess.run(mpi.coordination_command(), shell=True).returncode == 0


def test_coordination_command_puts_the_common_files_into_the_working_dir(tmp_path):
    """What every node of an MPI task does first: the commonResourceFiles (in the task root,
    AZ_BATCH_TASK_SHARED_DIR) go into AZ_BATCH_TASK_WORKING_DIR, modes kept, sources unpacked."""
    shared, wd = tmp_path / "task", tmp_path / "task" / "wd"
    common = shared / mpi.COMMON_FILES_DIR
    (common / "bin").mkdir(parents=True)
    (common / "bin" / "pi").write_text("#!/bin/sh\necho pi\n")
    (common / "bin" / "pi").chmod(0o755)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "Snakefile").write_text("rule all:\n")
    subprocess.run(["tar", "-cJf", str(common / "sources.tar.xz"), "-C", str(tmp_path / "src"), "Snakefile"], check=True)
    env = {"PATH": "/usr/bin:/bin", "AZ_BATCH_NODE_ID": "tvm-2", "AZ_BATCH_HOST_LIST": "a,b",
           "AZ_BATCH_TASK_SHARED_DIR": str(shared), "AZ_BATCH_TASK_WORKING_DIR": str(wd)}
    cmd = mpi.coordination_command(MpiFlavor.OPENMPI, common_dir=mpi.COMMON_FILES_DIR, archive="sources.tar.xz")
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "tvm-2 ready for MPI" in out.stdout and "prted" in out.stderr  # the checks stay
    assert subprocess.run([str(wd / "bin" / "pi")], capture_output=True, text=True).stdout == "pi\n"
    assert (wd / "Snakefile").read_text() == "rule all:\n"
    # a copy that cannot be made fails the node's coordination command, hence the task
    (wd / "bin").chmod(0o500)
    (common / "bin" / "pi").write_text("changed")
    failed = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=env)
    (wd / "bin").chmod(0o755)
    if os.geteuid() != 0:  # root writes anyway
        assert failed.returncode == 1 and "cannot put the common files" in failed.stderr
    with pytest.raises(ValueError):
        mpi.coordination_command(common_dir="../x")


def test_staged_programs_are_executable_and_common_copies_go_under_a_directory(tmp_path):
    from azure.batch import models

    from snakemake_executor_saje import staging

    elf, script, data = tmp_path / "elf", tmp_path / "run.sh", tmp_path / "data.txt"
    elf.write_bytes(b"\x7fELF\x02\x01")  # mode 0644, as an output downloaded from a node
    script.write_text("#!/bin/sh\n")
    data.write_text("1 2 3\n")
    assert [staging._executable(p) for p in (elf, script, data)] == [True, True, False]
    files = [models.ResourceFile(http_url="https://x/a?sas", file_path="bin/pi", file_mode="0755")]
    (copy,) = staging.under(mpi.COMMON_FILES_DIR, files)
    assert (copy.http_url, copy.file_path, copy.file_mode) == ("https://x/a?sas", "saje_common/bin/pi", "0755")


# ------------------------------------------------------------------ ssh arguments


@pytest.mark.parametrize("argv,host,command,user,port", [
    (["-x", "10.0.0.5", "echo", "hi"], "10.0.0.5", ["echo", "hi"], None, 22),
    (["-q", "-T", "-o", "StrictHostKeyChecking=no", "-p", "2222", "-l", "bob", "h", "ls"],
     "h", ["ls"], "bob", 2222),
    (["-xqT", "-oBatchMode=yes", "-p2200", "alice@h", "a", "-x"], "h", ["a", "-x"], "alice", 2200),
    (["-o", "Port 23", "--", "h"], "h", [], None, 23),
    (["h", "-p", "9"], "h", ["-p", "9"], None, 22),
])
def test_parse_ssh_args(argv, host, command, user, port):
    inv = ssh_shim.parse_ssh_args(argv)
    assert (inv.host, inv.command, inv.user, inv.port) == (host, command, user, port)


def test_parse_ssh_args_keeps_options_and_joins_command():
    inv = ssh_shim.parse_ssh_args(["-x", "-o", "StrictHostKeyChecking=no", "h", "PATH=/x:$PATH", ";",
                                   "export", "PATH", ";", "prted", "--x"])
    assert inv.options == {"stricthostkeychecking": "no"}
    assert "x" in inv.flags
    assert inv.remote_command == "PATH=/x:$PATH ; export PATH ; prted --x"


@pytest.mark.parametrize("argv", [[], ["-x"], ["-p"], ["-Z", "h"], ["-p", "abc", "h"]])
def test_parse_ssh_args_errors(argv):
    with pytest.raises(ssh_shim.SshUsageError):
        ssh_shim.parse_ssh_args(argv)


# ------------------------------------------------------------------ hosts.json


def _rec(tmp_path, i):
    return {"node_id": f"tvm-{i}", "pool_id": "p", "root": str(tmp_path / f"n{i}"), "hostname": f"host{i}"}


def test_hosts_file_is_the_layouts(tmp_path):
    assert ssh_shim.hosts_path(tmp_path) == layout.hosts_file(tmp_path)


def test_register_resolve_unregister(tmp_path):
    assert ssh_shim.read_hosts(tmp_path) == {}
    ssh_shim.register_host(tmp_path, "127.9.0.1", _rec(tmp_path, 1))
    ssh_shim.register_host(tmp_path, "127.9.0.2", _rec(tmp_path, 2))
    hosts = ssh_shim.read_hosts(tmp_path)
    assert set(hosts) == {"127.9.0.1", "127.9.0.2"}
    assert json.loads(layout.hosts_file(tmp_path).read_text()) == hosts
    assert ssh_shim.resolve_host(hosts, "127.9.0.2")[1]["node_id"] == "tvm-2"
    assert ssh_shim.resolve_host(hosts, "HOST1")[0] == "127.9.0.1"
    assert ssh_shim.resolve_host(hosts, "tvm-2")[0] == "127.9.0.2"
    assert ssh_shim.resolve_host(hosts, "nope") is None
    ssh_shim.unregister_host(tmp_path, "127.9.0.1")
    ssh_shim.unregister_host(tmp_path, "127.9.0.1")  # absent: fine
    assert set(ssh_shim.read_hosts(tmp_path)) == {"127.9.0.2"}


def test_register_requires_fields(tmp_path):
    with pytest.raises(ValueError):
        ssh_shim.register_host(tmp_path, "127.9.0.1", {"node_id": "x"})


def test_concurrent_registration_loses_nothing(tmp_path):
    def reg(i):
        ssh_shim.register_host(tmp_path, f"127.9.1.{i}", _rec(tmp_path, i))

    threads = [threading.Thread(target=reg, args=(i,)) for i in range(1, 41)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ssh_shim.read_hosts(tmp_path)) == 40


def test_remote_environment_is_a_login_on_the_target(tmp_path):
    rec = _rec(tmp_path, 2) | {"env": {"AZ_BATCH_NODE_IS_DEDICATED": "true"}}
    hosts = {"127.9.0.1": _rec(tmp_path, 1), "127.9.0.2": rec}
    caller = {"PATH": "/p:/bin", "SECRET": "x", "AZ_BATCH_NODE_ID": "tvm-1",
              "AZ_BATCH_TASK_ID": "t", "LANG": "C.UTF-8", "HYDRA_HOST_FILE": "/h"}
    env = ssh_shim.remote_environment("127.9.0.2", rec, caller, hosts=hosts)
    assert env["PATH"] == "/p:/bin" and env["LANG"] == "C.UTF-8"
    assert "SECRET" not in env and "AZ_BATCH_TASK_ID" not in env and "HYDRA_HOST_FILE" not in env
    assert env["AZ_BATCH_NODE_ID"] == "tvm-2" and env["HOSTNAME"] == "host2"
    assert env["AZ_BATCH_NODE_IS_DEDICATED"] == "true"
    assert env["HOME"] == str(ssh_shim.node_home(rec)) == env["AZ_BATCH_NODE_SHARED_DIR"]
    assert env["SSH_CONNECTION"].split()[0] == "127.9.0.1"
    assert env["SSH_CONNECTION"].split()[2] == "127.9.0.2"
    for key, value in ssh_shim.emulated_node_mpi_environment().items():
        assert env[key] == value


def test_emulated_environment_pins_loopback():
    env = ssh_shim.emulated_node_mpi_environment()
    assert env["OMPI_MCA_btl_tcp_if_include"] == "lo"
    assert env["HYDRA_IFACE"] == "lo"
    assert env["PRTE_MCA_hwloc_default_binding_policy"] == "none"


def test_install_ssh_shim_writes_an_executable_wrapper(tmp_path):
    path = ssh_shim.install_ssh_shim(tmp_path / "bin", tmp_path / "data", python="/usr/bin/python3")
    assert path == tmp_path / "bin" / "ssh"
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n") and "/usr/bin/python3" in text
    assert str((tmp_path / "data").resolve()) in text and '"$@"' in text
    assert path.stat().st_mode & 0o111
