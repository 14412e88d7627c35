"""`saje status`: pools, nodes by state, jobs with task counts, and what the nodes cost per hour.

The cost is an estimate from the bundled price table (catalogue.yaml: pay-as-you-go Linux list
prices of one region, with their date): every allocated node counts except preempted and
deallocated ones, which Azure does not bill. Spot prices move hourly and are not tabulated, so
spot nodes (and sizes the table lacks) are shown as unknown, never as free.
"""
from __future__ import annotations

import argparse
from typing import Any, Iterable

from .common import EXIT_OK, Context
from .job import job_summary, task_counts
from .output import fmt_counts, fmt_money
from .pool import pool_summary

UNBILLED_STATES = frozenset({"preempted", "deallocated"})


# ----------------------------------------------------------------------------- pure parts
def states_of(counts: Any) -> dict[str, int]:
    """Node counts by state ({'idle': 2, 'starttaskfailed': 1}) from a BatchNodeCounts."""
    if counts is None:
        return {}
    raw = counts.as_dict() if hasattr(counts, "as_dict") else dict(counts)
    return {key.lower(): int(value) for key, value in raw.items() if key != "total" and value}


def billed(states: dict[str, int]) -> int:
    return sum(n for state, n in states.items() if state not in UNBILLED_STATES)


def pool_cost(vm_size: str, dedicated: int, spot: int) -> dict[str, Any]:
    """Hourly cost of one pool's billed nodes: known parts as numbers, unknown parts as None."""
    from .. import catalogue

    price = catalogue.hourly_price(vm_size) if vm_size else None
    spot_price = catalogue.hourly_price(vm_size, spot=True) if vm_size else None
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


def price_table() -> dict[str, str]:
    from .. import catalogue

    info = dict(catalogue.price_info())
    return info


# ----------------------------------------------------------------------------- command
def status(ctx: Context) -> int:
    client = ctx.client
    pools = [pool_summary(p) for p in client.list_pools()]
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}
    rows, costs = [], []
    for pool in pools:
        c = counts.get(pool["id"])
        dedicated = states_of(c.dedicated if c else None)
        spot = states_of(c.low_priority if c else None)
        cost = pool_cost(pool["vmSize"], billed(dedicated), billed(spot))
        costs.append(cost)
        pool["nodes"] = {"dedicated": dedicated, "spot": spot}
        pool["cost"] = cost
        rows.append((pool["id"], pool["vmSize"], pool["allocationState"], fmt_counts(dedicated),
                     fmt_counts(spot), _cost_cell(cost)))
    jobs = [job_summary(j, task_counts(client.get_job_task_counts(j.id))) for j in client.list_jobs()]
    total = cost_total(costs)
    prices = price_table()
    currency = prices.get("currency", "USD")
    ctx.out.emit({"account": ctx.endpoint, "pools": pools, "jobs": jobs,
                  "cost": {**total, "currency": currency, "priceTable": prices}})

    ctx.out.print(f"Batch account {ctx.endpoint}")
    ctx.out.table("Pools and nodes", ("pool", "vm size", "allocation", "dedicated nodes", "spot nodes",
                                      f"{currency}/hour"), rows)
    ctx.out.table("Jobs", ("job", "pool", "state", "active", "running", "succeeded", "failed"),
                  [(j["id"], j["pool"], j["state"], *(j["taskCounts"][k] for k in
                                                       ("active", "running", "succeeded", "failed")))
                   for j in jobs])
    ctx.out.print(
        f"Hourly cost of the running nodes: dedicated {fmt_money(total['dedicatedPerHour'], currency)},"
        f" spot {fmt_money(total['spotPerHour'], currency)}; total "
        + (fmt_money(total["totalPerHour"], currency) if total["totalPerHour"] is not None else
           f"at least {fmt_money(total['knownPerHour'], currency)}"
           f" ({total['nodesWithUnknownPrice']} node(s) at an unknown price)"))
    ctx.out.print(f"Prices: {prices.get('source')}, region {prices.get('region')}, as of {prices.get('date')};"
                  " indicative only.", style="dim")
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
    p.set_defaults(func=status)
