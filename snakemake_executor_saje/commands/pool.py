"""`saje pool create|list|resize|delete`: one or a few Batch calls each.

`create` builds the pool with pools.pool_spec (the executor's own builder), so a pool made by
hand has the executor's image/node-agent choice, slot packing and MPI settings; `--wait`
follows allocation and node states until the pool is steady and reports resize errors and
start-task failures with their Batch codes.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any, Iterable

from ..runs import metadata_dict
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, Context, confirm, deletion_options, wait_gone, wait_options
from .output import fmt_counts, fmt_current_target, state_name

# Node states a pool passes through on its way to being usable (or gone).
TRANSITIONAL_NODE_STATES = frozenset({
    "creating", "starting", "waitingforstarttask", "rebooting", "reimaging", "leavingpool",
    "deallocating", "upgradingos",
})
READY_NODE_STATES = frozenset({"idle", "running"})


# ----------------------------------------------------------------------------- pure parts
def pool_summary(pool: Any) -> dict[str, Any]:
    """What `pool list` and the other pool commands show of a pool, as plain values."""
    return {
        "id": pool.id,
        "vmSize": pool.vm_size,
        "state": state_name(pool.state),
        "allocationState": state_name(pool.allocation_state),
        "currentDedicatedNodes": pool.current_dedicated_nodes or 0,
        "targetDedicatedNodes": pool.target_dedicated_nodes or 0,
        "currentSpotNodes": pool.current_low_priority_nodes or 0,
        "targetSpotNodes": pool.target_low_priority_nodes or 0,
        "enableAutoScale": bool(pool.enable_auto_scale),
        "taskSlotsPerNode": pool.task_slots_per_node,
        "interNodeCommunication": bool(pool.enable_inter_node_communication),
        "resizeErrors": [{"code": e.code, "message": e.message} for e in (pool.resize_errors or [])],
        "metadata": metadata_dict(pool.metadata),  # saje-run, saje-workdir, saje-heartbeat, ... (runs.py)
    }


POOL_COLUMNS = ("id", "vm size", "state", "allocation", "dedicated", "spot", "autoscale", "slots", "mpi")


def pool_row(summary: dict[str, Any]) -> list[Any]:
    return [
        summary["id"], summary["vmSize"], summary["state"], summary["allocationState"],
        fmt_current_target(summary["currentDedicatedNodes"], summary["targetDedicatedNodes"]),
        fmt_current_target(summary["currentSpotNodes"], summary["targetSpotNodes"]),
        summary["enableAutoScale"], summary["taskSlotsPerNode"], summary["interNodeCommunication"],
    ]


def spec_settings(args: argparse.Namespace) -> SimpleNamespace:
    """The settings-like object pools.pool_spec reads, from `pool create` arguments.

    Defaults are the executor's (ExecutorSettings): an HTC size and Ubuntu image, or with
    --mpi an RDMA size and the Ubuntu HPC image.
    """
    from ..settings import ExecutorSettings

    defaults = {f: getattr(ExecutorSettings, f) for f in ("vm_size", "image", "mpi_vm_size", "mpi_image")}
    vm_size = args.vm_size or (defaults["mpi_vm_size"] if args.mpi else defaults["vm_size"])
    image = args.image or (defaults["mpi_image"] if args.mpi else defaults["image"])
    max_nodes = args.max if args.max is not None else (4 if args.mpi else 10)
    return SimpleNamespace(
        vm_size=vm_size, image=image, node_agent_sku=args.node_agent_sku,
        mpi_vm_size=vm_size, mpi_image=image, mpi_node_agent_sku=args.node_agent_sku,
        task_slots_per_node=args.slots, nodes=None,
        min_nodes=args.min or 0, max_nodes=max_nodes, mpi_max_nodes=max_nodes,
        autoscale_formula=args.formula, autoscale_interval=args.autoscale_interval,
        spot=args.spot, mpi_allow_spot=args.spot,
        subnet_id=args.subnet_id,
        snakemake_install="pip" if args.install_snakemake else "none",
        start_task=args.start_task,
        container_image=args.container_image, container_type="dockerCompatible", container_registry=None,
        container_registry_username=None, container_registry_password=None,
    )


def check_create_args(args: argparse.Namespace) -> None:
    """Usage errors (exit 2) that argparse cannot express."""
    def usage(message: str) -> None:
        raise CliError(message, EXIT_USAGE, "UsageError")

    if not args.autoscale:
        for flag, value in (("--min", args.min), ("--max", args.max), ("--formula", args.formula)):
            if value is not None:
                usage(f"{flag} applies to autoscale pools; add --autoscale (or use --nodes N).")
        if args.nodes is not None and args.nodes < 0:
            usage(f"--nodes must be >= 0, got {args.nodes}")
    else:
        low, high = args.min or 0, args.max if args.max is not None else (4 if args.mpi else 10)
        if low < 0 or high < low:
            usage(f"autoscale bounds must satisfy 0 <= --min <= --max, got {low} and {high}")
        if args.mpi and low:
            usage("MPI pools autoscale from 0 (an idle MPI pool keeps no nodes); drop --min.")
    if args.mpi and args.slots not in (None, 1):
        usage(f"MPI pools have one task slot per node (inter-node communication); got --slots {args.slots}")
    if args.slots is not None and args.slots < 1:
        usage(f"--slots must be >= 1, got {args.slots}")
    if args.autoscale:
        from ..settings import autoscale_interval_problem

        problem = autoscale_interval_problem(args.autoscale_interval, "--autoscale-interval")
        if problem:
            usage(problem)
    if not 0 < args.timeout:
        usage(f"--timeout must be > 0 minutes, got {args.timeout}")


def build_pool(args: argparse.Namespace):
    """BatchPoolCreateOptions for `pool create`, through pools.pool_spec (which also composes the
    start task: the Snakemake install, then --start-task)."""
    from .. import catalogue, pools

    settings = spec_settings(args)
    known = catalogue.vm_size(settings.vm_size)
    pool_class = pools.PoolClass(
        vm_size=known.name if known else settings.vm_size, image=settings.image,
        node_agent_sku=settings.node_agent_sku, container_image=settings.container_image,
        spot=bool(args.spot), mpi=bool(args.mpi),
    )
    version = None
    if args.install_snakemake:
        version = args.install_snakemake
        if version == "current":
            from importlib.metadata import version as installed

            version = installed("snakemake")
    spec = pools.pool_spec(
        pool_class, settings, args.pool_id, snakemake_version=version, pool_id=args.pool_id,
        fixed_nodes=None if args.autoscale else (1 if args.nodes is None else args.nodes),
    )
    return spec


def node_state_counts(nodes: Iterable[Any]) -> Counter:
    return Counter(state_name(n.state) for n in nodes)


def settled(pool_summary_: dict[str, Any], counts: Counter) -> bool:
    """Allocation steady and no node on its way somewhere: what `--wait` waits for."""
    return pool_summary_["allocationState"] == "steady" and not any(
        counts[s] for s in TRANSITIONAL_NODE_STATES)


def problems(summary: dict[str, Any], nodes: Iterable[Any]) -> list[dict[str, Any]]:
    """Resize errors, failed start tasks and unusable nodes, each with its Batch code."""
    found = [{"kind": "resizeError", "node": None, "code": e["code"], "message": e["message"]}
             for e in summary["resizeErrors"]]
    for node in nodes:
        state = state_name(node.state)
        if state == "starttaskfailed":
            info = node.start_task_info
            failure = info.failure_info if info else None
            exit_code = info.exit_code if info else None
            found.append({
                "kind": "startTaskFailed", "node": node.id,
                "code": failure.code if failure else "StartTaskFailed",
                "message": (failure.message if failure else "the start task failed")
                           + (f" (exit code {exit_code})" if exit_code is not None else ""),
                "exitCode": exit_code,
            })
        elif state == "unusable":
            errors = node.errors or []
            found.append({
                "kind": "nodeUnusable", "node": node.id,
                "code": errors[0].code if errors else "NodeUnusable",
                "message": errors[0].message if errors else "the node is unusable",
            })
    return found


# ----------------------------------------------------------------------------- waiting
def wait_until_settled(ctx: Context, pool_id: str, timeout_minutes: float, interval: float):
    """Follow the pool until `settled`, with a rich progress line; (summary, nodes) at the end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout_minutes * 60
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[pool]}[/bold]"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=ctx.out.err, transient=False, disable=ctx.out.json_mode) as progress:
        bar = progress.add_task("", total=None, pool=pool_id)
        while True:
            pool = ctx.client.get_pool(pool_id)
            nodes = list(ctx.client.list_nodes(pool_id, select=["id", "state", "startTaskInfo", "errors"]))
            summary = pool_summary(pool)
            counts = node_state_counts(nodes)
            target = summary["targetDedicatedNodes"] + summary["targetSpotNodes"]
            ready = sum(counts[s] for s in READY_NODE_STATES)
            progress.update(bar, total=max(target, ready) or None, completed=ready,
                            description=f"allocation {summary['allocationState']}; nodes: {fmt_counts(counts)}")
            if settled(summary, counts):
                return summary, nodes
            if time.monotonic() >= deadline:
                raise CliError(
                    f"Pool {pool_id} did not settle within {timeout_minutes:g} minutes (allocation"
                    f" {summary['allocationState']}; nodes: {fmt_counts(counts)}); it still exists.",
                    EXIT_FAILED, "Timeout")
            time.sleep(interval)


