"""Emulator authentication, driven by the real SDKs: azure-batch's SharedKey policy and
azure-identity's ManagedIdentityCredential, over real loopback sockets where it matters."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import ssl
import threading
import time
import urllib.request
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest
from azure.batch import BatchClient
from azure.batch._patch import BatchSharedKeyAuthPolicy
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest
from azure.identity import ManagedIdentityCredential

from snakemake_executor_saje.emulator import auth
from snakemake_executor_saje.emulator.auth import (
    ARM_AUDIENCES, BATCH_AUDIENCE, AuthError, TokenIssuer, authenticate, generate_self_signed_cert,
    handle_token_request, token_endpoint_env, verify_bearer, verify_shared_key,
)
from snakemake_executor_saje.emulator.wire import Request, Response

ACCOUNT = "saje"
KEY = base64.b64encode(b"k" * 64).decode()
OTHER_KEY = base64.b64encode(b"x" * 64).decode()
ACCOUNTS = {ACCOUNT: KEY}
ENDPOINT = "https://saje.eastus.batch.azure.com"


# ----------------------------------------------------------------------------- helpers

def sdk_signed(method: str, url: str, key: str = KEY, **kwargs) -> Request:
    """Sign with azure-batch 15.x's own policy, then read it as the server would."""
    http_request = HttpRequest(method, url, **kwargs)
    BatchSharedKeyAuthPolicy(AzureNamedKeyCredential(ACCOUNT, key)).on_request(
        PipelineRequest(http_request, PipelineContext(None)))
    body = http_request.content if isinstance(http_request.content, bytes) else (http_request.content or "").encode()
    return Request.from_target(method, http_request.url, dict(http_request.headers), body)


class _Server:
    """A loopback HTTP(S) server on a free port whose every request goes to `handler`."""

    def __init__(self, handler: Callable[[Request], Response], context: ssl.SSLContext | None = None):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request.from_target(self.command, self.path, dict(self.headers.items()), body,
                                              tls=context is not None)
                outer.requests.append(request)
                response = handler(request)
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self.requests: list[Request] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[..., _Server]]:
    servers: list[_Server] = []

    def start(handler: Callable[[Request], Response], context: ssl.SSLContext | None = None) -> _Server:
        servers.append(_Server(handler, context))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def fake_batch(request: Request) -> Response:
    """Enough of the Batch data plane for the SDK calls the tests make."""
    if request.method == "GET" and request.segments[:1] == ["jobs"] and len(request.segments) == 1:
        return Response.json(200, {"value": []})
    if request.method == "POST" and request.segments == ["jobs"]:
        return Response.empty(201, {"ETag": "0x1", "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
                                    "DataServiceId": "x"})
    if "files" in request.segments:
        return Response(200, b"hello", {"Content-Type": "application/octet-stream"})
    return Response.empty(404)


def shared_key_guard(accounts: dict[str, str]) -> Callable[[Request], Response]:
    def handle(request: Request) -> Response:
        try:
            verify_shared_key(request, accounts)
        except AuthError as err:
            return err.to_response()
        return fake_batch(request)
    return handle


# ----------------------------------------------------------------------------- SharedKey, signed by the SDK policy

def test_get_with_escaped_path_and_odata_query_verifies() -> None:
    url = f"{ENDPOINT}/jobs/job-1/tasks/task%201/files/wd%2Fout%2Fresult.txt"
    request = sdk_signed("GET", url, params={"api-version": "2025-06-01", "timeout": 30,
                                             "$filter": "state eq 'active' and id eq 'a b'"})
    assert "%2F" in request.raw_path and request.segments[-1] == "wd/out/result.txt"
    assert request.query["$filter"] == "state eq 'active' and id eq 'a b'"
    assert verify_shared_key(request, ACCOUNTS) == ACCOUNT


def test_post_with_json_body_and_post_without_body_verify() -> None:
    body_request = sdk_signed("POST", f"{ENDPOINT}/jobs?api-version=2025-06-01",
                              json={"id": "j1", "poolInfo": {"poolId": "p"}},
                              headers={"content-type": "application/json; odata=minimalmetadata"})
    assert verify_shared_key(body_request, ACCOUNTS) == ACCOUNT
    # 15.x signs Content-Length "0" for a bodiless POST even when no such header is sent.
    empty = sdk_signed("POST", f"{ENDPOINT}/jobs/j1/terminate?api-version=2025-06-01")
    assert "content-length" not in empty.headers
    assert verify_shared_key(empty, ACCOUNTS) == ACCOUNT


def test_blank_query_values_are_not_signed() -> None:
    request = sdk_signed("GET", f"{ENDPOINT}/pools?api-version=2025-06-01&$select=&maxresults=10")
    assert request.query["$select"] == ""
    assert verify_shared_key(request, ACCOUNTS) == ACCOUNT


