"""ExecutorSettings as Snakemake's plugin machinery sees it."""

from __future__ import annotations

import argparse
import os
import re
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
from snakemake_interface_common.exceptions import WorkflowError

from snakemake_executor_saje.settings import ENV_PREFIX, ExecutorSettings, _shown_default, common_settings, env_var

REPO = Path(__file__).resolve().parents[2]


def test_every_field_has_default_and_help():
    for f in fields(ExecutorSettings):
        assert f.default is not MISSING or f.default_factory is not MISSING, f.name
        assert f.metadata.get("help"), f.name


def test_defaults():
    s = ExecutorSettings()
    assert s.vm_size == "Standard_D2s_v5"
    assert s.mpi_vm_size == "Standard_HB120rs_v3"
    assert s.mpi_image == "microsoft-dsvm:ubuntu-hpc:2404"
    assert s.snakemake_install == "pip"
    assert s.autoscale and s.nodes is None
    assert s.min_nodes == 0
    assert not s.spot and not s.keep_pool and not s.mpi_allow_spot
    assert str(s.credentials_file) == "~/.azure/saje.json"


def test_bool_fields_default_false():
    # Snakemake turns a True default into a --no-... flag with an unprefixed dest.
    for f in fields(ExecutorSettings):
        if f.type is bool:
            assert f.default is False, f.name


FIELDS = fields(ExecutorSettings)


def test_every_field_has_an_environment_variable():
    for f in FIELDS:
        assert f.metadata.get("env_var") is True, f.name


def _sample(f, tmp_path):
    """A valid value for `f` other than its default: (text of the variable, parsed value)."""
    if f.type is bool:
        return "true", True
    choices = [c for c in f.metadata.get("choices") or [] if c != f.default and c != "container"]
    if choices:
        return choices[0], choices[0]
    base = typing.get_args(f.type)[0] if typing.get_origin(f.type) is typing.Union else f.type
    if base is int:
        return str((f.default or 0) + 3), (f.default or 0) + 3
    if base is float:
        return f"{(f.default or 0) + 1.5}", (f.default or 0) + 1.5
    if base is Path:
        script = tmp_path / f"{f.name}.sh"
        script.write_text("echo hi\n")
        return str(script), script
    assert base is str, f"no sample for {f.name}: {f.type}"
    parsed = {  # values SAJE parses: an entry it can mount, an identity's ARM id
        "mounts": "data=nfs://10.0.0.4/exports/data",
        "node_identity": "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/n",
    }
    if f.name in parsed:
        return parsed[f.name], parsed[f.name]
    return f"sample-{f.name}", f"sample-{f.name}"


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_every_setting_comes_from_its_variable_through_snakemakes_parser(f, tmp_path, monkeypatch):
    """`snakemake --executor saje` with only SNAKEMAKE_SAJE_<NAME> set: Snakemake's own argument
    parser (configargparse) and the plugin interface turn it into the setting."""
    from snakemake.cli import parse_args
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    text, expected = _sample(f, tmp_path)
    monkeypatch.setenv(env_var(f.name), text)
    monkeypatch.chdir(tmp_path)  # no workflow profile found by accident
    _, args = parse_args(["--executor", "saje", "--cores", "1"])
    settings = ExecutorPluginRegistry().get_plugin("saje").get_settings(args)
    assert getattr(settings, f.name) == expected
    assert getattr(settings, f.name) != f.default


def test_false_from_the_environment_keeps_a_flag_off(monkeypatch, tmp_path):
    from snakemake.cli import parse_args
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    monkeypatch.setenv("SNAKEMAKE_SAJE_KEEP_POOL", "false")
    monkeypatch.chdir(tmp_path)
    _, args = parse_args(["--executor", "saje"])
    assert ExecutorPluginRegistry().get_plugin("saje").get_settings(args).keep_pool is False


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_help_states_the_default_and_the_variable(f):
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    text = f.metadata["help"]
    variable = ExecutorPluginRegistry().get_plugin("saje").get_envvar(f.name)
    assert variable == env_var(f.name)
    assert text.endswith(f"   [env var: {variable}]"), text
    assert text.count("(default: ") == 1 and "Default:" not in text, text
    if f.default is not None and not f.metadata.get("default_text"):
        assert f"(default: {_shown_default(f)})" in text


def test_snakemake_help_shows_each_variable_once():
    from snakemake.cli import get_argument_parser

    text = " ".join(get_argument_parser().format_help().split())
    for f in FIELDS:
        assert text.count(f"[env var: {env_var(f.name)}]") == 1, f.name


