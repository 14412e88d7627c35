"""The Batch data plane's schema (api-version 2025-06-01), as generated from Microsoft's SDK.

`batch-2025-06-01.json` is written by `generate.py` from azure-batch 15.x's generated models and
operations; nothing here names a property. One walker, `problems`, checks a JSON value against a
model in either direction: a request body against the wire type the service reads (read-only
properties are not part of it), a response against the full read model (what the conformance
suite asserts). `request.py` turns the first problem into the error Azure answers with.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from ..timeutil import parse_duration, parse_iso

SCHEMA_FILE = Path(__file__).with_name("batch-2025-06-01.json")
# azure-batch 14.x's api-version; its schema is generated from that SDK (see generate.py).
SCHEMA_14 = "2024-02-01.19.0"

# Problem kinds, in the order the service meets them: the body reader first, then validation.
UNKNOWN, TYPE, FORMAT, MISSING, ENUM = "unknown", "type", "format", "missing", "enum"
READER_KINDS = (UNKNOWN, TYPE, FORMAT)


@dataclass(frozen=True)
class Problem:
    kind: str
    path: str  # dotted wire path, list items as name[i]
    model: str  # the model the property belongs to (or was expected as)
    expected: dict[str, Any] | None = None
    value: Any = None

    def __str__(self) -> str:
        return f"{self.path or '<body>'}: {self.kind} ({self.model}{', value ' + repr(self.value) if self.value is not None else ''})"


@dataclass(frozen=True)
class Operation:
    name: str
    method: str
    path: str
    body: str | None
    statuses: tuple[int, ...]
    response: str | None
    paged: bool
    headers: tuple[str, ...]

    @property
    def pattern(self) -> re.Pattern:
        return _path_pattern(self.path)


class Schema:
    def __init__(self, data: dict[str, Any]):
        self.source = data["source"]
        self.api_version = data["apiVersion"]
        self.models: dict[str, Any] = data["models"]
        self.enums: dict[str, list[str]] = data["enums"]
        self.operations = [Operation(o["name"], o["method"], o["path"], o["body"], tuple(o["statuses"]),
                                     o["response"], o["paged"], tuple(o["headers"])) for o in data["operations"]]
        self._by_template = {(o.method, _shape(o.path)): o for o in self.operations}

    def operation(self, method: str, template: str) -> Operation | None:
        """The SDK operation for a route template (placeholder names do not matter)."""
        return self._by_template.get((method, _shape(template)))

    def operation_named(self, name: str) -> Operation:
        return next(o for o in self.operations if o.name == name)

    def canonical_enum(self, enum: str, value: str) -> str | None:
        """The enum's own spelling of `value`, matched without regard to case; None when not a member."""
        lowered = value.lower()
        return next((v for v in self.enums[enum] if v.lower() == lowered), None)

    # ----------------------------------------------------------------- the walker
    def problems(self, model: str, value: Any, *, request: bool, path: str = "") -> Iterator[Problem]:
        """Every way `value` departs from `model`, in document order.

        request=True: the wire type of a request body, so read-only properties are unknown there,
        required ones must be given, enum values match without regard to case. request=False: a
        response, where every property of the read model may appear and enum values must be the
        enum's own spelling.
        """
        if not isinstance(value, dict):
            yield Problem(TYPE, path, model, {"type": "object", "model": model}, value)
            return
        spec = self.models[model]
        props = spec["properties"]
        for name, item in value.items():
            if not request and name.startswith("odata."):
                continue  # OData annotations of a response (odata.metadata, odata.nextLink)
            prop = props.get(name)
            where = f"{path}.{name}" if path else name
            if prop is None or (request and prop.get("readOnly")):
                yield Problem(UNKNOWN, where, model, None, item)
                continue
            if item is None:
                continue  # null is absent: the service reads it as not given
            yield from self._value(prop, item, where, model, request=request)
        if not request:
            return  # the SDK's read models call required what the service omits (BatchNode.ipv6Address
            # on an IPv4 pool, absent from the spec's own Nodes_GetNode example): presence is not checked
        for name in spec["required"]:
            if value.get(name) is None and not props[name].get("readOnly"):
                yield Problem(MISSING, f"{path}.{name}" if path else name, model, props[name])

    def _value(self, spec: dict[str, Any], item: Any, where: str, owner: str, *, request: bool) -> Iterator[Problem]:
        kind = spec["type"]
        if kind == "object":
            if not isinstance(item, dict):
                yield Problem(TYPE, where, owner, spec, item)
            else:
                yield from self.problems(spec["model"], item, request=request, path=where)
        elif kind == "array":
            if not isinstance(item, list):
                yield Problem(TYPE, where, owner, spec, item)
                return
            for index, element in enumerate(item):
                yield from self._value(spec["items"], element, f"{where}[{index}]", owner, request=request)
        elif kind == "map":
            if not isinstance(item, dict):
                yield Problem(TYPE, where, owner, spec, item)
                return
            for key, element in item.items():
                yield from self._value(spec["values"], element, f"{where}.{key}", owner, request=request)
        elif kind == "enum":
            if not isinstance(item, str):
                yield Problem(TYPE, where, owner, spec, item)
            elif spec.get("open"):
                pass  # an extensible enum (ARM's VM sizes): other values are the service's to judge
            elif (self.canonical_enum(spec["enum"], item) is None) if request else (item not in self.enums[spec["enum"]]):
                yield Problem(ENUM, where, owner, spec, item)
        elif not _primitive_ok(kind, item):
            yield Problem(TYPE, where, owner, spec, item)
        elif not _format_ok(spec.get("format"), item):
            yield Problem(FORMAT, where, owner, spec, item)

    def project(self, model: str, value: Any) -> Any:
        """`value` as the read model `model` has it: properties the model lacks (kept from a request
        of another api-version) are left out, so an answer carries only its version's properties."""
        if not isinstance(value, dict):
            return value
        props = self.models[model]["properties"]
        out = {}
        for name, item in value.items():
            spec = props.get(name)
            if spec is None:
                if name.startswith("odata."):
                    out[name] = item
                continue
            out[name] = self._project_value(spec, item)
        return out

    def _project_value(self, spec: dict[str, Any], item: Any) -> Any:
        if spec["type"] == "object":
            return self.project(spec["model"], item)
        if spec["type"] == "array" and spec["items"]["type"] == "object" and isinstance(item, list):
            return [self.project(spec["items"]["model"], element) for element in item]
        return item

    def canonical(self, model: str, value: dict[str, Any]) -> dict[str, Any]:
        """A copy of a valid request body with enum values in the service's own spelling and nulls dropped."""
        props = self.models[model]["properties"]
        return {name: self._canonical_value(props[name], item) for name, item in value.items() if item is not None}

    def _canonical_value(self, spec: dict[str, Any], item: Any) -> Any:
        kind = spec["type"]
        if kind == "object":
            return self.canonical(spec["model"], item)
        if kind == "array":
            return [self._canonical_value(spec["items"], element) for element in item]
        if kind == "map":
            return {key: self._canonical_value(spec["values"], element) for key, element in item.items()}
        if kind == "enum":
            return self.canonical_enum(spec["enum"], item)
        return item


