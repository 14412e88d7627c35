"""The `saje` command's pure parts: parsing, credential settings, pool specs, formatting, costs."""
from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from snakemake_executor_saje import cli
from snakemake_executor_saje.commands import common, job, output, pool, status


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


# ----------------------------------------------------------------------------- parsing
def test_global_options_before_or_after_the_command():
    before = parse("--json", "--profile", "batch", "pool", "list")
    after = parse("pool", "list", "--json", "--profile", "batch")
    for args in (before, after):
        assert args.json is True and args.profile == "batch" and args.func is pool.list_
    plain = parse("pool", "list")
    assert plain.json is False and plain.profile is None and plain.account_url is None


def test_every_group_is_registered():
    for argv, func in [(("pool", "create", "p"), pool.create), (("pool", "resize", "p", "--nodes", "1"), pool.resize),
                       (("pool", "delete", "p", "--yes"), pool.delete), (("job", "list"), job.list_),
                       (("job", "status", "j"), job.status), (("job", "logs", "j", "t1", "t2"), job.logs),
                       (("job", "delete", "j", "-y"), job.delete), (("status",), status.status)]:
        assert parse(*argv).func is func


def test_emulator_commands_still_parse():
    args = parse("emulator", "run", "--data-dir", "D", "--node-boot-seconds", "0.5", "--", "snakemake", "--json")
    assert args.raw and args.command == ["--", "snakemake", "--json"] and args.node_boot_seconds == 0.5
    assert parse("emulator", "start", "--port", "1234").port == 1234
    assert parse("emulator", "start").time_scale == 60 and parse("emulator", "run", "--time-scale", "600").time_scale == 600
    with pytest.raises(SystemExit):
        parse("emulator", "start", "--time-scale", "0")
    assert callable(cli.client_environment)


@pytest.mark.parametrize("argv", [("pool",), ("pool", "create"), ("pool", "create", "p", "--nodes", "2", "--autoscale"),
                                  ("job", "logs"), ("bogus",)])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == common.EXIT_USAGE


def test_logs_defaults():
    args = parse("job", "logs", "j")
    assert args.task_ids == [] and args.dir == Path("saje-logs") and not args.all and args.file is None
    assert job.log_dir(args.dir, "j", "t") == Path("saje-logs/j/t")


# ----------------------------------------------------------------------------- credentials
ENV = {"SNAKEMAKE_SAJE_ACCOUNT_URL": "http://127.0.0.1:1/acct", "SNAKEMAKE_SAJE_ACCOUNT_NAME": "acct",
       "SNAKEMAKE_SAJE_ACCOUNT_KEY": "c2VjcmV0"}


def test_settings_from_environment():
    s = common.batch_settings(parse("pool", "list"), ENV)
    assert (s.account_url, s.account_name, s.account_key, s.credential_profile) == (
        "http://127.0.0.1:1/acct", "acct", "c2VjcmV0", None)
    assert "c2VjcmV0" not in repr(s)


def test_explicit_profile_wins_over_the_environment():
    s = common.batch_settings(parse("--profile", "azure", "pool", "list"), ENV)
    assert s.credential_profile == "azure" and s.account_name is None and s.account_key is None
    assert s.account_url is None
    s = common.batch_settings(parse("--profile", "azure", "--account-url", "https://x", "pool", "list"), ENV)
    assert s.account_url == "https://x"


def test_profile_from_the_environment_keeps_the_environment_key():
    s = common.batch_settings(parse("pool", "list"), {**ENV, "SNAKEMAKE_SAJE_CREDENTIAL_PROFILE": "p",
                                                      "SNAKEMAKE_SAJE_CREDENTIALS_FILE": "/tmp/c.json"})
    assert s.credential_profile == "p" and s.account_key == "c2VjcmV0" and str(s.credentials_file) == "/tmp/c.json"


