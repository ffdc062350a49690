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
    return corpus_bleu_rows(stats, sentence_indices(len(stats)))


def _token_rows(tokens: dict, num_sentences: int, idx: np.ndarray):
    """Per resample (row of idx): the token indices of its sentences, with their multiplicity."""
    counts = np.bincount(tokens["sentence"], minlength=num_sentences)
    starts = np.cumsum(counts) - counts
    for row in idx:
        c = counts[row]
        first = np.repeat(starts[row], c)
        within = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
        yield first + within


def token_samples(result: dict) -> Optional[dict]:
    """{"ece1": %, "nll": nats} bootstrap samples over test sentences of a result with its
    per-token sidecar (report loads it as result["_tokens"]); None without one. Cached."""
    from ensdist_fairseq.metrics.calibration import expected_calibration_error

    tokens = result.get("_tokens")
    if tokens is None:
        return None
    if "_token_samples" not in result:
        n = int(result["num_sentences"])
        idx = sentence_indices(n)
        conf, corr = tokens["confidence"].astype(np.float64), tokens["correct"]
        ece = [
            100 * expected_calibration_error(conf[t], corr[t], result["num_bins"], weighted=False)
            for t in _token_rows(tokens, n, idx)
        ]
        nll_sum = np.bincount(tokens["sentence"], weights=-tokens["log_prob"], minlength=n)
        counts = np.bincount(tokens["sentence"], minlength=n)
        nll = nll_sum[idx].sum(axis=1) / counts[idx].sum(axis=1)
        result["_token_samples"] = {"ece1": np.asarray(ece), "nll": nll}
    return result["_token_samples"]
