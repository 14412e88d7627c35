"""The Azure Batch autoscale formula language: parser and evaluator.

Semantics follow "Create a formula to automatically scale compute nodes in a Batch pool",
https://learn.microsoft.com/azure/batch/batch-automatic-scaling (variables, types, the
operation table, functions, the sample methods and their sample-percentage rule), and the
service's observable output:

- ``autoScaleRun.results`` lists ``$TargetDedicatedNodes``, ``$TargetLowPriorityNodes`` and
  ``$NodeDeallocationOption`` first, then every user variable in ordinal order, doubles in
  ``%g`` form (recorded pool: ``...;$samples=96.6667;$targetVMs=0.5;$tasks=0;cappedPoolSize=3``).
- Error codes: ``AutoScalingFormulaSyntaxError`` and ``AutoScaleFormulaTooLong`` (400 at pool
  add / enable / evaluate, from the Batch error code list), and ``InsufficientSampleData``
  with "Autoscale evaluation failed due to insufficient sample data" and a
  ``Line L, Col C: Insufficient data from data set: $X wanted P%, received Q%`` detail
  (the Evaluate Auto Scale REST reference). Other run-time failures use
  ``EVALUATION_ERROR``, a code of the emulator's own: the service documents none.

Not supported: a ``vec()`` constructor (a doubleVecList exists only as function arguments),
``TimeInterval_100ns`` below Python's microsecond resolution (it reads as zero), and the
service's delay before a recorded sample becomes visible (samples count once recorded).
Helpers some formulas assume, such as ``lastsample()`` or ``count()``, are not part of the
service's function list and are rejected as unknown functions, as the service does.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any, Union

__all__ = [
    "DEFAULT_MIN_INTERVAL",
    "DEFAULT_SAMPLE_PERCENT",
    "EVALUATION_ERROR",
    "INSUFFICIENT_SAMPLES",
    "SAMPLE_PERIOD",
    "SYNTAX_ERROR",
    "TOO_LONG",
    "AutoscaleError",
    "AutoscaleResult",
    "Sample",
    "evaluate",
    "validate",
]

DEFAULT_MIN_INTERVAL = timedelta(minutes=5)  # the service's minimum evaluation interval
SAMPLE_PERIOD = timedelta(seconds=30)  # "samples are recorded every 30 seconds"
MAX_FORMULA_LENGTH = 8192
MAX_STATEMENTS = 100
# GetSample(interval) without a percentage still needs some data: the REST reference's
# example error reads "wanted 10%, received 0%" for a formula that gave no percentage.
DEFAULT_SAMPLE_PERCENT = 10.0

SYNTAX_ERROR = "AutoScalingFormulaSyntaxError"
TOO_LONG = "AutoScaleFormulaTooLong"
INSUFFICIENT_SAMPLES = "InsufficientSampleData"
EVALUATION_ERROR = "AutoScalingFormulaEvaluationError"

DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")

METRICS = frozenset({
    "$CPUPercent", "$WallClockSeconds", "$MemoryBytes", "$DiskBytes", "$DiskReadBytes",
    "$DiskWriteBytes", "$DiskReadOps", "$DiskWriteOps", "$NetworkInBytes", "$NetworkOutBytes",
    "$SampleNodeCount", "$ActiveTasks", "$RunningTasks", "$PendingTasks", "$SucceededTasks",
    "$FailedTasks", "$PreemptedNodeCount", "$UsableNodeCount",
})
CURRENT = {  # read-only doubles; $CurrentDedicated is the legacy name the REST examples use
    "$CurrentDedicatedNodes": "$CurrentDedicatedNodes", "$CurrentDedicated": "$CurrentDedicatedNodes",
    "$CurrentLowPriorityNodes": "$CurrentLowPriorityNodes", "$TaskSlotsPerNode": "$TaskSlotsPerNode",
}
TARGETS = {  # readable and settable; alias -> full name
    "$TargetDedicatedNodes": "$TargetDedicatedNodes", "$TargetDedicated": "$TargetDedicatedNodes",
    "$TargetLowPriorityNodes": "$TargetLowPriorityNodes", "$TargetLowPriority": "$TargetLowPriorityNodes",
}
DEALLOCATION = "$NodeDeallocationOption"
INTERVALS = {
    "TimeInterval_Zero": timedelta(0), "TimeInterval_100ns": timedelta(microseconds=0.1),
    "TimeInterval_Microsecond": timedelta(microseconds=1),
    "TimeInterval_Millisecond": timedelta(milliseconds=1), "TimeInterval_Second": timedelta(seconds=1),
    "TimeInterval_Minute": timedelta(minutes=1), "TimeInterval_Hour": timedelta(hours=1),
    "TimeInterval_Day": timedelta(days=1), "TimeInterval_Week": timedelta(weeks=1),
    "TimeInterval_Year": timedelta(days=365),
}
_READ_ONLY = METRICS | set(CURRENT) | set(INTERVALS) | set(DEALLOCATION_OPTIONS)


@dataclass
class Sample:
    """One recorded metric value (the service records one every 30 seconds)."""

    time: datetime
    value: float


@dataclass(frozen=True)
class AutoscaleResult:
    """What one evaluation decided, plus ``results`` as ``autoScaleRun.results`` shows it."""

    target_dedicated: int
    target_low_priority: int
    node_deallocation_option: str | None
    results: str
    variables: dict[str, Any] = field(default_factory=dict)


class AutoscaleError(Exception):
    """A formula the service would reject (``code``) with its message and detail values
    (``[{"name": "Message", "value": "Line 1, Col 5: ..."}]``, as in ``autoScaleRun.error``)."""

    def __init__(self, code: str, message: str, detail: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" ({detail})" if detail else ""))
        self.code = code
        self.message = message
        self.values = [{"name": "Message", "value": detail}] if detail else []


@dataclass(frozen=True)
class _Metric:
    """A read-only system variable: a data set reached through its sample methods."""

    name: str
    samples: tuple[Sample, ...]


Vec = tuple  # a doubleVec is a tuple of floats
Value = Union[float, Vec, str, datetime, timedelta, _Metric]


class _Stop(Exception):
    """Raised by stop(): the evaluation ends, keeping what was assigned so far."""


@dataclass
class _Env:
    """Everything one evaluation reads and writes."""

    variables: dict[str, Value]
    metrics: Mapping[str, _Metric]
    current: Mapping[str, float]
    now: datetime
    period: timedelta
    rand: Callable[[], float]


Expr = Callable[[_Env], Value]


def _syntax(line: int, col: int, what: str) -> AutoscaleError:
    return AutoscaleError(SYNTAX_ERROR, "The specified auto-scaling formula has a syntax error.",
                          f"Line {line}, Col {col}: {what}")


def _eval_error(pos: tuple[int, int] | None, what: str) -> AutoscaleError:
    where = f"Line {pos[0]}, Col {pos[1]}: " if pos else ""
    return AutoscaleError(EVALUATION_ERROR, "Autoscale evaluation failed", where + what)


# ---------------------------------------------------------------------------- lexer

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>"[^"]*"|'[^']*')
  | (?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[-+*/<>!?:(),;=.])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    line: int
    col: int


def _tokenize(formula: str) -> list[_Tok]:
    """Split a formula into tokens with 1-based line and column, dropping comments."""
    tokens: list[_Tok] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(formula):
        m = _TOKEN.match(formula, pos)
        if m is None:
            raise _syntax(line, pos - line_start + 1, f"unexpected character {formula[pos]!r}")
        if m.lastgroup != "ws":
            tokens.append(_Tok(m.lastgroup or "", m.group(), line, pos - line_start + 1))
        for i, ch in enumerate(m.group()):
            if ch == "\n":
                line, line_start = line + 1, pos + i + 1
        pos = m.end()
    tokens.append(_Tok("end", "", line, pos - line_start + 1))
    return tokens


# ---------------------------------------------------------------------------- parser


@dataclass(frozen=True)
class _Statement:
    name: str
    expr: Expr


class _Parser:
    """Recursive descent; each rule returns a closure over ``_Env``. Names are resolved
    statically: using a variable before any statement assigns it is a syntax error."""

    def __init__(self, formula: str) -> None:
        self.tokens = _tokenize(formula)
        self.i = 0
        self.assigned: set[str] = set()

    # -- token helpers
    def peek(self, ahead: int = 0) -> _Tok:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def accept(self, *texts: str) -> _Tok | None:
        tok = self.peek()
        if tok.kind == "op" and tok.text in texts:
            self.i += 1
            return tok
        return None

    def expect(self, text: str) -> _Tok:
        tok = self.peek()
        if tok.kind != "op" or tok.text != text:
            raise _syntax(tok.line, tok.col, f"expected '{text}' but found '{tok.text or 'end of formula'}'")
        return self.take()

    # -- statements
    def formula(self) -> list[_Statement]:
        statements: list[_Statement] = []
        while self.peek().kind != "end":
            if self.accept(";"):
                continue
            statements.append(self.statement())
            if self.peek().kind != "end":
                self.expect(";")
        if len(statements) > MAX_STATEMENTS:
            raise _syntax(1, 1, f"a formula may hold at most {MAX_STATEMENTS} statements")
        if not statements:
            raise _syntax(1, 1, "the formula has no statements")
        return statements

    def statement(self) -> _Statement:
        tok = self.take()
        if tok.kind != "name":
            raise _syntax(tok.line, tok.col, f"expected a variable name but found '{tok.text}'")
        if tok.text in _READ_ONLY or tok.text in _FUNCTIONS:
            raise _syntax(tok.line, tok.col, f"'{tok.text}' is read-only")
        self.expect("=")
        expr = self.expression()
        self.assigned.add(tok.text)
        return _Statement(tok.text, expr)

    # -- expressions, lowest precedence first
    def expression(self) -> Expr:
        cond = self.logical_or()
        tok = self.accept("?")
        if tok is None:
            return cond
        yes = self.expression()
        self.expect(":")
        no = self.expression()
        return _ternary(cond, yes, no, (tok.line, tok.col))

    def logical_or(self) -> Expr:
        return self.binary(self.logical_and, ("||",))

    def logical_and(self) -> Expr:
        return self.binary(self.equality, ("&&",))

    def equality(self) -> Expr:
        return self.binary(self.relational, ("==", "!="))

    def relational(self) -> Expr:
        return self.binary(self.additive, ("<", "<=", ">", ">="))

    def additive(self) -> Expr:
        return self.binary(self.multiplicative, ("+", "-"))

    def multiplicative(self) -> Expr:
        return self.binary(self.unary, ("*", "/"))

    def binary(self, operand: Callable[[], Expr], ops: tuple[str, ...]) -> Expr:
        left = operand()
        while tok := self.accept(*ops):
            left = _binary(tok.text, left, operand(), (tok.line, tok.col))
        return left

    def unary(self) -> Expr:
        tok = self.accept("-", "!", "+")
        if tok is None:
            return self.postfix()
        return _unary(tok.text, self.unary(), (tok.line, tok.col))

    def postfix(self) -> Expr:
        expr = self.primary()
        while self.accept("."):
            tok = self.take()
            if tok.kind != "name":
                raise _syntax(tok.line, tok.col, f"expected a member name but found '{tok.text}'")
            if self.peek().text == "(":
                expr = self.method(expr, tok)
            elif tok.text in _MEMBERS:
                expr = _member(expr, tok.text, (tok.line, tok.col))
            else:
                raise _syntax(tok.line, tok.col, f"unknown member '{tok.text}'")
        return expr

    def method(self, target: Expr, tok: _Tok) -> Expr:
        if tok.text not in _METHODS:
            raise _syntax(tok.line, tok.col, f"unknown method '{tok.text}'")
        args = self.arguments()
        low, high = _METHODS[tok.text]
        if not low <= len(args) <= high:
            raise _syntax(tok.line, tok.col, f"wrong number of arguments to {tok.text}")
        return _method_call(target, tok.text, args, (tok.line, tok.col))

    def arguments(self) -> list[Expr]:
        self.expect("(")
        args: list[Expr] = []
        if not self.accept(")"):
            args.append(self.expression())
            while self.accept(","):
                args.append(self.expression())
            self.expect(")")
        return args

    def primary(self) -> Expr:
        tok = self.take()
        if tok.kind == "number":
            value = float(tok.text)
            return lambda env: value
        if tok.kind == "string":
            text = tok.text[1:-1]
            return lambda env: text
        if tok.kind == "op" and tok.text == "(":
            inner = self.expression()
            self.expect(")")
            return inner
        if tok.kind == "name":
            return self.call(tok) if self.peek().text == "(" else self.variable(tok)
        raise _syntax(tok.line, tok.col, f"unexpected '{tok.text or 'end of formula'}'")

    def call(self, tok: _Tok) -> Expr:
        spec = _FUNCTIONS.get(tok.text)
        if spec is None:
            raise _syntax(tok.line, tok.col, f"unknown function '{tok.text}'")
        args = self.arguments()
        low, high, fn = spec
        if not low <= len(args) <= high:
            raise _syntax(tok.line, tok.col, f"wrong number of arguments to {tok.text}")
        return _function_call(fn, tok.text, args, (tok.line, tok.col))

    def variable(self, tok: _Tok) -> Expr:
        name = tok.text
        if name in INTERVALS:
            interval = INTERVALS[name]
            return lambda env: interval
        if name in DEALLOCATION_OPTIONS:
            return lambda env: name
        if name in METRICS:
            return lambda env: env.metrics.get(name) or _Metric(name, ())
        if name in CURRENT:
            full = CURRENT[name]
            return lambda env: float(env.current.get(full, 0.0))
        if name in TARGETS or name == DEALLOCATION or name in self.assigned:
            return lambda env: _read(env, name)
        raise _syntax(tok.line, tok.col, f"undefined variable '{name}'")


def _read(env: _Env, name: str) -> Value:
    """Assigned value, else (for the settable system variables) the pool's current one."""
    if name in env.variables:
        return env.variables[name]
    if name in TARGETS:
        full = TARGETS[name]
        alias = next(a for a, f in TARGETS.items() if f == full and a != full)
        for key in (full, alias):
            if key in env.variables:
                return env.variables[key]
        return float(env.current.get(full, 0.0))
    return DEALLOCATION_OPTIONS[0]  # $NodeDeallocationOption defaults to requeue


