"""The HTTP(S) front end: parses requests, authenticates, injects faults, and routes.

Routes: `/msi/token` (the managed-identity token endpoint), `/_saje/...` (emulator control:
faults, an outage, preemption), ARM paths (`/subscriptions/...`, `/providers/...`) when an ARM handler is
mounted, and everything else to the Batch data plane.
"""
from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from . import auth
from .api import BatchApi
from .errors import BatchError
from .timeutil import rfc1123
from .wire import Headers, Request, Response

log = logging.getLogger(__name__)

ArmHandler = Callable[[Request], Response]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, *args, **kwargs) -> None:
        self.connections: set = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """Reset every open (keep-alive) connection, as a network outage does."""
        with self._connections_lock:
            open_now = list(self.connections)
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up (or a dropped-connection fault) is routine, not a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            log.debug("connection from %s closed early", client_address)
            return
        super().handle_error(request, client_address)


class Frontend:
    """Everything between the socket and the handlers; one per emulator."""

    def __init__(self, api: BatchApi, *, accounts: dict[str, str], issuer: auth.TokenIssuer,
                 identity_header: str, arm: ArmHandler | None = None):
        self.api = api
        self.state = getattr(api, "state", None)
        self.accounts = accounts
        self.issuer = issuer
        self.identity_header = identity_header
        self.arm = arm
        self.request_counts: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self.on_outage: Callable[[float], None] = lambda seconds: None  # set by the service

    def count(self, request: Request) -> str:
        kind = request_kind(request)
        with self._count_lock:
            self.request_counts[kind] = self.request_counts.get(kind, 0) + 1
        return kind

    def handle(self, request: Request) -> Response | None:
        """The response, or None to drop the connection (an injected fault)."""
        if request.raw_path == auth.TOKEN_PATH:
            return auth.handle_token_request(request, self.issuer, self.identity_header)
        is_arm = request.raw_path.startswith(("/subscriptions", "/providers", "/tenants"))
        try:
            principal = auth.authenticate(
                request, accounts=self.accounts, issuer=self.issuer,
                audience=auth.ARM_AUDIENCES if is_arm else auth.BATCH_AUDIENCE,
            )
        except auth.AuthError as exc:
            if is_arm and self.arm is not None:
                return Response.json(401, {"error": {"code": "AuthenticationFailed" if exc.reason == "missing" else "InvalidAuthenticationToken",
                                                     "message": exc.message}})
            return exc.to_response()
        if request.raw_path.startswith("/_saje/"):
            return self._control(request)
        if is_arm:
            if self.arm is None or principal.scheme != "Bearer":
                return Response.json(401, {"error": {"code": "AuthenticationFailed",
                                                     "message": "Azure Resource Manager needs a bearer token."}})
            return self.arm(request)
        kind = self.count(request)
        faults = self.state.faults
        if faults.slow_seconds:
            time.sleep(faults.slow_seconds)
        if faults.take_drop():
            return None
        if faults.take_throttle():
            status = faults.throttle_status
            code = "TooManyRequests" if status == 429 else "ServerBusy"
            error = BatchError(status, code, "The server is busy; retry the request later." if status == 503 else
                               "The request rate is too high; retry after the interval in Retry-After.")
            return Response.json(status, error.body(self.state.account_url, "fault", self.state.clock.iso_now()),
                                 {"Retry-After": str(faults.retry_after_seconds)})
        response = self.api.handle(request)
        if faults.take_lost_reply(kind):
            return None
        return response

    def _control(self, request: Request) -> Response:
        segments = request.segments[1:]
        try:
            if segments == ["faults"] and request.method == "POST":
                self.state.faults.update(**(request.json() or {}))
                return Response.json(200, self.state.faults.as_dict())
            if segments == ["faults"] and request.method == "GET":
                return Response.json(200, self.state.faults.as_dict())
            if segments == ["outage"] and request.method == "POST":
                seconds = float((request.json() or {}).get("seconds", 0))
                if not 0 < seconds <= 3600:
                    raise ValueError("outage needs 0 < seconds <= 3600")
                # After this reply has gone out: the server must answer before it stops listening.
                timer = threading.Timer(0.1, self.on_outage, args=(seconds,))
                timer.daemon = True
                timer.start()
                return Response.empty(202)
            if segments == ["clock"] and request.method == "GET":
                # The service clock against the host's, read together: a client on this host maps
                # the service's (time-scaled) timestamps onto its own clock with them.
                return Response.json(200, {"timeScale": self.state.clock.scale, "now": self.state.clock.iso_now(),
                                           "hostTime": time.time()})
            if segments == ["requests"] and request.method == "GET":
                return Response.json(200, dict(self.request_counts))
            if segments == ["task-adds"] and request.method == "GET":
                with self.state.lock:
                    return Response.json(200, {kind: dict(counts) for kind, counts in self.state.task_adds.items()})
            if len(segments) == 5 and segments[0] == "pools" and segments[2] == "nodes" and segments[4] == "preempt":
                self.state.preempt_node(segments[1], segments[3])
                return Response.empty(202)
        except BatchError as exc:
            return Response.json(exc.status, exc.body(self.state.account_url, "control", self.state.clock.iso_now()))
        except (ValueError, TypeError) as exc:
            return Response.json(400, {"code": "InvalidRequestBody", "message": str(exc)})
        return Response.json(404, {"code": "InvalidUri", "message": "Unknown emulator control endpoint."})