def test_wrong_key_is_refused_with_403_authentication_failed() -> None:
    request = sdk_signed("GET", f"{ENDPOINT}/jobs?api-version=2025-06-01", key=OTHER_KEY)
    with pytest.raises(AuthError) as info:
        verify_shared_key(request, ACCOUNTS)
    err = info.value
    assert (err.status, err.code, err.reason) == (403, "AuthenticationFailed", "signature")
    body = err.odata_error("rid")
    assert body["message"]["value"].startswith(auth.SHARED_KEY_MESSAGE + "\nRequestId:rid\nTime:")
    assert body["values"][0]["key"] == "AuthenticationErrorDetail"
    assert KEY not in json.dumps(body) and OTHER_KEY not in json.dumps(body)


@pytest.mark.parametrize("tamper", [
    lambda r: setattr(r, "raw_path", r.raw_path.replace("%2F", "/")),
    lambda r: r.query.__setitem__("timeout", "31"),
    lambda r: setattr(r, "method", "DELETE"),
    lambda r: r.headers.__setitem__("ocp-range", "bytes=0-1"),
])
def test_tampered_request_is_refused(tamper: Callable[[Request], None]) -> None:
    request = sdk_signed("GET", f"{ENDPOINT}/jobs/j/tasks/t/files/a%2Fb?api-version=2025-06-01&timeout=30")
    tamper(request)
    with pytest.raises(AuthError, match="signature|MAC"):
        verify_shared_key(request, ACCOUNTS)


def test_unknown_account_missing_and_malformed_header() -> None:
    request = sdk_signed("GET", f"{ENDPOINT}/jobs?api-version=2025-06-01")
    with pytest.raises(AuthError) as info:
        verify_shared_key(request, {"other": KEY})
    assert info.value.reason == "unknown_account"
    assert verify_shared_key(request, {ACCOUNT: (OTHER_KEY, KEY)}) == ACCOUNT  # secondary key
    for header, reason in [(None, "missing"), ("SharedKey nocolon", "malformed"), ("Basic abc:def", "malformed")]:
        request.headers.pop("authorization", None)
        if header:
            request.headers["Authorization"] = header
        with pytest.raises(AuthError) as info:
            verify_shared_key(request, ACCOUNTS)
        assert (info.value.reason, info.value.status) == (reason, 403)


def test_request_date_older_than_15_minutes_is_refused() -> None:
    request = sdk_signed("GET", f"{ENDPOINT}/jobs?api-version=2025-06-01")
    now = dt.datetime.now(dt.timezone.utc)
    assert verify_shared_key(request, ACCOUNTS, now=now + dt.timedelta(minutes=14)) == ACCOUNT
    with pytest.raises(AuthError, match="Request date header too old") as info:
        verify_shared_key(request, ACCOUNTS, now=now + dt.timedelta(minutes=16))
    assert (info.value.reason, info.value.code, info.value.status) == ("date", "AuthenticationFailed", 403)
    with pytest.raises(AuthError, match="future"):
        verify_shared_key(request, ACCOUNTS, now=now - dt.timedelta(minutes=16))


def test_date_header_is_used_when_ocp_date_is_absent() -> None:
    stamp = format_datetime(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1), usegmt=True)
    request = Request.from_target("GET", "/jobs?api-version=2025-06-01", {"Date": stamp})
    text = auth.string_to_sign(request, ACCOUNT)
    request.headers["Authorization"] = f"SharedKey {ACCOUNT}:{auth.sign(KEY, text)}"
    with pytest.raises(AuthError, match="too old"):
        verify_shared_key(request, ACCOUNTS)
    assert verify_shared_key(request, ACCOUNTS, now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))


def _doc_signer(request: Request) -> str:
    """An independent signer written from the REST docs, signing the headers as sent (the
    14.x SDK's behaviour: no Content-Length default for a bodiless POST)."""
    h = {k: v for k, v in request.headers.items() if v}
    names = ["content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
             "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range"]
    parts = [request.method, *[h.get(n, "") for n in names]]
    parts += [f"{k}:{h[k]}" for k in sorted(k for k in h if k.startswith("ocp-"))]
    resource = f"/{ACCOUNT}{request.raw_path}" + "".join(
        f"\n{k}:{v}" for k, v in sorted(request.query.items()) if v)
    text = "\n".join(parts) + "\n" + resource
    return base64.b64encode(hmac.new(base64.b64decode(KEY), text.encode(), hashlib.sha256).digest()).decode()