def test_missing_endpoint_is_a_config_error(capsys):
    rc = common.run_command(pool.list_, SimpleNamespace(json=True, profile=None, account_url=None,
                                                        credentials_file=None))
    assert rc == common.EXIT_CONFIG
    err = json.loads(capsys.readouterr().out)["error"]
    assert err["exit_code"] == 4 and "--account-url" in err["message"] and "--saje-" not in err["message"]


def test_batch_errors_map_to_exit_codes():
    from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError, ServiceRequestError

    assert common.batch_error(ResourceNotFoundError("gone")).exit_code == common.EXIT_NOT_FOUND
    assert common.batch_error(ClientAuthenticationError("no token")).exit_code == common.EXIT_CONFIG
    assert common.batch_error(ServiceRequestError("refused")).exit_code == common.EXIT_FAILED
    insecure = common.batch_error(ServiceRequestError(
        "Bearer token authentication is not permitted for non-TLS protected (non-https) URLs."))
    assert insecure.exit_code == common.EXIT_CONFIG and "https" in insecure.message
    default = common.batch_error(ClientAuthenticationError(
        "DefaultAzureCredential failed to retrieve a token\nAttempted credentials:\n\tAzureCliCredential: not found"))
    assert default.exit_code == common.EXIT_CONFIG and "AzureCliCredential" in default.message


# ----------------------------------------------------------------------------- pool specs
def create_args(*extra: str):
    return parse("pool", "create", "mypool", *extra)


def test_fixed_pool_uses_the_executors_builder():
    args = create_args("--nodes", "3", "--vm-size", "standard_d4s_v5")
    pool.check_create_args(args)
    spec = pool.build_pool(args)
    assert spec.id == "mypool" and spec.vm_size == "Standard_D4s_v5"
    assert (spec.target_dedicated_nodes, spec.target_low_priority_nodes) == (3, 0)
    assert not spec.enable_auto_scale and spec.task_slots_per_node == 4 and spec.start_task is None
    assert spec.virtual_machine_configuration.node_agent_sku_id == "batch.node.ubuntu 24.04"
    assert spec.task_scheduling_policy.node_fill_type == "pack"


def test_default_is_one_node_and_spot_goes_to_low_priority():
    spec = pool.build_pool(create_args("--spot"))
    assert (spec.target_dedicated_nodes, spec.target_low_priority_nodes) == (0, 1)


def test_mpi_pool_fixed_nodes():
    spec = pool.build_pool(create_args("--mpi", "--nodes", "2"))
    assert spec.vm_size == "Standard_HB120rs_v3" and spec.enable_inter_node_communication is True
    assert spec.task_slots_per_node == 1 and spec.target_dedicated_nodes == 2 and not spec.enable_auto_scale
    assert spec.virtual_machine_configuration.image_reference.offer == "ubuntu-hpc"


def test_mpi_pool_autoscale_and_limits():
    spec = pool.build_pool(create_args("--mpi", "--autoscale", "--max", "3"))
    assert spec.enable_auto_scale and "min(3," in spec.auto_scale_formula and "$ActiveTasks" in spec.auto_scale_formula
    from snakemake_executor_saje.pools import PoolSpecError

    with pytest.raises(PoolSpecError):
        pool.build_pool(create_args("--mpi", "--nodes", "101"))


def test_autoscale_pool():
    spec = pool.build_pool(create_args("--autoscale", "--min", "1", "--max", "5", "--autoscale-interval", "7"))
    assert spec.enable_auto_scale and spec.target_dedicated_nodes is None
    assert "max(1, min(5," in spec.auto_scale_formula
    assert spec.auto_scale_evaluation_interval == dt.timedelta(minutes=7)


