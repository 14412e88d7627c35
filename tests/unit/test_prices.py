"""Prices: the Retail Prices API's answer parsed, cached and, when unreachable, replaced by the
bundled table. The answer shapes are Microsoft's own examples (learn.microsoft.com, "Azure Retail
Prices overview": the sample items and the response envelope); no test reaches the internet."""
from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from snakemake_executor_saje import catalogue, prices
from tests.conftest import http_server

# The documented samples, verbatim: a Windows Spot dev/test meter, a reservation, a EUR price.
DOC_SPOT_WINDOWS_DEVTEST = {
    "currencyCode": "USD", "tierMinimumUnits": 0.0, "retailPrice": 0.176346, "unitPrice": 0.176346,
    "armRegionName": "westeurope", "location": "EU West", "effectiveStartDate": "2020-08-01T00:00:00Z",
    "meterId": "000a794b-bdb0-58be-a0cd-0c3a0f222923", "meterName": "F16s Spot", "productId": "DZH318Z0BQPS",
    "skuId": "DZH318Z0BQPS/00TG", "productName": "Virtual Machines FS Series Windows", "skuName": "F16s Spot",
    "serviceName": "Virtual Machines", "serviceId": "DZH313Z7MMC8", "serviceFamily": "Compute",
    "unitOfMeasure": "1 Hour", "type": "DevTestConsumption", "isPrimaryMeterRegion": True, "armSkuName": "Standard_F16s",
}
DOC_RESERVATION = {
    "currencyCode": "USD", "tierMinimumUnits": 0.0, "reservationTerm": "1 Year", "retailPrice": 25007.0,
    "unitPrice": 25007.0, "armRegionName": "southcentralus", "location": "US South Central",
    "effectiveStartDate": "2020-08-01T00:00:00Z", "meterId": "0016083a-928f-56fd-8eeb-39287dcf676d",
    "meterName": "E64 v4", "productId": "DZH318Z0D1L7", "skuId": "DZH318Z0D1L7/018J",
    "productName": "Virtual Machines Ev4 Series", "skuName": "E64 v4", "serviceName": "Virtual Machines",
    "serviceId": "DZH313Z7MMC8", "serviceFamily": "Compute", "unitOfMeasure": "1 Hour", "type": "Reservation",
    "isPrimaryMeterRegion": True, "armSkuName": "Standard_E64_v4",
}
DOC_EUR_WINDOWS = {**DOC_SPOT_WINDOWS_DEVTEST, "currencyCode": "EUR", "tierMinimumUnits": 0, "retailPrice": 0.6176,
                   "unitPrice": 0.6176, "effectiveStartDate": "2021-04-01T00:00:00Z", "type": "Consumption"}


def linux(item: dict, **changes) -> dict:
    """The documented item as the Linux meter of the same series reads (no 'Windows' in productName)."""
    return {**item, "productName": item["productName"].replace(" Windows", ""), "type": "Consumption", **changes}


LINUX_SPOT = linux(DOC_SPOT_WINDOWS_DEVTEST, retailPrice=0.0721)
LINUX = linux(DOC_SPOT_WINDOWS_DEVTEST, meterName="F16s", skuName="F16s", retailPrice=0.676)
LINUX_OLDER = {**LINUX, "retailPrice": 0.7, "effectiveStartDate": "2019-01-01T00:00:00Z"}
LOW_PRIORITY = linux(DOC_SPOT_WINDOWS_DEVTEST, meterName="F16s Low Priority", skuName="F16s Low Priority", retailPrice=0.13)


def envelope(items: list[dict], next_link: str | None = None) -> dict:
    """The response envelope the API documents around its items."""
    return {"BillingCurrency": "USD", "CustomerEntityId": "Default", "CustomerEntityType": "Retail",
            "Items": items, "NextPageLink": next_link, "Count": len(items)}


def test_documented_samples_are_no_linux_pay_as_you_go_price():
    assert prices.parse_items([DOC_SPOT_WINDOWS_DEVTEST, DOC_RESERVATION, DOC_EUR_WINDOWS], "westeurope") == {}


def test_linux_dedicated_and_spot_prices_the_newest_meter_wins():
    parsed = prices.parse_items([LINUX_OLDER, LINUX, LINUX_SPOT, LOW_PRIORITY, DOC_SPOT_WINDOWS_DEVTEST], "westeurope")
    assert parsed == {("standard_f16s", False): 0.676, ("standard_f16s", True): 0.0721}
    assert prices.parse_items([LINUX], "eastus") == {}  # another region's meter


def test_filter_names_region_sizes_and_consumption():
    text = prices.retail_filter("westeurope", ["standard_d2s_v5", "Standard_HB120rs_v3", "Standard_D2s_v5"])
    assert text == ("serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and armRegionName eq 'westeurope'"
                    " and (armSkuName eq 'Standard_D2s_v5' or armSkuName eq 'Standard_HB120rs_v3')")


