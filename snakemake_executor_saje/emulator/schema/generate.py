"""Derive the Batch data plane's schema from the azure-batch 15.x SDK's generated code.

    python -m snakemake_executor_saje.emulator.schema.generate     # rewrites batch-2025-06-01.json
    ... generate --sdk14 DIR    # also batch-2024-02-01.19.0.json, from an unpacked azure-batch 14 wheel

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
import importlib
import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("batch-2025-06-01.json")


def _type_spec(hint: Any, models: Any, open_enums: bool = False) -> dict[str, Any]:
    """A Python type hint of the SDK -> a small JSON type description."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        enums = [a for a in non_none if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums:  # Union[str, Enum]: an extensible enum, whose other values the service may accept
            return {"type": "enum", "enum": enums[0].__name__, **({"open": True} if open_enums else {})}
        if len(non_none) == 1:
            return _type_spec(non_none[0], models, open_enums)
        raise ValueError(f"unsupported union {hint!r}")
    if hint is typing.Any:
        return {"type": "any"}
    if origin is typing.Literal:  # a discriminator's fixed value
        return {"type": "string"}
    if origin in (list, typing.List):
        return {"type": "array", "items": _type_spec(args[0], models, open_enums)}
    if origin in (dict, typing.Dict):
        return {"type": "map", "values": _type_spec(args[1], models, open_enums)}
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


def model_spec(cls: type, models: Any, rest_field: type, open_enums: bool = False) -> dict[str, Any]:
    """One generated model: its wire properties (type, read-only) and the required ones."""
    hints = typing.get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]), localns={"_models": models})
    props: dict[str, Any] = {}
    required: list[str] = []
    for klass in reversed(cls.__mro__):
        for attr, field in vars(klass).items():
            if not isinstance(field, rest_field):
                continue
            wire = field._rest_name_input or attr
            spec = _type_spec(hints[attr], models, open_enums)
            if field._format == "str" and spec["type"] == "integer":
                spec = {"type": "string", "format": "int64"}  # int64 on the wire as a JSON string
            if (field._visibility or []) == ["read"]:
                spec["readOnly"] = True  # read visibility only: never part of a request body
            props[wire] = spec
            if not _is_optional(hints[attr]) and wire not in required:
                required.append(wire)
    return {"properties": props, "required": required}


