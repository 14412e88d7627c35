"""Facts about Azure that both the executor and the emulator rely on.

The data lives in ``catalogue.yaml`` (with its sources and dates) so that the
figures can be checked and updated without touching code; this module only
loads and answers questions about it. Lookups are case-insensitive because
Azure treats VM size names that way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from importlib import resources
from typing import Any

import yaml

__all__ = [
    "VmSize",
    "vm_size",
    "vm_sizes",
    "supported_images",
    "find_image",
    "node_agent_for",
    "hourly_price",
    "price_info",
    "load_vm_sizes",
]


@dataclass(frozen=True)
class VmSize:
    """One VM size as SAJE needs it.

    ``vcpus`` is the number of cores a task can use (the constrained count for
    constrained-core sizes); ``rdma`` is true when the size sits on an
    InfiniBand fabric, whose generation and speed ``infiniband`` names.
    """

    name: str
    vcpus: int
    memory_gib: float
    gpus: int
    rdma: bool
    family: str
    infiniband: str | None = None


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("catalogue.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def parse_vm_sizes(rows: list[dict[str, Any]]) -> dict[str, tuple[VmSize, dict[str, Any]]]:
    """Rows of the catalogue's ``vm_sizes`` list, keyed by lower-case name."""
    table: dict[str, tuple[VmSize, dict[str, Any]]] = {}
    for row in rows:
        ib = row.get("infiniband")
        size = VmSize(
            name=row["name"],
            vcpus=int(row["vcpus"]),
            memory_gib=float(row["memory_gib"]),
            gpus=int(row.get("gpus", 0)),
            rdma=ib is not None,
            family=row.get("family", "custom"),
            infiniband=ib,
        )
        table[size.name.lower()] = (size, row)
    return table


def load_vm_sizes(path: str | Path) -> dict[str, VmSize]:
    """A VM size catalogue file (YAML with a ``vm_sizes`` list in this catalogue's format)."""
    data = yaml.safe_load(Path(path).read_text("utf-8")) or {}
    rows = data.get("vm_sizes") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a mapping with a 'vm_sizes' list (name, vcpus, memory_gib, ...)")
    try:
        return {key: size for key, (size, _) in parse_vm_sizes(rows).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: a vm_sizes entry lacks or misspells a field ({exc}); each needs name, vcpus, memory_gib") from None


@lru_cache(maxsize=1)
def _sizes() -> dict[str, tuple[VmSize, dict[str, Any]]]:
    return parse_vm_sizes(_data()["vm_sizes"])


def vm_size(name: str) -> VmSize | None:
    """The size called ``name`` (any case), or None when SAJE does not know it."""
    entry = _sizes().get(name.strip().lower()) if name else None
    return entry[0] if entry else None


def vm_sizes(*, rdma: bool | None = None) -> list[VmSize]:
    """All known sizes, optionally only the RDMA (``rdma=True``) or non-RDMA ones."""
    return [s for s, _ in _sizes().values() if rdma is None or s.rdma == rdma]


def supported_images() -> list[dict[str, Any]]:
    """Images Batch accepts, shaped like the REST ``ImageInformation`` list.

    A deep copy each call: callers (the emulator's HTTP layer) may mutate it.
    """
    return copy.deepcopy(_data()["supported_images"])


def find_image(
    publisher: str | None, offer: str | None, sku: str | None
) -> dict[str, Any] | None:
    """The supported-image entry for a marketplace image (any case), or None."""
    if not (publisher and offer and sku):
        return None
    key = (publisher.lower(), offer.lower(), sku.lower())
    for image in _data()["supported_images"]:
        ref = image["imageReference"]
        if (ref["publisher"].lower(), ref["offer"].lower(), ref["sku"].lower()) == key:
            return copy.deepcopy(image)
    return None


def node_agent_end_of_life(node_agent: str) -> datetime | None:
    """When Batch support ends for a node agent SKU: the latest ``batchSupportEndOfLife`` of its
    images, if every image of that agent has one (then any pool naming the agent, custom images
    included, is past support after it: Azure/Batch#174); None while one of them has no date."""
    dates = [image.get("batchSupportEndOfLife") for image in _data()["supported_images"]
             if image["nodeAgentSKUId"].lower() == (node_agent or "").lower()]
    if not dates or None in dates:
        return None
    return max(datetime.fromisoformat(str(d).replace("Z", "+00:00")) for d in dates)


def node_agent_for(publisher: str, offer: str, sku: str) -> str | None:
    """The node agent SKU id Batch pairs with a marketplace image, or None."""
    image = find_image(publisher, offer, sku)
    return image["nodeAgentSKUId"] if image else None


def hourly_price(name: str, spot: bool = False) -> float | None:
    """Indicative pay-as-you-go Linux USD/hour (see ``price_info``), or None if unknown.

    Spot prices are not tabulated (they move hourly), so ``spot=True`` gives
    None unless the yaml carries a ``spot_price`` for the size.
    """
    entry = _sizes().get(name.strip().lower()) if name else None
    if entry is None:
        return None
    value = entry[1].get("spot_price" if spot else "price")
    return float(value) if value is not None else None


def price_info() -> dict[str, str]:
    """Region, currency, date and source of the price table."""
    data = _data()
    return {
        "region": str(data["price_region"]),
        "currency": str(data["price_currency"]),
        "date": str(data["price_date"]),
        "source": str(data["price_source"]),
    }
