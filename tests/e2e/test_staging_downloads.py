"""Outputs come back as one plain GET each (a container read SAS), and through the blob SDK
whenever that GET does not give the whole blob: against a real Azurite, through a TCP proxy."""
from __future__ import annotations

import threading
import uuid

import pytest
from azure.storage.blob import BlobServiceClient

from snakemake_executor_saje.staging import Staging, client_options, output_blob
from tests.conftest import wait_for
from tests.e2e.blob_proxy import BlobProxy

pytestmark = pytest.mark.e2e
TASK = "work-1-a1"


@pytest.fixture
def proxied(azurite, request):
    """(staging through a proxy, the proxy), with a fresh container holding two outputs."""
    proxy = BlobProxy((azurite.host, azurite.port), hold=getattr(request, "param", None))
    service = BlobServiceClient.from_connection_string(
        proxy.environment({"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}, azurite.port)
        ["AZURE_STORAGE_CONNECTION_STRING"], **client_options())
    staging = Staging(service, f"dl-{uuid.uuid4().hex[:12]}", azurite.account_key)
    staging._create_container()
    staging.upload_data(output_blob(TASK, "out/a.txt"), b"A" * 1000)
    staging.upload_data(output_blob(TASK, "out/b c.txt"), b"")
    yield staging, proxy
    proxy.close()
    staging.delete()


def test_each_output_is_one_get_and_a_missing_one_is_named(proxied, tmp_path):
    staging, proxy = proxied
    local = {p: str(tmp_path / p) for p in ("out/a.txt", "out/b c.txt", "out/none.txt")}
    missing = staging.download_outputs(TASK, list(local), local)
    assert missing == ["out/none.txt"]
    assert (tmp_path / "out/a.txt").read_bytes() == b"A" * 1000 and (tmp_path / "out/b c.txt").read_bytes() == b""
    assert proxy.gets("/out/a.txt") == 1 and proxy.gets("/out/b%20c.txt") == 1  # no second try through the SDK
    assert all("sr=c" in line for line in proxy.requests if line.startswith("GET ") and "/out/a.txt" in line)  # a read SAS
    assert proxy.gets("/out/none.txt") == 2  # not there: the SDK's answer decides
    assert staging.traffic()[1] == 1000
    assert not list(tmp_path.rglob("*.saje-partial"))


@pytest.mark.parametrize("proxied", [b"/out/a.txt"], indirect=True)
def test_a_reset_read_is_taken_again_by_the_sdk(proxied, tmp_path):
    """The proxy resets the first GET of a.txt and holds the next until released."""
    staging, proxy = proxied
    target = tmp_path / "a.txt"
    done = []
    reader = threading.Thread(target=lambda: done.append(staging.download_outputs(TASK, ["out/a.txt"], {"out/a.txt": str(target)})))
    reader.start()
    wait_for(proxy.held.is_set, 60, what="the SDK's second GET of a.txt")
    assert not target.exists()  # nothing half-written in place meanwhile
    proxy.release()
    reader.join(60)
    assert done == [[]] and target.read_bytes() == b"A" * 1000
    assert proxy.resets == 1 and proxy.gets("/out/a.txt") == 2
