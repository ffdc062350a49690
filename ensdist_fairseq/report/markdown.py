"""Markdown for the report: every table through one helper, every number through one formatter.

A part of a run that was not measured reads "not measured" (or "–" inside a table), never "nan":
`number` is the one place a value becomes text.
"""

import math
from typing import Optional, Sequence

NOT_MEASURED = "not measured"
MISSING = "–"  # a table cell with nothing measured


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Optional[float], digits: int = 2, missing: str = MISSING) -> str:
    """`value` with `digits` decimals; `missing` for None, NaN or an infinity ("-0.00" reads
    as 0.00: a sign the rounding lost says nothing)."""
    if not is_number(value):
        return missing
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def interval(low: Optional[float], high: Optional[float], digits: int = 2) -> str:
    """'[low, high]', or '' when either end is missing."""
    if not (is_number(low) and is_number(high)):
        return ""
    return f"[{number(low, digits)}, {number(high, digits)}]"


def with_interval(value, low, high, digits: int = 2) -> str:
    """'value [low, high]' (the interval left out when not measured)."""
    ci = interval(low, high, digits)
    return number(value, digits) + (f" {ci}" if ci and is_number(value) else "")


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence], align: str = "") -> str:
    """A GitHub markdown table. `align` has one letter per column: 'l' (default) or 'r'.

    Raises ValueError when a row has another number of cells than the header: a malformed table
    is a bug to find here, not a broken page to find later."""
    if not header:
        raise ValueError("a table needs at least one column")
    align = align.ljust(len(header), "l")
    if len(align) != len(header):
        raise ValueError(f"{len(align)} alignments for {len(header)} columns")
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(header)} columns")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"
