"""Token-level calibration of NMT models: ECE-1 / ECE-5 with adaptive bins, Brier, NLL, accuracy.

Definitions (Reich et al. 2020, §2.1 and §5.3), all teacher-forced on
the references, one prediction per non-pad target token:

- ECE-1 pools each token's top-1 (confidence, correct?) pair; ECE-5 pools the top-5 pairs of
  every token (a pair is correct when that candidate is the reference token).
- Adaptive binning: the pairs, sorted by confidence, are cut into ``num_bins`` equal-count bins.
  ``unweighted`` = mean over bins of |accuracy − confidence| (the authors' form: their code
  takes np.mean(|fop − mpv|) of sklearn's calibration_curve(strategy='quantile'));
  ``weighted`` = Σ_b (n_b / N) |accuracy_b − confidence_b| (the usual ECE of Naeini/Guo).
  Bin sizes differ by at most one here, so the two agree closely; both are reported.
- Brier: the multi-class score Σ_v (p_v − 1[v = y])², averaged over tokens. ``brier_plus``:
  the authors' BS+ (1 − p_y)², the squared error of the reference's probability alone.
- NLL: mean −ln p_y in nats. Accuracy: fraction of tokens whose top-1 is the reference.

Memory: exact equal-count bins need every (confidence, correct) pair, so the accumulator keeps
k float32 + k bool per token (k = 5: 25 bytes a token, about 2.5 MB for a 100k-token test set)
and nothing of size V beyond the batch being processed.

For sums across fairseq workers there is also a mergeable form: a fixed fine histogram of
(count, Σ confidence, Σ correct), from which ``ece_from_fine_histogram`` rebuilds equal-count
bins approximately (see there). Plain numpy/torch: no fairseq import.
"""

from dataclasses import dataclass
from typing import List

import numpy as np
import torch

DEFAULT_NUM_BINS = 10  # the authors' calibration_curve(n_bins=10)
ECE5_TOP_K = 5  # ECE-5 pools the top five predictions of each token


def _check_num_bins(num_bins) -> None:
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")


def adaptive_bin_edges(num_pairs: int, num_bins: int) -> np.ndarray:
    """Offsets into the sorted pairs where each of the `num_bins` bins starts, then `num_pairs`.

    Bin k (0-based) holds sorted positions floor(k(N−1)/B)+1 … floor((k+1)(N−1)/B), bin 0
    starting at 0. These are exactly the bins np.percentile + searchsorted (sklearn's quantile
    strategy, the authors' code) form when no two confidences tie; sizes differ by at most one.
    """
    _check_num_bins(num_bins)
    cuts = (np.arange(1, num_bins, dtype=np.int64) * (num_pairs - 1)) // num_bins + 1
    return np.concatenate([[0], np.clip(cuts, 0, num_pairs), [num_pairs]]).astype(np.int64)


@dataclass
class ReliabilityBins:
    """Per-bin mean confidence, accuracy and pair count (non-empty bins, ascending confidence)."""

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    def ece(self, weighted: bool) -> float:
        gap = np.abs(self.accuracy - self.confidence)
        if weighted:
            return float(np.sum(gap * self.count) / np.sum(self.count))
        return float(np.mean(gap))

    def to_dict(self) -> dict:
        return {
            "confidence": self.confidence.tolist(),
            "accuracy": self.accuracy.tolist(),
            "count": self.count.tolist(),
        }


def reliability_bins(confidences, correct, num_bins: int = DEFAULT_NUM_BINS) -> ReliabilityBins:
    """Equal-count bins over (confidence, correct) pairs.

    Ties are broken deterministically: pairs are ordered by confidence, then incorrect before
    correct. The bins therefore depend only on the multiset of pairs, not on the order they
    arrived in, so a streamed result equals the all-at-once one exactly. (sklearn instead keeps
    tied confidences in one bin, which can leave bins unequal or empty.)
    """
    _check_num_bins(num_bins)
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    corr = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != corr.shape:
        raise ValueError(f"{conf.size} confidences but {corr.size} correctness values")
    if conf.size == 0:
        raise ValueError("no (confidence, correct) pairs to bin")
    order = np.lexsort((corr, conf))  # last key is primary: confidence, then correctness
    edges = adaptive_bin_edges(conf.size, num_bins)
    counts = np.diff(edges)
    starts = edges[:-1][counts > 0]  # fewer pairs than bins leaves some bins empty
    counts = counts[counts > 0]
    return ReliabilityBins(
        confidence=np.add.reduceat(conf[order], starts) / counts,
        accuracy=np.add.reduceat(corr[order], starts) / counts,
        count=counts,
    )


