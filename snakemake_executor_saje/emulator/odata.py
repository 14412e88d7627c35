"""The OData subset Azure Batch accepts in ``$filter``, ``$select`` and ``$expand``.

Semantics follow the service documentation:

- "Create queries to list Batch resources efficiently",
  https://learn.microsoft.com/azure/batch/batch-efficient-list-queries
  (property names are case-sensitive, property *values* are case-insensitive; date/time
  literals are ``DateTime'...'`` in W3C-DTF or RFC 1123; an invalid property or operator
  is a 400; ``$expand`` only supports ``stats``).
- "OData filters in Azure Batch",
  https://learn.microsoft.com/rest/api/batchservice/odata-filters-in-batch
  (which properties and operators each list operation allows; see ``FILTERABLE``).

A filter is compiled once into nested closures, because the emulator filters every page of
a list of possibly 10,000 tasks with the same clause. Comparisons with a missing (null)
property follow OData: ``eq`` is false, ``ne`` is true, ordering operators are false.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

__all__ = [
    "FILTERABLE",
    "ODataError",
    "compile_filter",
    "select_fields",
    "validate_expand",
]

Predicate = Callable[[dict], bool]
Getter = Callable[[dict], Any]

_ORDER = frozenset({"eq", "ne", "ge", "gt", "le", "lt"})
_EQ = frozenset({"eq", "ne"})
_STR = _ORDER | {"startswith"}

# kind -> property path -> (type, allowed operators). From "OData filters in Azure Batch";
# `state` takes eq and ne as in the current page (older revisions listed eq only).
_DT = ("datetime", _ORDER)
FILTERABLE: dict[str, dict[str, tuple[str, frozenset[str]]]] = {
    "pools": {
        "id": ("string", _STR), "state": ("string", _EQ), "stateTransitionTime": _DT,
        "allocationState": ("string", _EQ), "allocationStateTransitionTime": _DT,
        "creationTime": _DT, "enableAutoScale": ("bool", _EQ), "lastModified": _DT,
        "vmSize": ("string", _EQ), "enableInterNodeCommunication": ("bool", _EQ),
    },
    "jobs": {
        "id": ("string", _STR), "state": ("string", _EQ), "stateTransitionTime": _DT,
        "creationTime": _DT, "lastModified": _DT, "executionInfo/startTime": _DT,
        "executionInfo/endTime": _DT, "executionInfo/poolId": ("string", _STR),
    },
    "tasks": {
        "id": ("string", _STR), "state": ("string", _EQ), "stateTransitionTime": _DT,
        "creationTime": _DT, "lastModified": _DT, "lastModifiedTime": _DT,
        "executionInfo/startTime": _DT, "executionInfo/endTime": _DT,
        "executionInfo/exitCode": ("int", _ORDER), "executionInfo/result": ("string", _EQ),
    },
    "nodes": {
        "state": ("string", _EQ), "stateTransitionTime": _DT, "lastBootTime": _DT,
        "allocationTime": _DT, "startTaskInfo/state": ("string", frozenset({"eq"})),
        "startTaskInfo/result": ("string", _EQ), "startTaskInfo/exitCode": ("int", _ORDER),
        "startTaskInfo/startTime": _DT, "startTaskInfo/endTime": _DT,
    },
    "files": {"name": ("string", frozenset({"startswith"}))},
    "jobschedules": {
        "id": ("string", _STR), "state": ("string", _EQ), "stateTransitionTime": _DT,
        "creationTime": _DT, "lastModified": _DT, "executionInfo/endTime": _DT,
        "schedule/doNotRunUntil": _DT, "schedule/doNotRunAfter": _DT,
    },
    "certificates": {"state": ("string", _EQ), "stateTransitionTime": _DT},
    "poolnodecounts": {"poolId": ("string", frozenset({"eq"}))},
    "supportedimages": {
        "osType": ("string", _EQ), "verificationType": ("string", _EQ),
        "nodeAgentSKUId": ("string", _EQ),
    },
    "usagemetrics": {"poolId": ("string", frozenset({"eq", "ge", "gt", "le", "lt", "startswith"}))},
}

# Where the service accepts $expand=stats.
_EXPANDABLE = frozenset({"pools", "jobs", "jobschedules", "tasks"})


class ODataError(ValueError):
    """A malformed or unsupported query option; the HTTP layer answers 400
    ``InvalidQueryParameterValue`` with ``message`` as the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------- lexer

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<datetime>datetime'(?:[^']|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<punct>[(),])
    """,
    re.VERBOSE | re.IGNORECASE,
)

_KEYWORDS = frozenset({"and", "or", "not", "true", "false", "null"}) | _ORDER


def _tokenize(text: str) -> list[tuple[str, Any, int]]:
    """Split a filter into (kind, value, offset) tokens; keywords are case-insensitive."""
    tokens: list[tuple[str, Any, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ODataError(f"unexpected character {text[pos]!r} at position {pos}")
        kind, raw = m.lastgroup, m.group()
        if kind == "datetime":
            tokens.append(("literal", _parse_datetime_literal(raw[9:-1].replace("''", "'")), pos))
        elif kind == "string":
            tokens.append(("literal", raw[1:-1].replace("''", "'"), pos))
        elif kind == "number":
            tokens.append(("literal", float(raw) if any(c in raw for c in ".eE") else int(raw), pos))
        elif kind == "name" and raw.lower() in _KEYWORDS:
            tokens.append(_keyword_token(raw.lower(), pos))
        elif kind in ("name", "punct"):
            tokens.append((kind, raw, pos))
        pos = m.end()
    tokens.append(("end", None, len(text)))
    return tokens


def _keyword_token(word: str, pos: int) -> tuple[str, Any, int]:
    """Literal keywords become literals; the rest stay keywords."""
    if word in ("true", "false"):
        return ("literal", word == "true", pos)
    if word == "null":
        return ("literal", None, pos)
    return ("kw", word, pos)


def _parse_datetime_literal(text: str) -> datetime:
    """W3C-DTF or RFC 1123, as the service documents; naive times are UTC."""
    parsed = _parse_iso(text)
    if parsed is None:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            raise ODataError(f"invalid DateTime literal {text!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@lru_cache(maxsize=65536)
def _parse_iso(text: str) -> datetime | None:
    """ISO 8601 to an aware datetime, None when it is not one; cached since the same
    timestamps recur on every poll."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent over the tokens; every rule returns a compiled closure."""

    def __init__(self, text: str, kind: str | None) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.table = FILTERABLE.get(kind) if kind else None
        if kind and self.table is None:
            raise ODataError(f"the list operation {kind!r} does not support $filter")

    # -- token helpers
    def peek(self) -> tuple[str, Any, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, Any, int]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def accept(self, kind: str, value: Any = None) -> bool:
        k, v, _ = self.peek()
        if k == kind and (value is None or v == value):
            self.i += 1
            return True
        return False

    def expect(self, kind: str, value: Any = None) -> tuple[str, Any, int]:
        k, v, pos = self.peek()
        if k != kind or (value is not None and v != value):
            want = value if value is not None else kind
            raise ODataError(f"expected {want!r} at position {pos} in {self.text!r}")
        return self.take()

    # -- grammar
    def parse(self) -> Predicate:
        pred = self.or_expr()
        k, v, pos = self.peek()
        if k != "end":
            raise ODataError(f"unexpected {v!r} at position {pos} in {self.text!r}")
        return pred

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.accept("kw", "or"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else _any_of(parts)

    def and_expr(self) -> Predicate:
        parts = [self.unary()]
        while self.accept("kw", "and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else _all_of(parts)

    def unary(self) -> Predicate:
        if self.accept("kw", "not"):
            inner = self.unary()
            return lambda r: not inner(r)
        return self.primary()

    def primary(self) -> Predicate:
        k, v, _ = self.peek()
        if k == "punct" and v == "(":
            self.take()
            inner = self.or_expr()
            self.expect("punct", ")")
            return inner
        if k == "name" and v.lower() == "startswith" and self.tokens[self.i + 1][1] == "(":
            return self.startswith_call()
        return self.comparison()

    def startswith_call(self) -> Predicate:
        self.take()
        self.expect("punct", "(")
        path = self.expect("name")[1]
        self.expect("punct", ",")
        _, prefix, pos = self.expect("literal")
        self.expect("punct", ")")
        if not isinstance(prefix, str):
            raise ODataError(f"startswith needs a string literal at position {pos}")
        self.check(path, "startswith", prefix)
        return _startswith(_getter(path), prefix.lower())

    def comparison(self) -> Predicate:
        left = self.operand()
        k, op, pos = self.take()
        if k != "kw" or op not in _ORDER:
            raise ODataError(f"expected a comparison operator at position {pos} in {self.text!r}")
        right = self.operand()
        if left[0] == "literal" and right[0] == "name":
            left, right, op = right, left, _FLIP[op]
        if left[0] != "name" or right[0] != "literal":
            raise ODataError(f"a comparison needs a property and a literal near position {pos}")
        self.check(left[1], op, right[1])
        return _compare(_getter(left[1]), op, right[1])

    def operand(self) -> tuple[str, Any]:
        k, v, pos = self.take()
        if k not in ("name", "literal"):
            raise ODataError(f"expected a property or a literal at position {pos} in {self.text!r}")
        return k, v

    def check(self, path: str, op: str, literal: Any) -> None:
        """Reject what the service rejects for this list operation, when it is known."""
        if self.table is None:
            return
        spec = self.table.get(path)
        if spec is None:
            raise ODataError(f"the property {path!r} cannot be used in $filter here")
        typ, ops = spec
        if op not in ops:
            raise ODataError(f"the operator {op!r} is not allowed on {path!r}")
        if literal is not None and not _literal_fits(typ, literal):
            raise ODataError(f"the value {literal!r} does not match the type of {path!r}")


_FLIP = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}


def _literal_fits(typ: str, literal: Any) -> bool:
    """Literal type check against the documented property type (strings may carry
    an ISO datetime, which we accept for DateTime properties)."""
    if typ == "bool":
        return isinstance(literal, bool)
    if typ == "int":
        return isinstance(literal, (int, float)) and not isinstance(literal, bool)
    if typ == "datetime":
        return isinstance(literal, datetime) or (isinstance(literal, str) and _parse_iso(literal) is not None)
    return isinstance(literal, str)


# ---------------------------------------------------------------------------- closures


def _getter(path: str) -> Getter:
    """A fast accessor for a '/'-separated property path; missing parts read as None."""
    parts = path.split("/")
    if len(parts) == 1:
        key = parts[0]
        return lambda r: r.get(key)

    def get(r: dict) -> Any:
        value: Any = r
        for part in parts:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    return get


def _any_of(parts: list[Predicate]) -> Predicate:
    return lambda r: any(p(r) for p in parts)


def _all_of(parts: list[Predicate]) -> Predicate:
    return lambda r: all(p(r) for p in parts)


def _startswith(get: Getter, prefix: str) -> Predicate:
    def pred(r: dict) -> bool:
        value = get(r)
        return isinstance(value, str) and value.lower().startswith(prefix)

    return pred


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
}


