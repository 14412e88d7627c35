"""VM prices per hour: the Azure Retail Prices API on Azure, the bundled table otherwise.

The Retail Prices API (https://prices.azure.com/api/retail/prices, public, no credential) gives
the list price of every meter; SAJE asks it once a day per region for the sizes a run uses
(pay-as-you-go Linux, and the Spot price of each size), keeps the answer under
``~/.cache/saje/`` with its date, and falls back to the bundled table (``catalogue.yaml``: one
region, no Spot prices) when the API cannot be reached or the endpoint is the local emulator.
Every table says where its prices come from and their date (`PriceTable.describe`).

The API's query format and answer shape: learn.microsoft.com/rest/api/cost-management/
retail-prices/azure-retail-prices (an OData ``$filter`` on ``armRegionName``, ``armSkuName``,
``priceType``, ``serviceName``; pages of items with ``NextPageLink``). A Linux meter's
``productName`` has no "Windows"; a Spot meter's ``skuName`` ends with " Spot" (" Low Priority"
meters are the retired low-priority VMs).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import catalogue

RETAIL_PRICES_URL = "https://prices.azure.com/api/retail/prices"
# Tests point this at a local port; nobody else needs to.
URL_VARIABLE = "SAJE_RETAIL_PRICES_URL"
TIMEOUT_SECONDS = 10.0
MAX_PAGES = 20  # a region's answer for a few sizes is one or two pages of 100 items
_REGION = re.compile(r"^https?://[^./]+\.([a-z0-9]+)\.batch\.azure\.com(?::\d+)?(?:/|$)", re.IGNORECASE)

Key = tuple[str, bool]  # (lower-case VM size, spot)


@dataclass(frozen=True)
class PriceTable:
    """USD (or `currency`) per node-hour by VM size and priority, and where the figures come from."""

    kind: str  # "retail-api" (read now), "cache" (read earlier today), "bundled"
    region: str
    currency: str
    date: str  # the day the API was read, or the bundled table's date
    source: str
    prices: dict[Key, float] = field(default_factory=dict)
    note: str = ""  # why the bundled table was used instead of the API

    def hourly(self, vm_size: str, spot: bool = False) -> float | None:
        """The price of one node-hour, or None when unknown (never 0 for unknown)."""
        return self.prices.get((vm_size.strip().lower(), bool(spot))) if vm_size else None

    def describe(self) -> str:
        """One sentence: source, region, date, and (for the bundled table) why it was used."""
        text = f"{self.source}, region {self.region}, as of {self.date}"
        return text + (f" ({self.note})" if self.note else "")

    def about(self) -> dict[str, str]:
        """Where the prices come from, without the prices."""
        return {"kind": self.kind, "region": self.region, "currency": self.currency, "date": self.date,
                "source": self.source, "note": self.note}

    def only(self, vm_sizes: Iterable[str]) -> "PriceTable":
        """The same table restricted to `vm_sizes` (what a run's records keep)."""
        keep = {s.lower() for s in vm_sizes}
        return dataclasses.replace(self, prices={k: v for k, v in self.prices.items() if k[0] in keep})

    def to_json(self) -> dict[str, Any]:
        return {**self.about(),
                "prices": [{"vmSize": size, "spot": spot, "perHour": price}
                           for (size, spot), price in sorted(self.prices.items())]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PriceTable":
        prices = {(str(p["vmSize"]).lower(), bool(p["spot"])): float(p["perHour"]) for p in data.get("prices") or []}
        return cls(data["kind"], data["region"], data["currency"], data["date"], data["source"], prices,
                   data.get("note", ""))


def bundled(note: str = "") -> PriceTable:
    """The table shipped in catalogue.yaml: dedicated prices of one region, Spot unknown."""
    info = catalogue.price_info()
    prices: dict[Key, float] = {}
    for size in catalogue.vm_sizes():
        for spot in (False, True):
            price = catalogue.hourly_price(size.name, spot=spot)
            if price is not None:
                prices[(size.name.lower(), spot)] = price
    return PriceTable("bundled", info["region"], info["currency"], info["date"],
                      f"bundled price table: {info['source']}", prices, note)


def region_of(endpoint: str | None) -> str | None:
    """The Azure region of a Batch endpoint (https://ACCOUNT.REGION.batch.azure.com), else None."""
    match = _REGION.match(endpoint or "")
    return match.group(1).lower() if match else None


# ----------------------------------------------------------------------------- the API, pure parts
def retail_filter(region: str, vm_sizes: Iterable[str]) -> str:
    """The OData $filter for the consumption meters of `vm_sizes` in `region`. Sent without an
    api-version, whose filter values are case-insensitive (2023-01-01-preview made them
    case-sensitive): Batch reports a pool's size in lower case (standard_d2s_v5)."""
    sizes = sorted({_arm_name(s) for s in vm_sizes if s})
    by_size = " or ".join(f"armSkuName eq '{s}'" for s in sizes)
    return (f"serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and armRegionName eq '{region}'"
            + (f" and ({by_size})" if by_size else ""))


def parse_items(items: Iterable[dict[str, Any]], region: str) -> dict[Key, float]:
    """Hourly Linux prices, pay-as-you-go and Spot, from Retail Prices API items.

    Skips Windows meters, reservations and dev/test prices, Low Priority meters (retired), other
    regions, and anything not priced per hour. Where several meters remain for one size and
    priority, the most recent `effectiveStartDate` wins."""
    best: dict[Key, tuple[str, float]] = {}
    for item in items:
        if (item.get("type") != "Consumption" or item.get("serviceName") != "Virtual Machines"
                or item.get("unitOfMeasure") != "1 Hour" or str(item.get("armRegionName", "")).lower() != region.lower()):
            continue
        product, sku = str(item.get("productName", "")), str(item.get("skuName", ""))
        if "windows" in product.lower() or sku.endswith("Low Priority") or not item.get("armSkuName"):
            continue
        try:
            price = float(item["retailPrice"])
        except (KeyError, TypeError, ValueError):
            continue
        key = (str(item["armSkuName"]).lower(), sku.endswith(" Spot"))
        since = str(item.get("effectiveStartDate", ""))
        if key not in best or since > best[key][0]:
            best[key] = (since, price)
    return {key: price for key, (_, price) in best.items()}


# ----------------------------------------------------------------------------- I/O
def fetch_retail(region: str, vm_sizes: Iterable[str], *, url: str | None = None,
                 timeout: float = TIMEOUT_SECONDS, get: Callable[..., Any] | None = None) -> dict[Key, float]:
    """Read the API for `vm_sizes` in `region` (following NextPageLink); raises on any failure."""
    import requests

    get = get or requests.get
    items: list[dict[str, Any]] = []
    next_url: str | None = url or os.environ.get(URL_VARIABLE) or RETAIL_PRICES_URL
    params: dict[str, str] | None = {"$filter": retail_filter(region, vm_sizes)}
    for _ in range(MAX_PAGES):
        if not next_url:
            break
        response = get(next_url, params=params, timeout=timeout)
        response.raise_for_status()
        page = response.json()
        items.extend(page.get("Items") or [])
        next_url, params = page.get("NextPageLink") or None, None  # the link carries the query
    return parse_items(items, region)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "saje"


def load(endpoint: str | None, vm_sizes: Iterable[str], *, today: dt.date | None = None,
         directory: Path | None = None, fetch: Callable[[str, list[str]], dict[Key, float]] | None = None) -> PriceTable:
    """The prices a run or `saje status` uses for `vm_sizes`.

    On an Azure endpoint: today's cached answer when it covers the sizes, else the Retail Prices
    API (cached), else the bundled table saying why. Elsewhere (the emulator): the bundled table.
    A size the API does not price keeps its bundled dedicated price."""
    region = region_of(endpoint)
    if region is None:
        return bundled()
    sizes = sorted({s.lower() for s in vm_sizes if s})
    day = (today or dt.date.today()).isoformat()
    path = (directory or cache_dir()) / f"retail-prices-{region}.json"
    cached = _read_cache(path)
    if cached is not None and cached.date == day and all((s, False) in cached.prices for s in sizes):
        return PriceTable("cache", region, cached.currency, cached.date,
                          f"Azure Retail Prices API, cached in {path}", cached.prices)
    try:
        found = (fetch or fetch_retail)(region, sizes)
    except Exception as exc:  # noqa: BLE001 - any failure (DNS, proxy, HTTP, JSON) means: use the table
        return bundled(note=f"the Azure Retail Prices API could not be read: {_why(exc)}")
    merged = {**(cached.prices if cached is not None else {}), **found}
    table = PriceTable("retail-api", region, "USD", day, f"Azure Retail Prices API ({RETAIL_PRICES_URL})",
                       {**_bundled_dedicated(sizes, merged), **merged})
    _write_cache(path, table)
    return table


def _why(exc: Exception) -> str:
    """A short reason for a failed request (requests' own messages run to several hundred characters)."""
    import requests

    if isinstance(exc, requests.Timeout):
        return f"no answer within {TIMEOUT_SECONDS:g} s"
    if isinstance(exc, requests.ConnectionError):
        return "no connection (offline, or a proxy or firewall in the way)"
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, ValueError):
        return "its answer was not the JSON it documents"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def _bundled_dedicated(sizes: list[str], found: dict[Key, float]) -> dict[Key, float]:
    table = bundled().prices
    return {(s, False): table[(s, False)] for s in sizes if (s, False) not in found and (s, False) in table}


def _read_cache(path: Path) -> PriceTable | None:
    try:
        return PriceTable.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, table: PriceTable) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(table.to_json(), indent=1) + "\n")
        os.replace(partial, path)
    except OSError:
        pass  # a cache that cannot be written only costs one more request next time


def _arm_name(size: str) -> str:
    """ARM's spelling of a size (Standard_D2s_v5) when the catalogue knows it, else as given."""
    known = catalogue.vm_size(size)
    return known.name if known is not None else size
