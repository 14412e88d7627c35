"""`saje deploy` and `saje teardown`: run the bundled workflows/deploy Snakefile.

    saje deploy --name myproj --location westeurope [--batch-principal-id OID | --batch-profile P]
    saje deploy --name myproj --dry-run          # what would be made (no Azure call)
    saje teardown --name myproj --yes            # delete what deploy made, and only that

The global --profile is the admin-level credential profile here (else DefaultAzureCredential).
Names are checked before Snakemake starts (exit 2); credential problems exit 4; a failed Azure step
exits 1 after Snakemake's own report (what was made by that run is rolled back). `--json` prints the
markers (what exists) as one document. Snakemake arguments after `--` are passed through.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, Context, confirm

WORKFLOWS = Path(os.environ.get("SAJE_WORKFLOWS_DIR") or Path(__file__).resolve().parents[2] / "workflows")


def connection_options(parser: argparse.ArgumentParser) -> None:
    group = arm_options(parser)
    group.add_argument("--cores", type=int, default=2, help=argparse.SUPPRESS)
    group.add_argument("--dry-run", "-n", action="store_true", help="show the steps, make no Azure call")
    group.add_argument("--summary", action="store_true", help="list the markers and whether each step would run")
    group.add_argument("snakemake_args", nargs="*", metavar="-- SNAKEMAKE_ARGS",
                       help="further Snakemake arguments (after --), e.g. --dag")


def arm_options(parser: argparse.ArgumentParser):
    """How a command reaches Azure Resource Manager (also `saje app`); returns the option group."""
    group = parser.add_argument_group("Azure Resource Manager")
    group.add_argument("--subscription", metavar="ID", help="subscription id (default: the admin profile's,"
                       " else $AZURE_SUBSCRIPTION_ID)")
    group.add_argument("--managed-identity", metavar="CLIENT_ID",
                       help="act as this user-assigned managed identity instead of --profile")
    group.add_argument("--arm-endpoint", metavar="URL", help="ARM endpoint (default https://management.azure.com,"
                       " or $SAJE_ARM_ENDPOINT: the emulator)")
    group.add_argument("--ca-bundle", metavar="FILE", help="CA certificate to trust (the emulator's)")
    group.add_argument("--state-dir", metavar="DIR", help="markers directory (default .saje)")
    return group


def connection_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key, attr in (("subscription_id", "subscription"), ("profile", "profile"),
                      ("credentials_file", "credentials_file"), ("managed_identity_client_id", "managed_identity"),
                      ("arm_endpoint", "arm_endpoint"), ("ca_bundle", "ca_bundle"), ("state_dir", "state_dir")):
        value = getattr(args, attr, None)
        if value:
            config[key] = str(value)
    return config


def check_connection(config: dict[str, Any]) -> None:
    """Credentials and subscription resolve (no network call): exit 4 before Snakemake starts otherwise."""
    from ..credentials import CredentialsError
    from ..setup.clients import Arm

    try:
        Arm.from_config(config)
    except CredentialsError as exc:
        raise CliError(str(exc), EXIT_CONFIG, "CredentialsError") from None


def run_workflow(ctx: Context, workflow: str, config: dict[str, Any], targets: list[str]) -> int:
    """Run workflows/<workflow>/Snakefile in this directory; Snakemake's progress goes to stderr."""
    args = ctx.args
    snakefile = WORKFLOWS / workflow / "Snakefile"
    if not snakefile.is_file():
        raise CliError(f"Bundled workflow {snakefile} not found (set SAJE_WORKFLOWS_DIR).", EXIT_CONFIG, "NoWorkflow")
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="saje-config-", delete=False) as fh:
        json.dump(config, fh)
        configfile = fh.name
    command = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--cores", str(args.cores),
               "--configfile", configfile, "--directory", os.getcwd()]
    if args.dry_run:
        command.append("--dry-run")
    if args.summary:
        command.append("--summary")
    command += list(args.snakemake_args or [])
    command += targets
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    ctx.out.info(f"running the {workflow} workflow ({snakefile})")
    try:
        done = subprocess.run(command, env=env, stdout=sys.stderr if ctx.out.json_mode else None)
    finally:
        Path(configfile).unlink(missing_ok=True)
    return EXIT_OK if done.returncode == 0 else EXIT_FAILED


