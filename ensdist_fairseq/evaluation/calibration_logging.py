"""ECE-1 / ECE-5 next to the loss in fairseq-train validation and fairseq-validate.

fairseq sums logging outputs across workers (and the validation loop sums meters across
batches), so exact equal-count bins cannot be formed there: each batch contributes a fine
histogram (``calibration.fine_histogram``), the sums are logged as hidden meters, and the
derived metrics ``ece1`` / ``ece5`` are rebuilt from them with ``ece_from_fine_histogram``.
They are logged in percent, like the paper's Table 2, and approximate the exact adaptive ECE
(see docs/evaluation.md for how closely); ``ensdist-evaluate`` gives the exact values.

Used by ``tasks/translation_distill.py``: ``valid_step`` adds
``calibration_logging_output(lprobs, target, pad)`` to each logging output and ``reduce_metrics``
calls ``reduce_calibration_metrics(logging_outputs)``; any task can do the same.
"""

from functools import partial
from typing import Dict, Sequence

import torch
from fairseq.logging import metrics

from ensdist_fairseq.metrics.calibration import (
    DEFAULT_NUM_BINS,
    ece_from_fine_histogram,
    fine_histogram,
    summarize_predictions,
)

# logging-output keys -> name of the derived metric fairseq prints
HISTOGRAM_KEYS = {"ece1_histogram": "ece1", "ece5_histogram": "ece5"}


def calibration_logging_output(
    lprobs: torch.Tensor, target: torch.Tensor, pad_idx: int
) -> Dict[str, torch.Tensor]:
    """Fine histograms of one batch's top-1 and top-5 pairs: tensors that add across workers."""
    with torch.no_grad():
        preds = summarize_predictions(lprobs.detach(), target, target.eq(pad_idx), log_probs=True)
        return {
            "ece1_histogram": fine_histogram(preds.top_confidence[:, 0], preds.top_correct[:, 0]),
            "ece5_histogram": fine_histogram(preds.top_confidence, preds.top_correct),
        }


def _derived_ece_percent(meter_key: str, num_bins: int, meters) -> float:
    return round(100.0 * ece_from_fine_histogram(meters[meter_key].sum, num_bins), 3)


def reduce_calibration_metrics(
    logging_outputs: Sequence[dict], num_bins: int = DEFAULT_NUM_BINS
) -> None:
    """Log ece1 / ece5 (percent) from the summed histograms; a no-op for outputs without them
    (training steps)."""
    for key, name in HISTOGRAM_KEYS.items():
        histograms = [log[key] for log in logging_outputs if key in log]
        if not histograms:
            continue
        # CPU float64 tensors (not numpy) so the meter state stays loadable by torch's
        # weights_only unpickler if fairseq ever saves it in a checkpoint.
        total = sum(torch.as_tensor(h).detach().double().cpu() for h in histograms)
        hidden = "_" + key  # fairseq does not print meters whose name starts with "_"
        metrics.log_scalar_sum(hidden, total)
        metrics.log_derived(name, partial(_derived_ece_percent, hidden, num_bins))