_ID_SEGMENT = re.compile(r"^(pools|jobs|tasks|nodes|files)$")


def request_kind(request: Request) -> str:
    """'POST /jobs/{}/addtaskcollection': what request counts and the lost-reply fault key on."""
    return f"{request.method} {_shape(request.raw_path)}"


def _shape(path: str) -> str:
    """/jobs/j1/tasks/t1 -> /jobs/{}/tasks/{}: request kinds for the benchmarks' call counts."""
    parts = path.strip("/").split("/")
    out = []
    for index, part in enumerate(parts):
        out.append("{}" if index and _ID_SEGMENT.match(parts[index - 1]) else part)
    return "/" + "/".join(out)


def make_handler(frontend: Frontend, tls: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "SajeBatchEmulator/1.0"

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature fixed by the base class
            log.debug("%s %s", self.address_string(), format % args)

        def date_time_string(self, timestamp=None) -> str:
            """The Date header is the service's clock (time-scaled or not), as on Azure, read when
            the request arrived: whatever a listing leaves out changed after that time, so a client
            that lists what changed since the last answer's Date misses nothing (a time taken
            after the listing's snapshot could pass a task that completed between the two)."""
            if timestamp is not None or frontend.state is None:
                return super().date_time_string(timestamp)
            # Taken, not read: the next request on a kept-alive connection may fail before _handle.
            arrived = self.__dict__.pop("arrived", None)
            return rfc1123(arrived or frontend.state.clock.now())

        def _handle(self) -> None:
            state = frontend.state
            self.arrived = state.clock.now() if state is not None else None
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request.from_target(self.command, self.path, Headers(dict(self.headers.items())), body, tls=tls)
            try:
                response = frontend.handle(request)
            except Exception:  # a bug must answer 500 InternalError, like the service, not hang the client
                log.exception("unhandled error for %s %s", self.command, self.path)
                response = Response.json(500, {"code": "InternalError", "message": {"lang": "en-US", "value": "Server encountered an internal error."}})
            if response is None:
                self.close_connection = True
                self.connection.close()
                return
            self.send_response(response.status)
            for key, value in response.headers.items():
                if key.lower() != "content-length":
                    self.send_header(key, value)
            if "Content-Length" not in response.headers:
                self.send_header("Content-Length", str(len(response.body)))
            else:
                self.send_header("Content-Length", response.headers["Content-Length"])
            self.end_headers()
            if self.command != "HEAD" and response.status not in (204, 304):
                self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler


class HttpServer:
    def __init__(self, frontend: Frontend, host: str, port: int, *, certfile: str | None = None, keyfile: str | None = None):
        self.tls = certfile is not None
        self._handler = make_handler(frontend, self.tls)
        self._context: ssl.SSLContext | None = None
        if self.tls:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(certfile, keyfile)
        self._lock = threading.Lock()
        self._stopped = False
        self._bind((host, port))

    def _bind(self, address) -> None:
        self._server = _Server(address, self._handler)
        if self._context is not None:
            self._server.socket = self._context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="batch-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._close()

    def _close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.cut_connections()
        self._thread.join(timeout=5)

    def outage(self, seconds: float) -> None:
        """Be unreachable for `seconds`: open connections reset, new ones refused (nothing listens on
        the port), then listen again on the same port. The service behind keeps running."""
        with self._lock:
            if self._stopped:
                return
            address = self._server.server_address
            self._close()
        timer = threading.Timer(seconds, self._listen_again, args=(address,))
        timer.daemon = True
        timer.start()

    def _listen_again(self, address) -> None:
        with self._lock:
            if self._stopped:
                return
            self._bind(address)
            self._thread.start()


def dumps(payload) -> str:
    return json.dumps(payload, indent=2)
