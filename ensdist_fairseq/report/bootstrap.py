"""Confidence intervals and three-way verdicts, with their criteria fixed here before any run.

Two sources of noise, two intervals:
- over test sentences: the paired percentile bootstrap (every system and measure of one
  comparison resampled with the same sentence indices, so the interval is of the difference);
- over seeds (the members of one method): Student's t interval of the members' mean.

A claim "A is better than B by more than MARGIN" is judged from the interval of A − B:
"holds" when the whole interval is above the margin, "fails" when the whole interval is below
it, "inconclusive" when it straddles it. Same command, same numbers: the generator is seeded.
"""

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

LEVEL = 0.95  # two-sided confidence level of every interval in the report
RESAMPLES = 1000  # bootstrap resamples
SEED = 12345  # fixed: the report is a deterministic function of the result files

HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "fails", "inconclusive", "not measured"

Interval = Tuple[float, float]


def rng() -> np.random.Generator:
    """A fresh generator per comparison: adding a comparison never shifts another's numbers."""
    return np.random.default_rng(SEED)


def resample_indices(n: int, generator: np.random.Generator, resamples: int = RESAMPLES):
    """(resamples, n) indices drawn with replacement from range(n)."""
    if n < 1:
        raise ValueError("the bootstrap needs at least one sentence")
    return generator.integers(0, n, size=(resamples, n))


def percentile_interval(samples: Sequence[float], level: float = LEVEL) -> Interval:
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2
    return float(np.quantile(s, alpha)), float(np.quantile(s, 1 - alpha))


def bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, generator=None, level: float = LEVEL
) -> Interval:
    """Percentile interval of `statistic`, called once with a (RESAMPLES, n) index matrix and
    returning one value per row."""
    idx = resample_indices(n, generator if generator is not None else rng())
    return percentile_interval(statistic(idx), level)


def seed_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """t interval of the mean over seeds; (nan, nan) for fewer than two seeds."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def verdict(interval: Optional[Interval], margin: float = 0.0) -> str:
    """Judge 'the difference exceeds margin' from the difference's interval."""
    if interval is None:
        return NOT_MEASURED
    low, high = interval
    if not (np.isfinite(low) and np.isfinite(high)):
        return NOT_MEASURED
    if low > margin:
        return HOLDS
    if high < margin:
        return FAILS
    return INCONCLUSIVE


def shift(interval: Interval, offset: float) -> Interval:
    return interval[0] + offset, interval[1] + offset


def difference_interval(a: Interval, b: float) -> Interval:
    """Interval of (something with interval `a`) − b, b known without noise."""
    return a[0] - b, a[1] - b


def sentence_indices(n: int) -> np.ndarray:
    """The (RESAMPLES, n) sentence indices shared by every system scored on the same n
    sentences, so that a difference of their corpus scores is a paired bootstrap."""
    return resample_indices(n, np.random.default_rng([SEED, n]))


def corpus_bleu_rows(sentence_stats, idx: np.ndarray) -> np.ndarray:
    """Corpus BLEU of every resample (row of idx) from sacreBLEU's per-sentence statistics."""
    import sacrebleu  # its own score-from-statistics: smoothing and brevity penalty as it scores

    metric = sacrebleu.metrics.BLEU()
    sums = np.asarray(sentence_stats, dtype=np.int64)[idx].sum(axis=1)
    return np.array([metric._compute_score_from_stats(list(row)).score for row in sums])


def bleu_samples(result: dict) -> Optional[np.ndarray]:
    """The bootstrap samples of a result's corpus BLEU, or None without sentence statistics."""
    stats = result.get("bleu_sentence_stats")
    if not stats:
        return None
    if "_bleu_samples" not in result:  # cached: the tables and the claims read it
        result["_bleu_samples"] = corpus_bleu_rows(stats, sentence_indices(len(stats)))
    return result["_bleu_samples"]


def resampled_ece(conf, correct, sentence, idx, num_sentences: int, num_bins: int):
    """Unweighted equal-count ECE (fraction) of every resample of sentences (rows of idx),
    without expanding the resampled tokens: the pairs are sorted once (confidence, then
    incorrect before correct, as metrics/calibration orders them); a resample is that order
    with each token repeated as often as its sentence was drawn, so its bins' sums are
    differences of weighted cumulative sums read at the bin edges."""
    from ensdist_fairseq.metrics.calibration import adaptive_bin_edges

    order = np.lexsort((correct, conf))
    c, a, s_ = conf[order].astype(np.float64), correct[order].astype(np.float64), sentence[order]
    out = np.empty(len(idx))
    for i, row in enumerate(idx):
        w = np.bincount(row, minlength=num_sentences)[s_].astype(np.float64)
        cum_w = np.cumsum(w)
        cum_c, cum_a = np.cumsum(w * c), np.cumsum(w * a)
        edges = adaptive_bin_edges(int(cum_w[-1]), num_bins).astype(np.float64)
        j = np.minimum(np.searchsorted(cum_w, edges, side="right"), len(c) - 1)
        before_w = np.where(j > 0, cum_w[j - 1], 0.0)
        inside = edges - before_w  # positions of token j's copies before the edge

        def at_edges(cum, values):
            return np.where(j > 0, cum[j - 1], 0.0) + inside * values[j]

        count = np.diff(edges)
        keep = count > 0
        conf_bins = np.diff(at_edges(cum_c, c))[keep] / count[keep]
        acc_bins = np.diff(at_edges(cum_a, a))[keep] / count[keep]
        out[i] = np.mean(np.abs(acc_bins - conf_bins))
    return out


def token_samples(result: dict) -> Optional[dict]:
    """{"ece1": %, "nll": nats} bootstrap samples over test sentences of a result with its
    per-token sidecar (report loads it as result["_tokens"]); None without one. Cached."""
    tokens = result.get("_tokens")
    if tokens is None:
        return None
    if "_token_samples" not in result:
        n = int(result["num_sentences"])
        idx = sentence_indices(n)
        ece = 100 * resampled_ece(
            tokens["confidence"].astype(np.float64),
            tokens["correct"],
            tokens["sentence"],
            idx,
            n,
            result["num_bins"],
        )
        nll_sum = np.bincount(tokens["sentence"], weights=-tokens["log_prob"], minlength=n)
        counts = np.bincount(tokens["sentence"], minlength=n)
        nll = nll_sum[idx].sum(axis=1) / counts[idx].sum(axis=1)
        result["_token_samples"] = {"ece1": ece, "nll": nll}
    return result["_token_samples"]