# ---------------------------------------------------------------------------- operations


def _type(value: Value) -> str:
    """The service's name for a value's type, used in checks and messages."""
    if isinstance(value, float):
        return "double"
    if isinstance(value, tuple):
        return "doubleVec"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, timedelta):
        return "timeinterval"
    return "dataset"


_ARITH: dict[tuple[str, str, str], Callable[[Any, Any], Value]] = {
    ("double", "+", "double"): lambda a, b: a + b,
    ("double", "-", "double"): lambda a, b: a - b,
    ("double", "*", "double"): lambda a, b: a * b,
    ("double", "/", "double"): lambda a, b: a / b,
    ("double", "*", "timeinterval"): lambda a, b: b * a,
    ("timeinterval", "*", "double"): lambda a, b: a * b,
    ("timeinterval", "/", "double"): lambda a, b: a / b,
    ("timeinterval", "+", "timeinterval"): lambda a, b: a + b,
    ("timeinterval", "-", "timeinterval"): lambda a, b: a - b,
    ("timeinterval", "+", "timestamp"): lambda a, b: b + a,
    ("timestamp", "+", "timeinterval"): lambda a, b: a + b,
    ("timestamp", "-", "timeinterval"): lambda a, b: a - b,
    ("timestamp", "-", "timestamp"): lambda a, b: a - b,
}
_VEC_OPS: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b,
    "*": lambda a, b: a * b, "/": lambda a, b: a / b,
}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}
_COMPARABLE = frozenset({"double", "string", "timestamp", "timeinterval"})