def _compare(get: Getter, op: str, literal: Any) -> Predicate:
    """Pick the comparison once, by the literal's type, so the per-row work is small."""
    if literal is None:
        return _null_compare(get, op)
    if isinstance(literal, datetime):
        return _typed_compare(get, op, literal, _as_datetime)
    if isinstance(literal, bool):
        return _typed_compare(get, op, literal, lambda v: v if isinstance(v, bool) else None)
    if isinstance(literal, (int, float)):
        return _typed_compare(get, op, literal, _as_number)
    return _typed_compare(get, op, literal.lower(), lambda v: v.lower() if isinstance(v, str) else None)


def _null_compare(get: Getter, op: str) -> Predicate:
    if op == "eq":
        return lambda r: get(r) is None
    if op == "ne":
        return lambda r: get(r) is not None
    return lambda r: False


def _typed_compare(get: Getter, op: str, literal: Any, coerce: Callable[[Any], Any]) -> Predicate:
    """Compare coerce(value) with the literal; a missing or ill-typed value is null."""
    fn = _OPS[op]
    unmatched = op == "ne"

    def pred(r: dict) -> bool:
        value = coerce(get(r))
        return unmatched if value is None else fn(value, literal)

    return pred


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return _parse_iso(value) if isinstance(value, str) else None


