"""The conformance suite: the emulator measured against Microsoft's schema and published examples.

It runs on the session's shared emulator (tests/conftest.py). Requests go through the real
azure-batch SDK pipeline (shared-key signing, its headers) with bodies sent as written, so a
body the SDK's models could not even express is still sent to the emulator as-is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from snakemake_executor_saje.emulator import schema

API_VERSION = "2025-06-01"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None

    @property
    def values(self) -> dict[str, str]:
        return {v["key"]: v["value"] for v in (self.body or {}).get("values", [])} if isinstance(self.body, dict) else {}


def send(client, method: str, path: str, body: Any = None, *, api_version: str = API_VERSION,
         headers: dict[str, str] | None = None, raw: bytes | None = None) -> Reply:
    """One request through the SDK's pipeline; errors come back as replies, not exceptions."""
    sep = "&" if "?" in path else "?"
    url = f"{client._config.endpoint}{path}{sep}api-version={api_version}"
    hdrs = {"Content-Type": "application/json; odata=minimalmetadata", **(headers or {})}
    if raw is not None:
        request = HttpRequest(method, url, content=raw, headers=hdrs)
    elif body is not None:
        request = HttpRequest(method, url, json=body, headers=hdrs)
    else:
        request = HttpRequest(method, url, headers=hdrs)
    try:
        response = client.send_request(request, stream=True)  # streamed: no decoding by content type
    except HttpResponseError as exc:
        response = exc.response
    response.read()
    text = response.text() if method != "HEAD" else ""
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, parsed)


@pytest.fixture(scope="session")
def batch_schema() -> schema.Schema:
    return schema.load()


def assert_body(batch_schema, op, body: Any) -> None:
    items = body["value"] if op.paged else [body]
    problems = [str(p) for item in items for p in batch_schema.problems(op.response, item, request=False)]
    assert problems == [], problems


def assert_conforms(batch_schema, op, reply, *, sent_client_request_id: bool) -> None:
    """Status, declared headers and body of one answer against the operation's schema."""
    assert reply.status in op.statuses, (op.name, reply.status)
    declared = {h.lower() for h in op.headers}
    if not sent_client_request_id:
        declared.discard("client-request-id")
    missing = sorted(declared - set(reply.headers))
    assert missing == [], f"{op.name}: declared headers missing: {missing}"
    if "etag" in reply.headers:
        assert not reply.headers["etag"].startswith('"'), reply.headers["etag"]
    if op.response:
        assert_body(batch_schema, op, reply.body)
    elif op.method != "HEAD":
        assert reply.body in (None, ""), (op.name, reply.body)
