"""Derive the request-body schema of the ARM operations the emulator serves from the installed azure-mgmt SDKs.

    python -m snakemake_executor_saje.emulator.schema.arm_generate     # rewrites arm.json

azure-mgmt-batch, -compute, -storage and -resource are generated from TypeSpec like azure-batch 15:
their models are read the same way (`generate.models_schema`), their operations by parsing each
`build_*_request` (method, URL template, api-version) and the operation that calls it (its body
model). azure-mgmt-authorization is msrest-generated: its models' `_attribute_map` (wire key, dotted
for a flattened `properties.x`) and `_validation` (required, readonly) are read by introspection.
Only operations that send a body to a resource type the emulator serves are kept, with the models
their bodies reach. Nothing here names a property; the output is committed and a test regenerates it.
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

from . import generate

OUTPUT = Path(__file__).with_name("arm.json")
TYPESPEC_PACKAGES = {"batch": "azure.mgmt.batch", "compute": "azure.mgmt.compute", "storage": "azure.mgmt.storage",
                     "resources": "azure.mgmt.resource.resources"}
# The api-version AuthorizationManagementClient uses for role assignments (its DEFAULT_API_VERSION).
AUTHORIZATION = ("azure.mgmt.authorization", "v2022_04_01")
BODY_METHODS = ("PUT", "PATCH", "POST")


def served(path: str) -> bool:
    """Whether the emulator serves the resource type an operation's URL template addresses."""
    from ..arm.service import PROVIDER_TYPES

    if path.startswith("/{"):
        return path.startswith("/{scope}/providers/Microsoft.Authorization/roleAssignments/")
    parts = path.strip("/").split("/")
    if "providers" not in parts:
        return len(parts) == 4 and parts[2].lower() == "resourcegroups"
    index = len(parts) - 1 - parts[::-1].index("providers")
    tail = parts[index + 1:]
    if tail[0].startswith("{"):
        return tail[1:] in (["register"], ["unregister"])  # /providers/{resourceProviderNamespace}/register
    types = PROVIDER_TYPES.get(tail[0], [])
    chain = tail[1::2]  # resource types, then the action of an action path (an even tail)
    return "/".join(chain) in types or (len(tail) % 2 == 0 and "/".join(chain[:-1]) in types)


# ----------------------------------------------------------------------------- TypeSpec SDKs
def _builders(text: str) -> dict[str, dict[str, Any]]:
    """build_*_request -> method, URL template and the api-version it sends by default."""
    found = {}
    for chunk in re.split(r"\n(?=def )", text):
        name = re.match(r"def (build_\w+_request)\(", chunk)
        url = re.search(r"""_url = (?:kwargs\.pop\(\s*["']template_url["'],\s*)?["']([^"']+)["']""", chunk)
        method = re.search(r"""HttpRequest\(method=["'](\w+)["']""", chunk)
        version = re.search(r"""_params\.pop\(["']api-version["'], ["']([^"']+)["']\)""", chunk)
        if name and url and method:
            found[name.group(1)] = {"method": method.group(1), "path": url.group(1),
                                    "apiVersion": version.group(1) if version else None}
    return found


def typespec_operations(package: str) -> list[dict[str, Any]]:
    module = importlib.import_module(f"{package}.operations._operations")
    text = Path(inspect.getfile(module)).read_text()
    builders = _builders(text)
    ops = {}
    for chunk in re.split(r"\n(?=class )", text)[1:]:
        cls = re.match(r"class (\w+)", chunk).group(1)
        for source in re.split(r"\n(?=    def )", chunk):
            func = re.match(r"\s*def (\w+)\(", source)
            builder = re.search(r"(build_\w+_request)\(", source)
            body_param = re.search(r"json\.dumps\((\w+), cls=SdkJSONEncoder", source)
            if func is None or builder is None or body_param is None or builder.group(1) not in builders:
                continue
            signature = source.split(") ->", 1)[0]
            annotation = re.search(rf"\b{body_param.group(1)}:(.*)", signature, re.S)  # may span lines
            route = builders[builder.group(1)]
            model = re.search(r"_models\.(?:_models\.)?(\w+)", annotation.group(1)) if annotation else None
            body = model.group(1) if model else None
            if body and route["method"] in BODY_METHODS and served(route["path"]):
                name = f"{cls}.{func.group(1).strip('_').removesuffix('_initial')}"
                ops[(route["method"], route["path"])] = {"name": name, **route, "body": body}
    return sorted(ops.values(), key=lambda o: (o["path"], o["method"]))