def test_14x_variant_without_content_length_default_is_accepted() -> None:
    stamp = format_datetime(dt.datetime.now(dt.timezone.utc), usegmt=True)
    request = Request.from_target("POST", "/jobs/j1/disable?api-version=2024-02-01.19.0&timeout=30",
                                  {"ocp-date": stamp, "client-request-id": "abc"})
    request.headers["Authorization"] = f"SharedKey {ACCOUNT}:{_doc_signer(request)}"
    assert verify_shared_key(request, ACCOUNTS) == ACCOUNT


# ----------------------------------------------------------------------------- SharedKey over the wire, real BatchClient

def test_real_batch_client_over_http(serve) -> None:
    server = serve(shared_key_guard(ACCOUNTS))
    client = BatchClient(server.url, AzureNamedKeyCredential(ACCOUNT, KEY))
    assert list(client.list_jobs(filter="state eq 'active'", select=["id", "state"])) == []
    client.create_job({"id": "j1", "poolInfo": {"poolId": "p1"}})
    data = b"".join(client.download_task_file("j1", "t 1", "wd/out dir/a.txt"))
    assert data == b"hello"
    file_request = server.requests[-1]
    assert "%2F" in file_request.raw_path and file_request.segments[-1] == "wd/out dir/a.txt"


def test_real_batch_client_with_wrong_key_gets_403_authentication_failed(serve) -> None:
    server = serve(shared_key_guard(ACCOUNTS))
    client = BatchClient(server.url, AzureNamedKeyCredential(ACCOUNT, OTHER_KEY))
    with pytest.raises(HttpResponseError) as info:
        list(client.list_jobs())
    assert info.value.status_code == 403
    assert info.value.error.code == "AuthenticationFailed"


# ----------------------------------------------------------------------------- tokens

@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer()


def test_issue_and_verify_claims(issuer: TokenIssuer) -> None:
    token = issuer.issue(BATCH_AUDIENCE, "user-1", 600)
    claims = issuer.verify(token, BATCH_AUDIENCE)
    assert {"aud", "iss", "sub", "exp", "nbf", "iat", "tid", "oid"} <= claims.keys()
    assert claims["tid"] == issuer.tenant_id and claims["sub"] == "user-1"
    assert claims["exp"] - claims["iat"] == 600


def test_trailing_slash_is_lenient_unless_exact(issuer: TokenIssuer) -> None:
    token = issuer.issue("https://batch.core.windows.net", "u")
    assert issuer.verify(token, BATCH_AUDIENCE)["aud"] == "https://batch.core.windows.net"
    with pytest.raises(AuthError, match="including forward slash") as info:
        issuer.verify(token, BATCH_AUDIENCE, exact=True)
    assert info.value.reason == "audience"
    arm = issuer.issue("https://management.azure.com", "u")
    assert issuer.verify(arm, ARM_AUDIENCES)


def test_wrong_audience_expired_and_forged_tokens_are_refused(issuer: TokenIssuer) -> None:
    with pytest.raises(AuthError) as info:
        issuer.verify(issuer.issue(ARM_AUDIENCES[0], "u"), BATCH_AUDIENCE)
    assert (info.value.reason, info.value.status) == ("audience", 403)
    expired = issuer.issue(BATCH_AUDIENCE, "u", 60, now=time.time() - 120)
    with pytest.raises(AuthError, match="expired"):
        issuer.verify(expired, BATCH_AUDIENCE)
    with pytest.raises(AuthError, match="Signature"):
        issuer.verify(TokenIssuer(tenant_id=issuer.tenant_id).issue(BATCH_AUDIENCE, "u"), BATCH_AUDIENCE)
    head, body, sig = issuer.issue(BATCH_AUDIENCE, "u").split(".")
    claims = json.loads(auth._unb64url(body))
    claims["sub"] = "admin"
    forged = f"{head}.{auth._b64url(json.dumps(claims).encode())}.{sig}"
    with pytest.raises(AuthError, match="Signature"):
        issuer.verify(forged, BATCH_AUDIENCE)
    none_alg = f"{auth._b64url(json.dumps({'alg': 'none'}).encode())}.{body}."
    with pytest.raises(AuthError):
        issuer.verify(none_alg, BATCH_AUDIENCE)
    with pytest.raises(AuthError, match="well-formed"):
        issuer.verify("not-a-jwt", BATCH_AUDIENCE)


def test_verify_bearer_needs_https(issuer: TokenIssuer) -> None:
    token = issuer.issue(BATCH_AUDIENCE, "u")
    headers = {"Authorization": f"Bearer {token}"}
    with pytest.raises(AuthError) as info:
        verify_bearer(Request.from_target("GET", "/jobs", headers), issuer, BATCH_AUDIENCE)
    assert info.value.reason == "insecure"
    assert verify_bearer(Request.from_target("GET", "/jobs", headers, tls=True), issuer)["sub"] == "u"
    with pytest.raises(AuthError) as info:
        verify_bearer(Request.from_target("GET", "/jobs", {}, tls=True), issuer)
    assert info.value.reason == "missing"
    assert token not in str(info.value)


