"""`saje image create` and `saje image test`: run the bundled workflows/image Snakefile.

    saje image create --deployment myproj --image-version 1.0.0 [--base-image almalinux-hpc]
                      [--mpi-flavor openmpi] [--packages-file packages.yaml] [--vm-size Standard_HB120rs_v3]
    saje image test   --deployment myproj --image-version 1.0.0      # 2-node pool, MPI benchmark, report

The global --profile is the admin-level credential profile. Exit codes as for `saje deploy`: 2 for a
name or option Azure would refuse, 4 for credentials, 1 when a step failed (the build VM and its disk
are deleted whatever happened; the test pool too). `--json` prints the version marker (create) or
the test report (test).
"""
from __future__ import annotations

import argparse
from typing import Any

from .common import EXIT_OK, EXIT_USAGE, CliError, Context
from .deploy import check_connection, connection_config, connection_options, run_workflow


def image_config(args: argparse.Namespace) -> dict[str, Any]:
    config = connection_config(args)
    config["deployment"] = args.deployment
    for key in ("resource_group", "location", "batch_account", "base_image", "node_agent_sku", "vm_size", "gallery",
                "image_definition", "image_version", "mpi_source", "packages_file", "snakemake_version", "python",
                "subnet_id", "test_vm_size", "fabric"):
        value = getattr(args, key, None)
        if value:
            config[key] = str(value)
    if args.mpi_flavor:
        config["mpi_flavors"] = args.mpi_flavor
    if getattr(args, "nodes", None):
        config["test_nodes"] = int(args.nodes)
    return config


def _plan(config: dict[str, Any]):
    from ..setup.image import image_plan
    from ..setup.names import NameRuleError

    try:
        return image_plan(config)
    except NameRuleError as exc:
        raise CliError(f"{exc} Nothing was created.", EXIT_USAGE, "InvalidName") from None


def _run(ctx: Context, target: str, result: str) -> int:
    from ..setup.markers import read_marker

    config = image_config(ctx.args)
    plan = _plan(config)
    if not (ctx.args.dry_run or ctx.args.summary):
        check_connection(config)
    code = run_workflow(ctx, "image", config, [target])
    if ctx.out.json_mode:
        ctx.out.emit({"image": f"{plan.definition}/{plan.version}", "ok": code == EXIT_OK,
                      "state_dir": str(plan.state_dir), result: read_marker(plan.state_dir / f"{result}.json")})
    elif code == EXIT_OK and target == "test" and not ctx.args.dry_run:
        ctx.out.info(f"report: {plan.state_dir / 'test-report.txt'}")
    return code


def create(ctx: Context) -> int:
    return _run(ctx, "all", "version")


def test(ctx: Context) -> int:
    return _run(ctx, "test", "test-report")


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deployment", default="saje", help="the deployment whose group, region and Batch account to use")
    p.add_argument("--resource-group")
    p.add_argument("--location")
    p.add_argument("--batch-account")
    p.add_argument("--base-image", help="ubuntu-hpc (default), ubuntu-hpc-2204, almalinux-hpc or publisher:offer:sku")
    p.add_argument("--node-agent-sku")
    p.add_argument("--vm-size", help="RDMA size of the build VM and the test pool (default Standard_HB120rs_v3)")
    p.add_argument("--gallery")
    p.add_argument("--image-definition")
    p.add_argument("--image-version", help="Major.Minor.Patch (default 1.0.0)")
    p.add_argument("--mpi-flavor", action="append", choices=("openmpi", "mpich", "hpcx", "intelmpi"),
                   help="repeatable; the first owns mpirun (default openmpi)")
    p.add_argument("--mpi-source", choices=("pypi", "system"))
    p.add_argument("--packages-file", help="YAML with apt, dnf, pip and script lists")
    p.add_argument("--snakemake-version", help="default: this Snakemake's version")
    p.add_argument("--python", help="interpreter pip runs with on the build VM (default python3)")
    p.add_argument("--subnet-id")
    p.add_argument("--nodes", type=int, help="test pool nodes (default 2)")
    p.add_argument("--test-vm-size")
    p.add_argument("--fabric", choices=("auto", "infiniband", "tcp"))
    connection_options(p)


def register(commands, parents) -> None:
    image = commands.add_parser("image", parents=parents, help="build and test an RDMA/MPI node image (workflows/image)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    c = sub.add_parser("create", parents=parents, help="build the image into a Compute Gallery")
    _options(c)
    c.set_defaults(func=create)
    t = sub.add_parser("test", parents=parents, help="run an MPI benchmark on a 2-node pool from the image")
    _options(t)
    t.set_defaults(func=test)
