"""Azurite, Microsoft's storage emulator, as a child process: the blob store behind the local Batch.

The emulated node agent moves resource and output files through real blob URLs with real SAS
tokens, so the same code path (and the same storage error codes) runs locally and on Azure.

    with Azurite() as store:                       # in memory, a port the OS picked
        ContainerClient.from_connection_string(store.connection_string, "inputs")

Command line (azurite 3.x, `azurite-blob`): ``--blobHost 127.0.0.1 --blobPort 0
--skipApiVersionCheck --disableTelemetry --loose --silent`` and either ``--location DIR``
(on disk) or ``--inMemoryPersistence``. ``--blobPort 0`` lets the kernel choose a free port at
bind time, so two Azurites never race for one; the port is read back from the line Azurite
prints once it listens. A restarted emulator asks for the port its Azurite had before
(``port=``), so that the blob URLs its tasks and clients hold stay valid.
``--skipApiVersionCheck`` is needed because the Python blob SDK sends newer x-ms-version values
than Azurite knows. Azurite runs with umask 077: its files on disk are private.
"""
from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Sequence

ACCOUNT_NAME = "devstoreaccount1"
# The documented development-storage key: public, identical in every Azurite; not a secret.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

COMMON_FLAGS = ("--skipApiVersionCheck", "--disableTelemetry", "--loose", "--silent")
# Loopback traffic must not go through an HTTP(S)_PROXY from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_LISTENING = re.compile(r"listens on (https?)://([^\s:/]+):(\d+)")


class AzuriteError(RuntimeError):
    """Azurite is missing, would not start, or stopped answering."""


def _repo_roots() -> list[Path]:
    """Directories that may hold the repository's node_modules: this package's parents."""
    return list(Path(__file__).resolve().parents)


def find_azurite() -> list[str]:
    """The argv prefix that starts Azurite's blob service.

    Looks for the repository's own pinned copy (``npm install`` puts it in
    node_modules/.bin) before PATH, so tests run against the version package.json pins.
    """
    for root in _repo_roots():
        candidate = root / "node_modules" / ".bin" / "azurite-blob"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    on_path = shutil.which("azurite-blob")
    if on_path:
        return [on_path]
    repo = next((r for r in _repo_roots() if (r / "package.json").is_file()), None)
    where = f"in {repo}" if repo else "in the SAJE repository (the folder with package.json)"
    raise AzuriteError(
        "Azurite (the Azure Storage emulator) was not found: no node_modules/.bin/azurite-blob "
        f"and no azurite-blob on PATH. Run `npm install` {where} (needs Node.js 18+), "
        "or `npm install -g azurite`."
    )


class Azurite:
    """A private Azurite blob service for the lifetime of a ``with`` block.

    ``location`` keeps blobs on disk in that folder (it survives restarts); without it the
    data lives in memory and vanishes with the process. The process is always stopped on
    exit, also when the block raises: terminate first, kill if it lingers.
    """

    def __init__(
        self,
        location: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        command: Sequence[str] | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        debug_log: Path | str | None = None,
        cert: Path | str | None = None,
        key: Path | str | None = None,
    ) -> None:
        self.location = Path(location) if location is not None else None
        self.host = host
        self.command = list(command) if command else None
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.debug_log = Path(debug_log) if debug_log is not None else None
        # HTTPS with this certificate and key, and Entra bearer tokens (``--oauth basic``: Azurite
        # checks a token's issuer, audience and lifetime, not its signature; bearer needs HTTPS).
        self.cert = Path(cert) if cert is not None else None
        self.key = Path(key) if key is not None else None
        self.account_name = ACCOUNT_NAME
        self.account_key = ACCOUNT_KEY
        self.requested_port = port
        self.port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._output: deque[str] = deque(maxlen=40)
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    # -- public surface -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def scheme(self) -> str:
        return "https" if self.cert is not None else "http"

    @property
    def blob_endpoint(self) -> str:
        if self.port is None:
            raise AzuriteError("Azurite is not running")
        return f"{self.scheme}://{self.host}:{self.port}/{ACCOUNT_NAME}"

    @property
    def client_options(self) -> dict[str, str]:
        """What an Azure SDK client needs to trust this Azurite (its certificate when HTTPS)."""
        return {"connection_verify": str(self.cert)} if self.cert is not None else {}

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={ACCOUNT_NAME};"
            f"AccountKey={ACCOUNT_KEY};BlobEndpoint={self.blob_endpoint};"
        )

    def argv(self) -> list[str]:
        """The full command line; the key never appears on it."""
        argv = (self.command or find_azurite()) + ["--blobHost", self.host, "--blobPort", str(self.requested_port),
                                                   *COMMON_FLAGS]
        if self.location is None:
            argv.append("--inMemoryPersistence")
        else:
            argv += ["--location", str(self.location)]
        if self.debug_log is not None:
            argv += ["--debug", str(self.debug_log)]
        if self.cert is not None:
            argv += ["--cert", str(self.cert), "--key", str(self.key), "--oauth", "basic"]
        return argv

    def start(self) -> "Azurite":
        """Start the process and return once the blob endpoint answers HTTP."""
        if self._proc is not None:
            raise AzuriteError("Azurite is already started")
        if self.location is not None:
            self.location.mkdir(mode=0o700, parents=True, exist_ok=True)
        argv = self.argv()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=str(self.location) if self.location is not None else None,
            umask=0o077,
        )
        self._reader = threading.Thread(target=self._drain, name=f"azurite-{self._proc.pid}", daemon=True)
        self._reader.start()
        try:
            self._await_port()
            self._await_http()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate, then kill after ``stop_timeout``; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        self.port = None

    def __enter__(self) -> "Azurite":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.location or "in-memory"
        state = f"pid={self.pid} port={self.port}" if self._proc else "stopped"
        return f"Azurite({where}, {state})"

    # -- internals ------------------------------------------------------------------------

    def _drain(self) -> None:
        """Read Azurite's console so its pipe never fills; note the port it reports."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            self._output.append(line.rstrip())
            match = _LISTENING.search(line)
            if match and self.port is None:
                self.port = int(match.group(3))
                self._listening.set()
        self._listening.set()  # EOF: wake the waiter, which sees the process gone

    def _await_port(self) -> None:
        if not self._listening.wait(self.startup_timeout):
            raise self._failure(f"did not report a port within {self.startup_timeout:.0f}s")
        if self.port is None:
            raise self._failure("exited before listening")

    def _await_http(self) -> None:
        """Poll until any HTTP answer arrives: a 4xx still proves the service is up."""
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.blob_endpoint}?comp=list"
        opener = _DIRECT
        if self.cert is not None:
            context = ssl.create_default_context(cafile=str(self.cert))
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise self._failure("exited during startup")
            try:
                with opener.open(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise self._failure(f"did not answer on {self.blob_endpoint}") from None
                time.sleep(0.1)

    def _failure(self, what: str) -> AzuriteError:
        tail = "\n".join(self._output) or "(no output)"
        return AzuriteError(f"Azurite {what}. Its last output:\n{tail}")
