"""A TCP proxy in front of Azurite for the executor's tests: it records the blob requests that go
through it and can reset, then hold, the downloads of one blob."""
from __future__ import annotations

import socket
import struct
import threading


class BlobProxy:
    """Forwards TCP to `upstream` and records each request line it sees. With `hold`, a GET whose
    request line names it is reset the first time and held unanswered after that until `release()`."""

    def __init__(self, upstream: tuple[str, int], hold: bytes | None = None):
        self.upstream, self.marker = upstream, hold
        self.requests: list[str] = []
        self.resets = 0
        self.held = threading.Event()
        self.released = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        for sock in [self.server, *self.sockets]:
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        self.sockets.append(upstream)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        while True:
            try:
                chunk = client.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            first_line = chunk.split(b"\r\n", 1)[0]
            if first_line.split(b" ", 1)[0] in (b"GET", b"PUT", b"HEAD", b"DELETE", b"POST"):
                self.requests.append(first_line.decode("latin-1"))
            if (self.marker is not None and first_line.startswith(b"GET ") and self.marker in first_line
                    and not self.released.is_set()):
                if self.resets == 0:
                    self.resets += 1  # a connection reset, as a server closing a kept-alive connection gives
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                self.held.set()
                self.released.wait(300)
            try:
                upstream.sendall(chunk)
            except OSError:
                break
        for sock in (client, upstream):
            try:
                sock.close()
            except OSError:
                pass

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                chunk = source.recv(65536)
                if not chunk:
                    break
                sink.sendall(chunk)
            except OSError:
                break
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def gets(self, path_part: str) -> int:
        """How many GET requests named `path_part`."""
        return sum(1 for line in self.requests if line.startswith("GET ") and path_part in line.split(" ")[1])

    def environment(self, env: dict[str, str], port: int) -> dict[str, str]:
        """`env` with its storage connection strings pointing here instead of at Azurite's `port`."""
        out = dict(env)
        for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURITE_CONNECTION_STRING"):
            if name in out:
                out[name] = out[name].replace(f":{port}/", f":{self.port}/")
        return out
