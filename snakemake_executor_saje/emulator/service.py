"""`Emulator`: one local Batch account (plus, on request, Azurite) started and stopped as a unit.

    with Emulator(tmp_path) as emu:
        client = BatchClient(emu.endpoint, emu.credential())

Stopping kills every process of every node (tracked or not: see `processes`), then Azurite,
whatever happened before. A restart on the same data dir is the same account to its clients: the
same key, the same endpoint port unless another is given, Azurite on its old port; and what an
emulator that died there left running is stopped first (`datadir`).
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from . import auth, processes
from .agent import NodeAgent
from .api import BatchApi
from .config import EmulatorConfig, new_account_key
from .datadir import DataDir
from .scheduler import Scheduler
from .server import Frontend, HttpServer
from .state import BatchState

log = logging.getLogger(__name__)


class EndpointPortTaken(RuntimeError):
    """The port the data dir's clients know is held by another process."""


class Emulator:
    def __init__(self, data_dir: Path | str | None = None, *, with_azurite: bool = False,
                 config: EmulatorConfig | None = None, **overrides: Any):
        if config is None:
            if data_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="saje-emulator-")
                data_dir = self._tmp.name
            config = EmulatorConfig(data_dir=Path(data_dir))
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.config.data_dir = Path(self.config.data_dir).resolve()
        self.with_azurite = with_azurite
        self.azurite = None
        self.arm = None
        self._http: HttpServer | None = None
        self._scheduler: Scheduler | None = None
        self._agent: NodeAgent | None = None
        self.state: BatchState | None = None
        self.data = DataDir(self.config.data_dir)
        self.issuer = auth.TokenIssuer()  # the data dir's own, once started
        self.identity_header = auth.new_identity_header()
        self.cert_path: Path | None = None
        self.stale_stopped: list[str] = []  # what a dead emulator left running, stopped at start

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> "Emulator":
        cfg = self.config
        self.data.acquire()
        try:
            self.stale_stopped = self.data.reap_stale()
            if self.stale_stopped:
                log.warning("the emulator that ran on %s before did not stop cleanly; stopped what it left: %s",
                            cfg.data_dir, "; ".join(self.stale_stopped))
            saved = self.data.load_account()
            cfg.account_key = saved.key(cfg.account_name, cfg.account_key, new_account_key)
            self.issuer = auth.TokenIssuer.from_saved(saved.token_issuer)
            self.identity_header = saved.identity_header or self.identity_header
            saved.token_issuer, saved.identity_header = self.issuer.to_saved(), self.identity_header
            certfile = keyfile = None
            if cfg.tls:
                cert, key = auth.self_signed_cert(cfg.data_dir / "tls")
                certfile, keyfile = str(cert), str(key)
                self.cert_path = cert
                cfg.ca_bundle = auth.ca_bundle(cert, cfg.data_dir / "tls" / "ca-bundle.pem")
            if self.with_azurite:
                from .azurite import Azurite

                # An HTTPS emulator has an HTTPS Azurite that takes Entra tokens (nodes' managed identities).
                self.azurite = Azurite(location=cfg.data_dir / "azurite", port=saved.azurite_port or 0,
                                       cert=certfile, key=keyfile).start()
                cfg.auto_storage_connection_string = self.azurite.connection_string
                saved.azurite_port = self.azurite.port
            # Bind first so the account URL (with the real port) is known to the state.
            placeholder = BatchApi.__new__(BatchApi)
            frontend = Frontend(placeholder, accounts={cfg.account_name: cfg.account_key}, issuer=self.issuer,
                                identity_header=self.identity_header)
            self._http = self._bind(frontend, cfg.port or saved.batch_port or 0, certfile, keyfile,
                                    remembered=not cfg.port and saved.batch_port is not None)
            saved.batch_port = self._http.port
            self.data.save_account(saved)
            scheme = "https" if cfg.tls else "http"
            self.state = BatchState(cfg, f"{scheme}://{cfg.host}:{self._http.port}")
            api = BatchApi(self.state)
            frontend.api, frontend.state = api, self.state
            self.frontend = frontend
            frontend.on_outage = self.outage
            self._mount_arm(frontend)
            self._agent = NodeAgent(self.state, self.issuer)
            self._scheduler = Scheduler(self.state, self._agent)
            self._scheduler.start()
            self._http.start()
            self.data.record_running(self._running_record())
        except BaseException:
            self.stop()
            raise
        return self

    def _bind(self, frontend: Frontend, port: int, certfile: str | None, keyfile: str | None, *,
              remembered: bool) -> HttpServer:
        try:
            return HttpServer(frontend, self.config.host, port, certfile=certfile, keyfile=keyfile)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not remembered:
                raise
            raise EndpointPortTaken(
                f"Port {port}, where the emulator on {self.config.data_dir} served before (its clients use"
                f" {self.config.host}:{port}), is taken by another process. Stop that process, or give"
                " another port with --port (clients then need the new endpoint).") from None

    def _running_record(self) -> dict:
        """emulator.json: who runs on the data dir (never a key), for `saje emulator status|stop`
        and for the next start if this process dies without stopping."""
        me = processes.ProcessId.of(os.getpid())
        return {
            "pid": me.pid, "startTime": me.start_time, "endpoint": self.endpoint, "accountName": self.account_name,
            "azuriteBlobEndpoint": self.azurite.blob_endpoint if self.azurite is not None else None,
            "azurite": processes.ProcessId.of(self.azurite.pid).as_dict() if self.azurite is not None
            and self.azurite.pid else None,
            "dataDir": str(self.config.data_dir), "timeScale": self.config.time_scale,
        }

    def _mount_arm(self, frontend: Frontend) -> None:
        """Serve the ARM subset the setup workflows call, when that module is present."""
        try:
            from .arm import ArmService
        except ImportError:
            return
        self.arm = ArmService(self)
        frontend.arm = self.arm.handle

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None
        if self._agent is not None:
            self._agent.stop_all()
            self._agent = None
        if self.state is not None:
            self.state.store.close()
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None
        if self.data.held:
            self.data.clear_running()
            self.data.release()

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- what clients need
    @property
    def endpoint(self) -> str:
        assert self.state is not None, "start the emulator first"
        return self.state.account_url

    @property
    def account_name(self) -> str:
        return self.config.account_name

    @property
    def account_key(self) -> str:
        return self.config.account_key

    @property
    def faults(self):
        assert self.state is not None, "start the emulator first"
        return self.state.faults

    @property
    def request_counts(self) -> dict[str, int]:
        return dict(self.frontend.request_counts)

    @property
    def schema_refusals(self) -> list[dict[str, Any]]:
        """Request bodies refused as unreadable or invalid for the Batch schema (operation, code, values)."""
        assert self.state is not None, "start the emulator first"
        return list(self.state.schema_refusals)

    def credential(self):
        from azure.core.credentials import AzureNamedKeyCredential

        return AzureNamedKeyCredential(self.account_name, self.account_key)

    def client(self, **kwargs: Any):
        from azure.batch import BatchClient

        return BatchClient(self.endpoint, self.credential(), **kwargs)

    def identity_environment(self) -> dict[str, str]:
        """Variables that point azure-identity's managed-identity credential at this emulator."""
        return auth.token_endpoint_env(self.endpoint, self.identity_header)

    def outage(self, seconds: float) -> None:
        """The endpoint is unreachable for `seconds` (connections refused and reset, as in a network
        outage); pools, nodes and tasks carry on meanwhile."""
        assert self._http is not None, "start the emulator first"
        self._http.outage(seconds)

    def preempt(self, pool_id: str, node_id: str) -> None:
        assert self.state is not None
        self.state.preempt_node(pool_id, node_id)