def report_settled(ctx: Context, summary: dict[str, Any], nodes: list[Any]) -> int:
    """The pool as it settled; exit 1 naming each resize error and failed start task."""
    found = problems(summary, nodes)
    counts = node_state_counts(nodes)
    ctx.out.emit({"pool": summary, "nodes": dict(counts), "problems": found})
    ctx.out.table(None, POOL_COLUMNS, [pool_row(summary)])
    ctx.out.print(f"nodes: {fmt_counts(counts)}")
    if not found:
        return EXIT_OK
    for p in found:
        where = f"node {p['node']}: " if p["node"] else ""
        ctx.out.info(f"{p['kind']}: {where}{p['code']}: {p['message']}")
    raise CliError(f"Pool {summary['id']} has {len(found)} problem(s); first: {found[0]['code']}",
                   EXIT_FAILED, found[0]["code"])


# ----------------------------------------------------------------------------- commands
def _show(ctx: Context, pool_id: str) -> int:
    """After create/resize: with --wait, follow the pool until it settles; else show it now."""
    if ctx.args.wait:
        summary, nodes = wait_until_settled(ctx, pool_id, ctx.args.timeout, ctx.args.poll_interval)
        return report_settled(ctx, summary, nodes)
    summary = pool_summary(ctx.client.get_pool(pool_id))
    ctx.out.emit({"pool": summary})
    ctx.out.table(None, POOL_COLUMNS, [pool_row(summary)])
    return EXIT_OK


