"""Numbers and durations in messages as a person writes them: `mem_mb=10000000`, not `1e+07`."""
from __future__ import annotations


def number(value: float | int) -> str:
    """A whole number as digits, a fraction with at most three decimals; never an exponent."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    text = f"{float(value):.3f}".rstrip("0").rstrip(".")
    return text if text not in ("0", "-0") else f"{float(value):.2e}"


def minutes(value: float | None) -> str:
    """'30 minutes', '1.5 minutes', '20 seconds'."""
    if value is None:
        return "?"
    if value < 1:
        return f"{number(round(value * 60))} seconds"
    text = number(round(value, 1))
    return f"{text} minute" + ("" if text == "1" else "s")