# ---------------------------------------------------------------------------- public API


def compile_filter(text: str, kind: str | None = None) -> Predicate:
    """Compile a ``$filter`` clause to a predicate over REST-shaped resource dicts.

    ``kind`` names the list operation (a key of ``FILTERABLE``: "tasks", "jobs", "pools",
    "nodes", "files", ...); when given, properties, operators and literal types are checked
    against the service's table and anything else raises ``ODataError``. Without it any
    property path is accepted. An empty clause matches everything.
    """
    if text is None or not text.strip():
        return lambda r: True
    return _compile_cached(text, kind)


@lru_cache(maxsize=256)
def _compile_cached(text: str, kind: str | None) -> Predicate:
    """Pollers repeat the same clause on every call; compile it once."""
    return _Parser(text, kind).parse()


@lru_cache(maxsize=256)
def _select_paths(select: str) -> tuple[tuple[str, ...], ...]:
    """Split a ``$select`` clause into property paths, ignoring blanks."""
    return tuple(tuple(p.strip().split("/")) for p in select.split(",") if p.strip())


def select_fields(resource: dict, select: str | None) -> dict:
    """Project a resource onto a ``$select`` clause.

    Top-level names keep the whole property; ``a/b`` keeps only that nested leaf under its
    path. Unknown names are ignored, as the service does. No clause returns a shallow copy.
    """
    if select is None or not select.strip():
        return dict(resource)
    out: dict = {}
    for path in _select_paths(select):
        _copy_path(resource, out, path)
    return out


def _copy_path(src: dict, dst: dict, path: tuple[str, ...]) -> None:
    """Copy src[path] into dst, creating intermediate dicts; silently skip missing parts."""
    head, rest = path[0], path[1:]
    if head not in src:
        return
    if not rest:
        dst[head] = src[head]
        return
    child = src[head]
    if not isinstance(child, dict):
        return
    target = dst.get(head)
    if target is child:
        return  # the whole property is already selected
    if not isinstance(target, dict):
        target = dst[head] = {}
    _copy_path(child, target, rest)
    if not target:
        del dst[head]


def validate_expand(text: str | None, kind: str | None = None) -> frozenset[str]:
    """Check an ``$expand`` clause and return what it expands.

    The service only knows ``stats``, and only on pools, jobs, job schedules and tasks.
    """
    if text is None or not text.strip():
        return frozenset()
    items = {part.strip() for part in text.split(",") if part.strip()}
    unknown = items - {"stats"}
    if unknown:
        raise ODataError(f"$expand supports only 'stats', not {', '.join(sorted(unknown))}")
    if kind is not None and kind not in _EXPANDABLE:
        raise ODataError(f"$expand is not supported when listing {kind}")
    return frozenset(items)
