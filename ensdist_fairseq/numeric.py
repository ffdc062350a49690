"""The one rule every numeric option obeys (pure Python): an integer in its range; a float finite
and in its range, NaN never, infinity only where the option says what infinity means.

Our commands apply it while parsing (cli/options.py: `integer`, `real`); fairseq parses the
criterion's and the task's dataclass fields itself, so those are checked with `check_fields`
when the criterion or task is built, before any data is read.
"""

import math
from dataclasses import dataclass
from typing import Optional

INT_MAX = 2**31 - 1  # sizes and counts beyond this overflow C longs in numpy/fairseq


def integer_problem(value, lo: int = 0, hi: int = INT_MAX, shown=None) -> Optional[str]:
    """What is wrong with `value` as an integer in [lo, hi], or None (`shown`: the value as
    the user wrote it)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected an integer, got {value!r}"
    if not lo <= value <= hi:
        return f"must be in {lo}..{hi}, got {value if shown is None else shown}"
    return None


def real_problem(
    value,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    inf_means: Optional[str] = None,
    shown=None,
) -> Optional[str]:
    """What is wrong with `value` as a float in the interval (open ends where asked), or None
    (`shown`: the value as the user wrote it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a number, got {value!r}"
    value = float(value)
    shown = f"{value:g}" if shown is None else shown
    if math.isnan(value):
        return "must be a number, got nan"
    if math.isinf(value) and inf_means is None:
        return f"must be finite, got {shown}"
    below = value <= lo if lo_open else value < lo
    above = value >= hi if hi_open else value > hi
    if below or above:
        if math.isinf(hi) and not math.isinf(lo):
            return f"must be {'>' if lo_open else '>='} {lo:g}, got {shown}"
        if math.isinf(lo) and not math.isinf(hi):
            return f"must be {'<' if hi_open else '<='} {hi:g}, got {shown}"
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        return f"must be in {left}{lo:g}, {hi:g}{right}, got {shown}"
    return None


@dataclass(frozen=True)
class Integer:
    """An integer field's range (`check_fields`); None values pass when `optional`."""

    lo: int = 0
    hi: int = INT_MAX
    optional: bool = False

    def problem(self, value):
        if value is None and self.optional:
            return None
        return integer_problem(value, self.lo, self.hi)


@dataclass(frozen=True)
class Real:
    """A float field's interval (`check_fields`)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    inf_means: Optional[str] = None

    def problem(self, value):
        return real_problem(
            value,
            self.lo,
            self.hi,
            lo_open=self.lo_open,
            hi_open=self.hi_open,
            inf_means=self.inf_means,
        )


def flag(name: str) -> str:
    """A dataclass field's command-line flag: kd_temperature -> --kd-temperature."""
    return "--" + name.replace("_", "-")


def check_fields(values, rules, error=ValueError) -> None:
    """Apply `rules` ({field name: Integer | Real}) to `values` (a mapping or an object with
    those attributes); the first problem raises `error("--flag: what is wrong")`."""
    for name, rule in rules.items():
        value = values[name] if isinstance(values, dict) else getattr(values, name)
        problem = rule.problem(value)
        if problem is not None:
            raise error(f"{flag(name)}: {problem}")
