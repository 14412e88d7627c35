"""How SAJE rides out a bad day at the Batch service: a time-bounded retry policy, one log line
per outage, and the split of errors into those a retry can fix and those it cannot.

Transient (retried by `BatchRetryPolicy` until the run's patience, --saje-service-timeout, is
spent): refused, reset or timed-out connections, 408, 429 TooManyRequests, 500, 502, 503
ServerBusy, 504. azure-core's `RetryPolicy` does the work (Retry-After, exponential backoff); SAJE
only gives it a time budget instead of a count, lets it retry POST (every POST SAJE sends is
idempotent, see batch.py), and tells `Patience` what it sees so that the log says once that the
service is throttling or unreachable, and once when it answers again.

Permanent (no retry can fix it; the affected jobs fail at once with `explain`'s message): the
credential refused (401/403, AuthenticationFailed, ...), the run's Batch job or pool gone
(JobNotFound, PoolNotFound), the account disabled or over quota, a request Batch calls invalid.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import RetryPolicy

from .readable import minutes

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Enough retries never to be the limit: the time budget is.
_UNCOUNTED = 1_000_000
BACKOFF_MAX_SECONDS = 30.0
# How long clean-up (after a cancel, or after patience ran out) still retries: it must not keep
# Snakemake from exiting for long, and what it cannot delete is named for `saje pool delete`.
CLEANUP_PATIENCE_SECONDS = 30.0
# Throttling is over (and said so) once no request was throttled for this long.
THROTTLING_OVER_SECONDS = 300.0

# Codes of errors no retry can fix, with what the user can do about them.
_ADVICE = {
    "AuthenticationFailed": "the Batch account key or token was refused: check SNAKEMAKE_SAJE_ACCOUNT_KEY or the "
                            "credential profile (was the key regenerated?)",
    "InvalidAuthenticationToken": "the Entra token was refused: check the credential (az login, the profile's "
                                  "service principal) and its role on the Batch account",
    "AuthorizationFailure": "the credential may not do this: give its identity a Batch role on the account",
    "InsufficientAccountPermissions": "the credential may not do this: give its identity a Batch role on the account",
    "AccountIsDisabled": "the Batch account is disabled: enable it in the Azure portal",
    "JobNotFound": "the run's Batch job was deleted outside this run (its tasks went with it): rerun the workflow",
    "PoolNotFound": "the run's pool was deleted outside this run: rerun the workflow",
    "PoolBeingDeleted": "the run's pool is being deleted outside this run: rerun the workflow",
    "JobBeingDeleted": "the run's Batch job is being deleted outside this run: rerun the workflow",
    "JobCompleted": "the run's Batch job was terminated outside this run: rerun the workflow",
    "RequestBodyTooLarge": "a task is larger than Batch accepts (1 MB with everything it lists): shorten the "
                           "rule's command line or environment (SAJE already lists many inputs in a manifest)",
    "ActiveJobAndScheduleQuotaReached": "the account has as many active jobs as its quota allows: delete old "
                                        "jobs (saje status) or ask for a higher quota",
}


@dataclass(frozen=True)
class Diagnosis:
    """What an exception from the Batch SDK means for the run."""

    transient: bool
    code: str
    detail: str

    def explain(self, patience_minutes: float | None = None) -> str:
        """One message: what happened and what to do."""
        if self.transient:
            waited = f" for {minutes(patience_minutes)} (--saje-service-timeout)" if patience_minutes else ""
            return (f"Azure Batch stayed unreachable or overloaded{waited}: {self.code}: {self.detail}. "
                    "Check the network and https://status.azure.com, then rerun the workflow; a longer "
                    "--saje-service-timeout rides out longer outages.")
        advice = _ADVICE.get(self.code)
        return f"Azure Batch refused the request ({self.code}: {self.detail})" + (f": {advice}." if advice else ".")


def diagnose(exc: BaseException) -> Diagnosis:
    """Transient or permanent, with the Batch error code (or the exception's kind) and message."""
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        code, detail = _code_and_detail(exc)
        return Diagnosis(exc.status_code in TRANSIENT_STATUS and code not in _ADVICE, code, detail)
    if isinstance(exc, ClientAuthenticationError):  # no response: the credential found no token
        return Diagnosis(False, "ClientAuthenticationError", _first_line(str(exc)))
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return Diagnosis(True, type(exc).__name__, _first_line(_root_cause(exc)))
    return Diagnosis(False, type(exc).__name__, _first_line(str(exc)))


class Patience:
    """The run's time budget for retrying a troubled service, and its one-line outage reports.

    Shared by every request of the run's Batch client (threads included): each request may
    retry for `seconds`. `cut` gives the requests in flight (one retrying for longer gives up at
    once, a sleeping one wakes) and the ones to come clean-up's budget instead, so that cancel
    and clean-up neither wait out a long outage nor give up on a short one.
    """

    def __init__(self, seconds: float, say: Callable[[str], None] | None = None,
                 service: str = "Azure Batch"):
        self.seconds = float(seconds)
        self.say = say or (lambda message: None)
        self.service = service
        self._lock = threading.Condition()
        self._cuts = 0
        self._trouble: str | None = None
        self._since = self._last_trouble = 0.0

    def cut(self, seconds: float = CLEANUP_PATIENCE_SECONDS) -> None:
        with self._lock:
            self.seconds = seconds
            self._cuts += 1
            self._lock.notify_all()

    def left(self, started: float) -> float:
        """Seconds a request that started (time.monotonic()) at `started` may still retry."""
        return self.seconds - (time.monotonic() - started)

    def wait(self, seconds: float) -> None:
        """Sleep between retries; a `cut` meanwhile ends the sleep."""
        with self._lock:
            cuts = self._cuts
            self._lock.wait_for(lambda: self._cuts != cuts, timeout=max(0.0, seconds))

    def trouble(self, kind: str, detail: str) -> None:
        """A request is being retried: say so once per spell of trouble (and when its kind changes)."""
        with self._lock:
            self._last_trouble = time.monotonic()
            if self._trouble == kind:
                return
            if self._trouble is None:
                self._since = self._last_trouble
            self._trouble = kind
        what = "is throttling requests" if kind == "throttled" else "is unreachable"
        self.say(f"SAJE: {self.service} {what} ({detail}); retrying for up to "
                 f"{minutes(self.seconds / 60)} (--saje-service-timeout).")

    def fine(self) -> None:
        """A request got through: say once that the service answers again. Throttling comes and
        goes (a request through does not end it), so it counts as over after a quiet while."""
        with self._lock:
            if self._trouble is None:
                return
            if self._trouble == "throttled" and time.monotonic() - self._last_trouble < THROTTLING_OVER_SECONDS:
                return
            self._trouble = None
            took = self._last_trouble - self._since
        self.say(f"SAJE: {self.service} answers again (after {minutes(took / 60)} of trouble).")


class BatchRetryPolicy(RetryPolicy):
    """azure-core's retry policy, bounded by time (`Patience`) instead of a count, for POST too.

    azure-core retries a POST only on 500/503/504, never on 429 nor on a dropped reply, because a
    POST may not be idempotent. Batch throttles with 429, and every POST SAJE makes is either a
    create with a client-chosen id (a repeat gets ...Exists, which `BatchGateway` takes as done)
    or a terminate (idempotent), so retrying them is safe.
    """

    def __init__(self, patience: Patience | None = None, **kwargs: Any) -> None:
        self.patience = patience or Patience(10 * 60)
        for name in ("retry_total", "retry_connect", "retry_read", "retry_status"):
            kwargs.setdefault(name, _UNCOUNTED)
        kwargs.setdefault("retry_backoff_max", BACKOFF_MAX_SECONDS)
        super().__init__(**kwargs)

    def configure_retries(self, options: dict[str, Any]) -> dict[str, Any]:
        settings = super().configure_retries(options)
        settings["methods"] = frozenset(settings["methods"]) | {"POST"}
        # azure-core's own deadline (which also caps connection timeouts) comes after SAJE's, so
        # that giving up returns the last reply (a 429 says "throttled") rather than a timeout.
        settings["saje_started"] = time.monotonic()
        left = max(0.0, self.patience.left(settings["saje_started"]))
        settings["timeout"] = min(settings["timeout"], left + 2 * BACKOFF_MAX_SECONDS)
        return settings

    def increment(self, settings: dict[str, Any], response: Any = None, error: Exception | None = None) -> bool:
        more = super().increment(settings, response=response, error=error)
        if self.patience.left(settings["saje_started"]) <= 0:
            return False
        if more:
            self._report(response, error)
        return more

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        # azure-core computes factor * 2 ** retries, which overflows a float after ~1000 retries.
        retries = min(len(settings["history"]), 32)
        if retries <= 1:
            return 0.0
        return min(settings["max_backoff"], settings["backoff"] * 2 ** (retries - 1))

    def sleep(self, settings: dict[str, Any], transport: Any, response: Any = None) -> None:
        delay = (self.get_retry_after(response) if response is not None else None) or self.get_backoff_time(settings)
        self.patience.wait(min(delay, max(0.0, self.patience.left(settings["saje_started"]))))

    def send(self, request: Any) -> Any:
        response = super().send(request)
        if response.http_response.status_code < 400 or response.http_response.status_code not in TRANSIENT_STATUS:
            self.patience.fine()
        return response

    def _report(self, response: Any, error: Exception | None) -> None:
        if error is not None:
            self.patience.trouble("unreachable", f"{type(error).__name__}: {_first_line(_root_cause(error))}")
            return
        http = getattr(response, "http_response", None)
        status = getattr(http, "status_code", None)
        if status in (429, 503):
            self.patience.trouble("throttled", f"HTTP {status}")
        elif status is not None:
            self.patience.trouble("unreachable", f"HTTP {status}")


def describe_http_error(exc: HttpResponseError) -> str:
    """'<code>: <message> (<key>=<value>, ...)' from a Batch error, for messages that tell users
    what happened: Batch names the property and the reason in the error's `values`."""
    code, detail = _code_and_detail(exc)
    return f"{code}: {detail}"


def _code_and_detail(exc: HttpResponseError) -> tuple[str, str]:
    error: Any = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(exc, "message", "") or str(exc)
    first = _first_line(message)
    values: list[str] = []
    try:
        body = exc.response.json() if exc.response is not None else None
    except Exception:  # not JSON (a proxy's HTML page, an empty body)
        body = None
    if isinstance(body, dict):
        code = code or (body.get("code") if isinstance(body.get("code"), str) else None)
        text = body.get("message")
        text = text.get("value") if isinstance(text, dict) else text
        if isinstance(text, str) and text.strip():
            first = _first_line(text)
        values = [f"{v.get('key')}={v.get('value')}" for v in body.get("values") or [] if isinstance(v, dict)]
    code = code or (f"HTTP {exc.status_code}" if exc.status_code else "HttpResponseError")
    return str(code), first + (f" ({', '.join(values)})" if values else "")


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a connection error ('[Errno 111] Connection refused')."""
    seen = exc
    inner = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__
    for _ in range(8):
        if inner is None:
            break
        seen = inner
        inner = getattr(inner, "inner_exception", None) or inner.__cause__ or inner.__context__
    text = str(seen) or type(seen).__name__
    for marker in ("Connection refused", "Connection reset", "timed out", "Name or service not known",
                   "Remote end closed connection", "Connection aborted"):
        if marker in text:
            return marker
    return text


def _first_line(text: Any, limit: int = 300) -> str:
    lines = str(text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
