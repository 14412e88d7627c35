"""The setup workflows' pure parts: plans from configs, provisioning scripts, the benchmark's output,
markers, and how ARM errors become messages."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from snakemake_executor_saje.setup import deploy, image
from snakemake_executor_saje.setup.markers import SetupError, explain, read_marker, write_marker
from snakemake_executor_saje.setup.names import NameRuleError


def test_deploy_plan_defaults_and_paths(tmp_path):
    plan = deploy.plan({"name": "proj", "state_dir": str(tmp_path / ".saje"), "profiles_dir": str(tmp_path / "p")}, "sub")
    assert plan.resource_group == "proj-rg" and plan.containers == ["snakemake"]
    assert plan.state_dir == tmp_path / ".saje/deploy/proj" and plan.profile_path == tmp_path / "p/proj/config.yaml"
    assert plan.pool_allocation_mode == "BatchService" and not plan.has_principal


@pytest.mark.parametrize("config, words", [
    ({"storage_account": "Bad_Name"}, "Storage account name"),
    ({"pool_allocation_mode": "Spot"}, "pool_allocation_mode"),
    ({"batch_principal": {"principal_id": "nope"}}, "not a GUID"),
    ({"containers": ["UPPER"]}, "Blob container"),
    ({"name": "has space"}, "Deployment name"),
])
def test_deploy_plan_refuses_what_azure_would(config, words):
    with pytest.raises(NameRuleError, match=words):
        deploy.plan({"name": "proj", **config})


def _deployment(tmp_path: Path) -> dict:
    state = tmp_path / ".saje/deploy/proj"
    write_marker(state / "resource_group.json", {"kind": "resource_group", "name": "proj-rg", "location": "northeurope",
                                                 "id": "/subscriptions/s/resourceGroups/proj-rg"})
    write_marker(state / "batch_account.json", {"kind": "batch_account", "name": "projba", "location": "northeurope",
                                                "id": "/subscriptions/s/resourceGroups/proj-rg/providers/Microsoft.Batch/batchAccounts/projba"})
    return {"deployment": "proj", "state_dir": str(tmp_path / ".saje"), "snakemake_version": "9.0.0"}


def test_image_plan_reads_the_deployment(tmp_path):
    plan = image.image_plan(_deployment(tmp_path))
    assert (plan.resource_group, plan.location, plan.batch_account) == ("proj-rg", "northeurope", "projba")
    assert (plan.publisher, plan.offer, plan.sku) == ("microsoft-dsvm", "ubuntu-hpc", "2404")
    assert plan.node_agent_sku == "batch.node.ubuntu 24.04" and plan.definition == "ubuntu-hpc-2404-mpi"
    assert plan.replica_regions == ["northeurope"]
    alma = image.image_plan({**_deployment(tmp_path), "base_image": "almalinux-hpc", "location": "westeurope"})
    assert alma.node_agent_sku == "batch.node.el 8" and alma.replica_regions == ["westeurope", "northeurope"]


@pytest.mark.parametrize("extra, words", [
    ({"vm_size": "Standard_D2s_v5"}, "no InfiniBand"),
    ({"mpi_flavors": ["lam"]}, "mpi_flavors"),
    ({"image_version": "v1"}, "Major.Minor.Patch"),
    ({"base_image": "nope"}, "base_image"),
    ({"gallery": "saje-gallery"}, "Compute gallery"),
])
def test_image_plan_refusals(tmp_path, extra, words):
    with pytest.raises(NameRuleError, match=words):
        image.image_plan({**_deployment(tmp_path), **extra})


def test_image_plan_without_deployment_says_deploy_first(tmp_path):
    with pytest.raises(NameRuleError, match="deploy first"):
        image.image_plan({"deployment": "none", "state_dir": str(tmp_path)})


def test_provisioning_scripts_are_valid_bash_and_carry_their_inputs(tmp_path):
    packages = tmp_path / "packages.yaml"
    packages.write_text("apt: [libfftw3-dev]\npip: ['numpy>=2']\nscript: ['echo hello']\n")
    plan = image.image_plan({**_deployment(tmp_path), "packages_file": str(packages), "mpi_flavors": ["openmpi", "mpich"]})
    for script in image.SCRIPTS:
        text = "\n".join(image.script_lines(plan, script))
        assert text.startswith("# Shared by every SAJE provisioning script")
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    assert "saje-mpi-bench.c <<'SAJE_EOF_" in "\n".join(image.script_lines(plan, "40-mpi-bench.sh"))
    assert image.script_parameters(plan, "10-mpi.sh")["MPI_FLAVORS"] == "openmpi mpich"
    params = image.script_parameters(plan, "20-packages.sh")
    assert params["APT_PACKAGES"] == "libfftw3-dev" and params["PIP_PACKAGES"] == "'numpy>=2'"
    assert params["USER_SCRIPT"] == "echo hello"
    assert image.script_parameters(plan, "30-snakemake.sh")["SNAKEMAKE_VERSION"] == "9.0.0"


def test_packages_script_runs_the_users_lines_on_the_emulator_layout(tmp_path):
    plan = image.image_plan({**_deployment(tmp_path), "snakemake_version": ""})
    root = tmp_path / "disk"
    params = {**image.script_parameters(plan, "20-packages.sh"), "APT_PACKAGES": "gcc",
              "USER_SCRIPT": 'echo made > "$PREFIX/bin/marker"'}
    done = subprocess.run(["bash", "-c", "\n".join(image.script_lines(plan, "20-packages.sh"))], text=True,
                          capture_output=True, env={"PATH": "/usr/bin:/bin", "SAJE_VM_ROOT": str(root), **params})
    assert done.returncode == 0, done.stderr
    assert "emulator: not installing system packages: gcc" in done.stdout
    assert (root / "usr/local/bin/marker").read_text() == "made\n"


def test_parse_bench():
    out = "noise\nSAJE_BENCH ranks=2 hosts=a,b latency_us=1.500 bandwidth_MBps=1000.0 allreduce_us=2.000 allreduce_sum=1\n"
    values = image.parse_bench(out)
    assert values == {"ranks": 2, "hosts": ["a", "b"], "latency_us": 1.5, "bandwidth_MBps": 1000.0,
                      "allreduce_us": 2.0, "allreduce_sum": 1}
    with pytest.raises(SetupError, match="no SAJE_BENCH"):
        image.parse_bench("nothing")


def test_markers_round_trip_and_refuse_garbage(tmp_path):
    written = write_marker(tmp_path / "a/b.json", {"kind": "x", "id": "/i"})
    assert read_marker(tmp_path / "a/b.json") == written and "time" in written
    assert read_marker(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SetupError, match="not valid JSON"):
        read_marker(tmp_path / "bad.json")


def test_authorization_failed_becomes_a_clear_message():
    from azure.core.exceptions import HttpResponseError

    class Response:
        status_code = 403
        reason = "Forbidden"
        headers = {"content-type": "application/json"}

        def text(self, encoding=None):
            return json.dumps({"error": {"code": "AuthorizationFailed", "message": "The client 'x' with object id"
                                         " 'x' does not have authorization to perform action 'a/write'."}})

        body = text

    exc = HttpResponseError(response=Response())
    message = str(explain(exc, "creating resource group g", state_hint="Markers in d/."))
    assert message.startswith("Permission denied while creating resource group g: AuthorizationFailed")
    assert "Owner" in message and message.endswith("Markers in d/.")
