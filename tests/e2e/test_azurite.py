"""Resource and output files of the emulated node agent against a real Azurite, through real SAS URLs.

Needs Azurite from `npm install` in the repository; without it the fixture fails with that advice.
"""
from __future__ import annotations

import http.client
import http.server
import os
import re
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

from snakemake_executor_saje.emulator import blobio
from snakemake_executor_saje.emulator.azurite import Azurite
from snakemake_executor_saje.emulator.blobio import (
    AutoStorage,
    ResourceFileError,
    download_resource_files,
    upload_output_files,
)
from tests.conftest import http_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def store() -> Iterator[Azurite]:
    with Azurite() as azurite:
        yield azurite


@pytest.fixture(scope="module")
def service(store: Azurite) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(store.connection_string)


def _expiry() -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=1)


def container_url(store: Azurite, container: str, **permissions: bool) -> str:
    sas = generate_container_sas(
        store.account_name, container, account_key=store.account_key,
        permission=ContainerSasPermissions(**permissions), expiry=_expiry(),
    )
    return f"{store.blob_endpoint}/{container}?{sas}"


def blob_url(store: Azurite, container: str, blob: str) -> str:
    sas = generate_blob_sas(
        store.account_name, container, blob, account_key=store.account_key,
        permission=BlobSasPermissions(read=True), expiry=_expiry(),
    )
    return f"{store.blob_endpoint}/{container}/{blob}?{sas}"


INPUTS = {
    "inputs/a.txt": b"alpha\n",
    "inputs/sub/b.bin": bytes(range(256)) * 64,
    "inputs-extra.txt": b"prefix match, not a directory\n",
    "other/c.txt": b"not under the prefix\n",
}


@pytest.fixture(scope="module")
def inputs(service: BlobServiceClient) -> ContainerClient:
    container = service.create_container("inputs")
    for name, data in INPUTS.items():
        container.upload_blob(name, data)
    return container


@pytest.fixture
def task(tmp_path: Path) -> tuple[Path, Path]:
    task_dir = tmp_path / "task"
    (task_dir / "wd").mkdir(parents=True)
    return task_dir / "wd", task_dir


# -- the process ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_process_is_gone_after_the_block() -> None:
    with Azurite() as azurite:
        pid = azurite.pid
        assert pid is not None and _alive(pid)
        assert azurite.blob_endpoint.startswith("http://127.0.0.1:")
        assert azurite.blob_endpoint.endswith("/devstoreaccount1")
    assert not _alive(pid)


def test_process_is_stopped_when_the_block_raises() -> None:
    pid = None
    with pytest.raises(RuntimeError, match="boom"):
        with Azurite() as azurite:
            pid = azurite.pid
            raise RuntimeError("boom")
    assert pid is not None and not _alive(pid)


def test_two_instances_get_their_own_ports() -> None:
    with Azurite() as one, Azurite() as two:
        assert one.port != two.port


def test_on_disk_location_survives_a_restart(tmp_path: Path) -> None:
    with Azurite(tmp_path / "blobs") as azurite:
        svc = BlobServiceClient.from_connection_string(azurite.connection_string)
        svc.create_container("keep").upload_blob("k.txt", b"kept")
    with Azurite(tmp_path / "blobs") as azurite:
        svc = BlobServiceClient.from_connection_string(azurite.connection_string)
        assert svc.get_blob_client("keep", "k.txt").download_blob().readall() == b"kept"


# -- resource files ------------------------------------------------------------------------


def test_container_url_with_prefix_keeps_blob_names(store: Azurite, inputs: ContainerClient, task) -> None:
    wd, _ = task
    url = container_url(store, "inputs", read=True, list=True)
    download_resource_files([{"storageContainerUrl": url, "blobPrefix": "inputs/", "filePath": "data", "fileMode": "0755"}], wd)
    got = sorted(p.relative_to(wd).as_posix() for p in wd.rglob("*") if p.is_file())
    assert got == ["data/inputs/a.txt", "data/inputs/sub/b.bin"]
    for name in ("inputs/a.txt", "inputs/sub/b.bin"):
        assert (wd / "data" / name).read_bytes() == INPUTS[name]
        assert (wd / "data" / name).stat().st_mode & 0o777 == 0o755


