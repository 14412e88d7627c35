"""Request bodies read as the Batch service reads them: refused with Azure's code for each fault.

The service's front end is an OData reader over its protocol entities (error bodies name the
`Microsoft.Azure.Batch.Protocol.Entities` container), so a body it cannot read fails whole:
  - an unknown property, a read-only one included (it is not part of the wire type), or a value of
    the wrong JSON type: 400 InvalidRequestBody with a `Reason` in the OData reader's words
    ("The property 'x' does not exist on type ...", "Cannot convert a primitive value to the
    expected type 'Edm.Int32'...", "An unexpected 'StartObject' node was found ...");
then the service validates what it read:
  - a required property missing: 400 MissingRequiredProperty, `PropertyName`;
  - a value outside an enum: 400 InvalidPropertyValue, `PropertyName`, `PropertyValue`, `Reason`.
Sources and the choices no source settles are listed in docs/emulator.md ("Fidelity").
"""
from __future__ import annotations

from typing import Any

from .. import errors
from ..errors import BatchError
from . import ENUM, MISSING, READER_KINDS, UNKNOWN, Problem, Schema, load

ENTITY_NAMESPACE = "Microsoft.Azure.Batch.Protocol.Entities"
_EDM = {"string": "Edm.String", "integer": "Edm.Int32", "number": "Edm.Double", "boolean": "Edm.Boolean", "enum": "Edm.String"}
_EDM_FORMAT = {"duration": "Edm.Time", "date-time": "Edm.DateTime", "int64": "Edm.Int64", "byte": "Edm.Binary"}


def _json_node(value: Any) -> str:
    if isinstance(value, dict):
        return "StartObject"
    if isinstance(value, list):
        return "StartArray"
    return "PrimitiveValue"


def _expected_node(spec: dict[str, Any]) -> str:
    return {"object": "StartObject", "array": "StartArray", "map": "StartObject"}.get(spec["type"], "PrimitiveValue")


def reader_reason(problem: Problem) -> str:
    """The OData reader's message for a body it cannot read."""
    if problem.kind == UNKNOWN:
        name = problem.path.rsplit(".", 1)[-1].split("[", 1)[0]
        return (f"The property '{name}' does not exist on type '{ENTITY_NAMESPACE}.{problem.model}'. "
                "Make sure to only use property values that are defined by the type.")
    spec = problem.expected or {"type": "object"}
    found, wanted = _json_node(problem.value), _expected_node(spec)
    if found != wanted:
        return f"An unexpected '{found}' node was found when reading from the JSON reader. A '{wanted}' node was expected."
    edm = _EDM_FORMAT.get(spec.get("format", "")) or _EDM.get(spec["type"], "Edm.String")
    return f"Cannot convert a primitive value to the expected type '{edm}'. See the inner exception for more details."


def error_for(problem: Problem) -> BatchError:
    if problem.kind in READER_KINDS:
        error = BatchError(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.",
                           [("Reason", reader_reason(problem))])
    elif problem.kind == MISSING:
        error = errors.missing_property(problem.path)
    else:
        assert problem.kind == ENUM
        error = errors.invalid_property(problem.path, problem.value,
                                        f"The value is not one of the values the property accepts ({', '.join(_enum_values(problem))}).")
    error.schema = True
    return error


def _enum_values(problem: Problem) -> list[str]:
    return load().enums[(problem.expected or {})["enum"]]


def _raise_first(found: list[Problem], kinds: tuple[str, ...]) -> None:
    for problem in found:
        if problem.kind in kinds:
            raise error_for(problem)


def readable(model: str, body: Any, schema: Schema | None = None) -> None:
    """Raise InvalidRequestBody if the service's reader could not read `body` as `model`."""
    _raise_first(list((schema or load()).problems(model, body, request=True)), READER_KINDS)


def validated(model: str, body: Any, schema: Schema | None = None) -> dict[str, Any]:
    """`body` checked as the service checks it (unreadable first, then missing or invalid
    properties) and returned as it reads it: enum values in their own spelling, nulls dropped."""
    schema = schema or load()
    found = list(schema.problems(model, body, request=True))
    _raise_first(found, READER_KINDS)
    _raise_first(found, (MISSING, ENUM))
    return schema.canonical(model, body)


__all__ = ["readable", "validated", "error_for", "reader_reason", "ENTITY_NAMESPACE"]
