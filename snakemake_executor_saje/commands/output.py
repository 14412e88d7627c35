"""Output for people (rich tables on stdout, messages and progress on stderr) or for scripts
(--json: exactly one JSON document on stdout, nothing else there, errors included).

The pure helpers (``to_jsonable``, ``fmt_*``) are what the unit tests check.
"""
from __future__ import annotations

import datetime as dt
import enum
import json
import os
import sys
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

PIPE_WIDTH = 200


def to_jsonable(value: Any) -> Any:
    """Plain JSON values from SDK models, enums, datetimes and durations."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, enum.Enum):
            return value.value
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "as_dict"):
        return to_jsonable(value.as_dict())
    return str(value)


def state_name(value: Any) -> str:
    """An SDK enum or string state as Batch spells it on the wire ('starttaskfailed')."""
    return str(getattr(value, "value", value) or "").lower()


def fmt_value(value: Any) -> str:
    """How one cell reads in a table: '-' for nothing, yes/no, short UTC times."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def fmt_money(amount: float | None, currency: str = "USD") -> str:
    """'0.192 USD' to three decimals; unknown prices read 'unknown', never zero."""
    if amount is None:
        return "unknown"
    return f"{amount:.3f} {currency}"


def fmt_current_target(current: int | None, target: int | None) -> str:
    """'1/2': current nodes of a kind over the target."""
    return f"{current or 0}/{target or 0}"


def fmt_counts(counts: dict[str, int]) -> str:
    """'2 idle, 1 running' from {'idle': 2, 'running': 1}, largest first; '-' when empty."""
    items = sorted(((k, v) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{v} {k}" for k, v in items) or "-"


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str = "none") -> Any:
    """A rich table (or, without rows, one line saying so), to print or to put in a live view."""
    from rich.text import Text

    rows = list(rows)
    if not rows:
        return Text(f"{title}: {empty}" if title else empty)
    made = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    cells = [[fmt_value(v) for v in row] for row in rows]
    for index, column in enumerate(columns):
        if index == 0:  # the ids: whole, so they can be read and copied; the other columns give way
            made.add_column(column, no_wrap=True, min_width=max(len(str(row[0])) for row in cells))
        else:
            made.add_column(column, overflow="fold")
    for row in cells:
        made.add_row(*row)
    return made


class Output:
    def __init__(self, json_mode: bool = False, *, stdout: Any = None, stderr: Any = None):
        self.json_mode = json_mode
        self._stdout = stdout if stdout is not None else sys.stdout
        self.out = Console(file=self._stdout, highlight=False, soft_wrap=True)
        if not self.out.is_terminal and "COLUMNS" not in os.environ:
            # Piped or captured: 80 columns would fold ids and sizes; a log file has room.
            self.out = Console(file=self._stdout, highlight=False, soft_wrap=True, width=PIPE_WIDTH)
        self.err = Console(file=stderr if stderr is not None else sys.stderr, highlight=False, soft_wrap=True)
        self._emitted = False

    # ----------------------------------------------------------------- for scripts
    def emit(self, document: Any) -> None:
        """In --json mode, write the one JSON document; otherwise nothing."""
        if self.json_mode and not self._emitted:
            self._stdout.write(json.dumps(to_jsonable(document), indent=2, sort_keys=False) + "\n")
            self._stdout.flush()
            self._emitted = True

    # ----------------------------------------------------------------- for people
    def table(self, title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]],
              *, empty: str = "none") -> None:
        if not self.json_mode:
            self.out.print(table(title, columns, rows, empty=empty))

    def print(self, text: str = "", **kwargs: Any) -> None:
        """Human output on stdout (silent in --json mode)."""
        if not self.json_mode:
            self.out.print(text, **kwargs)

    def info(self, text: str) -> None:
        """A progress or status message (plain text, not markup), on stderr in both modes."""
        self.err.print(escape(text))

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {escape(text)}")

    def error(self, message: str, exit_code: int, code: str | None = None) -> None:
        self.err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
        self.emit({"error": {"code": code, "message": message, "exit_code": exit_code}})