def test_authenticate_dispatches_on_scheme(issuer: TokenIssuer) -> None:
    shared = sdk_signed("GET", f"{ENDPOINT}/jobs?api-version=2025-06-01")
    assert authenticate(shared, accounts=ACCOUNTS, issuer=issuer).account == ACCOUNT
    bearer = Request.from_target("GET", "/jobs", {"Authorization": f"Bearer {issuer.issue(BATCH_AUDIENCE, 'u')}"},
                                 tls=True)
    principal = authenticate(bearer, accounts=ACCOUNTS, issuer=issuer)
    assert principal.scheme == "Bearer" and principal.claims["sub"] == "u"
    with pytest.raises(AuthError) as info:
        authenticate(Request.from_target("GET", "/jobs", {}), accounts=ACCOUNTS, issuer=issuer)
    assert info.value.reason == "missing"


# ----------------------------------------------------------------------------- token endpoint via azure-identity

@pytest.fixture
def identity_env(monkeypatch, serve, issuer):
    secret = auth.new_identity_header()
    server = serve(lambda request: handle_token_request(request, issuer, secret))
    for name in ("IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    env = token_endpoint_env(server.url, secret)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return server, env


def test_managed_identity_credential_gets_a_batch_token(identity_env, issuer: TokenIssuer) -> None:
    server, env = identity_env
    assert set(env) == {"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}
    token = ManagedIdentityCredential().get_token("https://batch.core.windows.net//.default")
    claims = issuer.verify(token.token, BATCH_AUDIENCE, exact=True)
    assert claims["aud"] == BATCH_AUDIENCE and claims["sub"] == issuer.principal_id
    assert token.expires_on > time.time() + 3000
    sent = server.requests[-1]
    assert sent.raw_path == auth.TOKEN_PATH and sent.query["api-version"] == "2019-08-01"
    with pytest.raises(AuthError):
        issuer.verify(token.token, ARM_AUDIENCES)


def test_wrong_identity_header_is_refused(identity_env, monkeypatch) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "wrong")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential().get_token("https://management.azure.com/.default")


def test_token_endpoint_checks_its_request(issuer: TokenIssuer) -> None:
    ok = {"X-IDENTITY-HEADER": "s"}
    cases = [("POST", "/msi/token?api-version=2019-08-01&resource=r", ok, 405),
             ("GET", "/msi/token?api-version=2019-08-01&resource=r", {}, 401),
             ("GET", "/msi/token?api-version=2017-09-01&resource=r", ok, 400),
             ("GET", "/msi/token?api-version=2019-08-01", ok, 400)]
    for method, target, headers, status in cases:
        response = handle_token_request(Request.from_target(method, target, headers), issuer, "s")
        assert response.status == status and "statusCode" in json.loads(response.body)
    good = handle_token_request(Request.from_target("GET", cases[0][1], ok), issuer, "s")
    payload = json.loads(good.body)
    assert good.status == 200 and payload["resource"] == "r" and payload["token_type"] == "Bearer"
    assert isinstance(payload["expires_on"], str) and int(payload["expires_on"]) > time.time()


# ----------------------------------------------------------------------------- HTTPS end to end

def test_self_signed_cert_passes_strict_verification(tmp_path, serve) -> None:
    cert, key = generate_self_signed_cert(tmp_path)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = serve(lambda request: Response.json(200, {"tls": request.tls}), context)
    client_context = ssl.create_default_context(cafile=str(cert))
    client_context.verify_flags |= getattr(ssl, "VERIFY_X509_STRICT", 0)
    for host in ("127.0.0.1", "localhost"):
        url = server.url.replace("127.0.0.1", host)
        with urllib.request.urlopen(url, context=client_context, timeout=10) as reply:
            assert json.loads(reply.read()) == {"tls": True}


def test_batch_client_with_managed_identity_over_https(tmp_path, serve, identity_env, issuer) -> None:
    cert, key = generate_self_signed_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def guarded(request: Request) -> Response:
        try:
            authenticate(request, accounts=ACCOUNTS, issuer=issuer, exact=True)
        except AuthError as err:
            return err.to_response()
        return fake_batch(request)

    server = serve(guarded, context)
    client = BatchClient(server.url, ManagedIdentityCredential(), connection_verify=str(cert))
    assert list(client.list_jobs(filter="state eq 'active'")) == []
    assert server.requests[-1].headers["authorization"].startswith("Bearer ")