def expected_calibration_error(
    confidences, correct, num_bins: int = DEFAULT_NUM_BINS, weighted: bool = True
) -> float:
    """ECE over (confidence, correct) pairs with adaptive equal-count bins (fraction, not %).

    weighted=True: Σ_b (n_b/N)|acc_b − conf_b|; weighted=False: the authors' mean over bins.
    """
    return reliability_bins(confidences, correct, num_bins).ece(weighted)


@dataclass
class TokenPredictions:
    """What calibration needs of one batch, per non-pad token: O(tokens × k), nothing × V."""

    top_confidence: torch.Tensor  # (n, k) probabilities of the k most probable tokens, descending
    top_correct: torch.Tensor  # (n, k) bool: that candidate is the reference token
    target_log_prob: torch.Tensor  # (n,) ln p_y
    sum_squared_probs: torch.Tensor  # (n,) Σ_v p_v², for the multi-class Brier score


def summarize_predictions(
    scores, targets, pad_mask=None, log_probs: bool = True, top_k: int = ECE5_TOP_K
) -> TokenPredictions:
    """Reduce a batch of predictive distributions to the per-token numbers calibration needs.

    scores: (..., V) log-probabilities (or probabilities with log_probs=False); targets: (...)
    reference indices; pad_mask: (...) True at positions to ignore (fairseq's target.eq(pad)).
    """
    scores, targets = torch.as_tensor(scores), torch.as_tensor(targets)
    if scores.shape[:-1] != targets.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} do not match targets {tuple(targets.shape)}"
        )
    vocab = scores.size(-1)
    # float32 at least: fp16 log-probs lose the confidence digits ECE is made of.
    flat, tgt = scores.reshape(-1, vocab).float(), targets.reshape(-1).long()
    logp = flat if log_probs else flat.log()
    keep = (
        torch.ones_like(tgt, dtype=torch.bool)
        if pad_mask is None
        else ~torch.as_tensor(pad_mask, dtype=torch.bool, device=tgt.device).reshape(-1)
    )
    tgt = tgt.masked_fill(~keep, 0)  # pad positions may hold any index; they are dropped below
    if tgt.numel() and (int(tgt.min()) < 0 or int(tgt.max()) >= vocab):
        raise ValueError(f"target index outside the {vocab}-symbol vocabulary")
    # Everything of size V is reduced over all rows first; only the small per-token results
    # are then filtered, so no V-sized copy of the non-pad rows is made.
    top_logp, top_idx = logp.topk(min(top_k, vocab), dim=-1)
    target_logp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return TokenPredictions(
        top_confidence=top_logp.exp()[keep],
        top_correct=top_idx.eq(tgt.unsqueeze(-1))[keep],
        target_log_prob=target_logp[keep],
        sum_squared_probs=_sum_squared_probs(logp)[keep],
    )


SQUARES_ROWS_PER_CHUNK = 256  # exp() of 256 rows at a time: a temporary the allocator reuses
# (the whole batch at once would page-fault in a fresh (tokens × V) buffer: ~3x slower on CPU)


def _sum_squared_probs(logp: torch.Tensor) -> torch.Tensor:
    """Σ_v p_v² for each row of log-probabilities."""
    if logp.size(0) == 0:
        return logp.new_zeros(0)
    return torch.cat(
        [
            torch.linalg.vector_norm(rows.exp(), dim=-1)
            for rows in logp.split(SQUARES_ROWS_PER_CHUNK)
        ]
    ).square()


@dataclass
class CalibrationResult:
    """Calibration of one system on one split. ECE and Brier are fractions (×100 for the
    paper's percentages); NLL is in nats per token."""

    num_tokens: int
    num_bins: int
    ece1_weighted: float
    ece1_unweighted: float
    ece5_weighted: float
    ece5_unweighted: float
    brier: float
    brier_plus: float
    nll: float
    accuracy: float
    reliability_top1: ReliabilityBins
    reliability_top5: ReliabilityBins

    def to_dict(self) -> dict:
        return {
            "num_tokens": self.num_tokens,
            "num_bins": self.num_bins,
            "ece1": {"weighted": self.ece1_weighted, "unweighted": self.ece1_unweighted},
            "ece5": {"weighted": self.ece5_weighted, "unweighted": self.ece5_unweighted},
            "brier": self.brier,
            "brier_plus": self.brier_plus,
            "nll": self.nll,
            "accuracy": self.accuracy,
            "reliability": {
                "top1": self.reliability_top1.to_dict(),
                "top5": self.reliability_top5.to_dict(),
            },
        }