def test_help_links_resolve():
    """Every docs/... page (and #anchor) a help text names exists."""
    from tests.unit.test_catalog import check_link

    for f in FIELDS:
        for target in re.findall(r"docs/[\w.-]+\.md(?:#[\w-]+)?", f.metadata["help"]):
            assert check_link(REPO / target) is None, (f.name, target)


def test_secrets_never_in_repr():
    s = ExecutorSettings(account_name="acct", account_key="KEY-sekrit-123",
                         container_registry_password="PW-sekrit-456")
    assert "sekrit" not in repr(s)
    assert "sekrit" not in str(s)
    secret_fields = {f.name for f in fields(ExecutorSettings) if not f.repr}
    assert secret_fields == {"account_key", "container_registry_password"}
    for name in secret_fields:
        f = {f.name: f for f in fields(ExecutorSettings)}[name]
        assert f.default is None
        assert "environment" in f.metadata["help"]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"min_nodes": 3, "max_nodes": 2}, "max-nodes"),
        ({"nodes": -1}, "--saje-nodes"),
        ({"mpi_max_nodes": 101}, "100"),
        ({"mpi_max_nodes": 0}, "mpi-max-nodes"),
        ({"autoscale_interval": 0}, "autoscale-interval"),
        ({"snakemake_install": "conda"}, "snakemake-install"),
        ({"container_type": "podman"}, "container-type"),
        ({"mpi_flavor": "lam"}, "mpi-flavor"),
        ({"task_slots_per_node": 0}, "task-slots"),
        ({"max_wall_clock": 0}, "wall-clock"),
        ({"poll_interval": 0}, "poll-interval"),
    ],
)
def test_invalid_settings(kwargs, fragment):
    with pytest.raises(WorkflowError, match=fragment):
        ExecutorSettings(**kwargs)


@pytest.mark.parametrize("account_url", ["http://127.0.0.1:8123/sajelocal", "https://acct.westeurope.batch.azure.com"])
def test_autoscale_interval_range_is_azures_whatever_the_endpoint(account_url):
    """5 minutes to 168 hours, for the emulator on loopback as for Azure: SAJE sends both the same."""
    for minutes in (0.1, 4.99, 10080.5):
        with pytest.raises(WorkflowError, match="between 5 minutes and 168 hours"):
            ExecutorSettings(account_url=account_url, autoscale_interval=minutes)
    for minutes in (5, 10080):
        assert ExecutorSettings(account_url=account_url, autoscale_interval=minutes).autoscale_interval == minutes


def test_fixed_nodes_disable_autoscale():
    assert not ExecutorSettings(nodes=3).autoscale


def test_common_settings():
    c = common_settings
    assert c.non_local_exec and c.implies_no_shared_fs
    assert c.job_deploy_sources
    assert c.pass_envvar_declarations_to_cmd is False  # secrets go via environmentSettings
    assert c.auto_deploy_default_storage_provider is False
    assert c.can_transfer_local_files is True
    assert c.pass_default_storage_provider_args and c.pass_default_resources_args


def _plugin():
    from snakemake_interface_common.plugin_registry.plugin import PluginBase

    class Plugin(PluginBase):
        name = "saje"
        cli_prefix = "saje"
        settings_cls = ExecutorSettings

    return Plugin()


def test_registers_with_snakemake_argparse_and_env(monkeypatch):
    import configargparse

    plugin = _plugin()
    parser = configargparse.ArgumentParser()
    plugin.register_cli_args(parser, "executor")
    monkeypatch.setenv("SNAKEMAKE_SAJE_ACCOUNT_URL", "http://127.0.0.1:1/acct")
    args = parser.parse_args(
        ["--saje-vm-size", "Standard_D4s_v5", "--saje-nodes", "2", "--saje-spot",
         "--saje-autoscale-interval", "7.5", "--saje-mpi-flavor", "mpich"]
    )
    settings = plugin.get_settings(args)
    assert settings.vm_size == "Standard_D4s_v5"
    assert settings.nodes == 2
    assert settings.spot is True
    assert settings.autoscale_interval == 7.5
    assert settings.mpi_flavor == "mpich"
    assert settings.account_url == "http://127.0.0.1:1/acct"
    assert plugin.get_envvar("account_key") == "SNAKEMAKE_SAJE_ACCOUNT_KEY"


def test_choices_are_enforced_by_the_parser():
    import configargparse

    parser = configargparse.ArgumentParser()
    _plugin().register_cli_args(parser, "executor")
    with pytest.raises(SystemExit):
        parser.parse_args(["--saje-snakemake-install", "conda"])


def test_plain_argparse_namespace_defaults():
    plugin = _plugin()
    names = {f"saje_{f.name}": None for f in fields(ExecutorSettings)}
    settings = plugin.get_settings(argparse.Namespace(**names))
    assert settings == ExecutorSettings()
