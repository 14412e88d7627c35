"""The emulator's HTTP vocabulary: one parsed request in, one response out.

Every handler (Batch data plane, ARM, token endpoint) is a function of a `Request`
returning a `Response`, so handlers are testable without a socket.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit


class Headers(dict):
    """Case-insensitive header mapping (keys stored lower-case)."""

    def __init__(self, items: Mapping[str, str] | None = None):
        super().__init__()
        for key, value in (items or {}).items():
            self[key] = value

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key.lower(), value)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


@dataclass
class Request:
    method: str
    raw_path: str  # path exactly as sent, percent-escapes intact (SharedKey signs this)
    query: dict[str, str]
    headers: Headers
    body: bytes = b""
    tls: bool = False
    operation: Any = None  # the service operation the request was routed to (set by the Batch API)
    schema: Any = None  # the schema of the request's api-version (set by the Batch API)

    @classmethod
    def from_target(cls, method: str, target: str, headers: Mapping[str, str], body: bytes = b"", tls: bool = False) -> "Request":
        parts = urlsplit(target)
        return cls(method.upper(), parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)), Headers(headers), body, tls)

    @property
    def path(self) -> str:
        """Decoded path: task file paths arrive with %2F inside one segment."""
        return unquote(self.raw_path)

    @property
    def segments(self) -> list[str]:
        """Path segments, each decoded on its own so an escaped '/' stays inside its segment."""
        return [unquote(s) for s in self.raw_path.strip("/").split("/") if s]

    def json(self) -> Any:
        if not self.body:
            return None
        return json.loads(self.body)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> "Response":
        hdrs = {"Content-Type": "application/json; odata=minimalmetadata; charset=utf-8"}
        hdrs.update(headers or {})
        return cls(status, json.dumps(payload).encode(), hdrs)

    @classmethod
    def empty(cls, status: int, headers: Mapping[str, str] | None = None) -> "Response":
        return cls(status, b"", dict(headers or {}))