class CalibrationAccumulator:
    """Streams batches of predictions; keeps only the (confidence, correct) pairs and sums."""

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS, top_k: int = ECE5_TOP_K):
        _check_num_bins(num_bins)
        self.num_bins, self.top_k = num_bins, top_k
        self._confidence: List[np.ndarray] = []  # (n, k) float32 per batch
        self._correct: List[np.ndarray] = []  # (n, k) bool per batch
        self.num_tokens = 0
        self._nll_sum = self._brier_sum = self._brier_plus_sum = 0.0

    def update(self, scores, targets, pad_mask=None, log_probs: bool = True) -> None:
        """Add a batch; arguments as in `summarize_predictions`."""
        self.add(summarize_predictions(scores, targets, pad_mask, log_probs, self.top_k))

    def add(self, preds: TokenPredictions) -> None:
        if preds.target_log_prob.numel() == 0:
            return
        p_target = preds.target_log_prob.double().exp()
        self._nll_sum -= float(preds.target_log_prob.double().sum())
        self._brier_sum += float((preds.sum_squared_probs.double() - 2 * p_target + 1).sum())
        self._brier_plus_sum += float(((1 - p_target) ** 2).sum())
        self._confidence.append(preds.top_confidence.detach().float().cpu().numpy())
        self._correct.append(preds.top_correct.detach().cpu().numpy())
        self.num_tokens += int(p_target.numel())

    def result(self) -> CalibrationResult:
        if self.num_tokens == 0:
            raise ValueError("no non-pad target tokens were seen")
        conf = np.concatenate(self._confidence)
        corr = np.concatenate(self._correct)
        top1 = reliability_bins(conf[:, 0], corr[:, 0], self.num_bins)
        topk = reliability_bins(conf, corr, self.num_bins)
        n = self.num_tokens
        return CalibrationResult(
            num_tokens=n,
            num_bins=self.num_bins,
            ece1_weighted=top1.ece(True),
            ece1_unweighted=top1.ece(False),
            ece5_weighted=topk.ece(True),
            ece5_unweighted=topk.ece(False),
            brier=self._brier_sum / n,
            brier_plus=self._brier_plus_sum / n,
            nll=self._nll_sum / n,
            accuracy=float(corr[:, 0].mean()),
            reliability_top1=top1,
            reliability_top5=topk,
        )


# --- Mergeable form, for fairseq logging outputs summed across workers and batches ----------
# Fine bins are equal-width in logit space, not in probability: NMT confidences pile up near 1
# (often a third of all tokens above 0.999), where equal-width probability bins would lump
# them into one bin that no equal-count cut could split.
FINE_LOGIT_LIMIT = 16.0  # sigmoid(16) = 1 − 1.1e-7, about float32's resolution just below 1
FINE_BINS = 1600  # 0.02 logit wide: near p = 0.999 a fine bin spans ±1% of (1 − p)


def fine_histogram(confidences: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """(3, FINE_BINS) float64 rows: pair count, Σ confidence, Σ correct; on the input's device.

    Histograms of disjoint sets of pairs add up to the histogram of their union."""
    conf = confidences.detach().reshape(-1).double().clamp(0.0, 1.0)
    corr = correct.detach().reshape(-1).double()
    logit = torch.log(conf) - torch.log1p(-conf)  # ±inf at 0 and 1 land in the end bins
    width = 2 * FINE_LOGIT_LIMIT / FINE_BINS
    idx = ((logit + FINE_LOGIT_LIMIT) / width).floor().clamp(0, FINE_BINS - 1).long()
    return torch.stack(
        [
            torch.bincount(idx, minlength=FINE_BINS).double(),
            torch.bincount(idx, weights=conf, minlength=FINE_BINS),
            torch.bincount(idx, weights=corr, minlength=FINE_BINS),
        ]
    )


def ece_from_fine_histogram(histogram, num_bins: int = DEFAULT_NUM_BINS) -> float:
    """Approximate adaptive ECE (fraction) from a summed `fine_histogram`.

    Equal-count bins are cut at cumulative counts k·N/B; a fine bin straddling a cut is split in
    proportion to its count (its pairs are treated as exchangeable), i.e. the cumulative sums are
    interpolated linearly. Every bin then holds exactly N/B pairs, so the weighted and unweighted
    forms coincide. The error comes only from the straddling fine bins (at most B − 1 of them):
    tests/test_calibration.py bounds it against the exact value.
    """
    _check_num_bins(num_bins)
    hist = torch.as_tensor(histogram).detach().double().cpu().numpy()
    nonempty = hist[0] > 0  # np.interp needs strictly increasing cumulative counts
    cum = np.concatenate([np.zeros((3, 1)), np.cumsum(hist[:, nonempty], axis=1)], axis=1)
    total = cum[0, -1]
    if total == 0:
        return float("nan")
    cuts = np.arange(num_bins + 1) * (total / num_bins)
    bin_conf = np.diff(np.interp(cuts, cum[0], cum[1]))
    bin_correct = np.diff(np.interp(cuts, cum[0], cum[2]))
    return float(np.sum(np.abs(bin_correct - bin_conf)) / total)
