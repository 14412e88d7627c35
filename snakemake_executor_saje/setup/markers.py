"""Markers: small JSON files, one per thing a setup workflow made or found in Azure, and ARM errors
turned into messages a user can act on.

A marker is what a rule outputs: ``{"kind", "id", "name", "created", "run_id", "time", ...}``.
``created`` is true when SAJE made the resource (teardown removes those and only those) and false
when it already existed (teardown leaves it). ``run_id`` names the workflow run that made it, so a
failed run can roll back exactly what it made itself and nothing an earlier run made.
"""
from __future__ import annotations

import datetime
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .. import statedir

__all__ = ["SetupError", "write_marker", "read_marker", "markers_in", "explain", "wait_until", "now"]


class SetupError(Exception):
    """A setup step failed or cannot start; the message says what happened and what to do."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_marker(path: str | os.PathLike[str], record: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``record`` (plus ``time`` if absent) atomically as indented JSON; returns what was written."""
    path = Path(path)
    statedir.ensure(path.parent)
    data = {**record}
    data.setdefault("time", now())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return data


def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise SetupError(f"Marker {path} is not valid JSON ({exc}); remove it to redo that step.") from None


def markers_in(directory: str | os.PathLike[str], names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The markers that exist among ``names`` (file stems) in ``directory``."""
    found = {}
    for name in names:
        record = read_marker(Path(directory) / f"{name}.json")
        if record is not None:
            found[name] = record
    return found


def _error_fields(exc: BaseException) -> tuple[str, str, int | None]:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None) or ""
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
    return str(code), str(message).strip(), getattr(exc, "status_code", None)


def explain(exc: BaseException, doing: str, *, state_hint: str = "") -> SetupError:
    """A SetupError for an Azure SDK exception raised while ``doing`` something."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    hint = f" {state_hint}" if state_hint else ""
    if isinstance(exc, HttpResponseError):
        code, message, status = _error_fields(exc)
        first = message.splitlines()[0] if message else ""
        if code in ("AuthorizationFailed", "LinkedAuthorizationFailed") or status == 403:
            return SetupError(
                f"Permission denied while {doing}: {code or status}: {first} The admin-level identity needs"
                " Owner (or Contributor plus User Access Administrator for the role assignment) on the"
                f" subscription or resource group; ask an Owner to grant it, or use another --profile.{hint}")
        if code == "MissingSubscriptionRegistration":
            return SetupError(f"While {doing}: {first} (the deploy workflow's 'provider' rule registers it).{hint}")
        if code in ("StorageAccountAlreadyTaken", "AccountNameAlreadyTaken", "StorageAccountInAnotherResourceGroup"):
            return SetupError(f"While {doing}: {code}: {first} Choose another name (they are global in Azure).{hint}")
        return SetupError(f"Azure refused {doing}: {code or status}: {first}{hint}")
    if isinstance(exc, ClientAuthenticationError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "authentication failed"
        return SetupError(f"Could not sign in to Azure while {doing}: {first} (az login, or an admin-level"
                          f" --profile in ~/.azure/saje.json).{hint}")
    if isinstance(exc, ServiceRequestError):
        return SetupError(f"Could not reach Azure Resource Manager while {doing}: {exc}{hint}")
    return SetupError(f"{doing} failed: {exc}{hint}")


def is_not_found(exc: BaseException) -> bool:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    return isinstance(exc, ResourceNotFoundError) or (isinstance(exc, HttpResponseError) and exc.status_code == 404)


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """Call ``check`` until it returns something truthy; SetupError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise SetupError(f"Timed out after {timeout:g} s waiting for {what}.")
        time.sleep(interval)


def existing(get: Callable[[], Any], doing: str, state_hint: str) -> Any:
    """What ``get`` returns, or None when Azure answers 404; other errors explained for users."""
    from azure.core.exceptions import AzureError

    try:
        return get()
    except AzureError as exc:
        if is_not_found(exc):
            return None
        raise explain(exc, doing, state_hint=state_hint) from None