def typespec_models(package: str, roots: list[str]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The models the body models `roots` reach, and their enums (extensible ones marked open)."""
    models = importlib.import_module(f"{package}.models")
    rest_field = importlib.import_module(f"{package}._utils.model_base")._RestField
    generated = importlib.import_module(f"{package}.models._models")
    out: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in out:
            out[name] = generate.model_spec(getattr(models, name, None) or getattr(generated, name), models, rest_field,
                                            open_enums=True)
            todo.extend(_references(out[name]))
    enum_names = {e for spec in out.values() for e in _enum_references(spec)}
    enums_module = importlib.import_module(f"{package}.models._enums")
    return out, {n: [m.value for m in getattr(enums_module, n)] for n in enum_names}


def _walk(spec: dict[str, Any]):
    yield spec
    if spec["type"] == "array":
        yield from _walk(spec["items"])
    elif spec["type"] == "map":
        yield from _walk(spec["values"])


def _references(model: dict[str, Any]) -> list[str]:
    return [s["model"] for p in model["properties"].values() for s in _walk(p) if s["type"] == "object"]


def _enum_references(model: dict[str, Any]) -> list[str]:
    return [s["enum"] for p in model["properties"].values() for s in _walk(p) if s["type"] == "enum"]


# ----------------------------------------------------------------------------- msrest SDKs
def _unflatten(name: str, attribute_map: dict[str, Any], validation: dict[str, Any], models: dict[str, Any],
               known: set[str], enums: set[str]) -> None:
    """One msrest model -> the wire tree: a dotted key `properties.x` makes an anonymous nested model."""
    for attr, spec in attribute_map.items():
        *outer, leaf = re.split(r"(?<!\\)\.", spec["key"])
        owner = name
        for part in outer:
            child = f"{owner}.{part}"
            models.setdefault(child, {"properties": {}, "required": []})
            models[owner]["properties"].setdefault(part, {"type": "object", "model": child})
            owner = child
        prop = generate._msrest_type(spec["type"], known, enums)
        rules = validation.get(attr, {})
        if rules.get("readonly"):
            prop["readOnly"] = True
        models[owner]["properties"][leaf.replace("\\.", ".")] = prop
        if rules.get("required") and not rules.get("readonly"):
            models[owner]["required"].append(leaf)


def msrest_schema(package: str, version: str) -> tuple[dict[str, Any], dict[str, list[str]], list[dict[str, Any]]]:
    import enum

    models_module = importlib.import_module(f"{package}.{version}.models")
    classes = {n: c for n, c in vars(models_module).items() if isinstance(c, type) and hasattr(c, "_attribute_map")}
    enum_types = {n: [m.value for m in c] for n, c in vars(models_module).items()
                  if isinstance(c, type) and issubclass(c, enum.Enum)}
    models: dict[str, Any] = {}
    for name, cls in sorted(classes.items()):
        models[name] = {"properties": {}, "required": []}
        _unflatten(name, cls._attribute_map, getattr(cls, "_validation", {}), models, set(classes), set(enum_types))
    ops = []
    operations = importlib.import_module(f"{package}.{version}.operations")
    for cls in (c for c in vars(operations).values() if isinstance(c, type)):
        source_module = importlib.import_module(cls.__module__)
        builders = _builders(Path(inspect.getfile(source_module)).read_text())
        for func_name, func in vars(cls).items():
            url = getattr(func, "metadata", {}).get("url")
            if url is None or not served(url):
                continue
            source = inspect.getsource(func)
            body = re.search(r"""_serialize\.body\(\w+, ["'](\w+)["']\)""", source)
            builder = re.search(r"(build_\w+_request)\(", source)
            if body and builder and builder.group(1) in builders:
                route = builders[builder.group(1)]
                ops.append({"name": f"{cls.__name__}.{func_name}", "method": route["method"], "path": url,
                            "apiVersion": route["apiVersion"], "body": body.group(1)})
    return models, enum_types, sorted(ops, key=lambda o: (o["path"], o["method"]))


# ----------------------------------------------------------------------------- assembly
def _package(source: str, models: dict[str, Any], enums: dict[str, list[str]], ops: list[dict[str, Any]]) -> dict[str, Any]:
    keep, todo = set(), [o["body"] for o in ops]
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(_references(models[name]))
    used = {e for n in keep for e in _enum_references(models[n])}
    return {"source": source, "apiVersion": None,
            "models": {n: models[n] for n in sorted(keep)}, "enums": {n: enums[n] for n in sorted(used)},
            "operations": [{**o, "statuses": [], "response": None, "paged": False, "headers": []} for o in ops]}


def build() -> dict[str, Any]:
    from importlib.metadata import version

    packages = {}
    for key, package in TYPESPEC_PACKAGES.items():
        ops = typespec_operations(package)
        models, enums = typespec_models(package, [o["body"] for o in ops])
        dist = "azure-mgmt-resource" if key == "resources" else f"azure-mgmt-{key}"
        packages[key] = _package(f"{dist} {version(dist)}", models, enums, ops)
    models, enums, ops = msrest_schema(*AUTHORIZATION)
    packages["authorization"] = _package(f"azure-mgmt-authorization {version('azure-mgmt-authorization')} "
                                         f"({AUTHORIZATION[1]})", models, enums, ops)
    return packages


def main() -> None:
    OUTPUT.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
