"""node_cache.py, the node's input cache: a blob version is downloaded once per node, verified by
size and MD5 before use, and linked read-only into each task's working directory."""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from snakemake_executor_saje import node_cache

BODY = b"ACGT" * 50000


class _Server:
    """Serves BODY for any path, counting GETs; `corrupt` serves one byte changed."""

    def __init__(self):
        self.gets, self.corrupt, self.status = 0, False, 200
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.gets += 1
                body = (b"X" + BODY[1:]) if outer.corrupt else BODY
                if outer.status != 200:
                    self.send_error(outer.status)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/account/container/inputs/ref/genome.fa?sv=x&sig=secret"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _item(url: str, path: str = "ref/genome.fa", etag: str = '"0x1"') -> dict:
    return {"url": url, "blob": "inputs/ref/genome.fa", "etag": etag, "size": len(BODY),
            "md5": base64.b64encode(hashlib.md5(BODY).digest()).decode(), "path": path}


def test_an_input_is_downloaded_once_per_node_and_linked_read_only(tmp_path, server):
    env = {"AZ_BATCH_JOB_PREP_DIR": str(tmp_path / "prep")}
    tasks = [tmp_path / f"task{i}" for i in range(3)]
    threads = [threading.Thread(target=node_cache.fetch, args=([_item(server.url)], env, wd)) for wd in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.gets == 1  # three tasks at once: one download, the others wait and link
    placed = [wd / "ref/genome.fa" for wd in tasks]
    assert all(p.read_bytes() == BODY for p in placed)
    assert len({p.stat().st_ino for p in placed}) == 1 and not os.stat(placed[0]).st_mode & 0o222
    node_cache.fetch([_item(server.url, etag='"0x2"')], env, tasks[0])  # a new version is a new entry
    assert server.gets == 2


def test_a_download_that_fails_its_md5_is_never_used(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setattr(node_cache.time, "sleep", lambda s: None)
    server.corrupt = True
    env = {"AZ_BATCH_JOB_PREP_DIR": str(tmp_path / "prep")}
    with pytest.raises(node_cache.CacheError, match="inputs/ref/genome.fa: got 200000 bytes with MD5") as err:
        node_cache.fetch([_item(server.url)], env, tmp_path / "task")
    assert "secret" not in str(err.value)
    assert server.gets == node_cache.ATTEMPTS
    assert not (tmp_path / "task/ref/genome.fa").exists()
    assert not any(p.is_file() and p.suffix == "" for p in (tmp_path / "prep/saje-cache").iterdir())
    # The command-line entry point: a message naming the input, and its own exit code.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(node_cache.INPUTS_ENV, json.dumps([{**_item(server.url, path="x"), "blob": "inputs/x", "size": 1}]))
    monkeypatch.setenv("AZ_BATCH_JOB_PREP_DIR", str(tmp_path / "prep"))
    assert node_cache.main() == node_cache.EXIT_CODE
    assert "SAJE node cache: an input of this task could not be put in place: inputs/x" in capsys.readouterr().err


def test_a_refused_read_with_an_expired_sas_says_when_it_expired(tmp_path, server):
    server.status = 403
    env = {"AZ_BATCH_JOB_PREP_DIR": str(tmp_path / "prep")}
    expired = server.url.replace("sv=x", "sv=x&se=2020-01-01T00%3A00%3A00Z")
    with pytest.raises(node_cache.CacheError, match=r"answered 403 .*its SAS token expired at 2020-01-01T00:00:00Z") as err:
        node_cache.fetch([_item(expired)], env, tmp_path / "task")
    assert server.gets == 1 and "secret" not in str(err.value)
    with pytest.raises(node_cache.CacheError) as err:  # not expired: no such guess
        node_cache.fetch([_item(server.url.replace("sv=x", "sv=x&se=2999-01-01T00%3A00%3A00Z"))], env, tmp_path / "task")
    assert "expired" not in str(err.value)


def test_it_runs_on_a_node_without_saje_from_a_lone_copy_with_the_standard_library_only(tmp_path, server):
    """On a Batch node only the task's files, Snakemake and standard tools exist: the file arrives
    alone (job preparation task) and must run from there with no site-packages (-S) at all."""
    lone = tmp_path / "prep" / "node_cache.py"
    lone.parent.mkdir()
    shutil.copy(node_cache.__file__, lone)
    workdir = tmp_path / "task"
    workdir.mkdir()
    env = {"PATH": os.environ["PATH"], "AZ_BATCH_JOB_PREP_DIR": str(tmp_path / "prep"),
           node_cache.INPUTS_ENV: json.dumps([_item(server.url)])}
    run = subprocess.run([sys.executable, "-I", "-S", str(lone)], cwd=workdir, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (workdir / "ref/genome.fa").read_bytes() == BODY and server.gets == 1
