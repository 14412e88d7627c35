"""`saje app upload|list`: Batch application packages, through Azure Resource Manager.

    saje app upload NAME VERSION FILE.zip [--default] (--deployment D | --resource-group RG --batch-account A)
    saje app list (--deployment D | --resource-group RG --batch-account A)

`upload` does what the portal does (azure-mgmt-batch's ApplicationOperations and
ApplicationPackageOperations): create the application if it is new, create the version (ARM
answers with a storageUrl, a SAS URL in the Batch account's auto-storage account), upload the zip
there, activate the version, and with --default make it the application's default version. A
rule then names it (`resources: saje_app_packages="NAME:VERSION"`, or --saje-app-packages) and
finds it unpacked on the node in $AZ_BATCH_APP_PACKAGE_<NAME>_<VERSION>.

The ARM connection is the setup commands' (--subscription, --managed-identity, --arm-endpoint,
--ca-bundle; the global --profile is the credential); the identity needs write access to the
Batch account (Contributor on its resource group, which `saje deploy` gives the batch identity).
"""
from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

from .common import EXIT_OK, EXIT_USAGE, CliError, Context

__all__ = ["register", "package_variable_for"]


def package_variable_for(name: str, version: str | None = None) -> str:
    from ..emulator.agent import package_variable

    return package_variable(name, version)


def _connection(ctx: Context):
    from ..setup.clients import Arm
    from .deploy import connection_config

    return Arm.from_config(connection_config(ctx.args))


def _account(ctx: Context) -> tuple[str, str]:
    """(resource group, Batch account name) from --deployment's markers or the options."""
    args = ctx.args
    if args.deployment:
        marker = Path(args.state_dir or ".saje") / "deploy" / args.deployment / "batch_account.json"
        try:
            rid = json.loads(marker.read_text())["id"]
        except (OSError, ValueError, KeyError):
            raise CliError(f"No Batch account recorded for deployment {args.deployment!r} ({marker}): run"
                           " `saje deploy` first, or give --resource-group and --batch-account.",
                           EXIT_USAGE, "NoDeployment") from None
        parts = rid.split("/")
        return parts[4], parts[8]
    if not (args.resource_group and args.batch_account):
        raise CliError("Name the Batch account: --deployment NAME, or --resource-group RG and --batch-account NAME.",
                       EXIT_USAGE, "UsageError")
    return args.resource_group, args.batch_account


def upload(ctx: Context) -> int:
    args = ctx.args
    archive = Path(args.file)
    if not archive.is_file() or not zipfile.is_zipfile(archive):
        raise CliError(f"{archive} is not a zip file: Batch application packages are .zip archives"
                       " (e.g. `cd mytool && zip -r ../mytool.zip .`).", EXIT_USAGE, "NotAZip")
    for what, value in (("application", args.name), ("version", args.version)):
        if not names_ok(value):
            raise CliError(f"The {what} {value!r} is not valid: up to 64 letters, digits, '_', '-' and '.'.",
                           EXIT_USAGE, "InvalidName")
    group, account = _account(ctx)
    arm = _connection(ctx)
    try:
        batch = arm.batch
        from azure.core.exceptions import ResourceNotFoundError
        from azure.mgmt.batch import models

        try:
            batch.application.get(group, account, args.name)
        except ResourceNotFoundError:
            ctx.out.info(f"Creating application {args.name} in Batch account {account}.")
            batch.application.create(group, account, args.name, models.Application(allow_updates=True))
        package = batch.application_package.create(group, account, args.name, args.version)
        ctx.out.info(f"Uploading {archive} ({archive.stat().st_size:,} bytes).")
        _upload(package.storage_url, archive, arm.ca_bundle)
        batch.application_package.activate(group, account, args.name, args.version,
                                           models.ActivateApplicationPackageParameters(format="zip"))
        if args.default:
            batch.application.update(group, account, args.name, models.Application(default_version=args.version))
    finally:
        arm.close()
    variable = package_variable_for(args.name, args.version)
    ctx.out.emit({"application": args.name, "version": args.version, "state": "Active", "account": account,
                  "resourceGroup": group, "default": bool(args.default), "variable": variable})
    ctx.out.print(f"Application package {args.name} {args.version} is active in Batch account {account}."
                  f" A rule uses it with resources: saje_app_packages=\"{args.name}:{args.version}\";"
                  f" on the node it is unpacked in ${variable}.")
    return EXIT_OK


def names_ok(value: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", value or ""))


def _upload(storage_url: str, archive: Path, ca_bundle: str | None) -> None:
    from azure.storage.blob import BlobClient

    kwargs = {"connection_verify": ca_bundle} if ca_bundle else {}
    with archive.open("rb") as data:
        BlobClient.from_blob_url(storage_url, **kwargs).upload_blob(data, overwrite=True)


def list_packages(ctx: Context) -> int:
    group, account = _account(ctx)
    arm = _connection(ctx)
    try:
        rows = []
        for app in arm.batch.application.list(group, account):
            for version in arm.batch.application_package.list(group, account, app.name):
                rows.append({"application": app.name, "version": version.name, "state": version.state,
                             "default": version.name == app.default_version,
                             "variable": package_variable_for(app.name, version.name)})
    finally:
        arm.close()
    ctx.out.emit({"packages": rows})
    ctx.out.table("Application packages", ["application", "version", "state", "default", "variable"],
                  [[r["application"], r["version"], r["state"], "yes" if r["default"] else "", r["variable"]]
                   for r in rows])
    return EXIT_OK


def register(commands, parents) -> None:
    from .deploy import arm_options

    app = commands.add_parser("app", help="Batch application packages (upload, list)")
    actions = app.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("upload", parents=parents, help="upload a zip as an application package version",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("name", help="application id (letters, digits, '_', '-', '.')")
    up.add_argument("version", help="version (letters, digits, '_', '-', '.')")
    up.add_argument("file", help="the .zip to upload")
    up.add_argument("--default", action="store_true", help="make this version the application's default")
    ls = actions.add_parser("list", parents=parents, help="the account's application packages")
    for p, func in ((up, upload), (ls, list_packages)):
        group = p.add_argument_group("Batch account")
        group.add_argument("--deployment", metavar="NAME", help="the account `saje deploy --name NAME` made")
        group.add_argument("--resource-group", metavar="RG", help="the Batch account's resource group")
        group.add_argument("--batch-account", metavar="NAME", help="the Batch account's name")
        arm_options(p)
        p.set_defaults(func=func)
