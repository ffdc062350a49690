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
ROW_SUM_MAX = 1.0 + 2.0**-10


def first_problem(
    indices: np.ndarray, probs: np.ndarray, precision: np.ndarray, vocab_size: int
) -> Optional[str]:
    """'row r: <what>' for the first bad row of one sentence, or None when all rows are valid.

    indices (n, V') integer, probs (n, V') float16, precision (n,) float32, as stored.
    The fast path is a few vectorized reductions; only a bad sentence is walked row by row."""
    if probs.size:
        # float16 in [0, 1] <=> its bit pattern is <= that of 1.0 (0x3C00): negative values have
        # the sign bit set, NaN and inf have larger exponents. One integer max, no conversion.
        if int(probs.view(np.uint16).max()) > _ONE_F16_BITS:
            return _locate(indices, probs, precision, vocab_size)
        if float(_row_sums(probs).max()) > ROW_SUM_MAX:
            return _locate(indices, probs, precision, vocab_size)
        if int(indices.max()) >= vocab_size or (
            indices.dtype.kind != "u" and int(indices.min()) < 0
        ):
            return _locate(indices, probs, precision, vocab_size)
    # min/max propagate NaN, and comparisons with NaN are False: NaN and inf fail here too.
    if precision.size and not (precision.min() > 0 and precision.max() <= PRECISION_MAX):
        return _locate(indices, probs, precision, vocab_size)
    return None


_ONE_F16_BITS = int(np.array(1.0, dtype=np.float16).view(np.uint16))
# float16 -> float32 by table lookup: numpy's own float16 conversion is a slow scalar loop.
_F16_TO_F32 = (
    np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
)
_ONES = {}


def _ones(n: int) -> np.ndarray:
    if n not in _ONES:
        _ONES[n] = np.ones(n, dtype=np.float32)
    return _ONES[n]


def _row_sums(probs: np.ndarray) -> np.ndarray:
    return _F16_TO_F32[probs.view(np.uint16)] @ _ones(probs.shape[1])


def _locate(indices, probs, precision, vocab_size) -> str:
    sums = _row_sums(probs) if probs.size else None
    for r in range(len(precision)):
        p = probs[r]
        bad = np.flatnonzero(p.view(np.uint16) > _ONE_F16_BITS)  # the fast path's test, per value
        if len(bad):
            return f"row {r}: probability {p[bad[0]]} is not in [0, 1]"
        total = float(sums[r])  # the same arithmetic as the fast path
        if total > ROW_SUM_MAX:
            return f"row {r}: probabilities sum to {total:.6g} > 1"
        bad = np.flatnonzero((indices[r] < 0) | (indices[r] >= vocab_size))
        if len(bad):
            return f"row {r}: token index {indices[r][bad[0]]} is not in 0..{vocab_size - 1}"
        if not 0 < precision[r] <= PRECISION_MAX:
            return f"row {r}: precision {precision[r]} is not finite and > 0"
    raise AssertionError(
        "first_problem found a problem that _locate did not"
    )  # same tests: unreachable