def create(ctx: Context) -> int:
    args = ctx.args
    check_create_args(args)
    spec = build_pool(args)
    ctx.client.create_pool(spec)
    scale = ("autoscale" if args.autoscale else
             f"{spec.target_dedicated_nodes or 0} dedicated + {spec.target_low_priority_nodes or 0} spot nodes")
    ctx.out.info(f"Created pool {spec.id} ({spec.vm_size}, {scale}"
                 f"{', MPI' if args.mpi else ''}, {spec.task_slots_per_node} slot(s) per node).")
    return _show(ctx, spec.id)


def list_(ctx: Context) -> int:
    summaries = [pool_summary(p) for p in ctx.client.list_pools()]
    ctx.out.emit({"pools": summaries})
    ctx.out.table("Pools", POOL_COLUMNS, [pool_row(s) for s in summaries])
    return EXIT_OK


def resize(ctx: Context) -> int:
    from azure.batch import models

    args = ctx.args
    if args.nodes is None and args.spot_nodes is None:
        raise CliError("Give --nodes N and/or --spot-nodes M.", EXIT_USAGE, "UsageError")
    if any(v is not None and v < 0 for v in (args.nodes, args.spot_nodes)):
        raise CliError("Node counts must be >= 0.", EXIT_USAGE, "UsageError")
    pool = ctx.client.get_pool(args.pool_id)
    options = models.BatchPoolResizeOptions(
        target_dedicated_nodes=args.nodes if args.nodes is not None else (pool.target_dedicated_nodes or 0),
        target_low_priority_nodes=(args.spot_nodes if args.spot_nodes is not None
                                   else (pool.target_low_priority_nodes or 0)),
    )
    # The poller only watches allocationState; --wait below does that and more, so no result().
    ctx.client.begin_resize_pool(args.pool_id, options, polling_interval=max(1, int(args.poll_interval)))
    ctx.out.info(f"Resizing pool {args.pool_id} to {options.target_dedicated_nodes} dedicated +"
                 f" {options.target_low_priority_nodes} spot nodes.")
    return _show(ctx, args.pool_id)


