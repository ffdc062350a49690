"""OOD detection (ROC) and error detection (rejection curves) from per-sentence uncertainties (numpy).

ROC-AUC: the probability that a random OOD sentence is more uncertain than a random in-domain
one (ties count 1/2), i.e. the Mann–Whitney U statistic / (n_in · n_ood), computed from average
ranks in O(n log n); reported in percent like the PD paper's Table 4 (50 = chance). The length-matched AUC counts
only pairs of sentences of similar source length, so that length alone cannot separate them.

Rejection (Malinin & Gales 2021, §6): sentence errors e_i = 100 − chrF_i. Reject the fraction
r of sentences with the highest uncertainty and hand them to an oracle (error 0); the curve is
the mean error over the whole set, R(r) = (1/N) Σ_{kept} e_i, from R(0) = mean error to R(1) = 0.
AUC = ∫₀¹ R(r) dr (trapezoid over r = 0, 1/N, …, 1; lower is better). Random rejection gives
AUC_rand = mean error / 2 (expected); the oracle rejects the largest errors first (AUC_orc).
PRR = (AUC_rand − AUC) / (AUC_rand − AUC_orc) × 100: 100 = as good as the oracle, 0 = random.
The figure shows the friendlier mean chrF of the *kept* sentences against the fraction rejected.
"""