def test_container_url_without_prefix_or_path_takes_everything(store: Azurite, inputs: ContainerClient, task) -> None:
    wd, _ = task
    download_resource_files([{"storageContainerUrl": container_url(store, "inputs", read=True, list=True)}], wd)
    assert {p.relative_to(wd).as_posix() for p in wd.rglob("*") if p.is_file()} == set(INPUTS)
    assert (wd / "other/c.txt").stat().st_mode & 0o777 == 0o770  # the documented default


def test_http_url_to_a_blob(store: Azurite, inputs: ContainerClient, task) -> None:
    wd, _ = task
    download_resource_files([{"httpUrl": blob_url(store, "inputs", "inputs/sub/b.bin"), "filePath": "x/y.bin", "fileMode": "0640"}], wd)
    assert (wd / "x/y.bin").read_bytes() == INPUTS["inputs/sub/b.bin"]
    assert (wd / "x/y.bin").stat().st_mode & 0o777 == 0o640


def test_auto_storage_container(store: Azurite, inputs: ContainerClient, task) -> None:
    wd, _ = task
    linked = AutoStorage(connection_string=store.connection_string)
    download_resource_files([{"autoStorageContainerName": "inputs", "blobPrefix": "other/"}], wd, auto_storage=linked)
    assert (wd / "other/c.txt").read_bytes() == INPUTS["other/c.txt"]


def test_missing_blob_is_blob_not_found(store: Azurite, inputs: ContainerClient, task) -> None:
    wd, _ = task
    with pytest.raises(ResourceFileError) as info:
        download_resource_files([{"httpUrl": blob_url(store, "inputs", "nope.txt"), "filePath": "nope.txt"}], wd)
    assert info.value.failure_info()["code"] == "BlobNotFound"
    assert info.value.category == "usererror"
    assert not (wd / "nope.txt").exists() and list(wd.iterdir()) == []  # no partial file left


def test_bad_signature_is_blob_access_denied(store: Azurite, inputs: ContainerClient, task) -> None:
    wd, _ = task
    url = blob_url(store, "inputs", "inputs/a.txt").replace("sig=", "sig=AAAA")
    with pytest.raises(ResourceFileError) as info:
        download_resource_files([{"httpUrl": url, "filePath": "a.txt"}], wd)
    assert info.value.code == "BlobAccessDenied"
    assert "sig=" not in str(info.value.failure_info())


def test_container_sas_without_list_is_access_denied(store: Azurite, inputs: ContainerClient, task) -> None:
    wd, _ = task
    with pytest.raises(ResourceFileError) as info:
        download_resource_files([{"storageContainerUrl": container_url(store, "inputs", read=True)}], wd)
    assert info.value.code == "BlobAccessDenied"


def test_missing_container_is_blob_not_found(store: Azurite, task) -> None:
    wd, _ = task
    with pytest.raises(ResourceFileError) as info:
        download_resource_files([{"storageContainerUrl": container_url(store, "absent", read=True, list=True)}], wd)
    assert info.value.code == "BlobNotFound"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP server on loopback: httpUrl need not be a blob."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "tool.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    with http_server(Quiet) as url:
        yield url


def test_http_url_to_a_plain_web_server(web: str, task) -> None:
    wd, _ = task
    download_resource_files([{"httpUrl": f"{web}/tool.sh", "filePath": "bin/tool.sh", "fileMode": "0755"}], wd)
    assert (wd / "bin/tool.sh").read_bytes().startswith(b"#!/bin/sh")
    assert os.access(wd / "bin/tool.sh", os.X_OK)
    with pytest.raises(ResourceFileError) as info:
        download_resource_files([{"httpUrl": f"{web}/absent", "filePath": "absent"}], wd)
    assert info.value.code == "BlobNotFound"


# -- output files --------------------------------------------------------------------------


@pytest.fixture
def outputs(service: BlobServiceClient, request: pytest.FixtureRequest) -> Iterator[ContainerClient]:
    name = re.sub(r"[^a-z0-9]+", "-", "out-" + request.node.name.lower())[:63].strip("-")
    container = service.create_container(name)
    yield container
    container.delete_container()


