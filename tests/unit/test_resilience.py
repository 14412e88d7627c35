"""The time-bounded retry policy, the outage reports and the transient/permanent split.

The policy runs in a real azure-core pipeline; only the transport underneath is scripted (what
the network answered), so this tests azure-core's RetryPolicy as SAJE configures it.
"""
from __future__ import annotations

import json
import threading
import time

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import Pipeline
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest

from snakemake_executor_saje import resilience
from snakemake_executor_saje.readable import minutes, number
from snakemake_executor_saje.resilience import BatchRetryPolicy, Patience, describe_http_error, diagnose


class Reply:
    """Just enough of an HTTP response for azure-core's pipeline and its exceptions."""

    def __init__(self, request, status: int, body: dict | None = None, headers: dict | None = None):
        self.request = request
        self.status_code = status
        self.reason = {200: "OK", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
                       503: "Service Unavailable"}.get(status, "")
        self.headers = headers or {}
        self.content_type = "application/json"
        self._body = json.dumps(body or {}).encode()

    def body(self) -> bytes:
        return self._body

    def text(self, encoding=None) -> str:
        return self._body.decode()

    def json(self):
        return json.loads(self._body)

    def read(self) -> bytes:
        return self._body

    def close(self) -> None:
        pass


class Script(HttpTransport):
    """A transport that answers from a script: statuses, exceptions, then 200 for ever."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.sent: list[str] = []

    def send(self, request, **kwargs):
        self.sent.append(request.method)
        step = self.steps.pop(0) if self.steps else 200
        if isinstance(step, Exception):
            raise step
        status, headers = step if isinstance(step, tuple) else (step, {})
        return Reply(request, status, {"code": "TooManyRequests"} if status == 429 else {}, headers)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def open(self):
        pass

    def close(self):
        pass

    def sleep(self, duration):
        time.sleep(duration)


def run(transport: Script, patience: Patience, method: str = "POST"):
    pipeline = Pipeline(transport, policies=[BatchRetryPolicy(patience, retry_backoff_factor=0.01)])
    return pipeline.run(HttpRequest(method, "http://127.0.0.1:9/jobs"))


def test_post_is_retried_through_429s_and_the_log_says_so_once_and_once_back(monkeypatch):
    said: list[str] = []
    patience = Patience(60, said.append)
    throttled = [(429, {"Retry-After": "0"}), (429, {"Retry-After": "0"}), (503, {"Retry-After": "0"})]
    script = Script(*throttled, 200, *throttled)
    assert run(script, patience).http_response.status_code == 200
    assert run(script, patience).http_response.status_code == 200
    assert script.sent == ["POST"] * 8  # azure-core alone would not retry a POST on 429
    assert len(said) == 1, said  # throttling comes and goes: said once, and not over yet
    assert "throttling" in said[0] and "--saje-service-timeout" in said[0]
    monkeypatch.setattr(resilience, "THROTTLING_OVER_SECONDS", 0.0)  # a quiet while later
    run(script, patience)
    assert len(said) == 2 and "answers again" in said[1]


def test_refused_connections_are_retried_until_the_service_answers():
    said: list[str] = []
    refused = ServiceRequestError("<urlopen error [Errno 111] Connection refused>")
    script = Script(refused, refused, refused, ServiceResponseError("Remote end closed connection"))
    assert run(script, Patience(60, said.append), "GET").http_response.status_code == 200
    assert len(script.sent) == 5
    assert [("unreachable" in s, "answers again" in s) for s in said] == [(True, False), (False, True)]
    assert "Connection refused" in said[0]


def test_patience_bounds_retrying_by_time_not_by_count():
    refused = ServiceRequestError("Connection refused")
    script = Script(*[refused] * 10_000)
    with pytest.raises(ServiceRequestError):
        run(script, Patience(0.5))
    assert 2 <= len(script.sent) < 10_000  # retried, then gave up on time


def test_throttling_past_patience_surfaces_the_429():
    script = Script(*[(429, {"Retry-After": "0"})] * 10_000)
    reply = run(script, Patience(0.3))
    assert reply.http_response.status_code == 429  # the SDK turns this into HttpResponseError(429)


def test_cut_ends_a_retry_in_progress():
    """Cancel and clean-up must not wait out an outage: `cut` wakes the sleeping retry."""
    patience = Patience(600)
    script = Script(*[(503, {"Retry-After": "300"})] * 100)
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(run(script, patience)))
    worker.start()
    while not script.sent:
        time.sleep(0.01)
    patience.cut(0.0)
    worker.join(20)
    assert not worker.is_alive()
    assert outcome[0].http_response.status_code == 503


def test_after_a_cut_requests_still_back_off_within_the_shorter_budget():
    patience = Patience(600)
    patience.cut(0.6)
    script = Script(*[ServiceRequestError("Connection refused")] * 10_000)
    with pytest.raises(ServiceRequestError):
        run(script, patience)
    assert 2 <= len(script.sent) < 50  # exponential backoff, not a tight loop


# ----------------------------------------------------------------------------- diagnosis
def error(status: int, code: str, message: str = "msg", values=None) -> HttpResponseError:
    body = {"code": code, "message": {"lang": "en-US", "value": message}, "values": values or []}
    reply = Reply(None, status, body)
    return HttpResponseError(message=message, response=reply)


@pytest.mark.parametrize("exc, transient, code", [
    (error(429, "TooManyRequests"), True, "TooManyRequests"),
    (error(503, "ServerBusy"), True, "ServerBusy"),
    (error(500, "InternalError"), True, "InternalError"),
    (error(403, "AuthenticationFailed"), False, "AuthenticationFailed"),
    (error(404, "JobNotFound"), False, "JobNotFound"),
    (error(409, "PoolBeingDeleted"), False, "PoolBeingDeleted"),
    (error(413, "RequestBodyTooLarge"), False, "RequestBodyTooLarge"),
    (ServiceRequestError("Connection refused"), True, "ServiceRequestError"),
    (ServiceResponseError("Connection reset by peer"), True, "ServiceResponseError"),
    (ClientAuthenticationError("DefaultAzureCredential failed"), False, "ClientAuthenticationError"),
])
def test_errors_are_transient_or_permanent(exc, transient, code):
    found = diagnose(exc)
    assert (found.transient, found.code) == (transient, code)


def test_permanent_errors_say_what_to_do():
    assert "rerun the workflow" in diagnose(error(404, "JobNotFound")).explain()
    assert "account key" in diagnose(error(403, "AuthenticationFailed")).explain()
    assert "manifest" in diagnose(error(413, "RequestBodyTooLarge")).explain()
    late = diagnose(ServiceRequestError("Connection refused")).explain(30)
    assert "30 minutes" in late and "--saje-service-timeout" in late


def test_describe_names_the_property_batch_refused():
    exc = error(400, "InvalidPropertyValue", "The value provided for one of the properties is invalid.",
                [{"key": "PropertyName", "value": "autoScaleEvaluationInterval"}])
    assert describe_http_error(exc) == ("InvalidPropertyValue: The value provided for one of the properties is "
                                        "invalid. (PropertyName=autoScaleEvaluationInterval)")


# ----------------------------------------------------------------------------- wording
@pytest.mark.parametrize("value, text", [(1e7, "10000000"), (10_000_000, "10000000"), (8192.0, "8192"),
                                         (1.5, "1.5"), (0.125, "0.125"), (2.0 / 3, "0.667")])
def test_numbers_read_as_a_person_writes_them(value, text):
    assert number(value) == text


def test_durations():
    assert [minutes(30), minutes(1), minutes(1.5), minutes(0.5)] == ["30 minutes", "1 minute", "1.5 minutes",
                                                                     "30 seconds"]