def _binary(op: str, left: Expr, right: Expr, pos: tuple[int, int]) -> Expr:
    """A binary operator; && and || short-circuit like C."""
    if op in ("&&", "||"):
        return _logical(op, left, right, pos)

    def run(env: _Env) -> Value:
        return _apply(op, left(env), right(env), pos)

    return run


def _apply(op: str, a: Value, b: Value, pos: tuple[int, int]) -> Value:
    """Dispatch on operand types per the documented operation table."""
    ta, tb = _type(a), _type(b)
    try:
        if op in _COMPARE:
            if ta != tb or ta not in _COMPARABLE:
                raise _eval_error(pos, f"cannot compare {ta} {op} {tb}")
            return 1.0 if _COMPARE[op](a, b) else 0.0
        if ta == "doubleVec" and tb in ("double", "doubleVec"):
            return _vector_op(op, a, b, pos)  # type: ignore[arg-type]
        fn = _ARITH.get((ta, op, tb))
        if fn is None:
            raise _eval_error(pos, f"operator {op} is not defined for {ta} and {tb}")
        return fn(a, b)
    except ZeroDivisionError:
        raise _eval_error(pos, "division by zero") from None
    except OverflowError:
        raise _eval_error(pos, "arithmetic overflow") from None


def _vector_op(op: str, a: Vec, b: float | Vec, pos: tuple[int, int]) -> Vec:
    """doubleVec op double, or component-wise doubleVec op doubleVec."""
    fn = _VEC_OPS.get(op)
    if fn is None:
        raise _eval_error(pos, f"operator {op} is not defined for doubleVec")
    if isinstance(b, tuple):
        if len(a) != len(b):
            raise _eval_error(pos, "vectors of different lengths")
        return tuple(fn(x, y) for x, y in zip(a, b))
    return tuple(fn(x, b) for x in a)