@pytest.fixture
def produced(task) -> tuple[Path, Path]:
    wd, task_dir = task
    files = {"a.txt": b"A", "b.txt": b"B", ".hidden.txt": b"H", "res/x.csv": b"1,2\n", "res/deep/y.csv": b"3,4\n", "res/z.txt": b"Z"}
    for rel, data in files.items():
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_bytes(data)
    (task_dir / "stdout.txt").write_bytes(b"standard out\n")
    (task_dir / "stderr.txt").write_bytes(b"standard err\n")
    return wd, task_dir


def write_only(store: Azurite, container: ContainerClient) -> str:
    return container_url(store, container.container_name, create=True, write=True)


def output(pattern: str, url: str, path: str | None = None, condition: str = "taskCompletion", headers=None) -> dict:
    dest: dict = {"containerUrl": url}
    if path is not None:
        dest["path"] = path
    if headers:
        dest["uploadHeaders"] = [{"name": k, "value": v} for k, v in headers.items()]
    return {"filePattern": pattern, "destination": {"container": dest}, "uploadOptions": {"uploadCondition": condition}}


def contents(container: ContainerClient) -> dict[str, bytes]:
    return {b.name: container.download_blob(b.name).readall() for b in container.list_blobs()}


def test_write_only_sas_really_cannot_read(store: Azurite, outputs: ContainerClient) -> None:
    outputs.upload_blob("seen.txt", b"x")
    with pytest.raises(Exception):
        ContainerClient.from_container_url(write_only(store, outputs)).download_blob("seen.txt").readall()


def test_patterns_land_under_their_blob_names(store: Azurite, outputs: ContainerClient, produced) -> None:
    wd, task_dir = produced
    url = write_only(store, outputs)
    failures = upload_output_files(
        [
            output("*.txt", url, path="flat"),
            output("res/**/*.csv", url, path="tables/"),
            output("../std*.txt", url, path="logs/task1"),
            output("../stdout.txt", url),
            output("res/z.txt", url, path="renamed/zed.txt"),
        ],
        wd, task_dir, exit_code=0, failed=False,
    )
    assert failures == []
    assert contents(outputs) == {
        "flat/a.txt": b"A",
        "flat/b.txt": b"B",  # .hidden.txt is not matched by '*'
        "tables/x.csv": b"1,2\n",
        "tables/deep/y.csv": b"3,4\n",
        "logs/task1/stdout.txt": b"standard out\n",
        "logs/task1/stderr.txt": b"standard err\n",
        "stdout.txt": b"standard out\n",
        "renamed/zed.txt": b"Z",
    }
    log = (task_dir / "fileuploadout.txt").read_text()
    assert "renamed/zed.txt" in log and "sig=" not in log


def test_recursive_pattern_without_path(store: Azurite, outputs: ContainerClient, produced) -> None:
    wd, task_dir = produced
    assert upload_output_files([output("**/*", write_only(store, outputs))], wd, task_dir, exit_code=0, failed=False) == []
    assert set(contents(outputs)) == {"a.txt", "b.txt", "res/x.csv", "res/deep/y.csv", "res/z.txt"}


@pytest.mark.parametrize(
    ("exit_code", "failed", "expected"),
    [
        (0, False, {"success/a.txt", "completion/a.txt"}),
        (3, False, {"failure/a.txt", "completion/a.txt"}),
        (None, True, {"failure/a.txt", "completion/a.txt"}),  # e.g. killed at maxWallClockTime
    ],
)
def test_upload_conditions(store: Azurite, outputs: ContainerClient, produced, exit_code, failed, expected) -> None:
    wd, task_dir = produced
    url = write_only(store, outputs)
    specs = [
        output("a.txt", url, path="success/a.txt", condition="taskSuccess"),
        output("a.txt", url, path="failure/a.txt", condition="taskFailure"),
        output("a.txt", url, path="completion/a.txt", condition="taskCompletion"),
    ]
    assert upload_output_files(specs, wd, task_dir, exit_code=exit_code, failed=failed) == []
    assert set(contents(outputs)) == expected


