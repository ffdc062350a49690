"""What a teacher store's rows may hold, checked on every read (pure numpy; docs/store-format.md).

The CRC-32 proves the rows are what the writer wrote; these checks prove the writer wrote a
distribution. Both run on every read, so a bad row fails where it is used, with one line naming
the file, the sentence and the first bad row, instead of training on NaN or on rows summing to 8.

Cost: a handful of vectorized comparisons over one sentence's (rows × V') values, a few
microseconds per sentence (BENCHMARKS.md, store section).
"""
from typing import Optional

import numpy as np

# β̂₀ is stored finite (format version 2): the memoizer caps it at the largest float32, which it
# reaches where the members agree exactly (always when K = 1).
PRECISION_MAX = float(np.finfo(np.float32).max)
# A row's stored probabilities sum to at most 1 (the top-V' of a distribution, not renormalized),
# up to float16 rounding: each value is within a relative 2**-11 of the float32 it came from.
ROW_SUM_MAX = 1.0 + 2.0 ** -10


def first_problem(indices: np.ndarray, probs: np.ndarray, precision: np.ndarray,
                  vocab_size: int) -> Optional[str]:
    """'row r: <what>' for the first bad row of one sentence, or None when all rows are valid.

    indices (n, V') integer, probs (n, V') float16, precision (n,) float32, as stored."""
    # Comparisons are False for NaN, so each test below also rejects NaN (and ±inf).
    probs_ok = bool(((probs >= 0) & (probs <= 1)).all())
    sums = probs.sum(axis=1, dtype=np.float32) if probs_ok else None
    if (probs_ok and (len(sums) == 0 or float(sums.max()) <= ROW_SUM_MAX)
            and (indices.size == 0 or int(indices.max()) < vocab_size)
            and (indices.dtype.kind == "u" or indices.size == 0 or int(indices.min()) >= 0)
            and bool(((precision > 0) & (precision <= PRECISION_MAX)).all())):
        return None
    return _locate(indices, probs, precision, vocab_size)


def _locate(indices, probs, precision, vocab_size) -> str:
    for r in range(len(precision)):
        p = probs[r]
        bad = np.flatnonzero(~((p >= 0) & (p <= 1)))
        if len(bad):
            return f"row {r}: probability {p[bad[0]]} is not in [0, 1]"
        total = float(p.sum(dtype=np.float32))
        if total > ROW_SUM_MAX:
            return f"row {r}: probabilities sum to {total:.6g} > 1"
        bad = np.flatnonzero((indices[r] < 0) | (indices[r] >= vocab_size))
        if len(bad):
            return f"row {r}: token index {indices[r][bad[0]]} is not in 0..{vocab_size - 1}"
        if not 0 < precision[r] <= PRECISION_MAX:
            return f"row {r}: precision {precision[r]} is not finite and > 0"
    raise AssertionError("first_problem found a problem that _locate did not")