def _logical(op: str, left: Expr, right: Expr, pos: tuple[int, int]) -> Expr:
    def run(env: _Env) -> Value:
        first = _truth(left(env), pos)
        if first == (op == "||"):
            return 1.0 if first else 0.0
        return 1.0 if _truth(right(env), pos) else 0.0

    return run


def _truth(value: Value, pos: tuple[int, int]) -> bool:
    """Only doubles have a truth value: nonzero is true."""
    if not isinstance(value, float):
        raise _eval_error(pos, f"expected a double but found a {_type(value)}")
    return value != 0.0


def _ternary(cond: Expr, yes: Expr, no: Expr, pos: tuple[int, int]) -> Expr:
    """Only the chosen branch runs, so a guarded GetSample cannot fail."""
    return lambda env: yes(env) if _truth(cond(env), pos) else no(env)


def _unary(op: str, operand: Expr, pos: tuple[int, int]) -> Expr:
    def run(env: _Env) -> Value:
        value = operand(env)
        if op == "!":
            return 0.0 if _truth(value, pos) else 1.0
        if isinstance(value, (float, timedelta)):
            return -value if op == "-" else value
        raise _eval_error(pos, f"unary {op} is not defined for {_type(value)}")

    return run


_MEMBERS: dict[str, Callable[[datetime], int]] = {
    "year": lambda t: t.year, "month": lambda t: t.month, "day": lambda t: t.day,
    "weekday": lambda t: t.isoweekday() % 7,  # 1 is Monday; Sunday is 0 as in .NET
    "hour": lambda t: t.hour, "minute": lambda t: t.minute, "second": lambda t: t.second,
}


