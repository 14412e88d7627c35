"""Pure parts of issue 13: the composed start task, application package references and their
variables, the allocation-mode rules, the job wall-clock setting."""
from __future__ import annotations

import datetime
import shlex
import subprocess
import zipfile

import pytest

from snakemake_executor_saje import allocation, mapping, pools
from snakemake_executor_saje.emulator.agent import package_variable, unpack_zip
from snakemake_executor_saje.settings import ExecutorSettings


def _run(start) -> subprocess.CompletedProcess:
    """Run a start task's command line as Batch does (no shell), in a scratch directory."""
    return subprocess.run(shlex.split(start.command_line), text=True, capture_output=True, timeout=30)


def test_no_start_task_when_there_is_nothing_to_run():
    assert pools.start_task() is None


def test_user_steps_run_after_saje_in_their_own_shell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "setup.sh").write_text("set -u\necho \"script after: $(cat order)\" >> order\n")
    start = pools.start_task(user_command="echo command > order; set -e", user_script="setup.sh")
    assert start.user_identity.auto_user.elevation_level == "admin" and start.wait_for_success
    out = _run(start)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "order").read_text() == "command\nscript after: command\n"


def test_a_failing_user_step_fails_the_start_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = pools.start_task(user_command="echo broken >&2; exit 3")
    out = _run(start)
    assert out.returncode == 3 and "broken" in out.stderr


def test_pool_spec_composes_snakemakes_install_with_the_users_start_task(tmp_path):
    script = tmp_path / "node.sh"
    script.write_text("true\n")
    settings = ExecutorSettings(start_task="apt-get install -y samtools", start_task_script=script)
    pool_class = pools.pool_class_for(mapping.JobSpec(rule="r", jobid=1, command="x"), settings)
    files = [mapping.models.ResourceFile(http_url="https://x/node.sh?sig", file_path="node.sh")]
    spec = pools.pool_spec(pool_class, settings, "run1", snakemake_version="9.1.0", start_task_files=files)
    line = spec.start_task.command_line
    assert line.index("snakemake==9.1.0") < line.index("apt-get install -y samtools") < line.index("./node.sh")
    assert spec.start_task.resource_files == files
    only_user = pools.pool_spec(pool_class, ExecutorSettings(snakemake_install="none", start_task="echo hi"), "run1")
    assert "snakemake==" not in only_user.start_task.command_line and "echo hi" in only_user.start_task.command_line


def test_a_missing_start_task_script_is_refused():
    with pytest.raises(Exception, match="start-task-script"):
        ExecutorSettings(start_task_script="/nonexistent/setup.sh")


@pytest.mark.parametrize("text, expected", [
    ("samtools:1.19", [("samtools", "1.19")]),
    ("bwa samtools:1.19", [("bwa", None), ("samtools", "1.19")]),
    (" a:1,b:2 ", [("a", "1"), ("b", "2")]),
    ("", []),
])
def test_app_package_references(text, expected):
    assert mapping.parse_app_packages(text, "x") == expected


@pytest.mark.parametrize("bad", ["sam tools:1:2", "a:b:c", "x" * 65, "bad/name", ":1"])
def test_bad_app_package_references_are_refused_naming_where(bad):
    with pytest.raises(mapping.JobMappingError, match="rule r: resources saje_app_packages"):
        mapping.app_packages(mapping.JobSpec(rule="r", jobid=1, command="x", resources={"saje_app_packages": bad}))


def test_the_rules_version_wins_over_the_profiles():
    job = mapping.JobSpec(rule="r", jobid=1, command="true", resources={"saje_app_packages": "samtools:1.20"})
    packages = mapping.app_packages(job, "samtools:1.19 bwa")
    assert packages == [("samtools", "1.20"), ("bwa", None)]
    pool = mapping.PoolShape(pool_id="p", vm_size="Standard_D2s_v5", vcpus=2, slots_per_node=2, max_nodes=2)
    request = mapping.task_request(job, pool, mapping.TaskOptions(application_packages=packages))
    assert [(r.application_id, r.version) for r in request.application_package_references] == packages
    assert mapping.task_request(job, pool).application_package_references is None


def test_package_variables_as_linux_nodes_spell_them():
    assert package_variable("blender", "2.7") == "AZ_BATCH_APP_PACKAGE_blender_2_7"
    assert package_variable("Agent-linux-x64", "1.1.46.0") == "AZ_BATCH_APP_PACKAGE_Agent_linux_x64_1_1_46_0"
    assert package_variable("FOO") == "AZ_BATCH_APP_PACKAGE_FOO"


def test_unpack_zip_keeps_executable_modes(tmp_path):
    archive = tmp_path / "p.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("bin/tool")
        info.external_attr = 0o755 << 16
        zf.writestr(info, "#!/bin/sh\necho ok\n")
        zf.writestr("README", "plain")
    unpack_zip(archive, tmp_path / "out")
    assert subprocess.run([str(tmp_path / "out/bin/tool")], capture_output=True, text=True).stdout == "ok\n"


BATCH_SERVICE = allocation.AccountFacts("acct", "BatchService")
USER_SUBSCRIPTION = allocation.AccountFacts("acct", "UserSubscription")


def test_spot_on_a_batch_service_account_is_an_error_with_its_source():
    (finding,) = allocation.check(BATCH_SERVICE, wants_spot=True, subnet=False, shared_key=False)
    assert finding.level == "error" and "acct" in finding.message and "UserSubscription" in finding.message
    assert "learn.microsoft.com" in finding.message


def test_spot_on_a_user_subscription_account_is_fine():
    assert allocation.check(USER_SUBSCRIPTION, wants_spot=True, subnet=False, shared_key=False) == []
    assert allocation.check(BATCH_SERVICE, wants_spot=False, subnet=False, shared_key=True) == []


def test_unknown_mode_and_subnet_with_shared_key_are_warnings():
    findings = allocation.check(None, wants_spot=True, subnet=True, shared_key=True)
    assert [f.level for f in findings] == ["warning", "warning"]
    assert "Entra" in findings[1].message and "batch-virtual-network" in findings[1].message
    assert allocation.check(USER_SUBSCRIPTION, wants_spot=False, subnet=True, shared_key=False) == []


def test_job_wall_clock_setting():
    assert ExecutorSettings().job_wall_clock == datetime.timedelta(days=7)
    assert ExecutorSettings(job_max_wall_clock=0).job_wall_clock is None
    with pytest.raises(Exception, match="job-max-wall-clock"):
        ExecutorSettings(job_max_wall_clock=-1)