def delete(ctx: Context) -> int:
    args = ctx.args
    pool = ctx.client.get_pool(args.pool_id)  # not found: exit 3 before asking anything
    nodes = (pool.current_dedicated_nodes or 0) + (pool.current_low_priority_nodes or 0)
    confirm(ctx, f"Delete pool {args.pool_id} and its {nodes} node(s)? Running tasks are stopped.")
    ctx.client.begin_delete_pool(args.pool_id, polling_interval=max(1, int(args.poll_interval)))
    ctx.out.info(f"Deleting pool {args.pool_id}.")
    if args.wait:
        wait_gone(ctx, f"pool {args.pool_id}", lambda: ctx.client.get_pool(args.pool_id, select=["id"]))
    ctx.out.emit({"deleted": args.pool_id, "waited": bool(args.wait)})
    return EXIT_OK


# ----------------------------------------------------------------------------- parser
def register(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    group = commands.add_parser("pool", help="create, list, resize and delete Batch pools", parents=parents)
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("create", parents=parents, help="create a pool",
                           description="Create a pool with the executor's pool builder (pools.pool_spec).")
    p.add_argument("pool_id", metavar="POOL", help="pool id (letters, digits, '-', '_'; at most 64)")
    p.add_argument("--vm-size", help="VM size (default Standard_D2s_v5; with --mpi Standard_HB120rs_v3)")
    p.add_argument("--image", help="publisher:offer:sku[:version] or a Compute Gallery image id"
                                   " (default canonical:ubuntu-24_04-lts:server; with --mpi"
                                   " microsoft-dsvm:ubuntu-hpc:2404)")
    p.add_argument("--node-agent-sku", help="node agent SKU id (derived from Marketplace images;"
                                            " required for gallery images)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--nodes", type=int, help="fixed number of nodes (default 1; spot nodes with --spot)")
    scale.add_argument("--autoscale", action="store_true",
                       help="autoscale on pending tasks between --min and --max (SAJE's formula)")
    p.add_argument("--min", type=int, help="autoscale lower bound (default 0)")
    p.add_argument("--max", type=int, help="autoscale upper bound (default 10; MPI 4)")
    p.add_argument("--formula", help="your own autoscale formula ({min_nodes}, {max_nodes},"
                                     " {slots_per_node} are substituted)")
    p.add_argument("--autoscale-interval", type=float, default=5.0, metavar="MINUTES",
                   help="autoscale evaluation interval, 5 to 10080 (Azure Batch's range; default 5)")
    p.add_argument("--slots", type=int, help="task slots per node (default: the size's vCPUs; MPI: 1)")
    p.add_argument("--mpi", action="store_true",
                   help="MPI pool: inter-node communication, one slot per node, RDMA size by default")
    p.add_argument("--spot", action="store_true", help="spot (low-priority) nodes instead of dedicated")
    p.add_argument("--container-image", help="container image every task runs in")
    p.add_argument("--subnet-id", help="virtual network subnet resource id")
    p.add_argument("--start-task", metavar="COMMAND",
                   help="shell command each node runs as root before taking tasks (after"
                        " --install-snakemake's install); the node waits for it")
    p.add_argument("--install-snakemake", nargs="?", const="current", metavar="VERSION",
                       help="start task installing Snakemake (default: the version running here) so"
                            " the executor can use the pool with --saje-pool-id")
    wait_options(p, "allocation is steady and every node has started (reports resize errors and"
                     " start-task failures, exit 1)")
    p.set_defaults(func=create)

    p = actions.add_parser("list", parents=parents, help="list pools with their node counts")
    p.set_defaults(func=list_)

    p = actions.add_parser("resize", parents=parents, help="change a fixed-size pool's node counts")
    p.add_argument("pool_id", metavar="POOL")
    p.add_argument("--nodes", type=int, help="target dedicated nodes (default: unchanged)")
    p.add_argument("--spot-nodes", type=int, help="target spot nodes (default: unchanged)")
    wait_options(p, "the resize has finished")
    p.set_defaults(func=resize)

    p = actions.add_parser("delete", parents=parents, help="delete a pool (asks first unless --yes)")
    p.add_argument("pool_id", metavar="POOL")
    deletion_options(p, "the pool is gone")
    p.set_defaults(func=delete)


__all__ = ["register", "pool_summary", "pool_row", "build_pool", "problems", "settled"]