def _member(target: Expr, name: str, pos: tuple[int, int]) -> Expr:
    def run(env: _Env) -> Value:
        value = target(env)
        if not isinstance(value, datetime):
            raise _eval_error(pos, f"'{name}' is a member of timestamp, not of {_type(value)}")
        return float(_MEMBERS[name](value))

    return run


# ---------------------------------------------------------------------------- functions


def _flatten(name: str, args: Sequence[Value], pos: tuple[int, int]) -> list[float]:
    """A doubleVecList: any mix of doubles and doubleVecs, joined into one vector."""
    out: list[float] = []
    for arg in args:
        if isinstance(arg, float):
            out.append(arg)
        elif isinstance(arg, tuple):
            out.extend(arg)
        else:
            raise _eval_error(pos, f"{name} takes doubles and doubleVecs, not a {_type(arg)}")
    return out


def _nonempty(name: str, values: list[float], pos: tuple[int, int]) -> list[float]:
    if not values:
        raise _eval_error(pos, f"{name} of an empty vector")
    return values


def _std(values: list[float]) -> float:
    """Sample standard deviation, as documented; zero for a single value."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


_REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "avg": lambda v: sum(v) / len(v), "max": max, "min": min,
    "range": lambda v: max(v) - min(v), "std": _std,
}


def _reducer(name: str) -> Callable[[_Env, list[Value], tuple[int, int]], Value]:
    def fn(env: _Env, args: list[Value], pos: tuple[int, int]) -> Value:
        values = _flatten(name, args, pos)
        if name == "len":
            return float(len(values))
        if name == "sum":
            return float(sum(values))
        if name == "norm":
            return math.sqrt(sum(v * v for v in values))
        return float(_REDUCERS[name](_nonempty(name, values, pos)))

    return fn


def _logarithm(name: str, base: float | None) -> Callable[[_Env, list[Value], tuple[int, int]], Value]:
    def one(x: float, pos: tuple[int, int]) -> float:
        if x <= 0:
            raise _eval_error(pos, f"{name} of a non-positive number")
        return math.log(x) if base is None else math.log(x, base)

    def fn(env: _Env, args: list[Value], pos: tuple[int, int]) -> Value:
        (arg,) = args
        if isinstance(arg, float):
            return one(arg, pos)
        if isinstance(arg, tuple):
            return tuple(one(x, pos) for x in arg)
        raise _eval_error(pos, f"{name} takes a double or a doubleVec")

    return fn


def _percentile(env: _Env, args: list[Value], pos: tuple[int, int]) -> Value:
    """Nearest-rank percentile of v."""
    vec, p = args
    values = sorted(_nonempty("percentile", _flatten("percentile", [vec], pos), pos))
    if not isinstance(p, float) or not 0.0 <= p <= 100.0:
        raise _eval_error(pos, "percentile needs a percentage between 0 and 100")
    rank = max(1, math.ceil(p / 100.0 * len(values)))
    return values[rank - 1]


def _val(env: _Env, args: list[Value], pos: tuple[int, int]) -> Value:
    vec, index = args
    values = _flatten("val", [vec], pos)
    if not isinstance(index, float) or not 0 <= int(index) < len(values):
        raise _eval_error(pos, "val index out of range")
    return values[int(index)]


def _time(env: _Env, args: list[Value], pos: tuple[int, int]) -> Value:
    """Now, or the W3C-DTF / RFC 1123 time given."""
    if not args or args[0] == "":
        return env.now
    text = args[0]
    if not isinstance(text, str):
        raise _eval_error(pos, "time takes a string")
    parsed = _parse_time(text)
    if parsed is None:
        raise _eval_error(pos, f"cannot parse time '{text}'")
    return parsed


def _parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _stop(env: _Env, args: list[Value], pos: tuple[int, int]) -> Value:
    raise _Stop()


Function = Callable[[_Env, list[Value], tuple[int, int]], Value]
_MANY = 1 << 30
_FUNCTIONS: dict[str, tuple[int, int, Function]] = {
    **{name: (1, _MANY, _reducer(name)) for name in ("avg", "len", "max", "min", "norm", "range", "std", "sum")},
    "lg": (1, 1, _logarithm("lg", 2.0)), "ln": (1, 1, _logarithm("ln", None)),
    "log": (1, 1, _logarithm("log", 10.0)), "percentile": (2, 2, _percentile),
    "rand": (0, 0, lambda env, args, pos: env.rand()), "stop": (0, 0, _stop),
    "time": (0, 1, _time), "val": (2, 2, _val),
}


def _function_call(fn: Function, name: str, args: list[Expr], pos: tuple[int, int]) -> Expr:
    return lambda env: fn(env, [a(env) for a in args], pos)


# ---------------------------------------------------------------------------- sample methods

_METHODS: dict[str, tuple[int, int]] = {
    "GetSample": (1, 3), "GetSamplePercent": (1, 2), "GetSamplePeriod": (0, 0),
    "Count": (0, 0), "HistoryBeginTime": (0, 0),
}


def _method_call(target: Expr, name: str, args: list[Expr], pos: tuple[int, int]) -> Expr:
    def run(env: _Env) -> Value:
        metric = target(env)
        if not isinstance(metric, _Metric):
            raise _eval_error(pos, f"{name} is a method of data sets, not of {_type(metric)}")
        values = [a(env) for a in args]
        if name == "GetSample":
            return _get_sample(env, metric, values, pos)
        if name == "GetSamplePercent":
            return _window(env, metric, values, pos)[1]
        if name == "GetSamplePeriod":
            return env.period
        if name == "Count":
            return float(len(metric.samples))
        return metric.samples[0].time if metric.samples else env.now

    return run


def _get_sample(env: _Env, metric: _Metric, args: list[Value], pos: tuple[int, int]) -> Vec:
    """GetSample(count) or GetSample(start[, end][, samplePercent])."""
    if isinstance(args[0], float):
        if len(args) != 1:
            raise _eval_error(pos, "GetSample(count) takes one argument")
        count = int(args[0])
        return tuple(s.value for s in metric.samples[-count:]) if count > 0 else ()
    wanted = DEFAULT_SAMPLE_PERCENT
    if len(args) > 1 and isinstance(args[-1], float):
        wanted = args[-1]
        args = args[:-1]
    samples, percent = _window(env, metric, args, pos)
    if percent < wanted:
        raise AutoscaleError(
            INSUFFICIENT_SAMPLES, "Autoscale evaluation failed due to insufficient sample data",
            f"Line {pos[0]}, Col {pos[1]}: Insufficient data from data set: {metric.name} "
            f"wanted {_format(float(wanted))}%, received {int(percent)}%",
        )
    return tuple(s.value for s in samples)


def _window(env: _Env, metric: _Metric, bounds: list[Value], pos: tuple[int, int]) -> tuple[list[Sample], float]:
    """Samples in (older, newer] and the percentage of the expected count they make.

    A timeinterval bound means "that long before now", a timestamp is absolute; one bound
    runs to now.
    """
    if not 1 <= len(bounds) <= 2:
        raise _eval_error(pos, "expected a start time and an optional end time")
    points = [_point(env, b, pos) for b in bounds] + ([env.now] if len(bounds) == 1 else [])
    older, newer = min(points), max(points)
    samples = [s for s in metric.samples if older < s.time <= newer]
    expected = (newer - older) / env.period
    percent = 100.0 if expected <= 0 else min(100.0, 100.0 * len(samples) / expected)
    return samples, percent


def _point(env: _Env, bound: Value, pos: tuple[int, int]) -> datetime:
    if isinstance(bound, timedelta):
        return env.now - bound
    if isinstance(bound, datetime):
        return bound
    raise _eval_error(pos, f"expected a timestamp or a timeinterval, not a {_type(bound)}")


# ---------------------------------------------------------------------------- results


def _format(value: Value) -> str:
    """Values as the service prints them in autoScaleRun.results."""
    if isinstance(value, float):
        return "%g" % value
    if isinstance(value, tuple):
        return "[" + ",".join("%g" % v for v in value) + "]"
    if isinstance(value, datetime):
        utc = value.astimezone(timezone.utc)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    if isinstance(value, timedelta):
        return _format_interval(value)
    if isinstance(value, _Metric):
        return value.name
    return value


def _format_interval(value: timedelta) -> str:
    """[-][d.]hh:mm:ss[.fffffff], the .NET TimeSpan form the service's other fields use."""
    sign = "-" if value < timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    if value.microseconds:
        text += f".{value.microseconds * 10:07d}"
    return sign + (f"{value.days}." if value.days else "") + text