def models_schema(package: str = "azure.batch", open_enums: bool = False) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Every model and enum of a TypeSpec-generated SDK package (azure-batch 15, the azure-mgmt-* of
    today share its `_utils.model_base`)."""
    models = importlib.import_module(f"{package}.models")
    model_base = importlib.import_module(f"{package}._utils.model_base")
    Model, _RestField = model_base.Model, model_base._RestField
    generated = importlib.import_module(f"{package}.models._models")  # also the models the SDK keeps private

    out: dict[str, Any] = {}
    for name, cls in sorted({**vars(generated), **vars(models)}.items()):
        if isinstance(cls, type) and issubclass(cls, Model) and cls is not Model:
            out[name] = model_spec(cls, models, _RestField, open_enums)
    _enums = importlib.import_module(f"{package}.models._enums")
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


# ----------------------------------------------------------------------------- azure-batch 14.x
# The 14.x SDK (msrest, api-version 2024-02-01.19.0) is not installed beside 15.x; its schema is
# generated from an unpacked wheel (`pip download --no-deps azure-batch==14.2.0`) by parsing its
# sources: each model's _attribute_map (wire key, msrest type) and _validation (required), each
# enum, and each operation's URL metadata, HTTP verb, body type, statuses and headers.
_MSREST_PRIMITIVES = {
    "str": {"type": "string"}, "int": {"type": "integer"}, "long": {"type": "integer"}, "bool": {"type": "boolean"},
    "float": {"type": "number"}, "iso-8601": {"type": "string", "format": "date-time"},
    "rfc-1123": {"type": "string", "format": "date-time"}, "duration": {"type": "string", "format": "duration"},
    "bytearray": {"type": "string", "format": "byte"}, "object": {"type": "any"},
}


def _msrest_type(name: str, models: set[str], enums: set[str]) -> dict[str, Any]:
    if name.startswith("[") and name.endswith("]"):
        return {"type": "array", "items": _msrest_type(name[1:-1], models, enums)}
    if name.startswith("{") and name.endswith("}"):
        return {"type": "map", "values": _msrest_type(name[1:-1], models, enums)}
    if name in _MSREST_PRIMITIVES:
        return dict(_MSREST_PRIMITIVES[name])
    if name in enums:
        return {"type": "enum", "enum": name}
    if name in models:
        return {"type": "object", "model": name}
    raise ValueError(f"unsupported msrest type {name!r}")


def _class_dicts(tree: ast.Module) -> dict[str, dict[str, Any]]:
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            attrs = {}
            for item in node.body:
                if isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name) \
                        and item.targets[0].id in ("_attribute_map", "_validation"):
                    attrs[item.targets[0].id] = ast.literal_eval(item.value)
            found[node.name] = attrs
    return found


def build_msrest(package: Path) -> dict[str, Any]:
    classes = _class_dicts(ast.parse((package / "models" / "_models_py3.py").read_text()))
    enum_tree = ast.parse((package / "models" / "_batch_service_client_enums.py").read_text())
    enums = {node.name: [item.value.value for item in node.body if isinstance(item, ast.Assign)]
             for node in enum_tree.body if isinstance(node, ast.ClassDef)}
    names = {name for name, attrs in classes.items() if "_attribute_map" in attrs}
    models: dict[str, Any] = {}
    for name in sorted(names):
        attrs = classes[name]
        if any(spec["key"] == "" for spec in attrs["_attribute_map"].values()):
            continue  # an options bag of headers and query parameters, not a body
        props, required = {}, []
        for attr, spec in attrs["_attribute_map"].items():
            props[spec["key"]] = _msrest_type(spec["type"], names, set(enums))
            if attrs.get("_validation", {}).get(attr, {}).get("required"):
                required.append(spec["key"])
        models[name] = {"properties": props, "required": required}
    operations, api_version = [], None
    for module in sorted((package / "operations").glob("_*_operations.py")):
        text = module.read_text()
        api_version = api_version or re.search(r'self\.api_version = "([^"]+)"', text).group(1)
        tree = ast.parse(text)
        lines = text.splitlines(keepends=True)
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            for func in (n for n in cls.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")):
                source = "".join(lines[func.lineno - 1:func.end_lineno])
                url = re.search(rf"{func.name}\.metadata = {{'url': '([^']+)'}}", text)
                verb = re.search(r"self\._client\.(get|post|put|patch|delete|head)\(", source)
                if url is None or verb is None:
                    continue
                body = re.search(r"self\._serialize\.body\(\w+, '(\w+)'\)", source)
                statuses = re.search(r"response\.status_code not in \[([\d, ]+)\]", source)
                response = re.search(r"self\._deserialize\('(\w+)', response\)", source)
                operations.append({
                    "name": f"{module.stem.strip('_').removesuffix('_operations')}.{func.name}",
                    "method": verb.group(1).upper(), "path": url.group(1),
                    "body": body.group(1) if body else None,
                    "statuses": [int(x) for x in statuses.group(1).split(",")] if statuses else [200],
                    "response": response.group(1) if response else None,
                    "paged": "Paged(" in source,
                    "headers": re.findall(r"'([\w-]+)': '(?:str|rfc-1123|bool|long|int)',", source.split("add_headers", 1)[-1])
                    if "add_headers" in source else [],
                })
    version = re.search(r'VERSION = "([^"]+)"', (package / "_version.py").read_text()).group(1)
    return {"source": f"azure-batch {version} (msrest models and operations)", "apiVersion": api_version,
            "models": models, "enums": dict(sorted(enums.items())),
            "operations": sorted(operations, key=lambda o: (o["path"], o["method"]))}


def main(argv: list[str] | None = None) -> None:
    """No argument: the 15.x schema from the installed SDK. `--sdk14 DIR`: also the 14.x one,
    from DIR/azure/batch of an unpacked azure-batch 14 wheel."""
    import argparse

    import azure.batch._operations._operations  # noqa: F401  (so build() can read its source)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdk14", type=Path, help="an unpacked azure-batch 14.x wheel")
    args = parser.parse_args(argv)
    OUTPUT.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT}")
    if args.sdk14:
        data = build_msrest(args.sdk14 / "azure" / "batch")
        target = OUTPUT.with_name(f"batch-{data['apiVersion']}.json")
        target.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
