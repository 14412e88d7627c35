"""`saje status`: pools, nodes by state, jobs with task counts, and what the nodes cost per hour.

The cost is an estimate from list prices (prices.py): on Azure the Retail Prices API for the
account's region (cached a day), else the bundled table (catalogue.yaml: pay-as-you-go Linux
prices of one region, with their date). Every allocated node counts except preempted and
deallocated ones, which Azure does not bill; nodes without a known price (Spot in the bundled
table, sizes it lacks) are shown as unknown, never as free. `--watch` redraws the view every few
seconds until Ctrl-C.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Iterable

from .common import EXIT_OK, EXIT_USAGE, CliError, Context
from .job import job_summary, task_counts
from .output import fmt_counts, fmt_money, table
from .pool import pool_summary
from ..runrecord import UNBILLED_STATES


# ----------------------------------------------------------------------------- pure parts
def states_of(counts: Any) -> dict[str, int]:
    """Node counts by state ({'idle': 2, 'starttaskfailed': 1}) from a BatchNodeCounts."""
    if counts is None:
        return {}
    raw = counts.as_dict() if hasattr(counts, "as_dict") else dict(counts)
    return {key.lower(): int(value) for key, value in raw.items() if key != "total" and value}


def billed(states: dict[str, int]) -> int:
    return sum(n for state, n in states.items() if state not in UNBILLED_STATES)


def pool_cost(vm_size: str, dedicated: int, spot: int, prices: Any = None) -> dict[str, Any]:
    """Hourly cost of one pool's billed nodes: known parts as numbers, unknown parts as None.
    `prices` is a prices.PriceTable (default: the bundled one)."""
    from .. import prices as price_tables

    prices = prices or price_tables.bundled()
    price = prices.hourly(vm_size) if vm_size else None
    spot_price = prices.hourly(vm_size, spot=True) if vm_size else None
    return {
        "vmSize": vm_size,
        "dedicatedNodes": dedicated,
        "spotNodes": spot,
        "dedicatedPricePerNode": price,
        "spotPricePerNode": spot_price,
        "dedicatedPerHour": (price * dedicated if price is not None else None) if dedicated else 0.0,
        "spotPerHour": (spot_price * spot if spot_price is not None else None) if spot else 0.0,
    }


def cost_total(costs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum of the known parts, and how many nodes have no known price (so the sum is a floor)."""
    known = 0.0
    unknown_dedicated = unknown_spot = 0
    dedicated = spot = 0.0
    for c in costs:
        if c["dedicatedPerHour"] is None:
            unknown_dedicated += c["dedicatedNodes"]
        else:
            dedicated += c["dedicatedPerHour"]
        if c["spotPerHour"] is None:
            unknown_spot += c["spotNodes"]
        else:
            spot += c["spotPerHour"]
    known = dedicated + spot
    return {
        "dedicatedPerHour": dedicated if not unknown_dedicated else None,
        "spotPerHour": spot if not unknown_spot else None,
        "knownPerHour": known,
        "nodesWithUnknownPrice": unknown_dedicated + unknown_spot,
        "totalPerHour": known if not (unknown_dedicated or unknown_spot) else None,
    }