def _target(env: _Env, name: str) -> int:
    """A target as a node count: a finite double, truncated, never below zero."""
    value = _read(env, name)
    if not isinstance(value, float) or not math.isfinite(value):
        raise _eval_error(None, f"{name} must be a finite double, not {_format(value)}")
    return max(0, int(value))


def _deallocation(env: _Env) -> str | None:
    if DEALLOCATION not in env.variables:
        return None
    value = env.variables[DEALLOCATION]
    if not isinstance(value, str) or value.lower() not in DEALLOCATION_OPTIONS:
        raise _eval_error(None, f"{DEALLOCATION} must be one of {', '.join(DEALLOCATION_OPTIONS)}")
    return value.lower()


def _results(env: _Env, dedicated: int, low: int, option: str | None) -> str:
    head = [
        f"$TargetDedicatedNodes={dedicated}",
        f"$TargetLowPriorityNodes={low}",
        f"{DEALLOCATION}={option or DEALLOCATION_OPTIONS[0]}",
    ]
    skip = set(TARGETS) | {DEALLOCATION}
    tail = [f"{name}={_format(env.variables[name])}" for name in sorted(env.variables) if name not in skip]
    return ";".join(head + tail)


# ---------------------------------------------------------------------------- public API


@lru_cache(maxsize=128)
def _parse(formula: str) -> tuple[_Statement, ...]:
    """Parse once per formula text; pools re-evaluate the same formula every interval."""
    if len(formula) > MAX_FORMULA_LENGTH:
        raise AutoscaleError(TOO_LONG, f"The specified auto-scaling formula exceeds {MAX_FORMULA_LENGTH} characters.")
    return tuple(_Parser(formula).formula())