def test_start_task_and_snakemake_install():
    spec = pool.build_pool(create_args("--start-task", "echo hi"))
    assert spec.start_task.command_line == "/bin/bash -c 'echo hi'" and spec.start_task.wait_for_success
    assert spec.start_task.user_identity.auto_user.elevation_level == "admin"
    spec = pool.build_pool(create_args("--install-snakemake", "9.1.0"))
    assert "snakemake==9.1.0" in spec.start_task.command_line
    both = pool.build_pool(create_args("--install-snakemake", "9.1.0", "--start-task", "echo hi")).start_task.command_line
    assert both.index("snakemake==9.1.0") < both.index("echo hi")


@pytest.mark.parametrize("extra", [("--min", "1"), ("--max", "2"), ("--autoscale", "--min", "3", "--max", "2"),
                                   ("--mpi", "--slots", "4"), ("--mpi", "--autoscale", "--min", "1"),
                                   ("--slots", "0"), ("--nodes", "-1"), ("--autoscale", "--autoscale-interval", "1"),
                                   ("--autoscale", "--autoscale-interval", "10081")])
def test_create_usage_errors(extra):
    with pytest.raises(common.CliError) as exc:
        pool.check_create_args(create_args(*extra))
    assert exc.value.exit_code == common.EXIT_USAGE


def _pool_model(**kw):
    from azure.batch import models

    base = dict(id="p", vm_size="standard_d2s_v5", state="active", allocation_state="steady",
                current_dedicated_nodes=1, target_dedicated_nodes=2, current_low_priority_nodes=0,
                target_low_priority_nodes=0, enable_auto_scale=False, task_slots_per_node=2)
    base.update(kw)
    return models.BatchPool(**base)


def test_pool_summary_and_row():
    from azure.batch import models

    summary = pool.pool_summary(_pool_model(resize_errors=[models.ResizeError(code="AccountCoreQuotaReached",
                                                                               message="quota")]))
    assert summary["resizeErrors"] == [{"code": "AccountCoreQuotaReached", "message": "quota"}]
    assert pool.pool_row(summary)[:6] == ["p", "standard_d2s_v5", "active", "steady", "1/2", "0/0"]


def test_problems_name_batch_codes():
    summary = pool.pool_summary(_pool_model())
    failed = SimpleNamespace(id="n1", state="starttaskfailed", errors=None, start_task_info=SimpleNamespace(
        exit_code=3, failure_info=SimpleNamespace(code="FailureExitCode", message="exit code 3")))
    unusable = SimpleNamespace(id="n2", state="unusable", start_task_info=None,
                               errors=[SimpleNamespace(code="DiskFull", message="disk full")])
    idle = SimpleNamespace(id="n3", state="idle", start_task_info=None, errors=None)
    found = pool.problems(summary, [failed, unusable, idle])
    assert [(p["node"], p["code"]) for p in found] == [("n1", "FailureExitCode"), ("n2", "DiskFull")]
    assert found[0]["exitCode"] == 3


def test_settled():
    from collections import Counter

    steady = {"allocationState": "steady"}
    assert pool.settled(steady, Counter(idle=2, starttaskfailed=1))
    assert not pool.settled(steady, Counter(idle=1, starting=1))
    assert not pool.settled({"allocationState": "resizing"}, Counter(idle=2))


# ----------------------------------------------------------------------------- jobs
def test_failed_task_and_counts():
    from azure.batch import models

    done = models.BatchTask(id="t1", state="completed", execution_info=models.BatchTaskExecutionInfo(
        retry_count=0, requeue_count=0, exit_code=2, result="failure",
        failure_info=models.BatchTaskFailureInfo(category="usererror", code="FailureExitCode", message="bad\nmore")))
    ok = models.BatchTask(id="t2", state="completed", execution_info=models.BatchTaskExecutionInfo(
        retry_count=0, requeue_count=0, exit_code=0, result="success"))
    assert job.failed_task(done) == {"id": "t1", "exitCode": 2, "failureCode": "FailureExitCode",
                                     "failureMessage": "bad", "node": None, "pool": None}
    assert job.failed_task(ok) is None
    counts = job.task_counts(SimpleNamespace(task_counts=SimpleNamespace(active=1, running=2, completed=3,
                                                                          succeeded=2, failed=1)))
    assert counts == {"active": 1, "running": 2, "completed": 3, "succeeded": 2, "failed": 1}