@lru_cache(maxsize=None)
def _path_pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\{\w+\}", "[^/]+", template) + "$")


def _shape(template: str) -> str:
    return re.sub(r"\{\w+\}", "{}", template)


def _primitive_ok(kind: str, item: Any) -> bool:
    if kind == "string":
        return isinstance(item, str)
    if kind == "boolean":
        return isinstance(item, bool)
    if kind == "integer":
        return isinstance(item, int) and not isinstance(item, bool) and -2**31 <= item < 2**31
    if kind == "number":
        return isinstance(item, (int, float)) and not isinstance(item, bool)
    return True


def _format_ok(fmt: str | None, item: Any) -> bool:
    try:
        if fmt == "duration":
            parse_duration(item)
        elif fmt == "date-time":
            parse_iso(item)
        elif fmt == "int64":
            int(item)
    except (TypeError, ValueError):
        return False
    return True


@lru_cache(maxsize=None)
def _load_file(name: str) -> Schema:
    return Schema(json.loads(SCHEMA_FILE.with_name(name).read_text()))


def load() -> Schema:
    """The 2025-06-01 schema (azure-batch 15.x)."""
    return _load_file(SCHEMA_FILE.name)


def for_api_version(api_version: str | None) -> Schema:
    """The schema a request of `api_version` is read with: 2024-02-01.19.0 and older versions with
    azure-batch 14.x's, 2024-07-01.20.0 and later with 15.x's (the nearest generated schema)."""
    if api_version and api_version.split(".")[0] <= SCHEMA_14.split(".")[0]:
        return _load_file(f"batch-{SCHEMA_14}.json")
    return load()


__all__ = ["Schema", "Operation", "Problem", "load", "for_api_version", "UNKNOWN", "TYPE", "FORMAT", "MISSING", "ENUM", "READER_KINDS"]