def test_region_of_batch_endpoints():
    assert prices.region_of("https://mybatch.westeurope.batch.azure.com") == "westeurope"
    assert prices.region_of("https://acct.EastUS2.batch.azure.com/") == "eastus2"
    assert prices.region_of("http://127.0.0.1:40241") is None
    assert prices.region_of(None) is None


class _Pages(http.server.BaseHTTPRequestHandler):
    """A local stand-in for the API: two pages, the second reached through NextPageLink."""

    queries: list[dict] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        query = parse_qs(urlparse(self.path).query)
        type(self).queries.append(query)
        base = f"http://127.0.0.1:{self.server.server_address[1]}/api/retail/prices"
        if "$skip" in query:
            body = envelope([LINUX_SPOT])
        else:
            body = envelope([LINUX, DOC_SPOT_WINDOWS_DEVTEST], next_link=f"{base}?$skip=100")
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def price_api():
    _Pages.queries = []
    with http_server(_Pages) as url:
        yield f"{url}/api/retail/prices"


def test_fetch_follows_next_page_link_over_http(price_api):
    found = prices.fetch_retail("westeurope", ["Standard_F16s"], url=price_api)
    assert found == {("standard_f16s", False): 0.676, ("standard_f16s", True): 0.0721}
    first, second = _Pages.queries
    assert "armSkuName eq 'Standard_F16s'" in first["$filter"][0] and second == {"$skip": ["100"]}


def test_load_reads_the_api_once_a_day_and_caches(price_api, tmp_path, monkeypatch):
    monkeypatch.setenv(prices.URL_VARIABLE, price_api)
    day = dt.date(2025, 6, 11)
    table = prices.load("https://acct.westeurope.batch.azure.com", ["Standard_F16s"], today=day, directory=tmp_path)
    assert (table.kind, table.region, table.date) == ("retail-api", "westeurope", "2025-06-11")
    assert table.hourly("Standard_F16s") == 0.676 and table.hourly("standard_f16s", spot=True) == 0.0721
    assert "Azure Retail Prices API" in table.describe() and "2025-06-11" in table.describe()
    asked = len(_Pages.queries)
    again = prices.load("https://acct.westeurope.batch.azure.com", ["standard_f16s"], today=day, directory=tmp_path)
    assert again.kind == "cache" and again.prices == table.prices and len(_Pages.queries) == asked
    prices.load("https://acct.westeurope.batch.azure.com", ["standard_f16s"], today=day + dt.timedelta(days=1),
                directory=tmp_path)
    assert len(_Pages.queries) > asked  # a day later: asked again


def test_a_size_the_api_lacks_keeps_its_bundled_dedicated_price(tmp_path):
    table = prices.load("https://acct.westeurope.batch.azure.com", ["Standard_D2s_v5", "Standard_F16s"],
                        directory=tmp_path, fetch=lambda region, sizes: {("standard_f16s", False): 0.676})
    assert table.hourly("Standard_D2s_v5") == catalogue.hourly_price("Standard_D2s_v5")
    assert table.hourly("Standard_D2s_v5", spot=True) is None  # unknown, never zero


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_api_falls_back_to_the_bundled_table_and_says_why(tmp_path, monkeypatch):
    """The real request (requests, a real socket) to a port nobody listens on."""
    monkeypatch.setenv(prices.URL_VARIABLE, f"http://127.0.0.1:{_closed_port()}/api/retail/prices")
    table = prices.load("https://acct.westeurope.batch.azure.com", ["Standard_D2s_v5"], directory=tmp_path)
    assert table.kind == "bundled" and table.hourly("Standard_D2s_v5") == catalogue.hourly_price("Standard_D2s_v5")
    assert table.note == "the Azure Retail Prices API could not be read: no connection (offline, or a proxy or firewall in the way)"
    assert table.note in table.describe()
    assert table.date == catalogue.price_info()["date"]
    assert not list(tmp_path.iterdir())  # nothing cached from a failure


def test_the_emulator_uses_the_bundled_table_without_asking(tmp_path):
    def never(*_):
        raise AssertionError("the emulator's prices must not come from the network")

    table = prices.load("http://127.0.0.1:4000", ["Standard_D2s_v5"], directory=tmp_path, fetch=never)
    assert table.kind == "bundled" and table.note == ""
    assert table.describe().startswith("bundled price table") and catalogue.price_info()["date"] in table.describe()


def test_price_table_round_trips_through_json(tmp_path):
    table = prices.load("https://a.westeurope.batch.azure.com", ["Standard_F16s"], directory=tmp_path,
                        fetch=lambda region, sizes: {("standard_f16s", True): 0.07})
    assert prices.PriceTable.from_json(json.loads(json.dumps(table.to_json()))) == table
    assert json.loads(Path(tmp_path / "retail-prices-westeurope.json").read_text())["kind"] == "retail-api"