def validate(formula: str) -> None:
    """Check a formula the way pool add / enable autoscale do; raise ``AutoscaleError``."""
    _parse(formula)


def evaluate(
    formula: str,
    metrics: Mapping[str, Sequence[Sample]],
    current: Mapping[str, float],
    now: datetime,
    *,
    sample_period: timedelta = SAMPLE_PERIOD,
    rand: Callable[[], float] = random.random,
) -> AutoscaleResult:
    """Evaluate a formula against recorded metric samples and the pool's current counts.

    ``metrics`` maps system variable names ("$PendingTasks", with or without '$') to
    samples; ``current`` holds "$CurrentDedicatedNodes", "$CurrentLowPriorityNodes" and
    optionally the current "$TargetDedicatedNodes"/"$TargetLowPriorityNodes" (which
    otherwise default to the current counts). Targets the formula leaves unset keep
    those values. Raises ``AutoscaleError`` with the service's code on failure.
    """
    statements = _parse(formula)
    env = _Env({}, _metric_table(metrics), _current_table(current), _aware(now), sample_period, rand)
    try:
        for statement in statements:
            env.variables[statement.name] = statement.expr(env)
    except _Stop:
        pass
    dedicated = _target(env, "$TargetDedicatedNodes")
    low = _target(env, "$TargetLowPriorityNodes")
    option = _deallocation(env)
    return AutoscaleResult(dedicated, low, option, _results(env, dedicated, low, option), dict(env.variables))


def _dollar(name: str) -> str:
    return name if name.startswith("$") else "$" + name


def _metric_table(metrics: Mapping[str, Sequence[Sample]]) -> dict[str, _Metric]:
    """Known metrics only, samples in time order with aware timestamps."""
    table: dict[str, _Metric] = {}
    for raw, samples in metrics.items():
        name = _dollar(raw)
        if name in METRICS:
            ordered = sorted((Sample(_aware(s.time), float(s.value)) for s in samples), key=lambda s: s.time)
            table[name] = _Metric(name, tuple(ordered))
    return table


def _current_table(current: Mapping[str, float]) -> dict[str, float]:
    """Normalise names and fill each unset current target from the node count."""
    table = {_dollar(k): float(v) for k, v in current.items()}
    table.setdefault("$TargetDedicatedNodes", table.get("$CurrentDedicatedNodes", 0.0))
    table.setdefault("$TargetLowPriorityNodes", table.get("$CurrentLowPriorityNodes", 0.0))
    return table


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