def run_summaries(pools: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tagged runs behind these pools and jobs (their metadata), each judged alive or gone."""
    from .. import leftovers
    from ..runs import RunTag

    items = [(RunTag.from_metadata(p.get("metadata")), leftovers.Resource(leftovers.POOL, p["id"], p["state"]))
             for p in pools]
    items += [(RunTag.from_metadata(j.get("metadata")), leftovers.Resource(leftovers.JOB, j["id"], j["state"]))
              for j in jobs]
    return [run.summary(verdict) for run, verdict in leftovers.judged(leftovers.group(items))]


def price_table(prices: Any = None) -> dict[str, str]:
    """Where the prices come from: kind, region, currency, date, source (and why, for a fallback)."""
    from .. import prices as price_tables

    return (prices or price_tables.bundled()).about()


# ----------------------------------------------------------------------------- command
def gather(ctx: Context, price_cache: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The JSON document and the rich renderables of one look at the account. `price_cache`
    keeps the price table between the refreshes of --watch (read again only for new sizes)."""
    from .. import prices as price_tables

    client = ctx.client
    pools = [pool_summary(p) for p in client.list_pools()]
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}
    sizes = sorted({p["vmSize"] for p in pools if p["vmSize"]})
    if price_cache.get("sizes") is None or not set(sizes) <= price_cache["sizes"]:
        price_cache.update(table=price_tables.load(ctx.endpoint, sizes), sizes=set(sizes) | (price_cache.get("sizes") or set()))
    prices = price_cache["table"]
    rows, costs = [], []
    for pool in pools:
        c = counts.get(pool["id"])
        dedicated = states_of(c.dedicated if c else None)
        spot = states_of(c.low_priority if c else None)
        cost = pool_cost(pool["vmSize"], billed(dedicated), billed(spot), prices)
        costs.append(cost)
        pool["nodes"] = {"dedicated": dedicated, "spot": spot}
        pool["cost"] = cost
        rows.append((pool["id"], pool["vmSize"], pool["allocationState"], fmt_counts(dedicated),
                     fmt_counts(spot), _cost_cell(cost)))
    jobs = [job_summary(j, task_counts(client.get_job_task_counts(j.id))) for j in client.list_jobs()]
    runs = run_summaries(pools, jobs)
    total = cost_total(costs)
    currency = prices.currency
    document = {"account": ctx.endpoint, "pools": pools, "jobs": jobs, "runs": runs,
                "cost": {**total, "currency": currency, "priceTable": price_table(prices)}}
    views = [
        table("Pools and nodes", ("pool", "vm size", "allocation", "dedicated nodes", "spot nodes", f"{currency}/hour"), rows),
        table("Jobs", ("job", "pool", "state", "active", "running", "succeeded", "failed"),
              [(j["id"], j["pool"], j["state"], *(j["taskCounts"][k] for k in ("active", "running", "succeeded", "failed")))
               for j in jobs]),
    ]
    if runs:
        views.append(table("Runs (from the saje-* metadata of their pools and jobs)",
                           ("run", "host", "workflow directory", "started", "state"),
                           [(r["run"], r["host"], r["workdir"], r["started"][:19],
                             ("GONE: " if r["gone"] else "alive: ") + r["reason"]) for r in runs]))
    gone = [r for r in runs if r["gone"]]
    if gone:
        from rich.text import Text

        views.append(Text(f"{len(gone)} run(s) whose Snakemake is gone left pools or jobs behind: "
                          "`saje cleanup` lists them, `saje cleanup --yes` deletes them.", style="bold"))
    views += [
        f"Hourly cost of the running nodes: dedicated {fmt_money(total['dedicatedPerHour'], currency)},"
        f" spot {fmt_money(total['spotPerHour'], currency)}; total "
        + (fmt_money(total["totalPerHour"], currency) if total["totalPerHour"] is not None else
           f"at least {fmt_money(total['knownPerHour'], currency)}"
           f" ({total['nodesWithUnknownPrice']} node(s) at an unknown price)"),
    ]
    return document, views


def status(ctx: Context) -> int:
    if ctx.args.watch:
        return watch(ctx)
    document, views = gather(ctx, cache := {})
    ctx.out.emit(document)
    ctx.out.print(f"Batch account {ctx.endpoint}")
    for view in views:
        ctx.out.print(view)
    ctx.out.print(f"Prices: {cache['table'].describe()}; indicative only.", style="dim")
    return EXIT_OK


def watch(ctx: Context) -> int:
    """Redraw the view every --interval seconds until Ctrl-C; the prices' source is said once."""
    from rich.console import Group
    from rich.live import Live
    from azure.core.exceptions import ServiceRequestError

    console = ctx.out.out
    if ctx.out.json_mode or not console.is_terminal:
        raise CliError("--watch redraws the view on a terminal; scripts can run `saje --json status` in a loop.",
                       EXIT_USAGE, "NotATerminal")
    cache: dict[str, Any] = {}
    said_prices = False
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                stamp = time.strftime("%H:%M:%S")
                try:
                    _, views = gather(ctx, cache)
                    head = (f"Batch account {ctx.endpoint}, at {stamp} (every {ctx.args.interval:g} s;"
                            " Ctrl-C to leave)")
                except ServiceRequestError as exc:  # the endpoint went away (an emulator stopped): keep trying
                    views, head = [f"Cannot reach {ctx.endpoint} at {stamp}: {str(exc).splitlines()[0]}"], ""
                if not said_prices and cache.get("table") is not None:
                    console.print(f"Prices: {cache['table'].describe()}; indicative only.", style="dim")
                    said_prices = True
                live.update(Group(*(v for v in [head, *views] if v)), refresh=True)
                time.sleep(ctx.args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _cost_cell(cost: dict[str, Any]) -> str:
    parts = []
    if cost["dedicatedNodes"]:
        parts.append(fmt_money(cost["dedicatedPerHour"], "").strip())
    if cost["spotNodes"]:
        parts.append(f"spot {fmt_money(cost['spotPerHour'], '').strip()}")
    return " + ".join(parts) or "0"


def register(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("status", parents=parents,
                            help="pools, nodes by state, jobs and the hourly cost of the running nodes")
    p.add_argument("--watch", "-w", action="store_true", help="redraw the view every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between redraws with --watch (default 5)")
    p.set_defaults(func=status)