def deploy_config(args: argparse.Namespace) -> dict[str, Any]:
    config = connection_config(args)
    config["name"] = args.name
    for key in ("location", "resource_group", "storage_account", "batch_account", "pool_allocation_mode", "role"):
        value = getattr(args, key, None)
        if value:
            config[key] = value
    if getattr(args, "container", None):
        config["containers"] = args.container
    principal = {k: v for k, v in (("principal_id", getattr(args, "batch_principal_id", None)),
                                   ("profile", getattr(args, "batch_profile", None)),
                                   ("managed_identity_client_id", getattr(args, "batch_managed_identity", None))) if v}
    if principal:
        config["batch_principal"] = principal
    saje_json = getattr(args, "saje_json", None) or args.credentials_file or os.environ.get("SNAKEMAKE_SAJE_CREDENTIALS_FILE")
    if saje_json:
        config["saje_json"] = str(saje_json)
    if getattr(args, "profile_credential", None):
        config["profile_credential"] = args.profile_credential
    if getattr(args, "no_rollback", False):
        config["rollback_on_error"] = False
    return config


def _plan(config: dict[str, Any]):
    from ..setup import deploy as steps
    from ..setup.clients import subscription_for
    from ..setup.names import NameRuleError

    try:
        return steps.plan(config, subscription_for(config))
    except NameRuleError as exc:
        raise CliError(f"{exc} Nothing was created.", EXIT_USAGE, "InvalidName") from None


def _emit_state(ctx: Context, plan, code: int) -> int:
    from ..setup import deploy as steps

    if ctx.out.json_mode:
        ctx.out.emit({"deployment": plan.name, "ok": code == EXIT_OK, "state_dir": str(plan.state_dir),
                      "markers": steps.summary(plan)})
    return code


def deploy(ctx: Context) -> int:
    config = deploy_config(ctx.args)
    plan = _plan(config)
    if not (ctx.args.dry_run or ctx.args.summary):
        check_connection(config)
    code = run_workflow(ctx, "deploy", config, [])
    if code == EXIT_OK and not (ctx.args.dry_run or ctx.args.summary):
        ctx.out.info(f"Next: snakemake --executor saje --workflow-profile {plan.profile_path.parent}")
    return _emit_state(ctx, plan, code)


def teardown(ctx: Context) -> int:
    config = deploy_config(ctx.args)
    plan = _plan(config)
    if not plan.state_dir.is_dir() or not any(plan.state_dir.glob("*.json")):
        ctx.out.info(f"Nothing to tear down: no markers in {plan.state_dir}/.")
        return _emit_state(ctx, plan, EXIT_OK)
    if not (ctx.args.dry_run or ctx.args.summary):
        confirm(ctx, f"Delete what deployment {plan.name!r} created (markers in {plan.state_dir}/)?")
        check_connection(config)
    code = run_workflow(ctx, "deploy", config, ["teardown"])
    return _emit_state(ctx, plan, code)


def register(commands, parents) -> None:
    p = commands.add_parser("deploy", parents=parents, help="create the Azure resources SAJE needs (workflows/deploy)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _deploy_options(p)
    p.set_defaults(func=deploy)
    t = commands.add_parser("teardown", parents=parents, help="delete what `saje deploy` created, and only that",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _deploy_options(t)  # the same options as deploy, so one command line serves both; the markers decide
    t.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    t.set_defaults(func=teardown)


def _deploy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="saje", help="the deployment: names the state dir, profile and saje.json entry")
    p.add_argument("--location", help="Azure region (default westeurope)")
    p.add_argument("--resource-group", help="default <name>-rg")
    p.add_argument("--storage-account", help="3-24 lower-case letters/digits, unique in Azure (default derived)")
    p.add_argument("--batch-account", help="3-24 lower-case letters/digits, unique in the region (default derived)")
    p.add_argument("--container", action="append", help="blob container (repeatable; default snakemake)")
    p.add_argument("--pool-allocation-mode", choices=("BatchService", "UserSubscription"))
    p.add_argument("--role", help="role of the batch-level identity on the group (default Contributor)")
    p.add_argument("--batch-principal-id", metavar="OID", help="object id of the batch-level identity")
    p.add_argument("--batch-profile", metavar="NAME", help="batch-level saje.json profile (its service principal)")
    p.add_argument("--batch-managed-identity", metavar="CLIENT_ID", help="batch-level user-assigned managed identity")
    p.add_argument("--saje-json", metavar="FILE", help="where to write the profile's credential entry"
                   " (default: --credentials-file, else ~/.azure/saje.json)")
    p.add_argument("--profile-credential", choices=("auto", "shared-key", "service-principal", "none"))
    p.add_argument("--no-rollback", action="store_true", help="keep what a failed run made (markers record it)")
    connection_options(p)
