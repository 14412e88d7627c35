"""Derive the Batch data plane's schema from the azure-batch 15.x SDK's generated code.

    python -m snakemake_executor_saje.emulator.schema.generate     # rewrites batch-2025-06-01.json

The SDK is generated from the same TypeSpec as the REST spec for api-version 2025-06-01, so its
models carry every wire property (`rest_field(name=...)`, visibility, wire format), its type
hints say which properties are required (not Optional) and of which type, its enums list the
values, and its operations say, per method and path, which model is the body, which status codes
succeed, which model answers and which headers the answer declares. Reading all of that by
introspection (models) and by parsing the operations module (ast) keeps the emulator's schema a
mechanical copy of Microsoft's: nothing here names a property. The output is committed; a test
regenerates it and fails on drift.
"""
from __future__ import annotations

import ast
import datetime
import enum
import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("batch-2025-06-01.json")


def _type_spec(hint: Any, models: Any) -> dict[str, Any]:
    """A Python type hint of the SDK -> a small JSON type description."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        enums = [a for a in non_none if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums:
            return {"type": "enum", "enum": enums[0].__name__}
        if len(non_none) == 1:
            return _type_spec(non_none[0], models)
        raise ValueError(f"unsupported union {hint!r}")
    if origin in (list, typing.List):
        return {"type": "array", "items": _type_spec(args[0], models)}
    if origin in (dict, typing.Dict):
        return {"type": "map", "values": _type_spec(args[1], models)}
    if isinstance(hint, type):
        if issubclass(hint, enum.Enum):
            return {"type": "enum", "enum": hint.__name__}
        if hint is bool:
            return {"type": "boolean"}
        if hint is int:
            return {"type": "integer"}
        if hint is float:
            return {"type": "number"}
        if hint is str:
            return {"type": "string"}
        if hint is bytes:
            return {"type": "string", "format": "byte"}
        if hint is datetime.datetime:
            return {"type": "string", "format": "date-time"}
        if hint is datetime.timedelta:
            return {"type": "string", "format": "duration"}
        if hasattr(models, hint.__name__) or hasattr(models._models, hint.__name__):
            return {"type": "object", "model": hint.__name__}
    raise ValueError(f"unsupported type hint {hint!r}")


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)


def models_schema() -> tuple[dict[str, Any], dict[str, list[str]]]:
    from azure.batch import models
    from azure.batch._utils.model_base import Model, _RestField
    from azure.batch.models import _models as generated  # also the models the SDK keeps private

    out: dict[str, Any] = {}
    for name, cls in sorted({**vars(generated), **vars(models)}.items()):
        if not (isinstance(cls, type) and issubclass(cls, Model) and cls is not Model):
            continue
        hints = typing.get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]), localns={"_models": models})
        props: dict[str, Any] = {}
        required: list[str] = []
        for klass in reversed(cls.__mro__):
            for attr, field in vars(klass).items():
                if not isinstance(field, _RestField):
                    continue
                wire = field._rest_name_input or attr
                spec = _type_spec(hints[attr], models)
                if field._format == "str" and spec["type"] == "integer":
                    spec = {"type": "string", "format": "int64"}  # int64 on the wire as a JSON string
                if (field._visibility or []) == ["read"]:
                    spec["readOnly"] = True  # read visibility only: never part of a request body
                props[wire] = spec
                if not _is_optional(hints[attr]) and wire not in required:
                    required.append(wire)
        out[name] = {"properties": props, "required": required}
    from azure.batch.models import _enums

    enums = {
        name: [member.value for member in cls]
        for name, cls in sorted({**vars(_enums), **vars(models)}.items())
        if isinstance(cls, type) and issubclass(cls, enum.Enum)
    }
    return out, enums


# ----------------------------------------------------------------------------- operations
def _builders(tree: ast.Module) -> dict[str, dict[str, Any]]:
    """build_batch_*_request functions -> method and URL template."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("build_batch_"):
            url = method = None
            for sub in ast.walk(node):
                if isinstance(sub, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_url" for t in sub.targets) \
                        and isinstance(sub.value, ast.Constant):
                    url = sub.value.value
                if isinstance(sub, ast.Call) and getattr(sub.func, "id", "") == "HttpRequest":
                    for kw in sub.keywords:
                        if kw.arg == "method" and isinstance(kw.value, ast.Constant):
                            method = kw.value.value
            found[node.name] = {"method": method, "path": url}
    return found


def _model_name(node: ast.AST | None) -> str | None:
    """`_models.BatchPool` / `list[_models.BatchPool]` annotations -> 'BatchPool'."""
    if node is None:
        return None
    text = ast.unparse(node)
    match = re.search(r"_models\.(?:_models\.)?(\w+)", text)
    return match.group(1) if match else None


def operations_schema() -> list[dict[str, Any]]:
    from azure.batch._operations import _operations as module

    text = Path(inspect.getfile(module)).read_text()
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    builders = _builders(tree)
    mixin = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("OperationsMixin"))
    ops = []
    for func in mixin.body:
        if not isinstance(func, ast.FunctionDef) or func.name.startswith("__"):
            continue
        source = "".join(lines[func.lineno - 1:func.end_lineno])
        builder = re.search(r"(build_batch_\w+_request)\(", source)
        if builder is None:
            continue
        route = builders[builder.group(1)]
        statuses = re.search(r"response\.status_code not in \[([\d, ]+)\]", source)
        body_param = re.search(r"json\.dumps\((\w+), cls=SdkJSONEncoder", source)
        body = None
        if body_param:
            arg = next(a for a in func.args.args + func.args.kwonlyargs if a.arg == body_param.group(1))
            body = _model_name(arg.annotation)
        response = re.search(r"(?<!failsafe)_deserialize\(\s*(?:list\[)?_models\.(\w+)", source)
        paged = "ItemPaged" in ast.unparse(func.returns) if func.returns is not None else False
        headers = re.findall(r"""response_headers\[["']([^"']+)["']\]""", source)
        if any(o["method"] == route["method"] and o["path"] == route["path"] for o in ops):
            continue  # the public wrapper of a long-running operation's _initial call
        ops.append({
            "name": func.name.strip("_").removesuffix("_internal"), "method": route["method"], "path": route["path"],
            "body": body, "statuses": [int(s) for s in statuses.group(1).split(",")] if statuses else [200],
            "response": response.group(1) if response else None, "paged": paged, "headers": headers,
        })
    return sorted(ops, key=lambda o: (o["path"], o["method"]))


def build() -> dict[str, Any]:
    from azure.batch import _version

    models, enums = models_schema()
    api_version = re.search(r'"api-version", "([^"]+)"', Path(inspect.getfile(sys.modules["azure.batch._operations._operations"])).read_text())
    return {
        "source": f"azure-batch {_version.VERSION} (generated models and operations)",
        "apiVersion": api_version.group(1) if api_version else None,
        "models": models, "enums": enums, "operations": operations_schema(),
    }


def main() -> None:
    import azure.batch._operations._operations  # noqa: F401  (so build() can read its source)

    OUTPUT.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