# ----------------------------------------------------------------------------- output
def test_formatting_helpers():
    assert output.fmt_counts({"idle": 2, "running": 3, "starting": 0}) == "3 running, 2 idle"
    assert output.fmt_counts({}) == "-"
    assert output.fmt_money(None) == "unknown" and output.fmt_money(0.1925) == "0.193 USD"
    assert output.fmt_value(None) == "-" and output.fmt_value(True) == "yes"
    when = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
    assert output.to_jsonable({"t": when, "d": dt.timedelta(minutes=1)}) == {"t": "2025-06-01T12:00:00Z", "d": 60.0}


def test_json_mode_writes_exactly_one_document():
    buf, err = io.StringIO(), io.StringIO()
    out = output.Output(json_mode=True, stdout=buf, stderr=err)
    out.table("t", ["a"], [[1]])
    out.print("people only")
    out.emit({"a": 1})
    out.error("boom [not markup]", 1, "X")  # after a document: stderr only
    assert json.loads(buf.getvalue()) == {"a": 1}
    assert "boom [not markup]" in err.getvalue()


def test_table_for_people():
    buf = io.StringIO()
    out = output.Output(stdout=buf, stderr=io.StringIO())
    out.table("Pools", ["id", "size"], [["a-very-long-pool-id-that-should-not-fold", "Standard_HB120rs_v3"]])
    out.table("Jobs", ["id"], [])
    text = buf.getvalue()
    assert "a-very-long-pool-id-that-should-not-fold" in text and "Jobs: none" in text


def test_ids_stay_whole_in_a_narrow_terminal():
    """An 80-column terminal (or a COLUMNS a parent set) and a wide table: the other columns give
    way, the id column is never folded (ids are read and copied)."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=80)
    columns = ["id", "vm size", "state", "allocation", "dedicated", "spot", "autoscale", "slots", "USD/hour"]
    console.print(output.table("Pools", columns, [["cli-people-031943-54", "standard_d2s_v3", "active", "steady",
                                                    "1 idle", "-", "no", 1, "0.096 USD"]]))
    assert "cli-people-031943-54" in console.file.getvalue()


# ----------------------------------------------------------------------------- costs
def test_states_and_billing():
    states = status.states_of(SimpleNamespace(as_dict=lambda: {"idle": 2, "startTaskFailed": 1, "preempted": 3,
                                                                "total": 6, "running": 0}))
    assert states == {"idle": 2, "starttaskfailed": 1, "preempted": 3}
    assert status.billed(states) == 3


def test_cost_known_unknown_and_zero():
    from snakemake_executor_saje import catalogue

    price = catalogue.hourly_price("Standard_D2s_v5")
    c = status.pool_cost("standard_d2s_v5", 2, 1)
    assert c["dedicatedPerHour"] == pytest.approx(2 * price)
    assert c["spotPerHour"] is None  # spot prices are not tabulated: unknown, not zero
    idle = status.pool_cost("Standard_D2s_v5", 0, 0)
    assert idle["dedicatedPerHour"] == 0.0 and idle["spotPerHour"] == 0.0
    unknown_size = status.pool_cost("Standard_Imaginary_v9", 1, 0)
    total = status.cost_total([c, idle, unknown_size])
    assert total["totalPerHour"] is None and total["nodesWithUnknownPrice"] == 2
    assert total["knownPerHour"] == pytest.approx(2 * price)
    assert status.cost_total([idle])["totalPerHour"] == 0.0


def test_price_table_names_date_and_source():
    info = status.price_table()
    assert info["date"] and info["region"] and info["currency"] and "prices.azure.com" in info["source"]