def test_upload_headers_are_applied(store: Azurite, outputs: ContainerClient, produced) -> None:
    wd, task_dir = produced
    headers = {"x-ms-blob-content-type": "text/csv", "x-ms-meta-producer": "saje"}
    assert upload_output_files([output("res/x.csv", write_only(store, outputs), headers=headers)], wd, task_dir, exit_code=0, failed=False) == []
    props = outputs.get_blob_client("x.csv").get_blob_properties()
    assert props.content_settings.content_type == "text/csv"
    assert props.metadata == {"producer": "saje"}


def test_small_outputs_go_up_as_one_put_on_a_kept_connection_even_after_the_server_closed_it(
        store: Azurite, outputs: ContainerClient, produced, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node agent's plain Put Blob (blobio._plain_put), not the SDK's pipeline: a kept
    connection the storage service has closed in the meantime is replaced, not a failure."""
    wd, task_dir = produced
    monkeypatch.setattr(blobio, "_put", lambda *a, **k: pytest.fail("the SDK's path was taken"))
    url = write_only(store, outputs)
    netloc = url.split("/")[2]
    stale = http.client.HTTPConnection(netloc)
    ours, theirs = socket.socketpair()
    theirs.close()  # as Azurite closes a kept-alive connection after 5 idle seconds
    stale.sock = ours
    monkeypatch.setitem(blobio._PLAIN_CONNECTIONS, netloc, [stale])
    assert upload_output_files([output("a.txt", url), output("b.txt", url)], wd, task_dir, exit_code=0, failed=False) == []
    assert contents(outputs) == {"a.txt": (wd / "a.txt").read_bytes(), "b.txt": (wd / "b.txt").read_bytes()}
    assert len(blobio._PLAIN_CONNECTIONS[netloc]) == 1  # one connection, kept for the next task


def test_a_large_output_goes_up_through_the_sdk(store: Azurite, outputs: ContainerClient, produced,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    wd, task_dir = produced
    monkeypatch.setattr(blobio, "_PLAIN_PUT_LIMIT", 0)  # a.txt (1 byte) is over it
    monkeypatch.setattr(blobio, "_plain_connection", lambda netloc: pytest.fail("a plain Put Blob was sent"))
    assert upload_output_files([output("a.txt", write_only(store, outputs))], wd, task_dir, exit_code=0, failed=False) == []
    assert contents(outputs) == {"a.txt": (wd / "a.txt").read_bytes()}


def test_bad_sas_gives_file_upload_access_denied(store: Azurite, outputs: ContainerClient, produced) -> None:
    wd, task_dir = produced
    bad = write_only(store, outputs).replace("sig=", "sig=AAAA")
    failures = upload_output_files([output("a.txt", bad), output("b.txt", write_only(store, outputs))], wd, task_dir, exit_code=0, failed=False)
    assert [f["code"] for f in failures] == ["FileUploadAccessDenied"]
    assert failures[0]["category"] == "usererror"
    assert "sig=" not in str(failures)
    assert set(contents(outputs)) == {"b.txt"}  # the other output file still went up
    assert "FileUploadAccessDenied" in (task_dir / "fileuploaderr.txt").read_text()


def test_read_only_sas_cannot_upload(store: Azurite, outputs: ContainerClient, produced) -> None:
    wd, task_dir = produced
    url = container_url(store, outputs.container_name, read=True, list=True)
    failures = upload_output_files([output("a.txt", url)], wd, task_dir, exit_code=0, failed=False)
    assert [f["code"] for f in failures] == ["FileUploadAccessDenied"]


def test_missing_container_gives_container_not_found(store: Azurite, produced) -> None:
    wd, task_dir = produced
    failures = upload_output_files([output("a.txt", container_url(store, "never-made", create=True, write=True))], wd, task_dir, exit_code=0, failed=False)
    assert [f["code"] for f in failures] == ["FileUploadContainerNotFound"]


def test_no_match_is_not_a_failure(store: Azurite, outputs: ContainerClient, produced) -> None:
    wd, task_dir = produced
    assert upload_output_files([output("*.nothing", write_only(store, outputs))], wd, task_dir, exit_code=0, failed=False) == []
    assert contents(outputs) == {}
