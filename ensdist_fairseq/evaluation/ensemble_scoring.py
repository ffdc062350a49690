"""Teacher-forced calibration of one model or an ensemble on a data split (fairseq glue).

Every sentence is fed with its reference prefix (teacher_forcing.samples over the batches of
teacher_forcing.plan_batches); the ensemble's predictive distribution at each target position
(teacher_forcing.ensemble_log_probs: the mean of the members' probabilities) is reduced to the
few numbers calibration needs (calibration.summarize_predictions) batch by batch, so nothing of
size V outlives its batch. `ensdist-evaluate` and the `--scoring ece` scorer of fairseq-generate
both go through `summarize_batch`, so they report the same numbers.

A model that outputs NaN (or +inf) log-probabilities is refused here, naming the checkpoint and
the sentence: a NaN would otherwise travel into ECE and end up as "ece1": NaN in a result file.
"""

from typing import Callable, Optional, Sequence

import torch

from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.metrics.calibration import (
    CalibrationAccumulator,
    TokenPredictions,
    summarize_predictions,
)
from ensdist_fairseq.metrics.temperature import tempered
from ensdist_fairseq.teachers import teacher_forcing

# Called after each batch with (batches done, batches in total, target tokens so far).
ProgressCallback = Callable[[int, int, int], None]


def _finite(preds: TokenPredictions) -> bool:
    # topk ranks NaN and +inf above every number, so a row holding one anywhere shows it in its
    # top-1 confidence: checking the (tokens × 5) summary covers the whole (tokens × V) output.
    return bool(
        torch.isfinite(preds.top_confidence).all()
        and not torch.isnan(preds.target_log_prob).any()
        and torch.isfinite(preds.sum_squared_probs).all()
    )


def _first_non_finite(models, sample, names: Sequence[str], where: str) -> EnsdistError:
    """The error naming the first member and sentence whose output is not a distribution."""
    for name, lp in zip(names, teacher_forcing.member_log_probs(models, sample["net_input"])):
        bad = (torch.isnan(lp) | (lp == float("inf"))).flatten(1).any(1)  # per sentence
        if bad.any():
            sid = int(sample["id"][bad.nonzero()[0, 0]])
            return EnsdistError(f"{name}: non-finite probabilities for sentence {sid} of {where}")
    return EnsdistError(f"{':'.join(names)}: non-finite ensemble probabilities in {where}")


def summarize_batch(
    models: Sequence[torch.nn.Module],
    sample: dict,
    pad: int,
    names: Optional[Sequence[str]] = None,
    where: str = "split",
    temperature: float = 1.0,
) -> TokenPredictions:
    """Calibration numbers of one fairseq sample's reference tokens under the ensemble's mean;
    EnsdistError (naming the checkpoint of `names` and the sentence) on a non-finite output."""
    target = sample["target"]
    with torch.no_grad():
        lp = teacher_forcing.ensemble_log_probs(models, sample["net_input"])
        if temperature != 1.0:  # temperature scaling of the ensemble's mean (fitted elsewhere)
            lp = tempered(lp, temperature)
        preds = summarize_predictions(lp, target, target.eq(pad), log_probs=True)
        del lp
        if not _finite(preds):
            names = names or [f"--path member {i + 1} of {len(models)}" for i in range(len(models))]
            raise _first_non_finite(models, sample, names, where)
    return preds


def score_split(
    models: Sequence[torch.nn.Module],
    dataset,
    batches,
    pad: int,
    accumulator: CalibrationAccumulator,
    device: torch.device,
    names: Optional[Sequence[str]] = None,
    where: str = "split",
    progress: Optional[ProgressCallback] = None,
    temperature: float = 1.0,
    on_batch: Optional[Callable[[dict, TokenPredictions], None]] = None,
) -> int:
    """Feed every target token of the `batches` of `dataset` to `accumulator`; return the number
    of sentences scored. on_batch(sample, its predictions) sees each batch (per-token records)."""
    seen = 0
    for i, sample in enumerate(teacher_forcing.samples(dataset, batches, device), 1):
        preds = summarize_batch(models, sample, pad, names, where, temperature)
        accumulator.add(preds)
        if on_batch is not None:
            on_batch(sample, preds)
        seen += len(sample["id"])
        if progress is not None:
            progress(i, len(batches), accumulator.num_tokens)
    return seen
