"""ARM request bodies read as Azure reads them, against the azure-mgmt SDKs' models (`arm.json`).

A body that departs from its operation's model is refused with the code of whoever reads it first:
  - ARM's front door reads a resource's envelope (`ResourceDefinition`): a top-level property it does
    not know is 400 InvalidRequestContent, "Could not find member 'x' on object of type
    'ResourceDefinition'" (Azure/azure-sdk-for-net#3487, azure-rest-api-specs#286: a read-only
    `resources` sent back after a GET), a missing location 400 LocationRequired; `id`, `name` and
    `type`, members of the envelope, are read and ignored;
  - then the resource provider: Batch 400 InvalidRequestBody, target BatchAccount, details Reason and
    PropertyPath (Azure/AzureRMR#22), MissingRequiredProperty (terraform-provider-azurerm#27945),
    InvalidPropertyValue (assumed, the data plane's code); Compute 400 BadRequest "Could not find
    member" / "Error converting value" (azure-cli#18855, MicrosoftDocs/OfficeDocs-Enterprise#45),
    InvalidParameter "Required parameter 'x' is missing (null)." (azure-powershell#4001); Storage 400
    InvalidValuesForRequestParameters "Values for request parameters are invalid: x." for a value or
    a missing property (azure-cli#27899); anything else (Storage's unknown properties, resource groups,
    role assignments) ARM's InvalidRequestContent (assumed).
Read-only properties are not part of a request's model, so they are unknown (the SDKs never send them).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..arm.core import ArmError
from . import ENUM, MISSING, READER_KINDS, UNKNOWN, Operation, Problem, Schema

SCHEMA_FILE = Path(__file__).with_name("arm.json")
ENVELOPE_IDENTITY = ("id", "name", "type")  # members of ResourceDefinition a GET returns and a PUT may carry


@dataclass(frozen=True)
class ArmOperation:
    package: str
    schema: Schema
    operation: Operation
    api_version: str
    pattern: re.Pattern


@lru_cache(maxsize=None)
def operations() -> tuple[ArmOperation, ...]:
    found = []
    for package, data in json.loads(SCHEMA_FILE.read_text()).items():
        schema = Schema(data)
        for raw, op in zip(data["operations"], schema.operations):
            found.append(ArmOperation(package, schema, op, raw["apiVersion"], _pattern(op.path)))
    return tuple(found)


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    regex = "".join(".+" if p in ("{scope}",) else "[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}/?$", re.I)


def operation_for(method: str, path: str, api_version: str) -> ArmOperation | None:
    """The SDK operation a request is, when its api-version is the one the installed SDK's models describe."""
    for op in operations():
        if op.operation.method == method and op.api_version == api_version and op.pattern.match(path):
            return op
    return None


def problems(op: ArmOperation, body: Any) -> list[Problem]:
    found = op.schema.problems(op.operation.body, body, request=True)
    return [p for p in found if not (p.kind == UNKNOWN and p.path in ENVELOPE_IDENTITY and op.operation.method != "POST")]


def check(op: ArmOperation, body: Any) -> None:
    """Raise the ArmError Azure answers `body` with, if it departs from the operation's model."""
    found = problems(op, body)
    for kinds in (READER_KINDS, (MISSING, ENUM)):
        for problem in found:
            if problem.kind in kinds:
                raise error_for(op, problem)


def error_for(op: ArmOperation, problem: Problem) -> ArmError:
    name = re.sub(r"\[\d+\]$", "", problem.path.rsplit(".", 1)[-1])
    resource = op.operation.method in ("PUT", "PATCH")
    if resource and "." not in problem.path:
        if problem.kind == UNKNOWN:
            return _unreadable(f"Could not find member '{name}' on object of type 'ResourceDefinition'. Path '{name}'.")
        if problem.kind == MISSING and name == "location":
            return ArmError(400, "LocationRequired", "The location property is required for this definition.",
                            target="location")
    reader = problem.kind in READER_KINDS
    if op.package == "batch":
        return _batch(problem, name, reader)
    if op.package == "compute":
        if problem.kind == MISSING:
            return ArmError(400, "InvalidParameter", f"Required parameter '{name}' is missing (null).", target=name)
        return ArmError(400, "BadRequest", _member(problem) if problem.kind == UNKNOWN else
                        f"Error converting value {json.dumps(problem.value)} to type '{_type_of(problem)}'. "
                        f"Path '{problem.path}'.", target=problem.path)
    if op.package == "storage" and not reader:
        return ArmError(400, "InvalidValuesForRequestParameters", f"Values for request parameters are invalid: {name}.")
    if problem.kind == MISSING:
        return _unreadable(f"Required property '{name}' not found in JSON. Path '{problem.path}'.")
    return _unreadable(_member(problem) if problem.kind == UNKNOWN else
                       f"Error converting value {json.dumps(problem.value)} to type '{_type_of(problem)}'. "
                       f"Path '{problem.path}'.")


def _unreadable(reason: str) -> ArmError:
    return ArmError(400, "InvalidRequestContent", f"The request content was invalid and could not be deserialized: '{reason}'.")


def _member(problem: Problem) -> str:
    name = re.sub(r"\[\d+\]$", "", problem.path.rsplit(".", 1)[-1])
    return f"Could not find member '{name}' on object of type '{problem.model.rsplit('.', 1)[-1]}'. Path '{problem.path}'."


def _type_of(problem: Problem) -> str:
    spec = problem.expected or {}
    return spec.get("enum") or spec.get("model") or spec.get("format") or spec.get("type", "object")


def _batch(problem: Problem, name: str, reader: bool) -> ArmError:
    path = problem.path
    if reader:
        reason = _member(problem) if problem.kind == UNKNOWN else \
            f"Error converting value {json.dumps(problem.value)} to type '{_type_of(problem)}'. Path '{path}'."
        return ArmError(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.",
                        target="BatchAccount", details=[{"code": "Reason", "message": reason},
                                                        {"code": "PropertyPath", "message": path}])
    if problem.kind == MISSING:
        return ArmError(400, "MissingRequiredProperty", "A required property was not specified in the request body.",
                        target="BatchAccount", details=[{"code": "PropertyName", "message": name},
                                                        {"code": "PropertyPath", "message": path}])
    return ArmError(400, "InvalidPropertyValue", "The value provided for one of the properties in the request body is invalid.",
                    target="BatchAccount", details=[{"code": "PropertyName", "message": name},
                                                    {"code": "PropertyValue", "message": str(problem.value)},
                                                    {"code": "PropertyPath", "message": path}])


__all__ = ["operation_for", "check", "problems", "error_for", "ArmOperation"]
