"""ExecutorSettings as Snakemake's plugin machinery sees it."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

import pytest
from snakemake_interface_common.exceptions import WorkflowError

from snakemake_executor_saje.settings import ExecutorSettings, common_settings


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


@pytest.mark.parametrize(
    "name",
    ["account_url", "credential_profile", "account_name", "account_key",
     "container_registry_password", "storage_account_url", "credentials_file"],
)
def test_env_var_fields(name):
    f = {f.name: f for f in fields(ExecutorSettings)}[name]
    assert f.metadata.get("env_var") is True


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
        ({"snakemake_install": "container"}, "container-image"),
        ({"mpi_flavor": "lam"}, "mpi-flavor"),
        ({"task_slots_per_node": 0}, "task-slots"),
        ({"max_wall_clock": 0}, "wall-clock"),
        ({"poll_interval": 0}, "poll-interval"),
    ],
)
def test_invalid_settings(kwargs, fragment):
    with pytest.raises(WorkflowError, match=fragment):
        ExecutorSettings(**kwargs)


def test_emulator_may_use_short_autoscale_interval():
    assert ExecutorSettings(autoscale_interval=0.1).autoscale_interval == 0.1


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
         "--saje-autoscale-interval", "0.5", "--saje-mpi-flavor", "mpich"]
    )
    settings = plugin.get_settings(args)
    assert settings.vm_size == "Standard_D4s_v5"
    assert settings.nodes == 2
    assert settings.spot is True
    assert settings.autoscale_interval == 0.5
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
