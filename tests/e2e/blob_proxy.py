"""A TCP proxy in front of Azurite, for the executor's tests and benchmarks/shared_input.py.

It sees every blob request of a run: it records each request line, counts the body bytes of each
answer by its request (what a blob read moves, headers left out), and can reset, then hold, the
downloads of one blob (a server closing a kept-alive connection, then a stuck retry)."""
from __future__ import annotations

import socket
import struct
import threading
from collections import Counter

METHODS = (b"GET", b"PUT", b"HEAD", b"DELETE", b"POST")


class BlobProxy:
    """Forwards TCP to `upstream`. With `hold`, a GET whose request line contains it is reset the
    first time and held unanswered after that until `release()`."""

    def __init__(self, upstream: tuple[str, int], hold: bytes | None = None):
        self.upstream, self.marker = upstream, hold
        self.requests: list[str] = []
        self.body_bytes: Counter[str] = Counter()  # "GET /path" (no query) -> bytes of its answers' bodies
        self.resets = 0
        self.held = threading.Event()
        self.released = threading.Event()
        self._lock = threading.Lock()
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

    def gets(self, path_part: str) -> int:
        """How many GET requests named `path_part`."""
        with self._lock:
            return sum(1 for line in self.requests if line.startswith("GET ") and path_part in line.split(" ")[1])

    def read(self, path_part: str) -> int:
        """Body bytes answered to GETs of blobs whose path contains `path_part`."""
        with self._lock:
            return sum(v for k, v in self.body_bytes.items() if k.startswith("GET ") and path_part in k)

    def environment(self, env: dict[str, str], port: int) -> dict[str, str]:
        """`env` with its storage connection strings pointing here instead of at Azurite's `port`."""
        out = dict(env)
        for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURITE_CONNECTION_STRING"):
            if name in out:
                out[name] = out[name].replace(f":{port}/", f":{self.port}/")
        return out

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
        current = {"request": ""}  # the request the next answer belongs to (HTTP/1.1: in order)
        threading.Thread(target=self._answer, args=(upstream, client, current), daemon=True).start()
        while True:
            try:
                chunk = client.recv(1 << 16)
            except OSError:
                break
            if not chunk:
                break
            first_line = chunk.split(b"\r\n", 1)[0]
            if first_line.split(b" ", 1)[0] in METHODS:
                line = first_line.decode("latin-1")
                method, path = line.split(" ")[:2]
                with self._lock:
                    self.requests.append(line)
                current["request"] = f"{method} {path.split('?')[0]}"
            if (self.marker is not None and first_line.startswith(b"GET ") and self.marker in first_line
                    and not self.released.is_set()):
                if self.resets == 0:
                    self.resets += 1
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

    def _answer(self, upstream: socket.socket, client: socket.socket, current: dict[str, str]) -> None:
        in_headers = False
        while True:
            try:
                chunk = upstream.recv(1 << 16)
                if not chunk:
                    break
                body = chunk
                if chunk.startswith(b"HTTP/1."):
                    in_headers = True
                if in_headers:
                    head_end = chunk.find(b"\r\n\r\n")
                    body = b"" if head_end < 0 else chunk[head_end + 4:]
                    in_headers = head_end < 0
                with self._lock:
                    self.body_bytes[current["request"]] += len(body)
                client.sendall(chunk)
            except OSError:
                break
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