from typing import Dict, Optional, Sequence

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(x)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def roc_auc(in_domain: Sequence[float], ood: Sequence[float]) -> float:
    """ROC-AUC (%) of telling OOD (positive: higher uncertainty) from in-domain sentences."""
    a, b = np.asarray(in_domain, dtype=np.float64), np.asarray(ood, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("ROC-AUC needs sentences on both sides")
    ranks = _average_ranks(np.concatenate([a, b]))
    u = ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2.0
    return 100.0 * u / (len(a) * len(b))


def length_matched_auc(
    in_domain: Sequence[float],
    ood: Sequence[float],
    in_lengths: Sequence[int],
    ood_lengths: Sequence[int],
    n_bins: int = 10,
    edges: Optional[Sequence[float]] = None,
) -> float:
    """ROC-AUC (%) over only the (in-domain, OOD) pairs whose source lengths share a bin, so that a
    measure that merely tracks length scores 50 when the bins are narrow enough.

    Bins are (e_i, e_{i+1}]: by default at the in-domain lengths' quantiles, from min − 1 to max
    (OOD sentences outside the in-domain range take part in no pair). The result is
    Σ_b U_b / Σ_b n_in,b · n_ood,b with U_b the Mann–Whitney count (ties 1/2) within bin b."""
    a, b = np.asarray(in_domain, dtype=np.float64), np.asarray(ood, dtype=np.float64)
    la, lb = np.asarray(in_lengths), np.asarray(ood_lengths)
    if len(a) != len(la) or len(b) != len(lb):
        raise ValueError("length-matched AUC needs one length per sentence")
    if len(a) == 0 or len(b) == 0:
        raise ValueError("ROC-AUC needs sentences on both sides")
    if edges is None:
        # The same quantile bins as ensdist-ood-sets draws its length-matched sets with.
        ordered = np.sort(la)
        inner = ordered[np.minimum(len(la) - 1, (len(la) * np.arange(1, n_bins)) // n_bins)]
        edges = np.unique(np.r_[la.min() - 1, inner, la.max()])
    edges = np.asarray(edges, dtype=np.float64)
    bin_a = np.searchsorted(edges, la, side="left") - 1
    bin_b = np.searchsorted(edges, lb, side="left") - 1
    u, pairs = 0.0, 0
    for k in range(len(edges) - 1):
        xa, xb = a[bin_a == k], b[bin_b == k]
        if len(xa) and len(xb):
            u += roc_auc(xa, xb) / 100.0 * len(xa) * len(xb)
            pairs += len(xa) * len(xb)
    if pairs == 0:
        raise ValueError("no in-domain and OOD sentences share a length bin")
    return 100.0 * u / pairs


def roc_curve(in_domain: Sequence[float], ood: Sequence[float]):
    """(false positive rates, true positive rates) over every threshold, for plotting."""
    scores = np.concatenate([np.asarray(in_domain, float), np.asarray(ood, float)])
    labels = np.concatenate([np.zeros(len(in_domain)), np.ones(len(ood))])
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # one point per distinct threshold
    tp, fp = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def _rejection_curve(errors_in_rejection_order: np.ndarray) -> np.ndarray:
    """R(k/N), k = 0..N: mean error over all N when the first k (in the given order) are fixed."""
    n = len(errors_in_rejection_order)
    remaining = errors_in_rejection_order.sum() - np.r_[0.0, np.cumsum(errors_in_rejection_order)]
    return remaining / n


def _auc(curve: np.ndarray) -> float:
    n = len(curve) - 1
    return float(((curve[1:] + curve[:-1]) / 2).sum() / n)


def rejection(uncertainty: Sequence[float], quality: Sequence[float]) -> Dict[str, object]:
    """Rejection summary of one measure: AUC, AUC of random and oracle, PRR (%), and curves."""
    u = np.asarray(uncertainty, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    if len(u) != len(q) or len(u) == 0:
        raise ValueError("rejection needs one quality per uncertainty, and at least one")
    errors = 100.0 - q
    by_uncertainty = errors[np.argsort(-u, kind="mergesort")]
    curve = _rejection_curve(by_uncertainty)
    oracle = _rejection_curve(np.sort(errors)[::-1])
    auc, auc_oracle, auc_random = _auc(curve), _auc(oracle), float(errors.mean() / 2)
    denominator = auc_random - auc_oracle
    prr = 100.0 * (auc_random - auc) / denominator if denominator > 0 else float("nan")
    # Mean quality of the kept sentences, rejecting most-uncertain first (for the figure).
    kept = np.arange(len(q), 0, -1)
    kept_quality = (q.sum() - np.r_[0.0, np.cumsum(q[np.argsort(-u, kind="mergesort")])])[
        :-1
    ] / kept
    kept_oracle = (q.sum() - np.r_[0.0, np.cumsum(np.sort(q))])[:-1] / kept
    return {
        "auc": auc,
        "auc_oracle": auc_oracle,
        "auc_random": auc_random,
        "prr": prr,
        "mean_quality": float(q.mean()),
        "kept_quality": kept_quality,
        "kept_quality_oracle": kept_oracle,
    }


# Vectorised forms for the bootstrap: one row per resample, same definitions as above.


def roc_auc_rows(in_domain: np.ndarray, ood: np.ndarray) -> np.ndarray:
    """ROC-AUC (%) per row of (B, n_in) in-domain and (B, n_ood) OOD uncertainties."""
    from scipy.stats import rankdata  # average ranks of ties, vectorised over rows

    a, b = np.atleast_2d(in_domain), np.atleast_2d(ood)
    ranks = rankdata(np.concatenate([a, b], axis=1), axis=1)
    n_a, n_b = a.shape[1], b.shape[1]
    u = ranks[:, n_a:].sum(axis=1) - n_b * (n_b + 1) / 2.0
    return 100.0 * u / (n_a * n_b)


def prr_rows(uncertainty: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """PRR (%) per row of (B, n) uncertainties and qualities (NaN where the oracle ties random)."""
    u, q = np.atleast_2d(uncertainty), np.atleast_2d(quality)
    errors = 100.0 - q
    n = errors.shape[1]

    def auc(ordered):
        remaining = ordered.sum(axis=1, keepdims=True) - np.concatenate(
            [np.zeros((len(ordered), 1)), np.cumsum(ordered, axis=1)], axis=1
        )
        curve = remaining / n
        return ((curve[:, 1:] + curve[:, :-1]) / 2).sum(axis=1) / n

    by_u = np.take_along_axis(errors, np.argsort(-u, axis=1, kind="stable"), axis=1)
    auc_model, auc_oracle = auc(by_u), auc(-np.sort(-errors, axis=1))
    auc_random = errors.mean(axis=1) / 2
    den = auc_random - auc_oracle
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 100.0 * (auc_random - auc_model) / den, np.nan)


# Baselines every detector must beat: what a reader gets without any uncertainty measure.
BASELINES = {
    "source length": "number of whitespace-separated words of the source",
    "-log P(y|x)": "negative log-probability of the output (max sequence probability)",
    "-log P(y|x)/|y|": "negative length-normalised log-probability of the output",
}


def baseline_scores(records) -> dict:
    """{baseline: array} of per-sentence 'uncertainties' (higher = less trusted) from
    ensdist-uncertainty records (their source, log_prob and length)."""
    src = np.array([len((r.get("source") or "").split()) for r in records], dtype=np.float64)
    lp = np.array([r.get("log_prob", np.nan) for r in records], dtype=np.float64)
    length = np.array([max(r.get("length", 1), 1) for r in records], dtype=np.float64)
    out = {"source length": src}
    if np.all(np.isfinite(lp)):
        out["-log P(y|x)"] = -lp
        out["-log P(y|x)/|y|"] = -lp / length
    return out
